// dump-guest-core=off / -omit_vm_memory: the kernel must mark guest RAM "dd" (MADV_DONTDUMP), so
// that a core dump of the VMM leaves it out. Read back from /proc/self/smaps.
import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { createGuestRam, guestSlice, writeGuest } from '../../vmm/guest-ram.js';
import { e820Map } from '../../vmm/boot.js';
import { munmap, viewAt } from '../../sys/memory.js';
import { closeSync } from 'node:fs';

function vmFlags(address: number): string[] {
  const smaps = readFileSync('/proc/self/smaps', 'utf8').split('\n');
  for (let i = 0; i < smaps.length; i++) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) /.exec(smaps[i]);
    if (!m || parseInt(m[1], 16) !== address) continue;
    for (let j = i + 1; j < smaps.length && !/^[0-9a-f]+-/.test(smaps[j]); j++) {
      if (smaps[j].startsWith('VmFlags:')) return smaps[j].slice(8).trim().split(/\s+/);
    }
  }
  throw new Error(`no mapping at 0x${address.toString(16)} in /proc/self/smaps`);
}

const memory = (shared: boolean) => ({ size: 256 * 2 ** 20, shared, hugepages: false, mergeable: false, zones: [] });

describe('guest RAM and core dumps', () => {
  it.each([true, false])('shared=%s: dump-guest-core=off marks the mapping dd, the default does not', (shared) => {
    for (const dumpGuestCore of [false, true]) {
      const ram = createGuestRam(memory(shared), { dumpGuestCore });
      try {
        expect(vmFlags(ram.zones[0].mapping.address).includes('dd')).toBe(!dumpGuestCore);
      } finally {
        for (const z of ram.zones) {
          munmap(z.mapping);
          if (z.fd >= 0) closeSync(z.fd);
        }
      }
    }
  });
});

describe('guest RAM over 4 GiB in one zone', () => {
  const GiB = 2 ** 30;
  it.each([false, true])('shared=%s: 5 GiB maps as 3 GiB below the MMIO hole and 2 GiB from 4 GiB, both writable', (shared) => {
    const ram = createGuestRam({ size: 5 * GiB, shared, hugepages: false, mergeable: false, zones: [] });
    try {
      expect(ram.size).toBe(5 * GiB);
      expect(ram.regions.map((r) => [r.guestPhysAddr, r.size, r.userAddr - ram.zones[0].mapping.address])).toEqual([
        [0, 3 * GiB, 0],
        [4 * GiB, 2 * GiB, 3 * GiB],
      ]);
      // The last page, and a write that a view of the whole zone could not have covered.
      writeGuest(ram, 6 * GiB - 4, Uint8Array.of(1, 2, 3, 4), 'test');
      writeGuest(ram, 3 * GiB - 2, Uint8Array.of(9, 9), 'test');
      expect([...guestSlice(ram, 6 * GiB - 4, 4, 'test')]).toEqual([1, 2, 3, 4]);
      expect([...guestSlice(ram, 3 * GiB - 2, 2, 'test')]).toEqual([9, 9]);
      // The same bytes through the host address: the regions really are one mapping.
      expect([...new Uint8Array(viewAt(ram.zones[0].mapping.address + 5 * GiB - 4, 4))]).toEqual([1, 2, 3, 4]);
      // The hole is not RAM, nor is anything past the end.
      expect(() => guestSlice(ram, 3 * GiB, 4, 'test')).toThrow(/not inside guest RAM/);
      expect(() => guestSlice(ram, 6 * GiB - 2, 4, 'test')).toThrow(/not inside guest RAM/);
    } finally {
      for (const z of ram.zones) {
        munmap(z.mapping);
        if (z.fd >= 0) closeSync(z.fd);
      }
    }
  });

  it('the e820 map has the RAM above 4 GiB', () => {
    expect(e820Map(5 * GiB).filter((e) => e.type === 1).map((e) => [e.addr, e.size])).toEqual([
      [0, 0x9fc00],
      [0x100000, 3 * GiB - 0x100000],
      [4 * GiB, 2 * GiB],
    ]);
  });
});
