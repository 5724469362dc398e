// The device side of a split virtqueue (virtio 1.2 §2.7). This is the relay's hot path: a worker
// pops chains into one reusable DescriptorChain, copies packets, pushes used entries and publishes
// them once per burst. Everything read from the ring is guest-controlled, so each value is read
// once, bounds-checked, and never used as an index before the check.

import { DescriptorChain, MAX_SAFE_HIGH_WORD } from './descriptor-chain.js';
import type { GuestMemory, HostLocation } from './guest-memory.js';
import {
  DESC_SIZE,
  DESC_TABLE_ALIGN,
  IS_LITTLE_ENDIAN,
  USED_RING_ALIGN,
  AVAIL_RING_ALIGN,
  VRING_AVAIL_F_NO_INTERRUPT,
  VRING_DESC_F_INDIRECT,
  VRING_DESC_F_NEXT,
  VRING_DESC_F_WRITE,
  VRING_USED_F_NO_NOTIFY,
  availEventOffset,
  availRingBytes,
  descTableBytes,
  isValidSplitQueueSize,
  usedEntryOffset,
  usedEventOffset,
  usedRingBytes,
  vringNeedEvent,
} from './ring-layout.js';

export { DescriptorChain, DEFAULT_MAX_SEGMENTS } from './descriptor-chain.js';

/** Largest frame a net device accepts without GSO: 65535 + the 12-byte header + an Ethernet header and VLAN tag. */
export const DEFAULT_MAX_CHAIN_BYTES = 65562;
const MAX_CHAIN_BYTES_LIMIT = 2 ** 32;

if (!IS_LITTLE_ENDIAN) throw new Error('virtio split queue: typed-array ring views assume a little-endian host');

/** The guest broke the ring (or the ring cannot be used); the vring must be stopped. */
export class RingError extends Error {
  constructor(readonly queue: string, reason: string) {
    super(`${queue}: ${reason}`);
    this.name = 'RingError';
  }
}

export interface SplitQueueOptions {
  memory: GuestMemory;
  /** Queue size: a power of two up to 32768. */
  size: number;
  /** Host locations of the three ring parts, translated by the caller. */
  descTable: HostLocation;
  availRing: HostLocation;
  usedRing: HostLocation;
  /** VIRTIO_RING_F_EVENT_IDX negotiated. */
  eventIdx?: boolean;
  /** VIRTIO_RING_F_INDIRECT_DESC negotiated. */
  indirect?: boolean;
  lastAvail?: number;
  lastUsed?: number;
  /** Chains with more readable + writable bytes are rejected. At most 2^32. */
  maxChainBytes?: number;
  /**
   * Guest-physical address used ring writes are logged at (vhost-user `log_guest_addr`). When
   * omitted, it is derived from the region that holds `usedRing`, if that view is a region's bytes.
   */
  usedRingGuestAddr?: number | null;
  /** Name used in error messages, e.g. "vring 1". */
  name?: string;
}

/**
 * What another thread needs to continue a queue exactly where this one stopped. For a packed
 * queue, lastAvail and lastUsed are slots with the wrap counter in bit 15.
 */
export interface QueueState {
  lastAvail: number;
  lastUsed: number;
  signalledUsed: number;
  signalledUsedValid: boolean;
  notificationsDisabled: boolean;
  broken: boolean;
}
export type SplitQueueState = QueueState;

/**
 * Checks the bounds and alignment of one ring part (in queue `name`) and returns its absolute
 * place in the buffer, for typed-array views. Shared by split and packed queues.
 */
export function ringPartView(name: string, loc: HostLocation, what: string, length: number, align: number): { buffer: ArrayBufferLike; byteOffset: number } {
  if (!Number.isInteger(loc.offset) || loc.offset < 0 || loc.offset + length > loc.bytes.length) {
    throw new RingError(name, `${what} of ${length} bytes at offset ${loc.offset} does not fit in its ${loc.bytes.length}-byte mapping`);
  }
  const byteOffset = loc.bytes.byteOffset + loc.offset;
  if (byteOffset % align !== 0) {
    throw new RingError(name, `${what} at host offset ${byteOffset} is not ${align}-byte aligned as the virtio spec requires`);
  }
  return { buffer: loc.bytes.buffer, byteOffset };
}

/** A chain byte limit, checked: 1..2^32. */
export function checkedMaxChainBytes(name: string, value: number): number {
  if (!Number.isInteger(value) || value < 1 || value > MAX_CHAIN_BYTES_LIMIT) {
    throw new RingError(name, `maximum chain length ${value} is outside 1..2^32`);
  }
  return value;
}

export function isU16(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0xffff;
}

export class SplitQueue {
  readonly name: string;
  readonly memory: GuestMemory;
  readonly size: number;
  readonly eventIdx: boolean;
  readonly indirect: boolean;
  private chainByteLimit = DEFAULT_MAX_CHAIN_BYTES;
  /** Free-running u16 index of the next avail entry to consume. */
  lastAvail: number;
  /** Free-running u16 index of the next used entry to write. */
  lastUsed: number;
  /** Set once the guest moved avail.idx impossibly; every later pop throws. */
  broken = false;

  private readonly mask: number;
  private readonly desc32: Uint32Array;
  private readonly avail16: Uint16Array;
  private readonly used16: Uint16Array;
  private readonly used32: Uint32Array;
  private readonly usedEventIndex: number;
  private readonly availEventIndex: number;
  private usedLogAddr: number | null;
  /** Last avail.idx read from the ring, so a burst loads it once rather than per chain. */
  private availIdxSeen: number;
  private pendingUsed = 0;
  /** used.idx as last stored into the ring. */
  private publishedUsed: number;
  private signalledUsed = 0;
  private signalledUsedValid = false;
  private notificationsDisabled = false;

  constructor(options: SplitQueueOptions) {
    this.name = options.name ?? 'virtqueue';
    const size = options.size;
    if (!isValidSplitQueueSize(size)) throw new RingError(this.name, `queue size ${size} is not a power of two between 1 and 32768`);
    this.memory = options.memory;
    this.size = size;
    this.mask = size - 1;
    this.eventIdx = options.eventIdx ?? false;
    this.indirect = options.indirect ?? false;
    this.maxChainBytes = options.maxChainBytes ?? DEFAULT_MAX_CHAIN_BYTES;
    const lastAvail = options.lastAvail ?? 0;
    const lastUsed = options.lastUsed ?? 0;
    if (!isU16(lastAvail) || !isU16(lastUsed)) throw new RingError(this.name, `ring indexes ${lastAvail}/${lastUsed} are not u16 values`);
    this.lastAvail = lastAvail;
    this.lastUsed = lastUsed;
    this.availIdxSeen = lastAvail;
    this.publishedUsed = lastUsed;

    const desc = ringPartView(this.name, options.descTable, 'descriptor table', descTableBytes(size), DESC_TABLE_ALIGN);
    this.desc32 = new Uint32Array(desc.buffer, desc.byteOffset, (DESC_SIZE / 4) * size);
    const avail = ringPartView(this.name, options.availRing, 'avail ring', availRingBytes(size), AVAIL_RING_ALIGN);
    this.avail16 = new Uint16Array(avail.buffer, avail.byteOffset, availRingBytes(size) / 2);
    const used = ringPartView(this.name, options.usedRing, 'used ring', usedRingBytes(size), USED_RING_ALIGN);
    this.used16 = new Uint16Array(used.buffer, used.byteOffset, usedRingBytes(size) / 2);
    this.used32 = new Uint32Array(used.buffer, used.byteOffset, (usedRingBytes(size) - 2) / 4);
    this.usedEventIndex = usedEventOffset(size) / 2;
    this.availEventIndex = availEventOffset(size) / 2;

    if (options.usedRingGuestAddr !== undefined) {
      this.usedLogAddr = options.usedRingGuestAddr;
    } else {
      const region = options.memory.regions.find((r) => r.bytes === options.usedRing.bytes);
      this.usedLogAddr = region === undefined ? null : region.guestPhysAddr + options.usedRing.offset;
    }
  }

  /**
   * Longest chain (readable + writable bytes) accepted. Receive queues of a guest using big
   * packets without MRG_RXBUF post chains of about 17 pages and need this raised.
   */
  get maxChainBytes(): number {
    return this.chainByteLimit;
  }

  set maxChainBytes(value: number) {
    this.chainByteLimit = checkedMaxChainBytes(this.name, value);
  }

  /** Sets (or clears) the guest-physical address used ring writes are logged at. */
  setUsedRingGuestAddr(gpa: number | null): void {
    this.usedLogAddr = gpa;
  }

  /** avail.idx as the driver last published it (acquire load). */
  readAvailIdx(): number {
    return Atomics.load(this.avail16, 1);
  }

  /** used.idx as stored in guest memory: after a reconnect it is the truth about what was completed. */
  readUsedIdx(): number {
    return Atomics.load(this.used16, 1);
  }

  /** Whether a chain is waiting: one load, no exception, for an idle poll. */
  hasAvailable(): boolean {
    return Atomics.load(this.avail16, 1) !== this.lastAvail;
  }

  /**
   * Number of chains the driver has made available and the device has not consumed (the limit
   * is for PackedQueue, which must walk its ring to count; this one reads a counter). Throws
   * RingError, and marks the queue broken, when the driver moved avail.idx more than a ring ahead.
   */
  availableCount(_limit?: number): number {
    if (this.broken) throw new RingError(this.name, 'queue is broken');
    const idx = Atomics.load(this.avail16, 1);
    const count = (idx - this.lastAvail) & 0xffff;
    if (count > this.size) {
      this.broken = true;
      throw new RingError(this.name, `guest moved avail.idx to ${idx}, ${count} entries past last_avail ${this.lastAvail} in a ring of ${this.size}`);
    }
    this.availIdxSeen = idx;
    return count;
  }

  /**
   * Takes the next available chain into `chain`. Returns false when the ring is empty. A chain
   * that breaks a rule comes back with `chain.error` set and no segments: the caller must still
   * return it with `pushUsed(chain.head, 0)` so the driver gets its descriptors back.
   */
  popChain(chain: DescriptorChain): boolean {
    if (this.broken) throw new RingError(this.name, 'queue is broken');
    const seen = (this.availIdxSeen - this.lastAvail) & 0xffff;
    if ((seen === 0 || seen > this.size) && this.availableCount() === 0) return false;
    const head = this.avail16[2 + (this.lastAvail & this.mask)]!;
    this.lastAvail = (this.lastAvail + 1) & 0xffff;
    chain.reset(head, this.memory);
    this.walk(chain, head);
    return true;
  }

  /**
   * Walks the chain at `head` again, without taking anything from the avail ring: a chain taken
   * earlier and kept aside by its head (a receive buffer reserved for a later frame).
   */
  chainAt(chain: DescriptorChain, head: number): void {
    if (this.broken) throw new RingError(this.name, 'queue is broken');
    chain.reset(head, this.memory);
    this.walk(chain, head);
  }

  /** Gives back the last `count` popped chains (mergeable RX found too few buffers for a frame). */
  rewind(count: number): void {
    if (!Number.isInteger(count) || count < 0 || count > this.size) {
      throw new RingError(this.name, `cannot rewind ${count} chains in a ring of ${this.size}`);
    }
    this.lastAvail = (this.lastAvail - count) & 0xffff;
  }

  private walk(chain: DescriptorChain, head: number): void {
    const size = this.size;
    if (head >= size) return chain.reject(`head descriptor ${head} is outside the ring of ${size}`);
    const memory = this.memory;
    const maxBytes = this.chainByteLimit;
    // The table being walked: the ring's own table, or an indirect table in some region.
    let t32 = this.desc32;
    let word = 0; // u32 index of descriptor 0 of the table in t32
    let tableBytes: Uint8Array | null = null; // set only for an indirect table not 4-byte aligned
    let tableOffset = 0;
    let tableLen = size;
    let ttl = size;
    let index = head;
    let inIndirect = false;
    for (;;) {
      if (ttl-- === 0) {
        return chain.reject(`chain from head ${head} is longer than its table of ${tableLen} (descriptor loop)`);
      }
      chain.descriptorCount++;
      let lo: number;
      let hi: number;
      let len: number;
      let flags: number;
      let next: number;
      if (tableBytes === null) {
        const w = word + index * 4;
        lo = t32[w]!;
        hi = t32[w + 1]!;
        len = t32[w + 2]!;
        const tail = t32[w + 3]!; // flags (bytes 12-13) and next (14-15), little-endian
        flags = tail & 0xffff;
        next = tail >>> 16;
      } else {
        const b = tableOffset + index * DESC_SIZE;
        const u = tableBytes;
        lo = (u[b]! | (u[b + 1]! << 8) | (u[b + 2]! << 16) | (u[b + 3]! << 24)) >>> 0;
        hi = (u[b + 4]! | (u[b + 5]! << 8) | (u[b + 6]! << 16) | (u[b + 7]! << 24)) >>> 0;
        len = (u[b + 8]! | (u[b + 9]! << 8) | (u[b + 10]! << 16) | (u[b + 11]! << 24)) >>> 0;
        flags = u[b + 12]! | (u[b + 13]! << 8);
        next = u[b + 14]! | (u[b + 15]! << 8);
      }

      if ((flags & VRING_DESC_F_INDIRECT) !== 0) {
        if (!this.indirect) return chain.reject(`descriptor ${index} of head ${head} is indirect but INDIRECT_DESC was not negotiated`);
        if (inIndirect) return chain.reject(`indirect table of head ${head} contains another indirect descriptor`);
        if ((flags & VRING_DESC_F_NEXT) !== 0) return chain.reject(`indirect descriptor ${index} of head ${head} also has NEXT`);
        // A chain may not be longer than the queue (virtio 1.2 §2.7.5.3.1), so neither may a table.
        if (len === 0 || len % DESC_SIZE !== 0 || len > size * DESC_SIZE) {
          return chain.reject(`indirect table of head ${head} has length ${len}: not a non-zero multiple of 16 up to ${size * DESC_SIZE}`);
        }
        if (hi > MAX_SAFE_HIGH_WORD) return chain.reject(`indirect table of head ${head} has an address above 2^53`);
        const gpa = hi * 0x1_0000_0000 + lo;
        const r = memory.regionIndexOfRange(gpa, len);
        if (r < 0) return chain.reject(`indirect table of head ${head} at 0x${gpa.toString(16)}+${len} is not inside one memory region`);
        const region = memory.regions[r]!;
        const offset = gpa - region.guestPhysAddr;
        const words = memory.regionWords(r);
        if ((words.lead + offset) % 4 === 0) {
          t32 = words.u32;
          word = (words.lead + offset) / 4;
          tableBytes = null;
        } else {
          tableBytes = region.bytes;
          tableOffset = offset;
        }
        tableLen = len / DESC_SIZE;
        ttl = tableLen;
        index = 0;
        inIndirect = true;
        chain.indirect = true;
        continue;
      }

      if (!chain.addDescriptor(index, lo | 0, hi, len, (flags & VRING_DESC_F_WRITE) !== 0, maxBytes)) return;
      if ((flags & VRING_DESC_F_NEXT) === 0) return;
      if (next >= tableLen) return chain.reject(`descriptor ${index} of head ${head} links to ${next}, outside its table of ${tableLen}`);
      index = next;
    }
  }

  /** Writes used entry `{head, len}`; the driver sees it only after `flushUsed()`. */
  pushUsed(head: number, len: number): void {
    if (this.pendingUsed >= this.size) {
      throw new RingError(this.name, `more than ${this.size} used entries pushed without flushUsed()`);
    }
    const slot = this.lastUsed & this.mask;
    const w = 1 + slot * 2;
    this.used32[w] = head;
    this.used32[w + 1] = len;
    this.lastUsed = (this.lastUsed + 1) & 0xffff;
    this.pendingUsed++;
    if (this.usedLogAddr !== null && this.memory.dirtyLogging) this.memory.markDirty(this.usedLogAddr + usedEntryOffset(slot), 8);
  }

  /** Used entries pushed and not yet published. */
  get pendingUsedCount(): number {
    return this.pendingUsed;
  }

  /**
   * Publishes pushed entries with one store of used.idx. Atomics.store is sequentially
   * consistent, so the entries (and the data written before them) are visible first.
   */
  flushUsed(): void {
    if (this.pendingUsed === 0) return;
    Atomics.store(this.used16, 1, this.lastUsed);
    this.publishedUsed = this.lastUsed;
    this.pendingUsed = 0;
    const log = this.usedLogAddr !== null && this.memory.dirtyLogging;
    if (log) this.memory.markDirty(this.usedLogAddr! + 2, 2);
    // With EVENT_IDX the driver kicks only when avail.idx passes avail_event; a device that never
    // advances it stops hearing from the driver.
    if (this.eventIdx && !this.notificationsDisabled) {
      Atomics.store(this.used16, this.availEventIndex, this.lastAvail);
      if (log) this.memory.markDirty(this.usedLogAddr! + availEventOffset(this.size), 2);
    }
  }

  /**
   * Whether the driver wants an interrupt for what was published since the last decision. Call
   * after `flushUsed()`. The load of used_event / avail.flags is sequentially consistent, so it is
   * ordered after the used.idx store (the full fence the spec asks for).
   */
  needsNotification(): boolean {
    const newIdx = this.publishedUsed;
    if (this.eventIdx) {
      const usedEvent = Atomics.load(this.avail16, this.usedEventIndex);
      const oldIdx = this.signalledUsed;
      const valid = this.signalledUsedValid;
      this.signalledUsed = newIdx;
      this.signalledUsedValid = true;
      return !valid || vringNeedEvent(usedEvent, newIdx, oldIdx);
    }
    if (this.signalledUsedValid && this.signalledUsed === newIdx) return false;
    this.signalledUsed = newIdx;
    this.signalledUsedValid = true;
    return (Atomics.load(this.avail16, 0) & VRING_AVAIL_F_NO_INTERRUPT) === 0;
  }

  /**
   * Asks the driver to kick again before the device sleeps, then re-reads avail.idx (after a
   * full fence) so a buffer added in between is not missed. Returns true when work is waiting:
   * the caller must drain again instead of sleeping.
   */
  enableNotifications(): boolean {
    this.notificationsDisabled = false;
    const log = this.usedLogAddr !== null && this.memory.dirtyLogging;
    if (this.eventIdx) {
      Atomics.store(this.used16, this.availEventIndex, this.lastAvail);
      if (log) this.memory.markDirty(this.usedLogAddr! + availEventOffset(this.size), 2);
    } else {
      Atomics.store(this.used16, 0, 0);
      if (log) this.memory.markDirty(this.usedLogAddr!, 2);
    }
    return this.availableCount() > 0;
  }

  /** Tells the driver kicks are not needed while the device is polling. */
  disableNotifications(): void {
    this.notificationsDisabled = true;
    if (!this.eventIdx) {
      Atomics.store(this.used16, 0, VRING_USED_F_NO_NOTIFY);
      if (this.usedLogAddr !== null && this.memory.dirtyLogging) this.memory.markDirty(this.usedLogAddr, 2);
    }
  }

  /** State for a handover at a burst boundary (nothing pushed and unpublished). */
  exportState(): SplitQueueState {
    if (this.pendingUsed !== 0) {
      throw new RingError(this.name, `cannot export state with ${this.pendingUsed} used entries not yet flushed`);
    }
    return {
      lastAvail: this.lastAvail,
      lastUsed: this.lastUsed,
      signalledUsed: this.signalledUsed,
      signalledUsedValid: this.signalledUsedValid,
      notificationsDisabled: this.notificationsDisabled,
      broken: this.broken,
    };
  }

  importState(state: SplitQueueState): void {
    if (!isU16(state.lastAvail) || !isU16(state.lastUsed) || !isU16(state.signalledUsed)) {
      throw new RingError(this.name, `imported ring indexes ${state.lastAvail}/${state.lastUsed}/${state.signalledUsed} are not u16 values`);
    }
    if (this.pendingUsed !== 0) {
      throw new RingError(this.name, `cannot import state over ${this.pendingUsed} used entries not yet flushed`);
    }
    this.lastAvail = state.lastAvail;
    this.lastUsed = state.lastUsed;
    this.publishedUsed = state.lastUsed;
    this.availIdxSeen = state.lastAvail;
    this.signalledUsed = state.signalledUsed;
    this.signalledUsedValid = Boolean(state.signalledUsedValid);
    this.notificationsDisabled = Boolean(state.notificationsDisabled);
    this.broken = Boolean(state.broken);
  }
}
