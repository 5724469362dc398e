// Receiving straight into the guest's buffers: an AF_XDP port whose UMEM holds the VM's memory
// can put a guest receive buffer's address in the fill ring, so the kernel writes the frame where
// the guest wants it and the relay only writes the virtio-net header and the used entry.
//
// The posted table records, in fill-ring order, every guest buffer handed to the kernel and not
// yet back: its fill address, the vring and head of its chain, the avail index it was taken at,
// and where its header and frame are in guest-physical terms (for the header write and the dirty
// log). It lives in shared memory beside the port, like the TX slot table, so a direction that
// moves to another worker, or resumes after its worker ended, finds what the kernel still holds.
//
// Order: in copy mode the kernel takes fill entries first in, first out, and writes each into the
// RX ring in that order; it only reorders when the RX ring is full (the chunk goes to a free list
// and is used again later). The port keeps the guest buffers and relay chunks it has out at most
// the RX ring's size, so the RX ring can never be full and the kernel never reorders. That is
// also why a stopped ring can give its buffers back by rewinding its avail index: the buffers
// still out are always the newest ones taken.
//
// The relay's own receive chunks are parked on a stack in the same table while guest buffers are
// posted. They serve twice. When the guest falls behind (no buffer left to post, the fill ring
// nearly empty), some go into the fill ring behind the guest's buffers as overflow: frames that
// land there wait for the guest and are copied. And when the guest's buffers cannot take frames
// in place (too small), the port copies from then on, all chunks back in circulation.
//
// Order with overflow chunks: a frame in a relay chunk arrived before every guest buffer posted
// behind that chunk, so it must go into a chain taken from the avail ring before theirs. Before
// guest buffers are posted, as many chains as relay chunks are out are reserved (taken, recorded
// here as copy entries, not posted); a frame in a relay chunk goes into the oldest reserved chain.
// Every chain taken is in this table in avail order until it is used, so used entries follow
// avail order (IN_ORDER holds) and a stopped ring can rewind over everything still here.
import { mmap, munmap, viewAt, MAP_SHARED, PROT_READ, PROT_WRITE } from './memory.js';

const HEADER_WORDS = 16;
const H_HEAD = 0;
const H_TAIL = 1;
const H_PARKED = 2;
const H_FLAGS = 3;
/** Relay receive chunks not parked: in the fill ring, with the kernel, or in the RX ring. */
const H_RELAY_OUT = 4;
/** The port copies from now on (a buffer could not take a frame in place); never cleared. */
const FLAG_COPY = 1;
/** The writable bytes of the buffer that made the port copy (0: the guest's rings did). */
const H_UNFIT_BYTES = 5;
/** Copy entries (chains reserved for frames in relay chunks) not yet used. */
const H_RESERVED = 6;
/** E_ADDR_HI of a copy entry: no UMEM address has it (they stay below 2^48). */
const COPY_ENTRY = -1;
const ENTRY_WORDS = 8;
const E_ADDR_LO = 0;
const E_ADDR_HI = 1;
const E_KEY = 2;
const E_AVAIL = 3;
const E_HDR_GPA_LO = 4;
const E_HDR_GPA_HI = 5;
const E_FRAME_GPA_LO = 6;
const E_FRAME_GPA_HI = 7;
/** An entry whose frame was delivered (its key is no longer needed). */
const DONE = -1;
const TWO32 = 2 ** 32;

/** The table's shared mapping, as plain data in the port's handle. */
export interface GuestRxTableMapping {
  address: number;
  length: number;
  /** Entries (the fill ring's size). */
  size: number;
}

/** A guest buffer still with the kernel when the port closes: its ring may take it back. */
export interface PostedGuestBuffer {
  vring: number;
  head: number;
  /** The avail index its chain was taken at. */
  availIdx: number;
}

const tableLength = (size: number) => 4 * (HEADER_WORDS + size + size * ENTRY_WORDS);

/** A fresh table for a port of `size`-entry rings whose `relayChunks` receive chunks all start parked. */
export function createGuestRxTable(size: number, relayChunks: number): GuestRxTableMapping {
  const m = mmap({ length: tableLength(size), prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED });
  const words = new Int32Array(m.buffer);
  words[H_PARKED] = relayChunks;
  for (let i = 0; i < relayChunks; i++) words[HEADER_WORDS + i] = i;
  return { address: m.address, length: m.length, size };
}

export function releaseGuestRxTable(t: GuestRxTableMapping): void {
  munmap({ address: t.address, length: t.length });
}

/**
 * The guest buffers the kernel still holds, oldest first. Read by the main thread when the port
 * closes (no poller attached), so their rings can rewind over them.
 */
export function postedGuestBuffers(t: GuestRxTableMapping): PostedGuestBuffer[] {
  const words = new Int32Array(viewAt(t.address, t.length));
  const out: PostedGuestBuffer[] = [];
  const tail = words[H_TAIL] >>> 0;
  for (let s = words[H_HEAD] >>> 0; s !== tail; s = (s + 1) >>> 0) {
    const e = HEADER_WORDS + t.size + (s % t.size) * ENTRY_WORDS;
    const key = words[e + E_KEY];
    if (key === DONE) continue;
    out.push({ vring: key >>> 16, head: key & 0xffff, availIdx: words[e + E_AVAIL] & 0xffff });
  }
  return out;
}

/**
 * Whether the port fell back to copying for good, and the size of the guest buffer that made it
 * (0 when the guest's rings did: several receive rings, or a packed one); null while it receives
 * in place.
 */
export function guestRxFallback(t: GuestRxTableMapping): { unfitBufferBytes: number } | null {
  const w = new Int32Array(viewAt(t.address, t.length));
  return (w[H_FLAGS] & FLAG_COPY) !== 0 ? { unfitBufferBytes: w[H_UNFIT_BYTES] } : null;
}

/**
 * The poller's view of the table. Only the thread that receives on the port uses it; the words
 * are plain (not atomic): a direction leaves a worker before another attaches, through a message.
 */
export class GuestRxTable {
  readonly size: number;
  private readonly words: Int32Array;
  private readonly entries: number;
  /** Where an entry found by `find` is (its first word), for the readers below. */
  found = 0;

  constructor(t: GuestRxTableMapping) {
    this.size = t.size;
    this.words = new Int32Array(viewAt(t.address, t.length));
    this.entries = HEADER_WORDS + t.size;
  }

  /** Guest buffers posted and not yet delivered (or, for delivered ones, not yet passed by the head). */
  get outstanding(): number {
    return (this.words[H_TAIL] - this.words[H_HEAD]) >>> 0;
  }

  get copying(): boolean {
    return (this.words[H_FLAGS] & FLAG_COPY) !== 0;
  }

  fallBackToCopy(unfitBufferBytes: number): void {
    if ((this.words[H_FLAGS] & FLAG_COPY) !== 0) return;
    this.words[H_UNFIT_BYTES] = unfitBufferBytes;
    this.words[H_FLAGS] |= FLAG_COPY;
  }

  get relayOut(): number {
    return this.words[H_RELAY_OUT];
  }

  get parked(): number {
    return this.words[H_PARKED];
  }

  /** A relay receive chunk (its index) leaves circulation. */
  park(chunk: number): void {
    const w = this.words;
    w[HEADER_WORDS + w[H_PARKED]++] = chunk;
    w[H_RELAY_OUT]--;
  }

  /** A parked relay chunk's index, taken back into circulation. */
  unpark(): number {
    const w = this.words;
    w[H_RELAY_OUT]++;
    return w[HEADER_WORDS + --w[H_PARKED]];
  }

  /** Whether the table has a free entry (the oldest still-out entry is `size` behind at most). */
  get hasRoom(): boolean {
    return this.outstanding < this.size;
  }

  /** Chains reserved for frames in relay chunks, not yet used. */
  get reserved(): number {
    return this.words[H_RESERVED];
  }

  /** Records a chain reserved for a frame in a relay chunk; the caller checked `hasRoom`. */
  addCopy(key: number, availIdx: number): void {
    this.add(-1, key, availIdx, 0, 0);
    this.words[H_RESERVED]++;
  }

  /** Finds the oldest reserved chain (sets `found`); false when none is. */
  findCopy(): boolean {
    const w = this.words;
    if (w[H_RESERVED] === 0) return false;
    const tail = w[H_TAIL] >>> 0;
    for (let s = w[H_HEAD] >>> 0; s !== tail; s = (s + 1) >>> 0) {
      const e = this.entries + (s % this.size) * ENTRY_WORDS;
      if (w[e + E_KEY] !== DONE && w[e + E_ADDR_HI] === COPY_ENTRY) {
        this.found = e;
        return true;
      }
    }
    return false;
  }

  /** Records a posted guest buffer (or, with fillAddress -1, a reserved chain); the caller checked `hasRoom`. */
  add(fillAddress: number, key: number, availIdx: number, hdrGpa: number, frameGpa: number): void {
    const w = this.words;
    const e = this.entries + ((w[H_TAIL] >>> 0) % this.size) * ENTRY_WORDS;
    w[e + E_ADDR_LO] = fillAddress >>> 0;
    w[e + E_ADDR_HI] = fillAddress < 0 ? COPY_ENTRY : Math.floor(fillAddress / TWO32);
    w[e + E_KEY] = key;
    w[e + E_AVAIL] = availIdx;
    w[e + E_HDR_GPA_LO] = hdrGpa >>> 0;
    w[e + E_HDR_GPA_HI] = Math.floor(hdrGpa / TWO32);
    w[e + E_FRAME_GPA_LO] = frameGpa >>> 0;
    w[e + E_FRAME_GPA_HI] = Math.floor(frameGpa / TWO32);
    w[H_TAIL] = (w[H_TAIL] + 1) | 0;
  }

  /**
   * Finds the outstanding entry posted at `fillAddress`: the oldest one in order, a later one if
   * the kernel ever reordered. Sets `found` and returns true, or false when no entry has it.
   */
  find(fillAddress: number): boolean {
    const w = this.words;
    const tail = w[H_TAIL] >>> 0;
    const lo = fillAddress >>> 0;
    const hi = Math.floor(fillAddress / TWO32);
    for (let s = w[H_HEAD] >>> 0; s !== tail; s = (s + 1) >>> 0) {
      const e = this.entries + (s % this.size) * ENTRY_WORDS;
      if (w[e + E_KEY] !== DONE && w[e + E_ADDR_LO] >>> 0 === lo && w[e + E_ADDR_HI] === hi) {
        this.found = e;
        return true;
      }
    }
    return false;
  }

  get foundKey(): number {
    return this.words[this.found + E_KEY];
  }

  get foundHdrGpa(): number {
    return (this.words[this.found + E_HDR_GPA_LO] >>> 0) + this.words[this.found + E_HDR_GPA_HI] * TWO32;
  }

  get foundFrameGpa(): number {
    return (this.words[this.found + E_FRAME_GPA_LO] >>> 0) + this.words[this.found + E_FRAME_GPA_HI] * TWO32;
  }

  /** The found entry's buffer is back from the kernel; the head moves past every delivered entry. */
  complete(): void {
    const w = this.words;
    if (w[this.found + E_ADDR_HI] === COPY_ENTRY) w[H_RESERVED]--;
    w[this.found + E_KEY] = DONE;
    const tail = w[H_TAIL] >>> 0;
    let s = w[H_HEAD] >>> 0;
    while (s !== tail && w[this.entries + (s % this.size) * ENTRY_WORDS + E_KEY] === DONE) s = (s + 1) >>> 0;
    w[H_HEAD] = s | 0;
  }

  /**
   * The avail index after the newest entry still out for `vring`, or -1 when none is: where a
   * ring resumed from its used index (its worker ended) must continue, so that no chain the
   * kernel holds is taken twice.
   */
  nextAvailAfterOutstanding(vring: number): number {
    const w = this.words;
    const tail = w[H_TAIL] >>> 0;
    let next = -1;
    for (let s = w[H_HEAD] >>> 0; s !== tail; s = (s + 1) >>> 0) {
      const e = this.entries + (s % this.size) * ENTRY_WORDS;
      const key = w[e + E_KEY];
      if (key !== DONE && key >>> 16 === vring) next = (w[e + E_AVAIL] + 1) & 0xffff;
    }
    return next;
  }
}
