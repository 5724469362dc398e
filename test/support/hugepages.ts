// Default-size hugepages for tests (DPDK's EAL and QEMU's hugetlbfs guest memory).
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { run } from './env.js';

export const HUGEPAGE_MOUNT = '/dev/hugepages';
/** The machine is shared with other work: never reserve more than this many pages (2 GiB of 2 MiB pages). */
export const MAX_HUGEPAGES = 1000;

const NR_HUGEPAGES = '/proc/sys/vm/nr_hugepages';

function meminfoField(name: string): number {
  const match = readFileSync('/proc/meminfo', 'utf8').match(new RegExp(`^${name}:\\s+(\\d+)`, 'm'));
  if (!match) throw new Error(`hugepages: /proc/meminfo has no ${name} field (kernel without hugetlbfs?)`);
  return Number(match[1]);
}

/** Free default-size hugepages right now (0 when the kernel has none). */
export function hugepagesFree(): number {
  try {
    return meminfoField('HugePages_Free');
  } catch {
    return 0;
  }
}

export function hugepagesTotal(): number {
  try {
    return meminfoField('HugePages_Total');
  } catch {
    return 0;
  }
}

/** Default hugepage size in bytes (2 MiB on x86-64). */
export function hugepageSize(): number {
  return meminfoField('Hugepagesize') * 1024;
}

export function hugetlbfsMounted(path = HUGEPAGE_MOUNT): boolean {
  return readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .some((line) => {
      const [, mountPoint, fsType] = line.split(' ');
      return mountPoint === path && fsType === 'hugetlbfs';
    });
}

/**
 * Makes sure at least `count` default-size hugepages are reserved (raising nr_hugepages, never
 * above MAX_HUGEPAGES and never lowering what others reserved) and hugetlbfs is mounted at
 * /dev/hugepages. Needs root. Returns the pages reserved and free afterwards.
 */
export function ensureHugepages(count: number): { total: number; free: number } {
  if (!Number.isInteger(count) || count < 0) throw new Error(`hugepages: invalid page count ${count}`);
  if (count > MAX_HUGEPAGES) {
    throw new Error(`hugepages: ${count} pages requested, but tests may reserve at most ${MAX_HUGEPAGES}`);
  }
  if (!existsSync(NR_HUGEPAGES)) throw new Error(`hugepages: ${NR_HUGEPAGES} is missing (kernel without hugetlbfs?)`);
  const current = Number(readFileSync(NR_HUGEPAGES, 'utf8').trim());
  if (current < count) {
    try {
      writeFileSync(NR_HUGEPAGES, `${count}\n`);
    } catch (err) {
      throw new Error(`hugepages: cannot write ${count} to ${NR_HUGEPAGES}: ${(err as Error).message}`);
    }
  }
  const total = hugepagesTotal();
  // The kernel reserves what it can find contiguous memory for, which may be fewer than asked.
  if (total < count) {
    throw new Error(`hugepages: asked ${NR_HUGEPAGES} for ${count} pages but the kernel reserved only ${total}`);
  }
  if (!hugetlbfsMounted()) {
    mkdirSync(HUGEPAGE_MOUNT, { recursive: true });
    run('mount', ['-t', 'hugetlbfs', '-o', `pagesize=${hugepageSize() / 1024 / 1024}M`, 'nodev', HUGEPAGE_MOUNT]);
  }
  return { total, free: hugepagesFree() };
}
