// dump-guest-core=off / -omit_vm_memory: the kernel must mark guest RAM "dd" (MADV_DONTDUMP), so
// that a core dump of the VMM leaves it out. Read back from /proc/self/smaps.
import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { createGuestRam } from '../../vmm/guest-ram.js';
import { munmap } from '../../sys/memory.js';
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
