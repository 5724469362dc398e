// Memory with a stable native address, for structures the kernel reads or writes through
// pointers stored inside other structures (msghdr → iovec → data, control messages) and for
// buffers filled by calls running on another thread (epoll_wait through koffi's async calls).
// JS typed arrays may move or be copied by the FFI layer, so such buffers live in mmap'd pages.
import { mmap, PROT_READ, PROT_WRITE, MAP_PRIVATE } from './memory.js';

export interface NativeBuffer {
  address: number;
  length: number;
  bytes: Uint8Array;
  view: DataView;
}

/**
 * Buffers given back with releaseNativeBuffer, by page-aligned length, for the next nativeBuffer
 * of that length in this thread. Short-lived owners (a VF link lives as long as one attachment of
 * a direction) would otherwise map new pages each time and never unmap them: nothing may unmap a
 * page a typed array still views, so they are kept and reused instead.
 */
const spare = new Map<number, NativeBuffer[]>();

export function nativeBuffer(length: number): NativeBuffer {
  const pageAligned = Math.ceil(length / 4096) * 4096;
  const reused = spare.get(pageAligned)?.pop();
  if (reused) {
    reused.bytes.fill(0);
    return reused;
  }
  const mapping = mmap({ length: pageAligned, prot: PROT_READ | PROT_WRITE, flags: MAP_PRIVATE });
  return {
    address: mapping.address,
    length: pageAligned,
    bytes: new Uint8Array(mapping.buffer),
    view: new DataView(mapping.buffer),
  };
}

/** Gives a buffer back for reuse by this thread; its owner must not touch it afterwards. */
export function releaseNativeBuffer(buffer: NativeBuffer): void {
  const list = spare.get(buffer.length);
  if (list) list.push(buffer);
  else spare.set(buffer.length, [buffer]);
}

/** Buffers waiting for reuse in this thread (for tests). */
export function spareNativeBuffers(): number {
  let n = 0;
  for (const list of spare.values()) n += list.length;
  return n;
}
