// TCP segmentation in software, for the one case where the relay must do it: the VF's kernel hands
// over a GSO super-frame (GRO on a VF, or a veth peer whose stack sent with TSO: up to 64 KiB of
// TCP payload behind one set of headers) and the guest did not negotiate the receive offload that
// would let it take the frame whole (GUEST_TSO4/6, and GUEST_ECN for frames marked ECN). Each
// segment is what the sender's NIC would have put on the wire: the headers copied, IP lengths,
// IPv4 id and TCP sequence advanced, FIN and PSH on the last segment only, CWR on the first only,
// and every checksum complete.
import { fold, sum16 } from './checksum.js';

const ETH_HEADER = 14;
const ETH_P_IPV4 = 0x0800;
const ETH_P_IPV6 = 0x86dd;
const ETH_P_8021Q = 0x8100;
const ETH_P_8021AD = 0x88a8;
const IPPROTO_TCP = 6;
const TCP_FIN = 0x01;
const TCP_PSH = 0x08;
const TCP_CWR = 0x80;

/** Headers up to the end of TCP's: Ethernet (one tag at most), IPv4 with options or IPv6, TCP with options. */
const MAX_HEADERS = ETH_HEADER + 4 + 60 + 60;

export type SegmentSink = (bytes: Uint8Array, offset: number, length: number) => void;

/** Why a frame could not be segmented (null: it was). */
export type SegmentRefusal = string | null;

export class TcpSegmenter {
  /** One segment at a time: headers plus at most `maxSegmentPayload` bytes. */
  private readonly out: Uint8Array;
  readonly maxSegmentPayload: number;

  constructor(maxSegmentPayload = 65535) {
    this.maxSegmentPayload = maxSegmentPayload;
    this.out = new Uint8Array(MAX_HEADERS + maxSegmentPayload);
  }

  /**
   * Cuts the TCP frame at bytes[offset, offset + length) into segments of at most `mss` payload
   * bytes and hands each to `emit` (in a buffer reused for the next one). Returns null when it
   * did, or the reason it did not (then nothing was emitted): not TCP over IPv4/IPv6, IPv6
   * extension headers, lengths that disagree, an MSS of 0 or one larger than this segmenter's,
   * or segments longer than `maxFrame` (the link's untagged maximum; a tagged frame's may be 4
   * bytes longer).
   */
  segment(bytes: Uint8Array, offset: number, length: number, mss: number, emit: SegmentSink, maxFrame = Infinity): SegmentRefusal {
    const end = offset + length;
    if (length < ETH_HEADER) return 'shorter than an Ethernet header';
    let l3 = offset + ETH_HEADER;
    let etherType = (bytes[offset + 12] << 8) | bytes[offset + 13];
    if (etherType === ETH_P_8021Q || etherType === ETH_P_8021AD) {
      if (l3 + 4 > end) return 'VLAN tag cut short';
      etherType = (bytes[offset + 16] << 8) | bytes[offset + 17];
      l3 += 4;
    }
    let l4: number;
    const v4 = etherType === ETH_P_IPV4;
    if (v4) {
      if (l3 + 20 > end) return 'IPv4 header cut short';
      const ihl = (bytes[l3] & 0x0f) * 4;
      if ((bytes[l3] >> 4) !== 4 || ihl < 20) return 'not an IPv4 header';
      if (bytes[l3 + 9] !== IPPROTO_TCP) return `IPv4 protocol ${bytes[l3 + 9]} is not TCP`;
      if ((((bytes[l3 + 2] << 8) | bytes[l3 + 3]) !== end - l3)) return 'IPv4 total length disagrees with the frame';
      l4 = l3 + ihl;
    } else if (etherType === ETH_P_IPV6) {
      if (l3 + 40 > end) return 'IPv6 header cut short';
      if (bytes[l3 + 6] !== IPPROTO_TCP) return `IPv6 next header ${bytes[l3 + 6]} is not TCP`;
      if ((((bytes[l3 + 4] << 8) | bytes[l3 + 5]) !== end - l3 - 40)) return 'IPv6 payload length disagrees with the frame';
      l4 = l3 + 40;
    } else {
      return `ethertype 0x${etherType.toString(16)} is not IP`;
    }
    if (l4 + 20 > end) return 'TCP header cut short';
    const tcpLength = (bytes[l4 + 12] >> 4) * 4;
    if (tcpLength < 20 || l4 + tcpLength > end) return 'TCP header length out of range';
    if (!Number.isInteger(mss) || mss < 1 || mss > this.maxSegmentPayload) return `segment size ${mss} out of range`;
    const headers = l4 + tcpLength - offset;
    if (headers > MAX_HEADERS) return 'headers too long';
    const longest = headers + Math.min(mss, length - headers);
    if (longest > maxFrame + (l3 - offset > ETH_HEADER ? 4 : 0)) return `segments of ${longest} bytes are longer than the link takes`;

    const out = this.out;
    const ol3 = l3 - offset;
    const ol4 = l4 - offset;
    const seq0 = ((bytes[l4 + 4] << 24) | (bytes[l4 + 5] << 16) | (bytes[l4 + 6] << 8) | bytes[l4 + 7]) >>> 0;
    const id0 = v4 ? (bytes[l3 + 4] << 8) | bytes[l3 + 5] : 0;
    const flags0 = bytes[l4 + 13];
    // The pseudo-header's addresses are the same in every segment.
    const addresses = v4 ? sum16(bytes, l3 + 12, l3 + 20, 0) : sum16(bytes, l3 + 8, l3 + 40, 0);
    const payload = length - headers;
    const count = payload === 0 ? 1 : Math.ceil(payload / mss);
    for (let i = 0; i < count; i++) {
      const from = offset + headers + i * mss;
      const take = Math.min(mss, end - from);
      for (let k = 0; k < headers; k++) out[k] = bytes[offset + k];
      for (let k = 0; k < take; k++) out[headers + k] = bytes[from + k];
      const segLength = headers + take;
      if (v4) {
        const total = segLength - ol3;
        out[ol3 + 2] = total >> 8;
        out[ol3 + 3] = total & 0xff;
        const id = (id0 + i) & 0xffff;
        out[ol3 + 4] = id >> 8;
        out[ol3 + 5] = id & 0xff;
        out[ol3 + 10] = 0;
        out[ol3 + 11] = 0;
        const check = ~fold(sum16(out, ol3, ol4, 0)) & 0xffff;
        out[ol3 + 10] = check >> 8;
        out[ol3 + 11] = check & 0xff;
      } else {
        const payloadLength = segLength - ol3 - 40;
        out[ol3 + 4] = payloadLength >> 8;
        out[ol3 + 5] = payloadLength & 0xff;
      }
      const seq = (seq0 + i * mss) >>> 0;
      out[ol4 + 4] = seq >>> 24;
      out[ol4 + 5] = (seq >>> 16) & 0xff;
      out[ol4 + 6] = (seq >>> 8) & 0xff;
      out[ol4 + 7] = seq & 0xff;
      let flags = flags0;
      if (i !== count - 1) flags &= ~(TCP_FIN | TCP_PSH);
      if (i !== 0) flags &= ~TCP_CWR;
      out[ol4 + 13] = flags;
      out[ol4 + 16] = 0;
      out[ol4 + 17] = 0;
      const l4Length = segLength - ol4;
      const check = ~fold(sum16(out, ol4, segLength, addresses + IPPROTO_TCP + l4Length)) & 0xffff;
      out[ol4 + 16] = check >> 8;
      out[ol4 + 17] = check & 0xff;
      emit(out, 0, segLength);
    }
    return null;
  }
}
