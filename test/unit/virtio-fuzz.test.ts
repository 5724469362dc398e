// Property test: thousands of random (mostly hostile) rings, descriptor tables and indirect
// tables from a seeded generator. Whatever the guest writes, the device side may only throw
// RingError, and every segment it hands out lies inside guest memory and inside the limits.
import { describe, expect, it } from 'vitest';
import { DescriptorChain, RingError } from '../../virtio/split-queue.js';
import { NetRxWriter, RX_DROPPED, RX_NO_BUFFERS } from '../../virtio/net-rx.js';
import { TX_DROPPED, readTxFrame } from '../../virtio/net-tx.js';
import type { GuestMemory } from '../../virtio/guest-memory.js';
import { RingBuilder, createTestMemory, writeDescriptorAt, type RegionSpec } from '../support/ring-builder.js';
import { mulberry32 as prng } from '../support/seeded-random.js';
import { checkChain } from '../support/chain-checks.js';


const SEED = 0x5eed_0001;
const RINGS = 4000;

interface Gen {
  rand: () => number;
  int(n: number): number;
  pick<T>(items: readonly T[]): T;
}

function gen(seed: number): Gen {
  const rand = prng(seed);
  return { rand, int: (n) => Math.floor(rand() * n), pick: (items) => items[Math.floor(rand() * items.length)]! };
}

function randomRegions(g: Gen): RegionSpec[] {
  const regions: RegionSpec[] = [];
  let gpa = 0;
  const count = 1 + g.int(3);
  for (let i = 0; i < count; i++) {
    const size = g.pick([0x2000, 0x3000, 0x8000, 0x10000]);
    regions.push({ gpa, size, userAddr: 0x7000_0000 + i * 0x100_0000 });
    gpa += size + g.pick([0, 0, 0x1000, 0x10000]); // adjacent or after a hole
  }
  return regions;
}

/** An address a hostile guest might use: inside, at edges, in holes, past the end, or absurd. */
function randomAddr(g: Gen, memory: GuestMemory): number {
  const r = g.pick(memory.regions);
  switch (g.int(6)) {
    case 0:
      return r.guestPhysAddr + g.int(r.size);
    case 1:
      return r.guestPhysAddr + r.size - g.int(64); // near the end, often straddling
    case 2:
      return r.guestPhysAddr + r.size + g.int(0x2000); // hole or next region
    case 3:
      return g.int(2 ** 53);
    case 4:
      return g.int(2 ** 32) * 2 ** 32 + g.int(2 ** 32); // any u64
    default:
      return r.guestPhysAddr + g.int(r.size) * 16;
  }
}

function randomLen(g: Gen): number {
  switch (g.int(5)) {
    case 0:
      return 0;
    case 1:
      return g.int(64);
    case 2:
      return g.int(0x3000);
    case 3:
      return 0xffff_ffff - g.int(16);
    default:
      return g.pick([12, 16, 32, 48, 1514, 65562, 65563]);
  }
}

function writeRandomDescriptor(g: Gen, memory: GuestMemory, gpa: number, tableSize: number): void {
  const indirect = g.int(5) === 0;
  writeDescriptorAt(memory, gpa, {
    addr: randomAddr(g, memory) % 2 ** 64,
    len: indirect ? g.pick([0, 16, 32, 48, 17, tableSize * 16, tableSize * 16 + 16, 4096]) : randomLen(g),
    flags: (g.int(8) === 0 ? g.int(0x10000) : g.int(4)) | (indirect ? 4 : 0),
    next: g.int(4) === 0 ? g.int(0x10000) : g.int(tableSize + 2),
  });
}

describe('popChain on random rings', () => {
  it(`only throws RingError and never hands out memory outside the regions (${RINGS} rings, seed ${SEED.toString(16)})`, () => {
    const g = gen(SEED);
    let chains = 0;
    let good = 0;
    let broken = 0;
    let goodIndirect = 0;
    let goodMultiSegment = 0;
    for (let n = 0; n < RINGS; n++) {
      const memory = createTestMemory(randomRegions(g));
      const size = 1 << g.int(7);
      const ring = new RingBuilder(memory, { size });
      const maxChainBytes = g.pick([65562, 1 << 16, 2 ** 32, 100]);
      const queue = ring.queue({ indirect: g.int(2) === 0, eventIdx: g.int(2) === 0, maxChainBytes, lastAvail: g.int(0x10000), lastUsed: g.int(0x10000) });
      const chain = new DescriptorChain(g.pick([1, 2, 4, 256]));
      for (let i = 0; i < size; i++) writeRandomDescriptor(g, memory, ring.descGpa + i * 16, size);
      // Some well-placed indirect tables full of random entries, where the addresses above may land.
      for (let t = 0; t < 3; t++) {
        const region = g.pick(memory.regions);
        const base = region.guestPhysAddr + 16 * g.int(Math.floor(region.size / 16) - 8);
        if (base < ring.end) continue;
        for (let i = 0; i < 8; i++) writeRandomDescriptor(g, memory, base + i * 16, 8);
      }
      for (let i = 0; i < size; i++) ring.setAvailEntry(i, g.int(3) === 0 ? g.int(0x10000) : g.int(size));
      ring.setUsedEvent(g.int(0x10000));
      ring.setAvailIdx((queue.lastAvail + (g.int(8) === 0 ? g.int(0x10000) : g.int(size + 1))) & 0xffff);

      try {
        while (queue.popChain(chain)) {
          chains++;
          if (chain.ok) {
            good++;
            if (chain.indirect) goodIndirect++;
            if (chain.segmentCount > 1) goodMultiSegment++;
            checkChain(chain, memory, maxChainBytes);
            const scratch = new Uint8Array(64);
            chain.copyOut(0, scratch, 0, 64);
            chain.copyIn(scratch, 0, 64, 0);
          } else {
            expect(chain.segmentCount).toBe(0);
          }
          queue.pushUsed(chain.head, chain.writableLength);
          if (queue.pendingUsedCount === size) queue.flushUsed();
        }
        queue.flushUsed();
        queue.needsNotification();
        queue.enableNotifications();
      } catch (error) {
        if (!(error instanceof RingError)) throw new Error(`ring ${n}: popChain threw ${String(error)}`);
        broken++;
        expect(queue.broken).toBe(true);
      }
    }
    // The generator must reach every outcome, or the property says little.
    expect(chains).toBeGreaterThan(RINGS);
    expect(good).toBeGreaterThan(RINGS / 4);
    expect(broken).toBeGreaterThan(RINGS / 20);
    expect(goodIndirect).toBeGreaterThan(50);
    expect(goodMultiSegment).toBeGreaterThan(30);
  });
});

describe('net helpers on random rings', () => {
  it('return every chain they take exactly once and only throw RingError', () => {
    const g = gen(SEED + 1);
    const frame = new Uint8Array(70000).map((_, i) => i & 0xff);
    const out = new Uint8Array(70000);
    let delivered = 0;
    let transmitted = 0;
    for (let n = 0; n < RINGS / 2; n++) {
      const memory = createTestMemory(randomRegions(g));
      const size = 1 << g.int(7);
      const ring = new RingBuilder(memory, { size });
      const queue = ring.queue({ indirect: g.int(2) === 0, lastAvail: g.int(0x10000), lastUsed: g.int(0x10000) });
      for (let i = 0; i < size; i++) writeRandomDescriptor(g, memory, ring.descGpa + i * 16, size);
      for (let i = 0; i < size; i++) ring.setAvailEntry(i, g.int(size));
      ring.setAvailIdx((queue.lastAvail + (g.int(16) === 0 ? g.int(0x10000) : g.int(size + 1))) & 0xffff);
      const mergeable = g.int(2) === 0;
      const writer = new NetRxWriter(queue, { headerLength: mergeable || g.int(2) === 0 ? 12 : 10, mergeable, maxBuffers: mergeable ? 1 + g.int(size) : undefined });
      const chain = new DescriptorChain();
      try {
        for (let k = 0; k < 8; k++) {
          const consumedBefore = queue.lastAvail;
          const usedBefore = queue.lastUsed;
          if (g.int(2) === 0) {
            const result = writer.deliver(frame, g.int(100), g.pick([0, 1, 60, 1500, 9000, 65000]));
            if (result > 0) delivered++;
            else expect([RX_NO_BUFFERS, RX_DROPPED]).toContain(result);
          } else if (queue.popChain(chain)) {
            const len = readTxFrame(chain, 12, out, 0);
            if (len !== TX_DROPPED) transmitted++;
            queue.pushUsed(chain.head, 0);
          }
          const consumed = (queue.lastAvail - consumedBefore) & 0xffff;
          const returned = (queue.lastUsed - usedBefore) & 0xffff;
          if (consumed !== returned) throw new Error(`ring ${n}: ${consumed} chains taken, ${returned} returned`);
          queue.flushUsed();
        }
      } catch (error) {
        if (!(error instanceof RingError)) throw new Error(`ring ${n}: ${String(error)}`);
      }
    }
    expect(delivered).toBeGreaterThan(20);
    expect(transmitted).toBeGreaterThan(20);
  });
});

