// AF_XDP ports: one XDP socket per receive queue of an interface, all sharing one UMEM
// (xdp-umem.ts: the guest's memory when the port is given it, then chunks of the relay's own: per
// queue, half of them circulate through its fill and RX rings, half through its TX and completion
// rings), and the redirect program of sys/bpf.ts attached through a bpf_link.
//
// Like packet-ring.ts, openXdpPort() runs once off the data path and returns plain, postMessage-able
// data; XdpPort.attach() rebuilds views of the same mappings in the thread that polls. Where each
// ring stands lives in the rings' own producer and consumer words, so a thread that attaches later
// resumes exactly where the previous one stopped.
//
// Frame ownership, without a free list: RX chunk k is either in the fill ring, in the RX ring, or
// being delivered; it goes back to the fill ring as soon as it is delivered. TX descriptor i
// either names TX chunk (i mod ring size) or a frame in guest memory; a table beside the ring
// (shared, like the ring words) records which, and the completion ring's addresses free the
// entries, in whatever order the kernel completes them. A slot is reused once every older one is
// free, so a chunk is never rewritten while the kernel may still read it.
import { libc, check, lastErrno, SysError } from './libc.js';
import { close as closeFd } from './fd.js';
import { mmap, munmap, viewAt, MAP_SHARED, MAP_POPULATE, PROT_READ, PROT_WRITE } from './memory.js';
import { ifNameToIndex, linkMtu } from './netdev.js';
import { readdirSync } from 'node:fs';
import {
  createXskMap, setXskMapEntry, loadRedirectProgram, attachXdp, closeBpfFd, programId, XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE,
} from './bpf.js';
import { frameLengthAcceptable, type FrameAdmission, type FrameHandler } from './packet-ring.js';
import { buildUmemArea, releaseUmemArea, type UmemArea, type XdpGuestRegion } from './xdp-umem.js';
import { GuestRxTable, createGuestRxTable, releaseGuestRxTable, type GuestRxTableMapping } from './xdp-guest-rx.js';
import { interfaceXdp, joinDispatcher, leaveDispatcher, libxdpMissing, type JoinedProgram } from './libxdp.js';

const AF_XDP = 44;
const SOCK_RAW = 3;
const SOCK_CLOEXEC = 0o2000000;
const SOL_XDP = 283;
const XDP_MMAP_OFFSETS = 1;
const XDP_RX_RING = 2;
const XDP_TX_RING = 3;
const XDP_UMEM_REG = 4;
const XDP_UMEM_FILL_RING = 5;
const XDP_UMEM_COMPLETION_RING = 6;
const XDP_STATISTICS = 7;
const XDP_OPTIONS = 8;
const XDP_OPTIONS_ZEROCOPY = 1;
const XDP_COPY = 1 << 1;
const XDP_ZEROCOPY = 1 << 2;
const XDP_USE_NEED_WAKEUP = 1 << 3;
/** Multi-buffer: a frame may span several chunks (Linux 6.6), each descriptor but the last marked XDP_PKT_CONTD. */
const XDP_USE_SG = 1 << 4;
const XDP_PKT_CONTD = 1;
/** Largest MTU a multi-buffer port takes: 9216, the common jumbo ceiling (three 4 KiB chunks). */
const MAX_MULTI_BUFFER_MTU = 9216;
const XDP_SHARED_UMEM = 1 << 0;
const XDP_UMEM_UNALIGNED_CHUNK_FLAG = 1 << 0;
const XDP_RING_NEED_WAKEUP = 1;
const XDP_PGOFF_RX_RING = 0;
const XDP_PGOFF_TX_RING = 0x80000000;
const XDP_UMEM_PGOFF_FILL_RING = 0x100000000;
const XDP_UMEM_PGOFF_COMPLETION_RING = 0x180000000;
/** The kernel leaves this much room before each received frame in a chunk (XDP_PACKET_HEADROOM). */
const XDP_PACKET_HEADROOM = 256;
const ETH_HEADER = 14;
const VLAN_TAG = 4;
const MSG_DONTWAIT = 0x40;
const EAGAIN = 11;
const EBUSY = 16;
const EEXIST = 17;
const ENOBUFS = 105;
const EINTR = 4;

/** How long a bind that finds its queue busy is retried (the kernel releases a closed socket's queue later). */
const BIND_BUSY_WAIT_MS = 2000;

// The transmit slot table: one word (slots released so far), padding, then per slot of the TX
// ring its descriptor's address (low and high word) and what it carries: TX_FREE once completed,
// TX_RELAY for a relay chunk (or a guest frame already handed back), else the caller's key.
const TX_TABLE_HEADER = 64;
const TX_TABLE_ENTRY = 16;
const TX_FREE = -2;
const TX_RELAY = -1;
const TWO32 = 2 ** 32;
/** Zero copy: a frame sent from guest memory must stay inside one page (only the kernel knows which pages are contiguous for the device). */
const PAGE = 4096;
const pause = new Int32Array(new SharedArrayBuffer(4));

const socketNative = libc.func('int socket(int domain, int type, int protocol)');
const setsockoptNative = libc.func('int setsockopt(int fd, int level, int name, const void *value, uint32_t len)');
const getsockoptNative = libc.func('int getsockopt(int fd, int level, int name, void *value, void *len)');
const bindNative = libc.func('int bind(int fd, const void *addr, uint32_t addrlen)');
const sendtoNative = libc.func('intptr_t sendto(int fd, intptr_t buf, size_t len, int flags, intptr_t addr, uint32_t addrlen)');
const recvfromNative = libc.func('intptr_t recvfrom(int fd, intptr_t buf, size_t len, int flags, intptr_t addr, intptr_t addrlen)');

export type XdpAttachMode = 'native' | 'generic';

export interface XdpPortOptions {
  /** Where the program runs: in the driver ('native'), in the kernel's generic hook, or 'auto' (native, else generic). */
  attach?: XdpAttachMode | 'auto';
  /** Zero copy: 'auto' where the driver has it, 'off' (copy mode), 'required' (fail without it). */
  zeroCopy?: 'auto' | 'off' | 'required';
  /**
   * Frames larger than a chunk (a jumbo MTU): 'auto' (default) spreads them over several chunks
   * (multi-buffer AF_XDP, Linux 6.6 and later) when the MTU needs it; 'off' refuses such an MTU.
   */
  multiBuffer?: 'auto' | 'off';
  /** Entries per ring, a power of two in [64, 16384] (default 4096). */
  ringSize?: number;
  /** UMEM chunk size, 2048 or 4096 (default: the smaller one the MTU fits in). */
  chunkSize?: number;
  /** Receive queues to serve (default: every receive queue of the interface). */
  queues?: number[];
  /**
   * The VM's memory, to be part of the UMEM so frames are sent from where the guest wrote them
   * (xdp-umem.ts). Absent or empty: the UMEM holds the relay's chunks only.
   */
  guestMemory?: XdpGuestRegion[];
  /**
   * Receive straight into guest buffers (xdp-guest-rx.ts) where the port allows it: guest memory
   * in the UMEM, one receive queue, copy mode, frames that fit a 2048-byte chunk. The handle's
   * `guestRx` says whether it does.
   */
  guestReceive?: boolean;
}

/** One mmapped ring: its mapping, where its words are, and its size. */
export interface XdpRingMapping {
  address: number;
  length: number;
  producer: number;
  consumer: number;
  flags: number;
  desc: number;
  size: number;
}

/** One socket: a queue of the interface with four rings over the port's UMEM. */
export interface XdpQueueHandle {
  queue: number;
  fd: number;
  /** UMEM offset of this queue's chunks: ring-size receive chunks, then ring-size transmit chunks. */
  chunkOffset: number;
  rx: XdpRingMapping;
  tx: XdpRingMapping;
  fill: XdpRingMapping;
  completion: XdpRingMapping;
  zeroCopy: boolean;
}

/** Everything a thread needs to poll the port; plain data, safe to post to a worker. */
export interface XdpPortHandle {
  /** Tells this handle from a packet ring's where either may be given. */
  kind: 'af_xdp';
  ifname: string;
  ifindex: number;
  queues: XdpQueueHandle[];
  chunkSize: number;
  ringSize: number;
  /** Largest untagged frame the interface accepts (MTU + Ethernet header); tagged frames get 4 more. */
  maxFrameLength: number;
  /** Frames may span several chunks (the MTU needs more than one). */
  multiBuffer: boolean;
  attachMode: XdpAttachMode;
  /** The kernel's id of the XDP program that redirects to the port (ours, or libxdp's in its dispatcher). */
  programId: number;
  /** Set when the port shares the interface through libxdp's dispatcher (mapFd, progFd and linkFd are then -1). */
  dispatcher: JoinedProgram | null;
  /** The UMEM shared by the queues' sockets, with where guest memory and the relay's chunks are in it. */
  umem: UmemArea;
  /** The transmit slot table of the sending queue (see the top of this file). */
  txTable: { address: number; length: number };
  mapFd: number;
  progFd: number;
  linkFd: number;
  /** A shared page of counters (XdpPort.counters). */
  counterPage: { address: number; length: number };
  /**
   * Set by the port's owner before the port is closed elsewhere (the close runs in another
   * thread, on a copy of the handle): from then on its mappings may be gone, and the readers
   * below that run in the owner's thread (stats) leave them alone.
   */
  closing?: boolean;
  /** The table of guest receive buffers posted to the fill ring, when the port receives into them (null: it copies). */
  guestRx: GuestRxTableMapping | null;
  /** Room the UMEM keeps before each received frame beyond XDP_PACKET_HEADROOM (set so a frame ends within a guest's 1,536-byte buffer). */
  rxHeadroom: number;
}

const isPowerOfTwo = (n: number) => Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;

/** The receive queues of `ifname` as sysfs lists them (rx-0, rx-1, ...). */
export function receiveQueues(ifname: string, sysfsNet = '/sys/class/net'): number[] {
  try {
    return readdirSync(`${sysfsNet}/${ifname}/queues`)
      .filter((n) => /^rx-\d+$/.test(n))
      .map((n) => Number(n.slice(3)))
      .sort((a, b) => a - b);
  } catch {
    return [0];
  }
}

function setInt(fd: number, name: number, value: number, what: string): void {
  check(setsockoptNative(fd, SOL_XDP, name, new Int32Array([value]), 4), 'setsockopt', what);
}

function ringMapping(fd: number, offsets: BigUint64Array, at: number, size: number, entryBytes: number, pgoff: number, what: string): XdpRingMapping {
  const producer = Number(offsets[at]);
  const consumer = Number(offsets[at + 1]);
  const desc = Number(offsets[at + 2]);
  const flags = Number(offsets[at + 3]);
  const length = desc + size * entryBytes;
  let m;
  try {
    m = mmap({ length, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED | MAP_POPULATE, fd, offset: pgoff });
  } catch (err) {
    if (err instanceof SysError) throw new SysError('mmap', err.errno, what);
    throw err;
  }
  return { address: m.address, length, producer, consumer, flags, desc, size };
}

/**
 * One queue's socket. The first socket registers the UMEM (`owner` null); the others share it
 * (XDP_SHARED_UMEM), each with fill and completion rings of its own.
 */
function openQueue(
  ifname: string, ifindex: number, queue: number, ringSize: number, chunkSize: number, umem: UmemArea, chunkOffset: number,
  owner: number | null, zeroCopy: 'auto' | 'off' | 'required', multiBuffer: boolean, headroom: number, prefill: boolean, cleanup: (() => void)[],
): XdpQueueHandle {
  const fd = check(socketNative(AF_XDP, SOCK_RAW | SOCK_CLOEXEC, 0), 'socket', `AF_XDP for ${ifname} queue ${queue}`);
  cleanup.push(() => closeFd(fd));
  if (owner === null) {
    // struct xdp_umem_reg: addr, len, chunk_size, headroom, flags, tx_metadata_len. With guest
    // memory in it, frames start anywhere (unaligned chunks); the relay's own chunks stay aligned.
    const reg = new DataView(new ArrayBuffer(32));
    reg.setBigUint64(0, BigInt(umem.address), true);
    reg.setBigUint64(8, BigInt(umem.length), true);
    reg.setUint32(16, chunkSize, true);
    reg.setUint32(20, headroom, true);
    reg.setUint32(24, umem.guestSlots.length > 0 ? XDP_UMEM_UNALIGNED_CHUNK_FLAG : 0, true);
    reg.setUint32(28, 0, true);
    const regBytes = new Uint8Array(reg.buffer);
    const what = `XDP_UMEM_REG ${umem.length} bytes${umem.guestSlots.length > 0 ? ' (guest memory included)' : ''} for ${ifname}`;
    check(setsockoptNative(fd, SOL_XDP, XDP_UMEM_REG, regBytes, regBytes.byteLength), 'setsockopt', what);
  }
  setInt(fd, XDP_UMEM_FILL_RING, ringSize, `XDP_UMEM_FILL_RING ${ringSize} on ${ifname}`);
  setInt(fd, XDP_UMEM_COMPLETION_RING, ringSize, `XDP_UMEM_COMPLETION_RING ${ringSize} on ${ifname}`);
  setInt(fd, XDP_RX_RING, ringSize, `XDP_RX_RING ${ringSize} on ${ifname}`);
  setInt(fd, XDP_TX_RING, ringSize, `XDP_TX_RING ${ringSize} on ${ifname}`);
  const offsets = new BigUint64Array(16); // struct xdp_mmap_offsets: rx, tx, fr, cr × {producer, consumer, desc, flags}
  const len = new Uint32Array([offsets.byteLength]);
  check(getsockoptNative(fd, SOL_XDP, XDP_MMAP_OFFSETS, offsets, len), 'getsockopt', `XDP_MMAP_OFFSETS on ${ifname}`);
  const rx = ringMapping(fd, offsets, 0, ringSize, 16, XDP_PGOFF_RX_RING, `RX ring of ${ifname} queue ${queue}`);
  cleanup.push(() => munmap(rx));
  const tx = ringMapping(fd, offsets, 4, ringSize, 16, XDP_PGOFF_TX_RING, `TX ring of ${ifname} queue ${queue}`);
  cleanup.push(() => munmap(tx));
  const fill = ringMapping(fd, offsets, 8, ringSize, 8, XDP_UMEM_PGOFF_FILL_RING, `fill ring of ${ifname} queue ${queue}`);
  cleanup.push(() => munmap(fill));
  const completion = ringMapping(fd, offsets, 12, ringSize, 8, XDP_UMEM_PGOFF_COMPLETION_RING, `completion ring of ${ifname} queue ${queue}`);
  cleanup.push(() => munmap(completion));

  // Every RX chunk starts in the fill ring, before the socket is bound and frames can arrive
  // (unless guest buffers are to go there instead).
  if (prefill) fillWithRelayChunks(fill, chunkOffset, ringSize, chunkSize);

  // struct sockaddr_xdp: family, flags, ifindex, queue_id, shared_umem_fd
  const bindTo = (flags: number) => {
    const addr = new DataView(new ArrayBuffer(16));
    addr.setUint16(0, AF_XDP, true);
    addr.setUint16(2, flags, true);
    addr.setUint32(4, ifindex, true);
    addr.setUint32(8, queue, true);
    addr.setUint32(12, owner ?? 0, true);
    return bindNative(fd, new Uint8Array(addr.buffer), 16) as number;
  };
  const base = XDP_USE_NEED_WAKEUP | (multiBuffer ? XDP_USE_SG : 0);
  // A socket sharing the UMEM takes the mode (copy, zero copy, wakeups) of the one that owns it.
  const flags = owner !== null ? XDP_SHARED_UMEM : zeroCopy === 'off' ? base | XDP_COPY : zeroCopy === 'required' ? base | XDP_ZEROCOPY : base;
  // A socket closed a moment ago still holds its queue until the kernel's deferred release has
  // run (a port removed and added again at once): EBUSY is retried for a while before it counts.
  const deadline = Date.now() + BIND_BUSY_WAIT_MS;
  for (;;) {
    if (bindTo(flags) === 0) break;
    const errno = lastErrno();
    if (errno === EBUSY && Date.now() < deadline) {
      Atomics.wait(pause, 0, 0, 10);
      continue;
    }
    const detail = `AF_XDP to ${ifname} queue ${queue}${zeroCopy === 'required' ? ' in zero-copy mode' : ''}${multiBuffer ? ' with frames over several chunks (multi-buffer AF_XDP needs Linux 6.6)' : ''}`;
    if (errno === EBUSY) throw new SysError('bind', errno, `${detail}: the queue is in use by another AF_XDP socket`);
    throw new SysError('bind', errno, detail);
  }
  const options = new Uint32Array(1);
  const optLen = new Uint32Array([4]);
  const zc = getsockoptNative(fd, SOL_XDP, XDP_OPTIONS, options, optLen) === 0 && (options[0] & XDP_OPTIONS_ZEROCOPY) !== 0;
  return { queue, fd, chunkOffset, rx, tx, fill, completion, zeroCopy: zc };
}

/** Puts a queue's receive chunks in its (empty) fill ring. */
function fillWithRelayChunks(fill: XdpRingMapping, chunkOffset: number, ringSize: number, chunkSize: number): void {
  const fillWords = new Uint32Array(viewAt(fill.address, fill.length));
  for (let i = 0; i < ringSize; i++) setAddress(fillWords, (fill.desc >> 2) + 2 * i, chunkOffset + i * chunkSize);
  Atomics.store(fillWords, fill.producer >> 2, ringSize);
}

/** The largest frame a guest buffer posted to the fill ring must hold: MTU 1500 with a VLAN tag. */
export const GUEST_RX_FRAME_ROOM = 1518;

/**
 * Opens an AF_XDP socket on each receive queue of `ifname` and attaches the redirect program
 * (needs CAP_NET_ADMIN and CAP_BPF, root here). Throws with the reason when the interface cannot
 * have one: another XDP program is attached (EBUSY), its MTU does not fit a chunk, no AF_XDP.
 */
export function openXdpPort(ifname: string, opts: XdpPortOptions = {}): XdpPortHandle {
  const ifindex = ifNameToIndex(ifname);
  const mtu = linkMtu(ifname);
  const ringSize = opts.ringSize ?? 4096;
  const bad = (what: string) => new RangeError(`AF_XDP port on ${ifname}: ${what}`);
  if (!isPowerOfTwo(ringSize) || ringSize < 64 || ringSize > 16384) throw bad(`ring size ${ringSize} is not a power of two in [64, 16384]`);
  const maxFrameLength = mtu + ETH_HEADER;
  const fits = (chunk: number) => maxFrameLength + VLAN_TAG <= chunk - XDP_PACKET_HEADROOM;
  const chunkSize = opts.chunkSize ?? (fits(2048) ? 2048 : 4096);
  if (chunkSize !== 2048 && chunkSize !== 4096) throw bad(`chunk size ${chunkSize} is not 2048 or 4096`);
  const multiBuffer = !fits(chunkSize);
  if (multiBuffer && opts.multiBuffer === 'off') throw bad(`MTU ${mtu} needs frames larger than a ${chunkSize}-byte chunk holds (${chunkSize - XDP_PACKET_HEADROOM - ETH_HEADER - VLAN_TAG} at most)`);
  if (mtu > MAX_MULTI_BUFFER_MTU) throw bad(`MTU ${mtu} is above ${MAX_MULTI_BUFFER_MTU}, the largest an AF_XDP port takes`);
  const queues = opts.queues ?? receiveQueues(ifname);
  if (queues.length === 0) throw bad('no receive queue to serve');
  const cleanup: (() => void)[] = [];
  try {
    const counters = mmap({ length: 4096, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED });
    cleanup.push(() => munmap(counters));
    const txTable = mmap({ length: TX_TABLE_HEADER + ringSize * TX_TABLE_ENTRY, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED });
    cleanup.push(() => munmap(txTable));
    new Int32Array(txTable.buffer).fill(TX_FREE, TX_TABLE_HEADER >> 2);
    const queueChunks = 2 * ringSize * chunkSize;
    const umem = buildUmemArea(queues.length * queueChunks, opts.guestMemory ?? []);
    cleanup.push(() => releaseUmemArea(umem));
    // Guest buffers in the fill ring: the kernel writes a frame XDP_PACKET_HEADROOM + headroom
    // into a chunk and takes at most what is left of it, so the headroom makes that exactly the
    // largest frame (a 2048-byte chunk, 1518 bytes), which a guest's buffer of 1,530 bytes or
    // more (Linux, DPDK) holds after its header.
    let guestRx: GuestRxTableMapping | null = null;
    const guestReceive = opts.guestReceive === true && umem.guestSlots.length > 0 && queues.length === 1 && !multiBuffer
      && chunkSize === 2048 && maxFrameLength + VLAN_TAG <= GUEST_RX_FRAME_ROOM && opts.zeroCopy !== 'required';
    const headroom = guestReceive ? chunkSize - XDP_PACKET_HEADROOM - GUEST_RX_FRAME_ROOM : 0;
    const handles: XdpQueueHandle[] = [];
    queues.forEach((q, k) => {
      const owner = k === 0 ? null : handles[0].fd;
      handles.push(openQueue(ifname, ifindex, q, ringSize, chunkSize, umem, umem.relay.offset + k * queueChunks, owner, opts.zeroCopy ?? 'auto', multiBuffer, headroom, !guestReceive, cleanup));
    });
    if (guestReceive) {
      const h = handles[0];
      if (h.zeroCopy) {
        // A driver's zero copy maps chunks page by page and may reorder them: the relay's chunks.
        fillWithRelayChunks(h.fill, h.chunkOffset, ringSize, chunkSize);
      } else {
        const table = createGuestRxTable(ringSize, ringSize);
        cleanup.push(() => releaseGuestRxTable(table));
        guestRx = table;
      }
    }
    const mapEntries = Math.max(...queues) + 1; // indexed by receive queue
    let mapFd = createXskMap(mapEntries, `vio4wd_${ifname}`);
    cleanup.push(() => closeBpfFd(mapFd));
    for (const h of handles) setXskMapEntry(mapFd, h.queue, h.fd);
    let progFd = loadRedirectProgram(mapFd, `vio4wd_${ifname}`, multiBuffer);
    cleanup.push(() => closeBpfFd(progFd));
    const wanted = opts.attach ?? 'auto';
    let attached = attachOwnProgram(progFd, ifindex, ifname, wanted);
    let dispatcher: JoinedProgram | null = null;
    if (attached === 'busy') {
      // Someone else's program holds the hook: join it if it is libxdp's dispatcher, else refuse.
      closeBpfFd(progFd);
      closeBpfFd(mapFd);
      progFd = -1;
      mapFd = -1;
      if (multiBuffer) throw new SysError('bpf', EBUSY, `attaching XDP to ${ifname}: another XDP program is attached to it, and a multi-buffer port (MTU ${mtu}) cannot join libxdp's dispatcher, whose AF_XDP program is not marked for frames in several buffers`);
      const joined = joinOrRefuse(ifindex, ifname, mapEntries, wanted);
      dispatcher = joined;
      cleanup.push(() => leaveDispatcher(joined));
      for (const h of handles) setXskMapEntry(joined.mapFd, h.queue, h.fd);
      attached = { linkFd: -1, mode: joined.mode };
    }
    return {
      kind: 'af_xdp',
      ifname,
      ifindex,
      queues: handles,
      chunkSize,
      ringSize,
      maxFrameLength,
      multiBuffer,
      attachMode: attached.mode,
      programId: dispatcher ? dispatcher.id : programId(progFd),
      dispatcher,
      umem,
      txTable: { address: txTable.address, length: txTable.length },
      mapFd,
      progFd,
      linkFd: attached.linkFd,
      counterPage: { address: counters.address, length: counters.length },
      guestRx,
      rxHeadroom: headroom,
    };
  } catch (err) {
    for (const undo of cleanup.reverse()) {
      try {
        undo();
      } catch {
        /* already failing; the first error is the one to report */
      }
    }
    throw err;
  }
}

/**
 * Attaches our program with a bpf_link, in the driver where it has XDP, else in generic mode;
 * 'busy' when another program holds the interface's hook.
 */
function attachOwnProgram(progFd: number, ifindex: number, ifname: string, wanted: XdpAttachMode | 'auto'): { linkFd: number; mode: XdpAttachMode } | 'busy' {
  // EBUSY: a program in the same mode; EEXIST: one in the other mode (the kernel allows one of the two).
  const held = (err: unknown) => err instanceof SysError && (err.errno === EBUSY || err.errno === EEXIST);
  if (wanted !== 'generic') {
    try {
      return { linkFd: attachXdp(progFd, ifindex, XDP_FLAGS_DRV_MODE, `attaching XDP to ${ifname} in driver mode`), mode: 'native' };
    } catch (err) {
      if (held(err)) return 'busy'; // generic mode would not change that
      if (wanted === 'native') throw err;
    }
  }
  try {
    return { linkFd: attachXdp(progFd, ifindex, XDP_FLAGS_SKB_MODE, `attaching XDP to ${ifname} in generic mode`), mode: 'generic' };
  } catch (err) {
    if (held(err)) return 'busy';
    throw err;
  }
}

/** Joins the libxdp dispatcher that holds the interface, or says what holds it instead. */
function joinOrRefuse(ifindex: number, ifname: string, entries: number, wanted: XdpAttachMode | 'auto'): JoinedProgram {
  const busy = (what: string) => new SysError('bpf', EBUSY, `attaching XDP to ${ifname}: ${what}`);
  const missing = libxdpMissing();
  if (missing) throw busy(`another XDP program is attached to it, and ${missing} (its dispatcher could share the interface)`);
  const held = interfaceXdp(ifindex);
  if (held.kind === 'dispatcher' && held.mode !== 'offload') {
    if (wanted !== 'auto' && wanted !== held.mode) throw busy(`libxdp's dispatcher is attached to it in ${held.mode} mode, not ${wanted}`);
    return joinDispatcher(ifindex, ifname, entries, held.mode);
  }
  const what = held.kind === 'single' ? ` (${held.program.name}, id ${held.program.id})`
    : held.kind === 'dispatcher' ? " (libxdp's dispatcher, offloaded to the NIC)" : '';
  throw busy(`another XDP program${what} is attached to it, not through libxdp's dispatcher (xdp-loader would load it that way and let the port share the interface)`);
}

/** A UMEM address (up to 48 bits) in a ring entry's two little-endian 32-bit words at `at`. */
function setAddress(words: Uint32Array, at: number, address: number): void {
  words[at] = address >>> 0;
  words[at + 1] = address < TWO32 ? 0 : Math.floor(address / TWO32);
}

/** 'guest' when the VM's memory is in the port's UMEM (frames can be sent from it), else 'relay'. */
export function xdpUmemKind(handle: XdpPortHandle): 'guest' | 'relay' {
  return handle.umem.guestSlots.length > 0 ? 'guest' : 'relay';
}

/**
 * Frames received so far straight into a guest's posted buffers (VIRTIOFWD_XDP_RX=guest), and
 * frames sent straight from guest memory (VIRTIOFWD_XDP_UMEM=guest); zeros once the port is closing.
 */
export function xdpFramesInPlace(handle: XdpPortHandle): { rxFramesInPlace: number; txFramesInPlace: number } {
  if (handle.closing) return { rxFramesInPlace: 0, txFramesInPlace: 0 };
  const words = counterWords(handle);
  return { rxFramesInPlace: words[C_RX_IN_PLACE], txFramesInPlace: words[C_TX_IN_PLACE] };
}

/** Whether every queue's socket runs in zero-copy mode (the driver moves frames into the UMEM itself). */
export function xdpZeroCopy(handle: XdpPortHandle): boolean {
  return handle.queues.every((q) => q.zeroCopy);
}

/** Detaches the program (closing the link), closes the sockets and unmaps everything; every attached XdpPort must be gone. */
export function closeXdpPort(handle: XdpPortHandle): void {
  if (handle.dispatcher) leaveDispatcher(handle.dispatcher);
  closeBpfFd(handle.linkFd);
  closeBpfFd(handle.progFd);
  closeBpfFd(handle.mapFd);
  for (const q of handle.queues) {
    for (const r of [q.rx, q.tx, q.fill, q.completion]) munmap(r);
    closeFd(q.fd);
  }
  // The kernel keeps the UMEM's pages pinned until its last socket is gone, whatever is unmapped here.
  releaseUmemArea(handle.umem);
  if (handle.guestRx) releaseGuestRxTable(handle.guestRx);
  munmap(handle.txTable);
  munmap(handle.counterPage);
}

/**
 * What a port leaves uncounted when it closes, for the relay that closes it: frames the kernel put
 * in its RX rings that no poller took (a multi-buffer frame counts once), and frames the kernel
 * dropped since a poller last read XDP_STATISTICS. Call only while no XdpPort polls the handle.
 */
export function xdpLeftovers(handle: XdpPortHandle): { framesWaiting: number; kernelDropsUnread: number } {
  let framesWaiting = 0;
  for (const q of handle.queues) {
    const rx = new Uint32Array(viewAt(q.rx.address, q.rx.length));
    const mask = q.rx.size - 1;
    const producer = Atomics.load(rx, q.rx.producer >> 2);
    for (let i = Atomics.load(rx, q.rx.consumer >> 2); i !== producer; i = (i + 1) >>> 0) {
      if ((rx[(q.rx.desc >> 2) + 4 * (i & mask) + 3] & XDP_PKT_CONTD) === 0) framesWaiting++;
    }
  }
  const kernelDrops = sumXdpStatistics(handle.queues.map((q) => q.fd), new BigUint64Array(6), new Uint32Array(1)).drops;
  const counted = counterWords(handle)[C_KERNEL_DROPS];
  return { framesWaiting, kernelDropsUnread: Math.max(0, kernelDrops - counted) };
}

/**
 * The kernel's XDP_STATISTICS of the sockets `fds`, summed (cumulative). `drops` are the frames
 * that reached a socket and were lost: no chunk to copy into, or too long (rx_dropped), and no
 * room in the RX ring (rx_ring_full). An empty fill ring is also counted by the allocation that
 * failed, so it is reported apart, not added. `stats` (6 words) and `statsLength` are scratch.
 */
function sumXdpStatistics(fds: number[], stats: BigUint64Array, statsLength: Uint32Array) {
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

export interface XdpPortCounters {
  rxFrames: number;
  txFrames: number;
  /** Frames txCommit refused (shorter than an Ethernet header, longer than a chunk or the MTU). */
  txRejected: number;
  /** Flushes that left frames in the TX ring (the kernel or the completion ring was busy). */
  txFlushBusy: number;
  /** Flushes that failed otherwise (ENETDOWN, ENXIO...). */
  txFlushErrors: number;
  txLastErrno: number;
  /** The kernel's XDP_STATISTICS, summed over the queues (cumulative). */
  kernelDrops: number;
  kernelRxDropped: number;
  kernelRxRingFull: number;
  kernelFillRingEmpty: number;
  kernelInvalidDescs: number;
  /** Multi-buffer ports: received frames longer than the MTU allows, dropped. */
  rxTooLong: number;
  /** Frames in a guest buffer the posted table has no record of (never expected; dropped). */
  rxGuestUnknown: number;
  /** Frames the kernel wrote straight into a guest's posted buffer (the rest of rxFrames were copied). */
  rxFramesInPlace: number;
  /** Frames the kernel sent straight from guest memory (the rest of txFrames were copied into TX chunks). */
  txFramesInPlace: number;
}
const COUNTER_NAMES = [
  'rxFrames', 'txFrames', 'txRejected', 'txFlushBusy', 'txFlushErrors', 'txLastErrno',
  'kernelDrops', 'kernelRxDropped', 'kernelRxRingFull', 'kernelFillRingEmpty', 'kernelInvalidDescs', 'rxTooLong', 'rxGuestUnknown', 'rxFramesInPlace',
  'txFramesInPlace',
] as const satisfies readonly (keyof XdpPortCounters)[];
const C_RX_FRAMES = 0;
const C_TX_FRAMES = 1;
const C_TX_REJECTED = 2;
const C_TX_FLUSH_BUSY = 3;
const C_TX_FLUSH_ERRORS = 4;
const C_TX_LAST_ERRNO = 5;
const C_KERNEL_DROPS = 6;
const C_KERNEL_RX_DROPPED = 7;
const C_KERNEL_RX_RING_FULL = 8;
const C_KERNEL_FILL_RING_EMPTY = 9;
const C_KERNEL_INVALID_DESCS = 10;
const C_RX_TOO_LONG = 11;
const C_RX_GUEST_UNKNOWN = 12;
const C_RX_IN_PLACE = 13;
const C_TX_IN_PLACE = 14;

/**
 * Most descriptors one frame sent from guest memory may take on a multi-buffer port: the kernel
 * builds the frame as an skb whose first piece is its head and the others page fragments, of
 * which it allows MAX_SKB_FRAGS (17). A frame in more pieces is copied into TX chunks instead.
 */
export const MAX_TX_PIECES = 17;

/** The port's shared counters (COUNTER_NAMES order), as whichever thread maps them sees them. */
function counterWords(handle: XdpPortHandle): Float64Array {
  return new Float64Array(viewAt(handle.counterPage.address, handle.counterPage.length), 0, COUNTER_NAMES.length);
}

/** What receiveJoined did with a frame in several chunks. */
const JOIN_DELIVERED = 0;
const JOIN_STOP = 1;
const JOIN_INCOMPLETE = 2;
const JOIN_REFUSED = 3;
const JOIN_DROPPED = 4;

/** The poller's view of one queue's rings. */
class QueueRings {
  readonly fd: number;
  readonly rx: Uint32Array;
  readonly tx: Uint32Array;
  readonly fill: Uint32Array;
  readonly completion: Uint32Array;
  readonly h: XdpQueueHandle;
  readonly mask: number;
  // Word indexes of the producer, consumer, flags and first descriptor of each ring.
  readonly rxProd: number; readonly rxCons: number; readonly rxDesc: number;
  readonly txProd: number; readonly txCons: number; readonly txFlags: number; readonly txDesc: number;
  readonly fillProd: number; readonly fillCons: number; readonly fillFlags: number; readonly fillDesc: number;
  readonly compProd: number; readonly compCons: number; readonly compDesc: number;
  /** UMEM offset of this queue's first transmit chunk. */
  readonly txChunks: number;
  /** Local copies of the words this side owns. */
  rxNext: number;
  fillNext: number;
  txNext: number;
  completed: number;

  constructor(h: XdpQueueHandle, ringSize: number, chunkSize: number) {
    this.h = h;
    this.fd = h.fd;
    this.rx = new Uint32Array(viewAt(h.rx.address, h.rx.length));
    this.tx = new Uint32Array(viewAt(h.tx.address, h.tx.length));
    this.fill = new Uint32Array(viewAt(h.fill.address, h.fill.length));
    this.completion = new Uint32Array(viewAt(h.completion.address, h.completion.length));
    this.mask = h.rx.size - 1;
    this.rxProd = h.rx.producer >> 2; this.rxCons = h.rx.consumer >> 2; this.rxDesc = h.rx.desc >> 2;
    this.txProd = h.tx.producer >> 2; this.txCons = h.tx.consumer >> 2; this.txFlags = h.tx.flags >> 2; this.txDesc = h.tx.desc >> 2;
    this.fillProd = h.fill.producer >> 2; this.fillCons = h.fill.consumer >> 2; this.fillFlags = h.fill.flags >> 2; this.fillDesc = h.fill.desc >> 2;
    this.compProd = h.completion.producer >> 2; this.compCons = h.completion.consumer >> 2; this.compDesc = h.completion.desc >> 2;
    this.txChunks = h.chunkOffset + ringSize * chunkSize;
    this.rxNext = Atomics.load(this.rx, this.rxCons);
    this.fillNext = Atomics.load(this.fill, this.fillProd);
    this.txNext = Atomics.load(this.tx, this.txProd);
    this.completed = Atomics.load(this.completion, this.compCons);
  }
}

/** A free TX chunk; the same object is returned by every txSlot() call of a port. */
export interface XdpTxSlot {
  /** The relay's chunks (all queues'). */
  bytes: Uint8Array;
  /** Where the frame's first byte goes. */
  offset: number;
  /** Largest frame the chunk holds. */
  capacity: number;
}

/**
 * A frame the kernel wrote into a guest buffer (see xdp-guest-rx.ts): the chain's key (vring <<
 * 16 | head), where its header and frame are, and the frame's length, or -1 when the kernel put
 * the frame elsewhere in the buffer than it was posted for (the buffer then goes back empty).
 * Returns false to stop receiving.
 */
export type GuestFrameHandler = (key: number, hdrGpa: number, frameGpa: number, length: number) => boolean;

/** txGuest results. */
export const GUEST_QUEUED = 1;
export const GUEST_NO_ROOM = 0;
/** The frame cannot be sent from where it is (not in the UMEM, across pages in zero-copy mode): copy it. */
export const GUEST_COPY = -1;

/** The poller side of an AF_XDP port: receives on every queue, sends on the first. */
export class XdpPort {
  readonly handle: XdpPortHandle;
  /** Frames arrive without a virtio_net_hdr: there is never one to hand over. */
  readonly rxHeader: null = null;
  /** An XDP socket never delivers part of a frame. */
  readonly rxTruncated = 0;
  readonly rxFds: number[];
  /**
   * Keys of guest frames the kernel is done with, in completedKeys[0, completedCount): the
   * caller hands them back to the guest and resets completedCount.
   */
  readonly completedKeys: Int32Array;
  completedCount = 0;
  private readonly queues: QueueRings[];
  private readonly sender: QueueRings;
  /** Bytes of one UMEM chunk: the most one descriptor carries. */
  readonly chunkSize: number;
  private readonly ringSize: number;
  private readonly maxFrameLength: number;
  private readonly count: Float64Array;
  private readonly slot: XdpTxSlot;
  /** Multi-buffer ports: a received frame's pieces are joined here, and a large frame is written here before it is cut into chunks. */
  private readonly rxJoined: Uint8Array | null;
  private readonly largeSlot: XdpTxSlot | null;
  private largeSlotTaken = false;
  /** The relay's chunks, and their UMEM offset (a frame at UMEM offset a is at bytes[a − relayOffset]). */
  private readonly relayBytes: Uint8Array;
  private readonly relayOffset: number;
  /** The slot table: keys through `table` (signed), addresses through `tableWords` (unsigned, as the rings hold them). */
  private readonly table: Int32Array;
  private readonly tableWords: Uint32Array;
  /** Slots released so far (table word 0, kept here too). */
  private tail: number;
  private guestInFlight = 0;
  private readonly zeroCopy: boolean;
  /** Frames may span several chunks (XDP_USE_SG): txGuestPieces takes more than one piece. */
  readonly multiBuffer: boolean;
  /** Queue to receive from first, so that a busy queue cannot starve the others. */
  private nextQueue = 0;
  private readonly stats = new BigUint64Array(6);
  private readonly statsLength = new Uint32Array(1);
  /** Guest buffers posted to the fill ring (null: the port receives into its own chunks only). */
  readonly guestTable: GuestRxTable | null;
  /** Where in a posted chunk the kernel puts a frame: XDP_PACKET_HEADROOM plus the UMEM's headroom. */
  readonly rxDataOffset: number;

  private constructor(handle: XdpPortHandle) {
    this.handle = handle;
    this.chunkSize = handle.chunkSize;
    this.ringSize = handle.ringSize;
    this.queues = handle.queues.map((q) => new QueueRings(q, handle.ringSize, handle.chunkSize));
    this.sender = this.queues[0];
    this.rxFds = handle.queues.map((q) => q.fd);
    this.maxFrameLength = handle.maxFrameLength;
    this.count = counterWords(handle);
    this.relayBytes = new Uint8Array(viewAt(handle.umem.relay.address, handle.umem.relay.length));
    this.relayOffset = handle.umem.relay.offset;
    this.zeroCopy = this.sender.h.zeroCopy;
    this.multiBuffer = handle.multiBuffer;
    this.guestTable = handle.guestRx ? new GuestRxTable(handle.guestRx) : null;
    this.rxDataOffset = XDP_PACKET_HEADROOM + handle.rxHeadroom;
    this.slot = { bytes: this.relayBytes, offset: 0, capacity: this.chunkSize };
    const largest = handle.maxFrameLength + VLAN_TAG;
    this.rxJoined = handle.multiBuffer ? new Uint8Array(largest) : null;
    this.largeSlot = handle.multiBuffer ? { bytes: new Uint8Array(largest), offset: 0, capacity: largest } : null;
    this.table = new Int32Array(viewAt(handle.txTable.address, handle.txTable.length));
    this.tableWords = new Uint32Array(this.table.buffer);
    // A burst may reap a whole ring and, having refilled it, part of the next before they are taken.
    this.completedKeys = new Int32Array(2 * this.ringSize);
    // A thread attaching later resumes from the table: the slots still in flight, and those of them
    // that carry guest frames.
    this.tail = this.table[0] >>> 0;
    for (let i = this.tail; i !== this.sender.txNext; i = (i + 1) >>> 0) {
      if (this.table[this.entry(i) + 2] >= 0) this.guestInFlight++;
    }
  }

  static attach(handle: XdpPortHandle): XdpPort {
    return new XdpPort(handle);
  }

  get counters(): XdpPortCounters {
    const out = {} as XdpPortCounters;
    COUNTER_NAMES.forEach((name, i) => (out[name] = this.count[i]));
    return out;
  }

  /** Table word of TX slot `i`'s entry. */
  private entry(i: number): number {
    return (TX_TABLE_HEADER >> 2) + ((i & this.sender.mask) << 2);
  }

  /**
   * Delivers up to `budget` received frames to `onFrame` (`bytes` is the relay's chunk area) and
   * returns how many it delivered. A chunk goes back to the fill ring once its frame was
   * delivered, so `onFrame` must copy what it keeps before returning.
   */
  receive(onFrame: FrameHandler, budget: number, admit?: FrameAdmission, onGuest?: GuestFrameHandler): number {
    const n = this.queues.length;
    let delivered = 0;
    let stop = false;
    for (let k = 0; k < n && delivered < budget && !stop; k++) {
      const q = this.queues[(this.nextQueue + k) % n];
      const r = this.receiveQueue(q, onFrame, budget - delivered, admit, onGuest);
      delivered += r < 0 ? -r - 1 : r;
      if (r < 0) stop = true;
    }
    if (n > 1) this.nextQueue = this.nextQueue + 1 === n ? 0 : this.nextQueue + 1;
    this.count[C_RX_FRAMES] += delivered;
    return delivered;
  }

  /** Frames delivered from one queue; −(delivered + 1) when the handler or admission stopped the receive. */
  private receiveQueue(q: QueueRings, onFrame: FrameHandler, budget: number, admit?: FrameAdmission, onGuest?: GuestFrameHandler): number {
    const rx = q.rx;
    const produced = Atomics.load(rx, q.rxProd);
    if (produced === q.rxNext) return 0;
    const mask = q.mask;
    const fill = q.fill;
    const started = q.rxNext;
    let delivered = 0;
    let stopped = false;
    try {
      while (delivered < budget && q.rxNext !== produced) {
        const d = q.rxDesc + ((q.rxNext & mask) << 2);
        if ((rx[d + 3] & XDP_PKT_CONTD) !== 0) {
          // The first piece of a frame in several chunks (multi-buffer ports only).
          const r = this.receiveJoined(q, produced, onFrame, admit);
          if (r === JOIN_INCOMPLETE) break;
          if (r === JOIN_REFUSED) {
            stopped = true;
            break;
          }
          if (r === JOIN_DROPPED) continue;
          delivered++;
          if (r === JOIN_STOP) {
            stopped = true;
            break;
          }
          continue;
        }
        // The address the chunk was posted with (48 bits) and, with unaligned chunks, the frame's
        // offset in it in the top 16 bits; with aligned chunks the address includes the offset.
        const hi = rx[d + 1];
        const posted = rx[d] + (hi & 0xffff) * TWO32;
        const at = posted + (hi >>> 16);
        const length = rx[d + 2];
        if (posted < this.relayOffset) {
          // A guest buffer (guest memory comes first in the UMEM): the frame is already in place.
          if (onGuest === undefined) {
            stopped = true;
            break;
          }
          q.rxNext = (q.rxNext + 1) >>> 0;
          delivered++;
          const table = this.guestTable!;
          if (!table.find(posted)) {
            this.count[C_RX_GUEST_UNKNOWN]++;
            continue;
          }
          const more = onGuest(table.foundKey, table.foundHdrGpa, table.foundFrameGpa, at === posted + this.rxDataOffset ? length : -1);
          table.complete();
          this.count[C_RX_IN_PLACE]++;
          if (!more) {
            stopped = true;
            break;
          }
          continue;
        }
        if (admit !== undefined && !admit(length)) {
          stopped = true;
          break;
        }
        q.rxNext = (q.rxNext + 1) >>> 0;
        this.recycle(q, posted);
        delivered++;
        if (onFrame(this.relayBytes, at - this.relayOffset, length, 0) === false) {
          stopped = true;
          break;
        }
      }
    } finally {
      if (q.rxNext !== started) {
        // The chunk goes back before the slot is released: the kernel never sees fewer chunks.
        Atomics.store(fill, q.fillProd, q.fillNext);
        Atomics.store(rx, q.rxCons, q.rxNext);
        if ((Atomics.load(fill, q.fillFlags) & XDP_RING_NEED_WAKEUP) !== 0) recvfromNative(q.fd, 0, 0, MSG_DONTWAIT, 0, 0);
      }
    }
    return stopped ? -(delivered + 1) : delivered;
  }

  /** Puts the chunk a received piece came in (posted at UMEM address `posted`) back in the fill ring. */
  private recycle(q: QueueRings, posted: number): void {
    // Relay chunks sit at multiples of the chunk size: the chunk is the address rounded down.
    const chunk = posted - ((posted - this.relayOffset) % this.chunkSize);
    const table = this.guestTable;
    if (table !== null && (!table.copying || table.relayOut + table.outstanding > this.ringSize)) {
      // Guest buffers take the fill ring: the chunk waits, parked, until the port copies again.
      table.park((chunk - q.h.chunkOffset) / this.chunkSize);
      return;
    }
    this.pushFill(q, chunk);
  }

  /**
   * A frame whose pieces start at q.rxNext, each descriptor but the last marked XDP_PKT_CONTD:
   * joined into rxJoined and handed over whole. The kernel puts all of a frame's pieces in the
   * ring at once; pieces not all there yet are left for the next receive.
   */
  private receiveJoined(q: QueueRings, produced: number, onFrame: FrameHandler, admit?: FrameAdmission): number {
    const rx = q.rx;
    const mask = q.mask;
    let total = 0;
    let pieces = 0;
    for (let i = q.rxNext; ; i = (i + 1) >>> 0) {
      if (i === produced) return JOIN_INCOMPLETE;
      const d = q.rxDesc + ((i & mask) << 2);
      total += rx[d + 2];
      pieces++;
      if ((rx[d + 3] & XDP_PKT_CONTD) === 0) break;
    }
    if (admit !== undefined && !admit(total)) return JOIN_REFUSED;
    const joined = this.rxJoined;
    const fits = joined !== null && total <= joined.length;
    let out = 0;
    for (let k = 0; k < pieces; k++) {
      const d = q.rxDesc + ((q.rxNext & mask) << 2);
      const hi = rx[d + 1];
      const posted = rx[d] + (hi & 0xffff) * TWO32;
      const length = rx[d + 2];
      if (fits) {
        const at = posted + (hi >>> 16) - this.relayOffset;
        joined.set(this.relayBytes.subarray(at, at + length), out);
        out += length;
      }
      q.rxNext = (q.rxNext + 1) >>> 0;
      this.recycle(q, posted);
    }
    if (!fits) {
      this.count[C_RX_TOO_LONG]++;
      return JOIN_DROPPED;
    }
    return onFrame(joined, 0, total, 0) === false ? JOIN_STOP : JOIN_DELIVERED;
  }

  /**
   * Hands a guest receive buffer to the kernel: `fillAddress` is the UMEM address it posts (the
   * frame lands rxDataOffset bytes after it), the rest is recorded for its delivery. False when
   * the fill ring or the table is full. publishFill() makes a batch visible.
   */
  postGuest(fillAddress: number, key: number, availIdx: number, hdrGpa: number, frameGpa: number): boolean {
    if (!this.guestCanPost()) return false;
    this.pushFill(this.queues[0], fillAddress);
    this.guestTable!.add(fillAddress, key, availIdx, hdrGpa, frameGpa);
    return true;
  }

  /** Writes one address into a queue's fill ring (made visible by the next producer store). */
  private pushFill(q: QueueRings, address: number): void {
    setAddress(q.fill, q.fillDesc + ((q.fillNext & q.mask) << 1), address);
    q.fillNext = (q.fillNext + 1) >>> 0;
  }

  /** Records a chain reserved for a frame in a relay chunk (xdp-guest-rx.ts); false when the table is full. */
  reserveCopy(key: number, availIdx: number): boolean {
    const table = this.guestTable;
    if (table === null || !table.hasRoom) return false;
    table.addCopy(key, availIdx);
    return true;
  }

  /** Entries in the fill ring the kernel has not taken yet. */
  fillQueued(): number {
    const q = this.queues[0];
    return (q.fillNext - Atomics.load(q.fill, q.fillCons)) >>> 0;
  }

  /**
   * The guest fell behind: up to `count` parked relay chunks go into the fill ring behind its
   * buffers, for frames to wait in until it catches up. Returns how many went.
   */
  addOverflowChunks(count: number): number {
    const table = this.guestTable;
    if (table === null) return 0;
    const q = this.queues[0];
    let added = 0;
    // Never more out than the RX ring holds, so the kernel never reorders (xdp-guest-rx.ts).
    while (added < count && table.parked > 0 && table.relayOut + table.outstanding < this.ringSize) {
      this.pushFill(q, q.h.chunkOffset + table.unpark() * this.chunkSize);
      added++;
    }
    this.publishFill();
    return added;
  }

  /** Whether the next received frame (queue 0) is in a guest buffer; false when none waits. */
  rxHeadIsGuest(): boolean {
    const q = this.queues[0];
    if (Atomics.load(q.rx, q.rxProd) === q.rxNext) return false;
    const d = q.rxDesc + ((q.rxNext & q.mask) << 2);
    return q.rx[d] + (q.rx[d + 1] & 0xffff) * TWO32 < this.relayOffset;
  }

  /** Whether postGuest would find room. */
  guestCanPost(): boolean {
    const table = this.guestTable;
    return table !== null && table.hasRoom && table.relayOut + table.outstanding < this.ringSize
      && this.fillQueued() < this.ringSize;
  }

  /** Makes the fill entries written so far visible to the kernel, waking it if it asked to be. */
  publishFill(): void {
    const q = this.queues[0];
    if (Atomics.load(q.fill, q.fillProd) === q.fillNext) return;
    Atomics.store(q.fill, q.fillProd, q.fillNext);
    if ((Atomics.load(q.fill, q.fillFlags) & XDP_RING_NEED_WAKEUP) !== 0) recvfromNative(q.fd, 0, 0, MSG_DONTWAIT, 0, 0);
  }

  /**
   * The port copies from now on: parked relay chunks go back to the fill ring as far as the
   * guest buffers still out leave room (so the RX ring can never overflow and reorder them).
   */
  refillRelayChunks(): void {
    const table = this.guestTable;
    if (table === null || !table.copying || table.parked === 0) return;
    this.addOverflowChunks(Infinity);
  }

  /** True when a frame is waiting on some queue (a load per queue, no system call). */
  rxReady(): boolean {
    const qs = this.queues;
    for (let i = 0; i < qs.length; i++) {
      const q = qs[i];
      if (Atomics.load(q.rx, q.rxProd) !== q.rxNext) return true;
    }
    return false;
  }

  /** TX slots free now (completions reaped first). */
  txFree(): number {
    this.reapCompletions();
    return this.ringSize - ((this.sender.txNext - this.tail) >>> 0);
  }

  /** Whether a TX slot is free, reaping completions when none seemed to be. */
  private txRoom(): boolean {
    if (((this.sender.txNext - this.tail) >>> 0) < this.ringSize) return true;
    this.reapCompletions();
    return ((this.sender.txNext - this.tail) >>> 0) < this.ringSize;
  }

  /**
   * The next free TX chunk, or null when every one is still with the kernel. On a multi-buffer
   * port a frame of `length` bytes that no chunk holds is written to a buffer of its own instead,
   * and txCommit cuts it into chunks (null when the TX ring has no room for all of them).
   */
  txSlot(length = 0): XdpTxSlot | null {
    this.largeSlotTaken = false;
    if (length > this.chunkSize && this.largeSlot !== null) {
      if (this.txFree() < Math.ceil(length / this.chunkSize)) return null;
      this.largeSlotTaken = true;
      return this.largeSlot;
    }
    if (!this.txRoom()) return null;
    const q = this.sender;
    this.slot.offset = q.txChunks + (q.txNext & q.mask) * this.chunkSize - this.relayOffset;
    return this.slot;
  }

  /**
   * Queues the frame written into the current slot. Returns false (the slot stays free) for a
   * length the kernel would refuse: shorter than an Ethernet header, longer than a chunk or than
   * the MTU allows (4 bytes more for a VLAN-tagged frame).
   */
  txCommit(length: number): boolean {
    if (this.largeSlotTaken) return this.commitPieces(length);
    const offset = this.slot.offset;
    if (!this.txLengthAcceptable(this.relayBytes, offset, length)) {
      this.count[C_TX_REJECTED]++;
      return false;
    }
    this.putTx(offset + this.relayOffset, length, TX_RELAY);
    return true;
  }

  /**
   * Queues a frame the guest wrote, `length` bytes at UMEM offset `at` (guestUmemOffset); `key`
   * comes back in completedKeys once the kernel is done with it. The caller has checked the
   * length against the MTU; here only what the kernel would refuse is checked, and a frame that
   * starts at an odd address is copied: Linux 6.18 hands the address of a frame's first
   * descriptor back in the completion ring with bit 0 cleared (copy mode keeps it in the skb,
   * tagged with that bit), so its slot would never be matched, never freed, and the TX ring would
   * fill up behind it. Guests put frames at even addresses; a copy costs nothing there.
   */
  txGuest(at: number, length: number, key: number): number {
    if (length < 14 || at % 2 !== 0 || !this.pieceAcceptable(at, length)) return GUEST_COPY;
    if (!this.txRoom()) return GUEST_NO_ROOM;
    this.putTx(at, length, key);
    this.guestInFlight++;
    this.count[C_TX_IN_PLACE]++;
    return GUEST_QUEUED;
  }

  /**
   * Queues a frame the guest wrote in `count` pieces (UMEM offset `at[i]`, `length[i]` bytes, each
   * at most a chunk), as descriptors marked XDP_PKT_CONTD but the last: a frame larger than a
   * chunk, or scattered over several buffers, leaves from guest memory without a copy. Only a
   * multi-buffer port takes more than one piece. `key` rides on the last descriptor, so it comes
   * back once, when the frame is complete; the others are freed as relay slots are.
   */
  txGuestPieces(at: Float64Array, length: Uint32Array, count: number, key: number): number {
    if (count === 1) return this.txGuest(at[0], length[0], key);
    if (!this.multiBuffer || count < 1 || count > MAX_TX_PIECES || at[0] % 2 !== 0) return GUEST_COPY;
    let total = 0;
    for (let i = 0; i < count; i++) {
      if (length[i] === 0 || !this.pieceAcceptable(at[i], length[i])) return GUEST_COPY;
      total += length[i];
    }
    if (total < 14) return GUEST_COPY;
    if (this.txFree() < count) return GUEST_NO_ROOM;
    for (let i = 0; i < count - 1; i++) this.putTx(at[i], length[i], TX_RELAY, XDP_PKT_CONTD);
    this.putTx(at[count - 1], length[count - 1], key);
    this.count[C_TX_FRAMES] -= count - 1; // one frame, not one per piece
    this.count[C_TX_IN_PLACE]++;
    this.guestInFlight++;
    return GUEST_QUEUED;
  }

  /** A descriptor the kernel takes: no longer than a chunk, and in zero-copy mode inside one page. */
  private pieceAcceptable(at: number, length: number): boolean {
    return length <= this.chunkSize && !(this.zeroCopy && (at % PAGE) + length > PAGE);
  }

  /** The frame written into the large slot, in as many chunks as it takes, each but the last marked XDP_PKT_CONTD. */
  private commitPieces(length: number): boolean {
    this.largeSlotTaken = false;
    const bytes = this.largeSlot!.bytes;
    const pieces = Math.ceil(length / this.chunkSize);
    if (!frameLengthAcceptable(bytes, 0, length, bytes.length, this.maxFrameLength) || this.txFree() < pieces) {
      this.count[C_TX_REJECTED]++;
      return false;
    }
    const q = this.sender;
    for (let k = 0, done = 0; k < pieces; k++) {
      const n = Math.min(this.chunkSize, length - done);
      const at = q.txChunks + (q.txNext & q.mask) * this.chunkSize;
      this.relayBytes.set(bytes.subarray(done, done + n), at - this.relayOffset);
      this.putTx(at, n, TX_RELAY, k < pieces - 1 ? XDP_PKT_CONTD : 0);
      done += n;
    }
    this.count[C_TX_FRAMES] -= pieces - 1; // one frame, not one per piece
    return true;
  }

  private putTx(at: number, length: number, key: number, options = 0): void {
    const q = this.sender;
    const d = q.txDesc + ((q.txNext & q.mask) << 2);
    const tx = q.tx;
    setAddress(tx, d, at);
    tx[d + 2] = length;
    tx[d + 3] = options;
    const e = this.entry(q.txNext);
    setAddress(this.tableWords, e, at);
    this.table[e + 2] = key;
    q.txNext = (q.txNext + 1) >>> 0;
    this.count[C_TX_FRAMES]++;
  }

  private txLengthAcceptable(bytes: Uint8Array, at: number, length: number): boolean {
    return frameLengthAcceptable(bytes, at, length, this.chunkSize, this.maxFrameLength);
  }

  /**
   * Publishes the committed frames and wakes the kernel to send them. In copy mode each sendto
   * sends a bounded batch, so it is repeated while the kernel makes progress. Returns the frames
   * still in the TX ring afterwards (a later flush sends them), or −errno on an error other than
   * the kernel being busy.
   */
  txFlush(): number {
    const q = this.sender;
    const tx = q.tx;
    Atomics.store(tx, q.txProd, q.txNext);
    let left = (q.txNext - Atomics.load(tx, q.txCons)) >>> 0;
    if (left === 0) {
      this.reapCompletions();
      return 0;
    }
    let errno = 0;
    for (let tries = 0; left > 0 && tries < 64; tries++) {
      if ((Atomics.load(tx, q.txFlags) & XDP_RING_NEED_WAKEUP) === 0) break;
      const r = sendtoNative(q.fd, 0, 0, MSG_DONTWAIT, 0, 0) as number;
      const before = left;
      left = (q.txNext - Atomics.load(tx, q.txCons)) >>> 0;
      if (r >= 0) continue;
      errno = lastErrno();
      if (errno === EINTR) continue;
      if ((errno === EAGAIN || errno === EBUSY || errno === ENOBUFS) && left < before) continue;
      break;
    }
    this.reapCompletions();
    if (left === 0) return 0;
    if (errno === 0 || errno === EAGAIN || errno === EBUSY || errno === ENOBUFS) {
      this.count[C_TX_FLUSH_BUSY]++;
      return left;
    }
    this.count[C_TX_FLUSH_ERRORS]++;
    this.count[C_TX_LAST_ERRNO] = errno;
    return -errno;
  }

  /** Frames committed that the kernel has not taken from the TX ring yet. */
  txPending(): boolean {
    const q = this.sender;
    return q.txNext !== Atomics.load(q.tx, q.txCons);
  }

  /** Guest frames sent from guest memory whose completion has not come back yet. */
  get guestFramesInFlight(): number {
    return this.guestInFlight;
  }

  /**
   * Frees the slots the kernel completed. Each completion carries the address of the descriptor
   * it completes; they come in sending order as a rule, so the oldest slot in flight is tried
   * first, and the others only when the kernel completed out of order.
   */
  private reapCompletions(): void {
    const q = this.sender;
    const done = Atomics.load(q.completion, q.compProd);
    if (done === q.completed) return;
    const c = q.completion;
    const t = this.table;
    const words = this.tableWords;
    for (let j = q.completed; j !== done; j = (j + 1) >>> 0) {
      const w = q.compDesc + ((j & q.mask) << 1);
      const lo = c[w];
      const hi = c[w + 1];
      for (let i = this.tail; i !== q.txNext; i = (i + 1) >>> 0) {
        const e = this.entry(i);
        const key = t[e + 2];
        // Both sides unsigned: an address of 2^31 or more must compare equal to itself.
        if (key === TX_FREE || words[e] !== lo || words[e + 1] !== hi) continue;
        t[e + 2] = TX_FREE;
        if (key >= 0) {
          this.completedKeys[this.completedCount++] = key;
          this.guestInFlight--;
        }
        break;
      }
    }
    q.completed = done;
    Atomics.store(c, q.compCons, done);
    let tail = this.tail;
    while (tail !== q.txNext && t[this.entry(tail) + 2] === TX_FREE) tail = (tail + 1) >>> 0;
    if (tail !== this.tail) {
      this.tail = tail;
      t[0] = tail | 0;
    }
  }

  /**
   * Waits up to `ms` for the kernel to complete the guest frames in flight (a thread giving the
   * port up, a queue stopping), then hands back the keys of those still out: their descriptors
   * stay in the ring (the kernel may still send them, with whatever the guest wrote there since),
   * but the guest gets its buffers and nothing is returned twice.
   */
  settleGuestFrames(ms: number): void {
    if (this.guestInFlight === 0) return;
    const deadline = Date.now() + ms;
    for (;;) {
      this.txFlush();
      if (this.guestInFlight === 0 || Date.now() >= deadline) break;
      Atomics.wait(pause, 0, 0, 1);
    }
    if (this.guestInFlight === 0) return;
    const t = this.table;
    for (let i = this.tail; i !== this.sender.txNext; i = (i + 1) >>> 0) {
      const e = this.entry(i);
      const key = t[e + 2];
      if (key < 0) continue;
      this.completedKeys[this.completedCount++] = key;
      t[e + 2] = TX_RELAY;
    }
    this.guestInFlight = 0;
  }

  /** Reads the kernel's XDP_STATISTICS of every queue (cumulative) into the counters. */
  readKernelStatistics(): XdpPortCounters {
    const k = sumXdpStatistics(this.rxFds, this.stats, this.statsLength);
    const c = this.count;
    c[C_KERNEL_RX_DROPPED] = k.rxDropped;
    c[C_KERNEL_RX_RING_FULL] = k.ringFull;
    c[C_KERNEL_FILL_RING_EMPTY] = k.fillEmpty;
    c[C_KERNEL_INVALID_DESCS] = k.invalid;
    c[C_KERNEL_DROPS] = k.drops;
    return this.counters;
  }
}
