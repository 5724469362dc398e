// A burst must allocate nothing per frame on the kernel's ports either: the system calls go
// through koffi, and a burst makes one or two of them (sendmmsg on AF_PACKET; the TX kick and the
// completion reap on AF_XDP). VM→VF, each port sends on a veth whose peer, in a namespace, drops
// what arrives; VF→VM, a sender there sends a round of frames each time the test asks, and the
// test bursts until the round has reached the guest. Frames of 64 and 1514 bytes; the only allocation allowed is a view per copy of
// more than 128 bytes (test/support/heap-sampling.ts), and up to 4 bytes a frame on average of
// anything else: a heap number per frame is 16 bytes a frame, and V8 re-optimizing a burst while
// it is sampled can leave a few kilobytes in a window.
//
// Not here, because they allocate and the cause is not found yet (docs/internals.md):
// - VM→VF on an AF_XDP port that copies into the relay's own UMEM: in about one run in three its
//   bursts allocated 3–7 bytes a frame in every window, in frames the profiler could not place
//   consistently (drain, pushUsed, a module's top level).
// - VF→VM on an AF_XDP port receiving into the guest's buffers, after VM→VF bursts ran in the same
//   process (as on a worker): about 300 bytes a round of 32 frames whatever their size, so per
//   burst rather than per frame, in VfToVm.burst and XdpPort.receive. Alone in its process it
//   allocated nothing, idle bursts included.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Counter } from '../../relay/datapath/counters.js';
import { createNetns, createVethPair, deleteLink, deleteNetns, requireRoot, uniqueTag } from '../support/netns.js';
import { TX_HDR, openTxRig, txDirection, type TxRig } from '../support/tx-direction.js';
import { startStream, testFrame } from '../support/raw-peer.js';
import { rxDirection } from '../support/rx-direction.js';
import { sleep, stopAll } from '../support/processes.js';
import { BURST_BYTES_PER_FRAME, expectOnlyCopyViews, fewestAllocations } from '../support/heap-sampling.js';

const ready = requireRoot();
const tag = uniqueTag();
const ns = `allocns${tag}`;

const PER_ROUND = 32;
const LARGE_PER_ROUND = PER_ROUND / 2;
const WARM_ROUNDS = 400;
const WINDOW_ROUNDS = 200;
/** Bursts a round may take for its chains to come back (AF_XDP returns them on completion). */
const MAX_BURSTS = 1000;

/** VF→VM: rounds before sampling and per window (each waits for the sender in the namespace). */
const RX_WARM_ROUNDS = 300;
const RX_WINDOW_ROUNDS = 150;

const rigs: { vf: string; rig: TxRig }[] = [];

function rigOn(name: string, open: (vf: string) => TxRig): { rig: TxRig; peer: string } {
  const vf = `al${name}${tag}`;
  const peer = `ap${name}${tag}`;
  createVethPair(vf, peer, { nsB: ns, noIpv6: true });
  const rig = open(vf);
  rigs.push({ vf, rig });
  return { rig, peer };
}

/** Rounds of PER_ROUND frames through a fresh direction on `rig`, the last ones sampled. */
async function burstsOf({ rig }: { rig: TxRig }): Promise<void> {
  const g = txDirection(rig, 3, { queueSize: 256 });
  const header = new Uint8Array(TX_HDR);
  const batch = Array.from({ length: PER_ROUND }, (_, i) => testFrame(i, i % 2 === 0 ? 64 : 1514));
  let sent = 0;
  const rounds = (count: number) => {
    for (let r = 0; r < count; r++) {
      for (const f of batch) g.post(header, f);
      g.publish();
      let back = 0;
      for (let b = 0; back < PER_ROUND && b < MAX_BURSTS; b++) {
        g.d.burst();
        back += g.reclaim();
      }
      if (back !== PER_ROUND) throw new Error(`round ${r}: ${back} of ${PER_ROUND} chains came back`);
      sent += PER_ROUND;
    }
  };
  rounds(WARM_ROUNDS);
  const allocations = await fewestAllocations(['burst'], () => rounds(WINDOW_ROUNDS));
  expectOnlyCopyViews(allocations, WINDOW_ROUNDS * LARGE_PER_ROUND, WINDOW_ROUNDS * PER_ROUND * BURST_BYTES_PER_FRAME);
  expect(g.counter(Counter.Packets)).toBe(sent);
  expect(g.counter(Counter.DropsQueueFull) + g.counter(Counter.DropsBadFrame)).toBe(0);
  g.d.release();
}

describe.skipIf(!ready)('a burst on a kernel port allocates nothing per frame but a view per large copy', () => {
  beforeAll(() => createNetns(ns));

  afterAll(async () => {
    await stopAll();
    for (const { vf, rig } of rigs.splice(0)) {
      rig.close();
      deleteLink(vf);
    }
    deleteNetns(ns);
  });

  it('VM→VF, AF_PACKET: one sendmmsg a burst, gathering from guest memory', async () => {
    await burstsOf(rigOn('pk', (vf) => openTxRig(vf)));
  });

  it('VM→VF, AF_XDP with guest memory in the UMEM: frames sent from where the guest wrote them', async () => {
    await burstsOf(rigOn('xg', (vf) => openTxRig(vf, {}, undefined, { ringSize: 256 }, undefined, { guestUmem: true })));
  });

  it('VF→VM, AF_PACKET: frames copied from the packet ring into the guest\'s buffers', async () => {
    await receiveBurstsOf(rigOn('rp', (vf) => openTxRig(vf)));
  }, 120_000);

});

/** Rounds of PER_ROUND frames from the sender in the namespace into a guest ring on `rig`, the last ones sampled. */
async function receiveBurstsOf({ rig, peer }: { rig: TxRig; peer: string }): Promise<void> {
  const g = rxDirection(rig, 4, { mergeable: true });
  const stream = await startStream(ns, peer, Array.from({ length: PER_ROUND }, (_, i) => testFrame(i, i % 2 === 0 ? 64 : 1514)));
  let delivered = 0;
  // A round's worth of buffers ahead: the guest never runs out of them.
  g.postMergeable(PER_ROUND, 2048);
  const rounds = async (count: number) => {
    for (let r = 0; r < count; r++) {
      g.postMergeable(PER_ROUND, 2048);
      if ((await stream.send()) !== PER_ROUND) throw new Error(`round ${r}: the sender's kernel refused frames`);
      let got = 0;
      const deadline = Date.now() + 5000;
      while (got < PER_ROUND && Date.now() < deadline) {
        g.d.burst();
        got += g.received().length;
        if (got < PER_ROUND) await sleep(1);
      }
      if (got !== PER_ROUND) throw new Error(`round ${r}: ${got} of ${PER_ROUND} frames reached the guest`);
      delivered += got;
    }
  };
  await rounds(RX_WARM_ROUNDS);
  const allocations = await fewestAllocations(['burst'], () => rounds(RX_WINDOW_ROUNDS));
  expectOnlyCopyViews(allocations, RX_WINDOW_ROUNDS * LARGE_PER_ROUND, RX_WINDOW_ROUNDS * PER_ROUND * BURST_BYTES_PER_FRAME);
  expect(g.counter(Counter.Packets)).toBe(delivered);
  await stream.process.stop();
  g.d.release();
}
