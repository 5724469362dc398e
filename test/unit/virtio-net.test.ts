// The virtio-net layer over split rings: header encoding, feature bits, frames out of transmit
// chains (D7, D8, D9) and into receive chains, mergeable or not, with rollback (D11).
import { describe, expect, it } from 'vitest';
import {
  VHOST_USER_F_PROTOCOL_FEATURES,
  VHOST_USER_PROTOCOL_F_REPLY_ACK,
  VIRTIO_F_VERSION_1,
  VIRTIO_NET_F_MRG_RXBUF,
  VIRTIO_RING_F_EVENT_IDX,
  featureMask,
  featureNames,
  hasFeature,
  maskFromWords,
  maskToWords,
  protocolFeatureNames,
  ringFeatures,
} from '../../virtio/features.js';
import {
  VIRTIO_NET_HDR_F_NEEDS_CSUM,
  VIRTIO_NET_HDR_GSO_TCPV4,
  netHeaderLength,
  readNetHeader,
  readNumBuffers,
  writeNetHeader,
  writeNumBuffers,
  writePlainNetHeader,
} from '../../virtio/net-header.js';
import { NetRxWriter, RX_DROPPED, RX_NO_BUFFERS } from '../../virtio/net-rx.js';
import { TX_DROPPED, readTxFrame } from '../../virtio/net-tx.js';
import { DescriptorChain } from '../../virtio/split-queue.js';
import { rng } from '../support/hostile-frontend.js';
import { RingBuilder, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, createTestMemory, readBytes, writeBytes, type BufferSpec } from '../support/ring-builder.js';

const frameOf = (len: number, seed = 5): Uint8Array => Uint8Array.from({ length: len }, (_, i) => (i * 13 + seed) & 0xff);

describe('feature bits', () => {
  it('builds masks, tests bits, splits words and names bits for logs', () => {
    const mask = featureMask(VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_RING_F_EVENT_IDX, VHOST_USER_F_PROTOCOL_FEATURES);
    expect(mask).toBe((1n << 32n) | (1n << 15n) | (1n << 29n) | (1n << 30n));
    expect(hasFeature(mask, VIRTIO_F_VERSION_1)).toBe(true);
    expect(hasFeature(mask, 28)).toBe(false);
    expect(maskToWords(mask)).toEqual({ low: (1 << 15) | (1 << 29) | (1 << 30), high: 1 });
    expect(maskFromWords((1 << 15) | (1 << 29) | (1 << 30), 1)).toBe(mask);
    expect(featureNames(mask | (1n << 50n))).toEqual(['MRG_RXBUF', 'EVENT_IDX', 'PROTOCOL_FEATURES', 'VERSION_1', 'bit50']);
    expect(protocolFeatureNames(featureMask(VHOST_USER_PROTOCOL_F_REPLY_ACK, 0))).toEqual(['MQ', 'REPLY_ACK']);
    expect(ringFeatures(mask)).toEqual({ eventIdx: true, indirect: false, version1: true, mergeableRxBuffers: true, logAll: false });
    expect(() => featureMask(64)).toThrow(/not in 0..63/);
    expect(() => maskToWords(1n << 64n)).toThrow(/not a u64/);
  });
});

describe('virtio-net header', () => {
  it('is 12 bytes with VERSION_1 or MRG_RXBUF and 10 otherwise', () => {
    expect(netHeaderLength(0n)).toBe(10);
    expect(netHeaderLength(featureMask(VIRTIO_F_VERSION_1))).toBe(12);
    expect(netHeaderLength(featureMask(VIRTIO_NET_F_MRG_RXBUF))).toBe(12);
  });

  it('round-trips every field little-endian and refuses buffers too short', () => {
    const bytes = new Uint8Array(20);
    const header = { flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, gsoType: VIRTIO_NET_HDR_GSO_TCPV4, hdrLen: 54, gsoSize: 1448, csumStart: 34, csumOffset: 16, numBuffers: 3 };
    writeNetHeader(bytes, 4, 12, header);
    expect([...bytes.subarray(4, 16)]).toEqual([1, 1, 54, 0, 0xa8, 0x05, 34, 0, 16, 0, 3, 0]);
    expect(readNetHeader(bytes, 4, 12)).toEqual(header);
    expect(readNetHeader(bytes, 4, 10).numBuffers).toBe(0);
    writeNumBuffers(bytes, 4, 0x1234);
    expect(readNumBuffers(bytes, 4)).toBe(0x1234);
    writePlainNetHeader(bytes, 4, 12, 1);
    expect([...bytes.subarray(4, 16)]).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    expect(() => readNetHeader(bytes, 10, 12)).toThrow(/do not fit in 20 bytes/);
    expect(() => writeNetHeader(bytes, 0, 11, header)).toThrow(/neither 10 nor 12/);
    expect(() => writeNumBuffers(bytes, 0, 70000)).toThrow(/not a u16/);
  });
});

function txSetup(buffers: BufferSpec[]) {
  const memory = createTestMemory([{ gpa: 0, size: 1 << 20 }]);
  const ring = new RingBuilder(memory, { size: 8 });
  const queue = ring.queue({ indirect: true });
  ring.writeChain(buffers);
  ring.offer(0);
  const chain = new DescriptorChain();
  expect(queue.popChain(chain)).toBe(true);
  return { memory, chain };
}

describe('transmit frames', () => {
  it('reads a frame whose header is split across descriptors and shares one with data (D8, D9)', () => {
    const frame = frameOf(100);
    const header = Uint8Array.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    header[0] = 0x55;
    const s = txSetup([
      { addr: 0x10000, len: 5 },
      { addr: 0x11000, len: 47 }, // 7 header bytes + 40 frame bytes
      { addr: 0x12000, len: 60 },
    ]);
    writeBytes(s.memory, 0x10000, header.subarray(0, 5));
    writeBytes(s.memory, 0x11000, [...header.subarray(5), ...frame.subarray(0, 40)]);
    writeBytes(s.memory, 0x12000, frame.subarray(40));
    const out = new Uint8Array(2048);
    const headerCopy = new Uint8Array(12);
    expect(readTxFrame(s.chain, 12, out, 10, headerCopy)).toBe(100);
    expect(out.subarray(10, 110)).toEqual(frame);
    expect(headerCopy).toEqual(header);
    // The copy is ours: the guest rewriting its buffer afterwards changes nothing.
    writeBytes(s.memory, 0x10000, [0xff]);
    expect(readNetHeader(headerCopy, 0, 12).flags).toBe(0x55);
  });

  it('drops chains no longer than the header, with writable buffers, rejected, or too big (D7, D8)', () => {
    const out = new Uint8Array(64);
    expect(readTxFrame(txSetup([{ addr: 0x10000, len: 12 }]).chain, 12, out, 0)).toBe(TX_DROPPED);
    expect(readTxFrame(txSetup([{ addr: 0x10000, len: 0 }]).chain, 12, out, 0)).toBe(TX_DROPPED);
    expect(readTxFrame(txSetup([{ addr: 0x10000, len: 40 }, { addr: 0x11000, len: 8, writable: true }]).chain, 12, out, 0)).toBe(TX_DROPPED);
    expect(readTxFrame(txSetup([{ addr: 0x10000, len: 12 + 65 }]).chain, 12, out, 0)).toBe(TX_DROPPED);
    const bad = txSetup([{ addr: 0x900000, len: 40 }]).chain;
    expect(bad.ok).toBe(false);
    expect(readTxFrame(bad, 12, out, 0)).toBe(TX_DROPPED);
    expect(readTxFrame(txSetup([{ addr: 0x10000, len: 13 }]).chain, 12, out, 0)).toBe(1);
  });
});

function rxSetup(options: { mergeable: boolean; headerLength?: number; size?: number; maxBuffers?: number; deferWrites?: boolean }) {
  const memory = createTestMemory([{ gpa: 0, size: 1 << 20 }]);
  const ring = new RingBuilder(memory, { size: options.size ?? 8 });
  const queue = ring.queue({});
  const writer = new NetRxWriter(queue, {
    headerLength: options.headerLength ?? 12,
    mergeable: options.mergeable,
    maxBuffers: options.maxBuffers,
    deferWrites: options.deferWrites,
  });
  return { memory, ring, queue, writer };
}

describe('receive frames without MRG_RXBUF', () => {
  it('writes header and frame into one chain and reports the bytes written', () => {
    const s = rxSetup({ mergeable: false });
    s.ring.writeChain([
      { addr: 0x10000, len: 12, writable: true },
      { addr: 0x11000, len: 1514, writable: true },
    ]);
    s.ring.offer(0);
    const frame = frameOf(1000);
    expect(s.writer.deliver(frame, 0, 1000)).toBe(1);
    s.queue.flushUsed();
    expect(s.ring.usedEntry(0)).toEqual({ id: 0, len: 1012 });
    expect([...readBytes(s.memory, 0x10000, 12)]).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]); // num_buffers 1 with VERSION_1
    expect(readBytes(s.memory, 0x11000, 1000)).toEqual(frame);
  });

  it('returns a too-small or read-only chain empty and drops the frame (D7, D11)', () => {
    const s = rxSetup({ mergeable: false, headerLength: 10 });
    s.ring.writeChain([{ addr: 0x10000, len: 100, writable: true }], 0);
    s.ring.writeChain([{ addr: 0x10000, len: 2000 }], 1); // device-readable: wrong direction
    s.ring.offer(0, 1);
    expect(s.writer.deliver(frameOf(91), 0, 91)).toBe(RX_DROPPED);
    expect(s.writer.deliver(frameOf(50), 0, 50)).toBe(RX_DROPPED);
    expect(s.writer.deliver(frameOf(50), 0, 50)).toBe(RX_NO_BUFFERS);
    s.queue.flushUsed();
    expect([s.ring.usedEntry(0), s.ring.usedEntry(1)]).toEqual([
      { id: 0, len: 0 },
      { id: 1, len: 0 },
    ]);
  });
});

describe('receive frames with MRG_RXBUF', () => {
  const post = (s: ReturnType<typeof rxSetup>, count: number, len: number, first = 0): void => {
    for (let i = 0; i < count; i++) s.ring.writeChain([{ addr: 0x10000 + (first + i) * 0x1000, len, writable: true }], first + i);
    s.ring.offer(...Array.from({ length: count }, (_, i) => first + i));
  };

  it('spreads a frame over several buffers with num_buffers in the first header', () => {
    const s = rxSetup({ mergeable: true });
    post(s, 4, 1000);
    const frame = frameOf(2500);
    expect(s.writer.deliver(frame, 0, 2500)).toBe(3);
    s.queue.flushUsed();
    expect(s.ring.usedIdx()).toBe(3);
    expect([0, 1, 2].map((i) => s.ring.usedEntry(i))).toEqual([
      { id: 0, len: 1000 },
      { id: 1, len: 1000 },
      { id: 2, len: 512 },
    ]);
    expect(readNumBuffers(readBytes(s.memory, 0x10000, 12), 0)).toBe(3);
    const got = new Uint8Array([...readBytes(s.memory, 0x10000 + 12, 988), ...readBytes(s.memory, 0x11000, 1000), ...readBytes(s.memory, 0x12000, 512)]);
    expect(got).toEqual(frame);
    // The fourth buffer is still available for the next frame.
    expect(s.writer.deliver(frameOf(10), 0, 10)).toBe(1);
  });

  it('writes a frame that fits one buffer straight into it: the header given, num_buffers 1, the frame, nothing after; pages logged', () => {
    const s = rxSetup({ mergeable: true });
    // The buffer straddles a page boundary, so the log must show both pages.
    s.ring.writeChain([{ addr: 0x10fc0, len: 1500, writable: true }], 0);
    s.ring.offer(0);
    writeBytes(s.memory, 0x10fc0, new Uint8Array(1500).fill(0xee));
    const log = new Uint8Array(64);
    s.memory.setDirtyLog(log);
    const header = new Uint8Array([1, 0, 0x22, 0x11, 0, 0, 0x33, 0, 0x44, 0, 9, 9]); // NEEDS_CSUM, offsets; num_buffers ignored
    const frame = frameOf(200);
    expect(s.writer.deliver(frame, 0, 100, header)).toBe(1);
    s.queue.flushUsed();
    expect(s.ring.usedEntry(0)).toEqual({ id: 0, len: 112 });
    expect([...readBytes(s.memory, 0x10fc0, 12)]).toEqual([1, 0, 0x22, 0x11, 0, 0, 0x33, 0, 0x44, 0, 1, 0]);
    expect(readBytes(s.memory, 0x10fc0 + 12, 100)).toEqual(frame.subarray(0, 100));
    expect(readBytes(s.memory, 0x10fc0 + 112, 4)).toEqual(new Uint8Array(4).fill(0xee));
    expect([0x10, 0x11].map((page) => ((log[page >> 3]! >> (page & 7)) & 1) === 1)).toEqual([true, true]);
    // No header given: a plain one, all zero but num_buffers.
    s.ring.writeChain([{ addr: 0x20000, len: 100, writable: true }], 1);
    s.ring.offer(1);
    writeBytes(s.memory, 0x20000, new Uint8Array(12).fill(0xee));
    expect(s.writer.deliver(frameOf(60), 0, 60)).toBe(1);
    expect([...readBytes(s.memory, 0x20000, 12)]).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    // The same off a word boundary (the plain header is then written byte by byte), and the
    // bytes around the header and frame stay as they were.
    s.ring.writeChain([{ addr: 0x30003, len: 100, writable: true }], 2);
    s.ring.offer(2);
    writeBytes(s.memory, 0x30000, new Uint8Array(120).fill(0xee));
    expect(s.writer.deliver(frameOf(60), 0, 60)).toBe(1);
    expect([...readBytes(s.memory, 0x30000, 15)]).toEqual([0xee, 0xee, 0xee, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    expect(readBytes(s.memory, 0x30003 + 12, 60)).toEqual(frameOf(60));
    expect([...readBytes(s.memory, 0x30003 + 72, 4)]).toEqual([0xee, 0xee, 0xee, 0xee]);
  });

  it('rolls back when too few buffers are available, consuming nothing (D11)', () => {
    const s = rxSetup({ mergeable: true });
    post(s, 2, 1000);
    expect(s.writer.deliver(frameOf(3000), 0, 3000)).toBe(RX_NO_BUFFERS);
    expect(s.queue.lastAvail).toBe(0);
    expect(s.queue.pendingUsedCount).toBe(0);
    post(s, 2, 1000, 2);
    expect(s.writer.deliver(frameOf(3000), 0, 3000)).toBe(4);
    s.queue.flushUsed();
    expect([0, 1, 2, 3].map((i) => s.ring.usedEntry(i).id)).toEqual([0, 1, 2, 3]);
  });

  it('rolls back a frame that needs more than the per-frame buffer limit', () => {
    const s = rxSetup({ mergeable: true, maxBuffers: 2 });
    post(s, 4, 100);
    expect(s.writer.deliver(frameOf(300), 0, 300)).toBe(RX_NO_BUFFERS);
    expect(s.queue.lastAvail).toBe(0);
    expect(s.writer.deliver(frameOf(150), 0, 150)).toBe(2);
  });

  it('skips a bad first buffer and drops a frame whose later buffer is bad, returning every buffer', () => {
    const s = rxSetup({ mergeable: true });
    s.ring.setDescriptor(0, { addr: 0x10000, len: 8, flags: VRING_DESC_F_WRITE }); // smaller than the header
    s.ring.writeChain([{ addr: 0x11000, len: 600, writable: true }], 1);
    s.ring.setDescriptor(2, { addr: 0x12000, len: 600, flags: VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, next: 2 }); // loop
    s.ring.writeChain([{ addr: 0x13000, len: 600, writable: true }], 3);
    s.ring.offer(0, 1, 2, 3);
    expect(s.writer.deliver(frameOf(1000), 0, 1000)).toBe(RX_DROPPED);
    expect(s.writer.deliver(frameOf(100), 0, 100)).toBe(1);
    s.queue.flushUsed();
    expect([0, 1, 2, 3].map((i) => s.ring.usedEntry(i))).toEqual([
      { id: 0, len: 0 },
      { id: 1, len: 0 },
      { id: 2, len: 0 },
      { id: 3, len: 112 },
    ]);
  });

  it('needs the 12-byte header', () => {
    const s = rxSetup({ mergeable: false, headerLength: 10 });
    expect(() => new NetRxWriter(s.queue, { headerLength: 10, mergeable: true })).toThrow(/12-byte header/);
  });
});

describe('receive with deferred writes', () => {
  const buffer = (i: number): number => 0x10000 + i * 0x800;
  const post = (s: ReturnType<typeof rxSetup>, first: number, count: number): void => {
    for (let i = first; i < first + count; i++) {
      s.ring.writeChain([{ addr: buffer(i), len: 0x800, writable: true }], i);
      writeBytes(s.memory, buffer(i), new Uint8Array(0x800).fill(0xee));
    }
    s.ring.offer(...Array.from({ length: count }, (_, i) => first + i));
  };
  const written = (s: ReturnType<typeof rxSetup>, i: number, length: number): boolean =>
    readNumBuffers(readBytes(s.memory, buffer(i), 12), 0) === 1 && readBytes(s.memory, buffer(i) + 12, length).every((b, k) => b === frameOf(length, i)[k]);

  it('leaves small plain frames to writePending, pushing their used entries at once; writes the rest as they come', () => {
    const s = rxSetup({ mergeable: true, size: 512, deferWrites: true });
    post(s, 0, 8);
    for (let i = 0; i < 3; i++) expect(s.writer.deliver(frameOf(64, i), 0, 64)).toBe(1);
    expect(s.writer.pendingWrites).toBe(3);
    expect(readBytes(s.memory, buffer(0), 76).every((b) => b === 0xee)).toBe(true);
    // A frame over 256 bytes, and one with a header to pass on, are written with their delivery.
    expect(s.writer.deliver(frameOf(300, 3), 0, 300)).toBe(1);
    expect(written(s, 3, 300)).toBe(true);
    const header = new Uint8Array([1, 0, 0x22, 0x11, 0, 0, 0x33, 0, 0x44, 0, 0, 0]);
    expect(s.writer.deliver(frameOf(64, 4), 0, 64, header)).toBe(1);
    expect([...readBytes(s.memory, buffer(4), 12)]).toEqual([1, 0, 0x22, 0x11, 0, 0, 0x33, 0, 0x44, 0, 1, 0]);
    expect(s.writer.pendingWrites).toBe(3);
    s.writer.writePending();
    expect(s.writer.pendingWrites).toBe(0);
    expect([0, 1, 2].map((i) => written(s, i, 64))).toEqual([true, true, true]);
    // Nothing past the frame is touched.
    expect(readBytes(s.memory, buffer(0) + 76, 8).every((b) => b === 0xee)).toBe(true);
    s.queue.flushUsed();
    expect([0, 1, 2, 3, 4].map((i) => s.ring.usedEntry(i))).toEqual([
      { id: 0, len: 76 },
      { id: 1, len: 76 },
      { id: 2, len: 76 },
      { id: 3, len: 312 },
      { id: 4, len: 76 },
    ]);
  });

  it('writes what it kept once 256 frames wait, before keeping the next', () => {
    const s = rxSetup({ mergeable: true, size: 512, deferWrites: true });
    post(s, 0, 257);
    for (let i = 0; i < 256; i++) s.writer.deliver(frameOf(60, i), 0, 60);
    expect(written(s, 0, 60)).toBe(false);
    s.writer.deliver(frameOf(60, 256), 0, 60);
    expect(s.writer.pendingWrites).toBe(1);
    expect(written(s, 0, 60) && written(s, 255, 60)).toBe(true);
    expect(written(s, 256, 60)).toBe(false);
  });

  it('writes at once while pages are logged: a page is marked after it is written', () => {
    const s = rxSetup({ mergeable: true, size: 512, deferWrites: true });
    post(s, 0, 1);
    s.memory.setDirtyLog(new Uint8Array(64));
    expect(s.writer.deliver(frameOf(64, 0), 0, 64)).toBe(1);
    expect(s.writer.pendingWrites).toBe(0);
    expect(written(s, 0, 64)).toBe(true);
  });
});

describe('receive jumbo frames (9014 bytes, 9018 tagged)', () => {
  it('with MRG_RXBUF spreads a 9018-byte frame over five 2 KiB buffers, whole', () => {
    const s = rxSetup({ mergeable: true, size: 16 });
    for (let i = 0; i < 6; i++) s.ring.writeChain([{ addr: 0x10000 + i * 0x1000, len: 2048, writable: true }], i);
    s.ring.offer(0, 1, 2, 3, 4, 5);
    const frame = frameOf(9018, 7);
    expect(s.writer.deliver(frame, 0, 9018)).toBe(5);
    s.queue.flushUsed();
    expect([0, 1, 2, 3, 4].map((i) => s.ring.usedEntry(i).len)).toEqual([2048, 2048, 2048, 2048, 9030 - 4 * 2048]);
    expect(readNumBuffers(readBytes(s.memory, 0x10000, 12), 0)).toBe(5);
    const got = new Uint8Array(9018);
    got.set(readBytes(s.memory, 0x10000 + 12, 2036), 0);
    for (let i = 1; i < 5; i++) got.set(readBytes(s.memory, 0x10000 + i * 0x1000, Math.min(2048, 9018 - 2036 - (i - 1) * 2048)), 2036 + (i - 1) * 2048);
    expect(got).toEqual(frame);
  });

  it('without MRG_RXBUF fills a big-packet chain, and drops a frame one buffer too small instead of cutting it', () => {
    const s = rxSetup({ mergeable: false, size: 8 });
    // Linux's big-packet receive chain: the header, then pages.
    s.ring.writeChain([{ addr: 0x20000, len: 12, writable: true }, { addr: 0x21000, len: 4096, writable: true }, { addr: 0x22000, len: 4096, writable: true }, { addr: 0x23000, len: 4096, writable: true }], 0);
    // A chain with room for 9013 bytes of frame: one byte short of 9014.
    s.ring.writeChain([{ addr: 0x30000, len: 12 + 9013, writable: true }], 4);
    s.ring.offer(0, 4);
    const frame = frameOf(9014, 3);
    expect(s.writer.deliver(frame, 0, 9014)).toBe(1);
    expect(s.writer.deliver(frame, 0, 9014)).toBe(RX_DROPPED);
    s.queue.flushUsed();
    expect(s.ring.usedEntry(0)).toEqual({ id: 0, len: 12 + 9014 });
    expect(new Uint8Array([...readBytes(s.memory, 0x21000, 4096), ...readBytes(s.memory, 0x22000, 4096), ...readBytes(s.memory, 0x23000, 822)])).toEqual(frame);
    expect(s.ring.usedEntry(1)).toEqual({ id: 4, len: 0 });
  });
});

// VIRTIO_F_IN_ORDER is offered, so every receive buffer must come back in the order it was made
// available, whatever happens to the frames: delivered, spread over several buffers, dropped for a
// bad buffer, or held back (no used entry) for lack of buffers. DPDK's in-order receive path
// finds its buffers by used-ring position, not by id.
describe('receive buffers are used in the order they were made available (IN_ORDER)', () => {
  for (const mergeable of [true, false]) {
    it(`holds over seeded random frames and buffers, ${mergeable ? 'with' : 'without'} MRG_RXBUF`, () => {
      const seed = 20261204 + (mergeable ? 1 : 0);
      const random = rng(seed);
      const size = 64;
      const s = rxSetup({ mergeable, size, maxBuffers: mergeable ? 8 : undefined });
      const offered: number[] = [];
      let used = 0;
      const free = Array.from({ length: size }, (_, i) => i);
      for (let round = 0; round < 400; round++) {
        // The driver offers free descriptors in a scrambled order; some are too small or looped.
        while (free.length > 0 && random() < 0.8) {
          const head = free.splice(Math.floor(random() * free.length), 1)[0];
          const kind = random();
          if (kind < 0.05) s.ring.setDescriptor(head, { addr: 0x10000 + head * 0x1000, len: 8, flags: VRING_DESC_F_WRITE });
          else if (kind < 0.08) s.ring.setDescriptor(head, { addr: 0x10000 + head * 0x1000, len: 600, flags: VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, next: head });
          else s.ring.writeChain([{ addr: 0x10000 + head * 0x1000, len: 64 + Math.floor(random() * 1500), writable: true }], head);
          s.ring.offer(head);
          offered.push(head);
        }
        const frames = Math.floor(random() * 6);
        for (let f = 0; f < frames; f++) {
          const length = 14 + Math.floor(random() * 3000);
          const r = s.writer.deliver(frameOf(length, round), 0, length);
          expect(r === RX_NO_BUFFERS || r === RX_DROPPED || r > 0, `seed ${seed} round ${round}`).toBe(true);
        }
        s.queue.flushUsed();
        // Every used entry so far names the buffer offered at the same position.
        const idx = s.ring.usedIdx();
        for (; used < idx; used++) {
          const id = s.ring.usedEntry(used % size).id;
          expect(id, `seed ${seed}: used entry ${used}`).toBe(offered[used]);
          free.push(id);
        }
      }
      expect(used).toBeGreaterThan(200);
    });
  }
});
