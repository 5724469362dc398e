// A VF made of memory: two frame rings in a SharedArrayBuffer, one towards the relay (what the
// "wire" delivers) and one from it (what the relay sends). The data path's unit tests use it to
// run forwarding, bonds, backpressure and handover without a kernel, root or a network namespace;
// the far end (MemoryWire) is driven from the test. Like the kernel's rings, each has a fixed
// number of slots: a full receive ring drops (counted as kernel drops), a full send ring refuses.
import type { FrameAdmission, FrameHandler } from '../../sys/packet-ring.js';
import { CopyingLinkTally, QUEUED, NO_ROOM, REFUSED, fitsLink, type GuestFrame, type VfLink } from './vf-link.js';

/** Bytes per slot: a frame of up to SLOT_BYTES − 4 after its length word. */
const SLOT_BYTES = 2048;
// Words of the header: per ring, producer and consumer counters; then the drop count.
const RX_PROD = 0;
const RX_CONS = 1;
const TX_PROD = 2;
const TX_CONS = 3;
const RX_DROPS = 4;
const HEADER_BYTES = 64;

export interface MemoryLinkHandle {
  kind: 'memory';
  name: string;
  /** Largest untagged frame (tagged frames get 4 more). */
  maxFrameLength: number;
  /** Slots per ring. */
  slots: number;
  buffer: SharedArrayBuffer;
}

export function createMemoryLink(name: string, opts: { slots?: number; maxFrameLength?: number } = {}): MemoryLinkHandle {
  const slots = opts.slots ?? 256;
  return {
    kind: 'memory',
    name,
    maxFrameLength: opts.maxFrameLength ?? 1514,
    slots,
    buffer: new SharedArrayBuffer(HEADER_BYTES + 2 * slots * SLOT_BYTES),
  };
}

export function isMemoryHandle(h: unknown): h is MemoryLinkHandle {
  return (h as MemoryLinkHandle).kind === 'memory';
}

/** The two rings' views; both ends use them. */
class Rings {
  readonly words: Int32Array;
  readonly bytes: Uint8Array;
  readonly slots: number;
  constructor(h: MemoryLinkHandle) {
    this.words = new Int32Array(h.buffer, 0, HEADER_BYTES / 4);
    this.bytes = new Uint8Array(h.buffer);
    this.slots = h.slots;
  }
  /** Byte offset of slot `i` of the RX (ring 0) or TX (ring 1) ring. */
  slotAt(ring: 0 | 1, i: number): number {
    return HEADER_BYTES + (ring * this.slots + (i % this.slots)) * SLOT_BYTES;
  }
  put(ring: 0 | 1, frame: Uint8Array, offset: number, length: number): boolean {
    const prod = ring === 0 ? RX_PROD : TX_PROD;
    const p = Atomics.load(this.words, prod);
    if (p - Atomics.load(this.words, prod + 1) >= this.slots) return false;
    const at = this.slotAt(ring, p);
    new DataView(this.bytes.buffer).setUint32(at, length, true);
    this.bytes.set(frame.subarray(offset, offset + length), at + 4);
    Atomics.store(this.words, prod, p + 1);
    return true;
  }
}

/** The far end of a memory link, for the test: puts frames on the wire towards the relay and takes what it sent. */
export class MemoryWire {
  private readonly rings: Rings;
  constructor(h: MemoryLinkHandle) {
    this.rings = new Rings(h);
  }
  /** Delivers a frame to the relay; false (and a drop counted) when its receive ring is full. */
  deliver(frame: Uint8Array): boolean {
    if (this.rings.put(0, frame, 0, frame.length)) return true;
    Atomics.add(this.rings.words, RX_DROPS, 1);
    return false;
  }
  /** Every frame the relay sent since the last call, in order. */
  take(): Uint8Array[] {
    const w = this.rings.words;
    const out: Uint8Array[] = [];
    const p = Atomics.load(w, TX_PROD);
    let c = Atomics.load(w, TX_CONS);
    for (; c !== p; c++) {
      const at = this.rings.slotAt(1, c);
      const length = new DataView(this.rings.bytes.buffer).getUint32(at, true);
      out.push(this.rings.bytes.slice(at + 4, at + 4 + length));
    }
    Atomics.store(w, TX_CONS, c);
    return out;
  }
  /** Frames waiting for the relay to receive them. */
  get waiting(): number {
    return Atomics.load(this.rings.words, RX_PROD) - Atomics.load(this.rings.words, RX_CONS);
  }
}

/** The relay's end. */
export class MemoryLink extends CopyingLinkTally implements VfLink {
  readonly kind = 'memory' as const;
  readonly netdev: string;
  readonly maxFrame: number;
  readonly rxHeader = null;
  readonly rxTruncated = 0;
  /** Nothing to wait on: a test drives bursts itself. */
  readonly rxFds: number[] = [];
  private readonly rings: Rings;

  constructor(netdev: string, h: MemoryLinkHandle) {
    super();
    this.netdev = netdev;
    this.maxFrame = h.maxFrameLength;
    this.rings = new Rings(h);
  }

  receive(onFrame: FrameHandler, budget: number, admit?: FrameAdmission): number {
    const w = this.rings.words;
    const bytes = this.rings.bytes;
    const view = new DataView(bytes.buffer);
    const p = Atomics.load(w, RX_PROD);
    let c = Atomics.load(w, RX_CONS);
    let delivered = 0;
    try {
      while (c !== p && delivered < budget) {
        const at = this.rings.slotAt(0, c);
        const length = view.getUint32(at, true);
        if (admit !== undefined && !admit(length)) break;
        c++;
        delivered++;
        if (onFrame(bytes, at + 4, length, 0) === false) break;
      }
    } finally {
      Atomics.store(w, RX_CONS, c);
    }
    return delivered;
  }

  rxReady(): boolean {
    return Atomics.load(this.rings.words, RX_PROD) !== Atomics.load(this.rings.words, RX_CONS);
  }

  readKernelDrops(): number {
    return Atomics.load(this.rings.words, RX_DROPS);
  }

  get kernelDropsSoFar(): number {
    return Atomics.load(this.rings.words, RX_DROPS);
  }

  queueFrame(frame: GuestFrame, scratch: Uint8Array): number {
    const length = frame.frameLength;
    if (!fitsLink(frame, this.maxFrame, scratch, 0) || length > SLOT_BYTES - 4) return REFUSED;
    const w = this.rings.words;
    const p = Atomics.load(w, TX_PROD);
    if (p - Atomics.load(w, TX_CONS) >= this.rings.slots) return NO_ROOM;
    const at = this.rings.slotAt(1, p);
    if (frame.chain.copyOut(frame.hdrLen, this.rings.bytes, at + 4, length) !== length) return REFUSED;
    new DataView(this.rings.bytes.buffer).setUint32(at, length, true);
    Atomics.store(w, TX_PROD, p + 1);
    this.counted(length);
    return QUEUED;
  }

  flush(): number {
    return this.endBurst();
  }

  txPending(): boolean {
    return false;
  }
}
