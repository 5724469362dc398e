// The driver side of a split virtqueue, for the VMM's own tooling and for tests that play the
// guest: it owns the descriptor table, offers buffer chains, decides when to kick, and collects
// used entries. It trusts nothing the device writes back either.

import type { GuestMemory, HostLocation } from './guest-memory.js';
import {
  DESC_SIZE,
  DESC_TABLE_ALIGN,
  VRING_AVAIL_F_NO_INTERRUPT,
  VRING_DESC_F_INDIRECT,
  VRING_DESC_F_NEXT,
  VRING_DESC_F_WRITE,
  VRING_USED_F_NO_NOTIFY,
  availEventOffset,
  availRingBytes,
  descTableBytes,
  isValidSplitQueueSize,
  usedEventOffset,
  usedRingBytes,
  vringNeedEvent,
} from './ring-layout.js';

export interface DriverBuffer {
  gpa: number;
  len: number;
  /** Device-writable (receive) rather than device-readable (transmit). */
  writable: boolean;
}

export interface UsedElement {
  id: number;
  len: number;
}

export interface SplitRingLayout {
  descGpa: number;
  availGpa: number;
  usedGpa: number;
  /** First guest-physical address after the rings. */
  end: number;
}

export interface SplitQueueDriverOptions {
  memory: GuestMemory;
  size: number;
  descGpa: number;
  availGpa: number;
  usedGpa: number;
  /** VIRTIO_RING_F_EVENT_IDX negotiated. */
  eventIdx?: boolean;
  name?: string;
}

const alignUp = (value: number, align: number): number => Math.ceil(value / align) * align;

export class SplitQueueDriver {
  /** Places the three parts one after the other from `baseGpa`, each aligned as the spec requires. */
  static layout(baseGpa: number, size: number): SplitRingLayout {
    const descGpa = alignUp(baseGpa, DESC_TABLE_ALIGN);
    const availGpa = descGpa + descTableBytes(size);
    const usedGpa = alignUp(availGpa + availRingBytes(size), 4);
    return { descGpa, availGpa, usedGpa, end: usedGpa + usedRingBytes(size) };
  }

  readonly name: string;
  readonly size: number;
  readonly eventIdx: boolean;
  readonly memory: GuestMemory;
  readonly layout: SplitRingLayout;
  private readonly desc32: Uint32Array;
  private readonly avail16: Uint16Array;
  private readonly used16: Uint16Array;
  private readonly used32: Uint32Array;
  private readonly mask: number;
  /** Free descriptor list linked through `freeNext`. */
  private readonly freeNext: Uint16Array;
  private freeHead = 0;
  private free: number;
  /** Descriptor indexes each outstanding head holds, to free them when the device returns it. */
  private readonly outstanding = new Map<number, number[]>();
  /** Next avail index to publish (shadow of avail.idx). */
  private availIdx = 0;
  /** avail.idx at the previous kick decision. */
  private kickedAvail = 0;
  /** Next used index to read. */
  private lastUsed = 0;

  constructor(options: SplitQueueDriverOptions) {
    this.name = options.name ?? 'virtqueue driver';
    const size = options.size;
    if (!isValidSplitQueueSize(size)) throw new Error(`${this.name}: queue size ${size} is not a power of two between 1 and 32768`);
    this.size = size;
    this.mask = size - 1;
    this.eventIdx = options.eventIdx ?? false;
    this.memory = options.memory;
    const desc = this.view(options.descGpa, descTableBytes(size), DESC_TABLE_ALIGN, 'descriptor table');
    const avail = this.view(options.availGpa, availRingBytes(size), 2, 'avail ring');
    const used = this.view(options.usedGpa, usedRingBytes(size), 4, 'used ring');
    this.desc32 = new Uint32Array(desc.bytes.buffer, desc.bytes.byteOffset + desc.offset, (DESC_SIZE / 4) * size);
    this.avail16 = new Uint16Array(avail.bytes.buffer, avail.bytes.byteOffset + avail.offset, availRingBytes(size) / 2);
    this.used16 = new Uint16Array(used.bytes.buffer, used.bytes.byteOffset + used.offset, usedRingBytes(size) / 2);
    this.used32 = new Uint32Array(used.bytes.buffer, used.bytes.byteOffset + used.offset, (usedRingBytes(size) - 2) / 4);
    this.layout = {
      descGpa: options.descGpa,
      availGpa: options.availGpa,
      usedGpa: options.usedGpa,
      end: Math.max(options.descGpa + descTableBytes(size), options.availGpa + availRingBytes(size), options.usedGpa + usedRingBytes(size)),
    };
    this.freeNext = new Uint16Array(size);
    for (let i = 0; i < size; i++) this.freeNext[i] = (i + 1) & 0xffff;
    this.free = size;
    this.reset();
  }

  private view(gpa: number, len: number, align: number, what: string): HostLocation {
    if (gpa % align !== 0) throw new Error(`${this.name}: ${what} at 0x${gpa.toString(16)} is not ${align}-byte aligned`);
    const loc = this.memory.translate(gpa, len);
    if (loc === null) throw new Error(`${this.name}: ${what} at 0x${gpa.toString(16)}+${len} is not inside one memory region`);
    if ((loc.bytes.byteOffset + loc.offset) % align !== 0) throw new Error(`${this.name}: ${what} host view is not ${align}-byte aligned`);
    return loc;
  }

  /** Zeroes the rings, as a driver does before handing them to a device. */
  reset(): void {
    this.desc32.fill(0);
    this.avail16.fill(0);
    this.used16.fill(0);
    this.availIdx = 0;
    this.kickedAvail = 0;
    this.lastUsed = 0;
  }

  get freeDescriptors(): number {
    return this.free;
  }

  private allocDescriptor(): number {
    const index = this.freeHead;
    this.freeHead = this.freeNext[index]!;
    this.free--;
    return index;
  }

  private writeDescriptor(index: number, gpa: number, len: number, flags: number, next: number): void {
    const w = index * 4;
    this.desc32[w] = gpa % 0x1_0000_0000;
    this.desc32[w + 1] = Math.floor(gpa / 0x1_0000_0000);
    this.desc32[w + 2] = len;
    this.desc32[w + 3] = (flags & 0xffff) | ((next & 0xffff) << 16);
  }

  /**
   * Puts a chain of buffers in the descriptor table and the next avail slot (not yet visible:
   * call `publish()`). Device-readable buffers must come before device-writable ones. With
   * `indirectTableGpa` the buffers go into an indirect table there and the chain takes one ring
   * descriptor. Returns the head index.
   */
  addBuffers(buffers: readonly DriverBuffer[], options: { indirectTableGpa?: number } = {}): number {
    if (buffers.length === 0) throw new Error(`${this.name}: a chain needs at least one buffer`);
    for (let i = 1; i < buffers.length; i++) {
      if (buffers[i - 1]!.writable && !buffers[i]!.writable) throw new Error(`${this.name}: device-readable buffer ${i} follows a device-writable one`);
    }
    for (const b of buffers) {
      if (!Number.isSafeInteger(b.gpa) || b.gpa < 0 || !Number.isInteger(b.len) || b.len < 0 || b.len > 0xffff_ffff) {
        throw new Error(`${this.name}: buffer 0x${b.gpa.toString(16)}+${b.len} is not a valid guest range`);
      }
    }
    const indirectGpa = options.indirectTableGpa;
    const needed = indirectGpa === undefined ? buffers.length : 1;
    if (needed > this.free) throw new Error(`${this.name}: ${needed} descriptors needed, ${this.free} free`);
    const used: number[] = [];
    let head: number;
    if (indirectGpa !== undefined) {
      const tableLen = buffers.length * DESC_SIZE;
      const table = this.memory.translate(indirectGpa, tableLen);
      if (table === null) throw new Error(`${this.name}: indirect table at 0x${indirectGpa.toString(16)}+${tableLen} is not inside one memory region`);
      buffers.forEach((b, i) => {
        const last = i === buffers.length - 1;
        writeDescriptorBytes(table.bytes, table.offset + i * DESC_SIZE, b.gpa, b.len, (b.writable ? VRING_DESC_F_WRITE : 0) | (last ? 0 : VRING_DESC_F_NEXT), last ? 0 : i + 1);
      });
      head = this.allocDescriptor();
      used.push(head);
      this.writeDescriptor(head, indirectGpa, tableLen, VRING_DESC_F_INDIRECT, 0);
    } else {
      const indexes = buffers.map(() => this.allocDescriptor());
      buffers.forEach((b, i) => {
        const last = i === buffers.length - 1;
        this.writeDescriptor(indexes[i]!, b.gpa, b.len, (b.writable ? VRING_DESC_F_WRITE : 0) | (last ? 0 : VRING_DESC_F_NEXT), last ? 0 : indexes[i + 1]!);
      });
      head = indexes[0]!;
      used.push(...indexes);
    }
    this.outstanding.set(head, used);
    this.avail16[2 + (this.availIdx & this.mask)] = head;
    this.availIdx = (this.availIdx + 1) & 0xffff;
    return head;
  }

  /** Makes added chains visible to the device (release store of avail.idx); returns whether to kick. */
  publish(): boolean {
    Atomics.store(this.avail16, 1, this.availIdx);
    return this.needsKick();
  }

  /**
   * Whether the device wants a kick for the chains published since the last decision: EVENT_IDX
   * compares with avail_event, otherwise used.flags NO_NOTIFY decides.
   */
  needsKick(): boolean {
    const newIdx = this.availIdx;
    const oldIdx = this.kickedAvail;
    this.kickedAvail = newIdx;
    if (newIdx === oldIdx) return false;
    if (this.eventIdx) return vringNeedEvent(Atomics.load(this.used16, availEventOffset(this.size) / 2), newIdx, oldIdx);
    return (Atomics.load(this.used16, 0) & VRING_USED_F_NO_NOTIFY) === 0;
  }

  /** Used entries the device published that the driver has not collected. */
  pendingUsed(): number {
    return (Atomics.load(this.used16, 1) - this.lastUsed) & 0xffff;
  }

  /** Collects the next used entry and frees its descriptors, or returns null when there is none. */
  popUsed(): UsedElement | null {
    const published = Atomics.load(this.used16, 1);
    if (published === this.lastUsed) return null;
    if (((published - this.lastUsed) & 0xffff) > this.size) {
      throw new Error(`${this.name}: device moved used.idx to ${published}, more than a ring past ${this.lastUsed}`);
    }
    const w = 1 + (this.lastUsed & this.mask) * 2;
    const id = this.used32[w]!;
    const len = this.used32[w + 1]!;
    const descs = this.outstanding.get(id);
    if (descs === undefined) throw new Error(`${this.name}: device returned head ${id}, which is not outstanding`);
    this.outstanding.delete(id);
    for (const d of descs) {
      this.freeNext[d] = this.freeHead;
      this.freeHead = d;
      this.free++;
    }
    this.lastUsed = (this.lastUsed + 1) & 0xffff;
    return { id, len };
  }

  /**
   * Asks for an interrupt on the next used entry, then re-checks (after a full fence) whether
   * entries arrived meanwhile. Returns true when entries are waiting.
   */
  enableInterrupts(): boolean {
    if (this.eventIdx) Atomics.store(this.avail16, usedEventOffset(this.size) / 2, this.lastUsed);
    else Atomics.store(this.avail16, 0, 0);
    return this.pendingUsed() > 0;
  }

  /**
   * Suppresses interrupts: NO_INTERRUPT without EVENT_IDX; with it, used_event is parked half a
   * ring-index space away so the device's next entries do not cross it.
   */
  disableInterrupts(): void {
    if (this.eventIdx) Atomics.store(this.avail16, usedEventOffset(this.size) / 2, (this.lastUsed + 0x8000) & 0xffff);
    else Atomics.store(this.avail16, 0, VRING_AVAIL_F_NO_INTERRUPT);
  }

  /** Sets used_event directly (EVENT_IDX): interrupt when used.idx passes `index`. */
  setUsedEvent(index: number): void {
    Atomics.store(this.avail16, usedEventOffset(this.size) / 2, index & 0xffff);
  }
}

function writeDescriptorBytes(bytes: Uint8Array, offset: number, gpa: number, len: number, flags: number, next: number): void {
  const lo = gpa % 0x1_0000_0000;
  const hi = Math.floor(gpa / 0x1_0000_0000);
  const put32 = (at: number, v: number): void => {
    bytes[at] = v & 0xff;
    bytes[at + 1] = (v >>> 8) & 0xff;
    bytes[at + 2] = (v >>> 16) & 0xff;
    bytes[at + 3] = (v >>> 24) & 0xff;
  };
  put32(offset, lo);
  put32(offset + 4, hi);
  put32(offset + 8, len);
  bytes[offset + 12] = flags & 0xff;
  bytes[offset + 13] = (flags >>> 8) & 0xff;
  bytes[offset + 14] = next & 0xff;
  bytes[offset + 15] = (next >>> 8) & 0xff;
}
