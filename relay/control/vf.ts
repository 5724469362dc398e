// From a VF as the operator names it (a PCI address, or a plain interface name) to the kernel netdev
// the relay polls, through sysfs. The sysfs root is a parameter so tests can build a fake tree whose
// PCI addresses lead to veths.
import { existsSync, readdirSync, readFileSync, realpathSync } from 'node:fs';
import { basename, join } from 'node:path';
import { canonicalPciAddress, looksLikePciAddress, tryCanonicalPciAddress } from '../../vocabulary/pci.js';
import { checkInterfaceName, isValidInterfaceName } from '../../vocabulary/netdev-name.js';
import type { NetdevInfo, VfRef } from '../registry-api.js';


export interface ResolvedVf {
  /** Canonical PCI address; undefined for a plain interface that is not a VF. */
  pci?: string;
  netdev: string;
}

/** The netdev of the PCI device `pci` (`<sysfsRoot>/bus/pci/devices/<pci>/net/<ifname>`). */
export function netdevOfPci(pci: string, sysfsRoot = '/sys'): string {
  const address = canonicalPciAddress(pci);
  const deviceDir = join(sysfsRoot, 'bus/pci/devices', address);
  if (!existsSync(deviceDir)) throw new Error(`VF ${address} does not exist: no ${deviceDir}`);
  const netDir = join(deviceDir, 'net');
  let names: string[] = [];
  try {
    names = readdirSync(netDir).sort();
  } catch {
    /* no net directory: reported below */
  }
  if (names.length === 0) {
    throw new Error(
      `VF ${address} has no netdev under ${netDir} (is it bound to a network driver rather than vfio-pci or no driver?)`,
    );
  }
  // One function has one netdev in practice; several (multi-port functions) take the first by name.
  return names[0];
}

/**
 * Resolves what the operator gave: a PCI address (via its netdev) or a plain interface name,
 * which is accepted as it is when `<sysfsRoot>/class/net/<name>` exists (veths, taps, PFs).
 */
export function resolveVf(ref: string | VfRef, sysfsRoot = '/sys'): ResolvedVf {
  if (typeof ref !== 'string') {
    if (ref.pci !== undefined) return { pci: canonicalPciAddress(ref.pci), netdev: netdevOfPci(ref.pci, sysfsRoot) };
    if (ref.netdev !== undefined) return resolveVf(ref.netdev, sysfsRoot);
    throw new Error('a VF reference needs a PCI address or an interface name');
  }
  const text = ref.trim();
  if (looksLikePciAddress(text) || text.includes(':')) {
    const pci = canonicalPciAddress(text);
    return { pci, netdev: netdevOfPci(pci, sysfsRoot) };
  }
  if (!isValidInterfaceName(text)) {
    throw new Error(`"${ref}" is neither a PCI address nor a network interface name`);
  }
  const classDir = join(sysfsRoot, 'class/net', text);
  if (!existsSync(classDir)) throw new Error(`interface ${text} does not exist: no ${classDir}`);
  const pci = vfOfNetdev(text, sysfsRoot);
  return pci ? { pci, netdev: text } : { netdev: text };
}

/**
 * The PCI address of `ifname` when it is an SR-IOV VF (its device has a `physfn` link), else null.
 */
export function vfOfNetdev(ifname: string, sysfsRoot = '/sys'): string | null {
  if (!isValidInterfaceName(ifname)) throw new Error(`"${ifname}" is not a network interface name`);
  const device = join(sysfsRoot, 'class/net', ifname, 'device');
  if (!existsSync(join(device, 'physfn'))) return null;
  const target = realpathSync(device);
  const pci = tryCanonicalPciAddress(basename(target));
  if (!pci) throw new Error(`interface ${ifname}: its device ${target} is not named by a PCI address`);
  return pci;
}

function readNumaNode(path: string): number {
  try {
    const node = Number(readFileSync(path, 'utf8').trim());
    return Number.isInteger(node) && node >= 0 ? node : -1;
  } catch {
    return -1;
  }
}

/**
 * The NUMA node of a PCI device or of an interface's device, or -1 when unknown (no NUMA, a
 * virtual interface such as a veth, or the kernel's own -1).
 */
export function numaNodeOf(ref: string | VfRef, sysfsRoot = '/sys'): number {
  const pci = typeof ref === 'string' ? tryCanonicalPciAddress(ref) : ref.pci ? canonicalPciAddress(ref.pci) : null;
  if (pci) return readNumaNode(join(sysfsRoot, 'bus/pci/devices', pci, 'numa_node'));
  const ifname = typeof ref === 'string' ? ref : ref.netdev;
  if (!ifname || !isValidInterfaceName(ifname)) return -1;
  return readNumaNode(join(sysfsRoot, 'class/net', ifname, 'device/numa_node'));
}

/** The VF's index under its PF (`physfn/virtfnN` pointing at it), or undefined for a non-VF. */
export function vfIndexOfNetdev(netdev: string, sysfsRoot = '/sys'): number | undefined {
  checkInterfaceName(netdev);
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

/**
 * What the control channels need to know of an interface they were given by name: a VF (it has a
 * `device/physfn` link) is named by its PCI address, with its index under the PF; anything else (a
 * veth, a PF, a tap) is handed over as a plain netdev.
 */
export function describeNetdev(netdev: string, sysfsRoot = '/sys'): NetdevInfo {
  checkInterfaceName(netdev);
  const pci = vfOfNetdev(netdev, sysfsRoot);
  return pci ? { ref: { pci }, vfIndex: vfIndexOfNetdev(netdev, sysfsRoot) } : { ref: { netdev } };
}
