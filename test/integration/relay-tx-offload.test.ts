// Guest transmit offloads (VIRTIOFWD_TSO) without a worker thread: a guest TX ring in shared memory,
// a VmToVf direction, and a veth (MTU 1500) whose send socket takes a virtio_net_hdr per frame
// (PACKET_VNET_HDR). A guest that negotiated the offloads gets its header to the kernel: a 9000-byte
// TCP segment leaves whole for the kernel to cut up. A header the kernel refuses costs that frame
// only. A guest that did not negotiate them sends with an empty header, whatever its own says, so
// the same segment is too long for the link and is dropped as a bad frame.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAP_SHARED, PROT_READ, PROT_WRITE, ftruncate, memfdCreate, mmap, munmap, type Mapping } from '../../sys/memory.js';
import { close } from '../../sys/fd.js';
import { closePacketRing, openPacketRing, type PacketRingHandle } from '../../sys/packet-ring.js';
import { GuestMemory } from '../../virtio/guest-memory.js';
import { SplitQueueDriver } from '../../virtio/split-queue-driver.js';
import { VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, writeNetHeader } from '../../virtio/net-header.js';
import { VmToVf } from '../../relay/datapath/directions.js';
import { Counter, counterBase, createCounterBuffer, Dir } from '../../relay/datapath/counters.js';
import type { DirectionSpec } from '../../relay/datapath/worker-protocol.js';
import { createNetns, createVethPair, deleteLink, deleteNetns, linkCounter, requireRoot, uniqueTag } from '../support/netns.js';
import { sleep } from '../support/processes.js';

const SIZE = 1 << 20;
const QSIZE = 16;
const HDR = 12;
const BUFFERS_AT = 0x10000;
const ready = requireRoot();
const tag = uniqueTag();
const ns = `txns${tag}`;
const vf = `txo${tag}`;
const peer = `txp${tag}`;

let memFd: number;
let mem: Mapping;
let handle: PacketRingHandle;
let memoryIds = 7000 + Number(tag);

/** An Ethernet + IPv4 + TCP frame of `length` bytes to the peer's MAC-less broadcast, payload counted up. */
function tcpFrame(length: number): Uint8Array {
  const f = new Uint8Array(length);
  f.fill(0xff, 0, 6);
  f.set([0x02, 0, 0, 0, 0x4b, 0x01, 0x08, 0x00], 6);
  const ip = 14;
  f.set([0x45, 0, (length - ip) >> 8, (length - ip) & 0xff, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 70, 0, 2, 10, 70, 0, 1], ip);
  const tcp = ip + 20;
  f.set([0x9c, 0x40, 0x13, 0x89, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0], tcp);
  for (let i = tcp + 20; i < length; i++) f[i] = i & 0xff;
  return f;
}

/** A TSO request for `frame`: checksum from the TCP header on, segments of 1448 bytes. */
function tsoHeader(overrides: { gsoType?: number; csumStart?: number } = {}): Uint8Array {
  const h = new Uint8Array(HDR);
  writeNetHeader(h, 0, HDR, {
    flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
    gsoType: overrides.gsoType ?? VIRTIO_NET_HDR_GSO_TCPV4,
    hdrLen: 54,
    gsoSize: 1448,
    csumStart: overrides.csumStart ?? 34,
    csumOffset: 16,
    numBuffers: 0,
  });
  return h;
}

function direction(hostOffloads: boolean) {
  const memory = new GuestMemory([{ guestPhysAddr: 0, size: SIZE, userAddr: mem.address, bytes: new Uint8Array(mem.buffer) }]);
  const l = SplitQueueDriver.layout(0, QSIZE);
  const driver = new SplitQueueDriver({ memory, size: QSIZE, descGpa: l.descGpa, availGpa: l.availGpa, usedGpa: l.usedGpa, name: 'tx' });
  const spec: DirectionSpec = {
    relay: 4,
    dir: 'vm2vf',
    vmConnected: true,
    port: { mode: 'single', active: 0, members: [{ netdev: vf, handle, up: true }] },
    guest: {
      memoryId: memoryIds++,
      regions: [{ guestPhysAddr: 0, userAddr: mem.address, size: SIZE, hostAddress: mem.address }],
      hostOffloads,
      eventIdx: false,
      indirect: false,
      mergeable: false,
      hdrLen: HDR,
      queues: [{ index: 1, size: QSIZE, desc: { region: 0, offset: l.descGpa }, avail: { region: 0, offset: l.availGpa }, used: { region: 0, offset: l.usedGpa }, callFd: -1, kickFd: -1, enabled: true }],
    },
  };
  const counters = new Float64Array(createCounterBuffer());
  const d = new VmToVf(spec, null, counters, (q, m) => {
    throw new Error(`ring ${q} stopped: ${m}`);
  });
  const bytes = new Uint8Array(mem.buffer);
  let next = 0;
  /** Posts header and frame as the guest does: the header in its own descriptor, the frame split in two. */
  const post = (header: Uint8Array, f: Uint8Array) => {
    const at = BUFFERS_AT + next++ * 0x4000;
    bytes.set(header, at);
    bytes.set(f, at + HDR);
    const first = Math.min(f.length, 3000);
    const parts = [{ gpa: at, len: HDR, writable: false }, { gpa: at + HDR, len: first, writable: false }];
    if (f.length > first) parts.push({ gpa: at + HDR + first, len: f.length - first, writable: false });
    driver.addBuffers(parts);
  };
  const base = counterBase(4, Dir.VmToVf);
  const counter = (c: Counter) => counters[base + c];
  return { d, driver, post, counter, usedIdx: () => Atomics.load(new Uint16Array(mem.buffer, l.usedGpa, 2), 1) };
}

describe.skipIf(!ready)('guest transmit offloads through a send socket with PACKET_VNET_HDR', () => {
  beforeAll(() => {
    createNetns(ns);
    createVethPair(vf, peer, { nsB: ns, noIpv6: true });
    memFd = memfdCreate('tx-offload');
    ftruncate(memFd, SIZE);
    mem = mmap({ length: SIZE, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED, fd: memFd });
    handle = openPacketRing(vf, { blockSize: 32 * 1024, blockCount: 8, sendVnetHeader: true });
  });

  afterAll(() => {
    if (handle) closePacketRing(handle);
    if (mem) munmap(mem);
    if (memFd) close(memFd);
    deleteLink(vf);
    deleteNetns(ns);
  });

  it('a guest with offloads: a 9000-byte TCP segment leaves whole, a header the kernel refuses costs only its frame', async () => {
    expect(handle.sendVnetHeader).toBe(true);
    const g = direction(true);
    const big = tcpFrame(9000);
    g.post(tsoHeader(), big);
    // An unknown GSO type and a checksum start past the frame: the kernel refuses both.
    g.post(tsoHeader({ gsoType: 0x42 }), tcpFrame(2000));
    g.post(tsoHeader({ gsoType: 0, csumStart: 1990 }), tcpFrame(1000));
    const small = tcpFrame(1000);
    g.post(new Uint8Array(HDR), small);
    g.driver.publish();
    const bytesBefore = linkCounter(peer, 'rx_bytes', ns);
    expect(g.d.burst()).toBe(4);
    await sleep(200);
    expect(g.counter(Counter.RxPackets)).toBe(4);
    expect(g.counter(Counter.Packets)).toBe(2);
    // The relay counts frame bytes, not the 10-byte headers it put before them.
    expect(g.counter(Counter.Bytes)).toBe(9000 + 1000);
    expect(g.counter(Counter.DropsQueueFull) + g.counter(Counter.DropsBadFrame)).toBe(2);
    // Whole or cut into segments with their own headers, at least every byte of both arrived.
    expect(linkCounter(peer, 'rx_bytes', ns) - bytesBefore).toBeGreaterThanOrEqual(9000 + 1000);
    expect(g.usedIdx()).toBe(4);
    g.d.release();
  });

  it('a guest without offloads: its header is not passed on, so the 9000-byte segment is a bad frame', async () => {
    const g = direction(false);
    g.post(tsoHeader(), tcpFrame(9000));
    g.post(tsoHeader(), tcpFrame(1000));
    g.driver.publish();
    const packetsBefore = linkCounter(peer, 'rx_packets', ns);
    expect(g.d.burst()).toBe(2);
    await sleep(200);
    expect(g.counter(Counter.Packets)).toBe(1);
    expect(g.counter(Counter.Bytes)).toBe(1000);
    expect(g.counter(Counter.DropsBadFrame)).toBe(1);
    expect(linkCounter(peer, 'rx_packets', ns) - packetsBefore).toBe(1);
    g.d.release();
  });
});
