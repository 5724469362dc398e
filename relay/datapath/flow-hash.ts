// A flow hash over L2/L3/L4 headers, used to spread VF→VM traffic over the guest's RX queues and
// to pick a bond member in balance mode. Frames of one flow always hash alike, so order within a
// flow is kept. FNV-1a over the fields: cheap and allocation-free, then a final mix (murmur3's
// fmix32), because callers take the hash modulo a small count and FNV-1a's low bits alone are
// poor: its lowest bit is the parity of the hashed bytes' lowest bits, so with two queues or two
// members, flows whose address and port both differ by one landed on the same side.
const FNV_OFFSET = 0x811c9dc5;
const FNV_PRIME = 0x01000193;

function mix(h: number, bytes: Uint8Array, from: number, to: number): number {
  for (let i = from; i < to; i++) h = Math.imul(h ^ bytes[i], FNV_PRIME);
  return h;
}

/** murmur3's finaliser: every input bit affects every output bit. */
function finish(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Hash of the frame at bytes[offset, offset+length). */
export function flowHash(bytes: Uint8Array, offset: number, length: number): number {
  return finish(fnvFlowHash(bytes, offset, length));
}

function fnvFlowHash(bytes: Uint8Array, offset: number, length: number): number {
  if (length < 14) return mix(FNV_OFFSET, bytes, offset, offset + length) >>> 0;
  let l3 = offset + 14;
  let etherType = (bytes[offset + 12] << 8) | bytes[offset + 13];
  // One 802.1Q tag is common on VF traffic; look past it.
  if (etherType === 0x8100 && length >= 18) {
    etherType = (bytes[offset + 16] << 8) | bytes[offset + 17];
    l3 += 4;
  }
  const end = offset + length;
  if (etherType === 0x0800 && l3 + 20 <= end) {
    const ihl = (bytes[l3] & 0x0f) * 4;
    const proto = bytes[l3 + 9];
    let h = mix(FNV_OFFSET, bytes, l3 + 12, l3 + 20); // source and destination addresses
    h = Math.imul(h ^ proto, FNV_PRIME);
    const fragmented = ((bytes[l3 + 6] & 0x3f) | bytes[l3 + 7]) !== 0;
    const l4 = l3 + ihl;
    if (!fragmented && (proto === 6 || proto === 17 || proto === 132) && ihl >= 20 && l4 + 4 <= end) {
      h = mix(h, bytes, l4, l4 + 4); // ports
    }
    return h >>> 0;
  }
  if (etherType === 0x86dd && l3 + 40 <= end) {
    const next = bytes[l3 + 6];
    let h = mix(FNV_OFFSET, bytes, l3 + 8, l3 + 40);
    h = Math.imul(h ^ next, FNV_PRIME);
    const l4 = l3 + 40;
    if ((next === 6 || next === 17 || next === 132) && l4 + 4 <= end) h = mix(h, bytes, l4, l4 + 4);
    return h >>> 0;
  }
  // Anything else: the MAC addresses and the ethertype.
  return mix(FNV_OFFSET, bytes, offset, offset + 14) >>> 0;
}
