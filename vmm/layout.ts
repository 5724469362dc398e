// Guest physical memory map (Firecracker's shape, with a 4 GiB identity map so that a guest can
// touch the MMIO window from the boot page tables).

export const GDT_ADDR = 0x500;
export const IDT_ADDR = 0x520;
export const PVH_START_INFO_ADDR = 0x6000;
export const PVH_MEMMAP_ADDR = 0x6100;
export const ZERO_PAGE_ADDR = 0x7000;
export const BOOT_STACK_ADDR = 0x8ff0;
export const PML4_ADDR = 0x9000;
export const PDPT_ADDR = 0xa000;
/** Four page directories (0xb000..0xefff) map 0..4 GiB with 2 MiB pages. */
export const PD_ADDR = 0xb000;
export const CMDLINE_ADDR = 0x20000;
export const CMDLINE_MAX = 0x10000;
export const EBDA_START = 0x9fc00;
export const ACPI_TABLES_ADDR = 0xa0000;
export const RSDP_ADDR = 0xe0000;
export const HIGH_MEMORY_START = 0x100000;
export const KERNEL_LOAD_ADDR = 0x100000;

/** Guest RAM below this address; the rest of RAM starts at 4 GiB. */
export const MMIO_HOLE_START = 0xc000_0000;
export const MMIO_HOLE_END = 0x1_0000_0000;
export const FOUR_GIB = 0x1_0000_0000;

export const VIRTIO_MMIO_BASE = 0xd000_0000;
export const VIRTIO_MMIO_SIZE = 0x1000;
export const VIRTIO_MMIO_FIRST_GSI = 5;

export const IOAPIC_ADDR = 0xfec0_0000;
export const LAPIC_ADDR = 0xfee0_0000;
export const TSS_ADDR = 0xfffb_d000;
export const IDENTITY_MAP_ADDR = 0xfffb_c000;

export const SERIAL_PORT = 0x3f8;
export const SERIAL_GSI = 4;
export const I8042_DATA_PORT = 0x60;
export const I8042_COMMAND_PORT = 0x64;
export const I8042_GSI = 1;
/** ACPI hardware-reduced sleep control/status registers (one byte each), as cloud-hypervisor does. */
export const ACPI_SLEEP_CONTROL_PORT = 0x600;
export const ACPI_SLEEP_STATUS_PORT = 0x601;
export const ACPI_RESET_PORT = 0x602;
export const ACPI_RESET_VALUE = 0x42;

export function virtioMmioAddress(index: number): number {
  return VIRTIO_MMIO_BASE + index * VIRTIO_MMIO_SIZE;
}

export function virtioMmioGsi(index: number): number {
  return VIRTIO_MMIO_FIRST_GSI + index;
}

export interface RamRange {
  guestPhysAddr: number;
  size: number;
}

/** Where `size` bytes of RAM go in guest physical space: below the MMIO hole, then from 4 GiB. */
export function ramRanges(size: number): RamRange[] {
  if (size <= MMIO_HOLE_START) return [{ guestPhysAddr: 0, size }];
  return [
    { guestPhysAddr: 0, size: MMIO_HOLE_START },
    { guestPhysAddr: FOUR_GIB, size: size - MMIO_HOLE_START },
  ];
}

/** Maps a RAM offset (0..size) to a guest physical address. */
export function ramOffsetToGpa(offset: number): number {
  return offset < MMIO_HOLE_START ? offset : offset - MMIO_HOLE_START + FOUR_GIB;
}
