// The device side of a packed virtqueue (virtio 1.2 §2.8). One ring of 16-byte descriptors
// serves both ways: the driver makes a descriptor available by setting its AVAIL flag to its wrap
// counter and USED to the opposite; the device hands a buffer back by writing id and length into
// the next used slot and setting both flags to its own wrap counter. Each chain is completed in
// the order it was taken, so a used entry frees exactly the slots its chain took.
//
// The same interface as SplitQueue, so the relay's data path drives either. Everything read from
// the ring is guest-controlled: each descriptor is read once, a chain may not be longer than the
// ring, and an id is only echoed back, never used as an index.

import { DescriptorChain, MAX_SAFE_HIGH_WORD } from './descriptor-chain.js';
import type { GuestMemory, HostLocation } from './guest-memory.js';
import { DEFAULT_MAX_CHAIN_BYTES, RingError, checkedMaxChainBytes, isU16, ringPartView, type QueueState } from './split-queue.js';
import {
  DESC_SIZE,
  VRING_DESC_F_INDIRECT,
  VRING_DESC_F_NEXT,
  VRING_DESC_F_WRITE,
  VRING_PACKED_DESC_F_AVAIL,
  VRING_PACKED_DESC_F_USED,
  VRING_PACKED_EVENT_FLAG_DESC,
  VRING_PACKED_EVENT_FLAG_DISABLE,
  VRING_PACKED_EVENT_FLAG_ENABLE,
  PACKED_EVENT_BYTES,
  isValidPackedQueueSize,
  vringNeedEvent,
} from './ring-layout.js';

const WRAP_BIT = 0x8000;

export interface PackedQueueOptions {
  memory: GuestMemory;
  /** Queue size: 1..32768 (need not be a power of two). */
  size: number;
  /** Host locations of the descriptor ring and the two event suppression areas. */
  descRing: HostLocation;
  /** Driver event suppression: written by the driver, read here (vhost-user's "avail" address). */
  driverEvent: HostLocation;
  /** Device event suppression: written here (vhost-user's "used" address). */
  deviceEvent: HostLocation;
  eventIdx?: boolean;
  indirect?: boolean;
  /** Next slot to take, with the avail wrap counter in bit 15 (vhost-user's vring base). */
  lastAvail?: number;
  /** Next slot to write a used entry to, with the used wrap counter in bit 15. */
  lastUsed?: number;
  maxChainBytes?: number;
  /**
   * Guest-physical addresses of the descriptor ring and the device event area, for dirty logging
   * of what the device writes there. When omitted, derived from the region the view belongs to.
   */
  descRingGuestAddr?: number | null;
  deviceEventGuestAddr?: number | null;
  name?: string;
}

export class PackedQueue {
  readonly name: string;
  readonly memory: GuestMemory;
  readonly size: number;
  readonly eventIdx: boolean;
  readonly indirect: boolean;
  /** Set once the driver broke the ring (a chain longer than the ring); every later pop throws. */
  broken = false;
  private breakReason = 'imported as broken';
  private chainByteLimit = DEFAULT_MAX_CHAIN_BYTES;

  private availIdx = 0;
  private availWrap = 1;
  private usedIdx = 0;
  private usedWrap = 1;
  /** Used index and wrap as of the last flush: what the driver can see. */
  private publishedIdx = 0;
  private publishedWrap = 1;

  /** Slots taken by each chain popped and not yet pushed back, oldest first (a ring of counts). */
  private readonly inflight: Uint16Array;
  private inflightHead = 0;
  private inflightCount = 0;
  /** Used entries written but not yet made visible: their slots and the flags that publish them. */
  private readonly pendingSlot: Uint16Array;
  private readonly pendingFlags: Uint16Array;
  private pendingUsed = 0;

  private readonly desc32: Uint32Array;
  private readonly desc16: Uint16Array;
  private readonly driver16: Uint16Array;
  private readonly device16: Uint16Array;
  private readonly descLogAddr: number | null;
  private readonly deviceLogAddr: number | null;
  private signalledUsed = 0;
  private signalledUsedValid = false;
  private notificationsDisabled = false;

  constructor(options: PackedQueueOptions) {
    this.name = options.name ?? 'virtqueue';
    const size = options.size;
    if (!isValidPackedQueueSize(size)) throw new RingError(this.name, `packed queue size ${size} is outside 1..32768`);
    this.memory = options.memory;
    this.size = size;
    this.eventIdx = options.eventIdx ?? false;
    this.indirect = options.indirect ?? false;
    this.maxChainBytes = options.maxChainBytes ?? DEFAULT_MAX_CHAIN_BYTES;
    this.inflight = new Uint16Array(size);
    this.pendingSlot = new Uint16Array(size);
    this.pendingFlags = new Uint16Array(size);
    this.setIndexes(options.lastAvail ?? WRAP_BIT, options.lastUsed ?? options.lastAvail ?? WRAP_BIT);

    const desc = ringPartView(this.name, options.descRing, 'descriptor ring', DESC_SIZE * size, 16);
    this.desc32 = new Uint32Array(desc.buffer, desc.byteOffset, (DESC_SIZE / 4) * size);
    this.desc16 = new Uint16Array(desc.buffer, desc.byteOffset, (DESC_SIZE / 2) * size);
    const driver = ringPartView(this.name, options.driverEvent, 'driver event area', PACKED_EVENT_BYTES, 4);
    this.driver16 = new Uint16Array(driver.buffer, driver.byteOffset, 2);
    const device = ringPartView(this.name, options.deviceEvent, 'device event area', PACKED_EVENT_BYTES, 4);
    this.device16 = new Uint16Array(device.buffer, device.byteOffset, 2);
    const gpaOf = (loc: HostLocation) => {
      const region = options.memory.regions.find((r) => r.bytes === loc.bytes);
      return region === undefined ? null : region.guestPhysAddr + loc.offset;
    };
    this.descLogAddr = options.descRingGuestAddr !== undefined ? options.descRingGuestAddr : gpaOf(options.descRing);
    this.deviceLogAddr = options.deviceEventGuestAddr !== undefined ? options.deviceEventGuestAddr : gpaOf(options.deviceEvent);
  }

  private setIndexes(lastAvail: number, lastUsed: number): void {
    if (!isU16(lastAvail) || !isU16(lastUsed) || (lastAvail & 0x7fff) >= this.size || (lastUsed & 0x7fff) >= this.size) {
      throw new RingError(this.name, `packed ring indexes 0x${Number(lastAvail).toString(16)}/0x${Number(lastUsed).toString(16)} are not a slot below ${this.size} with a wrap bit`);
    }
    this.availIdx = lastAvail & 0x7fff;
    this.availWrap = lastAvail >>> 15;
    this.usedIdx = this.publishedIdx = lastUsed & 0x7fff;
    this.usedWrap = this.publishedWrap = lastUsed >>> 15;
  }

  get maxChainBytes(): number {
    return this.chainByteLimit;
  }

  set maxChainBytes(value: number) {
    this.chainByteLimit = checkedMaxChainBytes(this.name, value);
  }

  /** Next slot to take, with the avail wrap counter in bit 15. */
  get lastAvail(): number {
    return this.availIdx | (this.availWrap << 15);
  }

  /** Next used slot, with the used wrap counter in bit 15. */
  get lastUsed(): number {
    return this.usedIdx | (this.usedWrap << 15);
  }

  /**
   * Marks the queue broken for good and throws. The reason is kept: whoever meets the queue
   * broken later (the burst that stops the ring may not be the call that broke it) still says why.
   */
  private breakRing(reason: string): never {
    this.broken = true;
    this.breakReason = reason;
    throw new RingError(this.name, reason);
  }

  /**
   * Slots taken and not yet published: from the published used position to the next slot to
   * take, counted over two rounds so that a full ring is not mistaken for an empty one. An honest
   * driver cannot make more than a ring's worth available before it sees them used.
   */
  private heldSlots(): number {
    const size = this.size;
    const availPos = this.availIdx + (this.availWrap === 1 ? 0 : size);
    const publishedPos = this.publishedIdx + (this.publishedWrap === 1 ? 0 : size);
    const held = availPos - publishedPos;
    return held < 0 ? held + 2 * size : held;
  }

  /** Whether the descriptor in `slot` is available to the device in the round of `wrap`. */
  private availableAt(slot: number, wrap: number): boolean {
    const flags = Atomics.load(this.desc16, slot * 8 + 7);
    return ((flags >>> 7) & 1) === wrap && ((flags >>> 15) & 1) !== wrap;
  }

  /** Whether the next chain is available (or the ring is broken): one load, no exception, for an idle poll. */
  hasAvailable(): boolean {
    // A broken ring counts as work too: the burst it starts meets the error and stops the ring.
    return this.broken || this.availableAt(this.availIdx, this.availWrap);
  }

  /**
   * Chains the driver has made available and the device has not taken, counted up to `limit`. A
   * packed ring keeps no count, so this walks the chains as popChain would: from each available
   * head along its NEXT flags. A chain that never ends (every descriptor with NEXT) breaks the
   * queue here too (RingError), so a poll never sees work that no pop can take.
   */
  availableCount(limit = this.size): number {
    if (this.broken) throw new RingError(this.name, `queue is broken: ${this.breakReason}`);
    const size = this.size;
    const desc16 = this.desc16;
    let slot = this.availIdx;
    let wrap = this.availWrap;
    let chains = 0;
    let walked = 0;
    while (chains < limit && walked < size && this.availableAt(slot, wrap)) {
      for (;;) {
        const flags = Atomics.load(desc16, slot * 8 + 7);
        walked++;
        if (++slot === size) {
          slot = 0;
          wrap ^= 1;
        }
        if ((flags & VRING_DESC_F_NEXT) === 0) break;
        if (walked === size) this.breakRing(`chain from slot ${this.availIdx} is longer than the ring of ${size} (every descriptor has NEXT)`);
      }
      chains++;
    }
    return chains;
  }

  /**
   * Takes the next available chain into `chain`; false when none is available. A chain that
   * breaks a rule comes back with `chain.error` set and must still be returned with
   * `pushUsed(chain.head, 0)`. A chain longer than the ring, or one running into slots taken and
   * not yet published, breaks the queue (RingError).
   */
  popChain(chain: DescriptorChain): boolean {
    if (this.broken) throw new RingError(this.name, `queue is broken: ${this.breakReason}`);
    const size = this.size;
    let slot = this.availIdx;
    let wrap = this.availWrap;
    if (!this.availableAt(slot, wrap)) return false;
    const first = slot;
    chain.reset(first, this.memory);
    const desc32 = this.desc32;
    const maxBytes = this.chainByteLimit;
    let taken = 0;
    let id = 0;
    for (;;) {
      if (taken === size) this.breakRing(`chain from slot ${first} is longer than the ring of ${size} (every descriptor has NEXT)`);
      const w = slot * 4;
      const lo = desc32[w]!;
      const hi = desc32[w + 1]!;
      const len = desc32[w + 2]!;
      const tail = desc32[w + 3]!; // id (bytes 12-13) and flags (14-15), little-endian
      id = tail & 0xffff;
      const flags = tail >>> 16;
      taken++;
      chain.descriptorCount++;
      if (++slot === size) {
        slot = 0;
        wrap ^= 1;
      }
      // A rejected chain is still walked to its end: its slots and its id go back to the driver.
      if (chain.error === null) {
        if ((flags & VRING_DESC_F_INDIRECT) !== 0) this.walkIndirect(chain, first, lo | 0, hi, len | 0, flags, taken);
        else chain.addDescriptor(first + taken - 1, lo | 0, hi, len, (flags & VRING_DESC_F_WRITE) !== 0, maxBytes);
      }
      if ((flags & VRING_DESC_F_NEXT) === 0) break;
    }
    const held = this.heldSlots();
    if (held + taken > size) {
      // The driver reused slots it had not got back; the used entries would no longer free them.
      this.breakRing(`chain from slot ${first} runs into slots the device has not returned (${held + taken} slots taken in a ring of ${size})`);
    }
    chain.head = id;
    this.availIdx = slot;
    this.availWrap = wrap;
    let at = this.inflightHead + this.inflightCount;
    if (at >= size) at -= size;
    this.inflight[at] = taken;
    this.inflightCount++;
    return true;
  }

  /**
   * An indirect descriptor: a table of packed descriptors, all of which make the chain. Its
   * address's low word and its length come signed (`| 0`): a number of 2^31 or more passed to a
   * function V8 does not inline is a heap number, allocated per call.
   */
  private walkIndirect(chain: DescriptorChain, first: number, signedLo: number, hi: number, signedLen: number, flags: number, position: number): void {
    const lo = signedLo >>> 0;
    const len = signedLen >>> 0;
    if (!this.indirect) return chain.reject(`descriptor at slot ${first} is indirect but INDIRECT_DESC was not negotiated`);
    if (position !== 1 || (flags & VRING_DESC_F_NEXT) !== 0) return chain.reject(`indirect descriptor of the chain at slot ${first} is not the chain's only descriptor`);
    if (len === 0 || len % DESC_SIZE !== 0 || len > this.size * DESC_SIZE) {
      return chain.reject(`indirect table of the chain at slot ${first} has length ${len}: not a non-zero multiple of 16 up to ${this.size * DESC_SIZE}`);
    }
    if (hi > MAX_SAFE_HIGH_WORD) return chain.reject(`indirect table of the chain at slot ${first} has an address above 2^53`);
    const gpa = hi * 0x1_0000_0000 + lo;
    const memory = this.memory;
    const r = memory.regionIndexOfRange(gpa, len);
    if (r < 0) return chain.reject(`indirect table of the chain at slot ${first} at 0x${gpa.toString(16)}+${len} is not inside one memory region`);
    chain.indirect = true;
    const region = memory.regions[r]!;
    const offset = gpa - region.guestPhysAddr;
    const words = memory.regionWords(r);
    const maxBytes = this.chainByteLimit;
    const count = len / DESC_SIZE;
    // Read by words where the table is on a 4-byte boundary (as guests place it), else byte by
    // byte; inline either way, since a closure over the region would be allocated per table.
    const aligned = (words.lead + offset) % 4 === 0;
    const t32 = words.u32;
    const u = region.bytes;
    for (let i = 0; i < count; i++) {
      let addrLo: number;
      let addrHi: number;
      let length: number;
      let entryFlags: number;
      if (aligned) {
        const w = (words.lead + offset) / 4 + i * 4;
        addrLo = t32[w]!;
        addrHi = t32[w + 1]!;
        length = t32[w + 2]!;
        entryFlags = t32[w + 3]! >>> 16;
      } else {
        const b = offset + i * DESC_SIZE;
        addrLo = (u[b]! | (u[b + 1]! << 8) | (u[b + 2]! << 16) | (u[b + 3]! << 24)) >>> 0;
        addrHi = (u[b + 4]! | (u[b + 5]! << 8) | (u[b + 6]! << 16) | (u[b + 7]! << 24)) >>> 0;
        length = (u[b + 8]! | (u[b + 9]! << 8) | (u[b + 10]! << 16) | (u[b + 11]! << 24)) >>> 0;
        entryFlags = u[b + 14]! | (u[b + 15]! << 8);
      }
      chain.descriptorCount++;
      if ((entryFlags & VRING_DESC_F_INDIRECT) !== 0) return chain.reject(`indirect table of the chain at slot ${first} contains another indirect descriptor`);
      // NEXT means nothing inside a packed indirect table: its entries are the chain, in order.
      if (!chain.addDescriptor(i, addrLo | 0, addrHi, length, (entryFlags & VRING_DESC_F_WRITE) !== 0, maxBytes)) return;
    }
  }

  /** Gives back the last `count` popped chains (mergeable RX found too few buffers for a frame). */
  rewind(count: number): void {
    if (!Number.isInteger(count) || count < 0 || count > this.inflightCount) {
      throw new RingError(this.name, `cannot rewind ${count} chains with ${this.inflightCount} taken`);
    }
    for (let k = 0; k < count; k++) {
      this.inflightCount--;
      let at = this.inflightHead + this.inflightCount;
      if (at >= this.size) at -= this.size;
      const slots = this.inflight[at]!;
      this.availIdx -= slots;
      if (this.availIdx < 0) {
        this.availIdx += this.size;
        this.availWrap ^= 1;
      }
    }
  }

  /**
   * Writes the used entry for the oldest chain taken and not yet returned: `id` is the buffer id
   * the chain carried (`chain.head`). The driver sees it only after `flushUsed()`.
   */
  pushUsed(id: number, len: number): void {
    if (this.inflightCount === 0) throw new RingError(this.name, 'a used entry was pushed with no chain taken');
    const slots = this.inflight[this.inflightHead]!;
    if (++this.inflightHead === this.size) this.inflightHead = 0;
    this.inflightCount--;
    const slot = this.usedIdx;
    const w = slot * 4;
    this.desc32[w + 2] = len;
    this.desc16[slot * 8 + 6] = id;
    const wrapFlags = this.usedWrap === 1 ? VRING_PACKED_DESC_F_AVAIL | VRING_PACKED_DESC_F_USED : 0;
    this.pendingSlot[this.pendingUsed] = slot;
    this.pendingFlags[this.pendingUsed] = wrapFlags | (len > 0 ? VRING_DESC_F_WRITE : 0);
    this.pendingUsed++;
    this.usedIdx += slots;
    if (this.usedIdx >= this.size) {
      this.usedIdx -= this.size;
      this.usedWrap ^= 1;
    }
    if (this.descLogAddr !== null && this.memory.dirtyLogging) this.memory.markDirty(this.descLogAddr + slot * DESC_SIZE, DESC_SIZE);
  }

  get pendingUsedCount(): number {
    return this.pendingUsed;
  }

  /**
   * Makes the pushed entries visible at once, as DPDK does: the flags of all but the oldest are
   * stored first, then the oldest's with a sequentially consistent store. The driver reads used
   * entries in order, so it sees none of the burst before the oldest, and that store orders every
   * id, length and data byte written before it (one fence per burst, not one per entry).
   */
  flushUsed(): void {
    const n = this.pendingUsed;
    if (n === 0) return;
    const desc16 = this.desc16;
    for (let i = n - 1; i > 0; i--) desc16[this.pendingSlot[i]! * 8 + 7] = this.pendingFlags[i]!;
    Atomics.store(desc16, this.pendingSlot[0]! * 8 + 7, this.pendingFlags[0]!);
    // Logged after the stores: a log collected between pushUsed and here must not lose the flags.
    if (this.descLogAddr !== null && this.memory.dirtyLogging) {
      for (let i = 0; i < n; i++) this.memory.markDirty(this.descLogAddr + this.pendingSlot[i]! * DESC_SIZE + 14, 2);
    }
    this.pendingUsed = 0;
    this.publishedIdx = this.usedIdx;
    this.publishedWrap = this.usedWrap;
  }

  /**
   * Whether the driver wants an interrupt for what was published since the last decision. With
   * EVENT_IDX and the driver's DESC mode: whether the used index passed the slot it named, whose
   * wrap bit says which round it means.
   */
  needsNotification(): boolean {
    const flags = Atomics.load(this.driver16, 1);
    const newIdx = this.publishedIdx;
    let oldIdx = this.signalledUsed;
    const valid = this.signalledUsedValid;
    this.signalledUsed = newIdx;
    this.signalledUsedValid = true;
    if (flags === VRING_PACKED_EVENT_FLAG_DISABLE) return false;
    if (flags !== VRING_PACKED_EVENT_FLAG_DESC || !this.eventIdx) return true;
    if (!valid) return true;
    const offWrap = Atomics.load(this.driver16, 0);
    let event = offWrap & 0x7fff;
    if (newIdx <= oldIdx) oldIdx -= this.size;
    if (this.publishedWrap !== offWrap >>> 15) event -= this.size;
    return vringNeedEvent(event, newIdx, oldIdx);
  }

  /**
   * Asks the driver to kick for the next chain, then looks again (after the sequentially
   * consistent store) so a chain added in between is not missed. True: work is waiting.
   */
  enableNotifications(): boolean {
    this.notificationsDisabled = false;
    Atomics.store(this.device16, 1, VRING_PACKED_EVENT_FLAG_ENABLE);
    if (this.deviceLogAddr !== null && this.memory.dirtyLogging) this.memory.markDirty(this.deviceLogAddr + 2, 2);
    return this.hasAvailable();
  }

  disableNotifications(): void {
    this.notificationsDisabled = true;
    Atomics.store(this.device16, 1, VRING_PACKED_EVENT_FLAG_DISABLE);
    if (this.deviceLogAddr !== null && this.memory.dirtyLogging) this.memory.markDirty(this.deviceLogAddr + 2, 2);
  }

  /** State for a handover at a burst boundary: every chain taken has been returned and published. */
  exportState(): QueueState {
    if (this.pendingUsed !== 0 || this.inflightCount !== 0) {
      throw new RingError(this.name, `cannot export state with ${this.inflightCount} chains taken and ${this.pendingUsed} used entries not yet published`);
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

  importState(state: QueueState): void {
    if (this.pendingUsed !== 0 || this.inflightCount !== 0) {
      throw new RingError(this.name, `cannot import state over ${this.inflightCount} chains taken and ${this.pendingUsed} used entries not yet published`);
    }
    if (!isU16(state.signalledUsed)) throw new RingError(this.name, `imported signalled index ${state.signalledUsed} is not a u16 value`);
    this.setIndexes(state.lastAvail, state.lastUsed);
    this.signalledUsed = state.signalledUsed;
    this.signalledUsedValid = Boolean(state.signalledUsedValid);
    this.notificationsDisabled = Boolean(state.notificationsDisabled);
    this.broken = Boolean(state.broken);
  }
}
