// Completing TCP/UDP checksums the sending stack left to "hardware". Frames that a local stack
// sends over a veth (or any device with checksum offload) reach AF_PACKET with the checksum only
// seeded (TP_STATUS_CSUMNOTREADY). A guest that did not negotiate GUEST_CSUM must get complete
// frames, or it drops them. Real VFs deliver complete checksums and never take this path.

/** Adds the big-endian 16-bit words of bytes[from, to) to `acc` (an odd last byte is padded). */
export function sum16(bytes: Uint8Array, from: number, to: number, acc: number): number {
  let i = from;
  for (; i + 1 < to; i += 2) acc += (bytes[i] << 8) | bytes[i + 1];
  if (i < to) acc += bytes[i] << 8;
  return acc;
}

/** Folds a one's-complement sum into 16 bits. */
export function fold(acc: number): number {
  while (acc > 0xffff) acc = (acc & 0xffff) + Math.floor(acc / 0x10000);
  return acc;
}

/**
 * Computes the TCP or UDP checksum of the IPv4/IPv6 frame at bytes[offset, offset+length) in
 * place. Returns false (and changes nothing) when the frame is not TCP/UDP over IP or is cut short.
 */
export function completeL4Checksum(bytes: Uint8Array, offset: number, length: number): boolean {
  const end = offset + length;
  let l3 = offset + 14;
  if (l3 > end) return false;
  let etherType = (bytes[offset + 12] << 8) | bytes[offset + 13];
  if (etherType === 0x8100 && l3 + 4 <= end) {
    etherType = (bytes[offset + 16] << 8) | bytes[offset + 17];
    l3 += 4;
  }
  let acc = 0;
  let proto: number;
  let l4: number;
  let l4End: number;
  if (etherType === 0x0800) {
    if (l3 + 20 > end) return false;
    const ihl = (bytes[l3] & 0x0f) * 4;
    const total = (bytes[l3 + 2] << 8) | bytes[l3 + 3];
    proto = bytes[l3 + 9];
    l4 = l3 + ihl;
    l4End = l3 + total;
    if (ihl < 20 || l4End > end || l4End <= l4) return false;
    if (((bytes[l3 + 6] & 0x3f) | bytes[l3 + 7]) !== 0) return false; // a fragment: no L4 header to fix
    acc = sum16(bytes, l3 + 12, l3 + 20, 0); // source and destination addresses
  } else if (etherType === 0x86dd) {
    if (l3 + 40 > end) return false;
    proto = bytes[l3 + 6];
    l4 = l3 + 40;
    l4End = l4 + ((bytes[l3 + 4] << 8) | bytes[l3 + 5]);
    if (l4End > end || l4End <= l4) return false;
    acc = sum16(bytes, l3 + 8, l3 + 40, 0);
  } else {
    return false;
  }
  let checkAt: number;
  if (proto === 6) checkAt = l4 + 16;
  else if (proto === 17) checkAt = l4 + 6;
  else return false;
  if (checkAt + 2 > l4End) return false;
  const l4Length = l4End - l4;
  acc += proto + l4Length;
  bytes[checkAt] = 0;
  bytes[checkAt + 1] = 0;
  acc = sum16(bytes, l4, l4End, acc);
  let check = ~fold(acc) & 0xffff;
  // UDP transmits a computed zero as all ones (zero means "no checksum").
  if (proto === 17 && check === 0) check = 0xffff;
  bytes[checkAt] = check >> 8;
  bytes[checkAt + 1] = check & 0xff;
  return true;
}
