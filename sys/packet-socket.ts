// AF_PACKET socket plumbing shared by the packet rings: socket options, binding, statistics.
// Layouts follow <linux/if_packet.h>; every option call names the interface it was for.
import { libc, check, lastErrno, SysError } from './libc.js';

export const AF_PACKET = 17;
export const SOCK_RAW = 3;
export const ETH_P_ALL = 0x0003;
export const SOL_PACKET = 263;
export const SOL_SOCKET = 1;
export const SO_SNDBUF = 7;
export const SO_SNDBUFFORCE = 32;

export const PACKET_ADD_MEMBERSHIP = 1;
export const PACKET_RX_RING = 5;
export const PACKET_STATISTICS = 6;
export const PACKET_VERSION = 10;
export const PACKET_RESERVE = 12;
export const PACKET_TX_RING = 13;
export const PACKET_LOSS = 14;
export const PACKET_QDISC_BYPASS = 20;
/** Each frame sent starts with a struct virtio_net_hdr (10 bytes): checksum and GSO requests for the kernel. */
export const PACKET_VNET_HDR = 15;
export const PACKET_IGNORE_OUTGOING = 23;
export const PACKET_MR_PROMISC = 1;
export const TPACKET_V2 = 1;
export const TPACKET_V3 = 2;

// tp_status bits
export const TP_STATUS_KERNEL = 0;
export const TP_STATUS_USER = 1 << 0;
export const TP_STATUS_COPY = 1 << 1;
export const TP_STATUS_LOSING = 1 << 2;
export const TP_STATUS_CSUMNOTREADY = 1 << 3;
export const TP_STATUS_VLAN_VALID = 1 << 4;
export const TP_STATUS_BLK_TMO = 1 << 5;
export const TP_STATUS_VLAN_TPID_VALID = 1 << 6;
export const TP_STATUS_CSUM_VALID = 1 << 7;
export const TP_STATUS_AVAILABLE = 0;
export const TP_STATUS_SEND_REQUEST = 1 << 0;
export const TP_STATUS_SENDING = 1 << 1;
export const TP_STATUS_WRONG_FORMAT = 1 << 2;

const SOCK_CLOEXEC = 0o2000000;
const SOCK_NONBLOCK = 0o4000;

const socketNative = libc.func('int socket(int domain, int type, int protocol)');
const setsockoptNative = libc.func('int setsockopt(int fd, int level, int name, const void *value, uint32_t len)');
const getsockoptNative = libc.func('int getsockopt(int fd, int level, int name, void *value, void *len)');
const bindNative = libc.func('int bind(int fd, const void *addr, uint32_t addrlen)');

const htons = (v: number) => ((v & 0xff) << 8) | ((v >> 8) & 0xff);

/** A raw packet socket that receives nothing until bound with a protocol. */
export function packetSocket(ifname: string): number {
  return check(socketNative(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, 0), 'socket', `AF_PACKET for ${ifname}`);
}

export function setIntOption(fd: number, level: number, name: number, value: number, what: string): void {
  const v = new Int32Array([value]);
  check(setsockoptNative(fd, level, name, v, 4), 'setsockopt', what);
}

export function setBytesOption(fd: number, level: number, name: number, value: Uint8Array | Uint32Array, what: string): void {
  check(setsockoptNative(fd, level, name, value, value.byteLength), 'setsockopt', what);
}

/** Binds to `ifindex`; protocol 0 makes a send-only socket that the kernel never queues frames to. */
export function bindPacketSocket(fd: number, ifindex: number, protocol: number, ifname: string): void {
  const sll = new Uint8Array(20); // struct sockaddr_ll
  const view = new DataView(sll.buffer);
  view.setUint16(0, AF_PACKET, true);
  view.setUint16(2, htons(protocol), true);
  view.setInt32(4, ifindex, true);
  check(bindNative(fd, sll, sll.byteLength), 'bind', `AF_PACKET to ${ifname} (index ${ifindex})`);
}

export function addPromiscuousMembership(fd: number, ifindex: number, ifname: string): void {
  const mreq = new Uint8Array(16); // struct packet_mreq
  const view = new DataView(mreq.buffer);
  view.setInt32(0, ifindex, true);
  view.setUint16(4, PACKET_MR_PROMISC, true);
  setBytesOption(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq, `PACKET_ADD_MEMBERSHIP promiscuous on ${ifname}`);
}

/** A larger send buffer keeps more TX-ring frames in flight; SO_SNDBUFFORCE needs CAP_NET_ADMIN. */
export function growSendBuffer(fd: number, bytes: number): void {
  const v = new Int32Array([bytes]);
  if (setsockoptNative(fd, SOL_SOCKET, SO_SNDBUFFORCE, v, 4) === 0) return;
  setsockoptNative(fd, SOL_SOCKET, SO_SNDBUF, v, 4);
}

/** Tries an option the running kernel may lack; returns false on ENOPROTOOPT/EINVAL. */
export function tryIntOption(fd: number, level: number, name: number, value: number, what: string): boolean {
  const v = new Int32Array([value]);
  if (setsockoptNative(fd, level, name, v, 4) === 0) return true;
  const errno = lastErrno();
  if (errno === 92 || errno === 22) return false;
  throw new SysError('setsockopt', errno, what);
}

/**
 * Reads and resets the kernel's counters (struct tpacket_stats_v3). `packets` counts every frame
 * the socket saw, including the dropped ones; `drops` those lost because the ring was full.
 */
export function readPacketStatistics(fd: number, out: Uint32Array, outLength: Uint32Array): { packets: number; drops: number; freezeCount: number } {
  outLength[0] = out.byteLength;
  check(getsockoptNative(fd, SOL_PACKET, PACKET_STATISTICS, out, outLength), 'getsockopt', `PACKET_STATISTICS on fd ${fd}`);
  return { packets: out[0], drops: out[1], freezeCount: outLength[0] >= 12 ? out[2] : 0 };
}
