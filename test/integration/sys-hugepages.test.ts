// Guest memory on huge pages: a hugetlb memfd and a file on hugetlbfs, mapped twice, both views
// seeing the same bytes. Needs free 2 MiB huge pages.
import { describe, it, expect } from 'vitest';
import { readFileSync, openSync, closeSync, unlinkSync, existsSync } from 'node:fs';
import { memfdCreate, ftruncate, mmap, munmap, viewAt, MAP_SHARED } from '../../sys/memory.js';
import { close } from '../../sys/fd.js';
import { requireOrSkip } from '../support/env.js';

const HUGE = 2 * 1024 * 1024;

function freeHugePages(): number {
  const m = /HugePages_Free:\s+(\d+)/.exec(readFileSync('/proc/meminfo', 'utf8'));
  return m ? Number(m[1]) : 0;
}

function checkTwoMappings(fd: number): void {
  ftruncate(fd, 2 * HUGE);
  const a = mmap({ length: 2 * HUGE, flags: MAP_SHARED, fd });
  const b = mmap({ length: HUGE, flags: MAP_SHARED, fd, offset: HUGE });
  try {
    expect(a.address % HUGE).toBe(0);
    new Uint8Array(a.buffer).set([9, 8, 7], HUGE + 100);
    expect([...new Uint8Array(b.buffer, 100, 3)]).toEqual([9, 8, 7]);
    expect([...new Uint8Array(viewAt(b.address + 100, 3))]).toEqual([9, 8, 7]);
    // a huge-page file cannot be mapped at an offset that is not huge-page aligned
    expect(() => mmap({ length: HUGE, flags: MAP_SHARED, fd, offset: 4096 })).toThrow(expect.objectContaining({ code: 'EINVAL' }));
  } finally {
    munmap(a);
    munmap(b);
  }
}

describe('huge pages', () => {
  it('maps a hugetlb memfd', () => {
    if (!requireOrSkip(freeHugePages() >= 2, 'needs 2 free 2 MiB huge pages (echo N > /proc/sys/vm/nr_hugepages)')) return;
    const fd = memfdCreate('guest-ram-huge', { hugetlb: true });
    try {
      checkTwoMappings(fd);
    } finally {
      close(fd);
    }
  });

  it('maps a file on hugetlbfs', () => {
    if (!requireOrSkip(freeHugePages() >= 2 && existsSync('/dev/hugepages'), 'needs hugetlbfs on /dev/hugepages and 2 free huge pages')) return;
    const path = `/dev/hugepages/vio4wd-sys-test-${process.pid}`;
    const fd = openSync(path, 'w+');
    try {
      checkTwoMappings(fd);
    } finally {
      closeSync(fd);
      unlinkSync(path);
    }
  });
});
