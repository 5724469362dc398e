// Network interfaces: name ⇄ index, and link state from sysfs (bond failover watches carrier).
import { readFileSync, writeFileSync } from 'node:fs';
import { check, libc, lastErrno, SysError } from './libc.js';
import { close } from './fd.js';

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

const AF_NETLINK = 16;
const SOCK_RAW = 3;
const SOCK_CLOEXEC = 0o2000000;
const NETLINK_ROUTE = 0;
const RTM_GETLINK = 18;
const RTM_NEWLINK = 16;
const NLMSG_ERROR = 2;
const NLM_F_REQUEST = 1;
const IFLA_MAX_MTU = 51;
const netlinkSocket = libc.func('int socket(int domain, int type, int protocol)');
const netlinkSend = libc.func('intptr_t send(int fd, const void *buf, size_t len, int flags)');
const netlinkRecv = libc.func('intptr_t recv(int fd, _Out_ void *buf, size_t len, int flags)');
const SO_RCVTIMEO_LEVEL = 1; // SOL_SOCKET
const SO_RCVTIMEO = 20;
const setsockopt = libc.func('int setsockopt(int fd, int level, int name, const void *value, uint32_t len)');

/**
 * The largest MTU the device's driver allows (IFLA_MAX_MTU over rtnetlink, the `maxmtu` of
 * `ip -d link`), or null when the kernel does not report one. Some devices refuse less than this
 * (a macvlan above its lower device, a VF above its PF), so it explains a refusal, never predicts one.
 */
export function linkMaxMtu(ifname: string): number | null {
  const index = ifNameToIndex(ifname);
  const fd = check(netlinkSocket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE) as number, 'socket', 'AF_NETLINK');
  try {
    const timeout = Buffer.alloc(16);
    timeout.writeBigInt64LE(1n, 0); // 1 s: the kernel answers at once, but never wait forever
    check(setsockopt(fd, SO_RCVTIMEO_LEVEL, SO_RCVTIMEO, timeout, 16) as number, 'setsockopt', 'SO_RCVTIMEO');
    const request = Buffer.alloc(32);
    request.writeUInt32LE(32, 0); // nlmsg_len
    request.writeUInt16LE(RTM_GETLINK, 4);
    request.writeUInt16LE(NLM_F_REQUEST, 6);
    request.writeUInt32LE(1, 8); // seq
    request.writeInt32LE(index, 20); // ifinfomsg.ifi_index (family 0 at 16)
    check(Number(netlinkSend(fd, request, 32, 0)), 'send', `RTM_GETLINK ${ifname}`);
    const reply = Buffer.alloc(65536);
    const n = check(Number(netlinkRecv(fd, reply, reply.length, 0)), 'recv', `RTM_GETLINK ${ifname}`);
    if (n < 16) return null;
    const type = reply.readUInt16LE(4);
    if (type === NLMSG_ERROR) {
      const errno = -reply.readInt32LE(16);
      throw new SysError('RTM_GETLINK', errno, ifname);
    }
    if (type !== RTM_NEWLINK) return null;
    const end = Math.min(n, reply.readUInt32LE(0));
    for (let at = 32; at + 4 <= end; ) {
      const len = reply.readUInt16LE(at);
      if (len < 4) break;
      if (reply.readUInt16LE(at + 2) === IFLA_MAX_MTU && len >= 8) return reply.readUInt32LE(at + 4);
      at += (len + 3) & ~3;
    }
    return null;
  } finally {
    close(fd);
  }
}
