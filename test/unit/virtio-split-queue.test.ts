// The device-side chain walker against good chains and against the ring-level cases of the
// hostile-guest checklist (D1-D7 of the vhost-user reference notes).
import { describe, expect, it } from 'vitest';
import { DescriptorChain, RingError, SplitQueue } from '../../virtio/split-queue.js';
import type { GuestMemory } from '../../virtio/guest-memory.js';
import {
  RingBuilder,
  VRING_DESC_F_INDIRECT as INDIRECT,
  VRING_DESC_F_NEXT as NEXT,
  VRING_DESC_F_WRITE as WRITE,
  chainDescriptors,
  createTestMemory,
  readBytes,
  writeBytes,
  writeDescriptorTable,
  type RegionSpec,
} from '../support/ring-builder.js';
import { pattern, segmentsOf } from '../support/chain-checks.js';

interface Setup {
  memory: GuestMemory;
  ring: RingBuilder;
  queue: SplitQueue;
  chain: DescriptorChain;
}

function setup(options: { size?: number; indirect?: boolean; maxChainBytes?: number; regions?: RegionSpec[]; capacity?: number } = {}): Setup {
  const memory = createTestMemory(options.regions ?? [{ gpa: 0, size: 1 << 20 }]);
  const ring = new RingBuilder(memory, { size: options.size ?? 8 });
  const queue = ring.queue({ indirect: options.indirect ?? true, maxChainBytes: options.maxChainBytes, name: 'vring 0' });
  return { memory, ring, queue, chain: new DescriptorChain(options.capacity) };
}


function popOne(s: Setup): DescriptorChain {
  expect(s.queue.popChain(s.chain)).toBe(true);
  return s.chain;
}

function expectRejected(s: Setup, reason: RegExp, head: number): void {
  const c = popOne(s);
  expect(c.ok).toBe(false);
  expect(c.error).toMatch(reason);
  expect(c.head).toBe(head);
  expect(c.segmentCount).toBe(0);
  expect(c.readableLength + c.writableLength).toBe(0);
  // The device can still hand the chain back to the driver.
  s.queue.pushUsed(c.head, 0);
  s.queue.flushUsed();
  expect(s.ring.usedIdx()).toBe(1);
  expect(s.ring.usedEntry(0)).toEqual({ id: head, len: 0 });
}

describe('SplitQueue construction', () => {
  const memory = createTestMemory([{ gpa: 0, size: 0x10000 }]);
  const bytes = memory.regions[0]!.bytes;
  const make = (size: number, desc: number, avail: number, used: number): SplitQueue =>
    new SplitQueue({ memory, size, descTable: { bytes, offset: desc }, availRing: { bytes, offset: avail }, usedRing: { bytes, offset: used } });

  it('accepts aligned rings and refuses misaligned or oversized ones', () => {
    expect(make(8, 0, 0x1000, 0x2000).size).toBe(8);
    expect(() => make(8, 8, 0x1000, 0x2000)).toThrow(/descriptor table at host offset 8 is not 16-byte aligned/);
    expect(() => make(8, 0, 0x1001, 0x2000)).toThrow(/avail ring .* not 2-byte aligned/);
    expect(() => make(8, 0, 0x1000, 0x2002)).toThrow(/used ring .* not 4-byte aligned/);
    expect(() => make(6, 0, 0x1000, 0x2000)).toThrow(RingError);
    expect(() => make(65536, 0, 0x1000, 0x2000)).toThrow(/not a power of two/);
    expect(() => make(8, 0x10000 - 64, 0x1000, 0x2000)).toThrow(/does not fit/);
    expect(() => make(8, 0, 0x1000, 0xfff0)).toThrow(/does not fit/);
    const q = make(8, 0, 0x1000, 0x2000);
    q.maxChainBytes = 2 ** 32;
    expect(() => (q.maxChainBytes = 2 ** 32 + 1)).toThrow(/outside 1..2\^32/);
    expect(() => (q.maxChainBytes = 0)).toThrow(RingError);
  });
});

describe('SplitQueue good chains', () => {
  it('pops nothing from an empty ring, then chains in avail order', () => {
    const s = setup();
    expect(s.queue.popChain(s.chain)).toBe(false);
    s.ring.writeChain([{ addr: 0x10000, len: 64 }], 0);
    s.ring.writeChain([{ addr: 0x11000, len: 32, writable: true }], 1);
    s.ring.offer(1, 0);
    expect(s.queue.availableCount()).toBe(2);
    expect(popOne(s).head).toBe(1);
    expect(s.chain.writableLength).toBe(32);
    expect(popOne(s).head).toBe(0);
    expect(s.chain.readableLength).toBe(64);
    expect(s.queue.popChain(s.chain)).toBe(false);
  });

  it('walks a direct multi-segment chain with readable then writable buffers', () => {
    const s = setup();
    const data = pattern(60);
    writeBytes(s.memory, 0x10000, data.subarray(0, 10));
    writeBytes(s.memory, 0x12000, data.subarray(10));
    s.ring.writeChain(
      [
        { addr: 0x10000, len: 10 },
        { addr: 0x12000, len: 50 },
        { addr: 0x13000, len: 200, writable: true },
        { addr: 0x14000, len: 100, writable: true },
      ],
      3,
    );
    s.ring.offer(3);
    const c = popOne(s);
    expect(c.ok).toBe(true);
    expect(c.head).toBe(3);
    expect(c.descriptorCount).toBe(4);
    expect(c.indirect).toBe(false);
    expect(c.readableSegments).toBe(2);
    expect(c.readableLength).toBe(60);
    expect(c.writableLength).toBe(300);
    expect(segmentsOf(c)).toEqual([
      [0x10000, 10, false],
      [0x12000, 50, false],
      [0x13000, 200, true],
      [0x14000, 100, true],
    ]);
    const out = new Uint8Array(60);
    expect(c.copyOut(0, out, 0, 60)).toBe(60);
    expect(out).toEqual(data);
    expect(c.copyOut(55, out, 0, 60)).toBe(5);
    // Writes land in the writable buffers, spilling from the first into the second.
    const reply = pattern(250, 9);
    expect(c.copyIn(reply, 0, 250, 0)).toBe(250);
    expect(readBytes(s.memory, 0x13000, 200)).toEqual(reply.subarray(0, 200));
    expect(readBytes(s.memory, 0x14000, 50)).toEqual(reply.subarray(200));
    expect(c.copyIn(reply, 0, 250, 290)).toBe(10); // only 10 bytes of room left past offset 290
    expect(c.copyIn(reply, 0, 250, 300)).toBe(0);
    expect(c.copyOut(60, out, 0, 10)).toBe(0);
    expect(() => c.copyOut(-1, out, 0, 10)).toThrow(RangeError);
    expect(() => c.copyIn(reply, -5, 10, 0)).toThrow(/non-negative/);
  });

  it('walks an indirect table, aligned or not, and an indirect descriptor ending a direct chain', () => {
    for (const tableGpa of [0x20000, 0x20003, 0x20006]) {
      const s = setup();
      const len = writeDescriptorTable(
        s.memory,
        tableGpa,
        chainDescriptors([
          { addr: 0x10000, len: 12 },
          { addr: 0x10100, len: 1000 },
          { addr: 0x11000, len: 1500, writable: true },
        ]),
      );
      s.ring.setDescriptor(5, { addr: tableGpa, len, flags: INDIRECT });
      s.ring.offer(5);
      const c = popOne(s);
      expect(c.error).toBeNull();
      expect(c.indirect).toBe(true);
      expect(c.head).toBe(5);
      expect(segmentsOf(c)).toEqual([
        [0x10000, 12, false],
        [0x10100, 1000, false],
        [0x11000, 1500, true],
      ]);
    }
    const s = setup();
    const len = writeDescriptorTable(s.memory, 0x20000, chainDescriptors([{ addr: 0x11000, len: 64, writable: true }]));
    s.ring.setDescriptor(0, { addr: 0x10000, len: 12, flags: NEXT, next: 6 });
    s.ring.setDescriptor(6, { addr: 0x20000, len, flags: INDIRECT });
    s.ring.offer(0);
    const c = popOne(s);
    expect(c.error).toBeNull();
    expect(segmentsOf(c)).toEqual([
      [0x10000, 12, false],
      [0x11000, 64, true],
    ]);
  });

  it('splits a buffer that straddles two adjacent regions into two segments, each with its host address', () => {
    // Two regions mapped apart in the host: the second segment's host address is the second mapping's.
    const s = setup({ regions: [{ gpa: 0, size: 0x10000, hostAddress: 0x7f00_0000_0000 }, { gpa: 0x10000, size: 0x10000, hostAddress: 0x7f10_0000_0000 }] });
    const data = pattern(0x40, 3);
    writeBytes(s.memory, 0xffe0, data);
    s.ring.writeChain([{ addr: 0xffe0, len: 0x40 }]);
    s.ring.offer(0);
    const c = popOne(s);
    expect(c.ok).toBe(true);
    expect(segmentsOf(c)).toEqual([
      [0xffe0, 0x20, false],
      [0x10000, 0x20, false],
    ]);
    expect(c.segBytes[0]).toBe(s.memory.regions[0]!.bytes);
    expect(c.segBytes[1]).toBe(s.memory.regions[1]!.bytes);
    expect([c.segHost[0], c.segHost[1]]).toEqual([0x7f00_0000_ffe0, 0x7f10_0000_0000]);
    const out = new Uint8Array(0x40);
    c.copyOut(0, out, 0, 0x40);
    expect(out).toEqual(data);
  });

  it('gives segments of memory with no host mapping a host address of NaN, never a number the kernel could use', () => {
    const s = setup();
    s.ring.writeChain([{ addr: 0x1000, len: 0x40 }]);
    s.ring.offer(0);
    const c = popOne(s);
    expect(c.ok).toBe(true);
    expect(c.segHost[0]).toBeNaN();
  });

  it('skips zero-length descriptors and accepts a chain of exactly the queue size', () => {
    const s = setup({ size: 4 });
    s.ring.writeChain([
      { addr: 0x10000, len: 0 },
      { addr: 0x10000, len: 8 },
      { addr: 0xdead_0000, len: 0 }, // never translated: nothing is read through it
      { addr: 0x11000, len: 8, writable: true },
    ]);
    s.ring.offer(0);
    const c = popOne(s);
    expect(c.ok).toBe(true);
    expect(c.descriptorCount).toBe(4);
    expect(segmentsOf(c)).toEqual([
      [0x10000, 8, false],
      [0x11000, 8, true],
    ]);
  });

  it('accepts a chain exactly at the byte limit', () => {
    const s = setup({ maxChainBytes: 1000 });
    s.ring.writeChain([
      { addr: 0x10000, len: 400 },
      { addr: 0x11000, len: 600, writable: true },
    ]);
    s.ring.offer(0);
    expect(popOne(s).ok).toBe(true);
  });

  it('follows the avail index across the u16 wrap', () => {
    const s = setup({ size: 4 });
    const queue = s.ring.queue({ lastAvail: 65534, lastUsed: 65534 });
    s.ring.availIdx = 65534;
    for (let i = 0; i < 4; i++) s.ring.writeChain([{ addr: 0x10000 + i * 0x100, len: 16 }], i);
    s.ring.offer(0, 1, 2, 3);
    expect(queue.availableCount()).toBe(4);
    const heads: number[] = [];
    while (queue.popChain(s.chain)) heads.push(s.chain.head);
    expect(heads).toEqual([0, 1, 2, 3]);
    expect(queue.lastAvail).toBe(2);
  });
});

describe('SplitQueue hostile rings', () => {
  it('D1: an avail index more than a ring ahead breaks the queue', () => {
    const s = setup({ size: 8 });
    s.ring.setAvailIdx(8); // a full ring is fine
    expect(s.queue.availableCount()).toBe(8);
    s.ring.setAvailIdx(9);
    expect(() => s.queue.availableCount()).toThrow(RingError);
    expect(s.queue.broken).toBe(true);
    expect(() => s.queue.popChain(s.chain)).toThrow(/vring 0: queue is broken/);
    expect(() => s.queue.availableCount()).toThrow(RingError);

    const fresh = setup({ size: 8 });
    fresh.ring.setAvailIdx(200);
    expect(() => fresh.queue.popChain(fresh.chain)).toThrow(/200 entries past last_avail 0 in a ring of 8/);
    expect(fresh.queue.broken).toBe(true);

    const back = setup({ size: 8 });
    back.ring.setAvailIdx(0xffff); // moved backwards
    expect(() => back.queue.availableCount()).toThrow(/avail.idx to 65535/);
    expect(back.queue.broken).toBe(true);
  });

  it('D2: a head outside the ring is rejected but returned', () => {
    const s = setup({ size: 8 });
    s.ring.offer(8);
    expectRejected(s, /head descriptor 8 is outside the ring of 8/, 8);
  });

  it('D2: next outside the ring or outside the indirect table is rejected', () => {
    const s = setup({ size: 8 });
    s.ring.setDescriptor(0, { addr: 0x10000, len: 8, flags: NEXT, next: 8 });
    s.ring.offer(0);
    expectRejected(s, /links to 8, outside its table of 8/, 0);

    const t = setup({ size: 8 });
    writeDescriptorTable(t.memory, 0x20000, [
      { addr: 0x10000, len: 8, flags: NEXT, next: 1 },
      { addr: 0x10000, len: 8, flags: NEXT, next: 2 },
    ]);
    t.ring.setDescriptor(0, { addr: 0x20000, len: 32, flags: INDIRECT });
    t.ring.offer(0);
    expectRejected(t, /links to 2, outside its table of 2/, 0);
  });

  it('D3: loops are cut by the TTL, in the ring and in an indirect table', () => {
    const s = setup({ size: 8 });
    s.ring.setDescriptor(0, { addr: 0x10000, len: 8, flags: NEXT, next: 1 });
    s.ring.setDescriptor(1, { addr: 0x10000, len: 8, flags: NEXT, next: 0 });
    s.ring.offer(0);
    expectRejected(s, /descriptor loop/, 0);

    const self = setup({ size: 8, maxChainBytes: 1 << 30 });
    self.ring.setDescriptor(3, { addr: 0x10000, len: 0, flags: NEXT, next: 3 });
    self.ring.offer(3);
    expectRejected(self, /longer than its table of 8/, 3);

    const ind = setup({ size: 8 });
    writeDescriptorTable(ind.memory, 0x20000, [
      { addr: 0x10000, len: 8, flags: NEXT, next: 1 },
      { addr: 0x10000, len: 8, flags: NEXT, next: 0 },
    ]);
    ind.ring.setDescriptor(0, { addr: 0x20000, len: 32, flags: INDIRECT });
    ind.ring.offer(0);
    expectRejected(ind, /longer than its table of 2/, 0);
  });

  it('D4: chains longer than the byte limit, than 2^32, or than the segment budget are rejected', () => {
    const s = setup({ maxChainBytes: 1000 });
    s.ring.writeChain([
      { addr: 0x10000, len: 400 },
      { addr: 0x11000, len: 601, writable: true },
    ]);
    s.ring.offer(0);
    expectRejected(s, /longer than 1000 bytes/, 0);

    const big = setup({ maxChainBytes: 2 ** 32 });
    big.ring.writeChain([
      { addr: 0x10000, len: 100 },
      { addr: 0x10000, len: 0xffff_ffff, writable: true },
    ]);
    big.ring.offer(0);
    expectRejected(big, /longer than 4294967296 bytes/, 0);

    const segs = setup({ capacity: 4 });
    segs.ring.writeChain([0, 1, 2, 3, 4].map((i) => ({ addr: 0x10000 + i * 0x100, len: 16 })));
    segs.ring.offer(0);
    expectRejected(segs, /needs more than 4 segments/, 0);

    const straddle = setup({ capacity: 2, maxChainBytes: 1 << 20, regions: [{ gpa: 0, size: 0x10000 }, { gpa: 0x10000, size: 0x10000 }, { gpa: 0x20000, size: 0x10000 }] });
    straddle.ring.writeChain([{ addr: 0xfff0, len: 0x10020 }]); // three regions → three segments
    straddle.ring.offer(0);
    expectRejected(straddle, /needs more than 2 segments/, 0);
  });

  it('D5: malformed indirect descriptors are rejected', () => {
    const cases: { desc: { addr: number; len: number; flags: number; next?: number }; reason: RegExp; indirect?: boolean; table?: boolean }[] = [
      { desc: { addr: 0x20000, len: 0, flags: INDIRECT }, reason: /has length 0/ },
      { desc: { addr: 0x20000, len: 17, flags: INDIRECT }, reason: /has length 17/ },
      { desc: { addr: 0x20000, len: 8 * 16 + 16, flags: INDIRECT }, reason: /up to 128/ },
      { desc: { addr: 0x20000, len: 32, flags: INDIRECT | NEXT, next: 1 }, reason: /also has NEXT/ },
      { desc: { addr: 0x20000, len: 32, flags: INDIRECT }, reason: /INDIRECT_DESC was not negotiated/, indirect: false },
      { desc: { addr: 0x200000, len: 32, flags: INDIRECT }, reason: /not inside one memory region/ },
      { desc: { addr: 0xfff0, len: 32, flags: INDIRECT }, reason: /not inside one memory region/, table: true },
    ];
    for (const c of cases) {
      const s = setup({
        indirect: c.indirect ?? true,
        regions: c.table ? [{ gpa: 0, size: 0x10000 }, { gpa: 0x10000, size: 0x30000 }] : undefined,
      });
      writeDescriptorTable(s.memory, c.desc.addr < 0x100000 ? c.desc.addr : 0x20000, chainDescriptors([{ addr: 0x11000, len: 8 }, { addr: 0x11000, len: 8 }]));
      s.ring.setDescriptor(0, c.desc);
      s.ring.offer(0);
      expectRejected(s, c.reason, 0);
    }

    const nested = setup();
    writeDescriptorTable(nested.memory, 0x20000, [{ addr: 0x21000, len: 16, flags: INDIRECT }]);
    writeDescriptorTable(nested.memory, 0x21000, [{ addr: 0x11000, len: 8 }]);
    nested.ring.setDescriptor(0, { addr: 0x20000, len: 16, flags: INDIRECT });
    nested.ring.offer(0);
    expectRejected(nested, /contains another indirect descriptor/, 0);
  });

  it('D6: buffers outside memory, overflowing, above 2^53 or crossing a hole are rejected', () => {
    const regions = [{ gpa: 0, size: 0x20000 }, { gpa: 0x30000, size: 0x10000 }];
    const cases: [{ addr: number; len: number; flags?: number }, RegExp][] = [
      [{ addr: 0x50000, len: 8 }, /unmapped guest memory at 0x50000/],
      [{ addr: 0x1fff0, len: 0x20 }, /unmapped guest memory at 0x20000/], // runs into the hole
      [{ addr: 0x2fff0, len: 0x20 }, /unmapped guest memory at 0x2fff0/], // starts in the hole
      [{ addr: 2 ** 53 - 16, len: 8 }, /unmapped/],
      [{ addr: 2 ** 53 - 4, len: 8 }, /overflows the address space/],
      [{ addr: 2 ** 60, len: 8 }, /above 2\^53/],
      [{ addr: 0xffff_ffff_f000, len: 0x2000, flags: WRITE }, /unmapped/],
    ];
    for (const [desc, reason] of cases) {
      const s = setup({ regions });
      s.ring.setDescriptor(0, desc);
      s.ring.offer(0);
      expectRejected(s, reason, 0);
    }
    const ind = setup({ regions });
    ind.ring.setDescriptor(0, { addr: 2 ** 60, len: 16, flags: INDIRECT });
    ind.ring.offer(0);
    expectRejected(ind, /indirect table of head 0 has an address above 2\^53/, 0);
  });

  it('D7: a device-readable buffer after a device-writable one is rejected', () => {
    const s = setup();
    s.ring.setDescriptor(0, { addr: 0x10000, len: 8, flags: WRITE | NEXT, next: 1 });
    s.ring.setDescriptor(1, { addr: 0x11000, len: 8 });
    s.ring.offer(0);
    expectRejected(s, /device-readable after a device-writable/, 0);

    const ind = setup();
    writeDescriptorTable(ind.memory, 0x20000, [
      { addr: 0x10000, len: 8, flags: WRITE | NEXT, next: 1 },
      { addr: 0x11000, len: 0, flags: 0 },
    ]);
    ind.ring.setDescriptor(0, { addr: 0x20000, len: 32, flags: INDIRECT });
    ind.ring.offer(0);
    expectRejected(ind, /device-readable after a device-writable/, 0);
  });

  it('D10: a chain keeps the values read during the walk when the guest rewrites the descriptor', () => {
    const s = setup();
    s.ring.writeChain([{ addr: 0x10000, len: 64 }]);
    s.ring.offer(0);
    const c = popOne(s);
    s.ring.setDescriptor(0, { addr: 0x90000000, len: 0xffff_ffff });
    expect(segmentsOf(c)).toEqual([[0x10000, 64, false]]);
    expect(c.readableLength).toBe(64);
  });

  it('a rejected chain does not stop the next good one', () => {
    const s = setup();
    s.ring.setDescriptor(0, { addr: 0x10000, len: 8, flags: NEXT, next: 99 });
    s.ring.writeChain([{ addr: 0x11000, len: 8 }], 1);
    s.ring.offer(0, 1);
    expect(popOne(s).ok).toBe(false);
    const c = popOne(s);
    expect(c.ok).toBe(true);
    expect(c.head).toBe(1);
  });
});
