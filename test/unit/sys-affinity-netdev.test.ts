import { readOnlineCpus } from '../../sys/topology.js';
import { describe, it, expect } from 'vitest';
import { mkdtempSync, mkdirSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gettid, setAffinity, getAffinity } from '../../sys/affinity.js';
import { ifNameToIndex, ifIndexToName, linkHasCarrier, linkMaxMtu, linkMtu, setLinkMtu } from '../../sys/netdev.js';
import { readFileSync } from 'node:fs';

describe('affinity', () => {
  it('pins the calling thread to CPU 0 and reads it back', () => {
    const original = getAffinity();
    try {
      setAffinity([0]);
      expect(getAffinity()).toEqual([0]);
      expect(getAffinity(gettid())).toEqual([0]);
    } finally {
      setAffinity(original);
    }
    expect(getAffinity()).toEqual(original);
  });

  it('gettid of the main thread is the process id', () => {
    expect(gettid()).toBe(process.pid);
  });

  it('refuses empty and impossible CPU sets', () => {
    expect(() => setAffinity([])).toThrow(RangeError);
    expect(() => setAffinity([1024])).toThrow(RangeError);
    expect(() => setAffinity([1023])).toThrow(expect.objectContaining({ syscall: 'sched_setaffinity', code: 'EINVAL' }));
    expect(() => getAffinity(0x3fffffff)).toThrow(expect.objectContaining({ code: 'ESRCH' }));
  });

  it('reads the online CPUs', () => {
    const online = readOnlineCpus();
    expect(online.length).toBeGreaterThan(0);
    expect(online).toContain(0);
  });
});

describe('netdev', () => {
  it('maps names to indexes and back', () => {
    expect(ifNameToIndex('lo')).toBe(1);
    expect(ifIndexToName(1)).toBe('lo');
    expect(linkMtu('lo')).toBeGreaterThan(0);
    // Loopback's driver sets no max_mtu: rtnetlink reports 0.
    expect(linkMaxMtu('lo')).toBe(0);
    expect(() => linkMaxMtu('nosuchif0')).toThrow(expect.objectContaining({ code: 'ENODEV' }));
    expect(() => ifNameToIndex('nosuchif0')).toThrow(expect.objectContaining({ code: 'ENODEV', message: expect.stringContaining('nosuchif0') }));
    expect(() => ifNameToIndex('a-name-that-is-too-long')).toThrow(/bad interface name/);
    expect(() => ifNameToIndex('../lo')).toThrow(/bad interface name/);
    expect(() => ifIndexToName(0x7ffffff0)).toThrow(expect.objectContaining({ syscall: 'if_indextoname' }));
  });

  it('reads carrier, falling back to operstate when carrier cannot be read', () => {
    const root = mkdtempSync(join(tmpdir(), 'sys-net-'));
    try {
      const link = (name: string, files: Record<string, string>) => {
        mkdirSync(join(root, name));
        for (const [f, v] of Object.entries(files)) writeFileSync(join(root, name, f), v);
      };
      link('up0', { carrier: '1\n', operstate: 'up\n' });
      link('nocarrier0', { carrier: '0\n', operstate: 'down\n' });
      link('admindown0', { operstate: 'down\n' });
      link('opup0', { operstate: 'up\n' });
      expect(linkHasCarrier('up0', root)).toBe(true);
      expect(linkHasCarrier('nocarrier0', root)).toBe(false);
      expect(linkHasCarrier('admindown0', root)).toBe(false);
      expect(linkHasCarrier('opup0', root)).toBe(true);
      expect(linkHasCarrier('missing0', root)).toBe(false);
      expect(linkHasCarrier('lo')).toBe(true);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it('writes an MTU to the interface\'s sysfs file and reads it back; refuses bad names, bad values and missing interfaces', () => {
    const root = mkdtempSync(join(tmpdir(), 'sys-net-'));
    try {
      mkdirSync(join(root, 'vf0'));
      writeFileSync(join(root, 'vf0', 'mtu'), '1500\n');
      setLinkMtu('vf0', 9000, root);
      expect(readFileSync(join(root, 'vf0', 'mtu'), 'utf8')).toBe('9000\n');
      expect(linkMtu('vf0', root)).toBe(9000);
      expect(() => setLinkMtu('missing0', 9000, root)).toThrow(
        expect.objectContaining({ code: 'ENOENT', syscall: 'write', message: expect.stringContaining(`${root}/missing0/mtu = 9000`) }),
      );
      expect(() => setLinkMtu('../vf0', 9000, root)).toThrow(/bad interface name/);
      expect(() => setLinkMtu('vf0', 9000.5, root)).toThrow(RangeError);
      expect(() => setLinkMtu('vf0', -1, root)).toThrow(/MTU -1 for vf0 is not a u32/);
      expect(linkMtu('vf0', root)).toBe(9000);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});
