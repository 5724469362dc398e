// The memory an AF_XDP port registers as its UMEM. The kernel takes one range of this process's
// address space, so everything the port's sockets may name goes into one reservation:
//
//   [guest region 0][guest region 1]...[relay chunks of queue 0][relay chunks of queue 1]...
//
// Guest regions are the VM's memory files mapped here a second time (MAP_SHARED, the same pages
// the relay's own mapping shows), so a frame the guest wrote can be handed to the kernel by its
// offset in the UMEM, with no copy. The relay chunks are what the port owns: receive buffers and
// transmit chunks for frames that must be copied (checksums, segments, several pieces).
//
// Registering a UMEM pins every page of it for as long as a socket uses it: the guest's memory is
// then resident (it is with hugepages anyway) until the port is rebuilt for another memory table
// or the VM goes away. Nothing here is touched from user space through the second mapping; only
// the kernel reads it.
import { mmap, munmap, MAP_ANONYMOUS, MAP_FIXED, MAP_NORESERVE, MAP_POPULATE, MAP_PRIVATE, MAP_SHARED, PROT_NONE, PROT_READ, PROT_WRITE } from './memory.js';

const GIB = 2 ** 30;

/** A guest memory file as the relay has it mapped: from file offset 0, `length` bytes at `hostAddress`. */
export interface XdpGuestRegion {
  /** An fd of the file (the region's memfd or hugetlbfs file); only read here, never kept. */
  fd: number;
  /** Where the relay's own mapping of the file (from offset 0) starts: descriptors' host addresses point into it. */
  hostAddress: number;
  /** Bytes mapped from offset 0 (page-size aligned: the relay maps up to the region's end rounded up). */
  length: number;
}

/** Where a guest region sits in the UMEM: host address h in [hostAddress, hostAddress + length) is UMEM offset h − hostAddress + offset. */
export interface UmemGuestSlot {
  hostAddress: number;
  length: number;
  offset: number;
}

export interface UmemArea {
  /** The whole reservation (for munmap). */
  reservation: { address: number; length: number };
  /** The UMEM: `length` bytes from `address` (page-aligned, 1 GiB-aligned when guest memory is in it). */
  address: number;
  length: number;
  guestSlots: UmemGuestSlot[];
  /** The relay's chunks: UMEM offset, host address and length. */
  relay: { offset: number; address: number; length: number };
}

/**
 * Reserves address space for the guest regions and `relayLength` bytes of relay chunks, maps them
 * there, and returns the layout. Throws (with nothing left mapped) when a region cannot be mapped
 * again: a file that shrank, hugepages larger than the place found for them.
 */
export function buildUmemArea(relayLength: number, guest: readonly XdpGuestRegion[]): UmemArea {
  if (guest.length === 0) {
    const m = mmap({ length: relayLength, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED | MAP_POPULATE });
    return {
      reservation: { address: m.address, length: m.length },
      address: m.address,
      length: relayLength,
      guestSlots: [],
      relay: { offset: 0, address: m.address, length: relayLength },
    };
  }
  // Regions that are whole gigabytes go first: a file of 1 GiB hugepages must be mapped at a
  // 1 GiB boundary, and the others (2 MiB multiples) then keep each other's alignment.
  const order = [...guest].sort((a, b) => Number(b.length % GIB === 0) - Number(a.length % GIB === 0));
  const guestLength = order.reduce((sum, r) => sum + r.length, 0);
  const reservation = mmap({ length: guestLength + relayLength + GIB, prot: PROT_NONE, flags: MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, view: false });
  try {
    const base = Math.ceil(reservation.address / GIB) * GIB;
    const guestSlots: UmemGuestSlot[] = [];
    let at = 0;
    for (const r of order) {
      try {
        mmap({ length: r.length, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED | MAP_FIXED, fd: r.fd, offset: 0, address: base + at, view: false });
      } catch (err) {
        throw new Error(`guest memory (fd ${r.fd}, ${r.length} bytes) could not be mapped into the UMEM: ${(err as Error).message}`);
      }
      guestSlots.push({ hostAddress: r.hostAddress, length: r.length, offset: at });
      at += r.length;
    }
    mmap({ length: relayLength, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED | MAP_FIXED | MAP_POPULATE, address: base + at, view: false });
    // The slots are searched in the order of the relay's own addresses (see guestUmemOffset).
    guestSlots.sort((a, b) => a.hostAddress - b.hostAddress);
    return {
      reservation: { address: reservation.address, length: reservation.length },
      address: base,
      length: at + relayLength,
      guestSlots,
      relay: { offset: at, address: base + at, length: relayLength },
    };
  } catch (err) {
    munmap(reservation);
    throw err;
  }
}

export function releaseUmemArea(area: UmemArea): void {
  munmap(area.reservation);
}

/**
 * The UMEM offset of `length` bytes at host address `hostHi * 2^32 + hostLo` (in the relay's
 * mapping of guest memory), or −1 when they are not all inside one guest slot. The address comes
 * as two 32-bit words, the low one signed (`| 0`): this is called per frame, and an
 * address above 2^31 passed as one number to a function V8 does not inline is a heap number.
 */
export function guestUmemOffset(slots: readonly UmemGuestSlot[], hostLo: number, hostHi: number, length: number): number {
  const host = hostHi * 0x1_0000_0000 + (hostLo >>> 0);
  for (let i = 0; i < slots.length; i++) {
    const s = slots[i];
    const from = host - s.hostAddress;
    if (from >= 0 && from + length <= s.length) return s.offset + from;
  }
  return -1;
}
