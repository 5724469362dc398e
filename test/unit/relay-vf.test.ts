import { symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readNumaNodeCpus, numaNodeOfCpu } from '../../sys/topology.js';
import { isValidInterfaceName } from '../../vocabulary/netdev-name.js';
import { netdevOfPci, numaNodeOf, resolveVf, vfOfNetdev } from '../../relay/control/vf.js';
import { isRoot, run } from '../support/env.js';
import { createFakeSysfs, type FakeSysfs } from '../support/fake-sysfs.js';
import { deleteLink, uniqueTag } from '../support/netns.js';

describe('interface names', () => {
  it('accepts what Linux accepts as a netdev name', () => {
    expect(isValidInterfaceName('eth0')).toBe(true);
    expect(isValidInterfaceName('a'.repeat(15))).toBe(true);
    expect(isValidInterfaceName('a'.repeat(16))).toBe(false);
    expect(isValidInterfaceName('a/b')).toBe(false);
    expect(isValidInterfaceName('a b')).toBe(false);
    expect(isValidInterfaceName('..')).toBe(false);
    expect(isValidInterfaceName('')).toBe(false);
  });
});

describe('VF resolution through a fake sysfs', () => {
  let sysfs: FakeSysfs;
  beforeAll(() => {
    sysfs = createFakeSysfs({
      devices: [
        { pci: '0000:05:08.1', ifnames: ['vfa'], physfn: '0000:05:00.0', numaNode: 1 },
        { pci: '0000:05:08.2', ifnames: ['vfb'], physfn: '0000:05:00.0', numaNode: 1 },
        { pci: '0000:05:08.3', ifnames: [], physfn: '0000:05:00.0' },
        { pci: '0000:06:00.0', ifnames: ['pf1'], numaNode: 0 },
      ],
      virtualInterfaces: ['veth-x'],
      onlineCpus: '0-3',
      numaNodes: { 0: '0-1', 1: '2-3', 2: '' },
    });
  });
  afterAll(() => sysfs.remove());

  it('resolves a PCI address to its netdev, in any spelling', () => {
    expect(netdevOfPci('0000:05:08.1', sysfs.root)).toBe('vfa');
    expect(resolveVf('05:08.2', sysfs.root)).toEqual({ pci: '0000:05:08.2', netdev: 'vfb' });
    expect(resolveVf('0000:05:08.1', sysfs.root)).toEqual({ pci: '0000:05:08.1', netdev: 'vfa' });
    expect(resolveVf({ pci: '0000:05:08.1' }, sysfs.root)).toEqual({ pci: '0000:05:08.1', netdev: 'vfa' });
  });

  it('says when a VF has no netdev and when the device does not exist', () => {
    expect(() => resolveVf('0000:05:08.3', sysfs.root)).toThrow(
      `VF 0000:05:08.3 has no netdev under ${sysfs.root}/bus/pci/devices/0000:05:08.3/net`,
    );
    expect(() => resolveVf('0000:07:00.0', sysfs.root)).toThrow(
      `VF 0000:07:00.0 does not exist: no ${sysfs.root}/bus/pci/devices/0000:07:00.0`,
    );
    expect(() => resolveVf('0000:05:20.0', sysfs.root)).toThrow('slot 0x20 is above 0x1f');
  });

  it('accepts a plain interface name that exists, and names a VF by its PCI address', () => {
    expect(resolveVf('veth-x', sysfs.root)).toEqual({ netdev: 'veth-x' });
    expect(resolveVf({ netdev: 'pf1' }, sysfs.root)).toEqual({ netdev: 'pf1' });
    expect(resolveVf('vfa', sysfs.root)).toEqual({ pci: '0000:05:08.1', netdev: 'vfa' });
    expect(() => resolveVf('nothere', sysfs.root)).toThrow(`interface nothere does not exist: no ${sysfs.root}/class/net/nothere`);
    expect(() => resolveVf('bad/name', sysfs.root)).toThrow('"bad/name" is neither a PCI address nor a network interface name');
    expect(() => resolveVf({}, sysfs.root)).toThrow('a VF reference needs a PCI address or an interface name');
  });

  it('finds the VF behind a netdev only when it has a physfn', () => {
    expect(vfOfNetdev('vfb', sysfs.root)).toBe('0000:05:08.2');
    expect(vfOfNetdev('pf1', sysfs.root)).toBeNull();
    expect(vfOfNetdev('veth-x', sysfs.root)).toBeNull();
    expect(vfOfNetdev('nothere', sysfs.root)).toBeNull();
    expect(() => vfOfNetdev('a b', sysfs.root)).toThrow('"a b" is not a network interface name');
  });

  it('sees a device added later (hot plug)', () => {
    expect(() => resolveVf('0000:05:08.4', sysfs.root)).toThrow('does not exist');
    sysfs.addDevice({ pci: '0000:05:08.4', ifnames: ['vfd'], physfn: '0000:05:00.0' });
    expect(resolveVf('0000:05:08.4', sysfs.root)).toEqual({ pci: '0000:05:08.4', netdev: 'vfd' });
    expect(vfOfNetdev('vfd', sysfs.root)).toBe('0000:05:08.4');
  });

  it('reads NUMA nodes of devices and CPUs', () => {
    expect(numaNodeOf('0000:05:08.1', sysfs.root)).toBe(1);
    expect(numaNodeOf({ pci: '06:00.0' }, sysfs.root)).toBe(0);
    expect(numaNodeOf('vfb', sysfs.root)).toBe(1);
    expect(numaNodeOf({ netdev: 'pf1' }, sysfs.root)).toBe(0);
    expect(numaNodeOf('0000:05:08.3', sysfs.root)).toBe(-1); // the kernel's own -1
    expect(numaNodeOf('veth-x', sysfs.root)).toBe(-1); // no device
    expect(numaNodeOf('0000:09:00.0', sysfs.root)).toBe(-1);
    expect(readNumaNodeCpus(sysfs.root)).toEqual(new Map([[0, [0, 1]], [1, [2, 3]], [2, []]]));
    expect(numaNodeOfCpu(3, sysfs.root)).toBe(1);
    expect(numaNodeOfCpu(9, sysfs.root)).toBe(-1);
  });

  it('links devices the way the kernel does, so realpath leads from class/net to the PCI device', () => {
    const link = join(sysfs.root, 'class/net/vfa/device');
    expect(run('readlink', ['-f', link]).trim()).toBe(join(sysfs.root, 'devices/pci0000:00/0000:05:08.1'));
  });

  it('refuses a device link that does not end in a PCI address', () => {
    const odd = createFakeSysfs({ virtualInterfaces: ['odd0'] });
    try {
      const deviceDir = join(odd.root, 'devices/platform/thing');
      run('mkdir', ['-p', join(deviceDir, 'physfn')]);
      symlinkSync(deviceDir, join(odd.root, 'devices/virtual/net/odd0/device'));
      expect(() => vfOfNetdev('odd0', odd.root)).toThrow(`interface odd0: its device ${deviceDir} is not named by a PCI address`);
    } finally {
      odd.remove();
    }
  });
});

describe('VF resolution against the real /sys', () => {
  it('accepts lo as a plain interface, not a VF', () => {
    expect(resolveVf('lo')).toEqual({ netdev: 'lo' });
    expect(vfOfNetdev('lo')).toBeNull();
    expect(numaNodeOf('lo')).toBe(-1);
  });

  it.skipIf(!isRoot())('accepts a real veth as a plain interface (needs root)', () => {
    const name = `vfv${uniqueTag()}`;
    try {
      run('ip', ['link', 'add', name, 'type', 'veth', 'peer', 'name', `${name}p`]);
      expect(resolveVf(name)).toEqual({ netdev: name });
      expect(vfOfNetdev(name)).toBeNull();
    } finally {
      deleteLink(name);
    }
    expect(() => resolveVf(name)).toThrow(`interface ${name} does not exist`);
  });

  it('a fake tree may point a PCI address at a real interface, as relay tests do with veths', () => {
    const sysfs = createFakeSysfs({ devices: [{ pci: '0000:05:08.1', ifnames: ['lo'], physfn: '0000:05:00.0' }] });
    try {
      expect(resolveVf('0000:05:08.1', sysfs.root)).toEqual({ pci: '0000:05:08.1', netdev: 'lo' });
    } finally {
      sysfs.remove();
    }
  });
});
