// The virtio-net header (virtio 1.2 §5.1.6) that precedes every frame on both queues.
// All fields are little-endian; helpers work on plain byte arrays at an offset.

import { VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF, hasFeature } from './features.js';

export const VIRTIO_NET_HDR_F_NEEDS_CSUM = 1;
export const VIRTIO_NET_HDR_F_DATA_VALID = 2;
export const VIRTIO_NET_HDR_F_RSC_INFO = 4;

export const VIRTIO_NET_HDR_GSO_NONE = 0;
export const VIRTIO_NET_HDR_GSO_TCPV4 = 1;
export const VIRTIO_NET_HDR_GSO_UDP = 3;
export const VIRTIO_NET_HDR_GSO_TCPV6 = 4;
export const VIRTIO_NET_HDR_GSO_UDP_L4 = 5;
export const VIRTIO_NET_HDR_GSO_ECN = 0x80;

/** Header without num_buffers: legacy devices without MRG_RXBUF. */
export const NET_HEADER_LEGACY_LENGTH = 10;
/** Header with num_buffers. */
export const NET_HEADER_LENGTH = 12;
export const NUM_BUFFERS_OFFSET = 10;

export interface NetHeader {
  flags: number;
  gsoType: number;
  /** A hint only: the device must not rely on it. */
  hdrLen: number;
  gsoSize: number;
  csumStart: number;
  csumOffset: number;
  /** 0 when the header is the 10-byte legacy one. */
  numBuffers: number;
}

/**
 * Header length for a negotiated feature set: num_buffers exists with VERSION_1 or MRG_RXBUF
 * (and with packed rings, which imply VERSION_1), so 12 bytes; otherwise the legacy 10.
 */
export function netHeaderLength(features: bigint): number {
  return hasFeature(features, VIRTIO_F_VERSION_1) || hasFeature(features, VIRTIO_NET_F_MRG_RXBUF) || hasFeature(features, VIRTIO_F_RING_PACKED)
    ? NET_HEADER_LENGTH
    : NET_HEADER_LEGACY_LENGTH;
}

export function emptyNetHeader(): NetHeader {
  return { flags: 0, gsoType: VIRTIO_NET_HDR_GSO_NONE, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0, numBuffers: 0 };
}

function u16At(bytes: Uint8Array, offset: number): number {
  return bytes[offset]! | (bytes[offset + 1]! << 8);
}

function putU16(bytes: Uint8Array, offset: number, value: number): void {
  bytes[offset] = value & 0xff;
  bytes[offset + 1] = (value >>> 8) & 0xff;
}

function checkRoom(bytes: Uint8Array, offset: number, headerLength: number): void {
  if (headerLength !== NET_HEADER_LENGTH && headerLength !== NET_HEADER_LEGACY_LENGTH) {
    throw new Error(`virtio-net header: length ${headerLength} is neither 10 nor 12`);
  }
  if (!Number.isInteger(offset) || offset < 0 || offset + headerLength > bytes.length) {
    throw new Error(`virtio-net header: ${headerLength} bytes at offset ${offset} do not fit in ${bytes.length} bytes`);
  }
}

/**
 * Decodes a header. Read it from a private copy, not from guest memory, so that the values
 * validated are the values used (the guest may rewrite its buffer at any time).
 */
export function readNetHeader(bytes: Uint8Array, offset: number, headerLength: number, out: NetHeader = emptyNetHeader()): NetHeader {
  checkRoom(bytes, offset, headerLength);
  out.flags = bytes[offset]!;
  out.gsoType = bytes[offset + 1]!;
  out.hdrLen = u16At(bytes, offset + 2);
  out.gsoSize = u16At(bytes, offset + 4);
  out.csumStart = u16At(bytes, offset + 6);
  out.csumOffset = u16At(bytes, offset + 8);
  out.numBuffers = headerLength === NET_HEADER_LENGTH ? u16At(bytes, offset + NUM_BUFFERS_OFFSET) : 0;
  return out;
}

export function writeNetHeader(bytes: Uint8Array, offset: number, headerLength: number, header: NetHeader): void {
  checkRoom(bytes, offset, headerLength);
  bytes[offset] = header.flags & 0xff;
  bytes[offset + 1] = header.gsoType & 0xff;
  putU16(bytes, offset + 2, header.hdrLen);
  putU16(bytes, offset + 4, header.gsoSize);
  putU16(bytes, offset + 6, header.csumStart);
  putU16(bytes, offset + 8, header.csumOffset);
  if (headerLength === NET_HEADER_LENGTH) putU16(bytes, offset + NUM_BUFFERS_OFFSET, header.numBuffers);
}

/**
 * Writes the header of a frame delivered without offloads: flags 0, GSO_NONE, and num_buffers
 * when the header has it (VERSION_1 without MRG_RXBUF still needs 1 there).
 */
export function writePlainNetHeader(bytes: Uint8Array, offset: number, headerLength: number, numBuffers = 1): void {
  checkRoom(bytes, offset, headerLength);
  bytes.fill(0, offset, offset + 10);
  if (headerLength === NET_HEADER_LENGTH) putU16(bytes, offset + NUM_BUFFERS_OFFSET, numBuffers);
}

export function readNumBuffers(bytes: Uint8Array, offset: number): number {
  checkRoom(bytes, offset, NET_HEADER_LENGTH);
  return u16At(bytes, offset + NUM_BUFFERS_OFFSET);
}

export function writeNumBuffers(bytes: Uint8Array, offset: number, numBuffers: number): void {
  checkRoom(bytes, offset, NET_HEADER_LENGTH);
  if (!Number.isInteger(numBuffers) || numBuffers < 0 || numBuffers > 0xffff) {
    throw new Error(`virtio-net header: num_buffers ${numBuffers} is not a u16`);
  }
  putU16(bytes, offset + NUM_BUFFERS_OFFSET, numBuffers);
}
