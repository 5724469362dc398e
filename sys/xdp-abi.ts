// The kernel's AF_XDP interface as both sides of a port use it: socket options and ring offsets
// (linux/if_xdp.h), the libc calls, ring words holding 48-bit UMEM addresses, and XDP_STATISTICS.
// xdp-socket.ts opens and closes ports with it; xdp-port.ts polls them.
import { libc, check } from './libc.js';

export const AF_XDP = 44;
export const SOCK_RAW = 3;
export const SOCK_CLOEXEC = 0o2000000;
export const SOL_XDP = 283;
export const XDP_MMAP_OFFSETS = 1;
export const XDP_RX_RING = 2;
export const XDP_TX_RING = 3;
export const XDP_UMEM_REG = 4;
export const XDP_UMEM_FILL_RING = 5;
export const XDP_UMEM_COMPLETION_RING = 6;
export const XDP_STATISTICS = 7;
export const XDP_OPTIONS = 8;
export const XDP_OPTIONS_ZEROCOPY = 1;
export const XDP_COPY = 1 << 1;
export const XDP_ZEROCOPY = 1 << 2;
export const XDP_USE_NEED_WAKEUP = 1 << 3;
/** Multi-buffer: a frame may span several chunks (Linux 6.6), each descriptor but the last marked XDP_PKT_CONTD. */
export const XDP_USE_SG = 1 << 4;
export const XDP_PKT_CONTD = 1;
export const XDP_SHARED_UMEM = 1 << 0;
export const XDP_UMEM_UNALIGNED_CHUNK_FLAG = 1 << 0;
export const XDP_RING_NEED_WAKEUP = 1;
export const XDP_PGOFF_RX_RING = 0;
export const XDP_PGOFF_TX_RING = 0x80000000;
export const XDP_UMEM_PGOFF_FILL_RING = 0x100000000;
export const XDP_UMEM_PGOFF_COMPLETION_RING = 0x180000000;
/** The kernel leaves this much room before each received frame in a chunk (XDP_PACKET_HEADROOM). */
export const XDP_PACKET_HEADROOM = 256;
export const ETH_HEADER = 14;
export const VLAN_TAG = 4;
export const MSG_DONTWAIT = 0x40;
export const EAGAIN = 11;
export const EBUSY = 16;
export const EEXIST = 17;
export const ENOBUFS = 105;
export const EINTR = 4;

/** 2^32, for 64-bit ring words split in two. */
export const TWO32 = 2 ** 32;

/** A word to Atomics.wait on: a thread's short sleeps (bind retries, waiting for completions). */
export const pause = new Int32Array(new SharedArrayBuffer(4));

export const socketNative = libc.func('int socket(int domain, int type, int protocol)');
export const setsockoptNative = libc.func('int setsockopt(int fd, int level, int name, const void *value, uint32_t len)');
export const getsockoptNative = libc.func('int getsockopt(int fd, int level, int name, void *value, void *len)');
export const bindNative = libc.func('int bind(int fd, const void *addr, uint32_t addrlen)');
export const sendtoNative = libc.func('intptr_t sendto(int fd, intptr_t buf, size_t len, int flags, intptr_t addr, uint32_t addrlen)');
export const recvfromNative = libc.func('intptr_t recvfrom(int fd, intptr_t buf, size_t len, int flags, intptr_t addr, intptr_t addrlen)');

/** A UMEM address (up to 48 bits) in a ring entry's two little-endian 32-bit words at `at`. */
export function setAddress(words: Uint32Array, at: number, address: number): void {
  words[at] = address >>> 0;
  words[at + 1] = address < TWO32 ? 0 : Math.floor(address / TWO32);
}

/**
 * The kernel's XDP_STATISTICS of the sockets `fds`, summed (cumulative). `drops` are the frames
 * that reached a socket and were lost: no chunk to copy into, or too long (rx_dropped), and no
 * room in the RX ring (rx_ring_full). An empty fill ring is also counted by the allocation that
 * failed, so it is reported apart, not added. `stats` (6 words) and `statsLength` are scratch.
 */
export function sumXdpStatistics(fds: number[], stats: BigUint64Array, statsLength: Uint32Array) {
  let rxDropped = 0;
  let ringFull = 0;
  let fillEmpty = 0;
  let invalid = 0;
  for (const fd of fds) {
    statsLength[0] = stats.byteLength;
    check(getsockoptNative(fd, SOL_XDP, XDP_STATISTICS, stats, statsLength), 'getsockopt', `XDP_STATISTICS on fd ${fd}`);
    // struct xdp_statistics: rx_dropped, rx_invalid_descs, tx_invalid_descs, rx_ring_full, rx_fill_ring_empty_descs, tx_ring_empty_descs
    rxDropped += Number(stats[0]);
    invalid += Number(stats[1]) + Number(stats[2]);
    ringFull += Number(stats[3]);
    fillEmpty += Number(stats[4]);
  }
  return { rxDropped, ringFull, fillEmpty, invalid, drops: rxDropped + ringFull };
}
