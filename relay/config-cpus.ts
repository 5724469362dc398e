// CPU sets as the kernel and the configuration write them: lists with ranges ("0-3,8"), the
// configuration's `0x` bitmaps, and the topology files under sysfs (online CPUs, CPUs per NUMA node).
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

/** Far above any real machine; stops a typo such as "1-99999999" from building a huge array. */
export const MAX_CPU_ID = 4095;

/**
 * Parses a kernel-style CPU list: "0", "0,2", "1-3", "0-1,4-5". Whitespace around items is
 * allowed. Returns sorted unique ids. Throws an Error describing the bad item.
 */
export function parseCpuList(text: string): number[] {
  const cpus = new Set<number>();
  const trimmed = text.trim();
  if (trimmed === '') throw new Error('the CPU list is empty');
  for (const rawItem of trimmed.split(',')) {
    const item = rawItem.trim();
    const range = /^(\d+)\s*-\s*(\d+)$/.exec(item);
    if (range) {
      const first = Number(range[1]);
      const last = Number(range[2]);
      if (first > last) throw new Error(`CPU range "${item}" runs backwards`);
      if (last > MAX_CPU_ID) throw new Error(`CPU ${last} in "${item}" is above ${MAX_CPU_ID}`);
      for (let cpu = first; cpu <= last; cpu++) cpus.add(cpu);
    } else if (/^\d+$/.test(item)) {
      const cpu = Number(item);
      if (cpu > MAX_CPU_ID) throw new Error(`CPU ${cpu} is above ${MAX_CPU_ID}`);
      cpus.add(cpu);
    } else {
      throw new Error(`"${item}" is not a CPU number or a range such as 1-3`);
    }
  }
  return [...cpus].sort((a, b) => a - b);
}

/** Parses a `0x` hexadecimal bitmap (bit n = CPU n). */
export function parseCpuBitmap(text: string): number[] {
  const hex = text.trim();
  if (!/^0[xX][0-9a-fA-F]+$/.test(hex)) throw new Error(`"${text}" is not a hexadecimal CPU bitmap such as 0x6`);
  let bits = BigInt(hex);
  const cpus: number[] = [];
  for (let cpu = 0; bits > 0n; cpu++, bits >>= 1n) {
    if (bits & 1n) {
      if (cpu > MAX_CPU_ID) throw new Error(`bitmap ${hex} names CPU ${cpu}, above ${MAX_CPU_ID}`);
      cpus.push(cpu);
    }
  }
  if (cpus.length === 0) throw new Error(`bitmap ${hex} selects no CPU`);
  return cpus;
}

/** VIRTIOFWD_CPU_MASK: a `0x` bitmap or a list. */
export function parseCpuMask(text: string): number[] {
  return /^\s*0[xX]/.test(text) ? parseCpuBitmap(text) : parseCpuList(text);
}

/** Formats sorted ids back into the kernel's compact list form ("0-2,5"). */
export function formatCpuList(cpus: readonly number[]): string {
  const sorted = [...new Set(cpus)].sort((a, b) => a - b);
  const parts: string[] = [];
  for (let i = 0; i < sorted.length; ) {
    let j = i;
    while (j + 1 < sorted.length && sorted[j + 1] === sorted[j] + 1) j++;
    parts.push(j === i ? `${sorted[i]}` : `${sorted[i]}-${sorted[j]}`);
    i = j + 1;
  }
  return parts.join(',');
}

/** The online CPUs from `<sysfsRoot>/devices/system/cpu/online`. */
export function readOnlineCpus(sysfsRoot: string): number[] {
  const path = join(sysfsRoot, 'devices/system/cpu/online');
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new Error(`cannot read the online CPUs from ${path}: ${(err as Error).message}`);
  }
  try {
    return parseCpuList(text);
  } catch (err) {
    throw new Error(`${path} holds "${text.trim()}": ${(err as Error).message}`);
  }
}

/** NUMA node → its CPUs, from `<sysfsRoot>/devices/system/node/node<N>/cpulist`. Empty when the machine exposes no nodes. */
export function readNumaNodeCpus(sysfsRoot: string): Map<number, number[]> {
  const dir = join(sysfsRoot, 'devices/system/node');
  const nodes = new Map<number, number[]>();
  let entries: string[];
  try {
    entries = readdirSync(dir);
  } catch {
    return nodes;
  }
  for (const entry of entries) {
    const m = /^node(\d+)$/.exec(entry);
    if (!m) continue;
    const path = join(dir, entry, 'cpulist');
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch {
      continue;
    }
    // A memory-only node has an empty cpulist.
    nodes.set(Number(m[1]), text.trim() === '' ? [] : parseCpuList(text));
  }
  return new Map([...nodes.entries()].sort((a, b) => a[0] - b[0]));
}

/** The NUMA node of `cpu`, or -1 when sysfs does not say. */
export function numaNodeOfCpu(cpu: number, sysfsRoot: string): number {
  for (const [node, cpus] of readNumaNodeCpus(sysfsRoot)) if (cpus.includes(cpu)) return node;
  return -1;
}
