// An AF_XDP port that receives straight into the guest's buffers (VIRTIOFWD_XDP_RX=guest): the
// VF→VM direction without a worker thread, its guest ring in a memfd that is also the port's UMEM,
// a veth whose far end, in a namespace, sends with a raw socket. Each test opens a port of its
// own: the buffers a port holds belong to the ring it was given them by.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Counter } from '../../relay/datapath/counters.js';
import { GuestRxTable, guestRxFallback, postedGuestBuffers } from '../../sys/xdp-guest-rx.js';
import type { XdpPortHandle } from '../../sys/xdp-socket.js';
import { createNetns, createVethPair, deleteLink, deleteNetns, requireRoot, uniqueTag } from '../support/netns.js';
import { sleep, stopAll } from '../support/processes.js';
import { TX_RIG_MEMORY, openTxRig, type TxRig } from '../support/tx-direction.js';
import { RX_HDR, rxDirection, type ReceivedFrame, type RxDirection } from '../support/rx-direction.js';
import { hex, peerSend, testFrame } from '../support/raw-peer.js';

const ready = requireRoot();
const tag = uniqueTag();
const ns = `xrns${tag}`;
const vf = `xrv${tag}`;
const peer = `xrp${tag}`;
/** Where rxDirection puts its buffers: one after another from here, each rounded up to 64 bytes. */
const BUFFERS_AT = 0x10000;

function openRig(): TxRig {
  return openTxRig(vf, {}, TX_RIG_MEMORY, { ringSize: 256, guestReceive: true }, undefined, { guestUmem: true });
}

const table = (rig: TxRig) => (rig.handle as XdpPortHandle).guestRx!;

/** Bursts until `want` frames came (or 5 s passed). */
async function receive(g: RxDirection, want: number, got: ReceivedFrame[] = []): Promise<ReceivedFrame[]> {
  const deadline = Date.now() + 5000;
  while (got.length < want && Date.now() < deadline) {
    g.d.burst();
    got.push(...g.received());
    if (got.length < want) await sleep(2);
  }
  return got;
}

describe.skipIf(!ready)('an AF_XDP port that receives into the guest buffers', () => {
  beforeAll(() => {
    createNetns(ns);
    createVethPair(vf, peer, { nsB: ns, noIpv6: true });
  });

  afterAll(async () => {
    await stopAll();
    deleteLink(vf);
    deleteNetns(ns);
  });

  it('the kernel writes each frame into a posted buffer, after room for the header; the relay adds only the header and the used entry', async () => {
    const rig = openRig();
    try {
      expect(table(rig)).not.toBeNull();
      const g = rxDirection(rig, 21, { mergeable: true });
      g.postMergeable(16, 2048);
      g.d.burst(); // the 16 buffers go to the fill ring
      const sizes = [60, 200, 1000, 1514];
      const sent = Array.from({ length: 10 }, (_, i) => testFrame(i, sizes[i % sizes.length]));
      expect(peerSend(ns, peer, sent)).toBe(10);
      await sleep(100);
      // No burst has run since: the frames are where the guest will read them already.
      const bytes = new Uint8Array(rig.mem.buffer);
      sent.forEach((f, i) => {
        const at = BUFFERS_AT + i * 2048 + RX_HDR;
        expect(hex(bytes.subarray(at, at + f.length)), `frame ${i}`).toBe(hex(f));
      });
      const got = await receive(g, 10);
      expect(got.map((r) => hex(r.frame))).toEqual(sent.map(hex));
      for (const r of got) expect([...r.header]).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
      expect(got.map((r) => r.head)).toEqual(g.postedHeads.slice(0, 10));
      expect(g.counter(Counter.Packets)).toBe(10);
      expect(g.counter(Counter.RxBytes)).toBe(sent.reduce((n, f) => n + f.length, 0));
      expect(g.counter(Counter.DropsQueueFull) + g.counter(Counter.DropsBadFrame) + g.counter(Counter.DropsNotConnected)).toBe(0);
      // The six buffers still with the kernel are the ring's newest: a stop rewinds over them.
      expect(postedGuestBuffers(table(rig))).toEqual(g.postedHeads.slice(10).map((head, i) => ({ vring: 0, head, availIdx: 10 + i })));
      expect(guestRxFallback(table(rig))).toBeNull();
      g.d.release();
    } finally {
      rig.close();
    }
  });

  it('a guest that falls behind: frames wait in relay chunks behind its buffers, and reach it whole and in order once it posts more', async () => {
    const rig = openRig();
    try {
      const g = rxDirection(rig, 22, { mergeable: true });
      g.postMergeable(8, 2048);
      g.d.burst(); // 8 buffers posted; the guest has no more, so relay chunks follow them
      const sent = Array.from({ length: 40 }, (_, i) => testFrame(100 + i, 60 + 37 * i));
      expect(peerSend(ns, peer, sent)).toBe(40);
      await sleep(100);
      let got = await receive(g, 8);
      for (let i = 0; i < 5; i++) {
        g.d.burst();
        got.push(...g.received());
      }
      expect(got.length).toBe(8);
      expect(g.d.hasWork()).toBe(false); // the rest wait for buffers: not work
      g.d.foldKernelDrops();
      expect(g.counter(Counter.DropsKernelRing)).toBe(0);
      g.postMergeable(64, 2048);
      got = await receive(g, 40, got);
      expect(got.map((r) => hex(r.frame))).toEqual(sent.map(hex));
      // Used entries in avail order: each frame in the next buffer the guest posted.
      expect(got.map((r) => r.head)).toEqual(g.postedHeads.slice(0, 40));
      // Relay chunks still wait in the fill ring ahead of any new guest buffer: the guest's
      // remaining chains are reserved for their frames, not posted.
      const more = Array.from({ length: 20 }, (_, i) => testFrame(200 + i, 1514));
      expect(peerSend(ns, peer, more)).toBe(20);
      got = await receive(g, 60, got);
      expect(got.slice(40).map((r) => hex(r.frame))).toEqual(more.map(hex));
      expect(got.map((r) => r.head)).toEqual(g.postedHeads.slice(0, 60));
      const left = postedGuestBuffers(table(rig));
      expect(left.map((p) => p.head)).toEqual(g.postedHeads.slice(60));
      expect(left.map((p) => p.availIdx)).toEqual(g.postedHeads.slice(60).map((_, i) => 60 + i));
      g.d.foldKernelDrops();
      expect(g.counter(Counter.DropsKernelRing)).toBe(0);
      expect(g.counter(Counter.Packets)).toBe(60);
      g.d.release();
    } finally {
      rig.close();
    }
  });

  it('a guest that caught up with buffers to spare gets frames in place again: the relay chunks drain and none are added', async () => {
    const rig = openRig();
    try {
      const g = rxDirection(rig, 27, { mergeable: true });
      const t = new GuestRxTable(table(rig));
      g.postMergeable(8, 2048);
      g.d.burst(); // the guest has no more: relay chunks follow its 8 buffers
      expect(t.relayOut).toBeGreaterThan(64);
      g.postMergeable(128, 2048); // it catches up, with more buffers than a round of traffic takes
      const sent: Uint8Array[] = [];
      let got: ReceivedFrame[] = [];
      // Rounds of 32 frames; the guest posts a buffer for each frame it gets.
      for (let round = 0; round < 30 && !(t.relayOut === 0 && t.reserved === 0); round++) {
        const batch = Array.from({ length: 32 }, (_, i) => testFrame(700 + sent.length + i, 60 + ((sent.length + i) % 1400)));
        expect(peerSend(ns, peer, batch)).toBe(32);
        sent.push(...batch);
        const before = got.length;
        got = await receive(g, sent.length, got);
        g.postMergeable(got.length - before, 2048);
        g.d.burst();
      }
      // Every relay chunk is parked again and the guest's buffers are in the fill ring: the
      // next frames can only land in them. (Topping the fill ring up while the guest kept pace
      // would have kept the port copying: its reserved buffers never run short.)
      expect(t.relayOut).toBe(0);
      expect(t.reserved).toBe(0);
      expect(t.outstanding).toBeGreaterThanOrEqual(128);
      const last = Array.from({ length: 32 }, (_, i) => testFrame(1700 + i, 1514));
      expect(peerSend(ns, peer, last)).toBe(32);
      sent.push(...last);
      got = await receive(g, sent.length, got);
      expect(t.relayOut).toBe(0);
      expect(got.map((r) => hex(r.frame))).toEqual(sent.map(hex));
      expect(got.map((r) => r.head)).toEqual(g.postedHeads.slice(0, sent.length));
      g.d.foldKernelDrops();
      expect(g.counter(Counter.DropsKernelRing)).toBe(0);
      expect(g.counter(Counter.DropsQueueFull) + g.counter(Counter.DropsBadFrame)).toBe(0);
      g.d.release();
    } finally {
      rig.close();
    }
  });

  it('a direction that resumes from the used index (its worker ended) takes none of the buffers the kernel holds a second time', async () => {
    const rig = openRig();
    try {
      const g = rxDirection(rig, 26, { mergeable: true });
      g.postMergeable(16, 2048);
      g.d.burst();
      expect(postedGuestBuffers(table(rig)).length).toBe(16);
      g.restartFromGuest(); // used.idx is 0: a resume from guest memory alone would take all 16 again
      g.d.burst();
      expect(postedGuestBuffers(table(rig)).map((p) => p.head)).toEqual(g.postedHeads);
      const sent = Array.from({ length: 10 }, (_, i) => testFrame(600 + i, 300));
      expect(peerSend(ns, peer, sent)).toBe(10);
      const got = await receive(g, 10);
      expect(got.map((r) => hex(r.frame))).toEqual(sent.map(hex));
      expect(got.map((r) => r.head)).toEqual(g.postedHeads.slice(0, 10));
      g.postMergeable(4, 2048);
      g.d.burst();
      expect(postedGuestBuffers(table(rig)).map((p) => p.head)).toEqual(g.postedHeads.slice(10));
      g.d.release();
    } finally {
      rig.close();
    }
  });

  it('a buffer too small for a frame in place: the port copies from then on, and frames keep their order across the change', async () => {
    const rig = openRig();
    try {
      const g = rxDirection(rig, 23, { mergeable: true });
      g.postMergeable(4, 2048);
      g.d.burst();
      g.postMergeable(4, 1024);
      g.d.burst(); // the first 1024-byte buffer cannot take a frame in place
      expect(guestRxFallback(table(rig))).toEqual({ unfitBufferBytes: 1024 });
      const sent = Array.from({ length: 8 }, (_, i) => testFrame(300 + i, 200 + i));
      expect(peerSend(ns, peer, sent)).toBe(8);
      await sleep(100);
      let got = await receive(g, 8);
      expect(got.map((r) => hex(r.frame))).toEqual(sent.map(hex));
      expect(got.map((r) => r.head)).toEqual(g.postedHeads.slice(0, 8));
      g.postMergeable(8, 1024);
      const more = Array.from({ length: 8 }, (_, i) => testFrame(400 + i, 900));
      expect(peerSend(ns, peer, more)).toBe(8);
      got = await receive(g, 16, got);
      expect(got.slice(8).map((r) => hex(r.frame))).toEqual(more.map(hex));
      expect(postedGuestBuffers(table(rig))).toEqual([]);
      expect(g.counter(Counter.DropsQueueFull) + g.counter(Counter.DropsBadFrame)).toBe(0);
      g.d.release();
    } finally {
      rig.close();
    }
  });

  it('a hostile guest cannot have the kernel write outside its memory: a buffer past its end is a bad chain, one whose frame room runs past it is copied into', async () => {
    let rig = openRig();
    try {
      const g = rxDirection(rig, 24, { mergeable: true });
      g.postAt([{ gpa: TX_RIG_MEMORY + 4096, len: 2048 }]);
      g.postMergeable(4, 2048);
      g.d.burst();
      expect(g.counter(Counter.BadChains)).toBe(1);
      expect(g.received().map((r) => r.frame.length)).toEqual([0]); // it went back empty
      expect(postedGuestBuffers(table(rig)).map((p) => p.head)).toEqual(g.postedHeads.slice(1));
      expect(guestRxFallback(table(rig))).toBeNull();
      const sent = [testFrame(500, 600), testFrame(501, 1514)];
      expect(peerSend(ns, peer, sent)).toBe(2);
      const got = await receive(g, 2);
      expect(got.map((r) => hex(r.frame))).toEqual(sent.map(hex));
      g.d.release();
    } finally {
      rig.close();
    }
    rig = openRig();
    try {
      const g = rxDirection(rig, 25, { mergeable: true });
      // Its last 1,024 bytes: room for the header and 1,012 bytes, less than a frame may need.
      g.postAt([{ gpa: TX_RIG_MEMORY - 1024, len: 1024 }]);
      g.postMergeable(4, 2048);
      g.d.burst();
      expect(postedGuestBuffers(table(rig))).toEqual([]);
      expect(guestRxFallback(table(rig))).toEqual({ unfitBufferBytes: 1024 });
      const sent = [testFrame(502, 1000), testFrame(503, 1514)];
      expect(peerSend(ns, peer, sent)).toBe(2);
      const got = await receive(g, 2);
      expect(got.map((r) => hex(r.frame))).toEqual(sent.map(hex));
      expect(got.map((r) => r.head)).toEqual(g.postedHeads.slice(0, 2));
      g.d.release();
    } finally {
      rig.close();
    }
  });
});
