import { describe, expect, it } from 'vitest';
import { flowHash } from '../../relay/datapath/flow-hash.js';

function udp4(src: number, dst: number, sport: number, dport: number, vlan = false): Uint8Array {
  const f = new Uint8Array(vlan ? 64 : 60);
  let o = 12;
  if (vlan) {
    f[12] = 0x81;
    f[13] = 0x00;
    f[15] = 7;
    o = 16;
  }
  f[o] = 0x08;
  f[o + 1] = 0x00;
  const ip = o + 2;
  f[ip] = 0x45;
  f[ip + 9] = 17;
  new DataView(f.buffer).setUint32(ip + 12, src);
  new DataView(f.buffer).setUint32(ip + 16, dst);
  new DataView(f.buffer).setUint16(ip + 20, sport);
  new DataView(f.buffer).setUint16(ip + 22, dport);
  for (let i = ip + 28; i < f.length; i++) f[i] = i; // payload must not matter
  return f;
}

describe('flow hash', () => {
  it('depends on addresses and ports only, not on payload, MACs or the VLAN tag', () => {
    const a = udp4(0x0a000001, 0x0a000002, 1000, 2000);
    const b = a.slice();
    b.fill(0xee, 50); // payload
    b[0] = 0x33; // destination MAC
    expect(flowHash(b, 0, b.length)).toBe(flowHash(a, 0, a.length));
    const tagged = udp4(0x0a000001, 0x0a000002, 1000, 2000, true);
    expect(flowHash(tagged, 0, tagged.length)).toBe(flowHash(a, 0, a.length));
  });

  it('spreads many flows evenly over 4 queues', () => {
    const counts = [0, 0, 0, 0];
    for (let port = 0; port < 4000; port++) {
      const f = udp4(0x0a000001, 0x0a000002, 10000 + port, 53);
      counts[flowHash(f, 0, f.length) % 4]++;
    }
    for (const c of counts) expect(c).toBeGreaterThan(800);
  });

  it('spreads flows over 2 queues even when address and port change together (the low bits are mixed)', () => {
    // Hosts 10.0.0.1..64 each talking from port 2000 + host: every hashed byte's low bit pairs
    // up, which left an unmixed FNV-1a's lowest bit, and so the queue, the same for all of them.
    const counts = [0, 0];
    for (let host = 1; host <= 64; host++) counts[flowHash(udp4(0x0a000000 + host, 0x0a0000c8, 2000 + host, 9), 0, 60) % 2]++;
    expect(Math.min(...counts)).toBeGreaterThanOrEqual(20);
  });

  it('ignores ports of IPv4 fragments, so all fragments of a datagram stay on one queue', () => {
    const first = udp4(0x0a000001, 0x0a000002, 1, 2);
    const later = udp4(0x0a000001, 0x0a000002, 9, 9);
    first[14 + 6] = 0x20; // more fragments
    later[14 + 7] = 0x10; // fragment offset
    expect(flowHash(first, 0, first.length)).toBe(flowHash(later, 0, later.length));
  });

  it('hashes frames at an offset inside a larger buffer, and runt frames without reading past them', () => {
    const f = udp4(1, 2, 3, 4);
    const big = new Uint8Array(200).fill(0xaa);
    big.set(f, 70);
    expect(flowHash(big, 70, f.length)).toBe(flowHash(f, 0, f.length));
    const runt = new Uint8Array([1, 2, 3]);
    expect(flowHash(runt, 0, 3)).toBe(flowHash(new Uint8Array([1, 2, 3, 9, 9]), 0, 3));
    const truncatedIp = udp4(1, 2, 3, 4).subarray(0, 20);
    expect(() => flowHash(truncatedIp, 0, truncatedIp.length)).not.toThrow();
  });
});
