// From a kernel interface name (what OVSDB rows and IPC commands carry) to the VfRef the registry
// takes. A VF is recognised by its `device/physfn` link (the relay's own sysfs lookup in
// relay/vf.ts) and named by its PCI address; anything else (a veth, a PF, a tap) is handed over as
// a plain netdev. The sysfs root is configurable so tests can point it at a fake tree.
import { existsSync, readdirSync, realpathSync } from 'node:fs';
import { join } from 'node:path';
import type { VfRef } from '../relay/registry-api.js';
import { isValidInterfaceName, vfOfNetdev } from '../relay/vf.js';

export type NetdevResolver = (netdev: string) => VfRef;

export function checkNetdevName(netdev: string): void {
  if (!isValidInterfaceName(netdev)) {
    throw new Error(`${JSON.stringify(netdev)} is not a valid interface name (1 to 15 characters, no '/', ':' or spaces)`);
  }
}

export function netdevResolver(sysfsRoot = '/sys'): NetdevResolver {
  return (netdev) => {
    checkNetdevName(netdev);
    const pci = vfOfNetdev(netdev, sysfsRoot);
    return pci ? { pci } : { netdev };
  };
}

/** The VF's index under its PF (`physfn/virtfnN` pointing at it), or undefined for a non-VF. */
export function vfIndexOfNetdev(netdev: string, sysfsRoot = '/sys'): number | undefined {
  checkNetdevName(netdev);
  const device = join(sysfsRoot, 'class/net', netdev, 'device');
  const physfn = join(device, 'physfn');
  if (!existsSync(physfn)) return undefined;
  const self = realpathSync(device);
  for (const entry of readdirSync(physfn)) {
    const m = /^virtfn(\d+)$/.exec(entry);
    if (m && realpathSync(join(physfn, entry)) === self) return Number(m[1]);
  }
  return undefined;
}
