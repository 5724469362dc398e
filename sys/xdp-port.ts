// The poller side of an AF_XDP port (xdp-socket.ts opens it): XdpPort.attach() makes views of the
// port's rings, UMEM, slot table and counters in the thread that polls. It receives on every
// queue, a burst starting one queue further each time, and sends on the first queue's TX ring.
//
// Frame ownership, without a free list: RX chunk k is either in the fill ring, in the RX ring, or
// being delivered; it goes back to the fill ring as soon as it is delivered. TX descriptor i
// either names TX chunk (i mod ring size) or a frame in guest memory; a table beside the ring
// (shared, like the ring words) records which, and the completion ring's addresses free the
// entries, in whatever order the kernel completes them. A slot is reused once every older one is
// free, so a chunk is never rewritten while the kernel may still read it.
import { lastErrno } from './libc.js';
import { mmap, viewAt, MAP_SHARED, PROT_READ, PROT_WRITE } from './memory.js';
import { frameLengthAcceptable, type FrameAdmission, type FrameHandler } from './packet-ring.js';
import { GuestRxTable } from './xdp-guest-rx.js';
import type { XdpPortHandle, XdpQueueHandle } from './xdp-socket.js';
import { XDP_PKT_CONTD, XDP_RING_NEED_WAKEUP, XDP_PACKET_HEADROOM, VLAN_TAG, MSG_DONTWAIT, EAGAIN, EBUSY, ENOBUFS, EINTR, TWO32, sendtoNative, recvfromNative, setAddress, sumXdpStatistics, pause } from './xdp-abi.js';

// The transmit slot table: one word (slots released so far), padding, then per slot of the TX
// ring its descriptor's address (low and high word) and what it carries: TX_FREE once completed,
// TX_RELAY for a relay chunk (or a guest frame already handed back), else the caller's key.
const TX_TABLE_HEADER = 64;
const TX_TABLE_ENTRY = 16;
const TX_FREE = -2;
const TX_RELAY = -1;
/** Zero copy: a frame sent from guest memory must stay inside one page (only the kernel knows which pages are contiguous for the device). */
const PAGE = 4096;

/** A fresh transmit slot table for a `ringSize`-entry TX ring: every slot free. */
export function createTxTable(ringSize: number): { address: number; length: number } {
  const table = mmap({ length: TX_TABLE_HEADER + ringSize * TX_TABLE_ENTRY, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED });
  new Int32Array(table.buffer).fill(TX_FREE, TX_TABLE_HEADER >> 2);
  return { address: table.address, length: table.length };
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
export function counterWords(handle: XdpPortHandle): Float64Array {
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


/**
 * Frames received so far straight into a guest's posted buffers (VIRTIOFWD_XDP_RX=guest), and
 * frames sent straight from guest memory (VIRTIOFWD_XDP_UMEM=guest); zeros once the port is closing.
 */
export function xdpFramesInPlace(handle: XdpPortHandle): { rxFramesInPlace: number; txFramesInPlace: number } {
  if (handle.closing) return { rxFramesInPlace: 0, txFramesInPlace: 0 };
  const words = counterWords(handle);
  return { rxFramesInPlace: words[C_RX_IN_PLACE], txFramesInPlace: words[C_TX_IN_PLACE] };
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
