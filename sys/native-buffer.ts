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

export function nativeBuffer(length: number): NativeBuffer {
  const pageAligned = Math.ceil(length / 4096) * 4096;
  const mapping = mmap({ length: pageAligned, prot: PROT_READ | PROT_WRITE, flags: MAP_PRIVATE });
  return {
    address: mapping.address,
    length: pageAligned,
    bytes: new Uint8Array(mapping.buffer),
    view: new DataView(mapping.buffer),
  };
}
