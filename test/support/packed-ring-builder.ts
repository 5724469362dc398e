// Builds packed virtqueues (virtio 1.2 §2.8) inside in-process test memory and plays their driver:
// it makes chains available, reads used descriptors back and sets the driver's event suppression.
// Like RingBuilder for split rings it writes whatever it is told, so a hostile ring is one call
// away, and it keeps the driver's own view of the ring (its avail and used slots and wrap
// counters) apart from the device's, so a test can check that both sides agree.

import type { GuestMemory } from '../../virtio/guest-memory.js';
import { PackedQueue, type PackedQueueOptions } from '../../virtio/packed-queue.js';
import {
  DESC_SIZE,
  PACKED_EVENT_BYTES,
  VRING_DESC_F_INDIRECT,
  VRING_DESC_F_NEXT,
  VRING_DESC_F_WRITE,
  VRING_PACKED_DESC_F_AVAIL,
  VRING_PACKED_DESC_F_USED,
} from '../../virtio/ring-layout.js';

export {
  VRING_DESC_F_INDIRECT,
  VRING_DESC_F_NEXT,
  VRING_DESC_F_WRITE,
  VRING_PACKED_DESC_F_AVAIL,
  VRING_PACKED_DESC_F_USED,
  VRING_PACKED_EVENT_FLAG_DESC,
  VRING_PACKED_EVENT_FLAG_DISABLE,
  VRING_PACKED_EVENT_FLAG_ENABLE,
} from '../../virtio/ring-layout.js';

/** One packed descriptor as it lies in the ring or in an indirect table. */
export interface PackedDescriptor {
  addr: number;
  len: number;
  /** Buffer id; only the last descriptor of a chain carries the one the device echoes. */
  id?: number;
  /** Raw flags, wrap bits included when written with `writeDescriptor`. */
  flags?: number;
}

export interface PackedBuffer {
  addr: number;
  len: number;
  writable?: boolean;
}

/** A used descriptor as the driver finds it. */
export interface UsedDescriptor {
  slot: number;
  /** The driver's used wrap counter the descriptor was found with. */
  wrap: number;
  id: number;
  len: number;
  flags: number;
}

export interface PackedRingOptions {
  size: number;
  /** Where the descriptor ring starts; the two event areas follow it. Default 0. */
  base?: number;
  descGpa?: number;
  driverEventGpa?: number;
  deviceEventGpa?: number;
  /** Where the driver starts, slot | wrap << 15 (a device's lastAvail). Default slot 0, wrap 1. */
  start?: number;
}

const WRAP_BIT = 0x8000;

function hostOf(memory: GuestMemory, gpa: number, len: number): { bytes: Uint8Array; offset: number } {
  const loc = memory.translate(gpa, len);
  if (loc === null) throw new Error(`packed ring builder: 0x${gpa.toString(16)}+${len} is not inside one test region`);
  return loc;
}

function viewOf(memory: GuestMemory, gpa: number, len: number): DataView {
  const { bytes, offset } = hostOf(memory, gpa, len);
  return new DataView(bytes.buffer, bytes.byteOffset + offset, len);
}

/**
 * Writes one packed descriptor at `gpa`: addr (le64), len (le32), id (le16), flags (le16). No
 * alignment is needed, as indirect tables may sit anywhere. Addresses above 2^53 must be exact
 * JavaScript numbers (powers of two are).
 */
export function writePackedDescriptorAt(memory: GuestMemory, gpa: number, d: PackedDescriptor): void {
  const v = viewOf(memory, gpa, DESC_SIZE);
  v.setUint32(0, d.addr % 0x1_0000_0000, true);
  v.setUint32(4, Math.floor(d.addr / 0x1_0000_0000) % 0x1_0000_0000, true);
  v.setUint32(8, d.len >>> 0, true);
  v.setUint16(12, (d.id ?? 0) & 0xffff, true);
  v.setUint16(14, (d.flags ?? 0) & 0xffff, true);
}

export function readPackedDescriptorAt(memory: GuestMemory, gpa: number): Required<PackedDescriptor> {
  const v = viewOf(memory, gpa, DESC_SIZE);
  return { addr: v.getUint32(4, true) * 0x1_0000_0000 + v.getUint32(0, true), len: v.getUint32(8, true), id: v.getUint16(12, true), flags: v.getUint16(14, true) };
}

/** Writes an indirect table; returns its length in bytes, the ring descriptor's len. */
export function writePackedTable(memory: GuestMemory, gpa: number, entries: readonly PackedDescriptor[]): number {
  entries.forEach((d, i) => writePackedDescriptorAt(memory, gpa + i * DESC_SIZE, d));
  return entries.length * DESC_SIZE;
}

/** Table entries for buffers: inside a packed indirect table only WRITE means anything. */
export function tableEntries(buffers: readonly PackedBuffer[]): PackedDescriptor[] {
  return buffers.map((b) => ({ addr: b.addr, len: b.len, flags: b.writable ? VRING_DESC_F_WRITE : 0 }));
}

/** A packed ring in test memory, and the driver that fills it. */
export class PackedRingBuilder {
  readonly size: number;
  readonly descGpa: number;
  readonly driverEventGpa: number;
  readonly deviceEventGpa: number;
  /** Next slot the driver fills, and its avail wrap counter (the value it writes into AVAIL). */
  availIdx = 0;
  availWrap = 1;
  /** Next slot the driver looks for a used descriptor in, and the wrap counter marking it used. */
  usedIdx = 0;
  usedWrap = 1;
  /**
   * Chains made available and not yet seen used, oldest first. A used descriptor says only which
   * buffer id came back; the driver must remember how many slots that chain took to know where
   * the next used descriptor will be.
   */
  private readonly outstanding: { id: number; slots: number }[] = [];

  constructor(readonly memory: GuestMemory, options: PackedRingOptions) {
    this.size = options.size;
    const base = options.base ?? 0;
    this.descGpa = options.descGpa ?? base;
    this.driverEventGpa = options.driverEventGpa ?? this.descGpa + DESC_SIZE * this.size;
    this.deviceEventGpa = options.deviceEventGpa ?? this.driverEventGpa + PACKED_EVENT_BYTES;
    const ring = hostOf(memory, this.descGpa, DESC_SIZE * this.size);
    ring.bytes.fill(0, ring.offset, ring.offset + DESC_SIZE * this.size);
    this.setDriverEvent(0, 0);
    viewOf(memory, this.deviceEventGpa, PACKED_EVENT_BYTES).setUint32(0, 0, true);
    this.startAt(options.start ?? WRAP_BIT);
  }

  /** First guest-physical address past the ring and its event areas (for placing buffers). */
  get end(): number {
    return Math.max(this.descGpa + DESC_SIZE * this.size, this.driverEventGpa + PACKED_EVENT_BYTES, this.deviceEventGpa + PACKED_EVENT_BYTES);
  }

  /** The driver's next avail slot with its wrap counter, in the encoding of the device's lastAvail. */
  get lastAvail(): number {
    return this.availIdx | (this.availWrap << 15);
  }

  /** The driver's next used slot with its wrap counter, in the encoding of the device's lastUsed. */
  get lastUsed(): number {
    return this.usedIdx | (this.usedWrap << 15);
  }

  /** Chains made available that the driver has not yet seen used. */
  get outstandingChains(): number {
    return this.outstanding.length;
  }

  /**
   * Moves the driver (both its avail and used positions) to `index` = slot | wrap << 15, as after a
   * handover, so a device created with the same lastAvail/lastUsed and the driver agree.
   */
  startAt(index: number): void {
    if (this.outstanding.length !== 0) throw new Error('packed ring builder: cannot move the driver with chains outstanding');
    const slot = index & 0x7fff;
    const wrap = (index & WRAP_BIT) !== 0 ? 1 : 0;
    this.availIdx = this.usedIdx = slot;
    this.availWrap = this.usedWrap = wrap;
    // The ring as a driver would have left it: slots before the start were used in this round,
    // the rest in the round before. Otherwise a slot never written in this round (all zeros)
    // would read as used in round 0 once the driver gets there.
    for (let i = 0; i < this.size; i++) {
      const round = i < slot ? wrap : wrap ^ 1;
      this.setFlags(i, round === 1 ? VRING_PACKED_DESC_F_AVAIL | VRING_PACKED_DESC_F_USED : 0);
    }
  }

  /** AVAIL and USED as the driver sets them to make a descriptor available in round `wrap`. */
  availBits(wrap = this.availWrap): number {
    return wrap === 1 ? VRING_PACKED_DESC_F_AVAIL : VRING_PACKED_DESC_F_USED;
  }

  /** Writes a descriptor into a ring slot exactly as given: no wrap bits added, no index moved. */
  writeDescriptor(slot: number, d: PackedDescriptor): void {
    writePackedDescriptorAt(this.memory, this.descGpa + slot * DESC_SIZE, d);
  }

  readDescriptor(slot: number): Required<PackedDescriptor> {
    return readPackedDescriptorAt(this.memory, this.descGpa + slot * DESC_SIZE);
  }

  /**
   * Makes a well-formed chain over `buffers` available with buffer id `id`; returns its first slot.
   */
  makeAvailable(buffers: readonly PackedBuffer[], id: number): number {
    if (buffers.length === 0) throw new Error('packed ring builder: a chain needs at least one buffer');
    return this.post(
      buffers.map((b, i) => ({
        addr: b.addr,
        len: b.len,
        id: i === buffers.length - 1 ? id : 0,
        flags: (b.writable ? VRING_DESC_F_WRITE : 0) | (i < buffers.length - 1 ? VRING_DESC_F_NEXT : 0),
      })),
    );
  }

  /**
   * Writes an indirect table of `buffers` at `tableGpa` and makes available the one descriptor
   * that points at it; returns its slot.
   */
  postIndirect(tableGpa: number, buffers: readonly PackedBuffer[], id: number): number {
    const len = writePackedTable(this.memory, tableGpa, tableEntries(buffers));
    return this.post([{ addr: tableGpa, len, id, flags: VRING_DESC_F_INDIRECT }]);
  }

  /**
   * Makes available consecutive descriptors from the driver's avail slot, with the given flags
   * (NEXT, WRITE, INDIRECT, anything) plus the wrap bits of the round each slot falls in: the way
   * to post a malformed chain the device must still see. The driver counts them as one chain
   * whose id is the last descriptor's. Returns the first slot.
   */
  post(descs: readonly PackedDescriptor[]): number {
    if (descs.length === 0) throw new Error('packed ring builder: a chain needs at least one descriptor');
    const first = this.availIdx;
    const firstWrap = this.availWrap;
    // The first descriptor keeps whatever flags it had until the whole chain is written: the
    // device must not see any of a chain before all of it is there, so a chain that crosses the
    // end of the ring is published whole by one last store.
    const previous = this.readDescriptor(first).flags;
    let slot = first;
    let wrap = firstWrap;
    for (let i = 0; i < descs.length; i++) {
      const d = descs[i]!;
      this.writeDescriptor(slot, { ...d, flags: i === 0 ? previous : this.withWrapBits(d.flags ?? 0, wrap) });
      if (++slot === this.size) {
        slot = 0;
        wrap ^= 1;
      }
    }
    this.setFlags(first, this.withWrapBits(descs[0]!.flags ?? 0, firstWrap));
    this.availIdx = slot;
    this.availWrap = wrap;
    this.outstanding.push({ id: descs[descs.length - 1]!.id ?? 0, slots: descs.length });
    return first;
  }

  /** Stores only the flags of a ring slot: how a driver publishes a chain it has written. */
  setFlags(slot: number, flags: number): void {
    viewOf(this.memory, this.descGpa + slot * DESC_SIZE + 14, 2).setUint16(0, flags & 0xffff, true);
  }

  private withWrapBits(flags: number, wrap: number): number {
    return (flags & ~(VRING_PACKED_DESC_F_AVAIL | VRING_PACKED_DESC_F_USED)) | this.availBits(wrap);
  }

  /**
   * The used descriptor at the driver's used slot, or null while the device has not published
   * one: a used descriptor has AVAIL and USED both equal to the driver's used wrap counter.
   */
  peekUsed(): UsedDescriptor | null {
    const d = this.readDescriptor(this.usedIdx);
    const avail = (d.flags & VRING_PACKED_DESC_F_AVAIL) !== 0 ? 1 : 0;
    const used = (d.flags & VRING_PACKED_DESC_F_USED) !== 0 ? 1 : 0;
    if (avail !== this.usedWrap || used !== this.usedWrap) return null;
    return { slot: this.usedIdx, wrap: this.usedWrap, id: d.id, len: d.len, flags: d.flags };
  }

  /**
   * Takes the next used descriptor and moves the driver's used slot past every slot of the chain
   * it returns (found by id among the outstanding chains, oldest first). Throws when there is none.
   */
  takeUsed(): UsedDescriptor {
    const used = this.peekUsed();
    if (used === null) throw new Error(`packed ring builder: no used descriptor at slot ${this.usedIdx} (wrap ${this.usedWrap})`);
    const k = this.outstanding.findIndex((c) => c.id === used.id);
    if (k < 0) throw new Error(`packed ring builder: used id ${used.id} at slot ${used.slot} is not an outstanding chain`);
    const { slots } = this.outstanding.splice(k, 1)[0]!;
    this.usedIdx += slots;
    if (this.usedIdx >= this.size) {
      this.usedIdx -= this.size;
      this.usedWrap ^= 1;
    }
    return used;
  }

  /** Every used descriptor published so far. */
  takeAllUsed(): UsedDescriptor[] {
    const out: UsedDescriptor[] = [];
    while (this.peekUsed() !== null) out.push(this.takeUsed());
    return out;
  }

  /** Driver event suppression: when the device should interrupt (flags ENABLE/DISABLE/DESC). */
  setDriverEvent(flags: number, offWrap = 0): void {
    const v = viewOf(this.memory, this.driverEventGpa, PACKED_EVENT_BYTES);
    v.setUint16(0, offWrap & 0xffff, true);
    v.setUint16(2, flags & 0xffff, true);
  }

  /** Device event suppression as the device last wrote it: when the driver should kick. */
  deviceEvent(): { offWrap: number; flags: number } {
    const v = viewOf(this.memory, this.deviceEventGpa, PACKED_EVENT_BYTES);
    return { offWrap: v.getUint16(0, true), flags: v.getUint16(2, true) };
  }

  /** A device-side queue over this ring, with host views translated like vhost-user does. */
  queue(options: Partial<Omit<PackedQueueOptions, 'memory' | 'size' | 'descRing' | 'driverEvent' | 'deviceEvent'>> = {}): PackedQueue {
    return new PackedQueue({
      memory: this.memory,
      size: this.size,
      descRing: hostOf(this.memory, this.descGpa, DESC_SIZE * this.size),
      driverEvent: hostOf(this.memory, this.driverEventGpa, PACKED_EVENT_BYTES),
      deviceEvent: hostOf(this.memory, this.deviceEventGpa, PACKED_EVENT_BYTES),
      ...options,
    });
  }
}
