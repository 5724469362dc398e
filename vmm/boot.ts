// Kernel loading: a bzImage through the 64-bit boot protocol, an ELF vmlinux through its PVH entry
// (Xen ELF note PHYS32_ENTRY, 32-bit protected mode, hvm_start_info in RBX), or an ELF without
// that note entered in long mode at e_entry with boot_params in RSI. Everything here works on
// plain byte arrays so it can be tested without KVM.
import {
  BOOT_STACK_ADDR,
  CMDLINE_ADDR,
  CMDLINE_MAX,
  EBDA_START,
  FOUR_GIB,
  GDT_ADDR,
  HIGH_MEMORY_START,
  IDT_ADDR,
  KERNEL_LOAD_ADDR,
  MMIO_HOLE_START,
  PD_ADDR,
  PDPT_ADDR,
  PML4_ADDR,
  PVH_MEMMAP_ADDR,
  PVH_START_INFO_ADDR,
  ZERO_PAGE_ADDR,
} from './layout.js';

export const E820_RAM = 1;
export const E820_RESERVED = 2;

export interface E820Entry {
  addr: number;
  size: number;
  type: number;
}

/** Something that accepts guest-physical writes (guest RAM, or a test buffer). */
export interface GuestWriter {
  write(gpa: number, bytes: Uint8Array): void;
}

export type EntryState =
  | { mode: 'long'; rip: number; rsi: number }
  | { mode: 'pvh'; rip: number; rbx: number };

export interface KernelImage {
  format: 'bzimage' | 'elf-pvh' | 'elf64';
  entry: EntryState['rip'];
  /** Highest guest address the kernel occupies (to keep the initrd clear of it). */
  end: number;
  /** bzImage setup header bytes [0x1f1, end of header) to copy into the zero page. */
  setupHeader?: Uint8Array;
  initrdAddrMax: number;
  cmdlineSize: number;
  segments: Array<{ gpa: number; bytes: Uint8Array; memSize: number }>;
}

export function e820Map(ramSize: number): E820Entry[] {
  const low = Math.min(ramSize, MMIO_HOLE_START);
  const map: E820Entry[] = [
    { addr: 0, size: EBDA_START, type: E820_RAM },
    { addr: EBDA_START, size: HIGH_MEMORY_START - EBDA_START, type: E820_RESERVED },
    { addr: HIGH_MEMORY_START, size: low - HIGH_MEMORY_START, type: E820_RAM },
  ];
  if (ramSize > MMIO_HOLE_START) map.push({ addr: FOUR_GIB, size: ramSize - MMIO_HOLE_START, type: E820_RAM });
  return map;
}

function u16(b: Uint8Array, o: number): number {
  return b[o] | (b[o + 1] << 8);
}
function u32(b: Uint8Array, o: number): number {
  return (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)) >>> 0;
}
function u64(b: Uint8Array, o: number, what: string): number {
  const value = u32(b, o) + u32(b, o + 4) * 2 ** 32;
  if (!Number.isSafeInteger(value)) throw new Error(`${what}: 64-bit value at offset ${o} is too large`);
  return value;
}

const HDRS = 0x53726448;

export function parseKernel(image: Uint8Array, path = 'kernel'): KernelImage {
  if (image.length >= 4 && image[0] === 0x7f && image[1] === 0x45 && image[2] === 0x4c && image[3] === 0x46) {
    return parseElf(image, path);
  }
  if (image.length > 0x250 && u32(image, 0x202) === HDRS) return parseBzImage(image, path);
  throw new Error(`${path}: neither an ELF vmlinux nor a bzImage (no ELF magic, no "HdrS" at 0x202)`);
}

function parseBzImage(image: Uint8Array, path: string): KernelImage {
  const version = u16(image, 0x206);
  if (version < 0x020c) throw new Error(`${path}: boot protocol ${version.toString(16)} is older than 2.12 (no 64-bit entry)`);
  const xloadflags = u16(image, 0x236);
  if (!(xloadflags & 1)) throw new Error(`${path}: bzImage has no 64-bit entry point (XLF_KERNEL_64 not set)`);
  if (!(image[0x211] & 1)) throw new Error(`${path}: bzImage is not LOADED_HIGH`);
  const setupSects = image[0x1f1] === 0 ? 4 : image[0x1f1];
  const pmOffset = (setupSects + 1) * 512;
  if (pmOffset >= image.length) throw new Error(`${path}: setup_sects ${setupSects} points past the end of the file`);
  const headerEnd = 0x202 + image[0x201];
  const pm = image.subarray(pmOffset);
  const initSize = u32(image, 0x260);
  return {
    format: 'bzimage',
    entry: KERNEL_LOAD_ADDR + 0x200,
    end: KERNEL_LOAD_ADDR + Math.max(pm.length, initSize),
    setupHeader: image.slice(0x1f1, headerEnd),
    initrdAddrMax: u32(image, 0x22c) || 0x37ffffff,
    cmdlineSize: version >= 0x0206 ? u32(image, 0x238) : 255,
    segments: [{ gpa: KERNEL_LOAD_ADDR, bytes: pm, memSize: pm.length }],
  };
}

const PT_LOAD = 1;
const PT_NOTE = 4;
const XEN_ELFNOTE_PHYS32_ENTRY = 18;

function parseElf(image: Uint8Array, path: string): KernelImage {
  if (image[4] !== 2) throw new Error(`${path}: ELF is not 64-bit`);
  if (image[5] !== 1) throw new Error(`${path}: ELF is not little-endian`);
  if (u16(image, 18) !== 62) throw new Error(`${path}: ELF machine ${u16(image, 18)} is not x86-64`);
  const entry = u64(image, 24, path);
  const phoff = u64(image, 32, path);
  const phentsize = u16(image, 54);
  const phnum = u16(image, 56);
  if (phentsize < 56 || phoff + phnum * phentsize > image.length) throw new Error(`${path}: ELF program headers lie outside the file`);
  const segments: KernelImage['segments'] = [];
  let pvhEntry: number | undefined;
  let end = 0;
  for (let i = 0; i < phnum; i++) {
    const ph = phoff + i * phentsize;
    const type = u32(image, ph);
    const offset = u64(image, ph + 8, path);
    const paddr = u64(image, ph + 24, path);
    const filesz = u64(image, ph + 32, path);
    const memsz = u64(image, ph + 40, path);
    if (offset + filesz > image.length) throw new Error(`${path}: ELF segment ${i} lies outside the file`);
    if (type === PT_LOAD) {
      if (memsz < filesz) throw new Error(`${path}: ELF segment ${i} has memsz < filesz`);
      if (paddr < HIGH_MEMORY_START) throw new Error(`${path}: ELF segment ${i} loads at 0x${paddr.toString(16)}, below 1 MiB`);
      segments.push({ gpa: paddr, bytes: image.subarray(offset, offset + filesz), memSize: memsz });
      end = Math.max(end, paddr + memsz);
    } else if (type === PT_NOTE) {
      pvhEntry ??= findPvhEntry(image.subarray(offset, offset + filesz));
    }
  }
  if (segments.length === 0) throw new Error(`${path}: ELF has no loadable segment`);
  const common = { end, initrdAddrMax: 0x7fffffff, cmdlineSize: CMDLINE_MAX - 1, segments };
  if (pvhEntry !== undefined) return { format: 'elf-pvh', entry: pvhEntry, ...common };
  return { format: 'elf64', entry, ...common };
}

function findPvhEntry(notes: Uint8Array): number | undefined {
  let o = 0;
  while (o + 12 <= notes.length) {
    const namesz = u32(notes, o);
    const descsz = u32(notes, o + 4);
    const type = u32(notes, o + 8);
    const nameStart = o + 12;
    const descStart = nameStart + ((namesz + 3) & ~3);
    const next = descStart + ((descsz + 3) & ~3);
    if (next > notes.length) return undefined;
    const name = String.fromCharCode(...notes.subarray(nameStart, nameStart + Math.max(0, namesz - 1)));
    if (name === 'Xen' && type === XEN_ELFNOTE_PHYS32_ENTRY && descsz >= 4) return u32(notes, descStart);
    o = next;
  }
  return undefined;
}

export interface BootInput {
  kernel: KernelImage;
  cmdline: string;
  initrd?: Uint8Array;
  ramSize: number;
  rsdpAddress: number;
}

export interface BootLayout {
  entry: EntryState;
  initrdAddress?: number;
  e820: E820Entry[];
}

/** Writes kernel, initrd, command line, zero page or start info, GDT and page tables. */
export function loadKernel(mem: GuestWriter, input: BootInput): BootLayout {
  const { kernel, cmdline, initrd, ramSize } = input;
  const lowEnd = Math.min(ramSize, MMIO_HOLE_START);
  for (const seg of kernel.segments) {
    if (seg.gpa + seg.memSize > lowEnd) {
      throw new Error(`kernel: segment at 0x${seg.gpa.toString(16)} (+0x${seg.memSize.toString(16)}) does not fit in ${ramSize} bytes of RAM`);
    }
    mem.write(seg.gpa, seg.bytes);
    // Bytes between filesz and memsz (.bss) are already zero in fresh guest RAM.
  }
  const cmdBytes = new TextEncoder().encode(cmdline);
  if (cmdBytes.length > Math.min(kernel.cmdlineSize, CMDLINE_MAX - 1)) {
    throw new Error(`-append: the kernel command line is ${cmdBytes.length} bytes, the kernel accepts at most ${kernel.cmdlineSize}`);
  }
  const cmd = new Uint8Array(cmdBytes.length + 1);
  cmd.set(cmdBytes);
  mem.write(CMDLINE_ADDR, cmd);

  let initrdAddress: number | undefined;
  if (initrd && initrd.length > 0) {
    const top = Math.min(lowEnd, kernel.initrdAddrMax + 1);
    initrdAddress = Math.floor((top - initrd.length) / 4096) * 4096;
    if (initrdAddress < kernel.end) {
      throw new Error(`-initrd: ${initrd.length} bytes do not fit between the kernel (ends at 0x${kernel.end.toString(16)}) and 0x${top.toString(16)}; give more memory`);
    }
    mem.write(initrdAddress, initrd);
  }

  const e820 = e820Map(ramSize);
  writeGdt(mem);
  writePageTables(mem);

  if (kernel.format === 'elf-pvh') {
    writePvhStartInfo(mem, { cmdline: CMDLINE_ADDR, rsdp: input.rsdpAddress, e820, initrdAddress, initrdSize: initrd?.length ?? 0 });
    return { entry: { mode: 'pvh', rip: kernel.entry, rbx: PVH_START_INFO_ADDR }, initrdAddress, e820 };
  }
  const zeroPage = buildZeroPage(kernel, {
    cmdlineLength: cmdBytes.length,
    initrdAddress,
    initrdSize: initrd?.length ?? 0,
    e820,
    rsdpAddress: input.rsdpAddress,
  });
  mem.write(ZERO_PAGE_ADDR, zeroPage);
  return { entry: { mode: 'long', rip: kernel.entry, rsi: ZERO_PAGE_ADDR }, initrdAddress, e820 };
}

export function buildZeroPage(
  kernel: KernelImage,
  p: { cmdlineLength: number; initrdAddress?: number; initrdSize: number; e820: E820Entry[]; rsdpAddress: number },
): Uint8Array {
  const zp = new Uint8Array(4096);
  const v = new DataView(zp.buffer);
  if (kernel.setupHeader) zp.set(kernel.setupHeader, 0x1f1);
  else v.setUint32(0x230, 0x1000000, true); // kernel_alignment, as for an ELF vmlinux
  v.setBigUint64(0x070, BigInt(p.rsdpAddress), true);
  v.setUint16(0x1fa, 0xffff, true); // vid_mode "normal"
  v.setUint16(0x1fe, 0xaa55, true);
  v.setUint32(0x202, HDRS, true);
  zp[0x210] = 0xff; // type_of_loader: undefined
  zp[0x211] |= 1; // LOADED_HIGH
  v.setUint32(0x214, KERNEL_LOAD_ADDR, true);
  if (p.initrdAddress !== undefined) {
    v.setUint32(0x218, p.initrdAddress, true);
    v.setUint32(0x21c, p.initrdSize, true);
  }
  v.setUint32(0x228, CMDLINE_ADDR, true);
  v.setUint32(0x238, p.cmdlineLength, true);
  if (p.e820.length > 128) throw new Error('e820: more than 128 entries');
  zp[0x1e8] = p.e820.length;
  p.e820.forEach((e, i) => {
    v.setBigUint64(0x2d0 + i * 20, BigInt(e.addr), true);
    v.setBigUint64(0x2d0 + i * 20 + 8, BigInt(e.size), true);
    v.setUint32(0x2d0 + i * 20 + 16, e.type, true);
  });
  return zp;
}

function writePvhStartInfo(
  mem: GuestWriter,
  p: { cmdline: number; rsdp: number; e820: E820Entry[]; initrdAddress?: number; initrdSize: number },
): void {
  const info = new Uint8Array(56);
  const v = new DataView(info.buffer);
  v.setUint32(0, 0x336ec578, true);
  v.setUint32(4, 1, true);
  v.setBigUint64(24, BigInt(p.cmdline), true);
  v.setBigUint64(32, BigInt(p.rsdp), true);
  v.setBigUint64(40, BigInt(PVH_MEMMAP_ADDR), true);
  v.setUint32(48, p.e820.length, true);
  const modlistAddress = PVH_MEMMAP_ADDR + p.e820.length * 24;
  if (p.initrdAddress !== undefined) {
    v.setUint32(12, 1, true);
    v.setBigUint64(16, BigInt(modlistAddress), true);
    const mod = new Uint8Array(32);
    const mv = new DataView(mod.buffer);
    mv.setBigUint64(0, BigInt(p.initrdAddress), true);
    mv.setBigUint64(8, BigInt(p.initrdSize), true);
    mem.write(modlistAddress, mod);
  }
  const map = new Uint8Array(p.e820.length * 24);
  const mv = new DataView(map.buffer);
  p.e820.forEach((e, i) => {
    mv.setBigUint64(i * 24, BigInt(e.addr), true);
    mv.setBigUint64(i * 24 + 8, BigInt(e.size), true);
    mv.setUint32(i * 24 + 16, e.type, true);
  });
  mem.write(PVH_MEMMAP_ADDR, map);
  mem.write(PVH_START_INFO_ADDR, info);
}

/** GDT entries: null, 64-bit code (0x08), data (0x10), TSS (0x18), 32-bit code (0x20) for PVH. */
export const GDT = [0n, 0x00af9b000000ffffn, 0x00cf93000000ffffn, 0x008f8b000000ffffn, 0x00cf9b000000ffffn];

function writeGdt(mem: GuestWriter): void {
  const gdt = new Uint8Array(GDT.length * 8);
  const v = new DataView(gdt.buffer);
  GDT.forEach((e, i) => v.setBigUint64(i * 8, e, true));
  mem.write(GDT_ADDR, gdt);
  mem.write(IDT_ADDR, new Uint8Array(8));
}

/** Identity map of 0..4 GiB with 2 MiB pages, so the MMIO window is reachable from the start. */
function writePageTables(mem: GuestWriter): void {
  const pml4 = new Uint8Array(4096);
  new DataView(pml4.buffer).setBigUint64(0, BigInt(PDPT_ADDR | 3), true);
  mem.write(PML4_ADDR, pml4);
  const pdpt = new Uint8Array(4096);
  const pv = new DataView(pdpt.buffer);
  for (let i = 0; i < 4; i++) pv.setBigUint64(i * 8, BigInt((PD_ADDR + i * 0x1000) | 3), true);
  mem.write(PDPT_ADDR, pdpt);
  const pd = new Uint8Array(4 * 4096);
  const dv = new DataView(pd.buffer);
  for (let j = 0; j < 2048; j++) dv.setBigUint64(j * 8, (BigInt(j) << 21n) | 0x83n, true);
  mem.write(PD_ADDR, pd);
}

export { BOOT_STACK_ADDR };
