// TCP frames for the receive offload tests: GSO super-frames as a VF's kernel hands them over, a
// peer that makes the kernel build real ones, and the checks a receiving stack makes on each
// segment cut from one (lengths, IPv4 header checksum, TCP checksum), computed here
// independently of the relay's checksum code.
import { spawnSync } from 'node:child_process';

export function onesSum(bytes: Uint8Array, from: number, to: number, start = 0): number {
  let s = start;
  for (let i = from; i < to; i += 2) {
    s += (bytes[i] << 8) | (i + 1 < to ? bytes[i + 1] : 0);
    s = (s & 0xffff) + (s >>> 16);
  }
  return s;
}

export interface SuperFrame {
  bytes: Uint8Array;
  l3: number;
  l4: number;
  headers: number;
  v6: boolean;
}

/** A GSO super-frame as the kernel hands it over: one set of headers, `payload` bytes of TCP data. */
export function superFrame(opts: { v6?: boolean; vlan?: boolean; payload: Uint8Array; tcpOptions?: number; ipOptions?: number; flags?: number; seq?: number; id?: number }): SuperFrame {
  const v6 = opts.v6 ?? false;
  const l3 = opts.vlan ? 18 : 14;
  const ipLength = v6 ? 40 : 20 + (opts.ipOptions ?? 0);
  const tcpLength = 20 + (opts.tcpOptions ?? 0);
  const l4 = l3 + ipLength;
  const headers = l4 + tcpLength;
  const f = new Uint8Array(headers + opts.payload.length);
  f.set([0x52, 0x54, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1]);
  if (opts.vlan) f.set([0x81, 0x00, 0x00, 0x2a], 12);
  f.set(v6 ? [0x86, 0xdd] : [0x08, 0x00], l3 - 2);
  if (v6) {
    f[l3] = 0x60;
    const len = tcpLength + opts.payload.length;
    f[l3 + 4] = len >> 8;
    f[l3 + 5] = len & 0xff;
    f[l3 + 6] = 6;
    f[l3 + 7] = 64;
    for (let i = 0; i < 32; i++) f[l3 + 8 + i] = (i * 13 + 1) & 0xff;
  } else {
    f[l3] = 0x40 | (ipLength / 4);
    const total = ipLength + tcpLength + opts.payload.length;
    f[l3 + 2] = total >> 8;
    f[l3 + 3] = total & 0xff;
    const id = opts.id ?? 0xfffe;
    f[l3 + 4] = id >> 8;
    f[l3 + 5] = id & 0xff;
    f[l3 + 6] = 0x40; // DF
    f[l3 + 8] = 64;
    f[l3 + 9] = 6;
    f.set([10, 70, 0, 1, 10, 70, 0, 2], l3 + 12);
    for (let i = 20; i < ipLength; i++) f[l3 + i] = 1; // NOP options
    const check = ~onesSum(f, l3, l3 + ipLength) & 0xffff;
    f[l3 + 10] = check >> 8;
    f[l3 + 11] = check & 0xff;
  }
  f.set([0x13, 0x89, 0xc3, 0x51], l4);
  const seq = opts.seq ?? 0xfffff000;
  f.set([seq >>> 24, (seq >>> 16) & 0xff, (seq >>> 8) & 0xff, seq & 0xff], l4 + 4);
  f[l4 + 12] = (tcpLength / 4) << 4;
  f[l4 + 13] = opts.flags ?? 0x18; // PSH ACK
  f[l4 + 14] = 0x01;
  for (let i = 20; i < tcpLength; i++) f[l4 + i] = 1;
  f[l4 + 16] = 0xab; // a partial checksum seed, as a sender leaves it
  f.set(opts.payload, headers);
  return { bytes: f, l3, l4, headers, v6 };
}

/** Checks one segment as a receiving stack would; returns the problems found. */
export function segmentProblems(frame: SuperFrame, s: { bytes: Uint8Array }): string[] {
  const out: string[] = [];
  const b = s.bytes;
  const { l3, l4 } = frame;
  if (frame.v6) {
    const len = (b[l3 + 4] << 8) | b[l3 + 5];
    if (len !== b.length - l3 - 40) out.push(`IPv6 payload length ${len}, frame has ${b.length - l3 - 40}`);
  } else {
    const total = (b[l3 + 2] << 8) | b[l3 + 3];
    if (total !== b.length - l3) out.push(`IPv4 total length ${total}, frame has ${b.length - l3}`);
    if (onesSum(b, l3, l4) !== 0xffff) out.push('IPv4 header checksum wrong');
  }
  let pseudo = frame.v6 ? onesSum(b, l3 + 8, l3 + 40) : onesSum(b, l3 + 12, l3 + 20);
  pseudo = onesSum(new Uint8Array([0, 6, (b.length - l4) >> 8, (b.length - l4) & 0xff]), 0, 4, pseudo);
  if (onesSum(b, l4, b.length, pseudo) !== 0xffff) out.push('TCP checksum wrong');
  return out;
}

// The sending peer: one frame per stdin line (hex of a 10-byte virtio_net_hdr and the frame),
// through a packet socket with PACKET_VNET_HDR, so the kernel takes the header as a NIC driver's
// and builds a GSO packet from it, which a veth hands to its other end whole.
const SENDER = `
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
s.setsockopt(263, 15, 1)
s.bind((sys.argv[1], 0))
for line in sys.stdin:
    s.send(bytes.fromhex(line.strip()))
`;

/**
 * Sends each frame out of `ifname` in namespace `ns` with its checksum left to complete (from the
 * TCP header on) and, when `mss` is not 0, as a TSO request for segments of `mss` bytes.
 */
export function sendSuperFrames(ns: string, ifname: string, frames: Array<{ frame: SuperFrame; mss: number }>): void {
  const lines = frames.map(({ frame, mss }) => {
    const h = Buffer.alloc(10);
    h[0] = 1; // NEEDS_CSUM
    h[1] = mss === 0 ? 0 : frame.v6 ? 4 : 1;
    h.writeUInt16LE(frame.headers, 2);
    h.writeUInt16LE(mss, 4);
    h.writeUInt16LE(frame.l4, 6);
    h.writeUInt16LE(16, 8);
    return Buffer.concat([h, frame.bytes]).toString('hex');
  });
  const r = spawnSync('ip', ['netns', 'exec', ns, 'python3', '-c', SENDER, ifname], { input: lines.join('\n') + '\n', encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`sending super-frames from ${ifname}: ${r.stderr}`);
}
