// The dirty-page log of a live migration (SET_LOG_BASE with PROTOCOL_F_LOG_SHMFD): a bitmap in a
// file the front-end shares, one bit per 4 KiB page of guest-physical memory from address 0. The
// front-end reads and clears it while the back-end sets the bits of every page it writes.
import { MAP_SHARED, PROT_READ, PROT_WRITE, fstatSize, mmap, munmap, type Mapping } from '../sys/memory.js';
import type { LogDesc } from './messages.js';
import { ProtocolError } from './messages.js';

/**
 * The largest log accepted: 1 GiB of bitmap covers 32 TiB of guest-physical space, far beyond any
 * memory table, and keeps a hostile front-end from making the daemon map an absurd file.
 */
export const MAX_LOG_BYTES = 2 ** 30;

const PAGE = 4096;

export interface MappedLog {
  mapping: Mapping;
  /** Host address of the bitmap's first byte (mapping + mmap_offset). */
  hostAddress: number;
  /** Bitmap bytes. */
  size: number;
}

/**
 * Maps `size` bytes at `offset` of the log file. Throws ProtocolError, with nothing mapped, when the
 * log is larger than MAX_LOG_BYTES or reaches past the end of its file (a touch there would SIGBUS).
 */
export function mapDirtyLog(desc: LogDesc, fd: number): MappedLog {
  if (desc.mmapSize > MAX_LOG_BYTES) {
    throw new ProtocolError(`SET_LOG_BASE: a log of ${desc.mmapSize} bytes is larger than the ${MAX_LOG_BYTES}-byte limit`);
  }
  let fileSize: number;
  try {
    fileSize = fstatSize(fd);
  } catch (err) {
    throw new ProtocolError(`SET_LOG_BASE: the log fd cannot be inspected: ${(err as Error).message}`);
  }
  const end = desc.mmapOffset + desc.mmapSize;
  if (end > fileSize) {
    throw new ProtocolError(`SET_LOG_BASE: log offset ${desc.mmapOffset} + size ${desc.mmapSize} exceeds its file (${fileSize} bytes)`);
  }
  // mmap wants a page-aligned offset: map from the page holding mmap_offset.
  const start = Math.floor(desc.mmapOffset / PAGE) * PAGE;
  let mapping: Mapping;
  try {
    mapping = mmap({ length: end - start, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED, fd, offset: start, view: false });
  } catch (err) {
    throw new ProtocolError(`SET_LOG_BASE: mapping the log failed: ${(err as Error).message}`);
  }
  return { mapping, hostAddress: mapping.address + (desc.mmapOffset - start), size: desc.mmapSize };
}

export function unmapDirtyLog(log: MappedLog): void {
  try {
    munmap(log.mapping);
  } catch {
    /* nothing left to do about a failed munmap */
  }
}
