// A queue handed over between threads: the main thread consumes part of a ring, exports its
// state, and a worker thread with its own views of the same (shared) memory continues exactly
// there. Runs the compiled modules in dist/ inside the worker (build with `npx tsc -p .`).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { DescriptorChain } from '../../virtio/split-queue.js';
import { RingBuilder, createTestMemory, readBytes } from '../support/ring-builder.js';

const compiled = fileURLToPath(new URL('../../dist/virtio/split-queue.js', import.meta.url));

const workerSource = `
const { parentPort, workerData } = require('node:worker_threads');
(async () => {
  const { GuestMemory } = await import(workerData.dist + '/guest-memory.js');
  const { SplitQueue, DescriptorChain } = await import(workerData.dist + '/split-queue.js');
  const memory = new GuestMemory(workerData.regions.map((r) => ({ ...r, bytes: new Uint8Array(r.buffer) })));
  const loc = (gpa, len) => memory.translate(gpa, len);
  const q = workerData.queue;
  const queue = new SplitQueue({
    memory, size: q.size, eventIdx: true, name: 'vring 0 (worker)',
    descTable: loc(q.descGpa, 16 * q.size), availRing: loc(q.availGpa, 6 + 2 * q.size), usedRing: loc(q.usedGpa, 6 + 8 * q.size),
  });
  queue.importState(workerData.state);
  const chain = new DescriptorChain();
  const heads = [];
  while (queue.popChain(chain)) {
    const stamp = new Uint8Array(16).fill(0xa0 + chain.head);
    const n = chain.copyIn(stamp, 0, 16, 0);
    queue.pushUsed(chain.head, n);
    heads.push(chain.head);
  }
  queue.flushUsed();
  parentPort.postMessage({ heads, notify: queue.needsNotification(), state: queue.exportState() });
})().catch((e) => parentPort.postMessage({ error: String(e && e.stack || e) }));
`;

describe('queue handover between threads', () => {
  it('continues in a worker from the exported state with no chain lost or repeated', async () => {
    if (!existsSync(compiled)) throw new Error(`${compiled} is missing: run \`npx tsc -p .\` before this test`);
    const memory = createTestMemory([{ gpa: 0, size: 0x40000 }], { shared: true });
    const ring = new RingBuilder(memory, { size: 8 });
    const driver = ring.driver({ eventIdx: true });
    const heads = Array.from({ length: 6 }, (_, i) => driver.addBuffers([{ gpa: 0x10000 + i * 0x1000, len: 64, writable: true }]));
    driver.publish();
    driver.setUsedEvent(4); // interrupt once used.idx passes 4

    const queue = ring.queue({ eventIdx: true, name: 'vring 0' });
    const chain = new DescriptorChain();
    for (let i = 0; i < 3; i++) {
      expect(queue.popChain(chain)).toBe(true);
      queue.pushUsed(chain.head, 0);
    }
    queue.flushUsed();
    expect(queue.needsNotification()).toBe(true); // first decision
    const state = queue.exportState();

    const region = memory.regions[0]!;
    const worker = new Worker(workerSource, {
      eval: true,
      workerData: {
        dist: new URL('../../dist/virtio', import.meta.url).href,
        regions: [{ guestPhysAddr: region.guestPhysAddr, size: region.size, userAddr: region.userAddr, buffer: region.bytes.buffer }],
        queue: { size: ring.size, descGpa: ring.descGpa, availGpa: ring.availGpa, usedGpa: ring.usedGpa },
        state,
      },
    });
    try {
      const reply = await new Promise<{ heads: number[]; notify: boolean; state: { lastAvail: number; lastUsed: number }; error?: string }>((resolve, reject) => {
        worker.once('message', resolve);
        worker.once('error', reject);
      });
      if (reply.error) throw new Error(`worker failed: ${reply.error}`);
      expect(reply.heads).toEqual(heads.slice(3));
      expect(reply.notify).toBe(true); // 3 → 6 crosses used_event 4
      expect(reply.state).toMatchObject({ lastAvail: 6, lastUsed: 6 });
    } finally {
      await worker.terminate();
    }
    const used = Array.from({ length: 6 }, () => driver.popUsed());
    expect(used.map((u) => u?.id)).toEqual(heads);
    expect(used.map((u) => u?.len)).toEqual([0, 0, 0, 16, 16, 16]);
    expect(readBytes(memory, 0x13000, 16).every((b) => b === 0xa0 + heads[3]!)).toBe(true);
  });
});
