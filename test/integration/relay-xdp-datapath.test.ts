// The relay's two directions over an AF_XDP port, without a worker thread: guest rings in shared
// memory driven from the test, a veth (MTU 1500) whose near end has the redirect program and whose
// far end, in a namespace, sends and captures with raw sockets. AF_XDP gives the relay no kernel
// offload, so a guest's checksum requests are completed and its super-frames cut into segments by
// the relay; the segments are checked here as a receiving stack checks them.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, writeNetHeader } from '../../virtio/net-header.js';
import { Counter } from '../../relay/datapath/counters.js';
import { createNetns, createVethPair, deleteLink, deleteNetns, requireRoot, uniqueTag } from '../support/netns.js';
import { sleep, stopAll } from '../support/processes.js';
import { TX_HDR as HDR, TX_RIG_MEMORY, openTxRig, txDirection, type TxRig } from '../support/tx-direction.js';
import { rxDirection } from '../support/rx-direction.js';
import { MAX_TX_PIECES, XdpPort, xdpFramesInPlace } from '../../sys/xdp-port.js';
import { multiBufferXdp } from '../support/env.js';
import type { XdpPortHandle } from '../../sys/xdp-socket.js';
import { hex, testFrame, peerSend, startCapture } from '../support/raw-peer.js';
import { superFrame, segmentProblems, type SuperFrame } from '../support/tcp-frames.js';
import { randomOffloadRequest, rng } from '../support/hostile-frontend.js';

const ready = requireRoot();
const tag = uniqueTag();
const ns = `xdpns${tag}`;
const vf = `xdv${tag}`;
const peer = `xdp${tag}`;
const ETHERTYPE = 0x88b5;

let rig: TxRig;

function offloadHeader(frame: SuperFrame, gso: boolean, mss = 1448): Uint8Array {
  const h = new Uint8Array(HDR);
  writeNetHeader(h, 0, HDR, {
    flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
    gsoType: gso ? (frame.v6 ? VIRTIO_NET_HDR_GSO_TCPV6 : VIRTIO_NET_HDR_GSO_TCPV4) : 0,
    hdrLen: frame.headers,
    gsoSize: gso ? mss : 0,
    csumStart: frame.l4,
    csumOffset: 16,
    numBuffers: 0,
  });
  return h;
}

const payload = (n: number, seed: number) => Uint8Array.from({ length: n }, (_, i) => (i * 7 + seed) & 0xff);

/** The frames of `ethertype` a capture printed. */
function captured(output: string): Uint8Array[] {
  return output.split('\n').filter((l) => l.startsWith('frame ')).map((l) => new Uint8Array(Buffer.from(l.slice(6), 'hex')));
}

describe.skipIf(!ready)('the relay over an AF_XDP port', () => {
  beforeAll(() => {
    createNetns(ns);
    createVethPair(vf, peer, { nsB: ns, noIpv6: true });
    rig = openTxRig(vf, {}, undefined, { ringSize: 64 });
  });

  afterAll(async () => {
    await stopAll();
    rig?.close();
    deleteLink(vf);
    deleteNetns(ns);
  });

  it('VM→VF: frames leave as the guest wrote them; one longer than the MTU is a bad frame, a tagged one 4 bytes longer is not', async () => {
    const g = txDirection(rig, 5);
    const capture = startCapture(ns, peer, ETHERTYPE, 3);
    await capture.waitForOutput(/ready/);
    const frames = [testFrame(1, 60), testFrame(2, 1514), testFrame(3, 1515)];
    const tagged = testFrame(4, 1518);
    tagged.set([0x81, 0x00, 0x00, 0x05, ETHERTYPE >> 8, ETHERTYPE & 0xff], 12);
    for (const f of [...frames, tagged]) g.post(new Uint8Array(HDR), f);
    g.publish();
    expect(g.d.burst()).toBe(4);
    await capture.waitForOutput(/done \d+/, 15_000);
    const got = captured(capture.output());
    expect(got.slice(0, 2).map(hex)).toEqual([frames[0], frames[1]].map(hex));
    // The peer's kernel takes the tag out of a received frame: the rest is the tagged frame's.
    expect(hex(got[2])).toBe(hex(new Uint8Array([...tagged.subarray(0, 12), ...tagged.subarray(16)])));
    expect(g.counter(Counter.Packets)).toBe(3);
    expect(g.counter(Counter.Bytes)).toBe(60 + 1514 + 1518);
    expect(g.counter(Counter.DropsBadFrame)).toBe(1);
    expect(g.reclaim()).toBe(4);
    g.d.release();
  });

  it('VM→VF with guest offloads: a checksum request is completed, IPv4 and IPv6 super-frames leave as complete segments', async () => {
    const g = txDirection(rig, 5, { hostOffloads: true });
    const small = superFrame({ payload: payload(900, 1) });
    const big4 = superFrame({ payload: payload(9000, 2), seq: 1000 });
    const big6 = superFrame({ v6: true, payload: payload(5000, 3), flags: 0x19 }); // FIN on the last segment only
    // IPv6 headers are 20 bytes longer: 1440-byte segments fill a 1500-byte MTU; 1448 would not.
    const tooLong6 = superFrame({ v6: true, payload: payload(3000, 4) });
    const segments4 = Math.ceil(9000 / 1448);
    const segments6 = Math.ceil(5000 / 1440);
    const capture = startCapture(ns, peer, 0x0800, 1 + segments4);
    const capture6 = startCapture(ns, peer, 0x86dd, segments6);
    await capture.waitForOutput(/ready/);
    await capture6.waitForOutput(/ready/);
    g.post(offloadHeader(small, false), small.bytes);
    g.post(offloadHeader(big4, true), big4.bytes);
    g.post(offloadHeader(big6, true, 1440), big6.bytes);
    g.post(offloadHeader(tooLong6, true, 1448), tooLong6.bytes);
    g.publish();
    expect(g.d.burst()).toBe(4);
    await capture.waitForOutput(/done \d+/, 15_000);
    await capture6.waitForOutput(/done \d+/, 15_000);
    const got4 = captured(capture.output());
    const got6 = captured(capture6.output());
    expect(got4.length).toBe(1 + segments4);
    expect(got6.length).toBe(segments6);
    expect(segmentProblems(small, { bytes: got4[0] })).toEqual([]);
    expect(hex(got4[0].subarray(small.headers))).toBe(hex(small.bytes.subarray(small.headers)));
    for (const [frame, segs] of [[big4, got4.slice(1)], [big6, got6]] as const) {
      for (const s of segs) {
        expect(segmentProblems(frame, { bytes: s })).toEqual([]);
        expect(s.length).toBeLessThanOrEqual(1514);
      }
      // The payloads, in order, are the super-frame's.
      const data = Buffer.concat(segs.map((s) => s.subarray(frame.headers)));
      expect(hex(data)).toBe(hex(frame.bytes.subarray(frame.headers)));
    }
    const last6 = got6[got6.length - 1];
    expect(last6[big6.l4 + 13] & 0x01).toBe(0x01);
    expect(got6[0][big6.l4 + 13] & 0x01).toBe(0);
    // The one whose segments the link cannot take is a bad frame, and none of it left.
    expect(g.counter(Counter.DropsBadFrame)).toBe(1);
    expect(g.counter(Counter.Packets)).toBe(3);
    g.d.release();
  });

  // A guest that negotiated offloads writes whatever header it likes over whatever frame. The relay
  // completes, segments or refuses each one; every frame must be accounted for, none twice, the
  // good frame at the end of each burst must leave, and the chains all go back to the guest.
  const seed = Number(process.env.VIO4WD_OFFLOAD_SEED ?? Math.floor(Math.random() * 2 ** 31));
  it(`VM→VF survives seeded random offload headers (VIO4WD_OFFLOAD_SEED=${seed})`, () => {
    const r = rng(seed);
    const g = txDirection(rig, 5, { hostOffloads: true });
    let posted = 0;
    for (let round = 0; round < 40; round++) {
      for (let k = 0; k < 4; k++) {
        const { header: h, length } = randomOffloadRequest(r, HDR);
        const frame = length >= 80 ? superFrame({ payload: payload(length - 54, k) }).bytes : new Uint8Array(length).fill(0xff, 0, 6);
        g.post(h, frame);
        posted++;
      }
      g.post(new Uint8Array(HDR), testFrame(round, 600));
      posted++;
      g.publish();
      const sentBefore = g.counter(Counter.Packets);
      expect(g.d.burst(), `seed ${seed} round ${round}`).toBe(5);
      expect(g.reclaim()).toBe(5);
      expect(g.counter(Counter.Packets) - sentBefore, `seed ${seed} round ${round}: the good frame`).toBeGreaterThanOrEqual(1);
    }
    const dropped = g.counter(Counter.DropsBadFrame) + g.counter(Counter.DropsQueueFull) + g.counter(Counter.DropsNotConnected);
    expect(g.counter(Counter.RxPackets)).toBe(posted);
    expect(g.counter(Counter.Packets) + dropped, `seed ${seed}`).toBe(posted);
    g.d.release();
  });

  it('VM→VF while the VF is down: frames wait in the TX ring until it is full, the rest count as a full queue, and the waiting ones leave once it is up', async () => {
    const g = txDirection(rig, 5);
    execFileSync('ip', ['link', 'set', vf, 'down']);
    let posted = 0;
    try {
      // 12 bursts of 8 (two descriptors each: the guest ring holds 16) through a TX ring of 64 chunks
      for (let b = 0; b < 12; b++) {
        for (let k = 0; k < 8; k++) g.post(new Uint8Array(HDR), testFrame(2000 + posted++, 100));
        g.publish();
        expect(g.d.burst()).toBe(8);
        expect(g.reclaim()).toBe(8);
      }
      expect(g.d.hasWork()).toBe(true); // frames wait for the kernel
    } finally {
      execFileSync('ip', ['link', 'set', vf, 'up']);
    }
    expect(g.counter(Counter.Packets)).toBe(64);
    expect(g.counter(Counter.DropsQueueFull)).toBe(posted - 64);
    // The link takes a moment to come back; the waiting frames leave on the next bursts.
    const capture = startCapture(ns, peer, ETHERTYPE, 64);
    await capture.waitForOutput(/ready/);
    const deadline = Date.now() + 10_000;
    while (g.d.hasWork() && Date.now() < deadline) {
      g.d.burst();
      await sleep(20);
    }
    expect(g.d.hasWork()).toBe(false);
    await capture.waitForOutput(/done \d+/, 15_000);
    expect(captured(capture.output()).length).toBe(64);
    g.d.release();
  });

  it('VF→VM: frames reach the guest whole; with no guest buffer left they wait in the port instead of being dropped', async () => {
    const g = rxDirection(rig, 6, { mergeable: true });
    const sizes = [60, 200, 1000, 1514];
    const sent = Array.from({ length: 40 }, (_, i) => testFrame(i, sizes[i % sizes.length]));
    expect(peerSend(ns, peer, sent)).toBe(40);
    await sleep(100);
    g.postMergeable(25, 2048);
    let got: Uint8Array[] = [];
    for (let i = 0; i < 10; i++) {
      g.d.burst();
      got = got.concat(g.received().map((r) => r.frame));
    }
    expect(got.length).toBe(25);
    expect(g.d.hasWork()).toBe(false); // frames wait, but the guest has no room: not work
    g.postMergeable(64, 2048);
    const deadline = Date.now() + 5000;
    while (got.length < 40 && Date.now() < deadline) {
      g.d.burst();
      got = got.concat(g.received().map((r) => r.frame));
    }
    expect(got.map(hex)).toEqual(sent.map(hex));
    expect(g.counter(Counter.Packets)).toBe(40);
    expect(g.counter(Counter.DropsQueueFull) + g.counter(Counter.DropsBadFrame)).toBe(0);
    g.d.foldKernelDrops();
    expect(g.counter(Counter.DropsKernelRing)).toBe(0);
    g.d.release();
  });
});

// The same port with the guest's memory in its UMEM (VIRTIOFWD_XDP_UMEM=guest): a frame in one
// piece of guest memory is handed to the kernel where the guest wrote it, and its chain goes back
// to the guest only once the kernel has completed it.
const gns = `xdgns${tag}`;
const gvf = `xdgv${tag}`;
const gpeer = `xdgp${tag}`;

describe.skipIf(!ready)('the relay over an AF_XDP port whose UMEM holds the guest memory', () => {
  let grig: TxRig;

  beforeAll(() => {
    createNetns(gns);
    createVethPair(gvf, gpeer, { nsB: gns, noIpv6: true });
    grig = openTxRig(gvf, {}, undefined, { ringSize: 64 }, undefined, { guestUmem: true });
  });

  afterAll(async () => {
    await stopAll();
    grig?.close();
    deleteLink(gvf);
    deleteNetns(gns);
  });

  /** A veth pair at MTU 9000 (the peer in the namespace) and a multi-buffer port over guest memory on the near end. */
  function openJumboRig(vf: string, peer: string): TxRig {
    createVethPair(vf, peer, { nsB: gns, noIpv6: true });
    execFileSync('ip', ['link', 'set', vf, 'mtu', '9000']);
    execFileSync('ip', ['-n', gns, 'link', 'set', peer, 'mtu', '9000']);
    return openTxRig(vf, {}, undefined, { ringSize: 64 }, undefined, { guestUmem: true });
  }

  /** Bursts until `want` chains came back (or 10 s passed); returns how many did. */
  async function reclaimAll(g: ReturnType<typeof txDirection>, want: number, already = 0): Promise<number> {
    let back = already;
    const deadline = Date.now() + 10_000;
    while (back < want && Date.now() < deadline) {
      g.d.burst();
      back += g.reclaim();
      if (back < want) await sleep(5);
    }
    return back;
  }

  it('frames leave from where the guest wrote them: a frame rewritten after the burst leaves rewritten; chains come back once sent', async () => {
    const g = txDirection(grig, 7);
    const frames = Array.from({ length: 8 }, (_, i) => testFrame(100 + i, i === 7 ? 1514 : 60 + 100 * i));
    const at: number[] = [];
    execFileSync('ip', ['link', 'set', gvf, 'down']);
    try {
      for (const f of frames) at.push(g.post(new Uint8Array(HDR), f));
      g.publish();
      expect(g.d.burst()).toBe(8);
      // Held: the kernel has not sent them (the link is down), so the guest does not get them back.
      expect(g.reclaim()).toBe(0);
      expect(g.d.hasWork()).toBe(true);
    } finally {
      execFileSync('ip', ['link', 'set', gvf, 'up']);
    }
    // Had the relay copied the frame, this would not reach the wire.
    const bytes = new Uint8Array(grig.mem.buffer);
    bytes.fill(0xab, at[0] + 20, at[0] + 60);
    frames[0].fill(0xab, 20, 60);
    const capture = startCapture(gns, gpeer, ETHERTYPE, 8);
    await capture.waitForOutput(/ready/);
    expect(await reclaimAll(g, 8)).toBe(8);
    await capture.waitForOutput(/done \d+/, 15_000);
    expect(captured(capture.output()).map(hex)).toEqual(frames.map(hex));
    expect(g.counter(Counter.Packets)).toBe(8);
    expect(g.counter(Counter.DropsQueueFull) + g.counter(Counter.DropsBadFrame)).toBe(0);
    expect(g.usedIdx()).toBe(8); // each chain returned once
    expect(g.d.hasWork()).toBe(false);
    g.d.release();
  });

  it('frames that need the relay (a checksum to complete, a frame in two pieces) are copied and come back at once; every chain comes back once', async () => {
    const g = txDirection(grig, 7, { hostOffloads: true });
    const small = superFrame({ payload: payload(300, 9) });
    const plain = testFrame(300, 200);
    const split = testFrame(301, 1400);
    const capture = startCapture(gns, gpeer, ETHERTYPE, 2);
    const capture4 = startCapture(gns, gpeer, 0x0800, 1);
    await capture.waitForOutput(/ready/);
    await capture4.waitForOutput(/ready/);
    g.post(new Uint8Array(HDR), plain);
    g.post(offloadHeader(small, false), small.bytes);
    g.post(new Uint8Array(HDR), split, 700);
    g.publish();
    expect(g.d.burst()).toBe(3);
    // The two copies are back with the burst; the frame sent from guest memory once completed.
    const first = g.reclaim();
    expect(first).toBeGreaterThanOrEqual(2);
    expect(await reclaimAll(g, 3, first)).toBe(3);
    await capture.waitForOutput(/done \d+/, 15_000);
    await capture4.waitForOutput(/done \d+/, 15_000);
    expect(captured(capture.output()).map(hex)).toEqual([plain, split].map(hex));
    const got4 = captured(capture4.output());
    expect(segmentProblems(small, { bytes: got4[0] })).toEqual([]);
    expect(g.usedIdx()).toBe(3);
    expect(g.counter(Counter.Packets)).toBe(3);
    g.d.release();
  });

  it('a hostile guest: frames outside its memory or across its end are bad chains and reach no ring; one in its last bytes leaves from there', async () => {
    const g = txDirection(grig, 7);
    const bytes = new Uint8Array(grig.mem.buffer);
    const last = testFrame(500, 100);
    bytes.set(last, TX_RIG_MEMORY - last.length);
    const header = 0x8000; // a zeroed header inside memory
    bytes.fill(0, header, header + HDR);
    const capture = startCapture(gns, gpeer, ETHERTYPE, 1);
    await capture.waitForOutput(/ready/);
    g.postRaw([{ gpa: header, len: HDR }, { gpa: TX_RIG_MEMORY + 4096, len: 100 }]); // beyond memory
    g.postRaw([{ gpa: header, len: HDR }, { gpa: TX_RIG_MEMORY - 50, len: 100 }]); // across its end
    g.postRaw([{ gpa: header, len: HDR }, { gpa: 2 ** 52, len: 100 }]); // far above it
    g.postRaw([{ gpa: header, len: HDR }, { gpa: TX_RIG_MEMORY - last.length, len: last.length }]);
    g.publish();
    expect(g.d.burst()).toBe(4);
    expect(await reclaimAll(g, 4, g.reclaim())).toBe(4);
    await capture.waitForOutput(/done \d+/, 15_000);
    expect(captured(capture.output()).map(hex)).toEqual([hex(last)]);
    expect(g.counter(Counter.BadChains)).toBe(3);
    expect(g.counter(Counter.Packets)).toBe(1);
    // Nothing the kernel had to refuse was ever put in its rings.
    expect(XdpPort.attach(grig.handle as XdpPortHandle).readKernelStatistics().kernelInvalidDescs).toBe(0);
    g.d.release();
  });

  it('a frame at an odd address is copied, since the kernel hands a first descriptor\'s address back with bit 0 cleared; it leaves whole and no TX slot stays taken', async () => {
    const g = txDirection(grig, 7);
    const bytes = new Uint8Array(grig.mem.buffer);
    const port = XdpPort.attach(grig.handle as XdpPortHandle);
    const inPlaceBefore = xdpFramesInPlace(grig.handle as XdpPortHandle).txFramesInPlace;
    const odd = testFrame(700, 500);
    const even = testFrame(701, 500);
    bytes.fill(0, 0xc0000, 0xc0000 + HDR);
    bytes.set(odd, 0xc0101);
    bytes.set(even, 0xc0400);
    const capture = startCapture(gns, gpeer, ETHERTYPE, 2);
    await capture.waitForOutput(/ready/);
    g.postRaw([{ gpa: 0xc0000, len: HDR }, { gpa: 0xc0101, len: odd.length }]);
    g.postRaw([{ gpa: 0xc0000, len: HDR }, { gpa: 0xc0400, len: even.length }]);
    g.publish();
    expect(g.d.burst()).toBe(2);
    expect(await reclaimAll(g, 2, g.reclaim())).toBe(2);
    await capture.waitForOutput(/done \d+/, 15_000);
    expect(captured(capture.output()).map(hex)).toEqual([odd, even].map(hex));
    expect(xdpFramesInPlace(grig.handle as XdpPortHandle).txFramesInPlace - inPlaceBefore).toBe(1); // the even one
    const deadline = Date.now() + 2000;
    while (port.txFree() < 64 && Date.now() < deadline) await sleep(10);
    expect(port.txFree()).toBe(64);
    g.d.release();
  });

  it('a UMEM past 2 GiB: relay chunks at offsets above 2^31 complete and are reused through many ring laps', async () => {
    // 2.25 GiB of guest memory put the relay's chunks above 2^31 in the UMEM (the kernel pins it
    // all: a sparse file is filled with zeroed pages, once, for this test).
    const big = `xdgb${tag}`;
    const bigPeer = `xdgq${tag}`;
    createVethPair(big, bigPeer, { nsB: gns, noIpv6: true });
    const bigRig = openTxRig(big, {}, 2.25 * 2 ** 30, { ringSize: 64 }, undefined, { guestUmem: true });
    try {
      const g = txDirection(bigRig, 8);
      const frames = 200;
      const capture = startCapture(gns, bigPeer, ETHERTYPE, frames);
      await capture.waitForOutput(/ready/);
      let back = 0;
      for (let i = 0; i < frames; i += 4) {
        // Frames in two pieces are copied into the relay's chunks; the others go from guest memory.
        g.post(new Uint8Array(HDR), testFrame(600 + i, 300), 100);
        g.post(new Uint8Array(HDR), testFrame(601 + i, 300), 100);
        g.post(new Uint8Array(HDR), testFrame(602 + i, 300));
        g.post(new Uint8Array(HDR), testFrame(603 + i, 300));
        g.publish();
        expect(g.d.burst()).toBe(4);
        back = await reclaimAll(g, i + 4, back + g.reclaim());
        expect(back, `after ${i + 4} frames`).toBe(i + 4);
      }
      await capture.waitForOutput(/done \d+/, 15_000);
      expect(captured(capture.output()).length).toBe(frames);
      expect(g.counter(Counter.Packets)).toBe(frames);
      g.d.release();
    } finally {
      bigRig.close();
      deleteLink(big);
    }
  });

  it('a multi-buffer port (MTU 9000) sends jumbo frames and frames in several buffers from guest memory, in pieces of a chunk at most (a frame in more pieces than the kernel takes is copied); received ones reach the guest whole', async () => {
    if (!multiBufferXdp()) return;
    const jvf = `xdgj${tag}`;
    const jpeer = `xdgk${tag}`;
    const jrig = openJumboRig(jvf, jpeer);
    try {
      const handle = jrig.handle as XdpPortHandle;
      expect(handle.multiBuffer).toBe(true);
      expect(handle.chunkSize).toBe(4096);
      const g = txDirection(jrig, 9, { queueSize: 64 });
      const bytes = new Uint8Array(jrig.mem.buffer);
      // Pieces: 3000 | 4096 + 1918 (a 9014-byte frame in two buffers); 4096 + 104 (one buffer
      // longer than a chunk); 60 (one piece).
      const frames = [testFrame(700, 9014), testFrame(701, 4200), testFrame(702, 60), testFrame(703, 2000)];
      const at: number[] = [];
      // A hostile guest's 21 buffers of 95 bytes or so, one frame: more pieces than the kernel
      // builds a frame of (MAX_TX_PIECES), so it is copied.
      const scattered = 0xe0000;
      bytes.fill(0, scattered, scattered + HDR);
      bytes.set(frames[3], scattered + HDR);
      const parts = [{ gpa: scattered, len: HDR }];
      for (let done = 0; done < 2000; done += 96) parts.push({ gpa: scattered + HDR + done, len: Math.min(96, 2000 - done) });
      expect(parts.length - 1).toBeGreaterThan(MAX_TX_PIECES);
      execFileSync('ip', ['link', 'set', jvf, 'down']);
      try {
        at.push(g.post(new Uint8Array(HDR), frames[0]));
        at.push(g.post(new Uint8Array(HDR), frames[1], 4200));
        at.push(g.post(new Uint8Array(HDR), frames[2]));
        g.postRaw(parts);
        g.publish();
        expect(g.d.burst()).toBe(4);
        // Only the copied frame is back: the three others wait in the TX ring, in guest memory.
        expect(g.reclaim()).toBe(1);
        expect(xdpFramesInPlace(handle).txFramesInPlace).toBe(3);
      } finally {
        execFileSync('ip', ['link', 'set', jvf, 'up']);
      }
      // Rewritten in its third piece after the burst: had it been copied, this would not leave.
      bytes.fill(0xab, at[0] + 8000, at[0] + 8100);
      frames[0].fill(0xab, 8000, 8100);
      const capture = startCapture(gns, jpeer, ETHERTYPE, 4);
      await capture.waitForOutput(/ready/);
      expect(await reclaimAll(g, 4, 1)).toBe(4);
      await capture.waitForOutput(/done \d+/, 15_000);
      expect(captured(capture.output()).map(hex)).toEqual(frames.map(hex));
      expect(g.counter(Counter.Packets)).toBe(4);
      expect(g.counter(Counter.Bytes)).toBe(9014 + 4200 + 60 + 2000);
      expect(g.usedIdx()).toBe(4); // each chain returned once, the pieces' completions only once the last is in
      const port = XdpPort.attach(handle);
      expect(port.readKernelStatistics().kernelInvalidDescs).toBe(0);
      expect(port.counters.txFrames).toBe(4); // frames, not pieces
      g.d.release();

      // The other way: frames the kernel put in several chunks reach the guest's buffers whole,
      // in order.
      const r = rxDirection(jrig, 10, { mergeable: true });
      const sent = [9014, 3841, 60, 7000, 3840, 9014].map((n, i) => testFrame(800 + i, n));
      expect(peerSend(gns, jpeer, sent)).toBe(sent.length);
      await sleep(100);
      r.postMergeable(40, 2048);
      let got: Uint8Array[] = [];
      const deadline = Date.now() + 5000;
      while (got.length < sent.length && Date.now() < deadline) {
        r.d.burst();
        got = got.concat(r.received().map((x) => x.frame));
      }
      expect(got.map(hex)).toEqual(sent.map(hex));
      expect(r.counter(Counter.Packets)).toBe(sent.length);
      expect(r.counter(Counter.Bytes)).toBe(sent.reduce((n, f) => n + f.length, 0));
      expect(r.counter(Counter.DropsQueueFull) + r.counter(Counter.DropsBadFrame)).toBe(0);
      r.d.release();
    } finally {
      jrig.close();
      deleteLink(jvf);
    }
  });

  // Seeded and replayable: VIO4WD_XDP_PIECES_SEED=S, VIO4WD_XDP_PIECES_ROUNDS=N (default 12 rounds of 8 chains).
  const piecesSeed = Number(process.env.VIO4WD_XDP_PIECES_SEED ?? Math.floor(Math.random() * 2 ** 31));
  const piecesRounds = Number(process.env.VIO4WD_XDP_PIECES_ROUNDS ?? 12);
  it(`a multi-buffer port over guest memory: seeded random guest chains of 1 to 24 buffers, some outside memory, leave byte for byte or are counted, each comes back once, no bad descriptor reaches the kernel (VIO4WD_XDP_PIECES_SEED=${piecesSeed})`, async () => {
    if (!multiBufferXdp()) return;
    const jvf = `xdgr${tag}`;
    const jpeer = `xdgs${tag}`;
    const jrig = openJumboRig(jvf, jpeer);
    try {
      const r = rng(piecesSeed);
      const g = txDirection(jrig, 11, { queueSize: 256 });
      const bytes = new Uint8Array(jrig.mem.buffer);
      const expected: Uint8Array[] = [];
      let posted = 0;
      let refused = 0;
      let outsideMemory = 0;
      let inPlace = 0;
      const port = XdpPort.attach(jrig.handle as XdpPortHandle);
      for (let round = 0; round < piecesRounds; round++) {
        let free = 0x10000; // the rig's buffers start here; each round reuses them once all came back
        const sent: Uint8Array[] = [];
        for (let c = 0; c < 8; c++) {
          const total = 60 + Math.floor(r() * 9400); // some longer than the 9014 a frame may be
          const frame = testFrame(round * 8 + c, total);
          for (let i = 16; i < total; i++) frame[i] = Math.floor(r() * 256);
          const n = 1 + Math.floor(r() * 24); // past MAX_TX_PIECES (17) now and then: copied
          const header = free;
          bytes.fill(0, header, header + HDR);
          free += HDR + 64;
          const parts = [{ gpa: header, len: HDR }];
          let outside = false;
          let pieces = 0;
          for (let k = 0, done = 0; k < n; k++) {
            const len = k === n - 1 ? total - done : Math.max(1, Math.min(total - done - (n - 1 - k), Math.floor(r() * (2 * total / n))));
            if (len <= 0) break;
            const where = r();
            if (where < 0.03) {
              parts.push({ gpa: TX_RIG_MEMORY - Math.floor(len / 2), len }); // across the end of memory
              outside = true;
            } else if (where < 0.06) {
              parts.push({ gpa: 2 ** 40 + Math.floor(r() * 2 ** 20), len }); // far outside
              outside = true;
            } else {
              bytes.set(frame.subarray(done, done + len), free);
              parts.push({ gpa: free, len });
              free += len + Math.floor(r() * 64);
            }
            pieces += Math.ceil(len / 4096);
            done += len;
          }
          if (free >= TX_RIG_MEMORY - 0x4000) throw new Error(`seed ${piecesSeed} round ${round}: the rig's memory is too small for this round`);
          g.postRaw(parts);
          posted++;
          if (outside || total > 9014) refused++;
          else sent.push(frame);
          if (outside) outsideMemory++;
          // From guest memory: at most 17 pieces, the first at an even address (see txGuest).
          else if (total <= 9014 && pieces <= MAX_TX_PIECES && parts[1].gpa % 2 === 0) inPlace++;
        }
        const capture = startCapture(gns, jpeer, ETHERTYPE, sent.length);
        await capture.waitForOutput(/ready/);
        g.publish();
        expect(g.d.burst(), `seed ${piecesSeed} round ${round}`).toBe(8);
        expect(await reclaimAll(g, posted, posted - 8 + g.reclaim()), `seed ${piecesSeed} round ${round}: chains back`).toBe(posted);
        if (sent.length > 0) await capture.waitForOutput(/done \d+/, 15_000);
        await capture.stop();
        expect(captured(capture.output()).map(hex), `seed ${piecesSeed} round ${round}`).toEqual(sent.map(hex));
        expected.push(...sent);
        // Every TX slot is free again once the peer has the frames: no completion went unmatched
        // (a frame at an odd address once left its slot taken for good, and the ring filled up).
        const deadline = Date.now() + 2000;
        while (port.txFree() < 64 && Date.now() < deadline) await sleep(10);
        expect(port.txFree(), `seed ${piecesSeed} round ${round}: TX slots free`).toBe(64);
      }
      expect(g.usedIdx()).toBe(posted % 65536);
      expect(g.counter(Counter.Packets)).toBe(expected.length);
      // A chain outside memory counts as a bad chain and, like a frame too long, as a bad frame.
      expect(g.counter(Counter.DropsBadFrame)).toBe(refused);
      expect(g.counter(Counter.BadChains)).toBe(outsideMemory);
      expect(g.counter(Counter.DropsQueueFull)).toBe(0);
      expect(port.readKernelStatistics().kernelInvalidDescs).toBe(0);
      // The others were copied.
      expect(xdpFramesInPlace(jrig.handle as XdpPortHandle).txFramesInPlace).toBe(inPlace);
      expect(inPlace).toBeGreaterThan(0);
      g.d.release();
    } finally {
      jrig.close();
      deleteLink(jvf);
    }
  });

  it('a direction leaving its thread hands back the chains still held; the kernel sends them later and nobody returns them again', async () => {
    const g = txDirection(grig, 7);
    execFileSync('ip', ['link', 'set', gvf, 'down']);
    const frames = Array.from({ length: 4 }, (_, i) => testFrame(400 + i, 80));
    try {
      for (const f of frames) g.post(new Uint8Array(HDR), f);
      g.publish();
      expect(g.d.burst()).toBe(4);
      expect(g.reclaim()).toBe(0);
      // Detaching waits a moment for completions, then gives the guest its buffers back.
      g.d.exportState();
      expect(g.reclaim()).toBe(4);
      g.d.release();
    } finally {
      execFileSync('ip', ['link', 'set', gvf, 'up']);
    }
    // The next direction on the port (a fresh ring) sees the four still in the TX ring go out;
    // their completions free the slots but return nothing to its ring.
    const next = txDirection(grig, 7);
    const capture = startCapture(gns, gpeer, ETHERTYPE, 6);
    await capture.waitForOutput(/ready/);
    const more = [testFrame(410, 90), testFrame(411, 91)];
    for (const f of more) next.post(new Uint8Array(HDR), f);
    next.publish();
    expect(await reclaimAll(next, 2)).toBe(2);
    await capture.waitForOutput(/done \d+/, 15_000);
    // The guest reused the buffers it got back: the two first held frames left with what it
    // wrote there since (the price of handing back what the kernel had not sent), the others as
    // they were
    // (their length is the descriptor's: 80 bytes of the longer frames written there).
    const stale = more.map((f) => f.subarray(0, 80));
    expect(captured(capture.output()).map(hex).sort()).toEqual([...more, frames[2], frames[3], ...stale].map(hex).sort());
    expect(next.usedIdx()).toBe(2);
    next.d.release();
  });
});
