// Network interfaces: name ⇄ index, and link state from sysfs (bond failover watches carrier).
import { readFileSync, writeFileSync } from 'node:fs';
import { libc, lastErrno, SysError } from './libc.js';

const IF_NAMESIZE = 16;

const ifNameToIndexNative = libc.func('unsigned int if_nametoindex(const char *ifname)');
const ifIndexToNameNative = libc.func('intptr_t if_indextoname(unsigned int ifindex, void *ifname)');

function checkName(name: string): void {
  if (name.length === 0 || Buffer.byteLength(name) >= IF_NAMESIZE || name.includes('/') || name === '.' || name === '..') {
    throw new SysError('if_nametoindex', 19, `bad interface name "${name}"`);
  }
}

/** Throws SysError ENODEV when there is no such interface in this network namespace. */
export function ifNameToIndex(name: string): number {
  checkName(name);
  const index = ifNameToIndexNative(name) as number;
  if (index === 0) throw new SysError('if_nametoindex', lastErrno() || 19, `interface ${name}`);
  return index;
}

export function ifIndexToName(index: number): string {
  const buf = Buffer.alloc(IF_NAMESIZE);
  if ((ifIndexToNameNative(index >>> 0, buf) as number) === 0) throw new SysError('if_indextoname', lastErrno() || 6, `interface index ${index}`);
  const end = buf.indexOf(0);
  return buf.toString('utf8', 0, end < 0 ? IF_NAMESIZE : end);
}

function readAttribute(ifname: string, attribute: string, sysfsNet: string): string | null {
  try {
    return readFileSync(`${sysfsNet}/${ifname}/${attribute}`, 'utf8').trim();
  } catch {
    // sysfs answers EINVAL for carrier while the link is administratively down
    return null;
  }
}

/** True when the link is up with carrier (a veth whose peer is up, a VF with its cable in). */
export function linkHasCarrier(ifname: string, sysfsNet = '/sys/class/net'): boolean {
  checkName(ifname);
  const carrier = readAttribute(ifname, 'carrier', sysfsNet);
  if (carrier !== null) return carrier === '1';
  return readAttribute(ifname, 'operstate', sysfsNet) === 'up';
}

/** The MTU from sysfs; throws when the interface does not exist. */
export function linkMtu(ifname: string, sysfsNet = '/sys/class/net'): number {
  checkName(ifname);
  const text = readAttribute(ifname, 'mtu', sysfsNet);
  if (text === null) throw new SysError('read', 19, `${sysfsNet}/${ifname}/mtu`);
  return Number(text);
}

/**
 * Sets the MTU through sysfs (the kernel's dev_set_mtu, as `ip link set mtu` does over netlink).
 * Throws SysError with the kernel's errno: EINVAL when the device's max_mtu is lower (or its min
 * higher), ERANGE for a VLAN above its real device's MTU, EPERM without CAP_NET_ADMIN, ENOENT
 * (ENODEV) when there is no such interface.
 */
export function setLinkMtu(ifname: string, mtu: number, sysfsNet = '/sys/class/net'): void {
  checkName(ifname);
  if (!Number.isInteger(mtu) || mtu < 0 || mtu > 0xffff_ffff) throw new RangeError(`MTU ${mtu} for ${ifname} is not a u32`);
  try {
    writeFileSync(`${sysfsNet}/${ifname}/mtu`, `${mtu}\n`);
  } catch (err) {
    const errno = Math.abs((err as NodeJS.ErrnoException).errno ?? 5);
    throw new SysError('write', errno, `${sysfsNet}/${ifname}/mtu = ${mtu}`);
  }
}
