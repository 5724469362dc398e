// Hugepage reservation for hugetlbfs-backed guests and DPDK: bounded, never lowered, mounted.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { isRoot, requireOrSkip } from '../support/env.js';
import {
  ensureHugepages,
  hugepagesFree,
  hugepagesTotal,
  hugetlbfsMounted,
  HUGEPAGE_MOUNT,
  MAX_HUGEPAGES,
} from '../support/hugepages.js';

describe('ensureHugepages input checks', () => {
  it.each([MAX_HUGEPAGES + 1, -1, 1.5, Number.NaN])('refuses %s pages before touching the kernel', (count) => {
    const before = readFileSync('/proc/sys/vm/nr_hugepages', 'utf8');
    expect(() => ensureHugepages(count)).toThrow(/hugepages: /);
    expect(readFileSync('/proc/sys/vm/nr_hugepages', 'utf8')).toBe(before);
  });
});

describe.runIf(requireOrSkip(isRoot(), 'reserving hugepages needs root'))('ensureHugepages as root', () => {
  it('keeps an existing, larger reservation and mounts hugetlbfs', () => {
    const before = hugepagesTotal();
    const result = ensureHugepages(Math.min(64, before));
    expect(result.total).toBe(before);
    expect(hugetlbfsMounted()).toBe(true);
    expect(readFileSync('/proc/mounts', 'utf8')).toMatch(new RegExp(`\\s${HUGEPAGE_MOUNT}\\shugetlbfs\\s`));
  });

  it('raises the reservation to the requested count and reports free pages within it', () => {
    const wanted = Math.min(MAX_HUGEPAGES, Math.max(hugepagesTotal(), 300));
    const result = ensureHugepages(wanted);
    expect(result.total).toBeGreaterThanOrEqual(wanted);
    expect(hugepagesFree()).toBeLessThanOrEqual(result.total);
  });
});
