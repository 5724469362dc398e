import { describe, expect, it } from 'vitest';
import { completeL4Checksum } from '../../relay/datapath/checksum.js';

/** One's-complement sum of 16-bit words, folded: a correct segment plus pseudo-header sums to 0xffff. */
function onesSum(words: number[]): number {
  let s = 0;
  for (const w of words) {
    s += w;
    s = (s & 0xffff) + (s >>> 16);
  }
  return s;
}

function wordsOf(bytes: Uint8Array, from: number, to: number): number[] {
  const out: number[] = [];
  for (let i = from; i < to; i += 2) out.push((bytes[i] << 8) | (i + 1 < to ? bytes[i + 1] : 0));
  return out;
}

function ipv4Frame(proto: 6 | 17, payload: number): Uint8Array {
  const l4Header = proto === 6 ? 20 : 8;
  const ipTotal = 20 + l4Header + payload;
  const f = new Uint8Array(14 + ipTotal);
  f.set([0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00]);
  const ip = 14;
  f[ip] = 0x45;
  f[ip + 2] = ipTotal >> 8;
  f[ip + 3] = ipTotal & 0xff;
  f[ip + 8] = 64;
  f[ip + 9] = proto;
  f.set([10, 66, 0, 1, 10, 66, 0, 2], ip + 12);
  const l4 = ip + 20;
  f.set([0x13, 0x88, 0xc3, 0x50], l4); // ports 5000 -> 50000
  if (proto === 17) {
    f[l4 + 4] = (8 + payload) >> 8;
    f[l4 + 5] = (8 + payload) & 0xff;
  } else f[l4 + 12] = 0x50;
  for (let i = 0; i < payload; i++) f[l4 + l4Header + i] = (i * 37 + 11) & 0xff;
  return f;
}

function verifyIpv4(f: Uint8Array): number {
  const ip = 14;
  const total = (f[ip + 2] << 8) | f[ip + 3];
  const l4 = ip + 20;
  const len = total - 20;
  return onesSum([...wordsOf(f, ip + 12, ip + 20), f[ip + 9], len, ...wordsOf(f, l4, l4 + len)]);
}

describe('completing L4 checksums left for offload', () => {
  for (const proto of [6, 17] as const) {
    for (const payload of [0, 1, 2, 33, 1000, 1459]) {
      it(`${proto === 6 ? 'TCP' : 'UDP'} over IPv4 with ${payload} payload bytes verifies afterwards`, () => {
        const f = ipv4Frame(proto, payload);
        // A partial (pseudo-header) seed is what the sender leaves; the result must not depend on it.
        f[14 + 20 + (proto === 6 ? 16 : 6)] = 0x12;
        expect(completeL4Checksum(f, 0, f.length)).toBe(true);
        expect(verifyIpv4(f)).toBe(0xffff);
      });
    }
  }

  it('works on a frame inside a larger buffer, with trailing padding after the IP packet', () => {
    const inner = ipv4Frame(17, 10);
    const buf = new Uint8Array(200);
    buf.set(inner, 50);
    expect(completeL4Checksum(buf, 50, inner.length + 6)).toBe(true);
    expect(verifyIpv4(buf.subarray(50, 50 + inner.length))).toBe(0xffff);
  });

  it('TCP over IPv6 verifies afterwards', () => {
    const payload = 77;
    const f = new Uint8Array(14 + 40 + 20 + payload);
    f[12] = 0x86;
    f[13] = 0xdd;
    f[14] = 0x60;
    f[18] = (20 + payload) >> 8;
    f[19] = (20 + payload) & 0xff;
    f[20] = 6;
    for (let i = 0; i < 32; i++) f[22 + i] = i * 7;
    f[54 + 12] = 0x50;
    for (let i = 0; i < payload; i++) f[74 + i] = i;
    expect(completeL4Checksum(f, 0, f.length)).toBe(true);
    const sum = onesSum([...wordsOf(f, 22, 54), 6, 20 + payload, ...wordsOf(f, 54, f.length)]);
    expect(sum).toBe(0xffff);
  });

  it('leaves frames it cannot handle untouched', () => {
    const arp = new Uint8Array(60);
    arp[12] = 0x08;
    arp[13] = 0x06;
    expect(completeL4Checksum(arp, 0, 60)).toBe(false);
    const icmp = ipv4Frame(17, 4);
    icmp[14 + 9] = 1;
    const copy = icmp.slice();
    expect(completeL4Checksum(icmp, 0, icmp.length)).toBe(false);
    expect(icmp).toEqual(copy);
    const lying = ipv4Frame(6, 20);
    lying[14 + 2] = 0xff; // IP total length beyond the frame
    expect(completeL4Checksum(lying, 0, lying.length)).toBe(false);
    const fragment = ipv4Frame(17, 20);
    fragment[14 + 6] = 0x20; // more fragments
    expect(completeL4Checksum(fragment, 0, fragment.length)).toBe(false);
    expect(completeL4Checksum(new Uint8Array(10), 0, 10)).toBe(false);
  });
});
