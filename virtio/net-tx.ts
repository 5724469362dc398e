// Taking a frame out of a guest's transmit chain. The header is copied out first and the frame
// after it, so nothing is read from guest memory twice.

import type { DescriptorChain } from './descriptor-chain.js';

/** The chain must be returned (used length 0) and its frame dropped. */
export const TX_DROPPED = -1;

/**
 * Copies the frame carried by a transmit chain (everything after the `headerLength`-byte
 * virtio-net header, wherever the descriptors split it) to `dst[dstOffset..]`, and the header to
 * `headerOut` when given. Returns the frame length, or TX_DROPPED when the chain was rejected,
 * has device-writable buffers, carries no bytes after the header, or the frame does not fit `dst`.
 */
export function readTxFrame(
  chain: DescriptorChain,
  headerLength: number,
  dst: Uint8Array,
  dstOffset: number,
  headerOut: Uint8Array | null = null,
): number {
  if (chain.error !== null || chain.writableLength !== 0) return TX_DROPPED;
  const frameLength = chain.readableLength - headerLength;
  if (frameLength <= 0 || frameLength > dst.length - dstOffset) return TX_DROPPED;
  if (headerOut !== null) chain.copyOut(0, headerOut, 0, Math.min(headerLength, headerOut.length));
  return chain.copyOut(headerLength, dst, dstOffset, frameLength);
}
