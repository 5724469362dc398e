// The chain walk runs once per frame on a worker: whatever it allocates fills the worker's young
// generation, and every scavenge stops forwarding for a few hundred microseconds. A front-end
// whose "guest-physical" addresses are its own virtual addresses (DPDK's virtio-user) has buffers
// far above 2^31, which V8 holds as heap numbers wherever they are passed as one number. V8's
// sampling heap profiler, asked to keep objects the scavenger already freed, sees every allocation
// of the walk: none is allowed.
import { describe, expect, it } from 'vitest';
import { Session } from 'node:inspector';
import { GuestMemory } from '../../virtio/guest-memory.js';
import { DescriptorChain, SplitQueue } from '../../virtio/split-queue.js';
import { SplitQueueDriver } from '../../virtio/split-queue-driver.js';

const QSIZE = 256;
/** Where the buffers are: a virtual address of the kind virtio-user sends, bit 31 set in its low word. */
const BASE = 0x7f00_8000_0000;

interface ProfileNode {
  callFrame: { functionName: string; url: string };
  selfSize: number;
  children: ProfileNode[];
}

/** Bytes sampled in frames of `functions` (or called from them) while `work` runs. */
async function sampledBytes(functions: string[], work: () => void): Promise<number> {
  const session = new Session();
  session.connect();
  const post = <T>(method: string, params?: object) =>
    new Promise<T>((resolve, reject) => session.post(method, params ?? {}, (err, result) => (err ? reject(err) : resolve(result as T))));
  try {
    await post('HeapProfiler.startSampling', { samplingInterval: 64, includeObjectsCollectedByMinorGC: true, includeObjectsCollectedByMajorGC: true });
    work();
    const { profile } = await post<{ profile: { head: ProfileNode } }>('HeapProfiler.stopSampling');
    let bytes = 0;
    const visit = (node: ProfileNode, inside: boolean) => {
      const here = inside || functions.includes(node.callFrame.functionName);
      if (here) bytes += node.selfSize;
      for (const child of node.children) visit(child, here);
    };
    visit(profile.head, false);
    return bytes;
  } finally {
    session.disconnect();
  }
}

describe('the descriptor walk', () => {
  it('allocates nothing per chain, with buffers at addresses above 2^31, and translates them exactly', async () => {
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
      name: 'tx',
    });
    const buffer = (i: number) => BASE + 0x10_0000 + (i % QSIZE) * 2048;
    // Two descriptors a chain (header, frame), as a guest without ANY_LAYOUT posts them.
    const post = (i: number) => driver.addBuffers([{ gpa: buffer(i), len: 12, writable: false }, { gpa: buffer(i) + 12, len: 64, writable: false }]);
    const chain = new DescriptorChain();
    let posted = 0;
    let walked = 0;
    const gpas: number[] = [];
    const walkAll = () => {
      while (queue.popChain(chain)) {
        if (chain.error !== null || chain.segmentCount !== 2) throw new Error(`chain ${walked}: ${chain.error ?? `${chain.segmentCount} segments`}`);
        if (walked < 4) gpas.push(chain.segGpa[0]!, chain.segGpa[1]!, chain.segOffset[1]!);
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
    expect(gpas).toEqual([0, 1, 2, 3].flatMap((i) => [buffer(i), buffer(i) + 12, buffer(i) + 12 - BASE]));

    // The driver allocates as it posts: only what the queue's own functions allocate counts.
    const inWalk = await sampledBytes(['popChain', 'walk', 'addDescriptor', 'addSegments'], () => rounds(400));
    expect(walked).toBe(800 * (QSIZE / 2));
    expect(inWalk).toBe(0);
  });
});
