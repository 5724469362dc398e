// A sysfs tree in a temporary directory, laid out like the kernel's (devices under
// devices/pci0000:00, bus/pci/devices and class/net as symlinks into it), so VIRTIOFWD_SYSFS_ROOT
// can point at it and PCI addresses resolve to interfaces the test chose, typically veths.
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative, dirname } from 'node:path';

export interface FakePciDevice {
  /** Canonical PCI address, e.g. 0000:05:08.1. */
  pci: string;
  /** The netdev(s) under `<pci>/net/`; empty for a function without a netdev (e.g. bound to vfio-pci). */
  ifnames?: string[];
  numaNode?: number;
  /** When given, the device is a VF of this PF address (a `physfn` link and the PF's `virtfn<N>`). */
  physfn?: string;
  /** The VF's index under its PF (virtfn<index>); defaults to the order VFs of that PF are listed. */
  vfIndex?: number;
}

export interface FakeSysfsOptions {
  devices?: FakePciDevice[];
  /** Plain interfaces with no PCI device (like veths): `class/net/<name>` without `device`. */
  virtualInterfaces?: string[];
  /** Content of devices/system/cpu/online (default "0-1"). */
  onlineCpus?: string;
  /** NUMA node → cpulist text (default { 0: onlineCpus }). */
  numaNodes?: Record<number, string>;
}

export interface FakeSysfs {
  root: string;
  /** Adds a device after creation (hot plug). */
  addDevice(device: FakePciDevice): void;
  remove(): void;
}

function link(target: string, at: string): void {
  mkdirSync(dirname(at), { recursive: true });
  symlinkSync(relative(dirname(at), target), at);
}

export function createFakeSysfs(options: FakeSysfsOptions = {}): FakeSysfs {
  const root = mkdtempSync(join(tmpdir(), `vio4wd-sysfs-${process.pid}-`));
  const pciRoot = join(root, 'devices/pci0000:00');
  mkdirSync(pciRoot, { recursive: true });
  mkdirSync(join(root, 'bus/pci/devices'), { recursive: true });
  mkdirSync(join(root, 'class/net'), { recursive: true });
  const vfCounts = new Map<string, number>();

  const ensureDevice = (pci: string, numaNode: number): string => {
    const dir = join(pciRoot, pci);
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'numa_node'), `${numaNode}\n`);
    try {
      link(dir, join(root, 'bus/pci/devices', pci));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    return dir;
  };

  const addDevice = (device: FakePciDevice): void => {
    const dir = ensureDevice(device.pci, device.numaNode ?? -1);
    if (device.physfn) {
      const pfDir = ensureDevice(device.physfn, device.numaNode ?? -1);
      link(pfDir, join(dir, 'physfn'));
      const index = device.vfIndex ?? vfCounts.get(device.physfn) ?? 0;
      vfCounts.set(device.physfn, Math.max(index + 1, vfCounts.get(device.physfn) ?? 0));
      link(dir, join(pfDir, `virtfn${index}`));
    }
    for (const ifname of device.ifnames ?? []) {
      const netDir = join(dir, 'net', ifname);
      mkdirSync(netDir, { recursive: true });
      link(dir, join(netDir, 'device'));
      link(netDir, join(root, 'class/net', ifname));
    }
  };

  for (const device of options.devices ?? []) addDevice(device);
  for (const ifname of options.virtualInterfaces ?? []) {
    const dir = join(root, 'devices/virtual/net', ifname);
    mkdirSync(dir, { recursive: true });
    link(dir, join(root, 'class/net', ifname));
  }

  const online = options.onlineCpus ?? '0-1';
  mkdirSync(join(root, 'devices/system/cpu'), { recursive: true });
  writeFileSync(join(root, 'devices/system/cpu/online'), `${online}\n`);
  for (const [node, cpulist] of Object.entries(options.numaNodes ?? { 0: online })) {
    const dir = join(root, 'devices/system/node', `node${node}`);
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'cpulist'), `${cpulist}\n`);
  }

  return {
    root,
    addDevice,
    remove: () => rmSync(root, { recursive: true, force: true }),
  };
}
