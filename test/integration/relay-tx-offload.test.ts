// Guest transmit offloads (VIRTIOFWD_TSO) without a worker thread: a guest TX ring in shared memory,
// a VmToVf direction, and a veth (MTU 1500) whose send socket takes a virtio_net_hdr per frame
// (PACKET_VNET_HDR). A guest that negotiated the offloads gets its header to the kernel: a 9000-byte
// TCP segment leaves whole for the kernel to cut up. A header the kernel refuses costs that frame
// only. A guest that did not negotiate them sends with an empty header, whatever its own says, so
// the same segment is too long for the link and is dropped as a bad frame.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, writeNetHeader } from '../../virtio/net-header.js';
import { Counter } from '../../relay/datapath/counters.js';
import { createNetns, createVethPair, deleteLink, deleteNetns, linkCounter, requireRoot, uniqueTag } from '../support/netns.js';
import { sleep } from '../support/processes.js';
import { TX_HDR as HDR, openTxRig, txDirection, type TxRig } from '../support/tx-direction.js';
import { randomOffloadRequest, rng } from '../support/hostile-frontend.js';

const ready = requireRoot();
const tag = uniqueTag();
const ns = `txns${tag}`;
const vf = `txo${tag}`;
const peer = `txp${tag}`;

let rig: TxRig;

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

describe.skipIf(!ready)('guest transmit offloads through a send socket with PACKET_VNET_HDR', () => {
  beforeAll(() => {
    createNetns(ns);
    createVethPair(vf, peer, { nsB: ns, noIpv6: true });
    rig = openTxRig(vf, { sendVnetHeader: true });
  });

  afterAll(() => {
    rig?.close();
    deleteLink(vf);
    deleteNetns(ns);
  });

  it('a guest with offloads: a 9000-byte TCP segment leaves whole, a header the kernel refuses costs only its frame', async () => {
    expect('sendVnetHeader' in rig.handle && rig.handle.sendVnetHeader).toBe(true);
    const g = txDirection(rig, 4, { hostOffloads: true });
    const big = tcpFrame(9000);
    g.post(tsoHeader(), big);
    // An unknown GSO type and a checksum start past the frame: the kernel refuses both.
    g.post(tsoHeader({ gsoType: 0x42 }), tcpFrame(2000));
    g.post(tsoHeader({ gsoType: 0, csumStart: 1990 }), tcpFrame(1000));
    const small = tcpFrame(1000);
    g.post(new Uint8Array(HDR), small);
    g.publish();
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
    const g = txDirection(rig, 4);
    g.post(tsoHeader(), tcpFrame(9000));
    g.post(tsoHeader(), tcpFrame(1000));
    g.publish();
    const packetsBefore = linkCounter(peer, 'rx_packets', ns);
    expect(g.d.burst()).toBe(2);
    await sleep(200);
    expect(g.counter(Counter.Packets)).toBe(1);
    expect(g.counter(Counter.Bytes)).toBe(1000);
    expect(g.counter(Counter.DropsBadFrame)).toBe(1);
    expect(linkCounter(peer, 'rx_packets', ns) - packetsBefore).toBe(1);
    g.d.release();
  });

  // A guest that negotiated the offloads hands the kernel whatever header it likes: random flags,
  // GSO types, sizes and checksum offsets over random frames. The kernel takes or refuses each
  // one; the relay must account for every frame and keep sending the good ones.
  const seed = Number(process.env.VIO4WD_OFFLOAD_SEED ?? Math.floor(Math.random() * 2 ** 31));
  it(`survives seeded random headers (VIO4WD_OFFLOAD_SEED=${seed})`, async () => {
    const r = rng(seed);
    const g = txDirection(rig, 4, { hostOffloads: true });
    let posted = 0;
    for (let round = 0; round < 40; round++) {
      for (let k = 0; k < 4; k++) {
        const { header: h, length } = randomOffloadRequest(r, HDR);
        g.post(h, length >= 54 ? tcpFrame(length) : new Uint8Array(length).fill(0xff, 0, 6));
        posted++;
      }
      // A good frame at the end of every burst must always leave.
      g.post(new Uint8Array(HDR), tcpFrame(600));
      posted++;
      g.publish();
      const sentBefore = g.counter(Counter.Packets);
      expect(g.d.burst(), `seed ${seed} round ${round}`).toBe(5);
      expect(g.reclaim()).toBe(5);
      expect(g.counter(Counter.Packets) - sentBefore, `seed ${seed} round ${round}: the good frame`).toBeGreaterThanOrEqual(1);
    }
    // Every frame is sent or counted as dropped, none twice; every chain went back to the guest.
    const dropped = g.counter(Counter.DropsBadFrame) + g.counter(Counter.DropsQueueFull) + g.counter(Counter.DropsNotConnected);
    expect(g.counter(Counter.RxPackets)).toBe(posted);
    expect(g.counter(Counter.Packets) + dropped, `seed ${seed}`).toBe(posted);
    expect(g.usedIdx()).toBe(posted % 65536);
    g.d.release();
  });
});
