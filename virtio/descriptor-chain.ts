// A walked descriptor chain as host segments. One object is reused for every chain a worker pops,
// so its arrays are allocated once with a fixed capacity and refilled in place.

import type { GuestMemory } from './guest-memory.js';

/** Same budget as DPDK's BUF_VECTOR_MAX: a chain needing more segments is rejected. */
export const DEFAULT_MAX_SEGMENTS = 256;
/** A descriptor address whose high word exceeds this is above Number.MAX_SAFE_INTEGER. */
export const MAX_SAFE_HIGH_WORD = 0x1fffff;

const EMPTY = new Uint8Array(0);
/**
 * Copies between guest memory and the relay's buffers. Measured per 64-byte frame (Node 20, a
 * loop of copies): a byte loop 108 ns, `set(subarray())` 50–60 ns whatever the size up to a few
 * hundred bytes (it allocates a view), four bytes at a time through DataViews 20–28 ns, through
 * Uint32Arrays 14–19 ns. So: tiny copies byte by byte; small ones by 32-bit words, through
 * Uint32Arrays where source and destination have the same alignment (a frame into a guest buffer
 * usually has: both start on a 4-byte boundary) and through DataViews where not; larger ones
 * with set().
 */
const TINY_COPY = 8;
const WORD_COPY = 128;

/** The word views of one array, made once: the array's bytes at any alignment. */
class WordViews {
  readonly view: DataView<ArrayBufferLike>;
  /** Word k covers bytes [4k - lead, 4k - lead + 4) of the array. */
  readonly words: Uint32Array<ArrayBufferLike>;
  /** How far the array starts past a 4-byte boundary of its buffer. */
  readonly lead: number;

  constructor(readonly bytes: Uint8Array) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.lead = bytes.byteOffset & 3;
    // (division, not >>> 2: a view can be 4 GiB long)
    this.words = new Uint32Array(bytes.buffer, bytes.byteOffset - this.lead, Math.floor((this.lead + bytes.byteLength) / 4));
  }
}

const NO_VIEWS = new WordViews(new Uint8Array(0));

/**
 * Every array's views, made the first time it is copied from or to and kept while it lives: a
 * guest's memory is several arrays (1 GiB pieces), and its buffers lie in any of them.
 */
const knownViews = new WeakMap<Uint8Array, WordViews>();

/**
 * The views of the last two arrays on one side of the copies, ahead of the WeakMap (a lookup
 * there costs more than the copy of a small frame). A frame into a guest is often two copies
 * from two sources (the virtio-net header, then the frame), so two are kept: with one entry per
 * side each copy made new views, 310 ns a frame instead of 60.
 */
class RecentViews {
  private last = NO_VIEWS;
  private before = NO_VIEWS;

  of(bytes: Uint8Array): WordViews {
    if (bytes === this.last.bytes) return this.last;
    let views = bytes === this.before.bytes ? this.before : knownViews.get(bytes);
    if (views === undefined) {
      views = new WordViews(bytes);
      knownViews.set(bytes, views);
    }
    this.before = this.last;
    this.last = views;
    return views;
  }
}

const sources = new RecentViews();
const destinations = new RecentViews();

/**
 * The 32-bit word view of `bytes`, for a writer that stores whole words at a word boundary
 * (`lead + offset` divisible by 4): fewer stores than bytes, which matters when the destination
 * is not yet in this CPU's cache and each store waits in the store buffer for it.
 */
export function destinationWords(bytes: Uint8Array): { readonly words: Uint32Array<ArrayBufferLike>; readonly lead: number } {
  return destinations.of(bytes);
}

export function copyBytes(src: Uint8Array, srcOffset: number, dst: Uint8Array, dstOffset: number, length: number): void {
  if (length <= TINY_COPY) {
    for (let i = 0; i < length; i++) dst[dstOffset + i] = src[srcOffset + i]!;
    return;
  }
  if (length > WORD_COPY || srcOffset + length > src.length || dstOffset + length > dst.length) {
    // (out of range: set() reports it as it always did)
    dst.set(src.subarray(srcOffset, srcOffset + length), dstOffset);
    return;
  }
  const s = sources.of(src);
  const d = destinations.of(dst);
  const srcAt = s.lead + srcOffset;
  const dstAt = d.lead + dstOffset;
  let i = 0;
  if (((srcAt ^ dstAt) & 3) === 0) {
    // Same alignment: bytes up to a word boundary, then whole words, then the tail.
    for (; ((srcAt + i) & 3) !== 0; i++) dst[dstOffset + i] = src[srcOffset + i]!;
    const sw = s.words;
    const dw = d.words;
    const from = (srcAt + i) / 4;
    const to = (dstAt + i) / 4;
    const count = (length - i) >>> 2;
    for (let k = 0; k < count; k++) dw[to + k] = sw[from + k]!;
    i += count << 2;
  } else {
    const sv = s.view;
    const dv = d.view;
    for (; i + 4 <= length; i += 4) dv.setUint32(dstOffset + i, sv.getUint32(srcOffset + i, true), true);
  }
  for (; i < length; i++) dst[dstOffset + i] = src[srcOffset + i]!;
}

function checkOffsets(method: string, chainOffset: number, bufferOffset: number): void {
  if (!(chainOffset >= 0) || !(bufferOffset >= 0)) {
    throw new RangeError(`DescriptorChain.${method}: offsets ${chainOffset}/${bufferOffset} must be non-negative`);
  }
}

export class DescriptorChain {
  readonly capacity: number;
  /** Head descriptor index as read from the avail ring (the id to return in the used ring). */
  head = -1;
  /** Descriptors walked, including an indirect descriptor itself. */
  descriptorCount = 0;
  /** Whether the chain went through an indirect table. */
  indirect = false;
  /** Why the chain was rejected, or null for a good chain. A rejected chain has no segments. */
  error: string | null = null;
  segmentCount = 0;
  /** Segments `[0, readableSegments)` are device-readable, the rest device-writable. */
  readableSegments = 0;
  readableLength = 0;
  writableLength = 0;
  /** Host bytes of the region each segment lies in. */
  readonly segBytes: Uint8Array[];
  /** Offset of each segment inside its `segBytes`. */
  readonly segOffset: Float64Array;
  readonly segLength: Uint32Array;
  /** Guest-physical address of each segment (for dirty logging). */
  readonly segGpa: Float64Array;
  /** Host address of each segment (NaN where the region has none): iovecs for the kernel. */
  readonly segHost: Float64Array;
  readonly segWritable: Uint8Array;
  /** Memory the segments belong to; set by the queue that filled the chain. */
  memory: GuestMemory | null = null;
  /** A device-writable descriptor (even an empty one) was walked: readable ones may not follow. */
  private sawWritable = false;

  constructor(capacity = DEFAULT_MAX_SEGMENTS) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new Error(`descriptor chain: capacity ${capacity} is not a positive integer`);
    this.capacity = capacity;
    this.segBytes = new Array<Uint8Array>(capacity).fill(EMPTY);
    this.segOffset = new Float64Array(capacity);
    this.segLength = new Uint32Array(capacity);
    this.segGpa = new Float64Array(capacity);
    this.segHost = new Float64Array(capacity);
    this.segWritable = new Uint8Array(capacity);
  }

  get ok(): boolean {
    return this.error === null;
  }

  /** Empties the chain before a walk. */
  reset(head: number, memory: GuestMemory): void {
    this.head = head;
    this.memory = memory;
    this.descriptorCount = 0;
    this.indirect = false;
    this.error = null;
    this.segmentCount = 0;
    this.readableSegments = 0;
    this.readableLength = 0;
    this.writableLength = 0;
    this.sawWritable = false;
  }

  /**
   * Adds one walked descriptor (`index` names it in messages): checks that readable buffers come
   * before writable ones, the chain's byte limit and the address, and translates the buffer into
   * segments, split where it crosses regions. Zero-length descriptors count for the direction
   * order only. Returns false after rejecting the chain. Split and packed rings share this.
   *
   * `lo`, the address's low word, may come as a signed 32-bit value (`lo | 0`): the same bits, but
   * a small integer to V8 where a word of 2^31 and above is a heap number, one allocated for each
   * call that passes it. Passed unsigned, the walk allocated per descriptor, and the young
   * generation filled every few hundred milliseconds: each collection paused the worker for
   * 0.3–0.4 ms, longer than the guest's ring lasts at a million frames a second.
   */
  addDescriptor(index: number, lo: number, hi: number, len: number, writable: boolean, maxBytes: number): boolean {
    if (writable) this.sawWritable = true;
    else if (this.sawWritable) {
      this.reject(`descriptor ${index} of head ${this.head} is device-readable after a device-writable one`);
      return false;
    }
    if (len === 0) return true;
    if (this.readableLength + this.writableLength + len > maxBytes) {
      this.reject(`chain from head ${this.head} is longer than ${maxBytes} bytes`);
      return false;
    }
    if (hi > MAX_SAFE_HIGH_WORD) {
      this.reject(`descriptor ${index} of head ${this.head} has an address above 2^53`);
      return false;
    }
    const gpa = hi * 0x1_0000_0000 + (lo >>> 0);
    if (gpa > Number.MAX_SAFE_INTEGER - len) {
      this.reject(`descriptor ${index} of head ${this.head} overflows the address space`);
      return false;
    }
    if (!this.addSegments(hi, lo, len, writable)) return false;
    if (writable) this.writableLength += len;
    else {
      this.readableLength += len;
      this.readableSegments = this.segmentCount;
    }
    return true;
  }

  /**
   * Translates one buffer into segments, splitting it where it crosses regions. The address comes
   * as its two words (`lo` maybe signed), as addDescriptor gets it: passed as one number it is
   * above 2^31, a heap number allocated per call.
   */
  private addSegments(hi: number, lo: number, len: number, writable: boolean): boolean {
    const gpa = hi * 0x1_0000_0000 + (lo >>> 0);
    const memory = this.memory!;
    const first = memory.regionIndexOf(gpa);
    if (first >= 0 && gpa + len <= memory.regionEnd(first) && this.segmentCount < this.capacity) {
      // The usual case: the whole buffer lies in one region.
      const n = this.segmentCount;
      const region = memory.regions[first]!;
      this.segBytes[n] = region.bytes;
      this.segOffset[n] = gpa - region.guestPhysAddr;
      this.segLength[n] = len;
      this.segGpa[n] = gpa;
      this.segHost[n] = (region.hostAddress ?? NaN) + (gpa - region.guestPhysAddr);
      this.segWritable[n] = writable ? 1 : 0;
      this.segmentCount = n + 1;
      return true;
    }
    let addr = gpa;
    let left = len;
    while (left > 0) {
      const r = memory.regionIndexOf(addr);
      if (r < 0) {
        this.reject(`buffer at 0x${gpa.toString(16)}+${len} of head ${this.head} touches unmapped guest memory at 0x${addr.toString(16)}`);
        return false;
      }
      const n = this.segmentCount;
      if (n === this.capacity) {
        this.reject(`chain from head ${this.head} needs more than ${this.capacity} segments`);
        return false;
      }
      const region = memory.regions[r]!;
      const take = Math.min(left, memory.regionEnd(r) - addr);
      this.segBytes[n] = region.bytes;
      this.segOffset[n] = addr - region.guestPhysAddr;
      this.segLength[n] = take;
      this.segGpa[n] = addr;
      this.segHost[n] = (region.hostAddress ?? NaN) + (addr - region.guestPhysAddr);
      this.segWritable[n] = writable ? 1 : 0;
      this.segmentCount = n + 1;
      addr += take;
      left -= take;
    }
    return true;
  }

  /** Marks the chain rejected; its head stays so the caller can still return it. */
  reject(reason: string): void {
    this.error = reason;
    this.segmentCount = 0;
    this.readableSegments = 0;
    this.readableLength = 0;
    this.writableLength = 0;
  }

  /**
   * Copies up to `length` device-readable bytes starting `chainOffset` bytes into the readable
   * part of the chain. Returns the number of bytes copied.
   */
  copyOut(chainOffset: number, dst: Uint8Array, dstOffset: number, length: number): number {
    checkOffsets('copyOut', chainOffset, dstOffset);
    let skip = chainOffset;
    let left = Math.min(length, dst.length - dstOffset, this.readableLength - chainOffset);
    if (left <= 0) return 0;
    const total = left;
    let out = dstOffset;
    for (let s = 0; s < this.readableSegments && left > 0; s++) {
      const segLen = this.segLength[s]!;
      if (skip >= segLen) {
        skip -= segLen;
        continue;
      }
      const n = Math.min(segLen - skip, left);
      copyBytes(this.segBytes[s]!, this.segOffset[s]! + skip, dst, out, n);
      out += n;
      left -= n;
      skip = 0;
    }
    return total - left;
  }

  /**
   * Copies up to `length` bytes of `src` into the device-writable part of the chain, starting
   * `chainOffset` bytes into it, and marks the written pages dirty when a log is installed.
   * Returns the number of bytes written.
   */
  copyIn(src: Uint8Array, srcOffset: number, length: number, chainOffset: number): number {
    checkOffsets('copyIn', chainOffset, srcOffset);
    let skip = chainOffset;
    let left = Math.min(length, src.length - srcOffset, this.writableLength - chainOffset);
    if (left <= 0) return 0;
    const total = left;
    const logging = this.memory !== null && this.memory.dirtyLogging;
    let from = srcOffset;
    for (let s = this.readableSegments; s < this.segmentCount && left > 0; s++) {
      const segLen = this.segLength[s]!;
      if (skip >= segLen) {
        skip -= segLen;
        continue;
      }
      const n = Math.min(segLen - skip, left);
      copyBytes(src, from, this.segBytes[s]!, this.segOffset[s]! + skip, n);
      if (logging) this.memory!.markDirty(this.segGpa[s]! + skip, n);
      from += n;
      left -= n;
      skip = 0;
    }
    return total - left;
  }

  /**
   * Marks `[chainOffset, chainOffset+length)` of the writable part dirty, for callers that wrote
   * into `segBytes` directly instead of through `copyIn`.
   */
  markWritten(chainOffset: number, length: number): void {
    checkOffsets('markWritten', chainOffset, 0);
    const memory = this.memory;
    if (memory === null || !memory.dirtyLogging) return;
    let skip = chainOffset;
    let left = length;
    for (let s = this.readableSegments; s < this.segmentCount && left > 0; s++) {
      const segLen = this.segLength[s]!;
      if (skip >= segLen) {
        skip -= segLen;
        continue;
      }
      const n = Math.min(segLen - skip, left);
      memory.markDirty(this.segGpa[s]! + skip, n);
      left -= n;
      skip = 0;
    }
  }
}
