import { readdirSync } from 'node:fs';
import { describe, it, expect } from 'vitest';
import {
  numaNodeOfAddress,
  memfdCreate, ftruncate, fstatSize, mmap, munmap, viewAt, madvise, mbind,
  PROT_READ, PROT_WRITE, MAP_SHARED, MAP_PRIVATE, MAP_NORESERVE, MADV_MERGEABLE, MADV_DONTDUMP, MADV_DONTNEED,
} from '../../sys/memory.js';
import { close } from '../../sys/fd.js';
import { SysError } from '../../sys/libc.js';

describe('memory', () => {
  it('maps a memfd twice and both mappings and a viewAt see the same bytes', () => {
    const fd = memfdCreate('guest-ram');
    try {
      ftruncate(fd, 2 * 4096);
      expect(fstatSize(fd)).toBe(8192);
      const first = mmap({ length: 8192, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED, fd });
      const second = mmap({ length: 4096, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED, fd, offset: 4096 });
      expect(first.buffer.byteLength).toBe(8192);
      expect(first.address % 4096).toBe(0);
      new Uint8Array(first.buffer).set([1, 2, 3], 4096 + 10);
      expect([...new Uint8Array(second.buffer, 10, 3)]).toEqual([1, 2, 3]);
      const view = new Uint8Array(viewAt(first.address + 4096, 16));
      expect([...view.subarray(10, 13)]).toEqual([1, 2, 3]);
      view[0] = 99;
      expect(new Uint8Array(second.buffer)[0]).toBe(99);
      munmap(first);
      munmap(second);
    } finally {
      close(fd);
    }
  });

  it('maps anonymous memory, zero-filled, and applies madvise', () => {
    const m = mmap({ length: 3 * 4096, flags: MAP_PRIVATE });
    const bytes = new Uint8Array(m.buffer);
    expect(bytes.every((b) => b === 0)).toBe(true);
    bytes[5] = 7;
    madvise(m, MADV_DONTDUMP);
    madvise(m, MADV_MERGEABLE);
    madvise(m, MADV_DONTNEED); // private anonymous pages read back as zero afterwards
    expect(bytes[5]).toBe(0);
    munmap(m);
  });

  it('binds a mapping to NUMA node 0 and refuses a node that does not exist', () => {
    const m = mmap({ length: 4096, flags: MAP_PRIVATE });
    try {
      mbind(m, 0);
      expect(() => mbind(m, 63)).toThrow(expect.objectContaining({ syscall: 'mbind', code: 'EINVAL' }));
      expect(() => mbind(m, -1)).toThrow(RangeError);
    } finally {
      munmap(m);
    }
  });

  it('carries errno codes: mmap of a bad fd is EBADF, unaligned munmap is EINVAL', () => {
    let caught: unknown;
    try {
      mmap({ length: 4096, flags: MAP_SHARED, fd: 9999 });
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(SysError);
    expect((caught as SysError).code).toBe('EBADF');
    expect((caught as SysError).syscall).toBe('mmap');
    expect((caught as SysError).message).toMatch(/fd 9999/);
    expect(() => munmap({ address: 4097, length: 4096 })).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    expect(() => ftruncate(9999, 10)).toThrow(expect.objectContaining({ code: 'EBADF' }));
    expect(() => fstatSize(9999)).toThrow(expect.objectContaining({ code: 'EBADF' }));
  });

  it('maps past the end of a memfd only as far as the kernel allows, and rejects bad lengths', () => {
    const fd = memfdCreate('small');
    try {
      expect(() => mmap({ length: 0, fd })).toThrow(RangeError);
      expect(() => mmap({ length: -4096, fd })).toThrow(RangeError);
      expect(() => viewAt(0, 10)).toThrow(RangeError);
      expect(() => viewAt(4096, 0)).toThrow(RangeError);
      expect(() => viewAt(4096, 2 ** 33)).toThrow(RangeError); // koffi would abort the process
      expect(() => mmap({ length: 2 ** 33 })).toThrow(/map with view: false or in pieces/);
      // Without a view, a mapping may be larger than one view covers (guest RAM over 4 GiB).
      const big = mmap({ length: 2 ** 33, flags: MAP_PRIVATE | MAP_NORESERVE, view: false });
      expect(big.buffer.byteLength).toBe(0);
      new Uint8Array(viewAt(big.address + 2 ** 33 - 4096, 4096))[4095] = 7;
      expect(new Uint8Array(viewAt(big.address + 2 ** 33 - 1, 1))[0]).toBe(7);
      munmap(big);
      expect(() => ftruncate(fd, -1)).toThrow(RangeError);
      expect(() => mmap({ length: 4096, fd, offset: 100 })).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    } finally {
      close(fd);
    }
  });

  it('creates sealable memfds and reports hugetlb failures by errno', () => {
    const fd = memfdCreate('sealable', { allowSealing: true });
    close(fd);
    try {
      close(memfdCreate('huge', { hugetlb: true }));
    } catch (err) {
      // no hugetlb support configured on this kernel: the error must still say what failed
      expect((err as SysError).syscall).toBe('memfd_create');
    }
  });

  it('tells the NUMA node of a touched page, and -1 for an address that is not mapped', () => {
    const m = mmap({ length: 4096, prot: PROT_READ | PROT_WRITE, flags: MAP_PRIVATE });
    new Uint8Array(m.buffer)[0] = 1;
    const node = numaNodeOfAddress(m.address);
    const nodes = readdirSync('/sys/devices/system/node').filter((n) => /^node\d+$/.test(n)).map((n) => Number(n.slice(4)));
    expect(nodes).toContain(node);
    expect(numaNodeOfAddress(4096)).toBe(-1);
    munmap(m);
  });
});
