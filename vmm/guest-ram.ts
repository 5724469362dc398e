// Guest RAM backends: private anonymous memory, memfd (shared), hugetlbfs files (-mem-path or a
// zone's file=), memfd with MFD_HUGETLB, and per-zone NUMA binding and KSM merging. Zones are laid
// out one after another in RAM order; the RAM is then cut around the 32-bit MMIO hole into the
// slots KVM and vhost-user see.
import { closeSync, mkdtempSync, openSync, readFileSync, rmdirSync, statSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import {
  MADV_DONTDUMP,
  MADV_MERGEABLE,
  MAP_NORESERVE,
  MAP_PRIVATE,
  MAP_SHARED,
  madvise,
  mbind,
  memfdCreate,
  ftruncate,
  fstatSize,
  mmap,
  viewAt,
  MAX_VIEW_BYTES,
  type Mapping,
} from '../sys/memory.js';
import type { MemoryConfig, MemoryZoneConfig } from './config-types.js';
import { FOUR_GIB, MMIO_HOLE_START } from './layout.js';

export interface RamZone {
  id: string;
  size: number;
  /** Offset of the zone's first byte in RAM order (before the MMIO hole is cut out). */
  ramOffset: number;
  mapping: Mapping;
  /** The fd behind the mapping, or -1 for anonymous private memory. */
  fd: number;
  shared: boolean;
  hostNumaNode?: number;
}

export interface RamRegion {
  guestPhysAddr: number;
  size: number;
  userAddr: number;
  fd: number;
  /** Offset of this region in `fd` (vhost-user mmap_offset). */
  fdOffset: number;
  zoneId: string;
}

export interface GuestRam {
  size: number;
  zones: RamZone[];
  regions: RamRegion[];
  shared: boolean;
}

export function defaultHugepageSize(): number {
  const m = /Hugepagesize:\s+(\d+) kB/.exec(readFileSync('/proc/meminfo', 'utf8'));
  return m ? Number(m[1]) * 1024 : 2 * 1024 * 1024;
}

function zonesOf(config: MemoryConfig): MemoryZoneConfig[] {
  if (config.zones.length > 0) return config.zones;
  return [
    {
      id: 'ram',
      size: config.size,
      file: config.memPath,
      shared: config.shared,
      hugepages: config.hugepages,
      hugepageSize: config.hugepageSize,
    },
  ];
}

/** Opens the file that backs a zone: the file itself, or an unlinked temporary file in a directory. */
function openBackingFile(path: string, size: number, what: string): number {
  let isDirectory: boolean;
  try {
    isDirectory = statSync(path).isDirectory();
  } catch (err) {
    throw new Error(`${what}: ${path} cannot be used (${(err as NodeJS.ErrnoException).code ?? err})`);
  }
  let fd: number;
  if (isDirectory) {
    // Node has no O_TMPFILE; a file created in a private directory and unlinked at once is equivalent.
    const dir = mkdtempSync(join(path, 'vio4wd-vmm-'));
    const file = join(dir, 'ram');
    fd = openSync(file, 'w+', 0o600);
    unlinkSync(file);
    rmdirSync(dir);
  } else {
    fd = openSync(path, 'r+');
  }
  const current = fstatSize(fd);
  if (current < size) {
    try {
      ftruncate(fd, size);
    } catch (err) {
      closeSync(fd);
      throw new Error(`${what}: cannot size ${path} to ${size} bytes (${(err as Error).message}); on hugetlbfs check that enough huge pages are free`);
    }
  }
  return fd;
}

export interface GuestRamOptions {
  /** false (dump-guest-core=off, -omit_vm_memory): guest RAM is left out of a core dump of the VMM. */
  dumpGuestCore?: boolean;
}

function mapZone(zone: MemoryZoneConfig, mergeable: boolean, dumpGuestCore: boolean): { mapping: Mapping; fd: number } {
  const what = `memory zone ${zone.id}`;
  if (zone.hugepages && zone.hugepageSize !== undefined && !zone.file) {
    const systemSize = defaultHugepageSize();
    if (zone.hugepageSize !== systemSize) {
      throw new Error(`${what}: hugepage_size ${zone.hugepageSize} differs from the host default ${systemSize}; use a hugetlbfs mount with file=`);
    }
  }
  let fd = -1;
  if (zone.file) fd = openBackingFile(zone.file, zone.size, what);
  else if (zone.shared || zone.hugepages) {
    try {
      fd = memfdCreate(`vio4wd-${zone.id}`, { hugetlb: zone.hugepages });
      ftruncate(fd, zone.size);
    } catch (err) {
      if (fd >= 0) closeSync(fd);
      throw new Error(`${what}: cannot create ${zone.hugepages ? 'hugetlb ' : ''}memfd of ${zone.size} bytes (${(err as Error).message})`);
    }
  }
  let mapping: Mapping;
  try {
    // No view over the whole zone: one view covers at most 4 GiB, and the VMM itself only writes
    // the boot data (guestSlice makes views of just those ranges). Private RAM is not reserved
    // against the commit limit up front: a guest touches only part of it, as with memfd RAM.
    mapping = mmap({ length: zone.size, fd, flags: zone.shared ? MAP_SHARED : MAP_PRIVATE | (fd < 0 ? MAP_NORESERVE : 0), view: false });
  } catch (err) {
    if (fd >= 0) closeSync(fd);
    throw new Error(`${what}: cannot map ${zone.size} bytes (${(err as Error).message})${zone.hugepages ? '; are enough huge pages reserved?' : ''}`);
  }
  if (mergeable) {
    try {
      madvise(mapping, MADV_MERGEABLE);
    } catch (err) {
      throw new Error(`${what}: mergeable=on failed (${(err as Error).message}); is the kernel built with KSM?`);
    }
  }
  if (!dumpGuestCore) {
    try {
      madvise(mapping, MADV_DONTDUMP);
    } catch (err) {
      throw new Error(`${what}: cannot leave guest RAM out of core dumps (${(err as Error).message})`);
    }
  }
  if (zone.hostNumaNode !== undefined) {
    try {
      mbind(mapping, zone.hostNumaNode);
    } catch (err) {
      throw new Error(`${what}: cannot bind to host NUMA node ${zone.hostNumaNode} (${(err as Error).message})`);
    }
  }
  return { mapping, fd };
}

export function createGuestRam(config: MemoryConfig, options: GuestRamOptions = {}): GuestRam {
  const zones: RamZone[] = [];
  let ramOffset = 0;
  for (const zone of zonesOf(config)) {
    const { mapping, fd } = mapZone(zone, config.mergeable, options.dumpGuestCore ?? true);
    zones.push({ id: zone.id, size: zone.size, ramOffset, mapping, fd, shared: zone.shared, hostNumaNode: zone.hostNumaNode });
    ramOffset += zone.size;
  }
  const regions: RamRegion[] = [];
  for (const zone of zones) {
    // Cut the zone where RAM order crosses the start of the MMIO hole.
    const pieces: Array<[number, number]> = [];
    const start = zone.ramOffset;
    const end = zone.ramOffset + zone.size;
    if (start < MMIO_HOLE_START && end > MMIO_HOLE_START) {
      pieces.push([start, MMIO_HOLE_START], [MMIO_HOLE_START, end]);
    } else pieces.push([start, end]);
    for (const [from, to] of pieces) {
      const inZone = from - zone.ramOffset;
      const gpa = from < MMIO_HOLE_START ? from : from - MMIO_HOLE_START + FOUR_GIB;
      regions.push({
        guestPhysAddr: gpa,
        size: to - from,
        userAddr: zone.mapping.address + inZone,
        fd: zone.fd,
        fdOffset: inZone,
        zoneId: zone.id,
      });
    }
  }
  return { size: ramOffset, zones, regions, shared: zones.every((z) => z.shared) };
}

/** The host bytes of [gpa, gpa+len) when the range lies in one region (a view of just them); throws otherwise. */
export function guestSlice(ram: GuestRam, gpa: number, length: number, what: string): Uint8Array {
  for (const r of ram.regions) {
    if (gpa >= r.guestPhysAddr && gpa + length <= r.guestPhysAddr + r.size) {
      if (length === 0) return new Uint8Array(0);
      if (length > MAX_VIEW_BYTES) throw new Error(`${what}: ${length} bytes is more than one view can cover`);
      return new Uint8Array(viewAt(r.userAddr + (gpa - r.guestPhysAddr), length));
    }
  }
  throw new Error(`${what}: guest range [0x${gpa.toString(16)}, +0x${length.toString(16)}) is not inside guest RAM`);
}

export function writeGuest(ram: GuestRam, gpa: number, data: Uint8Array, what: string): void {
  guestSlice(ram, gpa, data.length, what).set(data);
}

/** The end of the RAM below the MMIO hole (where the initrd goes). */
export function lowRamEnd(ram: GuestRam): number {
  return Math.min(ram.size, MMIO_HOLE_START);
}
