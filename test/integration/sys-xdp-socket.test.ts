// AF_XDP ports against a real veth pair: our end (A) in this namespace with the redirect program
// attached (in the driver, veth has native XDP, and in the generic hook), the peer (B) in a
// network namespace where a raw-socket program injects and captures frames.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { existsSync } from 'node:fs';
import { openXdpPort, closeXdpPort, receiveQueues, type XdpPortHandle } from '../../sys/xdp-socket.js';
import { XdpPort } from '../../sys/xdp-port.js';
import { createXskMap, loadRedirectProgram, attachXdp, closeBpfFd, programId, XDP_FLAGS_DRV_MODE } from '../../sys/bpf.js';
import { ifNameToIndex } from '../../sys/netdev.js';
import { requireRoot, requireBinary, createNetns, deleteNetns, createVethPair, deleteLink, uniqueTag } from '../support/netns.js';
import { stopAll, sleep } from '../support/processes.js';
import { multiBufferXdp, requireOrSkip } from '../support/env.js';
import { hex, testFrame, peerSend, startCapture } from '../support/raw-peer.js';

const ETHERTYPE = 0x88b5;
const tag = uniqueTag();
const ns = `sxdns${tag}`;
const ourEnd = `sxdA${tag}`;
const peerEnd = `sxdB${tag}`;
const mqEnd = `sxdC${tag}`;
const mqPeer = `sxdD${tag}`;
let ready = false;

/** The XDP program `ip` reports on `ifname`: 'xdp' (driver), 'xdpgeneric', or null. */
function attachedXdp(ifname: string): string | null {
  const out = execFileSync('ip', ['-d', 'link', 'show', 'dev', ifname], { encoding: 'utf8' });
  const m = /\b(xdpgeneric|xdpdrv|xdp)\b/.exec(out.split('\n')[0] ?? '');
  return m ? m[1] : null;
}

/** Index of the first frame of `a` that differs from `b`'s, or -1. */
function firstDifference(a: Uint8Array[], b: Uint8Array[]): number {
  for (let i = 0; i < Math.max(a.length, b.length); i++) if (a[i] === undefined || b[i] === undefined || hex(a[i]) !== hex(b[i])) return i;
  return -1;
}

async function receiveFrames(port: XdpPort, count: number, budget: number, waitMs = 10_000): Promise<Uint8Array[]> {
  const frames: Uint8Array[] = [];
  const deadline = Date.now() + waitMs;
  while (frames.length < count && Date.now() < deadline) {
    const n = port.receive((bytes, offset, length) => {
      if (((bytes[offset + 12] << 8) | bytes[offset + 13]) === ETHERTYPE) frames.push(bytes.slice(offset, offset + length));
    }, budget);
    expect(n).toBeLessThanOrEqual(budget);
    if (n === 0) await sleep(5);
  }
  return frames;
}

/**
 * Sends `out` through the port in bursts of `burst` flushed together, and checks that the peer's
 * capture saw exactly those frames, in order.
 */
async function sendAndCompare(port: XdpPort, out: Uint8Array[], burst: number): Promise<void> {
  const capture = startCapture(ns, peerEnd, ETHERTYPE, out.length);
  await capture.waitForOutput(/ready/);
  let next = 0;
  const deadline = Date.now() + 10_000;
  while (next < out.length && Date.now() < deadline) {
    for (let k = 0; k < burst && next < out.length; k++) {
      const slot = port.txSlot(out[next].length);
      if (slot === null) break;
      expect(slot.capacity).toBeGreaterThanOrEqual(out[next].length);
      slot.bytes.set(out[next], slot.offset);
      expect(port.txCommit(out[next].length)).toBe(true);
      next++;
    }
    expect(port.txFlush()).toBeGreaterThanOrEqual(0);
    await sleep(1);
  }
  expect(next).toBe(out.length);
  await capture.waitForOutput(/done \d+/, 15_000);
  const got = capture.output().split('\n').filter((l) => l.startsWith('frame ')).map((l) => Buffer.from(l.slice(6), 'hex'));
  expect(got.length).toBe(out.length);
  expect(firstDifference(got, out)).toBe(-1);
}

describe('AF_XDP port over a veth pair', () => {
  beforeAll(() => {
    if (!requireRoot() || !requireBinary('ip')) return;
    createNetns(ns);
    createVethPair(ourEnd, peerEnd, { nsB: ns, noIpv6: true });
    ready = true;
  });

  afterAll(async () => {
    await stopAll();
    deleteLink(ourEnd);
    deleteLink(mqEnd);
    deleteNetns(ns);
  });

  it('refuses bad options, unknown interfaces and an MTU it cannot take, with errors that say why', () => {
    if (!ready) return;
    expect(() => openXdpPort('nosuchif0')).toThrow(expect.objectContaining({ code: 'ENODEV' }));
    expect(() => openXdpPort(ourEnd, { ringSize: 100 })).toThrow(/ring size 100/);
    expect(() => openXdpPort(ourEnd, { chunkSize: 3000 })).toThrow(/chunk size 3000/);
    execFileSync('ip', ['link', 'set', ourEnd, 'mtu', '4000']);
    try {
      expect(() => openXdpPort(ourEnd, { multiBuffer: 'off' })).toThrow(/MTU 4000 needs frames larger than a 4096-byte chunk/);
      execFileSync('ip', ['link', 'set', ourEnd, 'mtu', '9217']);
      expect(() => openXdpPort(ourEnd)).toThrow(/MTU 9217 is above 9216, the largest an AF_XDP port takes/);
    } finally {
      execFileSync('ip', ['link', 'set', ourEnd, 'mtu', '1500']);
    }
    // Nothing is left behind by a failed open.
    expect(attachedXdp(ourEnd)).toBeNull();
  });

  it.each(['native', 'generic'] as const)('receives frames of every size through many ring laps and sends bursts larger than its ring (%s mode)', async (attach) => {
    if (!ready) return;
    const handle = openXdpPort(ourEnd, { attach, ringSize: 256 });
    try {
      expect(handle.attachMode).toBe(attach);
      expect(attachedXdp(ourEnd)).toBe(attach === 'native' ? 'xdp' : 'xdpgeneric');
      const port = XdpPort.attach(handle);
      expect(port.rxReady()).toBe(false);
      const sizes = [60, 128, 512, 1000, 1514];
      let seq = 0;
      // 5 rounds of 200 frames through 256 RX chunks: only possible when delivered chunks go back
      for (let round = 0; round < 5; round++) {
        const sent = Array.from({ length: 200 }, () => testFrame(seq, sizes[seq++ % sizes.length]));
        expect(peerSend(ns, peerEnd, sent)).toBe(sent.length);
        const frames = await receiveFrames(port, sent.length, 7);
        expect(frames.length).toBe(sent.length);
        expect(firstDifference(frames, sent)).toBe(-1);
      }
      expect(port.counters.rxFrames).toBeGreaterThanOrEqual(500);

      // TX: 600 frames through 256 TX chunks, in bursts of 16 flushed together
      await sendAndCompare(port, Array.from({ length: 600 }, (_, i) => testFrame(1000 + i, sizes[i % sizes.length])), 16);
      expect(port.counters.txFrames).toBe(600);

      // What the kernel refuses never enters the ring
      const slot = port.txSlot()!;
      expect(port.txCommit(10)).toBe(false);
      expect(port.txCommit(1515)).toBe(false);
      slot.bytes.set([0x81, 0x00], slot.offset + 12);
      expect(port.txCommit(1518)).toBe(true); // VLAN-tagged: 4 bytes more
      port.txFlush();
      expect(port.counters.txRejected).toBe(2);
      const stats = port.readKernelStatistics();
      expect(stats.kernelDrops).toBe(0);
      expect(stats.kernelInvalidDescs).toBe(0);
    } finally {
      closeXdpPort(handle);
    }
    expect(attachedXdp(ourEnd)).toBeNull();
  });

  it('a jumbo MTU: frames over several chunks both ways (multi-buffer AF_XDP), or a clear refusal with multiBuffer off', async () => {
    if (!ready || !multiBufferXdp()) return;
    execFileSync('ip', ['link', 'set', ourEnd, 'mtu', '9000']);
    execFileSync('ip', ['-n', ns, 'link', 'set', peerEnd, 'mtu', '9000']);
    try {
      expect(() => openXdpPort(ourEnd, { multiBuffer: 'off' })).toThrow(/MTU 9000 needs frames larger than a 4096-byte chunk/);
      const handle = openXdpPort(ourEnd, { ringSize: 256 });
      try {
        expect(handle.multiBuffer).toBe(true);
        expect(handle.chunkSize).toBe(4096);
        const port = XdpPort.attach(handle);
        const sizes = [60, 1514, 4000, 4096, 4097, 8192, 9014];
        // RX: 3 rounds of 100 frames of every size through 256 chunks, so pieces go back to the fill ring
        let seq = 0;
        for (let round = 0; round < 3; round++) {
          const sent = Array.from({ length: 100 }, () => testFrame(seq, sizes[seq++ % sizes.length]));
          expect(peerSend(ns, peerEnd, sent)).toBe(sent.length);
          const frames = await receiveFrames(port, sent.length, 7);
          expect(frames.length).toBe(sent.length);
          expect(firstDifference(frames, sent)).toBe(-1);
        }
        // TX: 300 frames of every size through 256 TX chunks
        await sendAndCompare(port, Array.from({ length: 300 }, (_, i) => testFrame(2000 + i, sizes[i % sizes.length])), 8);
        expect(port.counters.txFrames).toBe(300);
        // Longer than the MTU allows: refused whole, nothing queued
        const slot = port.txSlot(9015)!;
        slot.bytes.set(testFrame(1, 9015), slot.offset);
        expect(port.txCommit(9015)).toBe(false);
        expect(port.counters.txRejected).toBe(1);
        const stats = port.readKernelStatistics();
        expect(stats.kernelInvalidDescs).toBe(0);
        expect(stats.rxTooLong).toBe(0);
      } finally {
        closeXdpPort(handle);
      }
    } finally {
      execFileSync('ip', ['link', 'set', ourEnd, 'mtu', '1500']);
      execFileSync('ip', ['-n', ns, 'link', 'set', peerEnd, 'mtu', '1500']);
    }
    expect(attachedXdp(ourEnd)).toBeNull();
  });

  it('counts frames lost while the relay did not take them (its RX ring full)', async () => {
    if (!ready) return;
    const handle = openXdpPort(ourEnd, { ringSize: 64 });
    try {
      const port = XdpPort.attach(handle);
      expect(peerSend(ns, peerEnd, Array.from({ length: 150 }, (_, i) => testFrame(i, 100)))).toBe(150);
      await sleep(100);
      const stats = port.readKernelStatistics();
      // 64 chunks: the rest had nowhere to go
      expect(stats.kernelDrops).toBeGreaterThanOrEqual(150 - 64);
      const frames = await receiveFrames(port, 64, 64);
      expect(frames.length).toBe(64);
    } finally {
      closeXdpPort(handle);
    }
  });

  it('refuses an interface where another XDP program or socket is, with a clear error, and leaves the first working', async () => {
    if (!ready) return;
    // A program of someone else's on the interface
    const map = createXskMap(1, 'foreign');
    const prog = loadRedirectProgram(map, 'foreign');
    const link = attachXdp(prog, ifNameToIndex(ourEnd), XDP_FLAGS_DRV_MODE, 'foreign program');
    try {
      expect(() => openXdpPort(ourEnd)).toThrow(new RegExp(`another XDP program \\(foreign, id ${programId(prog)}\\) is attached to it, not through libxdp's dispatcher`));
    } finally {
      for (const fd of [link, prog, map]) closeBpfFd(fd);
    }
    const handle = openXdpPort(ourEnd);
    try {
      expect(() => openXdpPort(ourEnd)).toThrow(/queue 0: the queue is in use by another AF_XDP socket/);
      const port = XdpPort.attach(handle);
      expect(peerSend(ns, peerEnd, [testFrame(7, 64)])).toBe(1);
      expect((await receiveFrames(port, 1, 4)).map(hex)).toEqual([hex(testFrame(7, 64))]);
    } finally {
      closeXdpPort(handle);
    }
  });

  it('serves every receive queue of a multi-queue interface', async () => {
    if (!ready) return;
    execFileSync('ip', ['link', 'add', mqEnd, 'numtxqueues', '2', 'numrxqueues', '2', 'type', 'veth', 'peer', 'name', mqPeer, 'numtxqueues', '2', 'numrxqueues', '2']);
    execFileSync('ip', ['link', 'set', mqPeer, 'netns', ns]);
    execFileSync('ip', ['-n', ns, 'link', 'set', mqPeer, 'up']);
    execFileSync('ip', ['link', 'set', mqEnd, 'up']);
    expect(receiveQueues(mqEnd)).toEqual([0, 1]);
    // A packet socket that bypasses the qdisc sends on the queue of its CPU: one batch from each CPU.
    const a = Array.from({ length: 20 }, (_, i) => testFrame(i, 80));
    const b = Array.from({ length: 20 }, (_, i) => testFrame(100 + i, 80));
    // The control: serving queue 0 alone, the frames that arrive on queue 1 go past the port.
    const partial = openXdpPort(mqEnd, { queues: [0] });
    try {
      const port = XdpPort.attach(partial);
      peerSend(ns, mqPeer, a, { cpu: 0 });
      peerSend(ns, mqPeer, b, { cpu: 1 });
      await sleep(200);
      const frames = await receiveFrames(port, 40, 64, 500);
      expect(frames.length).toBe(20);
    } finally {
      closeXdpPort(partial);
    }
    const handle = openXdpPort(mqEnd);
    try {
      expect(handle.queues.map((q) => q.queue)).toEqual([0, 1]);
      const port = XdpPort.attach(handle);
      peerSend(ns, mqPeer, a, { cpu: 0 });
      peerSend(ns, mqPeer, b, { cpu: 1 });
      const frames = await receiveFrames(port, 40, 64);
      expect(frames.map(hex).sort()).toEqual([...a, ...b].map(hex).sort());
    } finally {
      closeXdpPort(handle);
    }
    // Jumbo frames on both queues: the second queue's socket shares the first's UMEM and its multi-buffer mode.
    if (!multiBufferXdp()) return;
    execFileSync('ip', ['link', 'set', mqEnd, 'mtu', '9000']);
    execFileSync('ip', ['-n', ns, 'link', 'set', mqPeer, 'mtu', '9000']);
    const jumbo = openXdpPort(mqEnd);
    try {
      expect(jumbo.multiBuffer).toBe(true);
      const port = XdpPort.attach(jumbo);
      const ja = Array.from({ length: 10 }, (_, i) => testFrame(200 + i, 9014));
      const jb = Array.from({ length: 10 }, (_, i) => testFrame(300 + i, 9014));
      peerSend(ns, mqPeer, ja, { cpu: 0 });
      peerSend(ns, mqPeer, jb, { cpu: 1 });
      const frames = await receiveFrames(port, 20, 64);
      expect(frames.map(hex).sort()).toEqual([...ja, ...jb].map(hex).sort());
    } finally {
      closeXdpPort(jumbo);
    }
  });

  it('leaves no program on the interface when the process holding the port is killed', async () => {
    if (!ready) return;
    const compiled = fileURLToPath(new URL('../../dist/sys/xdp-socket.js', import.meta.url));
    if (!requireOrSkip(existsSync(compiled), `compiled sys/ missing at ${compiled}: run npx tsc -p . first`)) return;
    const child = spawn(process.execPath, ['--input-type=module', '-e', `
      const { openXdpPort } = await import(${JSON.stringify(compiled)});
      openXdpPort(${JSON.stringify(ourEnd)});
      console.log('open');
      setInterval(() => {}, 1000);
    `], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      await new Promise<void>((resolve, reject) => {
        child.stdout!.on('data', (d: Buffer) => d.toString().includes('open') && resolve());
        child.on('exit', (code) => reject(new Error(`holder exited with ${code}`)));
      });
      expect(attachedXdp(ourEnd)).toBe('xdp');
    } finally {
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
    }
    // The link fd died with the process; the kernel detaches the program (it may take a moment).
    const deadline = Date.now() + 5000;
    while (attachedXdp(ourEnd) !== null && Date.now() < deadline) await sleep(50);
    expect(attachedXdp(ourEnd)).toBeNull();
  });
});
