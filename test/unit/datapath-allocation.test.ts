// A worker's bursts must allocate nothing per frame: whatever they allocate fills the worker's
// young generation, and each scavenge stops forwarding for a few hundred microseconds
// (docs/internals.md). Both directions run here over a memif port (our server, fed and read by
// our client), small frames (copied in a row at the end of the burst) and full-sized ones,
// under V8's sampling heap profiler with objects the scavenger freed included. Only what the
// bursts themselves allocate counts: the test's guest driver and memif peer allocate freely.
// One allocation is allowed, by design: a view per copy of more than 128 bytes; and less than
// half a heap number per frame of anything else (test/support/heap-sampling.ts says why).
import { afterEach, describe, expect, it } from 'vitest';
import { MemifPort } from '../../sys/memif-rings.js';
import { createMemoryLink } from '../../relay/datapath/memory-link.js';
import { Counter } from '../../relay/datapath/counters.js';
import { TX_HDR, openTxRig, txDirection } from '../support/tx-direction.js';
import { rxDirection } from '../support/rx-direction.js';
import { connectedPair, numberedFrame, sendFrames, until, type Cleanup } from '../support/memif-pair.js';
import { BURST_BYTES_PER_FRAME, expectOnlyCopyViews, fewestAllocations } from '../support/heap-sampling.js';

const cleanups: Cleanup[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** Frames a round: within the memif ring of 64 and the guest ring of 256, a burst each. */
const PER_ROUND = 32;
/** Frames of a round longer than the word-copy limit: each may cost one view. */
const LARGE_PER_ROUND = PER_ROUND / 2;
/** Rounds before sampling (V8 optimizes the bursts as a worker's run) and per sampled window. */
const WARM_ROUNDS = 400;
const WINDOW_ROUNDS = 200;

function frames(): Uint8Array[] {
  return Array.from({ length: PER_ROUND }, (_, i) => numberedFrame(i, i % 2 === 0 ? 64 : 1514)); // LARGE_PER_ROUND of 1514
}

async function memifPort() {
  const { up } = await connectedPair(cleanups);
  await until(() => up.server.length === 1 && up.client.length === 1);
  const rig = openTxRig('mem0', {}, undefined, undefined, createMemoryLink('mem0'));
  cleanups.push(() => rig.close());
  const port = { mode: 'single' as const, active: 0, members: [{ netdev: 'memif0', handle: up.server[0], up: true }] };
  return { rig, port, peer: MemifPort.attach(up.client[0]) };
}

describe('a burst allocates nothing per frame but a view per large copy', () => {
  it('VM→NF over memif: from the guest ring into the peer\'s buffers', async () => {
    const { rig, port, peer } = await memifPort();
    const g = txDirection(rig, 1, { queueSize: 256 }, port);
    const header = new Uint8Array(TX_HDR);
    const batch = frames();
    let forwarded = 0;
    const rounds = (count: number) => {
      for (let r = 0; r < count; r++) {
        for (const f of batch) g.post(header, f);
        g.publish();
        const moved = g.d.burst();
        if (moved !== PER_ROUND || g.reclaim() !== PER_ROUND) throw new Error(`round ${r}: ${moved} frames moved`);
        let got = 0;
        peer.receive(() => void got++, PER_ROUND);
        if (got !== PER_ROUND) throw new Error(`round ${r}: the peer received ${got} frames`);
        forwarded += got;
      }
    };
    rounds(WARM_ROUNDS);
    expectOnlyCopyViews(await fewestAllocations(['burst'], () => rounds(WINDOW_ROUNDS)), WINDOW_ROUNDS * LARGE_PER_ROUND, WINDOW_ROUNDS * PER_ROUND * BURST_BYTES_PER_FRAME);
    expect(forwarded).toBeGreaterThanOrEqual((WARM_ROUNDS + WINDOW_ROUNDS) * PER_ROUND);
    expect(g.counter(Counter.Packets)).toBe(forwarded);
    g.d.release();
  });

  it('NF→VM over memif: from the peer\'s buffers into the guest\'s receive buffers', async () => {
    const { rig, port, peer } = await memifPort();
    const g = rxDirection(rig, 1, { mergeable: true }, port);
    const batch = frames();
    let delivered = 0;
    const rounds = (count: number) => {
      for (let r = 0; r < count; r++) {
        g.postMergeable(PER_ROUND, 2048);
        if (sendFrames(peer, batch) !== PER_ROUND) throw new Error(`round ${r}: the peer's ring was full`);
        const moved = g.d.burst();
        const got = g.received();
        if (moved !== PER_ROUND || got.length !== PER_ROUND) throw new Error(`round ${r}: ${moved} frames moved, ${got.length} received`);
        delivered += got.length;
      }
    };
    rounds(WARM_ROUNDS);
    expectOnlyCopyViews(await fewestAllocations(['burst'], () => rounds(WINDOW_ROUNDS)), WINDOW_ROUNDS * LARGE_PER_ROUND, WINDOW_ROUNDS * PER_ROUND * BURST_BYTES_PER_FRAME);
    expect(delivered).toBeGreaterThanOrEqual((WARM_ROUNDS + WINDOW_ROUNDS) * PER_ROUND);
    expect(g.counter(Counter.Packets)).toBe(delivered);
    g.d.release();
  });
});
