// memif rings (the shared-memory packet interface of VPP and DPDK's net_memif, protocol 2.0) as a
// poller sees them. The control channel (memif-control.ts) sets a connection up in the main
// thread and describes it as a plain, postMessage-able MemifPortHandle; MemifPort.attach() makes
// views of the same mappings in the thread that polls.
//
// Layout (little-endian, shared with the peer): a ring is a 128-byte header (cookie u32 at 0,
// flags u16 at 4, head u16 at 6, tail u16 at 64) followed by 2^log2 descriptors of 16 bytes
// (flags u16, region u16, length u32, offset u32, metadata u32). The client owns the memory:
// it creates every region and ring. The two directions are not symmetric:
//   - client→server (C2S): the client fills buffers and advances head; the server consumes up to
//     head and hands the slots back by advancing tail.
//   - server→client (S2C): the client posts empty buffers by advancing head (each descriptor
//     saying where its buffer is and how long it is); the server fills them and advances tail;
//     the client consumes up to tail and posts the buffers again.
// So the relay in the server role writes frames into buffers the client chose, and reads frames
// from buffers the client points at: every descriptor the peer wrote is checked against the
// regions before a byte is touched. In the client role the relay ignores what the peer wrote in
// a descriptor except the length, because each slot's buffer is fixed by the relay itself.
//
// A peer has a ring per queue in each direction. The poller reads every ring it receives on (the
// peer may send on any) and sends on the ring its caller selects (selectTxRing: by flow).
//
// Where each ring stands lives in the ring words (head/tail), never only in the poller: a thread
// that attaches later (a handover) resumes exactly where the previous one stopped.
import { viewAt } from './memory.js';
import { eventfdReadNoWait, eventfdWrite } from './eventfd.js';
import { frameLengthAcceptable, type FrameAdmission, type FrameHandler } from './packet-ring.js';

export const MEMIF_COOKIE = 0x3e31f20;
export const MEMIF_RING_HEADER = 128;
export const MEMIF_DESC_SIZE = 16;
/** Ring flag: the receiver polls; the sender does not write the interrupt eventfd. */
export const MEMIF_RING_FLAG_MASK_INT = 1;
/** Descriptor flag: the frame continues in the next slot. */
export const MEMIF_DESC_FLAG_NEXT = 1;
/** Largest ring the relay accepts or offers (2^14 slots, DPDK's limit as well). */
export const MEMIF_MAX_LOG2_RING = 14;
/** A frame gathered from a chain of descriptors is at most this long. */
export const MEMIF_MAX_CHAIN_BYTES = 65536;
/** And spans at most this many descriptors. */
export const MEMIF_MAX_CHAIN_SLOTS = 64;

// Offsets inside a ring header, in 16-bit and 32-bit words.
const COOKIE_W32 = 0;
const FLAGS_W16 = 2;
const HEAD_W16 = 3;
const TAIL_W16 = 32;
const DESC_W32 = MEMIF_RING_HEADER / 4;

export type MemifRole = 'server' | 'client';

/** One mapping of a memif region in this process. */
export interface MemifRegionMapping {
  address: number;
  length: number;
}

/** A ring: where its header is and the eventfd the sender writes when the receiver wants interrupts. */
export interface MemifRingHandle {
  region: number;
  offset: number;
  log2Size: number;
  interruptFd: number;
  /**
   * Client role: where this side's buffers for the ring are, in region 0 (slot i uses the one at
   * buffersAt + i * bufferSize); −1 in the server role, where the peer chooses every buffer.
   */
  buffersAt: number;
}

/**
 * Everything a thread needs to poll a memif port; plain data, safe to post to a worker. A port
 * that is not connected has no rings: it receives nothing and refuses frames.
 */
export interface MemifPortHandle {
  kind: 'memif';
  /** `memif:<socket>#<id>`, for logs and stats. */
  name: string;
  role: MemifRole;
  connected: boolean;
  regions: MemifRegionMapping[];
  /**
   * The rings the relay receives on (server: C2S, client: S2C), by ring index. The peer may send
   * on any of them (each of its transmit queues has one), so all are polled.
   */
  rx: MemifRingHandle[];
  /** The rings the relay sends on (server: S2C, client: C2S), one per receive queue of the peer. */
  tx: MemifRingHandle[];
  /** Client role: bytes per buffer of the relay's own (0 in the server role). */
  bufferSize: number;
  /** Largest untagged frame sent or accepted (tagged frames get 4 bytes more). */
  maxFrameLength: number;
  /** The relay's receive rings ask for interrupts (their eventfds are then wake-up fds of the worker). */
  rxInterrupts: boolean;
  /** Shared counters (MemifPort.counters), kept across handovers. */
  counters: SharedArrayBuffer;
}

export interface MemifPortCounters {
  rxFrames: number;
  txFrames: number;
  /** Received descriptors that pointed outside the regions or had an impossible length: their frames were dropped. */
  rxBadDescriptors: number;
  /** Server role: buffers the client posted that could not be written (outside the regions, too short). */
  txBadDescriptors: number;
  /** Ring words the peer set to impossible values: the ring was left alone until the next connection. */
  ringErrors: number;
  /** Frames too long for the buffer they would have gone into. */
  txRejected: number;
}
const COUNTER_NAMES = ['rxFrames', 'txFrames', 'rxBadDescriptors', 'txBadDescriptors', 'ringErrors', 'txRejected'] as const satisfies readonly (keyof MemifPortCounters)[];
const C_RX_FRAMES = 0;
const C_TX_FRAMES = 1;
const C_RX_BAD = 2;
const C_TX_BAD = 3;
const C_RING_ERRORS = 4;
const C_TX_REJECTED = 5;

export function newMemifCounters(): SharedArrayBuffer {
  return new SharedArrayBuffer(8 * COUNTER_NAMES.length);
}

export function readMemifCounters(buffer: SharedArrayBuffer): MemifPortCounters {
  const c = new Float64Array(buffer);
  const out = {} as MemifPortCounters;
  COUNTER_NAMES.forEach((name, i) => (out[name] = c[i]));
  return out;
}

/** Bytes a ring of 2^log2 slots takes in its region. */
export function ringBytes(log2Size: number): number {
  return MEMIF_RING_HEADER + MEMIF_DESC_SIZE * (1 << log2Size);
}

/** Views of one ring's words. */
class RingView {
  readonly w16: Uint16Array;
  readonly w32: Uint32Array;
  readonly size: number;
  readonly mask: number;
  readonly interruptFd: number;
  /** Client role: this side's buffers for the ring's slots (see MemifRingHandle). */
  readonly buffersAt: number;
  /**
   * This side's position: receiving, the next slot to read (server: C2S slot; client: S2C slot);
   * sending, the index we advance (server: S2C tail; client: C2S head).
   */
  next = 0;
  /** The peer broke the ring: nothing more is read from or written to it until the next connection. */
  broken = false;
  /** Sending: frames were committed since the last flush. */
  committed = false;
  /**
   * Sending: the peer's index as last read (server: the head up to which the client posted
   * buffers; client: the tail up to which the server took frames). The slots it frees stay free,
   * so the shared word, which the peer keeps writing, is read again only when they are used up.
   */
  peerSeen = 0;
  constructor(region: ArrayBuffer, h: MemifRingHandle) {
    this.size = 1 << h.log2Size;
    this.mask = this.size - 1;
    this.w16 = new Uint16Array(region, h.offset, ringBytes(h.log2Size) / 2);
    this.w32 = new Uint32Array(region, h.offset, ringBytes(h.log2Size) / 4);
    this.interruptFd = h.interruptFd;
    this.buffersAt = h.buffersAt;
  }
  get head(): number {
    return Atomics.load(this.w16, HEAD_W16);
  }
  get tail(): number {
    return Atomics.load(this.w16, TAIL_W16);
  }
  setHead(v: number): void {
    Atomics.store(this.w16, HEAD_W16, v & 0xffff);
  }
  setTail(v: number): void {
    Atomics.store(this.w16, TAIL_W16, v & 0xffff);
  }
  /** Word index of descriptor `slot` (any counter value; masked here). */
  desc(slot: number): number {
    return DESC_W32 + ((slot & this.mask) << 2);
  }
  /** Wakes the peer if it asked for interrupts on this ring (one write per flush at most). */
  notify(): void {
    if ((Atomics.load(this.w16, FLAGS_W16) & MEMIF_RING_FLAG_MASK_INT) !== 0 || this.interruptFd < 0) return;
    try {
      eventfdWrite(this.interruptFd, 1);
    } catch {
      /* a peer that closed its end: the control channel reports the disconnection */
    }
  }
}

/** Writes a fresh ring header (client role, before the peer sees it). */
export function initRing(region: ArrayBuffer, offset: number, log2Size: number, buffersAt: number, bufferSize: number): void {
  const w16 = new Uint16Array(region, offset, ringBytes(log2Size) / 2);
  const w32 = new Uint32Array(region, offset, ringBytes(log2Size) / 4);
  w32[COOKIE_W32] = MEMIF_COOKIE;
  w16[FLAGS_W16] = 0;
  w16[HEAD_W16] = 0;
  w16[TAIL_W16] = 0;
  for (let i = 0; i < 1 << log2Size; i++) {
    const d = DESC_W32 + (i << 2);
    w32[d] = 0; // flags 0, region 0
    w32[d + 1] = bufferSize;
    w32[d + 2] = buffersAt + i * bufferSize;
    w32[d + 3] = 0;
  }
}

/** Whether the ring header at `offset` carries the memif cookie. */
export function ringHasCookie(region: ArrayBuffer, offset: number): boolean {
  return new Uint32Array(region, offset, 1)[0] === MEMIF_COOKIE;
}

/** Sets both indexes to 0 and the flags as the receiver wants them (at connection). */
export function resetRing(region: ArrayBuffer, offset: number, flags: number | null): void {
  const w16 = new Uint16Array(region, offset, MEMIF_RING_HEADER / 2);
  Atomics.store(w16, HEAD_W16, 0);
  Atomics.store(w16, TAIL_W16, 0);
  if (flags !== null) Atomics.store(w16, FLAGS_W16, flags);
}

/** Client role: posts every buffer of the receive ring to the server (head = ring size). */
export function postAllBuffers(region: ArrayBuffer, offset: number, log2Size: number): void {
  const w16 = new Uint16Array(region, offset, MEMIF_RING_HEADER / 2);
  Atomics.store(w16, HEAD_W16, (Atomics.load(w16, TAIL_W16) + (1 << log2Size)) & 0xffff);
}

/**
 * What a descriptor written by the peer is worth: a region index and a byte range that lie inside
 * the mapped regions. Returns the region index, or −1 for a descriptor that must not be touched.
 * Pure, so the unit tests can throw hostile values at it.
 */
export function checkDescriptor(regionLengths: readonly number[], region: number, offset: number, length: number, maxLength: number): number {
  if (region >= regionLengths.length) return -1;
  if (length > maxLength) return -1;
  // offset and length are u32 read from shared memory: their sum cannot overflow a double.
  if (offset + length > regionLengths[region]) return -1;
  return region;
}

/** A buffer to write one frame into; the same object is returned by every txSlot() call of a port. */
export interface MemifTxSlot {
  bytes: Uint8Array;
  offset: number;
  capacity: number;
}

/** The poller side of a memif port. */
export class MemifPort {
  readonly handle: MemifPortHandle;
  readonly rxHeader: null = null;
  readonly rxTruncated = 0;
  readonly rxFds: number[];
  /**
   * The server role, as a flag: the role string came through a worker message, and comparing
   * such a string is a call per comparison, where these run per frame.
   */
  private readonly server: boolean;
  private readonly regions: Uint8Array[];
  private readonly regionLengths: number[];
  /** The rings frames come in on, all polled; none while not connected. */
  private readonly rx: RingView[];
  /** The rings frames may go out on; none while not connected. */
  private readonly txRings: RingView[];
  /** The ring the next frames go out on (selectTxRing); null while not connected. */
  private tx: RingView | null;
  private readonly count: Float64Array;
  private readonly slot: MemifTxSlot;
  private readonly maxFrameLength: number;
  /** Client role: bytes per buffer. */
  private readonly bufferSize: number;
  /** The receive ring a burst starts with; it turns, so that no ring waits behind a busy one. */
  private rxTurn = 0;
  /** The burst ends here: the frame handler or the admission said stop. */
  private rxStop = false;
  /** Frames gathered from descriptor chains are delivered from here. */
  private chainScratch: Uint8Array | null = null;

  private constructor(handle: MemifPortHandle) {
    this.handle = handle;
    this.server = handle.role === 'server';
    this.maxFrameLength = handle.maxFrameLength;
    this.count = new Float64Array(handle.counters);
    const buffers = handle.regions.map((r) => viewAt(r.address, r.length));
    this.regions = buffers.map((b) => new Uint8Array(b));
    this.regionLengths = handle.regions.map((r) => r.length);
    const live = handle.connected && handle.rx.length > 0 && handle.tx.length > 0;
    this.rx = live ? handle.rx.map((h) => new RingView(buffers[h.region], h)) : [];
    this.txRings = live ? handle.tx.map((h) => new RingView(buffers[h.region], h)) : [];
    this.tx = this.txRings[0] ?? null;
    this.bufferSize = handle.bufferSize;
    this.rxFds = handle.rxInterrupts ? this.rx.filter((r) => r.interruptFd >= 0).map((r) => r.interruptFd) : [];
    this.slot = { bytes: this.regions[0] ?? new Uint8Array(0), offset: 0, capacity: 0 };
    // The positions this side owns are in the ring words (see the file comment).
    const server = this.server;
    for (const r of this.rx) r.next = server ? r.tail : (r.head - r.size) & 0xffff;
    for (const r of this.txRings) r.next = server ? r.tail : r.head;
  }

  static attach(handle: MemifPortHandle): MemifPort {
    return new MemifPort(handle);
  }

  get connected(): boolean {
    return this.tx !== null;
  }

  /** Rings frames may go out on (one per receive queue of the peer); 0 while not connected. */
  get txRingCount(): number {
    return this.txRings.length;
  }

  /**
   * The ring the next frames go out on, until the next call (ring 0 at first). A caller that picks
   * it by a flow hash keeps each flow on one ring, so the peer sees its frames in order.
   */
  selectTxRing(i: number): void {
    const ring = this.txRings[i];
    if (ring !== undefined) this.tx = ring;
  }

  get counters(): MemifPortCounters {
    return readMemifCounters(this.handle.counters);
  }

  /** Frames the peer has published on `rx` that this side has not read; −1 when the peer's index is impossible. */
  private rxAvailable(rx: RingView): number {
    const produced = this.server ? rx.head : rx.tail;
    const n = (produced - rx.next) & 0xffff;
    return n > rx.size ? -1 : n;
  }

  rxReady(): boolean {
    const rings = this.rx;
    for (let i = 0; i < rings.length; i++) if (!rings[i].broken && this.rxAvailable(rings[i]) !== 0) return true;
    return false;
  }

  private breakRing(ring: RingView): void {
    ring.broken = true;
    this.count[C_RING_ERRORS]++;
  }

  /**
   * Delivers up to `budget` frames to `onFrame` in place (`bytes` is the region holding the
   * buffer, or a scratch copy for a frame spread over several descriptors) and returns how many
   * it delivered. The buffers go back to the peer when this returns: copy what you keep.
   * `beforeRelease`, when given, is called before any frame delivered goes back or its scratch
   * copy is overwritten: a handler may leave its copies until then.
   */
  receive(onFrame: FrameHandler, budget: number, admit?: FrameAdmission, beforeRelease?: () => void): number {
    const rings = this.rx;
    const n = rings.length;
    if (n === 0) return 0;
    const first = this.rxTurn;
    this.rxTurn = first + 1 === n ? 0 : first + 1;
    this.rxStop = false;
    let delivered = 0;
    for (let k = 0; k < n && delivered < budget && !this.rxStop; k++) {
      const i = first + k < n ? first + k : first + k - n;
      delivered += this.receiveRing(rings[i], onFrame, budget - delivered, admit, beforeRelease);
    }
    return delivered;
  }

  private receiveRing(rx: RingView, onFrame: FrameHandler, budget: number, admit?: FrameAdmission, beforeRelease?: () => void): number {
    if (rx.broken) return 0;
    let available = this.rxAvailable(rx);
    if (available < 0) {
      this.breakRing(rx);
      return 0;
    }
    if (available === 0) {
      // Ring empty: clear the interrupt count so that a sleeping worker waits for the next one.
      if (this.rxFds.length > 0 && rx.interruptFd >= 0) drainInterrupt(rx.interruptFd);
      if (!this.server) this.refill(rx);
      return 0;
    }
    const server = this.server;
    const w32 = rx.w32;
    let delivered = 0;
    let bad = 0;
    try {
      while (available > 0 && delivered < budget) {
        let d = rx.desc(rx.next);
        let flags = w32[d] & 0xffff;
        let length = w32[d + 1];
        let bytes: Uint8Array;
        let at: number;
        let slots = 1;
        if ((flags & MEMIF_DESC_FLAG_NEXT) === 0) {
          const where = this.rxBuffer(rx, d, length);
          if (where < 0) {
            bad++;
            rx.next = (rx.next + 1) & 0xffff;
            available--;
            continue;
          }
          bytes = this.regions[where];
          at = this.rxAt;
        } else {
          // A chain: gathered into scratch once every slot of it is published.
          const scratch = (this.chainScratch ??= new Uint8Array(MEMIF_MAX_CHAIN_BYTES));
          if (beforeRelease !== undefined && delivered > 0) beforeRelease();
          let total = 0;
          let ok = true;
          for (;;) {
            const where = this.rxBuffer(rx, d, length);
            if (where < 0 || total + length > MEMIF_MAX_CHAIN_BYTES) ok = false;
            else scratch.set(this.regions[where].subarray(this.rxAt, this.rxAt + length), total);
            total += length;
            if ((flags & MEMIF_DESC_FLAG_NEXT) === 0) break;
            if (slots === available || slots === MEMIF_MAX_CHAIN_SLOTS) break;
            d = rx.desc(rx.next + slots);
            flags = w32[d] & 0xffff;
            length = w32[d + 1];
            slots++;
          }
          if ((flags & MEMIF_DESC_FLAG_NEXT) !== 0) {
            // The rest of the chain is not published yet: wait for it, unless it can never fit.
            if (slots < available || slots === MEMIF_MAX_CHAIN_SLOTS || slots === rx.size) ok = false;
            else break;
          }
          if (!ok) {
            bad++;
            rx.next = (rx.next + slots) & 0xffff;
            available -= slots;
            continue;
          }
          bytes = scratch;
          at = 0;
          length = total;
        }
        if (admit !== undefined && !admit(length)) {
          this.rxStop = true;
          break;
        }
        rx.next = (rx.next + slots) & 0xffff;
        available -= slots;
        delivered++;
        if (onFrame(bytes, at, length, 0) === false) {
          this.rxStop = true;
          break;
        }
      }
    } finally {
      if (beforeRelease !== undefined && delivered > 0) beforeRelease();
      if (server) rx.setTail(rx.next);
      else this.refill(rx);
      if (bad > 0) this.count[C_RX_BAD] += bad;
      this.count[C_RX_FRAMES] += delivered;
    }
    return delivered;
  }

  /** Set by rxBuffer: the byte offset of the buffer in its region. */
  private rxAt = 0;

  /**
   * Where the buffer of the descriptor at word `d` of `rx` is: its region index (the offset in
   * rxAt), or −1 when the descriptor is not acceptable. Server role: the peer's region/offset,
   * checked. Client role: the slot's own buffer; only the length comes from the peer.
   */
  private rxBuffer(rx: RingView, d: number, length: number): number {
    const w32 = rx.w32;
    if (!this.server) {
      if (length > this.bufferSize) return -1;
      this.rxAt = rx.buffersAt + ((d - DESC_W32) >> 2) * this.bufferSize;
      return 0;
    }
    const region = w32[d] >>> 16;
    const offset = w32[d + 2];
    const where = checkDescriptor(this.regionLengths, region, offset, length, MEMIF_MAX_CHAIN_BYTES);
    this.rxAt = offset;
    return where;
  }

  /** Client role: gives every slot read so far back to the server, with its own buffer. */
  private refill(rx: RingView): void {
    const w32 = rx.w32;
    let head = rx.head;
    const target = (rx.next + rx.size) & 0xffff;
    if (head === target) return;
    // The server may have scribbled over the descriptors: each one is written whole again.
    for (let n = (target - head) & 0xffff; n > 0 && n <= rx.size; n--) {
      const d = rx.desc(head);
      w32[d] = 0;
      w32[d + 1] = this.bufferSize;
      w32[d + 2] = rx.buffersAt + (head & rx.mask) * this.bufferSize;
      w32[d + 3] = 0;
      head = (head + 1) & 0xffff;
    }
    rx.setHead(target);
  }

  /** Slots this side may fill now; −1 when the peer's index is impossible. */
  txFree(): number {
    const tx = this.tx;
    if (tx === null || tx.broken) return 0;
    return this.freeSlots(tx, true);
  }

  /**
   * Free slots of `tx` against the peer's index as last seen, read again when `fresh` or when
   * that leaves none (or before the first read). A peer index no honest peer could have written
   * breaks the ring.
   */
  private freeSlots(tx: RingView, fresh: boolean): number {
    const server = this.server;
    // (A value seen earlier was checked then; the one before the first read may be anything.)
    const seen = fresh ? 0 : slotsFree(server, tx, tx.peerSeen);
    if (seen > 0 && seen <= tx.size) return seen;
    tx.peerSeen = server ? tx.head : tx.tail;
    const free = slotsFree(server, tx, tx.peerSeen);
    if (free < 0 || free > tx.size) {
      this.breakRing(tx);
      return 0;
    }
    return free;
  }

  /** The next buffer to write a frame into, or null when none is free. */
  txSlot(): MemifTxSlot | null {
    for (;;) {
      const tx = this.tx;
      if (tx === null || tx.broken || this.freeSlots(tx, false) === 0) return null;
      const d = tx.desc(tx.next);
      if (!this.server) {
        this.slot.bytes = this.regions[0];
        this.slot.offset = tx.buffersAt + (tx.next & tx.mask) * this.bufferSize;
        this.slot.capacity = this.bufferSize;
        return this.slot;
      }
      const w32 = tx.w32;
      const region = w32[d] >>> 16;
      const offset = w32[d + 2];
      const length = w32[d + 1];
      if (checkDescriptor(this.regionLengths, region, offset, length, MEMIF_MAX_CHAIN_BYTES) >= 0) {
        this.slot.bytes = this.regions[region];
        this.slot.offset = offset;
        this.slot.capacity = length;
        return this.slot;
      }
      // A buffer we must not write: handed back empty, so that the ring keeps moving.
      w32[d] = w32[d] & 0xffff0000;
      w32[d + 1] = 0;
      tx.next = (tx.next + 1) & 0xffff;
      tx.committed = true;
      this.count[C_TX_BAD]++;
    }
  }

  /** Queues the frame written into the current slot; false (the slot stays free) for a length the slot or the link cannot take. */
  txCommit(length: number): boolean {
    const tx = this.tx;
    if (tx === null) return false;
    if (!frameLengthAcceptable(this.slot.bytes, this.slot.offset, length, this.slot.capacity, this.maxFrameLength)) {
      this.count[C_TX_REJECTED]++;
      return false;
    }
    const w32 = tx.w32;
    const d = tx.desc(tx.next);
    if (!this.server) {
      w32[d] = 0;
      w32[d + 2] = this.slot.offset;
    } else {
      w32[d] = w32[d] & 0xffff0000; // the client's region index stays, flags are cleared
    }
    w32[d + 1] = length;
    w32[d + 3] = 0;
    tx.next = (tx.next + 1) & 0xffff;
    tx.committed = true;
    this.count[C_TX_FRAMES]++;
    return true;
  }

  /** Publishes the committed frames of every ring and wakes the peer where it wants interrupts. */
  txFlush(): void {
    const rings = this.txRings;
    for (let i = 0; i < rings.length; i++) {
      const tx = rings[i];
      if (!tx.committed) continue;
      tx.committed = false;
      if (!this.server) tx.setHead(tx.next);
      else tx.setTail(tx.next);
      tx.notify();
    }
  }
}

/** Slots free for sending against the peer's index `peer` (−1: an index out of reach). */
function slotsFree(server: boolean, tx: RingView, peer: number): number {
  if (server) return (peer - tx.next) & 0xffff; // buffers the client posted and we have not filled
  const inFlight = (tx.next - peer) & 0xffff;
  return inFlight > tx.size ? -1 : tx.size - inFlight;
}

function drainInterrupt(fd: number): void {
  try {
    eventfdReadNoWait(fd);
  } catch {
    /* the control channel reports a peer that went away */
  }
}
