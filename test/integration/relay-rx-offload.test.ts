// Guest receive offloads without a worker thread: a peer in a namespace sends through its veth end
// with PACKET_VNET_HDR, so the kernel builds real GSO super-frames (20,000 bytes of TCP behind one
// set of headers, segment size 1448) and frames with their checksum left to complete, exactly as
// a local stack's TSO or a VF's GRO hands them over. The relay's VF end reads them with the
// kernel's virtio_net_hdr (PACKET_VNET_HDR on the RX ring) into a guest RX ring in shared memory:
// - a guest with GUEST_CSUM and GUEST_TSO4/6 gets the super-frame whole, with the kernel's
//   header (NEEDS_CSUM, GSO type, segment size, checksum start moved past a VLAN tag put back);
// - a guest without them gets TCP segments of at most 1448 bytes, each with complete checksums
//   (checked here independently), that reassemble to the payload, in mergeable buffers or in
//   the 1526-byte buffers of a guest without MRG_RXBUF.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Counter } from '../../relay/datapath/counters.js';
import { RX_CSUM, RX_ECN, RX_TSO4, RX_TSO6 } from '../../relay/datapath/rx-offload.js';
import { createNetns, createVethPair, deleteLink, deleteNetns, requireRoot, uniqueTag } from '../support/netns.js';
import { sleep, waitFor } from '../support/processes.js';
import { openTxRig, type TxRig } from '../support/tx-direction.js';
import { rxDirection, type ReceivedFrame, type RxDirection } from '../support/rx-direction.js';
import { segmentProblems, sendSuperFrames, superFrame, type SuperFrame } from '../support/tcp-frames.js';

const ready = requireRoot();
const tag = uniqueTag();
const ns = `rxns${tag}`;
const vf = `rxo${tag}`;
const peer = `rxp${tag}`;
const MSS = 1448;
/** IPv6 headers are 20 bytes longer: the segment size that keeps a frame within a 1500-byte MTU. */
const MSS6 = 1428;
const mssOf = (f: SuperFrame) => (f.v6 ? MSS6 : MSS);
const ALL = RX_CSUM | RX_TSO4 | RX_TSO6 | RX_ECN;

let rig: TxRig;

interface Sent {
  frame: SuperFrame;
  gso: boolean;
}

/** Sends each frame from the peer: with a TSO request (segments of MSS) or a checksum request only. */
function send(frames: Sent[]): void {
  sendSuperFrames(ns, peer, frames.map(({ frame, gso }) => ({ frame, mss: gso ? mssOf(frame) : 0 })));
}

/** Runs bursts until `count` frames arrived in the guest or two seconds passed. */
async function receive(g: RxDirection, count: number): Promise<ReceivedFrame[]> {
  const out: ReceivedFrame[] = [];
  const until = Date.now() + 2000;
  while (out.length < count && Date.now() < until) {
    g.d.burst();
    out.push(...g.received());
    if (out.length < count) await sleep(5);
  }
  g.d.burst();
  out.push(...g.received());
  return out;
}

const u16 = (h: Uint8Array, at: number) => h[at] | (h[at + 1] << 8);
const payloadOf = (n: number, salt: number) => Uint8Array.from({ length: n }, (_, i) => (i * 7 + salt) & 0xff);

/** The frame as the guest must see it, but for the TCP checksum (left for the guest to complete). */
function sameButChecksum(got: Uint8Array, sent: SuperFrame): boolean {
  if (got.length !== sent.bytes.length) return false;
  const check = sent.l4 + 16;
  for (let i = 0; i < got.length; i++) if ((i < check || i > check + 1) && got[i] !== sent.bytes[i]) return false;
  return true;
}

describe.skipIf(!ready)('guest receive offloads from an RX ring with PACKET_VNET_HDR', () => {
  beforeAll(() => {
    createNetns(ns);
    createVethPair(vf, peer, { nsB: ns, noIpv6: true });
    // Blocks large enough for a 64 KiB super-frame, as the relay opens its VF rings.
    rig = openTxRig(vf, { receiveVnetHeader: true, blockSize: 128 * 1024, blockCount: 8 }, 8 << 20);
  });

  afterAll(() => {
    rig?.close();
    deleteLink(vf);
    deleteNetns(ns);
  });

  it('a guest with GUEST_CSUM and GUEST_TSO4/6 gets the super-frame whole with the kernel header', async () => {
    const g = rxDirection(rig, 5, { rxOffloads: ALL, mergeable: true });
    g.postMergeable(128, 4096);
    const big = superFrame({ payload: payloadOf(20_000, 1) });
    const small = superFrame({ payload: payloadOf(300, 2) });
    const tagged = superFrame({ payload: payloadOf(9_000, 3), vlan: true });
    send([{ frame: big, gso: true }, { frame: small, gso: false }, { frame: tagged, gso: true }]);
    const got = await receive(g, 3);
    expect(got.length).toBe(3);
    // flags NEEDS_CSUM, GSO_TCPV4, segment size, checksum from the TCP header on.
    expect([got[0].header[0], got[0].header[1], u16(got[0].header, 4), u16(got[0].header, 6), u16(got[0].header, 8)]).toEqual([1, 1, MSS, 34, 16]);
    expect(sameButChecksum(got[0].frame, big)).toBe(true);
    expect([got[1].header[0], got[1].header[1], got[1].header[6], got[1].header[8]]).toEqual([1, 0, 34, 16]);
    expect(sameButChecksum(got[1].frame, small)).toBe(true);
    // The kernel took the tag out; the relay put it back, and the checksum start moved with it.
    expect([got[2].header[0], got[2].header[1], u16(got[2].header, 6)]).toEqual([1, 1, 38]);
    expect(sameButChecksum(got[2].frame, tagged)).toBe(true);
    expect(g.counter(Counter.RxSegmented)).toBe(0);
    expect(g.counter(Counter.Packets)).toBe(3);
    expect(g.counter(Counter.DropsBadFrame) + g.counter(Counter.DropsQueueFull)).toBe(0);
  });

  it('a guest without receive offloads gets complete segments of at most the MSS, in mergeable buffers', async () => {
    const g = rxDirection(rig, 6, { rxOffloads: 0, mergeable: true });
    g.postMergeable(128, 2048);
    const big = superFrame({ payload: payloadOf(20_000, 4), flags: 0x19 });
    const v6 = superFrame({ payload: payloadOf(5_000, 5), v6: true });
    const small = superFrame({ payload: payloadOf(300, 6) });
    send([{ frame: big, gso: true }, { frame: v6, gso: true }, { frame: small, gso: false }]);
    const bigCount = Math.ceil(20_000 / MSS);
    const v6Count = Math.ceil(5_000 / MSS6);
    const got = await receive(g, bigCount + v6Count + 1);
    expect(got.length).toBe(bigCount + v6Count + 1);
    const check = (frames: ReceivedFrame[], sent: SuperFrame, payload: number, label: string) => {
      for (const [i, f] of frames.entries()) {
        expect([...f.header.subarray(0, 10)], `${label} ${i}: a plain header`).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        expect(f.frame.length, `${label} ${i}`).toBeLessThanOrEqual(sent.headers + mssOf(sent));
        expect(segmentProblems(sent, { bytes: f.frame }), `${label} ${i}`).toEqual([]);
      }
      const joined = Buffer.concat(frames.map((f) => f.frame.subarray(sent.headers)));
      expect(joined.equals(Buffer.from(sent.bytes.subarray(sent.headers))), label).toBe(true);
      expect(joined.length).toBe(payload);
    };
    check(got.slice(0, bigCount), big, 20_000, 'IPv4 segment');
    // FIN and PSH stay on the last segment only.
    expect(got.slice(0, bigCount).map((f) => f.frame[big.l4 + 13])).toEqual([...Array(bigCount - 1).fill(0x10), 0x19]);
    check(got.slice(bigCount, bigCount + v6Count), v6, 5_000, 'IPv6 segment');
    // The lone frame's checksum, left by its sender, is complete.
    check(got.slice(-1), small, 300, 'small frame');
    expect(g.counter(Counter.RxSegmented)).toBe(2);
    expect(g.counter(Counter.RxPackets)).toBe(3);
    expect(g.counter(Counter.Packets)).toBe(bigCount + v6Count + 1);
  });

  it('a guest with TSO4 only and no MRG_RXBUF gets the IPv6 super-frame cut into its 1526-byte buffers, the IPv4 one whole', async () => {
    const g = rxDirection(rig, 7, { rxOffloads: RX_CSUM | RX_TSO4, mergeable: false });
    // Exactly the small chains the segments need, then big ones (Linux posts those with GUEST_TSO).
    g.postChains(3, [1526]);
    const v6 = superFrame({ payload: payloadOf(4_000, 7), v6: true });
    send([{ frame: v6, gso: true }]);
    const got = await receive(g, 3);
    expect(got.length).toBe(3);
    for (const f of got) expect(segmentProblems(v6, { bytes: f.frame })).toEqual([]);
    expect(Buffer.concat(got.map((f) => f.frame.subarray(v6.headers))).equals(Buffer.from(v6.bytes.subarray(v6.headers)))).toBe(true);
    g.postChains(2, [12 + 54, 4096, 4096, 4096, 4096]);
    const v4 = superFrame({ payload: payloadOf(12_000, 8) });
    send([{ frame: v4, gso: true }]);
    const whole = await receive(g, 1);
    expect(whole.length).toBe(1);
    expect([whole[0].header[0], whole[0].header[1]]).toEqual([1, 1]);
    expect(sameButChecksum(whole[0].frame, v4)).toBe(true);
    expect(g.counter(Counter.RxSegmented)).toBe(1);
  });

  it('a burst takes no frame once the guest buffers are used up: the next super-frame waits in the VF ring', async () => {
    const g = rxDirection(rig, 9, { rxOffloads: 0, mergeable: true });
    const n = Math.ceil(20_000 / MSS);
    g.postMergeable(n, 2048);
    const first = superFrame({ payload: payloadOf(20_000, 10) });
    const second = superFrame({ payload: payloadOf(20_000, 11) });
    send([{ frame: first, gso: true }, { frame: second, gso: true }]);
    const a = await receive(g, n);
    expect(a.length).toBe(n);
    expect(Buffer.concat(a.map((f) => f.frame.subarray(first.headers))).equals(Buffer.from(first.bytes.subarray(first.headers)))).toBe(true);
    expect(g.counter(Counter.RxPackets)).toBe(1);
    g.postMergeable(n, 2048);
    const b = await receive(g, n);
    expect(b.length).toBe(n);
    expect(Buffer.concat(b.map((f) => f.frame.subarray(second.headers))).equals(Buffer.from(second.bytes.subarray(second.headers)))).toBe(true);
    expect(g.counter(Counter.DropsQueueFull)).toBe(0);
    expect(g.counter(Counter.RxSegmented)).toBe(2);
  });

  it('a super-frame waits in the VF ring while the guest has fewer buffers than it has segments', async () => {
    const g = rxDirection(rig, 10, { rxOffloads: 0, mergeable: true });
    const n = Math.ceil(20_000 / MSS);
    g.postMergeable(5, 2048);
    const frame = superFrame({ payload: payloadOf(20_000, 12) });
    send([{ frame, gso: true }]);
    // The frame is there, but 5 buffers cannot take its 14 segments: the burst leaves it.
    await waitFor(() => g.d.hasWork(), 2000, 'the frame to reach the VF ring');
    expect(g.d.burst()).toBe(0);
    expect(g.received()).toEqual([]);
    g.postMergeable(n - 5, 2048);
    const got = await receive(g, n);
    expect(got.length).toBe(n);
    expect(Buffer.concat(got.map((f) => f.frame.subarray(frame.headers))).equals(Buffer.from(frame.bytes.subarray(frame.headers)))).toBe(true);
    expect(g.counter(Counter.DropsQueueFull)).toBe(0);
  });

  it('a guest short of buffers that stops refilling gets what fits after a short wait, the rest counted as drops', async () => {
    const g = rxDirection(rig, 8, { rxOffloads: 0, mergeable: true });
    g.postMergeable(4, 2048);
    send([{ frame: superFrame({ payload: payloadOf(20_000, 9) }), gso: true }]);
    const got = await receive(g, 4);
    await sleep(50);
    g.d.burst();
    got.push(...g.received());
    expect(got.length).toBe(4);
    expect(g.counter(Counter.DropsQueueFull)).toBe(Math.ceil(20_000 / MSS) - 4);
    expect(g.counter(Counter.RxPackets)).toBe(1);
  });
});
