// The cached guest image: what the builder produces and when it rebuilds.
import { execFileSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hasBinary, requireOrSkip } from '../support/env.js';
import { ensureGuestImage, guestImageBuilder, guestImageDir, repoRoot, type GuestImage } from '../support/guest-image.js';

const XEN_ELFNOTE_PHYS32_ENTRY = 18;
const PT_NOTE = 4;

/** PVH entry point from the ELF notes of a 64-bit little-endian vmlinux, or undefined. */
function pvhEntry(elf: Buffer): number | undefined {
  const phoff = Number(elf.readBigUInt64LE(0x20));
  const phentsize = elf.readUInt16LE(0x36);
  const phnum = elf.readUInt16LE(0x38);
  for (let i = 0; i < phnum; i++) {
    const ph = phoff + i * phentsize;
    if (elf.readUInt32LE(ph) !== PT_NOTE) continue;
    const start = Number(elf.readBigUInt64LE(ph + 0x08));
    const end = start + Number(elf.readBigUInt64LE(ph + 0x20));
    for (let at = start; at + 12 <= end; ) {
      const namesz = elf.readUInt32LE(at);
      const descsz = elf.readUInt32LE(at + 4);
      const type = elf.readUInt32LE(at + 8);
      const name = elf.toString('latin1', at + 12, at + 12 + namesz).replace(/\0+$/, '');
      const desc = at + 12 + ((namesz + 3) & ~3);
      if (name === 'Xen' && type === XEN_ELFNOTE_PHYS32_ENTRY) return elf.readUInt32LE(desc);
      at = desc + ((descsz + 3) & ~3);
    }
  }
  return undefined;
}

/** Files of a newc cpio archive by name. */
function cpioEntries(archive: Buffer): Map<string, Buffer> {
  const entries = new Map<string, Buffer>();
  for (let at = 0; at + 110 <= archive.length; ) {
    expect(archive.toString('latin1', at, at + 6)).toBe('070701');
    const field = (n: number) => parseInt(archive.toString('latin1', at + 6 + n * 8, at + 14 + n * 8), 16);
    const fileSize = field(6);
    const nameSize = field(11);
    const name = archive.toString('latin1', at + 110, at + 110 + nameSize - 1);
    if (name === 'TRAILER!!!') break;
    const dataStart = (at + 110 + nameSize + 3) & ~3;
    entries.set(name, archive.subarray(dataStart, dataStart + fileSize));
    at = (dataStart + fileSize + 3) & ~3;
  }
  return entries;
}

describe('guest image', () => {
  let image: GuestImage;

  beforeAll(async () => {
    image = await ensureGuestImage();
  });

  it('has a bzImage kernel', () => {
    const bz = readFileSync(image.kernel);
    expect(bz.toString('latin1', 0x202, 0x206)).toBe('HdrS');
    expect(image.release).toMatch(/^\d+\.\d+\.\d+-\d+-amd64$/);
  });

  it('has the ELF vmlinux from inside the bzImage, with a PVH entry point', () => {
    const elf = readFileSync(image.vmlinux);
    expect(elf.subarray(0, 4)).toEqual(Buffer.from([0x7f, 0x45, 0x4c, 0x46]));
    expect(elf[4]).toBe(2); // 64-bit
    expect(elf.readUInt16LE(0x12)).toBe(62); // x86-64
    const entry = pvhEntry(elf);
    expect(entry).toBeGreaterThanOrEqual(0x100000);
    expect(elf.includes(`Linux version ${image.release}`)).toBe(true);
  });

  it('has an initramfs with /init, busybox and the virtio modules in load order', () => {
    const entries = cpioEntries(gunzipSync(readFileSync(image.initrd)));
    expect(entries.get('init')?.toString('utf8')).toBe(readFileSync(join(repoRoot, 'test/guest/init'), 'utf8'));
    expect(entries.get('bin/busybox')?.subarray(0, 4)).toEqual(Buffer.from([0x7f, 0x45, 0x4c, 0x46]));
    const order = entries.get('lib/modules/load-order')!.toString('utf8').trim().split('\n');
    for (const module of order) expect(entries.get(`lib/modules/${module}.ko`)?.subarray(0, 4)).toEqual(Buffer.from([0x7f, 0x45, 0x4c, 0x46]));
    // Dependencies load first: virtio before its transports, failover before virtio_net.
    expect(order.indexOf('virtio')).toBeLessThan(order.indexOf('virtio_pci'));
    expect(order.indexOf('virtio')).toBeLessThan(order.indexOf('virtio_mmio'));
    expect(order.indexOf('net_failover')).toBeLessThan(order.indexOf('virtio_net'));
    expect(order).toEqual(expect.arrayContaining(['virtio_net', 'virtio_pci', 'virtio_mmio']));
  });

  it('does nothing on a second build while the stamp matches', () => {
    const output = execFileSync('bash', [guestImageBuilder], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    expect(output).toBe('');
    const log = execFileSync('bash', ['-c', `"${guestImageBuilder}" 2>&1`], { encoding: 'utf8' });
    expect(log).toMatch(/up to date in /);
  });
});

describe.runIf(requireOrSkip(hasBinary('apt-get'), 'rebuilding the guest image needs apt-get'))('guest image rebuild', () => {
  let dir: string;

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'vio4wd-guest-image-'));
  });
  afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  it('rebuilds when a cached file no longer matches the stamp', () => {
    cpSync(guestImageDir(), dir, { recursive: true });
    const initrd = join(dir, 'initramfs.cpio.gz');
    writeFileSync(initrd, 'damaged');
    const log = execFileSync('bash', ['-c', `"${guestImageBuilder}" 2>&1`], {
      encoding: 'utf8',
      env: { ...process.env, VIO4WD_GUEST_DIR: dir },
      timeout: 600_000,
    });
    expect(log).toMatch(/built .* into /);
    expect(gunzipSync(readFileSync(initrd)).toString('latin1', 0, 6)).toBe('070701');
    const recipeLine = (stampDir: string) => readFileSync(join(stampDir, 'stamp'), 'utf8').split('\n')[0];
    expect(recipeLine(dir)).toBe(recipeLine(guestImageDir()));
  }, 600_000);
});
