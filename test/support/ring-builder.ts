// Builds guest memory and split rings inside ordinary in-process buffers, so ring and device code
// can be tested with no kernel and no peer. Unlike SplitQueueDriver it writes whatever it is told,
// including the broken and hostile layouts a malicious guest would produce.

import { GuestMemory, type MemoryRegion } from '../../virtio/guest-memory.js';
import { SplitQueue, type SplitQueueOptions } from '../../virtio/split-queue.js';
import { SplitQueueDriver } from '../../virtio/split-queue-driver.js';
import {
  DESC_SIZE,
  VRING_DESC_F_NEXT,
  VRING_DESC_F_WRITE,
  availEventOffset,
  availRingBytes,
  descTableBytes,
  usedEntryOffset,
  usedEventOffset,
  usedRingBytes,
} from '../../virtio/ring-layout.js';

export { VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_DESC_F_INDIRECT } from '../../virtio/ring-layout.js';

export interface RegionSpec {
  gpa: number;
  size: number;
  /** Front-end user address; defaults to gpa + 0x7f00_0000_0000. */
  userAddr?: number;
  /** Where the region would be mapped in this process (for chains' host addresses); none by default. */
  hostAddress?: number;
}

export const DEFAULT_USER_OFFSET = 0x7f00_0000_0000;

/**
 * Guest memory with one separate buffer per region (so a buffer that straddles two adjacent
 * regions really lives in two host buffers). With `shared`, regions are SharedArrayBuffers that
 * worker threads can map too, like guest RAM mapped by several workers.
 */
export function createTestMemory(specs: readonly RegionSpec[] = [{ gpa: 0, size: 1 << 20 }], options: { shared?: boolean } = {}): GuestMemory {
  const regions: MemoryRegion[] = specs.map((s) => ({
    guestPhysAddr: s.gpa,
    size: s.size,
    userAddr: s.userAddr ?? s.gpa + DEFAULT_USER_OFFSET,
    bytes: new Uint8Array(options.shared ? new SharedArrayBuffer(s.size) : new ArrayBuffer(s.size)),
    ...(s.hostAddress !== undefined ? { hostAddress: s.hostAddress } : {}),
  }));
  return new GuestMemory(regions);
}

export interface Descriptor {
  addr: number;
  len: number;
  flags?: number;
  next?: number;
}

export interface BufferSpec {
  addr: number;
  len: number;
  writable?: boolean;
}

function hostOf(memory: GuestMemory, gpa: number, len: number): { bytes: Uint8Array; offset: number } {
  const loc = memory.translate(gpa, len);
  if (loc === null) throw new Error(`ring builder: 0x${gpa.toString(16)}+${len} is not inside one test region`);
  return loc;
}

function put16(b: Uint8Array, at: number, v: number): void {
  b[at] = v & 0xff;
  b[at + 1] = (v >>> 8) & 0xff;
}
function put32(b: Uint8Array, at: number, v: number): void {
  put16(b, at, v & 0xffff);
  put16(b, at + 2, (v >>> 16) & 0xffff);
}
function get16(b: Uint8Array, at: number): number {
  return b[at]! | (b[at + 1]! << 8);
}
function get32(b: Uint8Array, at: number): number {
  return (get16(b, at) | (get16(b, at + 2) << 16)) >>> 0;
}

/** Writes one 16-byte descriptor at `gpa` (no alignment required: indirect tables may be anywhere). */
export function writeDescriptorAt(memory: GuestMemory, gpa: number, d: Descriptor): void {
  const { bytes, offset } = hostOf(memory, gpa, DESC_SIZE);
  put32(bytes, offset, d.addr % 0x1_0000_0000);
  put32(bytes, offset + 4, Math.floor(d.addr / 0x1_0000_0000));
  put32(bytes, offset + 8, d.len);
  put16(bytes, offset + 12, d.flags ?? 0);
  put16(bytes, offset + 14, d.next ?? 0);
}

/** Writes an indirect table of descriptors at `gpa`; returns its length in bytes. */
export function writeDescriptorTable(memory: GuestMemory, gpa: number, descs: readonly Descriptor[]): number {
  descs.forEach((d, i) => writeDescriptorAt(memory, gpa + i * DESC_SIZE, d));
  return descs.length * DESC_SIZE;
}

/** Descriptors for a well-formed chain over `buffers`, linked 0→1→… within one table. */
export function chainDescriptors(buffers: readonly BufferSpec[], firstIndex = 0): Descriptor[] {
  return buffers.map((b, i) => ({
    addr: b.addr,
    len: b.len,
    flags: (b.writable ? VRING_DESC_F_WRITE : 0) | (i < buffers.length - 1 ? VRING_DESC_F_NEXT : 0),
    next: i < buffers.length - 1 ? firstIndex + i + 1 : 0,
  }));
}

export function writeBytes(memory: GuestMemory, gpa: number, data: Uint8Array | readonly number[]): void {
  const segs = memory.segments(gpa, data.length);
  if (segs === null) throw new Error(`ring builder: 0x${gpa.toString(16)}+${data.length} is not in test memory`);
  let k = 0;
  for (const s of segs) for (let i = 0; i < s.length; i++) s.bytes[s.offset + i] = data[k++]!;
}

export function readBytes(memory: GuestMemory, gpa: number, len: number): Uint8Array {
  const segs = memory.segments(gpa, len);
  if (segs === null) throw new Error(`ring builder: 0x${gpa.toString(16)}+${len} is not in test memory`);
  const out = new Uint8Array(len);
  let k = 0;
  for (const s of segs) for (let i = 0; i < s.length; i++) out[k++] = s.bytes[s.offset + i]!;
  return out;
}

export interface RingBuilderOptions {
  size: number;
  /** Where the descriptor table, avail ring and used ring go; default: laid out from `base`. */
  descGpa?: number;
  availGpa?: number;
  usedGpa?: number;
  base?: number;
}

/** A split ring in test memory that the test writes as the (possibly hostile) driver. */
export class RingBuilder {
  readonly size: number;
  readonly descGpa: number;
  readonly availGpa: number;
  readonly usedGpa: number;
  /** Shadow of avail.idx: the next index `offer` publishes. */
  availIdx = 0;

  constructor(readonly memory: GuestMemory, options: RingBuilderOptions) {
    this.size = options.size;
    const layout = SplitQueueDriver.layout(options.base ?? 0, options.size);
    this.descGpa = options.descGpa ?? layout.descGpa;
    this.availGpa = options.availGpa ?? layout.availGpa;
    this.usedGpa = options.usedGpa ?? layout.usedGpa;
  }

  /** First guest-physical address past the three ring parts (for placing buffers). */
  get end(): number {
    return Math.max(this.descGpa + descTableBytes(this.size), this.availGpa + availRingBytes(this.size), this.usedGpa + usedRingBytes(this.size));
  }

  setDescriptor(index: number, d: Descriptor): void {
    writeDescriptorAt(this.memory, this.descGpa + index * DESC_SIZE, d);
  }

  /** Writes a well-formed chain into table slots `firstIndex…`; returns the head index. */
  writeChain(buffers: readonly BufferSpec[], firstIndex = 0): number {
    chainDescriptors(buffers, firstIndex).forEach((d, i) => this.setDescriptor(firstIndex + i, d));
    return firstIndex;
  }

  /** Puts heads in the avail ring and publishes them with one avail.idx update. */
  offer(...heads: number[]): void {
    for (const head of heads) {
      this.setAvailEntry(this.availIdx, head);
      this.availIdx = (this.availIdx + 1) & 0xffff;
    }
    this.setAvailIdx(this.availIdx);
  }

  /** Writes avail.ring[index mod size] without publishing. */
  setAvailEntry(index: number, head: number): void {
    const { bytes, offset } = hostOf(this.memory, this.availGpa, availRingBytes(this.size));
    put16(bytes, offset + 4 + 2 * (index % this.size), head);
  }

  /** Stores avail.idx as given, including values a sane driver never writes. */
  setAvailIdx(idx: number): void {
    const { bytes, offset } = hostOf(this.memory, this.availGpa, 4);
    put16(bytes, offset + 2, idx & 0xffff);
  }

  setAvailFlags(flags: number): void {
    const { bytes, offset } = hostOf(this.memory, this.availGpa, 2);
    put16(bytes, offset, flags);
  }

  setUsedEvent(value: number): void {
    const { bytes, offset } = hostOf(this.memory, this.availGpa, availRingBytes(this.size));
    put16(bytes, offset + usedEventOffset(this.size), value & 0xffff);
  }

  /** Overwrites used.idx, e.g. to start a test near the u16 wrap. */
  setUsedIdx(value: number): void {
    const { bytes, offset } = hostOf(this.memory, this.usedGpa, 4);
    put16(bytes, offset + 2, value & 0xffff);
  }

  usedFlags(): number {
    const { bytes, offset } = hostOf(this.memory, this.usedGpa, 2);
    return get16(bytes, offset);
  }

  usedIdx(): number {
    const { bytes, offset } = hostOf(this.memory, this.usedGpa, 4);
    return get16(bytes, offset + 2);
  }

  availEvent(): number {
    const { bytes, offset } = hostOf(this.memory, this.usedGpa, usedRingBytes(this.size));
    return get16(bytes, offset + availEventOffset(this.size));
  }

  /** used.ring[index mod size]. */
  usedEntry(index: number): { id: number; len: number } {
    const { bytes, offset } = hostOf(this.memory, this.usedGpa, usedRingBytes(this.size));
    const at = offset + usedEntryOffset(index % this.size);
    return { id: get32(bytes, at), len: get32(bytes, at + 4) };
  }

  /** A device-side queue over this ring, with host views translated like vhost-user does. */
  queue(options: Partial<Omit<SplitQueueOptions, 'memory' | 'size' | 'descTable' | 'availRing' | 'usedRing'>> = {}): SplitQueue {
    return new SplitQueue({
      memory: this.memory,
      size: this.size,
      descTable: hostOf(this.memory, this.descGpa, descTableBytes(this.size)),
      availRing: hostOf(this.memory, this.availGpa, availRingBytes(this.size)),
      usedRing: hostOf(this.memory, this.usedGpa, usedRingBytes(this.size)),
      ...options,
    });
  }

  /** A well-behaved driver over the same ring (it zeroes the rings when created). */
  driver(options: { eventIdx?: boolean } = {}): SplitQueueDriver {
    return new SplitQueueDriver({
      memory: this.memory,
      size: this.size,
      descGpa: this.descGpa,
      availGpa: this.availGpa,
      usedGpa: this.usedGpa,
      ...options,
    });
  }
}
