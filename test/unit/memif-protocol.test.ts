// memif: message codec, ring placement and descriptor checks with hostile values, and our two
// roles against each other over a real SOCK_SEQPACKET socket (no DPDK needed).
import { describe, it, expect, afterEach } from 'vitest';
import { Reactor } from '../../sys/poll.js';
import { viewAt } from '../../sys/memory.js';
import {
  MemifEndpoint, MemifProtocolError, decodeMessage, encodeMessage, checkRingPlacement, MEMIF_MESSAGE_SIZE, MEMIF_VERSION,
  type MemifMessage,
} from '../../sys/memif-control.js';
import { MEMIF_RING_HEADER, MemifPort, checkDescriptor, ringBytes, type MemifPortHandle } from '../../sys/memif-rings.js';
import { createMemoryLink } from '../../relay/datapath/memory-link.js';
import { Counter } from '../../relay/datapath/counters.js';
import { TX_HDR, TX_RIG_MEMORY, openTxRig, txDirection } from '../support/tx-direction.js';
import { rxDirection } from '../support/rx-direction.js';
import { connectedPair as connectedPairIn, numberedFrame as frame, sendFrames as send, until, type Cleanup, type MemifPairOptions } from '../support/memif-pair.js';

const cleanups: Cleanup[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});
const connectedPair = (opts?: MemifPairOptions) => connectedPairIn(cleanups, opts);

describe('memif message codec', () => {
  const samples: MemifMessage[] = [
    { type: 'ack' },
    { type: 'hello', name: 'DPDK 22.11.0', minVersion: MEMIF_VERSION, maxVersion: MEMIF_VERSION, maxRegion: 255, maxS2cRing: 255, maxC2sRing: 255, maxLog2RingSize: 14 },
    { type: 'init', version: MEMIF_VERSION, id: 0xfffffffe, mode: 0, secret: 'shh', name: 'vio4wd' },
    { type: 'add_region', index: 3, size: 4 * 1024 * 1024 },
    { type: 'add_ring', flags: 1, index: 0, region: 0, offset: 4224, log2RingSize: 10, privateHdrSize: 0 },
    { type: 'connect', ifName: 'net_memif0' },
    { type: 'connected', ifName: 'memif0/0' },
    { type: 'disconnect', code: 7, reason: 'Device closed' },
  ];
  for (const m of samples) {
    it(`round-trips ${m.type} in ${MEMIF_MESSAGE_SIZE} bytes`, () => {
      const bytes = encodeMessage(m);
      expect(bytes.byteLength).toBe(MEMIF_MESSAGE_SIZE);
      expect(decodeMessage(bytes)).toEqual(m);
    });
  }

  it('lays INIT and ADD_RING out as the packed C structs do', () => {
    const init = encodeMessage({ type: 'init', version: 0x0200, id: 0x01020304, mode: 0, secret: 'ab', name: 'n' });
    expect([...init.subarray(0, 11)]).toEqual([3, 0, 0x00, 0x02, 4, 3, 2, 1, 0, 0x61, 0x62]);
    const ring = encodeMessage({ type: 'add_ring', flags: 1, index: 2, region: 3, offset: 0x10203040, log2RingSize: 9, privateHdrSize: 0 });
    expect([...ring.subarray(0, 15)]).toEqual([5, 0, 1, 0, 2, 0, 3, 0, 0x40, 0x30, 0x20, 0x10, 9, 0, 0]);
  });

  it('refuses wrong sizes and unknown types', () => {
    expect(() => decodeMessage(new Uint8Array(127))).toThrow(MemifProtocolError);
    expect(() => decodeMessage(new Uint8Array(129))).toThrow(/129 bytes/);
    const unknown = new Uint8Array(128);
    unknown[0] = 42;
    expect(() => decodeMessage(unknown)).toThrow(/unknown message type 42/);
    expect(() => decodeMessage(new Uint8Array(128))).toThrow(/type 0/);
  });

  it('caps strings at their field and reports absurd region sizes as infinite', () => {
    const m = decodeMessage(encodeMessage({ type: 'connect', ifName: 'x'.repeat(100) })) as { ifName: string };
    expect(m.ifName.length).toBe(31);
    const bytes = encodeMessage({ type: 'add_region', index: 0, size: 1 });
    new DataView(bytes.buffer).setBigUint64(4, 0xffffffffffffffffn, true);
    expect((decodeMessage(bytes) as { size: number }).size).toBe(Infinity);
  });
});

describe('memif ring placement', () => {
  const ok = { index: 0, region: 0, offset: 0, log2RingSize: 10, privateHdrSize: 0 };
  it('accepts a ring inside its region', () => {
    expect(checkRingPlacement([ringBytes(10)], ok)).toBeNull();
  });
  it.each([
    [{ ...ok, region: 1 }, /region 1, which was not added/],
    [{ ...ok, log2RingSize: 0 }, /log2 ring size 0/],
    [{ ...ok, log2RingSize: 15 }, /log2 ring size 15/],
    [{ ...ok, log2RingSize: 255 }, /log2 ring size 255/],
    [{ ...ok, offset: 2 }, /not 4-byte aligned/],
    [{ ...ok, offset: 0xfffffffc }, /past the/],
    [{ ...ok, offset: 4 }, /past the/],
    [{ ...ok, index: 64 }, /ring index 64: at most 64 rings per direction/],
    [{ ...ok, privateHdrSize: 8 }, /private header/],
  ])('refuses %o', (ring, why) => {
    expect(checkRingPlacement([ringBytes(10)], ring)).toMatch(why);
  });
});

describe('memif descriptor checks', () => {
  const regions = [65536, 4096];
  it('accepts buffers inside a region', () => {
    expect(checkDescriptor(regions, 0, 0, 2048, 65536)).toBe(0);
    expect(checkDescriptor(regions, 1, 2048, 2048, 65536)).toBe(1);
    expect(checkDescriptor(regions, 0, 65535, 1, 65536)).toBe(0);
  });
  it.each([
    [2, 0, 64],
    [0xffff, 0, 64],
    [1, 4000, 97],
    [0, 0xffffffff, 1],
    [0, 0xffffffff, 0xffffffff],
    [0, 0, 0xffffffff],
    [0, 65536, 1],
    [0, 0, 65537],
  ])('refuses region %d offset %d length %d', (region, offset, length) => {
    expect(checkDescriptor(regions, region, offset, length, 65536)).toBe(-1);
  });
});

function receiveAll(port: MemifPort): number[] {
  const got: number[] = [];
  port.receive((bytes, at) => void got.push(bytes[at + 14] | (bytes[at + 15] << 8)), 1000);
  return got;
}

describe('memif endpoints, our server against our client', () => {
  it('connects and carries frames both ways, ring wrap included', async () => {
    const { up } = await connectedPair();
    await until(() => up.server.length === 1 && up.client.length === 1);
    const s = MemifPort.attach(up.server[0]);
    const c = MemifPort.attach(up.client[0]);
    let n = 0;
    for (let round = 0; round < 10; round++) {
      const batch = Array.from({ length: 40 }, () => frame(n++));
      expect(send(c, batch)).toBe(40);
      expect(receiveAll(s)).toEqual(batch.map((f) => f[14] | (f[15] << 8)));
      expect(send(s, batch)).toBe(40);
      expect(receiveAll(c)).toEqual(batch.map((f) => f[14] | (f[15] << 8)));
    }
    // 64 slots: a full ring refuses more until the reader frees slots.
    expect(send(c, Array.from({ length: 100 }, (_, i) => frame(i)))).toBe(64);
    expect(receiveAll(s).length).toBe(64);
    expect(s.counters.rxBadDescriptors).toBe(0);
  });

  it('a client with three ring pairs: the server polls every ring it may be sent on, and sends on the first', async () => {
    const { up, events } = await connectedPair({ rings: 3 });
    await until(() => up.server.length === 1 && up.client.length === 1);
    expect(events).toEqual(expect.arrayContaining([expect.stringMatching(/server: .*connected to .*3 rings each way, 64 slots per ring/)]));
    for (const h of [up.server[0], up.client[0]]) {
      expect(h.rx.length).toBe(3);
      expect(h.tx.length).toBe(3);
    }
    // Every ring and every buffer of the client's region is its own: none overlaps another.
    const h = up.client[0];
    const spans = [...h.rx, ...h.tx].flatMap((r) => [
      [r.offset, r.offset + ringBytes(r.log2Size)],
      [r.buffersAt, r.buffersAt + (1 << r.log2Size) * h.bufferSize],
    ]).sort((a, b) => a[0] - b[0]);
    for (let i = 1; i < spans.length; i++) expect(spans[i][0]).toBeGreaterThanOrEqual(spans[i - 1][1]);
    expect(spans.at(-1)![1]).toBeLessThanOrEqual(h.regions[0].length);
    const s = MemifPort.attach(up.server[0]);
    // The client's queues, one port per ring, as a peer with three transmit queues sends.
    const queues = [0, 1, 2].map((i) => MemifPort.attach({ ...up.client[0], tx: [up.client[0].tx[i]], rx: [up.client[0].rx[i]] }));
    expect(send(queues[2], [frame(20), frame(21)])).toBe(2);
    expect(send(queues[1], [frame(10)])).toBe(1);
    expect(send(queues[0], [frame(0)])).toBe(1);
    expect(s.rxReady()).toBe(true);
    expect(receiveAll(s).sort((a, b) => a - b)).toEqual([0, 10, 20, 21]);
    expect(s.rxReady()).toBe(false);
    // A budget spent on one busy ring does not starve the others: the next burst starts elsewhere.
    expect(send(queues[0], Array.from({ length: 40 }, (_, i) => frame(100 + i)))).toBe(40);
    expect(send(queues[2], [frame(7)])).toBe(1);
    const firsts: number[][] = [];
    for (let burst = 0; burst < 3; burst++) {
      const got: number[] = [];
      s.receive((bytes, at) => void got.push(bytes[at + 14] | (bytes[at + 15] << 8)), 8);
      firsts.push(got);
    }
    expect(firsts.flat()).toContain(7);
    // The server sends on the ring it selects (ring 0 at first); one flush publishes every ring
    // written since the last; a ring the peer does not have is ignored.
    expect(s.txRingCount).toBe(3);
    expect(send(s, [frame(1), frame(2)])).toBe(2);
    expect(receiveAll(queues[0])).toEqual([1, 2]);
    expect(receiveAll(queues[1])).toEqual([]);
    for (const [ring, n] of [[2, 30], [1, 31], [7, 32]]) {
      s.selectTxRing(ring);
      const slot = s.txSlot()!;
      slot.bytes.set(frame(n), slot.offset);
      expect(s.txCommit(60)).toBe(true);
    }
    expect(receiveAll(queues[1])).toEqual([]);
    s.txFlush();
    expect(receiveAll(queues[2])).toEqual([30]);
    expect(receiveAll(queues[1])).toEqual([31, 32]);
    const client = MemifPort.attach(up.client[0]);
    expect(receiveAll(client)).toEqual([]);
    expect(s.counters.ringErrors + s.counters.rxBadDescriptors).toBe(0);
  });

  it('refuses client ring counts outside [1, 16]', () => {
    const reactor = new Reactor();
    cleanups.push(() => reactor.close());
    const base = { role: 'client' as const, socketPath: '/tmp/none.sock', id: 1, maxFrameLength: 1514, rxInterrupts: false, reactor, onUp: async () => undefined, onDown: async () => undefined, onEvent: () => undefined };
    for (const rings of [0, 17, 1.5]) expect(() => new MemifEndpoint({ ...base, rings })).toThrow(/memif rings .* is not an integer in \[1, 16\]/);
  });

  it('refuses a wrong id or secret, with the reason on both sides', async () => {
    const wrongId = await connectedPair({ id: 1, clientId: 2 });
    await until(() => wrongId.events.some((e) => /interface id 2 is not served here/.test(e)));
    expect(wrongId.up.server.length).toBe(0);
    const wrongSecret = await connectedPair({ secret: 'right', clientSecret: 'wrong' });
    await until(() => wrongSecret.events.some((e) => /server: .*incorrect secret/.test(e)) && wrongSecret.events.some((e) => /client: .*peer disconnected: incorrect secret/.test(e)));
    expect(wrongSecret.up.server.length).toBe(0);
  });

  it('reports the peer going away and reconnects (client retries)', async () => {
    const pair = await connectedPair();
    await until(() => pair.up.server.length === 1 && pair.up.client.length === 1);
    await pair.server.close();
    await until(() => pair.down.client.length === 1);
    expect(pair.client.state).toBe('connecting');
    const again = new MemifEndpoint({
      role: 'server', socketPath: pair.socketPath, id: 7, maxFrameLength: 1514, rxInterrupts: false, reactor: pair.reactor,
      onUp: async (h) => void pair.up.server.push(h), onDown: async () => undefined, onEvent: () => undefined,
    });
    again.start();
    cleanups.push(() => again.close());
    await until(() => pair.up.client.length === 2 && pair.up.server.length === 2);
    const s = MemifPort.attach(pair.up.server[1]);
    const c = MemifPort.attach(pair.up.client[1]);
    expect(send(c, [frame(5)])).toBe(1);
    expect(receiveAll(s)).toEqual([5]);
  });

  it('sends into the buffers the client had posted when it looked; an impossible head written since breaks the ring once those are used', async () => {
    const { up } = await connectedPair();
    await until(() => up.server.length === 1 && up.client.length === 1);
    const s = MemifPort.attach(up.server[0]);
    const h = up.client[0];
    // The server sends on the client's receive ring, whose 64 buffers the client posted at connection.
    const head = new Uint16Array(viewOfRegion(h), h.rx[0].offset, 4);
    const c = MemifPort.attach(h);
    expect(send(s, [frame(1), frame(2)])).toBe(2);
    head[3] = (head[3] + 5000) & 0xffff;
    // The 62 buffers it saw posted are still the client's to give: the server fills them...
    expect(send(s, Array.from({ length: 62 }, (_, i) => frame(10 + i)))).toBe(62);
    expect(s.counters.ringErrors).toBe(0);
    // ...and reads the head again only for more, finds it impossible, and leaves the ring alone.
    expect(send(s, [frame(99)])).toBe(0);
    expect(s.counters.ringErrors).toBe(1);
    expect(s.txFree()).toBe(0);
    expect(receiveAll(c)).toEqual([1, 2, ...Array.from({ length: 62 }, (_, i) => 10 + i)]);
  });

  it('calls beforeRelease while the frames it delivered are still its own, and not when it delivered none', async () => {
    const { up } = await connectedPair();
    await until(() => up.server.length === 1 && up.client.length === 1);
    const s = MemifPort.attach(up.server[0]);
    const c = MemifPort.attach(up.client[0]);
    const h = up.client[0];
    // The server gives slots back by moving the tail of the client's transmit ring.
    const words = new Uint16Array(viewOfRegion(h), h.tx[0].offset, MEMIF_RING_HEADER / 2);
    const tail = (): number => words[32]; // memif_ring_t's tail: byte 64, a cache line of its own
    expect(send(c, [frame(1), frame(2), frame(3)])).toBe(3);
    const before = tail();
    const got: number[] = [];
    const calls: { tail: number; frames: number }[] = [];
    s.receive((bytes, at) => void got.push(bytes[at + 14]), 100, undefined, () => calls.push({ tail: tail(), frames: got.length }));
    expect(got).toEqual([1, 2, 3]);
    expect(calls).toEqual([{ tail: before, frames: 3 }]);
    expect(tail()).toBe((before + 3) & 0xffff);
    s.receive(() => {}, 100, undefined, () => calls.push({ tail: -1, frames: -1 }));
    expect(calls.length).toBe(1);
    // A frame over two slots is gathered into a scratch copy: handlers are called back before it
    // overwrites that copy (the frames before it may be there), and again at the end.
    expect(send(c, [frame(4), frame(5), frame(6), frame(7), frame(8)])).toBe(5);
    const ring = new Uint32Array(viewOfRegion(h), h.tx[0].offset, ringBytes(h.tx[0].log2Size) / 4);
    for (const slot of [4, 6]) ring[32 + 4 * (slot & 63)] |= 1; // MEMIF_DESC_FLAG_NEXT
    const lengths: number[] = [];
    const marks: number[] = [];
    s.receive((_bytes, _at, length) => void lengths.push(length), 100, undefined, () => marks.push(lengths.length));
    expect(lengths).toEqual([60, 120, 120]);
    expect(marks).toEqual([1, 2, 3]);
  });

  it('drops descriptors a hostile client points outside its region, and keeps going', async () => {
    const { up } = await connectedPair();
    await until(() => up.server.length === 1 && up.client.length === 1);
    const s = MemifPort.attach(up.server[0]);
    const c = MemifPort.attach(up.client[0]);
    const h = up.client[0];
    // Write three frames as the client would, then spoil the middle descriptor.
    expect(send(c, [frame(1), frame(2), frame(3)])).toBe(3);
    const ring = new Uint32Array(new Uint8Array(viewOfRegion(h)).buffer, h.tx[0].offset, ringBytes(h.tx[0].log2Size) / 4);
    const d = 32 + 4 * 1;
    ring[d] = 0x00050000; // region 5
    expect(receiveAll(s)).toEqual([1, 3]);
    ring[32 + 4 * 3] = 0;
    expect(send(c, [frame(4)])).toBe(1);
    ring[32 + 4 * 3 + 2] = 0xfffffff0; // offset past the region
    expect(receiveAll(s)).toEqual([]);
    expect(s.counters.rxBadDescriptors).toBe(2);
    // An impossible head stops reading the ring rather than reading garbage.
    new Uint16Array(ring.buffer, h.tx[0].offset, 64)[3] = (new Uint16Array(ring.buffer, h.tx[0].offset, 64)[3] + 5000) & 0xffff;
    expect(receiveAll(s)).toEqual([]);
    expect(s.counters.ringErrors).toBe(1);
  });
});

function viewOfRegion(h: MemifPortHandle): ArrayBuffer {
  return viewAt(h.regions[0].address, h.regions[0].length);
}

describe('memif into a guest (VfToVm over our memif server, fed by our client)', () => {
  it('small frames, whose copies wait for the end of the ring\'s burst, reach the guest whole with their headers, as big ones do', async () => {
    const { up } = await connectedPair();
    await until(() => up.server.length === 1 && up.client.length === 1);
    const rig = openTxRig('mem0', {}, undefined, undefined, createMemoryLink('mem0'));
    cleanups.push(() => rig.close());
    const g = rxDirection(rig, 1, { mergeable: true }, { mode: 'single', active: 0, members: [{ netdev: 'memif0', handle: up.server[0], up: true }] });
    const c = MemifPort.attach(up.client[0]);
    const sizes = [60, 64, 128, 256, 257, 1000, 1514];
    const frames = Array.from({ length: 40 }, (_, i) => {
      const f = frame(i, sizes[i % sizes.length]);
      for (let k = 16; k < f.length; k++) f[k] = (i * 7 + k) & 0xff;
      return f;
    });
    // Buffers dirty from an earlier use: every byte of the header and frame must be written.
    new Uint8Array(rig.mem.buffer).fill(0xee, 0x10000);
    g.postMergeable(64, 2048);
    let moved = 0;
    for (let round = 0; round < 2; round++) {
      expect(send(c, frames.slice(round * 20, round * 20 + 20))).toBe(20);
      moved += g.d.burst();
    }
    expect(moved).toBe(40);
    const got = g.received();
    expect(got.map((r) => Buffer.from(r.frame).toString('hex'))).toEqual(frames.map((f) => Buffer.from(f).toString('hex')));
    expect(got.every((r) => r.header.every((b, k) => b === (k === 10 ? 1 : 0)))).toBe(true);
    expect(g.counter(Counter.Packets)).toBe(40);
    g.d.release();
  });
});

describe('a guest into memif (VmToVf over our memif server, read by our client)', () => {
  it('frames reach the peer whole and in order: small ones, copied when the burst is flushed, whether their header has a buffer of its own or not; big ones and split ones as they come', async () => {
    const { up } = await connectedPair();
    await until(() => up.server.length === 1 && up.client.length === 1);
    const rig = openTxRig('mem0', {}, undefined, undefined, createMemoryLink('mem0'));
    cleanups.push(() => rig.close());
    const g = txDirection(rig, 1, { queueSize: 256 }, { mode: 'single', active: 0, members: [{ netdev: 'memif0', handle: up.server[0], up: true }] });
    const c = MemifPort.attach(up.client[0]);
    const guest = new Uint8Array(rig.mem.buffer);
    const sizes = [60, 64, 200, 256, 257, 1000, 1514];
    const frames = Array.from({ length: 42 }, (_, i) => {
      const f = frame(i, sizes[i % sizes.length]);
      for (let k = 16; k < f.length; k++) f[k] = (i * 5 + k) & 0xff;
      return f;
    });
    const header = new Uint8Array(TX_HDR);
    // Header and frame in one buffer, at the top of guest memory, out of the helper's way.
    const oneBuffer = (f: Uint8Array, i: number): void => {
      const at = TX_RIG_MEMORY - (i + 1) * 0x800;
      guest.set(header, at);
      guest.set(f, at + TX_HDR);
      g.postRaw([{ gpa: at, len: TX_HDR + f.length }]);
    };
    frames.forEach((f, i) => {
      if (i % 3 === 0) oneBuffer(f, i);
      else if (i % 3 === 1) g.post(header, f);
      else g.post(header, f, 40); // the frame over two buffers
    });
    g.publish();
    let moved = 0;
    while (moved < frames.length) {
      const n = g.d.burst();
      if (n === 0) break;
      moved += n;
    }
    expect(moved).toBe(frames.length);
    const got: string[] = [];
    c.receive((bytes, at, length) => void got.push(Buffer.from(bytes.subarray(at, at + length)).toString('hex')), 1000);
    expect(got).toEqual(frames.map((f) => Buffer.from(f).toString('hex')));
    expect(g.counter(Counter.Packets)).toBe(frames.length);
    g.d.release();
  });
});
