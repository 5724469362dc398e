// Shared memory: memfds, mmap over files, memfds, hugetlbfs and anonymous memory, and views of
// memory mapped elsewhere in the process (worker threads receive addresses, not buffers).
import { libc, koffi, check, lastErrno, SysError } from './libc.js';

export const PROT_NONE = 0;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const PROT_EXEC = 4;

export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_FIXED = 0x10;
export const MAP_ANONYMOUS = 0x20;
export const MAP_NORESERVE = 0x4000;
export const MAP_LOCKED = 0x2000;
export const MAP_POPULATE = 0x8000;
export const MAP_HUGETLB = 0x40000;

export const MADV_NORMAL = 0;
export const MADV_RANDOM = 1;
export const MADV_SEQUENTIAL = 2;
export const MADV_WILLNEED = 3;
export const MADV_DONTNEED = 4;
export const MADV_REMOVE = 9;
export const MADV_DONTFORK = 10;
export const MADV_DOFORK = 11;
export const MADV_MERGEABLE = 12;
export const MADV_UNMERGEABLE = 13;
export const MADV_HUGEPAGE = 14;
export const MADV_NOHUGEPAGE = 15;
export const MADV_DONTDUMP = 16;
export const MADV_DODUMP = 17;

const MFD_CLOEXEC = 1;
const MFD_ALLOW_SEALING = 2;
const MFD_HUGETLB = 4;

const SYS_mbind = 237;
const MPOL_BIND = 2;
const MPOL_PREFERRED = 1;
const MPOL_MF_MOVE = 2;

const MAP_FAILED = -1;

const memfdCreateNative = libc.func('int memfd_create(const char *name, unsigned int flags)');
const ftruncateNative = libc.func('int ftruncate(int fd, int64_t length)');
const fstatNative = libc.func('int fstat(int fd, void *statbuf)');
// intptr_t rather than void *: addresses come back as plain numbers (user space is below 2^47).
const mmapNative = libc.func('intptr_t mmap(intptr_t addr, size_t length, int prot, int flags, int fd, int64_t offset)');
const munmapNative = libc.func('int munmap(intptr_t addr, size_t length)');
const madviseNative = libc.func('int madvise(intptr_t addr, size_t length, int advice)');
const syscallNative = libc.func('long syscall(long number, ...)');

/** The largest ArrayBuffer koffi can make over native memory (a larger view aborts the process). */
export const MAX_VIEW_BYTES = 2 ** 32;

export interface Mapping {
  /** Host virtual address of the first byte. */
  address: number;
  length: number;
  /** The mapped bytes; valid until munmap. */
  buffer: ArrayBuffer;
}

export interface MmapOptions {
  length: number;
  prot?: number;
  flags?: number;
  /** -1 (default) for anonymous memory; MAP_ANONYMOUS is then added to flags. */
  fd?: number;
  offset?: number;
  /** A hint, or the exact place with MAP_FIXED. */
  address?: number;
  /**
   * false: no ArrayBuffer over the mapping (`buffer` is empty), so it may be larger than one view
   * can cover; the caller makes views of the parts it touches with viewAt.
   */
  view?: boolean;
}

export function memfdCreate(name: string, opts: { hugetlb?: boolean; allowSealing?: boolean } = {}): number {
  let flags = MFD_CLOEXEC;
  if (opts.allowSealing) flags |= MFD_ALLOW_SEALING;
  if (opts.hugetlb) flags |= MFD_HUGETLB;
  return check(memfdCreateNative(name, flags), 'memfd_create', name);
}

export function ftruncate(fd: number, size: number): void {
  if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`ftruncate fd ${fd}: bad size ${size}`);
  check(ftruncateNative(fd, size), 'ftruncate', `fd ${fd} to ${size} bytes`);
}

// File seals (fcntl F_ADD_SEALS / F_GET_SEALS, memfd_create(2)). fcntl is variadic; both commands
// take an int (or nothing), which this fixed prototype passes the same way on x86-64 and aarch64.
const fcntlSealNative = libc.func('int fcntl(int fd, int cmd, ...)');
const F_ADD_SEALS = 1033;
const F_GET_SEALS = 1034;
export const F_SEAL_SEAL = 0x0001;
export const F_SEAL_SHRINK = 0x0002;
export const F_SEAL_GROW = 0x0004;
export const F_SEAL_WRITE = 0x0008;

/** Seals on `fd`. Files that do not support sealing (hugetlbfs without MFD_ALLOW_SEALING, ext4, shm) give EINVAL. */
export function fileSeals(fd: number): number {
  return check(fcntlSealNative(fd, F_GET_SEALS, 'int', 0), 'fcntl', `F_GET_SEALS on fd ${fd}`);
}

/** Adds seals to a memfd created with `allowSealing` (EPERM once F_SEAL_SEAL is set). */
export function addSeals(fd: number, seals: number): void {
  check(fcntlSealNative(fd, F_ADD_SEALS, 'int', seals), 'fcntl', `F_ADD_SEALS 0x${seals.toString(16)} on fd ${fd}`);
}

const statBuffer = new BigInt64Array(18); // struct stat is 144 bytes on x86-64 and aarch64
const ST_SIZE_INDEX = 6; // st_size sits at byte 48 on both

export function fstatSize(fd: number): number {
  check(fstatNative(fd, statBuffer), 'fstat', `fd ${fd}`);
  return Number(statBuffer[ST_SIZE_INDEX]);
}

export function mmap(opts: MmapOptions): Mapping {
  const { length } = opts;
  if (!Number.isSafeInteger(length) || length <= 0) throw new RangeError(`mmap: bad length ${length}`);
  const view = opts.view ?? true;
  if (view && length > MAX_VIEW_BYTES) {
    throw new RangeError(`mmap: ${length} bytes is more than one view can cover (${MAX_VIEW_BYTES}); map with view: false or in pieces`);
  }
  const fd = opts.fd ?? -1;
  const offset = opts.offset ?? 0;
  const prot = opts.prot ?? PROT_READ | PROT_WRITE;
  let flags = opts.flags ?? MAP_SHARED;
  if (fd < 0) flags |= MAP_ANONYMOUS;
  const address = mmapNative(opts.address ?? 0, length, prot, flags, fd, offset) as number;
  if (address === MAP_FAILED) {
    throw new SysError('mmap', lastErrno(), `${length} bytes of ${fd < 0 ? 'anonymous memory' : `fd ${fd} at offset ${offset}`}`);
  }
  const buffer = prot === PROT_NONE || !view ? new ArrayBuffer(0) : viewAt(address, length);
  return { address, length, buffer };
}

/** Unmaps; every view of the mapping (in any thread) must be dropped first or it faults. */
export function munmap(mapping: { address: number; length: number }): void {
  check(munmapNative(mapping.address, mapping.length), 'munmap', `${mapping.length} bytes at 0x${mapping.address.toString(16)}`);
}

/** An ArrayBuffer over `length` bytes at `address`, mapped elsewhere in this process. */
export function viewAt(address: number, length: number): ArrayBuffer {
  if (!Number.isSafeInteger(address) || address <= 0) throw new RangeError(`viewAt: bad address ${address}`);
  if (!Number.isSafeInteger(length) || length <= 0 || length > MAX_VIEW_BYTES) throw new RangeError(`viewAt: bad length ${length}`);
  return koffi.view(BigInt(address), length);
}

export function madvise(mapping: { address: number; length: number }, advice: number): void {
  check(madviseNative(mapping.address, mapping.length, advice), 'madvise', `advice ${advice} on ${mapping.length} bytes at 0x${mapping.address.toString(16)}`);
}

/**
 * Binds the pages of `mapping` to NUMA node `node` (MPOL_BIND, moving pages already faulted in),
 * or prefers the node when `strict` is false.
 */
export function mbind(mapping: { address: number; length: number }, node: number, opts: { strict?: boolean } = {}): void {
  if (!Number.isInteger(node) || node < 0 || node >= 1024) throw new RangeError(`mbind: bad NUMA node ${node}`);
  const nodemask = new BigUint64Array(16);
  nodemask[node >> 6] = 1n << BigInt(node & 63);
  const mode = opts.strict === false ? MPOL_PREFERRED : MPOL_BIND;
  const ret = syscallNative(
    SYS_mbind,
    'uintptr_t', mapping.address,
    'size_t', mapping.length,
    'int', mode,
    'void *', nodemask,
    'size_t', 1024 + 1,
    'unsigned int', opts.strict === false ? 0 : MPOL_MF_MOVE,
  ) as number;
  check(Number(ret), 'mbind', `node ${node} for ${mapping.length} bytes at 0x${mapping.address.toString(16)}`);
}

const SYS_get_mempolicy = 239;
const MPOL_F_NODE = 1;
const MPOL_F_ADDR = 2;

/**
 * The NUMA node holding the page at `address` (it is faulted in if it was not), or -1 when the
 * kernel cannot tell (no NUMA support, unmapped address).
 */
export function numaNodeOfAddress(address: number): number {
  const node = new Int32Array(1);
  const ret = syscallNative(
    SYS_get_mempolicy,
    'void *', node,
    'void *', null,
    'size_t', 0,
    'uintptr_t', address,
    'unsigned int', MPOL_F_NODE | MPOL_F_ADDR,
  ) as number;
  return Number(ret) < 0 ? -1 : node[0];
}
