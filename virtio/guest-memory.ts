// Guest memory as the device sees it: a handful of mapped regions, each known by its
// guest-physical address (what descriptors carry) and its front-end user address (what
// SET_VRING_ADDR carries). Every access from the data path goes through a bounds check here,
// because every address we translate came from a guest we do not trust.

export const DIRTY_PAGE_SIZE = 4096;

export interface MemoryRegion {
  /** Guest-physical address of the first byte. */
  readonly guestPhysAddr: number;
  /** Length in bytes; `bytes.length` must equal it. */
  readonly size: number;
  /** Front-end process virtual address of the first byte (vhost-user "userspace_addr"). */
  readonly userAddr: number;
  /** Host view of the region: exactly `size` bytes. */
  readonly bytes: Uint8Array;
  /**
   * Host virtual address of the first byte, where the region is mapped in this process (absent
   * for memory the tests build in JS arrays): what the kernel is handed to read guest frames from.
   */
  readonly hostAddress?: number;
}

/** A host location: `bytes[offset]` is the first byte of the translated range. */
export interface HostLocation {
  bytes: Uint8Array;
  offset: number;
}

/** One piece of a guest range that lies in a single region. */
export interface MemorySegment extends HostLocation {
  guestPhysAddr: number;
  length: number;
}

export interface RegionWords {
  /** Bytes between the 4-byte boundary the views start at and the region's first byte. */
  lead: number;
  u32: Uint32Array;
}

/**
 * The largest host view one MemoryRegion gets. A typed array cannot cover more than 4 GiB, and a
 * front-end's region can be far larger (a VM's RAM above 4 GiB is one region), so a large region
 * is described as consecutive pieces of this size. Descriptors that straddle two pieces are
 * split like those that straddle two regions; rings and indirect tables are page-allocated by
 * guests and never straddle a 1 GiB boundary.
 */
export const REGION_VIEW_BYTES = 2 ** 30;

/** A front-end region as the host has mapped it: `size` bytes at `hostAddress`. */
export interface HostRegion {
  guestPhysAddr: number;
  userAddr: number;
  size: number;
  hostAddress: number;
}

/**
 * Cuts regions into pieces of at most REGION_VIEW_BYTES, each with its own view made by
 * `viewOf(hostAddress, length)`. The pieces keep their host address (for translation tables).
 */
export function regionPieces(regions: readonly HostRegion[], viewOf: (hostAddress: number, length: number) => Uint8Array): (MemoryRegion & { hostAddress: number })[] {
  const pieces: (MemoryRegion & { hostAddress: number })[] = [];
  for (const r of regions) {
    for (let at = 0; at < r.size; at += REGION_VIEW_BYTES) {
      const size = Math.min(REGION_VIEW_BYTES, r.size - at);
      pieces.push({ guestPhysAddr: r.guestPhysAddr + at, userAddr: r.userAddr + at, size, hostAddress: r.hostAddress + at, bytes: viewOf(r.hostAddress + at, size) });
    }
  }
  return pieces;
}

function describeRegion(r: MemoryRegion): string {
  return `[gpa 0x${r.guestPhysAddr.toString(16)}, size 0x${r.size.toString(16)}, ua 0x${r.userAddr.toString(16)}]`;
}

function isAddress(value: number): boolean {
  return Number.isSafeInteger(value) && value >= 0;
}

export class GuestMemory {
  /** Regions sorted by guest-physical address. */
  readonly regions: readonly MemoryRegion[];
  /** Start and end (exclusive) guest-physical addresses, parallel to `regions`, for the binary search. */
  private readonly gpaStart: Float64Array;
  private readonly gpaEnd: Float64Array;
  /** Region indexes sorted by user address, with their bounds. */
  private readonly uaOrder: Int32Array;
  private readonly uaStart: Float64Array;
  private readonly uaEnd: Float64Array;
  /** Most chains land in the region the previous descriptor used. */
  private lastHit = 0;
  private dirtyLog: Uint8Array | null = null;
  private readonly words: (RegionWords | undefined)[] = [];

  constructor(regions: readonly MemoryRegion[]) {
    if (regions.length === 0) throw new Error('guest memory: the region table is empty');
    for (const r of regions) {
      if (!isAddress(r.guestPhysAddr) || !isAddress(r.userAddr) || !isAddress(r.size)) {
        throw new Error(`guest memory: region ${describeRegion(r)} has an address or size that is not a safe non-negative integer`);
      }
      if (r.size === 0) throw new Error(`guest memory: region ${describeRegion(r)} is empty`);
      if (r.guestPhysAddr + r.size > Number.MAX_SAFE_INTEGER || r.userAddr + r.size > Number.MAX_SAFE_INTEGER) {
        throw new Error(`guest memory: region ${describeRegion(r)} overflows the address space`);
      }
      if (!(r.bytes instanceof Uint8Array) || r.bytes.length !== r.size) {
        throw new Error(`guest memory: region ${describeRegion(r)} has a host view of ${r.bytes?.length} bytes instead of ${r.size}`);
      }
    }
    const sorted = [...regions].sort((a, b) => a.guestPhysAddr - b.guestPhysAddr);
    for (let i = 1; i < sorted.length; i++) {
      const prev = sorted[i - 1]!;
      const cur = sorted[i]!;
      if (prev.guestPhysAddr + prev.size > cur.guestPhysAddr) {
        throw new Error(`guest memory: regions ${describeRegion(prev)} and ${describeRegion(cur)} overlap in guest-physical space`);
      }
    }
    const byUa = sorted.map((r, i) => ({ r, i })).sort((a, b) => a.r.userAddr - b.r.userAddr);
    for (let k = 1; k < byUa.length; k++) {
      const prev = byUa[k - 1]!.r;
      const cur = byUa[k]!.r;
      if (prev.userAddr + prev.size > cur.userAddr) {
        throw new Error(`guest memory: regions ${describeRegion(prev)} and ${describeRegion(cur)} overlap in user address space`);
      }
    }
    // Not frozen: V8 (Node 20) does not inline an element load from a frozen array, so each
    // `regions[i]` of the chain walk was a call into its keyed-load IC, half of the relay's
    // samples NF→VM. `readonly` in the type keeps writers away.
    this.regions = sorted;
    this.gpaStart = Float64Array.from(sorted, (r) => r.guestPhysAddr);
    this.gpaEnd = Float64Array.from(sorted, (r) => r.guestPhysAddr + r.size);
    this.uaOrder = Int32Array.from(byUa, (e) => e.i);
    this.uaStart = Float64Array.from(byUa, (e) => e.r.userAddr);
    this.uaEnd = Float64Array.from(byUa, (e) => e.r.userAddr + e.r.size);
  }

  /**
   * Index of the region containing guest-physical address `gpa`, or -1. Allocation-free; the
   * chain walker uses it with `regions[i]` to translate without building result objects.
   */
  regionIndexOf(gpa: number): number {
    const hit = this.lastHit;
    if (gpa >= this.gpaStart[hit]! && gpa < this.gpaEnd[hit]!) return hit;
    let lo = 0;
    let hi = this.gpaStart.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if (gpa < this.gpaStart[mid]!) hi = mid - 1;
      else if (gpa >= this.gpaEnd[mid]!) lo = mid + 1;
      else {
        this.lastHit = mid;
        return mid;
      }
    }
    return -1;
  }

  /** Index of the region that holds all of `[gpa, gpa+len)`, or -1 (hole, straddle, overflow). */
  regionIndexOfRange(gpa: number, len: number): number {
    if (!(len >= 0) || gpa > Number.MAX_SAFE_INTEGER - len) return -1;
    const i = this.regionIndexOf(gpa);
    if (i < 0 || gpa + len > this.gpaEnd[i]!) return -1;
    return i;
  }

  /**
   * A 32-bit view over region `index`, created once, for reading descriptors of indirect
   * tables without a DataView. Word `k` of `u32` covers bytes `[4k - lead, 4k - lead + 4)` of the
   * region, where `lead` is how far the region's host view starts past a 4-byte boundary.
   */
  regionWords(index: number): RegionWords {
    let words = this.words[index];
    if (words === undefined) {
      const bytes = this.regions[index]!.bytes;
      const lead = bytes.byteOffset % 4;
      const start = bytes.byteOffset - lead;
      const span = lead + bytes.length;
      words = {
        lead,
        u32: new Uint32Array(bytes.buffer, start, Math.floor(span / 4)),
      };
      this.words[index] = words;
    }
    return words;
  }

  /** End (exclusive) guest-physical address of region `index`. */
  regionEnd(index: number): number {
    return this.gpaEnd[index]!;
  }

  /** Host location of `[gpa, gpa+len)` when it lies inside one region, else null. */
  translate(gpa: number, len: number): HostLocation | null {
    const i = this.regionIndexOfRange(gpa, len);
    if (i < 0) return null;
    const r = this.regions[i]!;
    return { bytes: r.bytes, offset: gpa - r.guestPhysAddr };
  }

  /** Host location of the front-end user range `[ua, ua+len)` when it lies inside one region, else null. */
  userToHost(ua: number, len: number): HostLocation | null {
    const i = this.userRegionIndexOfRange(ua, len);
    if (i < 0) return null;
    const r = this.regions[i]!;
    return { bytes: r.bytes, offset: ua - r.userAddr };
  }

  /** Guest-physical address of front-end user address `ua` (for rings given by user address), or null. */
  userToGuest(ua: number, len = 1): number | null {
    const i = this.userRegionIndexOfRange(ua, len);
    if (i < 0) return null;
    const r = this.regions[i]!;
    return r.guestPhysAddr + (ua - r.userAddr);
  }

  private userRegionIndexOfRange(ua: number, len: number): number {
    if (!isAddress(ua) || !(len >= 0) || ua > Number.MAX_SAFE_INTEGER - len) return -1;
    let lo = 0;
    let hi = this.uaStart.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if (ua < this.uaStart[mid]!) hi = mid - 1;
      else if (ua >= this.uaEnd[mid]!) lo = mid + 1;
      else return ua + len <= this.uaEnd[mid]! ? this.uaOrder[mid]! : -1;
    }
    return -1;
  }

  /**
   * Splits `[gpa, gpa+len)` into per-region pieces, for ranges that straddle adjacent regions.
   * Returns null when any byte falls in a hole or the range overflows. Control-path helper: the
   * chain walker does the same split into its preallocated arrays.
   */
  segments(gpa: number, len: number, out: MemorySegment[] = []): MemorySegment[] | null {
    out.length = 0;
    if (!isAddress(gpa) || !(len >= 0) || gpa > Number.MAX_SAFE_INTEGER - len) return null;
    let addr = gpa;
    let left = len;
    while (left > 0) {
      const i = this.regionIndexOf(addr);
      if (i < 0) return null;
      const r = this.regions[i]!;
      const take = Math.min(left, this.gpaEnd[i]! - addr);
      out.push({ guestPhysAddr: addr, length: take, bytes: r.bytes, offset: addr - r.guestPhysAddr });
      addr += take;
      left -= take;
    }
    return out;
  }

  /**
   * Installs (or removes, with null) the dirty-page bitmap shared with the front-end: one bit per
   * 4 KiB page of guest-physical space from address 0.
   */
  setDirtyLog(bitmap: Uint8Array | null): void {
    this.dirtyLog = bitmap;
  }

  get dirtyLogging(): boolean {
    return this.dirtyLog !== null;
  }

  /**
   * Marks the pages of `[gpa, gpa+len)` dirty. The front-end reads the bitmap concurrently, so
   * each byte is updated with an atomic OR. Pages beyond the bitmap are ignored, as the front-end
   * sized the bitmap for the memory it cares about.
   */
  markDirty(gpa: number, len: number): void {
    const log = this.dirtyLog;
    if (log === null || len <= 0) return;
    const first = Math.floor(gpa / DIRTY_PAGE_SIZE);
    const last = Math.min(Math.floor((gpa + len - 1) / DIRTY_PAGE_SIZE), log.length * 8 - 1);
    for (let page = first; page <= last; ) {
      const byteIndex = Math.floor(page / 8);
      const firstBit = page % 8;
      const lastBit = Math.min(7, firstBit + (last - page));
      const mask = ((0xff << firstBit) & (0xff >> (7 - lastBit))) & 0xff;
      // Skip the atomic when the bits are already set: most writes hit pages marked moments ago.
      if ((log[byteIndex]! & mask) !== mask) Atomics.or(log, byteIndex, mask);
      page += lastBit - firstBit + 1;
    }
  }
}
