// AF_XDP ports: one XDP socket per receive queue of an interface, all sharing one UMEM
// (xdp-umem.ts: the guest's memory when the port is given it, then chunks of the relay's own: per
// queue, half of them circulate through its fill and RX rings, half through its TX and completion
// rings), and the redirect program of sys/bpf.ts attached through a bpf_link.
//
// Like packet-ring.ts, openXdpPort() runs once off the data path and returns plain, postMessage-able
// data; XdpPort.attach() (xdp-port.ts) rebuilds views of the same mappings in the thread that
// polls. Where each ring stands lives in the rings' own producer and consumer words, so a thread
// that attaches later resumes exactly where the previous one stopped.
import { check, lastErrno, SysError } from './libc.js';
import { close as closeFd } from './fd.js';
import { mmap, munmap, viewAt, MAP_SHARED, MAP_POPULATE, PROT_READ, PROT_WRITE } from './memory.js';
import { ifNameToIndex, linkMtu } from './netdev.js';
import { readdirSync } from 'node:fs';
import { createXskMap, setXskMapEntry, loadRedirectProgram, attachXdp, closeBpfFd, programId, XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE } from './bpf.js';
import { buildUmemArea, releaseUmemArea, type UmemArea, type XdpGuestRegion } from './xdp-umem.js';
import { createGuestRxTable, releaseGuestRxTable, type GuestRxTableMapping } from './xdp-guest-rx.js';
import { interfaceXdp, joinDispatcher, leaveDispatcher, libxdpMissing, type JoinedProgram } from './libxdp.js';
import { AF_XDP, SOCK_RAW, SOCK_CLOEXEC, SOL_XDP, XDP_MMAP_OFFSETS, XDP_RX_RING, XDP_TX_RING, XDP_UMEM_REG, XDP_UMEM_FILL_RING, XDP_UMEM_COMPLETION_RING, XDP_OPTIONS, XDP_OPTIONS_ZEROCOPY, XDP_COPY, XDP_ZEROCOPY, XDP_USE_NEED_WAKEUP, XDP_USE_SG, XDP_SHARED_UMEM, XDP_UMEM_UNALIGNED_CHUNK_FLAG, XDP_PGOFF_RX_RING, XDP_PGOFF_TX_RING, XDP_UMEM_PGOFF_FILL_RING, XDP_UMEM_PGOFF_COMPLETION_RING, XDP_PACKET_HEADROOM, ETH_HEADER, VLAN_TAG, EBUSY, EEXIST, socketNative, setsockoptNative, getsockoptNative, bindNative, setAddress, pause } from './xdp-abi.js';
import { createTxTable } from './xdp-port.js';

/** How long a bind that finds its queue busy is retried (the kernel releases a closed socket's queue later). */
const BIND_BUSY_WAIT_MS = 2000;
/** Largest MTU a multi-buffer port takes: 9216, the common jumbo ceiling (three 4 KiB chunks). */
const MAX_MULTI_BUFFER_MTU = 9216;

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
    const txTable = createTxTable(ringSize);
    cleanup.push(() => munmap(txTable));
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

/** 'guest' when the VM's memory is in the port's UMEM (frames can be sent from it), else 'relay'. */
export function xdpUmemKind(handle: XdpPortHandle): 'guest' | 'relay' {
  return handle.umem.guestSlots.length > 0 ? 'guest' : 'relay';
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
