// The device side of a packed virtqueue (virtio 1.2 §2.8) against a driver played by the test:
// good chains and their used descriptors across the wrap of the ring, rewind, indirect tables,
// hostile rings, event suppression, state handover, dirty logging, a seeded random ring, and
// mergeable receive through NetRxWriter.
import { describe, expect, it } from 'vitest';
import { DescriptorChain, RingError } from '../../virtio/split-queue.js';
import { PackedQueue } from '../../virtio/packed-queue.js';
import { NetRxWriter, RX_NO_BUFFERS } from '../../virtio/net-rx.js';
import type { GuestMemory } from '../../virtio/guest-memory.js';
import { createTestMemory, readBytes, writeBytes, type RegionSpec } from '../support/ring-builder.js';
import {
  PackedRingBuilder,
  VRING_DESC_F_INDIRECT as INDIRECT,
  VRING_DESC_F_NEXT as NEXT,
  VRING_DESC_F_WRITE as WRITE,
  VRING_PACKED_DESC_F_AVAIL as AVAIL,
  VRING_PACKED_DESC_F_USED as USED,
  VRING_PACKED_EVENT_FLAG_DESC as EVENT_DESC,
  VRING_PACKED_EVENT_FLAG_DISABLE as EVENT_DISABLE,
  VRING_PACKED_EVENT_FLAG_ENABLE as EVENT_ENABLE,
  tableEntries,
  writePackedTable,
  type PackedBuffer,
  type PackedDescriptor,
} from '../support/packed-ring-builder.js';
import { mulberry32 as prng } from '../support/seeded-random.js';
import { checkChain, pattern, segmentsOf } from '../support/chain-checks.js';

const WRAP = 0x8000;
const RING_BASE = 0x1000;

interface Setup {
  memory: GuestMemory;
  ring: PackedRingBuilder;
  queue: PackedQueue;
  chain: DescriptorChain;
}

interface SetupOptions {
  size?: number;
  indirect?: boolean;
  eventIdx?: boolean;
  maxChainBytes?: number;
  regions?: RegionSpec[];
  capacity?: number;
  base?: number;
  /** Where driver and device start: slot | wrap << 15. */
  start?: number;
}

function setup(options: SetupOptions = {}): Setup {
  const memory = createTestMemory(options.regions ?? [{ gpa: 0, size: 1 << 20 }]);
  const ring = new PackedRingBuilder(memory, { size: options.size ?? 8, base: options.base ?? RING_BASE, start: options.start });
  const queue = ring.queue({
    indirect: options.indirect ?? true,
    eventIdx: options.eventIdx ?? false,
    maxChainBytes: options.maxChainBytes,
    lastAvail: options.start,
    name: 'vring 0',
  });
  return { memory, ring, queue, chain: new DescriptorChain(options.capacity) };
}


function popOne(s: Setup): DescriptorChain {
  expect(s.queue.popChain(s.chain)).toBe(true);
  return s.chain;
}

/** Flags of a used descriptor the device publishes in round `wrap`. */
const usedFlags = (wrap: number, len: number): number => (wrap === 1 ? AVAIL | USED : 0) | (len > 0 ? WRITE : 0);

/**
 * Pops the chain the driver just posted, expects it rejected for `reason` with all its slots
 * consumed, returns it, and checks that a good chain posted next still goes through.
 */
function expectRejected(s: Setup, reason: RegExp, id: number): void {
  const usedSlot = s.ring.usedIdx;
  const usedWrap = s.ring.usedWrap;
  const c = popOne(s);
  expect(c.ok).toBe(false);
  expect(c.error).toMatch(reason);
  expect(c.head).toBe(id);
  expect(c.segmentCount).toBe(0);
  expect(c.readableLength + c.writableLength).toBe(0);
  // Every slot of the bad chain is consumed: the device stands where the driver will post next.
  expect(s.queue.lastAvail).toBe(s.ring.lastAvail);
  expect(s.queue.hasAvailable()).toBe(false);
  s.queue.pushUsed(c.head, 0);
  s.queue.flushUsed();
  expect(s.ring.takeUsed()).toEqual({ slot: usedSlot, wrap: usedWrap, id, len: 0, flags: usedFlags(usedWrap, 0) });

  const goodId = (id + 1) & 0xffff;
  const goodSlot = s.ring.makeAvailable([{ addr: 0x11000, len: 32, writable: true }], goodId);
  const good = popOne(s);
  expect(good.error).toBeNull();
  expect(good.head).toBe(goodId);
  expect(segmentsOf(good)).toEqual([[0x11000, 32, true]]);
  s.queue.pushUsed(good.head, 32);
  s.queue.flushUsed();
  expect(s.ring.takeUsed()).toMatchObject({ slot: goodSlot, id: goodId, len: 32 });
  expect(s.queue.lastUsed).toBe(s.ring.lastUsed);
}

describe('PackedQueue construction', () => {
  const memory = createTestMemory([{ gpa: 0, size: 0x10000 }]);
  const bytes = memory.regions[0]!.bytes;
  const make = (size: number, desc: number, driver: number, device: number, more: { lastAvail?: number; lastUsed?: number } = {}): PackedQueue =>
    new PackedQueue({ memory, size, descRing: { bytes, offset: desc }, driverEvent: { bytes, offset: driver }, deviceEvent: { bytes, offset: device }, ...more });

  it('takes any size up to 32768, powers of two or not', () => {
    for (const size of [1, 3, 5, 6, 8, 1000, 2048]) expect(make(size, 0, 0x8000, 0x8004).size).toBe(size);
    const big = createTestMemory([{ gpa: 0, size: 32768 * 16 + 8 }]);
    const b = big.regions[0]!.bytes;
    expect(new PackedQueue({ memory: big, size: 32768, descRing: { bytes: b, offset: 0 }, driverEvent: { bytes: b, offset: 32768 * 16 }, deviceEvent: { bytes: b, offset: 32768 * 16 + 4 } }).size).toBe(32768);
    for (const size of [0, 32769, 1.5, -8, Number.NaN]) expect(() => make(size, 0, 0x8000, 0x8004)).toThrow(RingError);
  });

  it('refuses a misaligned or oversized ring and event areas', () => {
    expect(() => make(8, 8, 0x8000, 0x8004)).toThrow(/descriptor ring at host offset 8 is not 16-byte aligned/);
    expect(() => make(8, 0, 0x8002, 0x8004)).toThrow(/driver event area .* not 4-byte aligned/);
    expect(() => make(8, 0, 0x8000, 0x8006)).toThrow(/device event area .* not 4-byte aligned/);
    expect(() => make(8, 0x10000 - 64, 0x8000, 0x8004)).toThrow(/does not fit/);
    expect(() => make(8, 0, 0x10000 - 2, 0x8004)).toThrow(/does not fit/);
    expect(() => make(8, 0, 0x8000, -4)).toThrow(/does not fit/);
  });

  it('starts at slot 0 in wrap round 1, with the used index at the avail index unless told', () => {
    const q = make(8, 0, 0x8000, 0x8004);
    expect([q.lastAvail, q.lastUsed]).toEqual([WRAP, WRAP]);
    expect(make(8, 0, 0x8000, 0x8004, { lastAvail: 5 }).lastUsed).toBe(5);
    const both = make(8, 0, 0x8000, 0x8004, { lastAvail: 3 | WRAP, lastUsed: 2 });
    expect([both.lastAvail, both.lastUsed]).toEqual([3 | WRAP, 2]);
  });

  it('refuses indexes whose slot is outside the ring', () => {
    for (const bad of [{ lastAvail: 6 }, { lastAvail: 6 | WRAP }, { lastAvail: 2, lastUsed: 7 | WRAP }, { lastAvail: 0x10000 }, { lastAvail: -1 }, { lastUsed: 0x7fff }, { lastAvail: 1.5 }]) {
      expect(() => make(6, 0, 0x8000, 0x8004, bad)).toThrow(/not a slot below 6 with a wrap bit/);
    }
    expect(make(6, 0, 0x8000, 0x8004, { lastAvail: 5, lastUsed: 5 | WRAP }).lastUsed).toBe(5 | WRAP);
  });

  it('keeps the chain byte limit within 1..2^32', () => {
    const q = make(8, 0, 0x8000, 0x8004);
    q.maxChainBytes = 2 ** 32;
    expect(() => (q.maxChainBytes = 2 ** 32 + 1)).toThrow(/outside 1..2\^32/);
    expect(() => (q.maxChainBytes = 0)).toThrow(RingError);
    expect(() => make(8, 0, 0x8000, 0x8004, { maxChainBytes: 0 } as never)).toThrow(RingError);
  });
});

describe('PackedQueue simple chains', () => {
  it('pops nothing from an empty ring', () => {
    const s = setup();
    expect(s.queue.hasAvailable()).toBe(false);
    expect(s.queue.availableCount()).toBe(0);
    expect(s.queue.popChain(s.chain)).toBe(false);
    expect(s.queue.lastAvail).toBe(WRAP);
  });

  it('walks a readable-only chain: segments, lengths, data, and the id of its last descriptor', () => {
    const s = setup();
    const data = pattern(300);
    writeBytes(s.memory, 0x10000, data.subarray(0, 100));
    writeBytes(s.memory, 0x12000, data.subarray(100));
    // Only the last descriptor's id counts; the others carry noise the device must ignore.
    s.ring.post([
      { addr: 0x10000, len: 100, id: 0x1111, flags: NEXT },
      { addr: 0x12000, len: 200, id: 42 },
    ]);
    const c = popOne(s);
    expect(c.ok).toBe(true);
    expect(c.head).toBe(42);
    expect(c.descriptorCount).toBe(2);
    expect(c.indirect).toBe(false);
    expect(c.readableSegments).toBe(2);
    expect([c.readableLength, c.writableLength]).toEqual([300, 0]);
    expect(segmentsOf(c)).toEqual([
      [0x10000, 100, false],
      [0x12000, 200, false],
    ]);
    const out = new Uint8Array(300);
    expect(c.copyOut(0, out, 0, 300)).toBe(300);
    expect(out).toEqual(data);
    expect(s.queue.lastAvail).toBe(2 | WRAP);
    expect(s.queue.popChain(s.chain)).toBe(false);
  });

  it('walks a writable-only chain and writes into its buffers', () => {
    const s = setup();
    s.ring.makeAvailable(
      [
        { addr: 0x13000, len: 64, writable: true },
        { addr: 0x14000, len: 64, writable: true },
        { addr: 0x15000, len: 64, writable: true },
      ],
      7,
    );
    const c = popOne(s);
    expect(c.head).toBe(7);
    expect([c.readableSegments, c.readableLength, c.writableLength]).toEqual([0, 0, 192]);
    expect(segmentsOf(c)).toEqual([
      [0x13000, 64, true],
      [0x14000, 64, true],
      [0x15000, 64, true],
    ]);
    const reply = pattern(150, 5);
    expect(c.copyIn(reply, 0, 150, 0)).toBe(150);
    expect(readBytes(s.memory, 0x13000, 64)).toEqual(reply.subarray(0, 64));
    expect(readBytes(s.memory, 0x14000, 64)).toEqual(reply.subarray(64, 128));
    expect(readBytes(s.memory, 0x15000, 22)).toEqual(reply.subarray(128));
  });

  it('walks readable then writable buffers, skipping zero-length descriptors', () => {
    const s = setup();
    s.ring.makeAvailable(
      [
        { addr: 0x10000, len: 0 },
        { addr: 0x10000, len: 10 },
        { addr: 0xdead_0000, len: 0, writable: true }, // never translated: nothing goes through it
        { addr: 0x11000, len: 20, writable: true },
      ],
      3,
    );
    const c = popOne(s);
    expect(c.ok).toBe(true);
    expect(c.descriptorCount).toBe(4);
    expect(segmentsOf(c)).toEqual([
      [0x10000, 10, false],
      [0x11000, 20, true],
    ]);
  });

  it('accepts a chain of exactly the ring size', () => {
    const s = setup({ size: 5 });
    s.ring.makeAvailable([0, 1, 2, 3, 4].map((i) => ({ addr: 0x10000 + i * 0x100, len: 16, writable: i > 2 })), 9);
    const c = popOne(s);
    expect(c.ok).toBe(true);
    expect(c.descriptorCount).toBe(5);
    expect([c.readableLength, c.writableLength]).toEqual([48, 32]);
    expect(s.queue.lastAvail).toBe(0); // all five slots: the next round, wrap 0
    s.queue.pushUsed(c.head, 32);
    s.queue.flushUsed();
    expect(s.ring.takeUsed()).toEqual({ slot: 0, wrap: 1, id: 9, len: 32, flags: AVAIL | USED | WRITE });
    expect(s.queue.lastUsed).toBe(0);
  });

  it('splits a buffer that straddles two adjacent regions', () => {
    const s = setup({ regions: [{ gpa: 0, size: 0x10000 }, { gpa: 0x10000, size: 0x10000 }] });
    const data = pattern(0x40, 3);
    writeBytes(s.memory, 0xffe0, data);
    s.ring.makeAvailable([{ addr: 0xffe0, len: 0x40 }], 1);
    const c = popOne(s);
    expect(segmentsOf(c)).toEqual([
      [0xffe0, 0x20, false],
      [0x10000, 0x20, false],
    ]);
    const out = new Uint8Array(0x40);
    c.copyOut(0, out, 0, 0x40);
    expect(out).toEqual(data);
  });

  it('makes used descriptors visible only on flushUsed, with id, len, WRITE and wrap bits', () => {
    const s = setup();
    s.ring.makeAvailable([{ addr: 0x10000, len: 64 }], 5); // slot 0
    s.ring.makeAvailable([{ addr: 0x11000, len: 16 }, { addr: 0x12000, len: 128, writable: true }], 6); // slots 1-2
    s.ring.makeAvailable([{ addr: 0x13000, len: 128, writable: true }], 7); // slot 3
    const heads: number[] = [];
    while (s.queue.popChain(s.chain)) heads.push(s.chain.head);
    expect(heads).toEqual([5, 6, 7]);
    s.queue.pushUsed(5, 0);
    s.queue.pushUsed(6, 100);
    expect(s.queue.pendingUsedCount).toBe(2);
    expect(s.ring.peekUsed()).toBeNull();
    // The driver's descriptors still say "available" until the flags flip.
    expect(s.ring.readDescriptor(0).flags).toBe(AVAIL);
    expect(s.queue.lastUsed).toBe(3 | WRAP);
    s.queue.flushUsed();
    expect(s.queue.pendingUsedCount).toBe(0);
    expect(s.ring.takeUsed()).toEqual({ slot: 0, wrap: 1, id: 5, len: 0, flags: AVAIL | USED });
    expect(s.ring.takeUsed()).toEqual({ slot: 1, wrap: 1, id: 6, len: 100, flags: AVAIL | USED | WRITE });
    expect(s.ring.peekUsed()).toBeNull();
    s.queue.pushUsed(7, 128);
    expect(s.ring.peekUsed()).toBeNull();
    s.queue.flushUsed();
    expect(s.ring.takeUsed()).toEqual({ slot: 3, wrap: 1, id: 7, len: 128, flags: AVAIL | USED | WRITE });
    expect(s.queue.lastUsed).toBe(s.ring.lastUsed);
    s.queue.flushUsed(); // nothing pending: no effect
    expect(s.ring.peekUsed()).toBeNull();
  });

  it('publishes used descriptors of the second round with both wrap bits clear', () => {
    const s = setup({ size: 4, start: 3 | WRAP });
    s.ring.makeAvailable([{ addr: 0x10000, len: 8 }], 1); // slot 3, round 1
    s.ring.makeAvailable([{ addr: 0x10000, len: 8, writable: true }], 2); // slot 0, round 0
    expect(s.ring.readDescriptor(0).flags).toBe(USED | WRITE); // available in round 0: AVAIL 0, USED 1
    while (s.queue.popChain(s.chain)) s.queue.pushUsed(s.chain.head, s.chain.writableLength);
    s.queue.flushUsed();
    expect(s.ring.takeAllUsed()).toEqual([
      { slot: 3, wrap: 1, id: 1, len: 0, flags: AVAIL | USED },
      { slot: 0, wrap: 0, id: 2, len: 8, flags: WRITE },
    ]);
  });

  it('refuses a used entry with no chain taken', () => {
    const s = setup();
    expect(() => s.queue.pushUsed(0, 0)).toThrow(/no chain taken/);
  });
});

describe('PackedQueue across the wrap of the ring', () => {
  interface Posted {
    id: number;
    slot: number;
    wrap: number;
    buffers: PackedBuffer[];
    data: Uint8Array[];
  }

  for (const size of [4, 5, 6, 8]) {
    it(`runs ${8 * size} chains of 1-3 descriptors through a ring of ${size}`, () => {
      const s = setup({ size });
      const total = 8 * size;
      const inFlight: Posted[] = [];
      const wrapsSeen = new Set<number>();
      let posted = 0;
      let completed = 0;
      let crossing = 0;
      let batch = 0;
      while (completed < total) {
        // The driver posts 1-3 chains while it has free slots: every slot comes back each turn.
        let free = size;
        for (let b = 0; b < 1 + (batch % 3) && posted < total; b++) {
          const n = 1 + ((posted * 5 + batch) % 3);
          if (n > free) break;
          free -= n;
          const buffers: PackedBuffer[] = [];
          const data: Uint8Array[] = [];
          for (let d = 0; d < n; d++) {
            // One chain in three is all readable; the rest end in a writable buffer.
            const writable = d === n - 1 && posted % 3 !== 0;
            const addr = 0x20000 + (posted % 64) * 0x400 + d * 0x100;
            const bytes = pattern(16 + d * 8, posted + d);
            if (!writable) writeBytes(s.memory, addr, bytes);
            buffers.push({ addr, len: bytes.length, writable });
            data.push(bytes);
          }
          const wrap = s.ring.availWrap;
          const slot = s.ring.makeAvailable(buffers, 0x100 + posted);
          if (slot + n > size) crossing++;
          inFlight.push({ id: 0x100 + posted, slot, wrap, buffers, data });
          posted++;
        }
        batch++;

        let k = 0;
        while (s.queue.popChain(s.chain)) {
          const want = inFlight[k++]!;
          const c = s.chain;
          expect(c.ok).toBe(true);
          expect(c.head).toBe(want.id);
          expect(c.descriptorCount).toBe(want.buffers.length);
          expect(segmentsOf(c)).toEqual(want.buffers.map((b) => [b.addr, b.len, b.writable === true]));
          const readable = want.buffers.filter((b) => !b.writable);
          const out = new Uint8Array(c.readableLength);
          c.copyOut(0, out, 0, out.length);
          expect(Array.from(out)).toEqual(readable.flatMap((_, i) => Array.from(want.data[i]!)));
          const reply = pattern(c.writableLength, want.id);
          c.copyIn(reply, 0, reply.length, 0);
          s.queue.pushUsed(c.head, c.writableLength);
        }
        expect(k).toBe(inFlight.length);
        expect(s.queue.lastAvail).toBe(s.ring.lastAvail);
        wrapsSeen.add(s.queue.lastAvail >>> 15);
        s.queue.flushUsed();
        expect(s.queue.lastUsed).toBe(s.queue.lastAvail);

        for (const want of inFlight.splice(0)) {
          const used = s.ring.takeUsed();
          const last = want.buffers[want.buffers.length - 1]!;
          const len = last.writable ? last.len : 0;
          // The used descriptor lands on the chain's first slot, marked with that slot's round.
          expect(used).toEqual({ slot: want.slot, wrap: want.wrap, id: want.id, len, flags: usedFlags(want.wrap, len) });
          if (last.writable) expect(readBytes(s.memory, last.addr, len)).toEqual(pattern(len, want.id));
          completed++;
        }
        expect(s.ring.peekUsed()).toBeNull();
        expect(s.ring.lastUsed).toBe(s.queue.lastUsed);
      }
      expect(wrapsSeen).toEqual(new Set([0, 1]));
      expect(crossing).toBeGreaterThan(0);
      expect(s.queue.popChain(s.chain)).toBe(false);
    });
  }
});

describe('PackedQueue rewind', () => {
  const buffersOf = (k: number, n: number): PackedBuffer[] =>
    Array.from({ length: n }, (_, d) => ({ addr: 0x10000 + k * 0x1000 + d * 0x100, len: 32 + d, writable: d === n - 1 }));

  it('gives back the last one or two chains, which pop again unchanged', () => {
    const s = setup({ size: 8 });
    s.ring.makeAvailable(buffersOf(0, 1), 10);
    s.ring.makeAvailable(buffersOf(1, 2), 11);
    s.ring.makeAvailable(buffersOf(2, 3), 12);
    const seen: [number, [number, number, boolean][]][] = [];
    for (let i = 0; i < 3; i++) seen.push([popOne(s).head, segmentsOf(s.chain)]);
    expect(s.queue.lastAvail).toBe(6 | WRAP);

    s.queue.rewind(1);
    expect(s.queue.lastAvail).toBe(3 | WRAP);
    expect(s.queue.availableCount()).toBe(1);
    expect([popOne(s).head, segmentsOf(s.chain)]).toEqual(seen[2]);

    s.queue.rewind(2);
    expect(s.queue.lastAvail).toBe(1 | WRAP);
    expect([popOne(s).head, segmentsOf(s.chain)]).toEqual(seen[1]);
    expect([popOne(s).head, segmentsOf(s.chain)]).toEqual(seen[2]);
    expect(s.queue.popChain(s.chain)).toBe(false);

    s.queue.rewind(0);
    expect(() => s.queue.rewind(4)).toThrow(/cannot rewind 4 chains with 3 taken/);
    for (const id of [10, 11, 12]) s.queue.pushUsed(id, 1);
    expect(() => s.queue.rewind(1)).toThrow(RingError); // pushed chains cannot be given back
    s.queue.flushUsed();
    expect(s.ring.takeAllUsed().map((u) => [u.slot, u.id])).toEqual([
      [0, 10],
      [1, 11],
      [3, 12],
    ]);
  });

  it('rewinds across the end of the ring and back into the earlier round', () => {
    const s = setup({ size: 6, start: 4 | WRAP });
    s.ring.makeAvailable(buffersOf(0, 3), 20); // slots 4, 5, 0
    s.ring.makeAvailable(buffersOf(1, 2), 21); // slots 1, 2 in round 0
    const first = [popOne(s).head, segmentsOf(s.chain)];
    const second = [popOne(s).head, segmentsOf(s.chain)];
    expect(s.queue.lastAvail).toBe(3);

    s.queue.rewind(1);
    expect(s.queue.lastAvail).toBe(1);
    expect([popOne(s).head, segmentsOf(s.chain)]).toEqual(second);

    s.queue.rewind(2);
    expect(s.queue.lastAvail).toBe(4 | WRAP);
    expect(s.queue.availableCount()).toBe(2);
    expect([popOne(s).head, segmentsOf(s.chain)]).toEqual(first);
    expect([popOne(s).head, segmentsOf(s.chain)]).toEqual(second);

    s.queue.pushUsed(20, 0);
    s.queue.pushUsed(21, 0);
    s.queue.flushUsed();
    expect(s.ring.takeAllUsed().map((u) => [u.slot, u.wrap, u.id])).toEqual([
      [4, 1, 20],
      [1, 0, 21],
    ]);
    expect(s.queue.lastUsed).toBe(3);
  });

  it('rewinds only chains still held after older ones were pushed', () => {
    const s = setup({ size: 4 });
    s.ring.makeAvailable(buffersOf(0, 2), 1);
    s.ring.makeAvailable(buffersOf(1, 1), 2);
    popOne(s);
    s.queue.pushUsed(1, 0);
    popOne(s);
    s.queue.rewind(1);
    expect(s.queue.lastAvail).toBe(2 | WRAP);
    expect(popOne(s).head).toBe(2);
    s.queue.pushUsed(2, 0);
    s.queue.flushUsed();
    expect(s.ring.takeAllUsed().map((u) => [u.slot, u.id])).toEqual([
      [0, 1],
      [2, 2],
    ]);
  });
});

describe('PackedQueue available count', () => {
  it('counts chains, not descriptors, up to its limit', () => {
    const s = setup({ size: 8 });
    expect(s.queue.availableCount()).toBe(0);
    expect(s.queue.hasAvailable()).toBe(false);
    s.ring.makeAvailable([{ addr: 0x10000, len: 8 }], 1);
    s.ring.makeAvailable([{ addr: 0x10000, len: 8 }, { addr: 0x10000, len: 8 }], 2);
    s.ring.makeAvailable([{ addr: 0x10000, len: 8 }, { addr: 0x10000, len: 8 }, { addr: 0x10000, len: 8 }], 3);
    expect(s.queue.hasAvailable()).toBe(true);
    expect(s.queue.availableCount()).toBe(3);
    expect(s.queue.availableCount(2)).toBe(2);
    expect(s.queue.availableCount(0)).toBe(0);
    popOne(s);
    expect(s.queue.availableCount()).toBe(2);
    popOne(s);
    popOne(s);
    expect(s.queue.availableCount()).toBe(0);
    expect(s.queue.hasAvailable()).toBe(false);
  });

  it('counts chains across the end of the ring, and not a chain whose head is not yet published', () => {
    const s = setup({ size: 4, start: 2 | WRAP });
    s.ring.makeAvailable([{ addr: 0x10000, len: 8 }, { addr: 0x10000, len: 8 }, { addr: 0x10000, len: 8 }], 1); // 2, 3, 0
    s.ring.makeAvailable([{ addr: 0x10000, len: 8 }], 2); // 1
    expect(s.queue.availableCount()).toBe(2);
    // A driver half way through writing a chain: its tail is there, its head flags not yet.
    const t = setup({ size: 4 });
    t.ring.writeDescriptor(1, { addr: 0x10000, len: 8, id: 1, flags: AVAIL });
    t.ring.writeDescriptor(0, { addr: 0x10000, len: 8, flags: NEXT });
    expect(t.queue.availableCount()).toBe(0);
    expect(t.queue.hasAvailable()).toBe(false);
    t.ring.setFlags(0, NEXT | AVAIL);
    expect(t.queue.availableCount()).toBe(1);
  });
});

describe('PackedQueue indirect descriptors', () => {
  it('turns the entries of an indirect table into the chain, aligned or not', () => {
    for (const tableGpa of [0x20000, 0x20003, 0x20006]) {
      const s = setup();
      s.ring.postIndirect(
        tableGpa,
        [
          { addr: 0x10000, len: 12 },
          { addr: 0x10100, len: 1000 },
          { addr: 0x11000, len: 1500, writable: true },
        ],
        77,
      );
      const c = popOne(s);
      expect(c.error).toBeNull();
      expect(c.indirect).toBe(true);
      expect(c.head).toBe(77);
      expect(c.descriptorCount).toBe(4);
      expect(segmentsOf(c)).toEqual([
        [0x10000, 12, false],
        [0x10100, 1000, false],
        [0x11000, 1500, true],
      ]);
      expect(s.queue.lastAvail).toBe(1 | WRAP); // one slot, however long the table
      s.queue.pushUsed(c.head, 1500);
      s.queue.flushUsed();
      expect(s.ring.takeUsed()).toEqual({ slot: 0, wrap: 1, id: 77, len: 1500, flags: AVAIL | USED | WRITE });
    }
  });

  it('ignores NEXT and ids inside a table: its entries are the chain, in order', () => {
    const s = setup();
    const len = writePackedTable(s.memory, 0x20000, [
      { addr: 0x10000, len: 8, id: 3, flags: NEXT },
      { addr: 0x11000, len: 8, id: 9, flags: WRITE | NEXT },
    ]);
    s.ring.post([{ addr: 0x20000, len, id: 5, flags: INDIRECT | WRITE }]); // WRITE on the indirect descriptor means nothing
    const c = popOne(s);
    expect(c.ok).toBe(true);
    expect(c.head).toBe(5);
    expect(segmentsOf(c)).toEqual([
      [0x10000, 8, false],
      [0x11000, 8, true],
    ]);
  });

  it('takes a table as long as the ring', () => {
    const s = setup({ size: 4 });
    s.ring.postIndirect(0x20000, [0, 1, 2, 3].map((i) => ({ addr: 0x10000 + i * 0x100, len: 8, writable: true })), 1);
    expect(popOne(s).segmentCount).toBe(4);
  });

  it('rejects an indirect descriptor when INDIRECT_DESC was not negotiated', () => {
    const s = setup({ indirect: false });
    s.ring.postIndirect(0x20000, [{ addr: 0x10000, len: 8 }], 4);
    expectRejected(s, /indirect but INDIRECT_DESC was not negotiated/, 4);
  });

  it('rejects an indirect descriptor that is not the chain\'s only descriptor', () => {
    const withNext = setup();
    const len = writePackedTable(withNext.memory, 0x20000, tableEntries([{ addr: 0x10000, len: 8 }]));
    withNext.ring.post([
      { addr: 0x20000, len, flags: INDIRECT | NEXT },
      { addr: 0x11000, len: 8, id: 4 },
    ]);
    expectRejected(withNext, /not the chain's only descriptor/, 4);

    const second = setup();
    writePackedTable(second.memory, 0x20000, tableEntries([{ addr: 0x10000, len: 8 }]));
    second.ring.post([
      { addr: 0x11000, len: 8, flags: NEXT },
      { addr: 0x20000, len, id: 4, flags: INDIRECT },
    ]);
    expectRejected(second, /not the chain's only descriptor/, 4);
  });

  it('rejects a table of a bad length, outside memory, across regions or above 2^53', () => {
    const cases: { desc: PackedDescriptor; reason: RegExp; regions?: RegionSpec[] }[] = [
      { desc: { addr: 0x20000, len: 0 }, reason: /has length 0: not a non-zero multiple of 16 up to 128/ },
      { desc: { addr: 0x20000, len: 17 }, reason: /has length 17/ },
      { desc: { addr: 0x20000, len: 24 }, reason: /has length 24/ },
      { desc: { addr: 0x20000, len: 8 * 16 + 16 }, reason: /has length 144/ },
      { desc: { addr: 0x200000, len: 32 }, reason: /at 0x200000\+32 is not inside one memory region/ },
      { desc: { addr: 0xfff0, len: 32 }, reason: /is not inside one memory region/, regions: [{ gpa: 0, size: 0x10000 }, { gpa: 0x10000, size: 0x30000 }] },
      { desc: { addr: 2 ** 60, len: 32 }, reason: /indirect table .* has an address above 2\^53/ },
    ];
    for (const c of cases) {
      const s = setup({ regions: c.regions });
      writePackedTable(s.memory, c.desc.addr < 0x100000 ? c.desc.addr : 0x20000, tableEntries([{ addr: 0x11000, len: 8 }, { addr: 0x11000, len: 8 }]));
      s.ring.post([{ ...c.desc, id: 0x300, flags: INDIRECT }]);
      expectRejected(s, c.reason, 0x300);
    }
  });

  it('rejects a nested indirect descriptor, readable after writable, and bad buffers inside a table', () => {
    const nested = setup();
    writePackedTable(nested.memory, 0x21000, tableEntries([{ addr: 0x11000, len: 8 }]));
    const len = writePackedTable(nested.memory, 0x20000, [{ addr: 0x10000, len: 8 }, { addr: 0x21000, len: 16, flags: INDIRECT }]);
    nested.ring.post([{ addr: 0x20000, len, id: 1, flags: INDIRECT }]);
    expectRejected(nested, /contains another indirect descriptor/, 1);

    const order = setup();
    order.ring.postIndirect(0x20000, [{ addr: 0x10000, len: 8, writable: true }, { addr: 0x11000, len: 8 }], 2);
    expectRejected(order, /device-readable after a device-writable/, 2);

    const outside = setup();
    outside.ring.postIndirect(0x20000, [{ addr: 0x10000, len: 8 }, { addr: 0x400000, len: 8, writable: true }], 3);
    expectRejected(outside, /unmapped guest memory at 0x400000/, 3);

    const tooLong = setup({ maxChainBytes: 100 });
    tooLong.ring.postIndirect(0x20000, [{ addr: 0x10000, len: 60 }, { addr: 0x11000, len: 41, writable: true }], 4);
    expectRejected(tooLong, /longer than 100 bytes/, 4);
  });
});

describe('PackedQueue hostile direct chains', () => {
  const regions = [{ gpa: 0, size: 0x20000 }, { gpa: 0x30000, size: 0x10000 }];
  const cases: [string, PackedDescriptor[], RegExp, number?][] = [
    ['an address outside memory', [{ addr: 0x10000, len: 8, flags: NEXT }, { addr: 0x50000, len: 8 }], /unmapped guest memory at 0x50000/],
    ['a buffer running into a hole', [{ addr: 0x1fff0, len: 0x20 }], /unmapped guest memory at 0x20000/],
    ['an address above 2^53', [{ addr: 2 ** 60, len: 8, flags: WRITE }], /above 2\^53/],
    ['an address that overflows with its length', [{ addr: 2 ** 53 - 4, len: 8 }], /overflows the address space/],
    ['lengths that overflow 2^32 together', [{ addr: 0x10000, len: 100, flags: NEXT }, { addr: 0x10000, len: 0xffff_ffff, flags: WRITE }], /longer than 4294967296 bytes/, 2 ** 32],
    ['readable after writable', [{ addr: 0x10000, len: 8, flags: WRITE | NEXT }, { addr: 0x11000, len: 8, flags: NEXT }, { addr: 0x11000, len: 8, flags: WRITE }], /device-readable after a device-writable/],
    ['more bytes than maxChainBytes', [{ addr: 0x10000, len: 400, flags: NEXT }, { addr: 0x11000, len: 601, flags: WRITE }], /longer than 1000 bytes/, 1000],
  ];
  for (const [what, descs, reason, maxChainBytes] of cases) {
    it(`rejects ${what}, consumes its slots and goes on`, () => {
      // Start near the end of the ring, so a bad chain also crosses it.
      const s = setup({ size: 4, regions, maxChainBytes, start: 2 | WRAP });
      const last = descs.length - 1;
      s.ring.post(descs.map((d, i) => (i === last ? { ...d, id: 0xabc } : d)));
      expectRejected(s, reason, 0xabc);
    });
  }

  it('keeps the values read during the walk when the guest rewrites the descriptor', () => {
    const s = setup();
    const slot = s.ring.makeAvailable([{ addr: 0x10000, len: 64 }], 1);
    const c = popOne(s);
    s.ring.writeDescriptor(slot, { addr: 0x9000_0000, len: 0xffff_ffff, flags: AVAIL | WRITE });
    expect(segmentsOf(c)).toEqual([[0x10000, 64, false]]);
  });

  /** A ring of `size` whose every descriptor is available and has NEXT: a chain with no end. */
  function endless(size: number): Setup {
    const s = setup({ size, maxChainBytes: 2 ** 32 });
    for (let slot = 0; slot < size; slot++) s.ring.writeDescriptor(slot, { addr: 0x10000, len: 8, id: slot, flags: NEXT | AVAIL });
    return s;
  }

  function expectBroken(s: Setup): void {
    expect(s.queue.broken).toBe(true);
    expect(() => s.queue.popChain(s.chain)).toThrow(/vring 0: queue is broken/);
    expect(() => s.queue.availableCount()).toThrow(/vring 0: queue is broken/);
    // Still reported as work, so that a poll runs the burst that meets the error and stops the ring.
    expect(s.queue.hasAvailable()).toBe(true);
    expect(s.queue.enableNotifications()).toBe(true);
  }

  for (const size of [1, 5, 8]) {
    it(`breaks the queue on a ring of ${size} that is one endless chain, found by popChain`, () => {
      const s = endless(size);
      expect(s.queue.hasAvailable()).toBe(true);
      expect(() => s.queue.popChain(s.chain)).toThrow(new RegExp(`chain from slot 0 is longer than the ring of ${size}`));
      expectBroken(s);
    });

    it(`breaks the queue on a ring of ${size} that is one endless chain, found by availableCount`, () => {
      const s = endless(size);
      expect(() => s.queue.availableCount()).toThrow(RingError);
      expectBroken(s);
    });
  }

  it('names the slot and the ring size when a chain is longer than the ring', () => {
    const s = setup({ size: 4, start: 2 | WRAP });
    for (let i = 0; i < 4; i++) s.ring.writeDescriptor(i, { addr: 0x10000, len: 8, flags: NEXT | (i >= 2 ? AVAIL : USED) });
    expect(() => s.queue.popChain(s.chain)).toThrow(/chain from slot 2 is longer than the ring of 4/);
  });

  it('breaks the queue when the driver makes available again a slot the device still holds', () => {
    const s = setup({ size: 4 });
    for (let i = 0; i < 4; i++) s.ring.makeAvailable([{ addr: 0x10000 + i * 0x100, len: 8, writable: true }], i);
    for (let i = 0; i < 4; i++) popOne(s);
    s.queue.pushUsed(0, 8);
    s.queue.pushUsed(1, 8);
    // Two chains pushed but not flushed: the driver cannot have seen them, yet it reposts slot 0
    // for the next round as if it had.
    s.ring.writeDescriptor(0, { addr: 0x10000, len: 8, id: 9, flags: USED | WRITE });
    expect(s.queue.hasAvailable()).toBe(true);
    expect(() => s.queue.popChain(s.chain)).toThrow(/chain from slot 0 runs into slots the device has not returned \(5 slots taken in a ring of 4\)/);
    expect(s.queue.broken).toBe(true);
  });

  it('lets the driver repost slots as soon as their used descriptors are published', () => {
    const s = setup({ size: 4 });
    for (let round = 0; round < 6; round++) {
      while (s.ring.outstandingChains < 4) s.ring.makeAvailable([{ addr: 0x10000, len: 8, writable: true }], round * 4 + s.ring.outstandingChains);
      let n = 0;
      while (s.queue.popChain(s.chain)) {
        n++;
        s.queue.pushUsed(s.chain.head, 8);
        if (n === 2) s.queue.flushUsed();
      }
      s.queue.flushUsed();
      // The driver takes two back and posts again before taking the other two.
      s.ring.takeUsed();
      s.ring.takeUsed();
      s.ring.makeAvailable([{ addr: 0x10000, len: 8, writable: true }], 100 + round);
      expect(popOne(s).head).toBe(100 + round);
      s.queue.pushUsed(s.chain.head, 8);
      s.queue.flushUsed();
      expect(s.ring.takeAllUsed()).toHaveLength(3);
    }
  });
});

describe('PackedQueue buffer ids', () => {
  it('echoes ids unchanged, even ids at or beyond the ring size', () => {
    const s = setup({ size: 8 });
    const ids = [8, 100, 0xffff, 0x8000, 7, 7];
    for (const id of ids) s.ring.makeAvailable([{ addr: 0x10000, len: 8 }], id);
    const heads: number[] = [];
    while (s.queue.popChain(s.chain)) {
      expect(s.chain.ok).toBe(true);
      heads.push(s.chain.head);
      s.queue.pushUsed(s.chain.head, 0);
    }
    expect(heads).toEqual(ids);
    s.queue.flushUsed();
    expect(s.ring.takeAllUsed().map((u) => [u.slot, u.id])).toEqual(ids.map((id, i) => [i, id]));
  });
});

describe('PackedQueue notifications', () => {
  /** Posts, takes and returns chains of the given lengths, and publishes them in one flush. */
  function publish(s: Setup, ...lengths: number[]): void {
    for (const n of lengths) s.ring.makeAvailable(Array.from({ length: n }, () => ({ addr: 0x10000, len: 8, writable: true })), n);
    while (s.queue.popChain(s.chain)) s.queue.pushUsed(s.chain.head, 8);
    s.queue.flushUsed();
    s.ring.takeAllUsed();
  }

  it('interrupts with the driver\'s flags ENABLE and never with DISABLE', () => {
    const s = setup();
    s.ring.setDriverEvent(EVENT_ENABLE);
    publish(s, 1);
    expect(s.queue.needsNotification()).toBe(true);
    publish(s, 2);
    expect(s.queue.needsNotification()).toBe(true);
    s.ring.setDriverEvent(EVENT_DISABLE);
    publish(s, 1);
    expect(s.queue.needsNotification()).toBe(false);
    s.ring.setDriverEvent(EVENT_DISABLE, 4 | WRAP); // off_wrap means nothing without DESC
    publish(s, 1);
    expect(s.queue.needsNotification()).toBe(false);
    s.ring.setDriverEvent(EVENT_ENABLE);
    publish(s, 1);
    expect(s.queue.needsNotification()).toBe(true);
  });

  it('treats DESC as ENABLE when EVENT_IDX was not negotiated', () => {
    const s = setup({ eventIdx: false });
    s.ring.setDriverEvent(EVENT_DESC, 6 | WRAP);
    publish(s, 1);
    expect(s.queue.needsNotification()).toBe(true);
    publish(s, 1);
    expect(s.queue.needsNotification()).toBe(true);
  });

  it('with DESC and EVENT_IDX, interrupts only when the used index passes off_wrap in its round', () => {
    const s = setup({ size: 8, eventIdx: true });
    s.ring.setDriverEvent(EVENT_DESC, 0 | WRAP);
    publish(s, 1); // used index 1, round 1: the first decision always interrupts
    expect(s.queue.needsNotification()).toBe(true);

    s.ring.setDriverEvent(EVENT_DESC, 3 | WRAP);
    publish(s, 1); // 2
    expect(s.queue.needsNotification()).toBe(false);
    publish(s, 1); // 3: slot 3 not written yet
    expect(s.queue.needsNotification()).toBe(false);
    publish(s, 1); // 4: slot 3 written
    expect(s.queue.needsNotification()).toBe(true);
    publish(s, 1); // 5: already passed
    expect(s.queue.needsNotification()).toBe(false);

    // Across the end of the ring: slots 5, 6, 7 in one chain, the event at 6 of round 1.
    s.ring.setDriverEvent(EVENT_DESC, 6 | WRAP);
    publish(s, 3); // 0, round 0
    expect(s.queue.lastUsed).toBe(0);
    expect(s.queue.needsNotification()).toBe(true);

    s.ring.setDriverEvent(EVENT_DESC, 1); // slot 1 of round 0
    publish(s, 1); // 1
    expect(s.queue.needsNotification()).toBe(false);
    publish(s, 1); // 2
    expect(s.queue.needsNotification()).toBe(true);

    // Slot 4 of the next round (1), not of this one: passing slot 4 now does not count.
    s.ring.setDriverEvent(EVENT_DESC, 4 | WRAP);
    publish(s, 3); // 5, round 0
    expect(s.queue.needsNotification()).toBe(false);
    publish(s, 1, 2); // 0, round 1
    expect(s.queue.lastUsed).toBe(0 | WRAP);
    expect(s.queue.needsNotification()).toBe(false);
    publish(s, 4); // 4, round 1: slot 4 not written yet
    expect(s.queue.needsNotification()).toBe(false);
    publish(s, 2); // 6: one chain over slots 4 and 5
    expect(s.queue.needsNotification()).toBe(true);

    // A crossing of the end of the ring that stops short of the event slot.
    s.ring.setDriverEvent(EVENT_DESC, 1); // slot 1 of round 0
    publish(s, 3); // slots 6, 7, 0: used index 1, round 0
    expect(s.queue.lastUsed).toBe(1);
    expect(s.queue.needsNotification()).toBe(false);
    publish(s, 1); // 2
    expect(s.queue.needsNotification()).toBe(true);
  });

  it('interrupts after a whole ring published between two decisions', () => {
    const s = setup({ size: 4, eventIdx: true });
    s.ring.setDriverEvent(EVENT_DESC, 2 | WRAP);
    publish(s, 1); // 1, first decision
    expect(s.queue.needsNotification()).toBe(true);
    publish(s, 1, 1, 1, 1); // slots 1, 2, 3, 0: back to slot 1, one round on
    expect(s.queue.lastUsed).toBe(1);
    expect(s.queue.needsNotification()).toBe(true);
  });

  it('writes the device event flags on enable and disable, and re-checks the ring on enable', () => {
    const s = setup();
    s.queue.disableNotifications();
    expect(s.ring.deviceEvent().flags).toBe(EVENT_DISABLE);
    expect(s.queue.enableNotifications()).toBe(false);
    expect(s.ring.deviceEvent().flags).toBe(EVENT_ENABLE);
    s.queue.disableNotifications();
    s.ring.makeAvailable([{ addr: 0x10000, len: 8 }], 4); // the driver adds work while kicks are off
    expect(s.queue.enableNotifications()).toBe(true);
    expect(s.ring.deviceEvent().flags).toBe(EVENT_ENABLE);
    expect(popOne(s).head).toBe(4);
    expect(s.queue.enableNotifications()).toBe(false);
  });
});

describe('PackedQueue state handover', () => {
  it('refuses to export with chains taken and not pushed, or pushed and not flushed', () => {
    const s = setup();
    s.ring.makeAvailable([{ addr: 0x10000, len: 8 }], 1);
    expect(s.queue.exportState().lastAvail).toBe(WRAP);
    popOne(s);
    expect(() => s.queue.exportState()).toThrow(/cannot export state with 1 chains taken/);
    s.queue.pushUsed(1, 0);
    expect(() => s.queue.exportState()).toThrow(/0 chains taken and 1 used entries not yet published/);
    s.queue.flushUsed();
    expect(s.queue.exportState()).toMatchObject({ lastAvail: 1 | WRAP, lastUsed: 1 | WRAP, broken: false });
  });

  it('continues in a new queue over the same ring exactly where the old one stopped', () => {
    const s = setup({ size: 6, eventIdx: true });
    s.ring.setDriverEvent(EVENT_ENABLE);
    // 1 + 2 + 3 + 2 slots: the ring wrapped once, the next chain goes to slot 2 of round 0.
    for (const n of [1, 2, 3, 2]) {
      s.ring.makeAvailable(Array.from({ length: n }, () => ({ addr: 0x10000, len: 8, writable: true })), 10 + n);
      popOne(s);
      s.queue.pushUsed(s.chain.head, 8);
      s.queue.flushUsed();
      s.ring.takeUsed();
    }
    expect(s.queue.needsNotification()).toBe(true);
    s.queue.disableNotifications();
    const state = s.queue.exportState();
    expect(state).toEqual({ lastAvail: 2, lastUsed: 2, signalledUsed: 2, signalledUsedValid: true, notificationsDisabled: true, broken: false });

    const next = s.ring.queue({ eventIdx: true, name: 'vring 0 (moved)' });
    next.importState(state);
    expect([next.lastAvail, next.lastUsed]).toEqual([2, 2]);
    writeBytes(s.memory, 0x18000, pattern(40));
    const slot = s.ring.makeAvailable([{ addr: 0x18000, len: 40 }, { addr: 0x19000, len: 64, writable: true }], 99);
    expect(slot).toBe(2);
    const chain = new DescriptorChain();
    expect(next.popChain(chain)).toBe(true);
    expect(chain.head).toBe(99);
    const out = new Uint8Array(40);
    chain.copyOut(0, out, 0, 40);
    expect(out).toEqual(pattern(40));
    next.pushUsed(99, 64);
    next.flushUsed();
    expect(s.ring.takeUsed()).toEqual({ slot: 2, wrap: 0, id: 99, len: 64, flags: WRITE });
    expect(next.lastUsed).toBe(4);
    // The last decision travelled too: had it not, the first decision here would interrupt
    // whatever the driver asked for. Slots 2 and 3 were published; the driver waits for slot 5.
    s.ring.setDriverEvent(EVENT_DESC, 5);
    expect(next.needsNotification()).toBe(false);

    // The same indexes given to the constructor.
    const built = s.ring.queue({ lastAvail: next.lastAvail, lastUsed: next.lastUsed });
    s.ring.makeAvailable([{ addr: 0x10000, len: 8 }], 100);
    expect(built.popChain(chain)).toBe(true);
    expect(chain.head).toBe(100);
    built.pushUsed(100, 0);
    built.flushUsed();
    expect(s.ring.takeUsed()).toEqual({ slot: 4, wrap: 0, id: 100, len: 0, flags: 0 });
  });

  it('refuses to import indexes whose slot is outside the ring, or over chains still taken', () => {
    const s = setup({ size: 6 });
    const good = s.queue.exportState();
    for (const bad of [{ lastAvail: 6 }, { lastAvail: 6 | WRAP }, { lastUsed: 0x7fff }, { lastUsed: 0xffff }, { lastAvail: 0x10000 }, { lastAvail: -2 }]) {
      expect(() => s.queue.importState({ ...good, ...bad })).toThrow(/not a slot below 6/);
    }
    expect(() => s.queue.importState({ ...good, signalledUsed: 0x10000 })).toThrow(/not a u16/);
    s.queue.importState({ ...good, lastAvail: 5, lastUsed: 5 });
    expect([s.queue.lastAvail, s.queue.lastUsed]).toEqual([5, 5]);
    s.ring.startAt(5);
    s.ring.makeAvailable([{ addr: 0x10000, len: 8 }], 1);
    popOne(s);
    expect(() => s.queue.importState(good)).toThrow(/cannot import state over 1 chains taken/);
  });

  it('carries a broken queue across the handover', () => {
    const s = setup({ size: 4 });
    const state = { ...s.queue.exportState(), broken: true };
    const next = s.ring.queue();
    next.importState(state);
    expect(() => next.popChain(s.chain)).toThrow(/queue is broken/);
  });
});

describe('PackedQueue dirty logging', () => {
  const dirtyPages = (log: Uint8Array): number[] => {
    const pages: number[] = [];
    for (let p = 0; p < log.length * 8; p++) if ((log[p >> 3]! >> (p & 7)) & 1) pages.push(p);
    return pages;
  };

  it('marks the descriptor ring page of each used slot, on push and again on flush', () => {
    // Slots 0-7 lie in page 3, slots 8-15 in page 4, the event areas in page 4 too.
    const s = setup({ size: 16, base: 0x3f80 });
    for (let i = 0; i < 8; i++) s.ring.makeAvailable([{ addr: 0x20000, len: 8 }], i);
    while (s.queue.popChain(s.chain)) s.queue.pushUsed(s.chain.head, 0);
    s.queue.flushUsed();
    s.ring.takeAllUsed();

    const log = new Uint8Array(32);
    s.memory.setDirtyLog(log);
    s.ring.makeAvailable([{ addr: 0x20000, len: 0x40 }], 8); // slot 8
    s.ring.makeAvailable([{ addr: 0x31000, len: 0x40, writable: true }], 9); // slot 9
    popOne(s);
    const tx = new Uint8Array(0x40);
    s.chain.copyOut(0, tx, 0, 0x40);
    expect(dirtyPages(log)).toEqual([]); // reading marks nothing
    s.queue.pushUsed(8, 0);
    expect(dirtyPages(log)).toEqual([4]);
    popOne(s);
    s.chain.copyIn(tx, 0, 0x40, 0);
    expect(dirtyPages(log)).toEqual([4, 0x31]);
    s.queue.pushUsed(9, 0x40);
    // The front-end may collect the log between push and flush; the flags stored by the flush
    // must be logged again, or a migration would carry the used descriptor without its flags.
    log.fill(0);
    s.queue.flushUsed();
    expect(dirtyPages(log)).toEqual([4]);
    expect(s.ring.takeAllUsed().map((u) => u.id)).toEqual([8, 9]);

    log.fill(0);
    s.queue.disableNotifications();
    expect(dirtyPages(log)).toEqual([4]); // the device event area at 0x4084
    log.fill(0);
    s.queue.enableNotifications();
    expect(dirtyPages(log)).toEqual([4]);
    log.fill(0);
    s.queue.needsNotification(); // reads only
    expect(dirtyPages(log)).toEqual([]);
  });

  it('logs at the configured guest addresses, and not at all without a log', () => {
    const s = setup({ size: 8 });
    const queue = s.ring.queue({ descRingGuestAddr: 0x80000, deviceEventGuestAddr: 0x90000 });
    s.ring.makeAvailable([{ addr: 0x20000, len: 8 }], 1);
    const chain = new DescriptorChain();
    queue.popChain(chain);
    queue.pushUsed(1, 0); // without a log: nothing to mark, nothing fails
    queue.flushUsed();
    const log = new Uint8Array(256);
    s.memory.setDirtyLog(log);
    s.ring.makeAvailable([{ addr: 0x20000, len: 8 }], 2); // slot 1
    queue.popChain(chain);
    queue.pushUsed(2, 0);
    queue.flushUsed();
    queue.disableNotifications();
    expect(dirtyPages(log)).toEqual([0x80, 0x90]);

    const unlogged = s.ring.queue({ descRingGuestAddr: null, deviceEventGuestAddr: null });
    log.fill(0);
    unlogged.disableNotifications();
    expect(dirtyPages(log)).toEqual([]);
  });
});


function parseSeed(text: string | undefined): number {
  if (text === undefined || text === '') return 0x9acd_0001;
  const seed = Number(text);
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffff_ffff) throw new Error(`VIO4WD_PACKED_SEED=${text} is not a u32`);
  return seed;
}

const SEED = parseSeed(process.env.VIO4WD_PACKED_SEED);
const ROUNDS = 600;


describe('PackedQueue on random rings', () => {
  it(`only throws RingError, never hands out memory outside the regions, and takes every chain back (seed 0x${SEED.toString(16)}, ${ROUNDS} rounds; VIO4WD_PACKED_SEED replays)`, () => {
    const rand = prng(SEED);
    const int = (n: number): number => Math.floor(rand() * n);
    const pick = <T>(items: readonly T[]): T => items[int(items.length)]!;
    const memory = createTestMemory([
      { gpa: 0, size: 0x20000 },
      { gpa: 0x20000, size: 0x10000 },
      { gpa: 0x40000, size: 0x10000 },
    ]);
    /** Mostly a good buffer; otherwise what a hostile guest might use: edges, holes, absurd values. */
    const randomBuffer = (): { addr: number; len: number } => {
      const r = pick(memory.regions);
      switch (int(16)) {
        case 0:
          return { addr: r.guestPhysAddr + r.size - int(64), len: int(128) }; // often running off the end
        case 1:
          return { addr: r.guestPhysAddr + r.size + int(0x2000), len: int(64) }; // the next region or a hole
        case 2:
          return { addr: int(2 ** 53), len: pick([8, 0xffff_ffff - int(16)]) };
        case 3:
          return { addr: int(2 ** 11) * 2 ** 53, len: 8 }; // above 2^53, still exact
        case 4:
          return { addr: r.guestPhysAddr + int(r.size - 0x1000), len: pick([0, 65562, 65563, 0xffff_ffff]) };
        default:
          return { addr: r.guestPhysAddr + int(r.size - 0x1000), len: 1 + int(1500) };
      }
    };
    /** Chain flags plus wrap bits that mostly make the descriptor available in round `wrap`. */
    const randomFlags = (wrap: number, indirectRate: number): number => {
      if (int(12) === 0) return int(0x10000);
      const wrapBits = int(8) === 0 ? pick([0, AVAIL, USED, AVAIL | USED]) : wrap === 1 ? AVAIL : USED;
      return wrapBits | (int(5) < 2 ? NEXT : 0) | (int(2) === 0 ? WRITE : 0) | (int(indirectRate) === 0 ? INDIRECT : 0);
    };

    let ring: PackedRingBuilder | null = null;
    let queue: PackedQueue | null = null;
    let maxChainBytes = 0;
    const chain = new DescriptorChain(pick([4, 256]));
    const stats = { chains: 0, good: 0, rejected: 0, indirect: 0, broken: 0, rewound: 0, handovers: 0 };
    for (let round = 0; round < ROUNDS; round++) {
      if (queue === null || ring === null || int(40) === 0) {
        const size = pick([1, 2, 3, 4, 5, 8, 16]);
        const start = int(size) | (int(2) << 15);
        ring = new PackedRingBuilder(memory, { size, base: 0x1000, start });
        maxChainBytes = pick([65562, 65562, 2 ** 32, 100]);
        queue = ring.queue({ indirect: int(4) !== 0, eventIdx: int(2) === 0, maxChainBytes, lastAvail: start, name: `ring ${round}` });
      }
      const size = ring.size;
      // A few indirect tables of random entries, some where the ring's descriptors will point.
      const tables: { addr: number; len: number }[] = [];
      for (let t = int(3); t > 0; t--) {
        const region = pick(memory.regions);
        const addr = region.guestPhysAddr + 16 * int(region.size / 16 - 32) + pick([0, 0, 3]);
        if (addr < ring.end) continue;
        const entries: PackedDescriptor[] = [];
        for (let i = 1 + int(size); i > 0; i--) entries.push({ ...(int(6) === 0 ? randomBuffer() : { addr: region.guestPhysAddr + int(0x1000), len: 1 + int(40) }), id: int(0x10000), flags: int(10) === 0 ? int(0x10000) : (i === 1 || int(2) === 0 ? WRITE : 0) | (int(12) === 0 ? INDIRECT : 0) });
        tables.push({ addr, len: writePackedTable(memory, addr, entries) });
      }
      // Random descriptors over part of the ring, mostly marked available in the round the device
      // will read them in.
      const avail = queue.lastAvail;
      for (let k = 1 + int(size); k > 0; k--) {
        const ahead = int(size);
        const slot = ((avail & 0x7fff) + ahead) % size;
        const wrap = (avail >>> 15) ^ ((avail & 0x7fff) + ahead >= size ? 1 : 0);
        let flags = randomFlags(wrap, 5);
        let d = randomBuffer();
        if ((flags & INDIRECT) !== 0 && tables.length > 0 && int(4) !== 0) {
          d = pick(tables);
          if (int(4) !== 0) flags &= ~NEXT; // mostly a well-formed indirect descriptor
        }
        else if ((flags & INDIRECT) !== 0 && int(2) === 0) d = { addr: d.addr, len: pick([0, 16, 17, 32, size * 16, size * 16 + 16]) };
        ring.writeDescriptor(slot, { ...d, id: int(0x10000), flags });
      }

      try {
        let taken = 0;
        for (let n = 0; n < 2 * size + 2; n++) {
          if (!queue.popChain(chain)) break;
          stats.chains++;
          taken++;
          if (chain.ok) {
            stats.good++;
            if (chain.indirect) stats.indirect++;
            checkChain(chain, memory, maxChainBytes);
            const scratch = new Uint8Array(64);
            chain.copyOut(0, scratch, 0, 64);
            chain.copyIn(scratch, 0, 64, 0);
          } else {
            stats.rejected++;
            expect(chain.segmentCount).toBe(0);
          }
          if (int(6) === 0) {
            const back = 1 + int(taken);
            queue.rewind(back);
            taken -= back;
            stats.rewound += back;
          }
        }
        for (let k = 0; k < taken; k++) {
          queue.pushUsed(int(0x10000), int(3) === 0 ? 0 : int(0x10000));
          if (int(4) === 0) queue.flushUsed();
        }
        queue.flushUsed();
        // Every slot taken went back to the driver.
        expect(queue.lastUsed).toBe(queue.lastAvail);
        expect(queue.pendingUsedCount).toBe(0);
        queue.availableCount(int(size + 1));
        ring.setDriverEvent(int(4), int(0x10000));
        queue.needsNotification();
        if (int(2) === 0) queue.disableNotifications();
        else queue.enableNotifications();
        if (int(10) === 0) {
          const next = ring.queue({ indirect: queue.indirect, eventIdx: queue.eventIdx, maxChainBytes, name: `ring ${round} (moved)` });
          next.importState(queue.exportState());
          queue = next;
          stats.handovers++;
        }
      } catch (error) {
        if (!(error instanceof RingError)) throw new Error(`round ${round} (seed 0x${SEED.toString(16)}): ${String(error)}`);
        expect(queue.broken).toBe(true);
        stats.broken++;
        queue = null;
      }
    }
    // The generator must reach every outcome, or the property says little.
    expect(stats.good).toBeGreaterThan(ROUNDS / 4);
    expect(stats.rejected).toBeGreaterThan(ROUNDS / 4);
    expect(stats.indirect).toBeGreaterThan(10);
    expect(stats.broken).toBeGreaterThan(5);
    expect(stats.rewound).toBeGreaterThan(50);
    expect(stats.handovers).toBeGreaterThan(20);
  });
});

describe('NetRxWriter over a packed ring', () => {
  const NUM_BUFFERS = 10;

  it('delivers a frame into mergeable buffers: header with num_buffers, data, one used entry per buffer', () => {
    const s = setup({ size: 8 });
    for (let k = 0; k < 4; k++) s.ring.makeAvailable([{ addr: 0x30000 + k * 0x100, len: 64, writable: true }], 10 + k);
    const writer = new NetRxWriter(s.queue, { headerLength: 12, mergeable: true });
    const frame = pattern(150, 11);
    expect(writer.deliver(frame, 0, 150)).toBe(3);
    expect(s.ring.peekUsed()).toBeNull(); // the caller publishes at the end of its burst
    s.queue.flushUsed();
    expect(s.ring.takeAllUsed()).toEqual([
      { slot: 0, wrap: 1, id: 10, len: 64, flags: AVAIL | USED | WRITE },
      { slot: 1, wrap: 1, id: 11, len: 64, flags: AVAIL | USED | WRITE },
      { slot: 2, wrap: 1, id: 12, len: 34, flags: AVAIL | USED | WRITE },
    ]);
    const header = readBytes(s.memory, 0x30000, 12);
    expect(Array.from(header.subarray(0, NUM_BUFFERS))).toEqual(new Array(10).fill(0));
    expect(header[NUM_BUFFERS]! | (header[NUM_BUFFERS + 1]! << 8)).toBe(3);
    expect(readBytes(s.memory, 0x30000 + 12, 52)).toEqual(frame.subarray(0, 52));
    expect(readBytes(s.memory, 0x30100, 64)).toEqual(frame.subarray(52, 116));
    expect(readBytes(s.memory, 0x30200, 34)).toEqual(frame.subarray(116));
    expect(s.queue.availableCount()).toBe(1);
  });

  it('uses multi-descriptor buffers across the end of the ring, and gives them back when too few', () => {
    const s = setup({ size: 6, start: 4 | WRAP });
    const two = (addr: number): PackedBuffer[] => [
      { addr, len: 32, writable: true },
      { addr: addr + 0x80, len: 32, writable: true },
    ];
    s.ring.makeAvailable(two(0x30000), 1); // slots 4, 5
    const writer = new NetRxWriter(s.queue, { headerLength: 12, mergeable: true });
    const frame = pattern(100, 3);
    expect(writer.deliver(frame, 0, 100)).toBe(RX_NO_BUFFERS); // 112 bytes needed, 64 there
    expect(s.queue.lastAvail).toBe(4 | WRAP);
    expect(s.queue.pendingUsedCount).toBe(0);

    s.ring.makeAvailable(two(0x31000), 2); // slots 0, 1 of round 0
    s.ring.makeAvailable([{ addr: 0x32000, len: 64, writable: true }], 3); // slot 2
    expect(writer.deliver(frame, 0, 100)).toBe(2);
    s.queue.flushUsed();
    expect(s.ring.takeAllUsed()).toEqual([
      { slot: 4, wrap: 1, id: 1, len: 64, flags: AVAIL | USED | WRITE },
      { slot: 0, wrap: 0, id: 2, len: 48, flags: WRITE },
    ]);
    const first = new Uint8Array([...readBytes(s.memory, 0x30000, 32), ...readBytes(s.memory, 0x30080, 32)]);
    expect(first[NUM_BUFFERS]! | (first[NUM_BUFFERS + 1]! << 8)).toBe(2);
    expect(first.subarray(12)).toEqual(frame.subarray(0, 52));
    const second = new Uint8Array([...readBytes(s.memory, 0x31000, 32), ...readBytes(s.memory, 0x31080, 16)]);
    expect(second).toEqual(frame.subarray(52));
    expect(s.queue.lastAvail).toBe(2);
    expect(s.queue.availableCount()).toBe(1);
  });

  it('delivers into one chain without mergeable buffers, num_buffers 1', () => {
    const s = setup({ size: 4 });
    s.ring.makeAvailable([{ addr: 0x30000, len: 12, writable: true }, { addr: 0x31000, len: 1500, writable: true }], 0x4242);
    const writer = new NetRxWriter(s.queue, { headerLength: 12, mergeable: false });
    const frame = pattern(60, 8);
    expect(writer.deliver(frame, 0, 60)).toBe(1);
    s.queue.flushUsed();
    expect(s.ring.takeUsed()).toMatchObject({ slot: 0, id: 0x4242, len: 72 });
    expect(readBytes(s.memory, 0x30000, 12)[NUM_BUFFERS]).toBe(1);
    expect(readBytes(s.memory, 0x31000, 60)).toEqual(frame);
  });
});
