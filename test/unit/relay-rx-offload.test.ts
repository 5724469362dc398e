// Receive offloads in the relay over in-memory frames: what a guest gets for each kind of header
// the VF's kernel writes (rxAction), and the TCP segmentation done for guests without GUEST_TSO.
// The segments are checked with a checksum written here, not with the relay's, and against the
// invariants a receiving TCP relies on. Random cases are seeded (VIO4WD_SEGMENT_SEED replays one).
import { describe, expect, it } from 'vitest';
import { TcpSegmenter } from '../../relay/datapath/segmentation.js';
import {
  RX_CHECKSUM, RX_CSUM, RX_ECN, RX_PASS, RX_PLAIN, RX_REFUSE, RX_SEGMENT, RX_TSO4, RX_TSO6, guestRxOffloads, rxAction,
} from '../../relay/datapath/rx-offload.js';
import { rng } from '../support/hostile-frontend.js';
import { segmentProblems as problems, superFrame, type SuperFrame as Frame } from '../support/tcp-frames.js';

interface Segment {
  bytes: Uint8Array;
  seq: number;
  flags: number;
  payload: Uint8Array;
}

function segmentAll(frame: Frame, mss: number, segmenter = new TcpSegmenter()): { refusal: string | null; segments: Segment[] } {
  const segments: Segment[] = [];
  const refusal = segmenter.segment(frame.bytes, 0, frame.bytes.length, mss, (b, o, l) => {
    const bytes = b.slice(o, o + l);
    const l4 = frame.l4;
    const seq = ((bytes[l4 + 4] << 24) | (bytes[l4 + 5] << 16) | (bytes[l4 + 6] << 8) | bytes[l4 + 7]) >>> 0;
    segments.push({ bytes, seq, flags: bytes[l4 + 13], payload: bytes.slice(frame.headers) });
  });
  return { refusal, segments };
}

describe('TCP segmentation for guests without GUEST_TSO', () => {
  it('cuts an IPv4 super-frame into MSS-sized segments that reassemble to the payload, every checksum right', () => {
    const payload = Uint8Array.from({ length: 10_000 }, (_, i) => (i * 31 + 7) & 0xff);
    const frame = superFrame({ payload, flags: 0x19 /* FIN PSH ACK */, id: 0xffff });
    const { refusal, segments } = segmentAll(frame, 1448);
    expect(refusal).toBeNull();
    expect(segments.map((s) => s.payload.length)).toEqual([1448, 1448, 1448, 1448, 1448, 1448, 1312]);
    expect(Buffer.concat(segments.map((s) => s.payload)).equals(Buffer.from(payload))).toBe(true);
    segments.forEach((s, i) => {
      expect(problems(frame, s), `segment ${i}`).toEqual([]);
      expect(s.seq).toBe((0xfffff000 + i * 1448) >>> 0); // the sequence number wraps past 2^32
      // IPv4 ids count on from the super-frame's, wrapping at 16 bits.
      expect((s.bytes[frame.l3 + 4] << 8) | s.bytes[frame.l3 + 5]).toBe((0xffff + i) & 0xffff);
      expect(s.flags, `segment ${i}`).toBe(i === segments.length - 1 ? 0x19 : 0x10);
      // Everything outside lengths, id, checksums, sequence and flags is the super-frame's.
      expect(Buffer.from(s.bytes.subarray(0, frame.l3 + 2)).equals(Buffer.from(frame.bytes.subarray(0, frame.l3 + 2)))).toBe(true);
    });
  });

  it('keeps CWR on the first segment only, and options and a VLAN tag in every segment', () => {
    const payload = new Uint8Array(3000).fill(0x5a);
    const frame = superFrame({ payload, vlan: true, tcpOptions: 12, ipOptions: 8, flags: 0x90 /* CWR ACK */ });
    const { refusal, segments } = segmentAll(frame, 1000);
    expect(refusal).toBeNull();
    expect(segments.map((s) => s.flags)).toEqual([0x90, 0x10, 0x10]);
    for (const s of segments) {
      expect(problems(frame, s)).toEqual([]);
      expect([...s.bytes.subarray(12, 16)]).toEqual([0x81, 0x00, 0x00, 0x2a]);
    }
  });

  it('handles IPv6, and a frame of no payload or less than one MSS as one segment', () => {
    for (const size of [0, 1, 1440, 1441, 65_000]) {
      const frame = superFrame({ v6: true, payload: Uint8Array.from({ length: size }, (_, i) => i & 0xff) });
      const { refusal, segments } = segmentAll(frame, 1440);
      expect(refusal, `payload ${size}`).toBeNull();
      expect(segments.length, `payload ${size}`).toBe(Math.max(1, Math.ceil(size / 1440)));
      for (const s of segments) expect(problems(frame, s), `payload ${size}`).toEqual([]);
      expect(segments.reduce((n, s) => n + s.payload.length, 0)).toBe(size);
    }
  });

  it('refuses what it cannot cut, and emits nothing then', () => {
    const good = () => superFrame({ payload: new Uint8Array(3000) });
    const cases: Array<[string, (f: Frame) => void, number?]> = [
      ['UDP', (f) => (f.bytes[f.l3 + 9] = 17)],
      ['IPv4 total length disagrees', (f) => (f.bytes[f.l3 + 3] ^= 4)],
      ['TCP data offset past the frame', (f) => (f.bytes[f.l4 + 12] = 0xf0), 0],
      ['TCP data offset below 20', (f) => (f.bytes[f.l4 + 12] = 0x40)],
      ['not IP', (f) => (f.bytes[12] = 0x88)],
      ['IPv4 version field', (f) => (f.bytes[f.l3] = 0x65)],
    ];
    for (const [what, spoil, cut] of cases) {
      const f = good();
      spoil(f);
      const bytes = cut === undefined ? f.bytes : f.bytes.subarray(0, f.l4 + 30);
      let emitted = 0;
      const r = new TcpSegmenter().segment(bytes, 0, bytes.length, 1000, () => emitted++);
      expect(r, what).not.toBeNull();
      expect(emitted, what).toBe(0);
    }
    const f = good();
    for (const mss of [0, -1, 1.5, 70_000]) expect(new TcpSegmenter().segment(f.bytes, 0, f.bytes.length, mss, () => {})).toMatch(/segment size/);
    const v6 = superFrame({ v6: true, payload: new Uint8Array(100) });
    v6.bytes[v6.l3 + 6] = 0; // a hop-by-hop extension header
    expect(new TcpSegmenter().segment(v6.bytes, 0, v6.bytes.length, 50, () => {})).toMatch(/not TCP/);
    expect(new TcpSegmenter().segment(new Uint8Array(10), 0, 10, 50, () => {})).toMatch(/Ethernet/);
  });

  it('refuses, emitting nothing, segments longer than the link takes; a tagged frame may be 4 bytes longer', () => {
    const plain = superFrame({ payload: new Uint8Array(4000) }); // 54 bytes of headers
    const tagged = superFrame({ vlan: true, payload: new Uint8Array(4000) }); // 58
    let emitted = 0;
    const count = () => emitted++;
    expect(new TcpSegmenter().segment(plain.bytes, 0, plain.bytes.length, 1461, count, 1514)).toMatch(/segments of 1515 bytes are longer than the link takes/);
    expect(new TcpSegmenter().segment(tagged.bytes, 0, tagged.bytes.length, 1461, count, 1514)).toMatch(/1519 bytes/);
    expect(emitted).toBe(0);
    expect(new TcpSegmenter().segment(plain.bytes, 0, plain.bytes.length, 1460, count, 1514)).toBeNull();
    expect(new TcpSegmenter().segment(tagged.bytes, 0, tagged.bytes.length, 1460, count, 1514)).toBeNull();
    expect(emitted).toBe(2 * Math.ceil(4000 / 1460));
  });

  it(`random super-frames (seed ${process.env.VIO4WD_SEGMENT_SEED ?? 4242}) all reassemble and verify`, () => {
    const seed = Number(process.env.VIO4WD_SEGMENT_SEED ?? 4242);
    const rand = rng(seed);
    const segmenter = new TcpSegmenter(); // one segmenter reused, as a relay direction does
    for (let c = 0; c < 200; c++) {
      const size = Math.floor(rand() * 65_000);
      const payload = Uint8Array.from({ length: size }, () => Math.floor(rand() * 256));
      const frame = superFrame({
        payload, v6: rand() < 0.5, vlan: rand() < 0.3, tcpOptions: 4 * Math.floor(rand() * 11),
        flags: Math.floor(rand() * 256), seq: Math.floor(rand() * 2 ** 32), id: Math.floor(rand() * 65536),
      });
      if (!frame.v6 && frame.bytes.length - frame.l3 > 65535) continue;
      const mss = 1 + Math.floor(rand() * 9000);
      const { refusal, segments } = segmentAll(frame, mss, segmenter);
      const label = `seed ${seed} case ${c}: payload ${size}, mss ${mss}, ${frame.v6 ? 'IPv6' : 'IPv4'}`;
      expect(refusal, label).toBeNull();
      expect(Buffer.concat(segments.map((s) => s.payload)).equals(Buffer.from(payload)), label).toBe(true);
      for (const s of segments) expect(problems(frame, s), label).toEqual([]);
      for (const s of segments.slice(0, -1)) expect(s.payload.length, label).toBe(mss);
    }
  });
});

describe('what a guest gets for the header the VF kernel wrote', () => {
  const header = (flags: number, gso: number, gsoSize = 0, csumStart = 0, csumOffset = 0) =>
    Uint8Array.from([flags, gso, 66, 0, gsoSize & 0xff, gsoSize >> 8, csumStart & 0xff, csumStart >> 8, csumOffset, 0]);
  const all = RX_CSUM | RX_TSO4 | RX_TSO6 | RX_ECN;

  it('maps negotiated feature bits to the receive offload set', () => {
    expect(guestRxOffloads(0)).toBe(0);
    expect(guestRxOffloads(2 ** 1 | 2 ** 7 | 2 ** 8 | 2 ** 9)).toBe(all);
    expect(guestRxOffloads(2 ** 32 + 2 ** 1 + 2 ** 0 + 2 ** 11)).toBe(RX_CSUM); // VERSION_1, CSUM, HOST_TSO4 are not receive offloads
  });

  it('passes a TSO frame whole only to a guest that negotiated the matching TSO, checksum and ECN', () => {
    const out = new Uint8Array(12);
    const tso4 = header(1, 1, 1448, 34, 16);
    expect(rxAction(tso4, all, out)).toBe(RX_PASS);
    expect([...out.subarray(0, 10)]).toEqual([...tso4]);
    expect(rxAction(tso4, RX_CSUM | RX_TSO6, out)).toBe(RX_SEGMENT);
    expect(rxAction(tso4, RX_TSO4, out)).toBe(RX_SEGMENT); // TSO without GUEST_CSUM is not a valid set
    expect(rxAction(header(1, 4, 1428), RX_CSUM | RX_TSO6, out)).toBe(RX_PASS);
    expect(rxAction(header(1, 1 | 0x80, 1448), RX_CSUM | RX_TSO4, out)).toBe(RX_SEGMENT);
    expect(rxAction(header(1, 1 | 0x80, 1448), all, out)).toBe(RX_PASS);
    expect(out[1]).toBe(0x81);
    // A GRO frame whose checksums the VF verified keeps DATA_VALID.
    expect(rxAction(header(2, 1, 1448), all, out)).toBe(RX_PASS);
    expect(out[0]).toBe(2);
    expect(rxAction(header(1, 0, 0), 0, out)).toBe(RX_CHECKSUM);
  });

  it('completes checksums for guests without GUEST_CSUM, and never passes a flag the guest did not negotiate', () => {
    const out = new Uint8Array(12).fill(0xee);
    expect(rxAction(header(1, 0, 0, 34, 16), 0, out)).toBe(RX_CHECKSUM);
    expect(rxAction(header(1, 0, 0, 34, 16), RX_CSUM, out)).toBe(RX_PASS);
    expect([...out.subarray(0, 10)]).toEqual([1, 0, 66, 0, 0, 0, 34, 0, 16, 0]);
    expect(rxAction(header(2, 0), 0, out)).toBe(RX_PLAIN);
    expect(rxAction(header(2, 0), RX_CSUM, out)).toBe(RX_PASS);
    expect([...out.subarray(0, 10)]).toEqual([2, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    expect(rxAction(header(0, 0), all, out)).toBe(RX_PLAIN);
    // UDP fragmentation offload and UDP GSO: no guest gets them from the relay.
    expect(rxAction(header(1, 3, 1400), all, out)).toBe(RX_REFUSE);
    expect(rxAction(header(1, 5, 1400), all, out)).toBe(RX_REFUSE);
  });
});
