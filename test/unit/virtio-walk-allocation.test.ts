// The chain walk runs once per frame on a worker: whatever it allocates fills the worker's young
// generation, and every scavenge stops forwarding for a few hundred microseconds. A front-end
// whose "guest-physical" addresses are its own virtual addresses (DPDK's virtio-user) has buffers
// far above 2^31, which V8 holds as heap numbers wherever they are passed as one number. V8's
// sampling heap profiler, asked to keep objects the scavenger already freed, sees every allocation
// of the walk: none is allowed, in at least one of three windows of 400 rounds (test/support/heap-sampling.ts).
import { describe, expect, it } from 'vitest';
import { GuestMemory } from '../../virtio/guest-memory.js';
import { DescriptorChain, SplitQueue } from '../../virtio/split-queue.js';
import { SplitQueueDriver } from '../../virtio/split-queue-driver.js';
import { PackedRingBuilder } from '../support/packed-ring-builder.js';
import { fewestAllocations } from '../support/heap-sampling.js';

const QSIZE = 256;
/** Where the buffers are: a virtual address of the kind virtio-user sends, bit 31 set in its low word. */
const BASE = 0x7f00_8000_0000;

describe('the descriptor walk', () => {
  it('allocates nothing per chain on a split ring, direct and indirect, with buffers at addresses above 2^31, and translates them exactly', async () => {
    const size = 8 << 20;
    const bytes = new Uint8Array(size);
    const memory = new GuestMemory([{ guestPhysAddr: BASE, size, userAddr: 0x7e00_0000_0000, bytes }]);
    const l = SplitQueueDriver.layout(BASE, QSIZE);
    const driver = new SplitQueueDriver({ memory, size: QSIZE, descGpa: l.descGpa, availGpa: l.availGpa, usedGpa: l.usedGpa, name: 'tx' });
    const queue = new SplitQueue({
      memory,
      size: QSIZE,
      descTable: memory.translate(l.descGpa, 16 * QSIZE)!,
      availRing: memory.translate(l.availGpa, 6 + 2 * QSIZE)!,
      usedRing: memory.translate(l.usedGpa, 6 + 8 * QSIZE)!,
      indirect: true,
      name: 'tx',
    });
    const buffer = (i: number) => BASE + 0x10_0000 + (i % QSIZE) * 2048;
    const table = (i: number) => BASE + 0x8_0000 + (i % QSIZE) * 32;
    // Two descriptors a chain (header, frame), as a guest without ANY_LAYOUT posts them; every
    // other chain in an indirect table, as a guest with INDIRECT_DESC posts them.
    const post = (i: number) =>
      driver.addBuffers([{ gpa: buffer(i), len: 12, writable: false }, { gpa: buffer(i) + 12, len: 64, writable: false }], i % 2 === 0 ? {} : { indirectTableGpa: table(i) });
    const chain = new DescriptorChain();
    let posted = 0;
    let walked = 0;
    const gpas: number[] = [];
    const walkAll = () => {
      while (queue.popChain(chain)) {
        if (chain.error !== null || chain.segmentCount !== 2) throw new Error(`chain ${walked}: ${chain.error ?? `${chain.segmentCount} segments`}`);
        if (walked < 4) gpas.push(chain.indirect ? 1 : 0, chain.segGpa[0]!, chain.segGpa[1]!, chain.segOffset[1]!);
        queue.pushUsed(chain.head, 0);
        walked++;
      }
      queue.flushUsed();
    };
    const rounds = (count: number) => {
      for (let r = 0; r < count; r++) {
        for (let k = 0; k < QSIZE / 2; k++) post(posted++);
        driver.publish();
        walkAll();
        while (driver.popUsed() !== null);
      }
    };
    rounds(400); // warm up: the walk is optimised as a worker runs it
    expect(gpas).toEqual([0, 1, 2, 3].flatMap((i) => [i % 2, buffer(i), buffer(i) + 12, buffer(i) + 12 - BASE]));

    // The driver allocates as it posts: only what the queue's own functions allocate counts.
    const inWalk = await fewestAllocations(['popChain', 'walk', 'addDescriptor', 'addSegments'], () => rounds(400));
    expect(walked).toBeGreaterThanOrEqual(800 * (QSIZE / 2));
    expect(inWalk).toEqual([]);
  });

  it('allocates nothing per chain on a packed ring, direct and indirect, and translates them exactly', async () => {
    const size = 8 << 20;
    const bytes = new Uint8Array(size);
    const memory = new GuestMemory([{ guestPhysAddr: BASE, size, userAddr: 0x7e00_0000_0000, bytes }]);
    const ring = new PackedRingBuilder(memory, { size: QSIZE, base: BASE });
    const queue = ring.queue({ indirect: true, name: 'tx' });
    const buffer = (i: number) => BASE + 0x10_0000 + (i % QSIZE) * 2048;
    const table = (i: number) => BASE + 0x8_0000 + (i % QSIZE) * 32;
    // Alternately a direct chain of two descriptors and an indirect table of the same two, as a
    // guest with INDIRECT_DESC posts them when its ring runs short: the table's walk counts too.
    const post = (i: number) => {
      const pieces = [{ addr: buffer(i), len: 12 }, { addr: buffer(i) + 12, len: 64 }];
      if (i % 2 === 0) ring.makeAvailable(pieces, i % QSIZE);
      else ring.postIndirect(table(i), pieces, i % QSIZE);
    };
    const chain = new DescriptorChain();
    let posted = 0;
    let walked = 0;
    const seen: number[] = [];
    const walkAll = () => {
      while (queue.popChain(chain)) {
        if (chain.error !== null || chain.segmentCount !== 2) throw new Error(`chain ${walked}: ${chain.error ?? `${chain.segmentCount} segments`}`);
        if (walked < 4) seen.push(chain.head, chain.indirect ? 1 : 0, chain.segGpa[0]!, chain.segGpa[1]!, chain.segOffset[1]!);
        queue.pushUsed(chain.head, 0);
        walked++;
      }
      queue.flushUsed();
    };
    const rounds = (count: number) => {
      for (let r = 0; r < count; r++) {
        // Half a ring of chains of which half take two slots: the driver's slots are all free again each round.
        for (let k = 0; k < QSIZE / 4; k++) post(posted++);
        walkAll();
        while (ring.peekUsed() !== null) ring.takeUsed();
      }
    };
    rounds(400);
    expect(seen).toEqual([0, 1, 2, 3].flatMap((i) => [i, i % 2, buffer(i), buffer(i) + 12, buffer(i) + 12 - BASE]));

    const inWalk = await fewestAllocations(['popChain', 'walkIndirect', 'addDescriptor', 'addSegments', 'pushUsed', 'flushUsed'], () => rounds(400));
    expect(walked).toBeGreaterThanOrEqual(800 * (QSIZE / 4));
    expect(inWalk).toEqual([]);
  });
});
