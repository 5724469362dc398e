// AF_PACKET rings against a real veth pair: our end (A) in this namespace, the peer (B) in a
// network namespace where a small raw-socket program injects and captures frames.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { spawnSync } from 'node:child_process';
import { openPacketRing, closePacketRing, PacketRing, type PacketRingHandle } from '../../sys/packet-ring.js';
import { PacketBatch } from '../../sys/packet-batch.js';
import { nativeBuffer } from '../../sys/native-buffer.js';
import { requireRoot, requireBinary, createNetns, deleteNetns, createVethPair, deleteLink, nsExec, linkCounter, uniqueTag } from '../support/netns.js';
import { stopAll, sleep } from '../support/processes.js';
import { requireOrSkip } from '../support/env.js';
import { hex, testFrame, peerSend as sendFromPeer, startCapture as startPeerCapture } from '../support/raw-peer.js';

const compiledRing = fileURLToPath(new URL('../../dist/sys/packet-ring.js', import.meta.url));

const ETHERTYPE = 0x88b5; // IEEE local experimental: nothing else on the link uses it
const tag = uniqueTag();
const ns = `sprns${tag}`;
const ourEnd = `sprA${tag}`;
const peerEnd = `sprB${tag}`;
let ready = false;

function peerSend(frames: Uint8Array[]): void {
  expect(sendFromPeer(ns, peerEnd, frames)).toBe(frames.length);
}

function startCapture(count: number) {
  return startPeerCapture(ns, peerEnd, ETHERTYPE, count);
}

/** Receives until `count` frames of our ethertype arrived (or 10 s passed), copying each. */
async function receiveFrames(ring: PacketRing, count: number, budget: number): Promise<{ frames: Uint8Array[]; calls: number }> {
  const frames: Uint8Array[] = [];
  const deadline = Date.now() + 10_000;
  let calls = 0;
  while (frames.length < count && Date.now() < deadline) {
    calls++;
    const n = ring.receive((bytes, offset, length) => {
      if (((bytes[offset + 12] << 8) | bytes[offset + 13]) === ETHERTYPE) frames.push(bytes.slice(offset, offset + length));
      else if (((bytes[offset + 12] << 8) | bytes[offset + 13]) === 0x8100) frames.push(bytes.slice(offset, offset + length));
    }, budget);
    expect(n).toBeLessThanOrEqual(budget);
    if (n === 0) await sleep(5);
  }
  return { frames, calls };
}

describe('packet ring over a veth pair', () => {
  beforeAll(() => {
    if (!requireRoot() || !requireBinary('ip')) return;
    createNetns(ns);
    createVethPair(ourEnd, peerEnd, { nsB: ns });
    // no IPv6 autoconfiguration chatter on the link
    spawnSync('sysctl', ['-qw', `net.ipv6.conf.${ourEnd}.disable_ipv6=1`]);
    nsExec(ns, 'sysctl', ['-qw', `net.ipv6.conf.${peerEnd}.disable_ipv6=1`]);
    ready = true;
  });

  afterAll(async () => {
    await stopAll();
    deleteLink(ourEnd);
    deleteNetns(ns);
  });

  it('refuses unknown interfaces and bad geometry with errors that say why', () => {
    if (!ready) return;
    expect(() => openPacketRing('nosuchif0')).toThrow(expect.objectContaining({ code: 'ENODEV' }));
    expect(() => openPacketRing(ourEnd, { blockSize: 5000 })).toThrow(/block size 5000/);
    expect(() => openPacketRing(ourEnd, { txFrameCount: 3 })).toThrow(/TX frame count 3/);
    expect(() => openPacketRing(ourEnd, { frameSize: 100 })).toThrow(/frame size 100/);
  });

  it('receives frames across many blocks, keeping its place between calls and handing blocks back', async () => {
    if (!ready) return;
    const handle = openPacketRing(ourEnd, { blockSize: 8192, blockCount: 32 });
    try {
      const flags = Number(readFileSync(`/sys/class/net/${ourEnd}/flags`, 'utf8'));
      expect(flags & 0x100).toBe(0x100); // IFF_PROMISC through the membership
      const ring = PacketRing.attach(handle);
      const sizes = [60, 128, 512, 1000, 1514];
      let seq = 0;
      // four rounds of 100 frames move ~290 KiB through a 256 KiB ring: only possible when
      // consumed blocks go back to the kernel
      for (let round = 0; round < 4; round++) {
        const sent = Array.from({ length: 100 }, () => testFrame(seq, sizes[seq++ % sizes.length]));
        peerSend(sent);
        const { frames, calls } = await receiveFrames(ring, sent.length, 7);
        expect(frames.length).toBe(sent.length);
        expect(calls).toBeGreaterThanOrEqual(15);
        for (let i = 0; i < sent.length; i++) {
          expect(frames[i].length).toBe(sent[i].length);
          expect(hex(frames[i])).toBe(hex(sent[i]));
        }
      }
      const counters = ring.readKernelStatistics();
      expect(counters.rxFrames).toBe(400);
      expect(counters.rxTruncated).toBe(0);
      expect(counters.rxBlocks).toBeGreaterThan(32);
      expect(counters.kernelDrops).toBe(0);
      expect(counters.kernelPackets).toBeGreaterThanOrEqual(400);
    } finally {
      closePacketRing(handle);
    }
    const flags = Number(readFileSync(`/sys/class/net/${ourEnd}/flags`, 'utf8'));
    expect(flags & 0x100).toBe(0);
  });

  it('opens no TX ring when asked not to (the relay\'s ports), and receives all the same', async () => {
    if (!ready) return;
    const handle = openPacketRing(ourEnd, { txRing: false });
    try {
      expect(handle.txFd).toBe(-1);
      expect(handle.tx.length).toBe(0);
      const ring = PacketRing.attach(handle);
      expect(ring.txSlot()).toBeNull();
      peerSend([testFrame(3, 100)]);
      const { frames } = await receiveFrames(ring, 1, 8);
      expect(frames.map(hex)).toEqual([hex(testFrame(3, 100))]);
    } finally {
      closePacketRing(handle);
    }
  });

  it('gives back VLAN-tagged frames with their tag where it was', async () => {
    if (!ready) return;
    const handle = openPacketRing(ourEnd);
    try {
      const ring = PacketRing.attach(handle);
      const tagged = testFrame(1, 80);
      tagged.set([0x81, 0x00, 0x20, 0x64, ETHERTYPE >> 8, ETHERTYPE & 0xff], 12); // PCP 1, VID 100
      const plain = testFrame(2, 64);
      peerSend([tagged, plain]);
      const { frames } = await receiveFrames(ring, 2, 32);
      expect(frames.map(hex)).toEqual([hex(tagged), hex(plain)]);
    } finally {
      closePacketRing(handle);
    }
  });

  it.each([true, false])('sends a burst of 64 frames with one flush, and does not receive them on its own RX ring (qdisc bypass %s)', async (qdiscBypass) => {
    if (!ready) return;
    const handle = openPacketRing(ourEnd, { qdiscBypass });
    const capture = startCapture(64);
    try {
      await capture.waitForOutput(/ready/);
      const ring = PacketRing.attach(handle);
      const before = linkCounter(peerEnd, 'rx_packets', ns);
      const sent: Uint8Array[] = [];
      for (let i = 0; i < 64; i++) {
        const slot = ring.txSlot();
        expect(slot).not.toBeNull();
        const frame = testFrame(1000 + i, 60 + i * 20);
        slot!.bytes.set(frame, slot!.offset);
        expect(ring.txCommit(frame.length)).toBe(true);
        sent.push(frame);
      }
      const flushed = ring.txFlush();
      expect(flushed).toBe(sent.reduce((sum, f) => sum + f.length, 0));
      expect(ring.txFlush()).toBe(0); // nothing new committed
      await capture.waitForOutput(/done \d+/, 20_000);
      const received = capture.output().split('\n').filter((l) => l.startsWith('frame ')).map((l) => l.slice(6));
      expect(received).toEqual(sent.map(hex));
      expect(linkCounter(peerEnd, 'rx_packets', ns) - before).toBeGreaterThanOrEqual(64);

      await sleep(50); // well past the block retire timeout
      let own = 0;
      ring.receive((bytes, offset) => {
        if (((bytes[offset + 12] << 8) | bytes[offset + 13]) === ETHERTYPE) own++;
      }, 1000);
      expect(own).toBe(0);
      expect(ring.counters.txFrames).toBe(64);
    } finally {
      await capture.stop();
      closePacketRing(handle);
    }
  });

  it('refuses lengths the kernel would reject and reports a full ring', async () => {
    if (!ready) return;
    const handle = openPacketRing(ourEnd, { txFrameSize: 2048, txFrameCount: 8 });
    try {
      const ring = PacketRing.attach(handle);
      const slot = ring.txSlot()!;
      expect(slot.capacity).toBe(2048 - 32);
      expect(ring.txCommit(13)).toBe(false);
      expect(ring.txCommit(slot.capacity + 1)).toBe(false);
      slot.bytes.set(testFrame(1, 1518), slot.offset);
      expect(ring.txCommit(1515)).toBe(false); // untagged, above MTU 1500
      slot.bytes.set([0x81, 0x00, 0x00, 0x05], slot.offset + 12);
      expect(ring.txCommit(1518)).toBe(true); // a tag may add 4 bytes
      expect(ring.counters.txRejected).toBe(3);
      for (let i = 1; i < 8; i++) {
        const s = ring.txSlot()!;
        s.bytes.set(testFrame(i, 60), s.offset);
        expect(ring.txCommit(60)).toBe(true);
      }
      expect(ring.txSlot()).toBeNull(); // every slot waits for the kernel
      expect(ring.txPending()).toBe(true);
      expect(ring.txFlush()).toBeGreaterThan(0);
      const deadline = Date.now() + 5000;
      while (ring.txSlot() === null && Date.now() < deadline) await sleep(5);
      expect(ring.txSlot()).not.toBeNull();
      expect(ring.txPending()).toBe(false);
    } finally {
      closePacketRing(handle);
    }
  });

  it('hands the rings over mid-block to a new owner without losing or repeating frames', async () => {
    if (!ready) return;
    const handle = openPacketRing(ourEnd, { txFrameSize: 2048, txFrameCount: 16 });
    try {
      const first = PacketRing.attach(handle);
      peerSend(Array.from({ length: 20 }, (_, i) => testFrame(i, 100)));
      const seqs: number[] = [];
      const collect = (bytes: Uint8Array, offset: number) => {
        if (((bytes[offset + 12] << 8) | bytes[offset + 13]) === ETHERTYPE) seqs.push((bytes[offset + 14] << 8) | bytes[offset + 15]);
      };
      const deadline = Date.now() + 5000;
      // one frame at a time until the first owner stands inside a block with frames still to read
      while ((seqs.length < 3 || first.currentPosition.framesLeftInBlock === 0) && seqs.length < 19 && Date.now() < deadline) {
        if (first.receive(collect, 1) === 0) await sleep(5);
      }
      for (let i = 0; i < 5; i++) {
        const slot = first.txSlot()!;
        slot.bytes.set(testFrame(i, 60), slot.offset);
        first.txCommit(60);
      }
      first.txFlush();
      expect(first.currentPosition.framesLeftInBlock).toBeGreaterThan(0); // the handover happens inside a block

      const second = PacketRing.attach(JSON.parse(JSON.stringify(handle)) as PacketRingHandle);
      expect(second.currentPosition).toEqual(first.currentPosition);
      while (seqs.length < 20 && Date.now() < deadline) {
        second.receive(collect, 32);
        if (seqs.length < 20) await sleep(5);
      }
      expect(seqs).toEqual(Array.from({ length: 20 }, (_, i) => i));
      expect(second.txSlot()!.offset).toBe(5 * 2048 + handle.txDataOffset);
      expect(second.counters.rxFrames).toBeGreaterThanOrEqual(20);
      expect(second.counters.txFrames).toBe(5);
      expect(first.counters).toEqual(second.counters); // one set of counters per handle
    } finally {
      closePacketRing(handle);
    }
  });

  it('moves past a frame whose handler threw, and delivers nothing with a zero budget', async () => {
    if (!ready) return;
    const handle = openPacketRing(ourEnd);
    try {
      const ring = PacketRing.attach(handle);
      peerSend([testFrame(1, 60), testFrame(2, 60), testFrame(3, 60)]);
      const deadline = Date.now() + 5000;
      while (!ring.rxReady() && Date.now() < deadline) await sleep(5);
      expect(ring.receive(() => {}, 0)).toBe(0);
      const seqs: number[] = [];
      const handler = (bytes: Uint8Array, offset: number) => {
        if (((bytes[offset + 12] << 8) | bytes[offset + 13]) !== ETHERTYPE) return;
        const seq = bytes[offset + 15];
        seqs.push(seq);
        if (seq === 3) throw new Error('handler failed on the last frame of the block');
      };
      expect(() => ring.receive(handler, 32)).toThrow(/handler failed/);
      expect(seqs).toEqual([1, 2, 3]);
      await sleep(20);
      ring.receive(handler, 32);
      expect(seqs).toEqual([1, 2, 3]); // the block went back to the kernel despite the throw
      expect(ring.currentPosition.framesLeftInBlock).toBe(0);
    } finally {
      closePacketRing(handle);
    }
  });

  it('sends a sendmmsg batch whose frames are gathered from scattered pieces, byte-exact and in order', async () => {
    if (!ready) return;
    const handle = openPacketRing(ourEnd);
    try {
      // The frames live in native memory, cut into pieces placed out of order, like guest buffers.
      const memory = nativeBuffer(64 * 1024);
      const frames = Array.from({ length: 40 }, (_, i) => testFrame(i, 60 + i * 31));
      const capture = startCapture(frames.length);
      await capture.waitForOutput(/ready/);
      const batch = new PacketBatch(64, 512);
      // Pieces are laid out backwards through the buffer, so each frame is gathered from descending addresses.
      let at = 64 * 1024;
      for (const f of frames) {
        const cut = [0, 5, 14, Math.floor(f.length / 2), f.length].filter((v, k, a) => k === 0 || v > a[k - 1]);
        for (let k = 0; k + 1 < cut.length; k++) {
          const piece = f.subarray(cut[k], cut[k + 1]);
          at -= piece.length + 13;
          memory.bytes.set(piece, at);
          batch.addPiece(memory.address + at, piece.length);
        }
        expect(batch.endFrame()).toBe(f.length);
      }
      expect(batch.send(handle.sendFd)).toBe(frames.length);
      await capture.exited;
      const got = capture.output().split('\n').filter((l) => l.startsWith('frame ')).map((l) => l.slice(6));
      expect(got).toEqual(frames.map(hex));
    } finally {
      closePacketRing(handle);
    }
  });

  it('refuses a frame longer than the link allows alone and sends the rest of the batch', async () => {
    if (!ready) return;
    const handle = openPacketRing(ourEnd);
    try {
      const memory = nativeBuffer(16 * 1024);
      const frames = [testFrame(1, 100), testFrame(2, 3000), testFrame(3, 200)];
      const capture = startCapture(2);
      await capture.waitForOutput(/ready/);
      const batch = new PacketBatch(8, 8);
      let at = 0;
      for (const f of frames) {
        memory.bytes.set(f, at);
        batch.addPiece(memory.address + at, f.length);
        batch.endFrame();
        at += 4096;
      }
      expect(batch.send(handle.sendFd)).toBe(2);
      expect(batch.lastErrno).not.toBe(0);
      expect(batch.takenBytes).toBe(300);
      await capture.exited;
      const got = capture.output().split('\n').filter((l) => l.startsWith('frame ')).map((l) => l.slice(6));
      expect(got).toEqual([hex(frames[0]), hex(frames[2])]);
    } finally {
      closePacketRing(handle);
    }
  });

  it('polls the rings from a worker thread through the handle', async () => {
    if (!ready) return;
    if (!requireOrSkip(existsSync(compiledRing), `compiled sys/ missing at ${compiledRing}: run npx tsc -p . first`)) return;
    const handle = openPacketRing(ourEnd);
    const worker = new Worker(
      `
      const { workerData, parentPort } = require('node:worker_threads');
      import(workerData.module).then(({ PacketRing }) => {
        const ring = PacketRing.attach(workerData.handle);
        const seqs = [];
        const deadline = Date.now() + 10000;
        const tick = () => {
          ring.receive((bytes, offset, length) => {
            if (bytes[offset + 12] === 0x88 && bytes[offset + 13] === 0xb5) seqs.push((bytes[offset + 14] << 8) | bytes[offset + 15]);
          }, 32);
          if (seqs.length >= 10 || Date.now() > deadline) parentPort.postMessage(seqs);
          else setTimeout(tick, 5);
        };
        parentPort.postMessage('attached');
        tick();
      });
      `,
      { eval: true, workerData: { module: compiledRing, handle: handle satisfies PacketRingHandle } },
    );
    try {
      const messages: unknown[] = [];
      worker.on('message', (m) => messages.push(m));
      const deadline = Date.now() + 10_000;
      while (!messages.includes('attached') && Date.now() < deadline) await sleep(10);
      peerSend(Array.from({ length: 10 }, (_, i) => testFrame(500 + i, 100)));
      while (messages.length < 2 && Date.now() < deadline + 10_000) await sleep(10);
      expect(messages[1]).toEqual(Array.from({ length: 10 }, (_, i) => 500 + i));
    } finally {
      await worker.terminate();
      closePacketRing(handle);
    }
  });
});
