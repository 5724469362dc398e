// Delivering frames into a guest's receive queue: one chain per frame, or with MRG_RXBUF as many
// chains as the frame needs, all or nothing. Chains are taken from a pool allocated on first use,
// so a steady stream of frames allocates nothing.

import { copyBytes, DEFAULT_MAX_SEGMENTS, DescriptorChain, destinationWords } from './descriptor-chain.js';
import { NET_HEADER_LENGTH, NET_HEADER_LEGACY_LENGTH, NUM_BUFFERS_OFFSET } from './net-header.js';
import type { DeviceQueue } from './device-queue.js';

/** The frame was not delivered and no buffer was consumed (too few buffers right now). */
export const RX_NO_BUFFERS = 0;
/** The frame was dropped; the buffers taken for it went back to the guest with length 0. */
export const RX_DROPPED = -1;

export interface NetRxWriterOptions {
  /** 10 or 12, from `netHeaderLength(features)`. */
  headerLength: number;
  /** VIRTIO_NET_F_MRG_RXBUF negotiated. */
  mergeable: boolean;
  /** Most chains one frame may use; more → not delivered. Default min(queue size, 64). */
  maxBuffers?: number;
  /** Segment capacity of each pooled chain. */
  segmentsPerChain?: number;
  /**
   * Write a small frame that fits one buffer, and its plain header, when the caller asks
   * (writePending), not when it is delivered (DEFERRED_WRITES has why). The caller must keep each
   * frame's bytes as they are until then, and ask before it publishes the used entries.
   */
  deferWrites?: boolean;
}

/**
 * Frames kept for writePending at most; one more writes them all first. A burst of frames has
 * fewer, so they are written in one go when the port is about to take its buffers back.
 *
 * Why wait at all: the guest's CPU was the last to touch the buffers a frame goes into (its
 * driver reads each frame's header, and the buffers come round again from its pool), so a store
 * to one waits for that CPU to give the cache line up. Written one frame at a time, amid the
 * ring's bookkeeping, those waits come one after the other. Written in a row, with nothing in
 * between, they overlap. NF→VM over memif at 64 bytes, on a machine whose two CPUs took
 * ~450 ns for a cache line's round trip, alternated with the build before: 3.6-6.2 Mpps against
 * 3.2-4.2, six pairs of seven won.
 */
const DEFERRED_WRITES = 256;
/** Longest frame whose copy is deferred: the waits matter for small frames, bandwidth for big ones. */
const DEFERRED_FRAME_BYTES = 256;
const NO_BYTES = new Uint8Array(0);

export class NetRxWriter {
  readonly headerLength: number;
  readonly mergeable: boolean;
  readonly maxBuffers: number;
  private readonly segmentsPerChain: number;
  private readonly pool: DescriptorChain[] = [];
  private readonly header = new Uint8Array(NET_HEADER_LENGTH);
  /** Broken or unusable receive chains handed back so far, and why the last one was. */
  badChains = 0;
  lastBadChain = '';
  private readonly deferWrites: boolean;
  // The deferred writes (deferWrites): the frame's bytes and offset, its length, and the buffer's
  // region bytes and offset.
  private readonly pendingFrom: Uint8Array[];
  private readonly pendingFromAt = new Float64Array(DEFERRED_WRITES);
  private readonly pendingLength = new Float64Array(DEFERRED_WRITES);
  private readonly pendingTo: Uint8Array[];
  private readonly pendingToAt = new Float64Array(DEFERRED_WRITES);
  private pendingCount = 0;

  constructor(readonly queue: DeviceQueue, options: NetRxWriterOptions) {
    if (options.headerLength !== NET_HEADER_LENGTH && options.headerLength !== NET_HEADER_LEGACY_LENGTH) {
      throw new Error(`${queue.name}: virtio-net header length ${options.headerLength} is neither 10 nor 12`);
    }
    if (options.mergeable && options.headerLength !== NET_HEADER_LENGTH) {
      throw new Error(`${queue.name}: mergeable receive buffers need the 12-byte header with num_buffers`);
    }
    this.headerLength = options.headerLength;
    this.mergeable = options.mergeable;
    this.maxBuffers = options.mergeable ? (options.maxBuffers ?? Math.min(queue.size, 64)) : 1;
    if (!Number.isInteger(this.maxBuffers) || this.maxBuffers < 1 || this.maxBuffers > queue.size) {
      throw new Error(`${queue.name}: ${this.maxBuffers} buffers per frame is outside 1..${queue.size}`);
    }
    // Big-packet receive chains (no MRG_RXBUF) carry up to MAX_SKB_FRAGS + 2 descriptors in Linux;
    // mergeable buffers are single descriptors, so a small pool entry keeps the pool cheap.
    this.segmentsPerChain = options.segmentsPerChain ?? (options.mergeable ? 16 : DEFAULT_MAX_SEGMENTS);
    this.deferWrites = options.deferWrites ?? false;
    const slots = this.deferWrites ? DEFERRED_WRITES : 0;
    this.pendingFrom = new Array<Uint8Array>(slots).fill(NO_BYTES);
    this.pendingTo = new Array<Uint8Array>(slots).fill(NO_BYTES);
  }

  /**
   * Writes the frames delivered since the last call whose writes were deferred (deferWrites):
   * header and frame. Call it while their bytes are still there, and before the queue's used
   * entries are published: a guest that saw an entry first would read a buffer not yet written.
   */
  writePending(): void {
    const n = this.pendingCount;
    if (n === 0) return;
    const hdrLen = this.headerLength;
    const from = this.pendingFrom;
    const fromAt = this.pendingFromAt;
    const length = this.pendingLength;
    const to = this.pendingTo;
    const toAt = this.pendingToAt;
    // Nothing else in this loop: its stores are what must overlap. (The references stay until
    // overwritten; nothing reads or writes through them before then.)
    for (let k = 0; k < n; k++) {
      this.writeHeader(to[k]!, toAt[k]!, null, 1);
      copyBytes(from[k]!, fromAt[k]!, to[k]!, toAt[k]! + hdrLen, length[k]!);
    }
    this.pendingCount = 0;
  }

  /** Frames whose writes writePending has still to do. */
  get pendingWrites(): number {
    return this.pendingCount;
  }

  private chainAt(k: number): DescriptorChain {
    let chain = this.pool[k];
    if (chain === undefined) {
      chain = new DescriptorChain(this.segmentsPerChain);
      this.pool[k] = chain;
    }
    return chain;
  }

  /** Whether a popped chain can take receive data: good, device-writable only, room for a header. */
  private usable(chain: DescriptorChain): boolean {
    return chain.error === null && chain.readableLength === 0 && chain.writableLength >= this.headerLength;
  }

  /** Counts a chain no receive could use; the reason is kept for the caller's warning. */
  private noteBadChain(chain: DescriptorChain): void {
    this.badChains++;
    if (chain.error !== null) this.lastBadChain = chain.error;
    else if (chain.readableLength !== 0) this.lastBadChain = `chain at head ${chain.head} has device-readable descriptors in a receive queue`;
    else this.lastBadChain = `chain at head ${chain.head} has ${chain.writableLength} writable bytes, less than the ${this.headerLength}-byte header`;
  }

  /**
   * Delivers a frame into one chain taken earlier (`chain`, walked again with chainAt): header
   * and frame, or, when the chain is broken or too small, nothing (it goes back empty and the
   * frame is dropped). Returns 1 or RX_DROPPED; the used entry is pushed either way.
   */
  deliverInto(chain: DescriptorChain, frame: Uint8Array, offset: number, length: number, header: Uint8Array | null = null): number {
    const hdrLen = this.headerLength;
    if (!this.usable(chain) || chain.writableLength < hdrLen + length) {
      if (!this.usable(chain)) this.noteBadChain(chain);
      this.queue.pushUsed(chain.head, 0);
      return RX_DROPPED;
    }
    this.queue.pushUsed(chain.head, this.fillChain(chain, frame, offset, length, header));
    return 1;
  }

  /** Writes `header` (or a plain one) at `dst[at]`, with `buffers` as num_buffers where the header has it. */
  private writeHeader(dst: Uint8Array, at: number, header: Uint8Array | null, buffers: number): void {
    const hdrLen = this.headerLength;
    if (header === null && hdrLen === NET_HEADER_LENGTH && at + hdrLen <= dst.length) {
      // The common header, asking for nothing: three word stores instead of fourteen byte stores.
      // A guest buffer is usually on a word boundary (and num_buffers at bytes 10-11 is then the
      // high half of the third word, little-endian).
      const v = destinationWords(dst);
      const k = v.lead + at;
      if ((k & 3) === 0) {
        const w = v.words;
        const i = k / 4;
        w[i] = 0;
        w[i + 1] = 0;
        w[i + 2] = (buffers & 0xffff) << 16;
        return;
      }
    }
    if (header === null) for (let i = 0; i < hdrLen; i++) dst[at + i] = 0;
    else for (let i = 0; i < hdrLen; i++) dst[at + i] = header[i] ?? 0;
    if (hdrLen === NET_HEADER_LENGTH) {
      dst[at + NUM_BUFFERS_OFFSET] = buffers & 0xff;
      dst[at + NUM_BUFFERS_OFFSET + 1] = buffers >>> 8;
    }
  }

  /**
   * Header and frame into one chain with room for both; returns the bytes written. The usual
   * small frame has one buffer: both are written straight into it (no staging of the header, no
   * walk over segments), which halves what a 64-byte frame costs through copyIn.
   */
  private fillChain(chain: DescriptorChain, frame: Uint8Array, offset: number, length: number, header: Uint8Array | null): number {
    const hdrLen = this.headerLength;
    if (chain.segmentCount === 1) {
      const bytes = chain.segBytes[0]!;
      const at = chain.segOffset[0]!;
      // Not while pages are logged: a page is marked after it is written, not before.
      if (this.deferWrites && header === null && length <= DEFERRED_FRAME_BYTES && !(chain.memory?.dirtyLogging ?? false)) {
        if (this.pendingCount === DEFERRED_WRITES) this.writePending();
        const k = this.pendingCount++;
        this.pendingFrom[k] = frame;
        this.pendingFromAt[k] = offset;
        this.pendingLength[k] = length;
        this.pendingTo[k] = bytes;
        this.pendingToAt[k] = at;
        return hdrLen + length;
      }
      this.writeHeader(bytes, at, header, 1);
      copyBytes(frame, offset, bytes, at + hdrLen, length);
      chain.markWritten(0, hdrLen + length);
      return hdrLen + length;
    }
    this.writeHeader(this.header, 0, header, 1);
    const written = chain.copyIn(this.header, 0, hdrLen, 0);
    return written + chain.copyIn(frame, offset, length, written);
  }

  /**
   * Writes `header` (or a plain header when null) and `frame[offset, offset+length)` into the
   * guest and pushes the used entries; the caller publishes them with `queue.flushUsed()` at the
   * end of its burst. Returns the number of buffers used, RX_NO_BUFFERS, or RX_DROPPED.
   * `num_buffers` in `header` is ignored and written by the device.
   */
  deliver(frame: Uint8Array, offset: number, length: number, header: Uint8Array | null = null): number {
    const queue = this.queue;
    const hdrLen = this.headerLength;
    const needed = hdrLen + length;
    let taken = 0;
    let room = 0;
    while (room < needed) {
      if (taken === this.maxBuffers) {
        queue.rewind(taken);
        return RX_NO_BUFFERS;
      }
      const chain = this.chainAt(taken);
      if (!queue.popChain(chain)) {
        if (taken > 0) queue.rewind(taken);
        return RX_NO_BUFFERS;
      }
      const usable = this.usable(chain);
      if (!usable) this.noteBadChain(chain);
      if (!usable || (!this.mergeable && chain.writableLength < needed)) {
        if (taken === 0 && this.mergeable) {
          // Nothing reserved yet: hand the bad buffer back on its own and keep looking.
          queue.pushUsed(chain.head, 0);
          continue;
        }
        // Buffers already reserved cannot be given back behind this one without reordering the
        // ring, so the frame is dropped and every buffer returned empty.
        for (let k = 0; k < taken; k++) queue.pushUsed(this.pool[k]!.head, 0);
        queue.pushUsed(chain.head, 0);
        return RX_DROPPED;
      }
      room += chain.writableLength;
      taken++;
    }

    if (taken === 1) {
      const chain = this.pool[0]!;
      queue.pushUsed(chain.head, this.fillChain(chain, frame, offset, length, header));
      return 1;
    }
    const h = this.header;
    this.writeHeader(h, 0, header, taken);
    let from = offset;
    let left = length;
    for (let k = 0; k < taken; k++) {
      const chain = this.pool[k]!;
      let written = 0;
      if (k === 0) written = chain.copyIn(h, 0, hdrLen, 0);
      const n = chain.copyIn(frame, from, left, written);
      from += n;
      left -= n;
      queue.pushUsed(chain.head, written + n);
    }
    return taken;
  }
}
