// Mapping a SET_MEM_TABLE into this process, and locating vrings inside it.
// Regions are mapped like DPDK does: from file offset 0 up to mmap_offset+size rounded up to the huge
// page size (hugetlbfs refuses unaligned lengths), MAP_SHARED, then the region starts at
// mapping + mmap_offset.
import { MAP_SHARED, PROT_READ, PROT_WRITE, fstatSize, mmap, munmap, viewAt, type Mapping } from '../sys/memory.js';
import { close as closeFd, dup } from '../sys/fd.js';
import { GuestMemory, regionPieces } from '../virtio/guest-memory.js';
import type { RingLocation, SessionMemory, SessionRegion } from './device.js';
import type { MemRegionDesc } from './messages.js';

const MIB2 = 2 * 1024 * 1024;
const GIB = 1024 * 1024 * 1024;

export function alignUp(value: number, alignment: number): number {
  return Math.ceil(value / alignment) * alignment;
}

/**
 * A region's mapping, with a duplicate of its file's fd kept as long as the mapping: an AF_XDP
 * port maps the same file again to make the guest's memory part of its UMEM.
 */
export interface RegionMapping extends Mapping {
  fd: number;
}

export interface MappedTable extends SessionMemory {
  readonly descs: readonly MemRegionDesc[];
  readonly mappings: readonly RegionMapping[];
}

function mapRegion(desc: MemRegionDesc, fd: number, i: number): RegionMapping {
  const fileSize = fstatSize(fd);
  const end = desc.mmapOffset + desc.size;
  // A region that reaches past the end of its file would fault (SIGBUS) on first touch.
  if (end > fileSize) {
    throw new Error(`memory region ${i}: offset 0x${desc.mmapOffset.toString(16)} + size 0x${desc.size.toString(16)} exceeds its file (0x${fileSize.toString(16)} bytes)`);
  }
  let lastError: unknown;
  for (const alignment of [MIB2, GIB]) {
    try {
      // No view over the whole mapping: a region may be larger than one typed array can cover;
      // GuestMemory gets views of at most REGION_VIEW_BYTES each.
      const mapping = mmap({ length: alignUp(end, alignment), prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED, fd, offset: 0, view: false });
      // The file may have shrunk between the fstat and the mmap (an unsealed file, see
      // memory-seals.ts): check again before anyone touches the mapping.
      const sizeNow = fstatSize(fd);
      if (end > sizeNow) {
        unmapQuietly({ ...mapping, fd: -1 });
        throw new Error(`memory region ${i}: its file shrank to 0x${sizeNow.toString(16)} bytes while being mapped (region ends at 0x${end.toString(16)})`);
      }
      try {
        return { ...mapping, fd: dup(fd) };
      } catch (err) {
        unmapQuietly({ ...mapping, fd: -1 });
        throw err;
      }
    } catch (err) {
      // EINVAL: hugetlbfs with pages larger than the alignment tried; retry with 1 GiB.
      lastError = err;
      if ((err as { code?: string }).code !== 'EINVAL') break;
    }
  }
  throw new Error(`memory region ${i}: mmap of 0x${alignUp(end, MIB2).toString(16)} bytes failed: ${(lastError as Error).message}`);
}

/** Maps every region; on failure unmaps what was mapped and throws. The caller still owns the fds. */
export function mapTable(descs: readonly MemRegionDesc[], fds: readonly number[]): MappedTable {
  const mappings: RegionMapping[] = [];
  try {
    descs.forEach((d, i) => mappings.push(mapRegion(d, fds[i], i)));
    return assemble(descs, mappings);
  } catch (err) {
    for (const m of mappings) unmapQuietly(m);
    throw err;
  }
}

/** The table's regions with its memory view, built from regions already mapped. */
function assemble(descs: readonly MemRegionDesc[], mappings: readonly RegionMapping[]): MappedTable {
  const regions: SessionRegion[] = descs.map((d, i) => ({
    guestPhysAddr: d.guestPhysAddr,
    size: d.size,
    userAddr: d.userAddr,
    hostAddress: mappings[i].address + d.mmapOffset,
    mappingAddress: mappings[i].address,
    mmapLength: mappings[i].length,
    mmapOffset: d.mmapOffset,
    fd: mappings[i].fd,
  }));
  const memory = new GuestMemory(regionPieces(regions, (address, length) => new Uint8Array(viewAt(address, length))));
  return { descs, mappings, regions, memory };
}

/**
 * ADD_MEM_REG: the table with one more region, mapped from `fd`; the other regions keep their
 * mappings. Throws (with nothing left mapped) for a region that overlaps another or a table that
 * would pass `maxRegions`.
 */
export function tableWithRegion(table: MappedTable | null, desc: MemRegionDesc, fd: number, maxRegions: number): MappedTable {
  const descs = [...(table?.descs ?? []), desc];
  if (descs.length > maxRegions) throw new Error(`ADD_MEM_REG: the table already has ${descs.length - 1} regions, at most ${maxRegions} are allowed`);
  const mapping = mapRegion(desc, fd, descs.length - 1);
  try {
    return assemble(descs, [...(table?.mappings ?? []), mapping]);
  } catch (err) {
    unmapQuietly(mapping);
    throw err;
  }
}

/**
 * REM_MEM_REG: the table without the region of the same guest address, size and user address,
 * or null when that was the last one; undefined when no region matches.
 */
export function tableWithoutRegion(table: MappedTable, desc: MemRegionDesc): MappedTable | null | undefined {
  const i = table.descs.findIndex((d) => d.guestPhysAddr === desc.guestPhysAddr && d.size === desc.size && d.userAddr === desc.userAddr);
  if (i < 0) return undefined;
  if (table.descs.length === 1) return null;
  return assemble(table.descs.filter((_, k) => k !== i), table.mappings.filter((_, k) => k !== i));
}

/** Unmaps what `old` mapped and `current` no longer uses (tables share unchanged regions). */
export function unmapReplaced(old: MappedTable, current: MappedTable | null): void {
  const kept = new Set(current?.mappings ?? []);
  for (const m of old.mappings) if (!kept.has(m)) unmapQuietly(m);
}

function unmapQuietly(m: RegionMapping): void {
  try {
    munmap(m);
  } catch {
    /* nothing more can be done about a failed munmap */
  }
  if (m.fd >= 0) {
    try {
      closeFd(m.fd);
    } catch {
      /* the mapping is gone; the fd's fate changes nothing */
    }
  }
}

export function unmapTable(table: MappedTable): void {
  for (const m of table.mappings) unmapQuietly(m);
}

/** DPDK short-circuits a re-sent identical table; so do we (the fds may differ, the memory does not). */
export function sameTable(a: readonly MemRegionDesc[], b: readonly MemRegionDesc[]): boolean {
  return (
    a.length === b.length &&
    a.every((r, i) => r.guestPhysAddr === b[i].guestPhysAddr && r.size === b[i].size && r.userAddr === b[i].userAddr && r.mmapOffset === b[i].mmapOffset)
  );
}

/** used->idx of a used ring at `usedHostAddress` (it follows the 2-byte flags). */
export function readUsedIdx(usedHostAddress: number): number {
  return new DataView(viewAt(usedHostAddress + 2, 2)).getUint16(0, true);
}

/** Locates `length` bytes at front-end address `userAddr` inside one region, or explains why not. */
export function locateUserRange(table: MappedTable, userAddr: number, length: number, alignment: number, what: string): RingLocation {
  if (userAddr % alignment !== 0) throw new Error(`${what} at 0x${userAddr.toString(16)} is not ${alignment}-byte aligned`);
  for (let i = 0; i < table.regions.length; i++) {
    const r = table.regions[i];
    if (userAddr >= r.userAddr && userAddr < r.userAddr + r.size) {
      if (userAddr + length > r.userAddr + r.size) {
        throw new Error(`${what} at 0x${userAddr.toString(16)} (+0x${length.toString(16)}) crosses the end of memory region ${i}`);
      }
      const offset = userAddr - r.userAddr;
      return { userAddr, region: i, offset, hostAddress: r.hostAddress + offset };
    }
  }
  throw new Error(`${what} at 0x${userAddr.toString(16)} is outside every memory region`);
}
