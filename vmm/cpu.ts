// Per-vCPU register state: CPUID patched from KVM's supported list, boot MSRs, and the register
// and segment state for the long-mode (bzImage / ELF64) or 32-bit PVH entry.
import { existsSync } from 'node:fs';
import { CPUID_ENTRY_SIZE, FPU_SIZE, KVM_CPUID_FLAG_SIGNIFICANT_INDEX, REGS_SIZE } from '../sys/kvm.js';
import type { EntryState } from './boot.js';
import { BOOT_STACK_ADDR, GDT_ADDR, IDT_ADDR, PML4_ADDR } from './layout.js';
import { GDT } from './boot.js';

/** True on a host whose KVM is PVM: guest kernel code is emulated and CX16 must be hidden. */
export function hostIsPvm(): boolean {
  return existsSync('/sys/module/kvm_pvm');
}

export interface CpuidOptions {
  vcpuIndex: number;
  vcpuCount: number;
  hideCx16: boolean;
}

/** Returns patched copies of KVM_GET_SUPPORTED_CPUID entries for one vCPU. */
export function patchCpuid(supported: Buffer[], o: CpuidOptions): Buffer[] {
  return supported.map((original) => {
    const e = Buffer.from(original);
    const fn = e.readUInt32LE(0);
    const index = e.readUInt32LE(4);
    if (fn === 1) {
      let ebx = e.readUInt32LE(16);
      ebx = (ebx & 0x0000ffff) | (o.vcpuIndex << 24) | (Math.min(o.vcpuCount, 255) << 16);
      ebx = (ebx & ~0xff00) | (8 << 8);
      e.writeUInt32LE(ebx >>> 0, 16);
      let ecx = e.readUInt32LE(20);
      ecx |= 1 << 31; // hypervisor
      ecx |= 1 << 24; // TSC deadline (the in-kernel LAPIC supports it)
      ecx &= ~(1 << 15); // PDCM: no perf capabilities MSR
      if (o.hideCx16) ecx &= ~(1 << 13);
      e.writeUInt32LE(ecx >>> 0, 20);
      let edx = e.readUInt32LE(24);
      if (o.vcpuCount > 1) edx |= 1 << 28;
      else edx &= ~(1 << 28);
      e.writeUInt32LE(edx >>> 0, 24);
    } else if (fn === 0xb || fn === 0x1f) {
      // x2APIC topology: one thread per core, vCPUs as cores of one package.
      e.writeUInt32LE(KVM_CPUID_FLAG_SIGNIFICANT_INDEX, 8);
      e.writeUInt32LE(o.vcpuIndex, 24);
      if (index === 0) {
        e.writeUInt32LE(0, 12);
        e.writeUInt32LE(1, 16);
        e.writeUInt32LE((1 << 8) | index, 20);
      } else if (index === 1) {
        const shift = Math.ceil(Math.log2(Math.max(o.vcpuCount, 1)));
        e.writeUInt32LE(shift, 12);
        e.writeUInt32LE(o.vcpuCount, 16);
        e.writeUInt32LE((2 << 8) | index, 20);
      } else {
        e.writeUInt32LE(0, 12);
        e.writeUInt32LE(0, 16);
        e.writeUInt32LE(index, 20);
      }
    } else if (fn === 6) {
      // No turbo, no energy/perf bias exposed.
      e.writeUInt32LE(e.readUInt32LE(12) & ~(1 << 1), 12);
      e.writeUInt32LE(e.readUInt32LE(20) & ~(1 << 3), 20);
    } else if (fn === 0xa) {
      // No architectural PMU.
      e.fill(0, 12, 28);
    }
    return e;
  });
}

export function cpuidEntrySize(): number {
  return CPUID_ENTRY_SIZE;
}

export const BOOT_MSRS: Array<[number, bigint]> = [
  [0x174, 0n], // SYSENTER_CS
  [0x175, 0n], // SYSENTER_ESP
  [0x176, 0n], // SYSENTER_EIP
  [0xc0000081, 0n], // STAR
  [0xc0000082, 0n], // LSTAR
  [0xc0000083, 0n], // CSTAR
  [0xc0000084, 0n], // SYSCALL_MASK
  [0xc0000102, 0n], // KERNEL_GS_BASE
  [0x10, 0n], // TSC
  [0x1a0, 1n], // MISC_ENABLE: fast strings
  [0x2ff, (1n << 11n) | 6n], // MTRRdefType: enabled, write-back
];

export function buildRegs(entry: EntryState | null): Buffer {
  const r = Buffer.alloc(REGS_SIZE);
  r.writeBigUInt64LE(2n, 136); // RFLAGS: reserved bit 1, interrupts off
  if (!entry) return r;
  r.writeBigUInt64LE(BigInt(entry.rip), 128);
  if (entry.mode === 'long') {
    r.writeBigUInt64LE(BigInt(entry.rsi), 32);
    r.writeBigUInt64LE(BigInt(BOOT_STACK_ADDR), 48);
    r.writeBigUInt64LE(BigInt(BOOT_STACK_ADDR), 56);
  } else {
    r.writeBigUInt64LE(BigInt(entry.rbx), 8);
  }
  return r;
}

export function buildFpu(): Buffer {
  const f = Buffer.alloc(FPU_SIZE);
  f.writeUInt16LE(0x37f, 128);
  f.writeUInt32LE(0x1f80, 408);
  return f;
}

interface Segment {
  base: number;
  limit: number;
  selector: number;
  type: number;
  present: number;
  dpl: number;
  db: number;
  s: number;
  l: number;
  g: number;
}

function segmentFromGdt(index: number): Segment {
  const e = GDT[index];
  const field = (shift: bigint, bits: bigint) => Number((e >> shift) & ((1n << bits) - 1n));
  const limitLow = field(0n, 16n);
  const limitHigh = field(48n, 4n);
  const access = field(40n, 8n);
  const flags = field(52n, 4n);
  const base = field(16n, 24n) | (field(56n, 8n) << 24);
  const g = (flags >> 3) & 1;
  let limit = (limitHigh << 16) | limitLow;
  if (g) limit = (limit << 12) | 0xfff;
  return {
    base,
    limit: limit >>> 0,
    selector: index * 8,
    type: access & 0xf,
    present: (access >> 7) & 1,
    dpl: (access >> 5) & 3,
    db: (flags >> 2) & 1,
    s: (access >> 4) & 1,
    l: (flags >> 1) & 1,
    g,
  };
}

function writeSegment(sregs: Buffer, offset: number, s: Segment): void {
  sregs.writeBigUInt64LE(BigInt(s.base), offset);
  sregs.writeUInt32LE(s.limit, offset + 8);
  sregs.writeUInt16LE(s.selector, offset + 12);
  sregs[offset + 14] = s.type;
  sregs[offset + 15] = s.present;
  sregs[offset + 16] = s.dpl;
  sregs[offset + 17] = s.db;
  sregs[offset + 18] = s.s;
  sregs[offset + 19] = s.l;
  sregs[offset + 20] = s.g;
  sregs[offset + 21] = 0;
  sregs[offset + 22] = 0;
}

const SEG = { cs: 0, ds: 24, es: 48, fs: 72, gs: 96, ss: 120, tr: 144, ldt: 168 };

/** Fills `sregs` (as read by KVM_GET_SREGS) for the boot entry mode. */
export function buildSregs(current: Buffer, entry: EntryState): Buffer {
  const s = Buffer.from(current);
  const code = segmentFromGdt(entry.mode === 'long' ? 1 : 4);
  const data = segmentFromGdt(2);
  const tss = segmentFromGdt(3);
  writeSegment(s, SEG.cs, code);
  for (const off of [SEG.ds, SEG.es, SEG.fs, SEG.gs, SEG.ss]) writeSegment(s, off, data);
  writeSegment(s, SEG.tr, tss);
  s.writeBigUInt64LE(BigInt(GDT_ADDR), 192);
  s.writeUInt16LE(GDT.length * 8 - 1, 200);
  s.writeBigUInt64LE(BigInt(IDT_ADDR), 208);
  s.writeUInt16LE(7, 216);
  const cr0 = s.readBigUInt64LE(224);
  const cr4 = s.readBigUInt64LE(248);
  const efer = s.readBigUInt64LE(264);
  if (entry.mode === 'long') {
    s.writeBigUInt64LE(cr0 | 0x80000001n | 0x10n, 224); // PG | PE | ET
    s.writeBigUInt64LE(BigInt(PML4_ADDR), 240);
    s.writeBigUInt64LE(cr4 | 0x20n, 248); // PAE
    s.writeBigUInt64LE(efer | 0x500n, 264); // LME | LMA
  } else {
    s.writeBigUInt64LE((cr0 & ~0x80000000n) | 0x11n, 224); // PE | ET, paging off
    s.writeBigUInt64LE(0n, 240);
    s.writeBigUInt64LE(0n, 248);
    s.writeBigUInt64LE(efer & ~0x500n, 264);
  }
  return s;
}

/** LAPIC LINT0 = ExtINT (PIC interrupts reach the BSP), LINT1 = NMI. */
export function patchLapic(lapic: Buffer): Buffer {
  const l = Buffer.from(lapic);
  const setMode = (offset: number, mode: number) => l.writeUInt32LE(((l.readUInt32LE(offset) & ~0x700) | (mode << 8)) >>> 0, offset);
  setMode(0x350, 7);
  setMode(0x360, 4);
  return l;
}
