// KVM ioctl bindings. Struct arguments are plain Buffers laid out as in <linux/kvm.h> for x86_64;
// ioctl is declared twice (pointer and integer argument) so no variadic call is ever made.
// Every function works in worker threads: each thread that imports this module gets its own
// koffi function objects over the same libc.
import { openSync } from 'node:fs';
import { libc, koffi, check, SysError } from './libc.js';

const ioctlPtr = libc.func('ioctl', 'int', ['int', 'ulong', 'void *']);
const ioctlVal = libc.func('ioctl', 'int', ['int', 'ulong', 'ulong']);
const mmapRaw = libc.func('mmap', 'void *', ['void *', 'size_t', 'int', 'int', 'int', 'int64']);
const gettidRaw = libc.func('int gettid()');
const tgkillRaw = libc.func('int tgkill(int, int, int)');
const getpidRaw = libc.func('int getpid()');

export const KVM_API_VERSION = 12;

export const ioctls = {
  GET_API_VERSION: 0xae00,
  CREATE_VM: 0xae01,
  GET_MSR_INDEX_LIST: 0xc004ae02,
  CHECK_EXTENSION: 0xae03,
  GET_VCPU_MMAP_SIZE: 0xae04,
  GET_SUPPORTED_CPUID: 0xc008ae05,
  SET_USER_MEMORY_REGION: 0x4020ae46,
  SET_TSS_ADDR: 0xae47,
  SET_IDENTITY_MAP_ADDR: 0x4008ae48,
  CREATE_IRQCHIP: 0xae60,
  IRQ_LINE: 0x4008ae61,
  CREATE_VCPU: 0xae41,
  IRQFD: 0x4020ae76,
  CREATE_PIT2: 0x4040ae77,
  IOEVENTFD: 0x4040ae79,
  RUN: 0xae80,
  GET_REGS: 0x8090ae81,
  SET_REGS: 0x4090ae82,
  GET_SREGS: 0x8138ae83,
  SET_SREGS: 0x4138ae84,
  GET_MSRS: 0xc008ae88,
  SET_MSRS: 0x4008ae89,
  SET_FPU: 0x41a0ae8d,
  GET_LAPIC: 0x8400ae8e,
  SET_LAPIC: 0x4400ae8f,
  SET_CPUID2: 0x4008ae90,
} as const;

export const caps = {
  IRQCHIP: 0,
  USER_MEMORY: 3,
  SET_TSS_ADDR: 4,
  NR_VCPUS: 9,
  NR_MEMSLOTS: 10,
  IRQFD: 32,
  PIT2: 33,
  IOEVENTFD: 36,
  TSC_DEADLINE_TIMER: 72,
  IMMEDIATE_EXIT: 136,
  MAX_VCPUS: 66,
} as const;

export const exitReasons = {
  UNKNOWN: 0,
  EXCEPTION: 1,
  IO: 2,
  HYPERCALL: 3,
  DEBUG: 4,
  HLT: 5,
  MMIO: 6,
  SHUTDOWN: 8,
  FAIL_ENTRY: 9,
  INTR: 10,
  INTERNAL_ERROR: 17,
  SYSTEM_EVENT: 24,
} as const;

export const exitReasonNames: Record<number, string> = Object.fromEntries(
  Object.entries(exitReasons).map(([k, v]) => [v, k]),
);

export const KVM_PIT_SPEAKER_DUMMY = 1;
export const KVM_IOEVENTFD_FLAG_DATAMATCH = 1;
export const KVM_IOEVENTFD_FLAG_PIO = 2;
export const KVM_IOEVENTFD_FLAG_DEASSIGN = 4;
export const KVM_IRQFD_FLAG_DEASSIGN = 1;
export const KVM_CPUID_FLAG_SIGNIFICANT_INDEX = 1;
export const KVM_MEM_READONLY = 2;

export const CPUID_ENTRY_SIZE = 40;
export const REGS_SIZE = 144;
export const SREGS_SIZE = 312;
export const FPU_SIZE = 416;
export const LAPIC_SIZE = 1024;

function ioctl(fd: number, request: number, arg: Buffer | null, what: string): number {
  return check(ioctlPtr(fd, request, arg), 'ioctl', what);
}

function ioctlValue(fd: number, request: number, value: number, what: string): number {
  return check(ioctlVal(fd, request, value), 'ioctl', what);
}

/** Opens /dev/kvm and checks the API version; the error says what is missing when it fails. */
export function openKvm(path = '/dev/kvm'): number {
  let fd: number;
  try {
    fd = openSync(path, 'r+');
  } catch (err) {
    throw new Error(`${path}: cannot open (${(err as NodeJS.ErrnoException).code ?? err}); KVM is required`);
  }
  const version = ioctlValue(fd, ioctls.GET_API_VERSION, 0, 'KVM_GET_API_VERSION');
  if (version !== KVM_API_VERSION) throw new Error(`${path}: KVM API version ${version}, expected ${KVM_API_VERSION}`);
  return fd;
}

export function checkExtension(fd: number, cap: number): number {
  return ioctlValue(fd, ioctls.CHECK_EXTENSION, cap, `KVM_CHECK_EXTENSION ${cap}`);
}

export function vcpuMmapSize(kvmFd: number): number {
  return ioctlValue(kvmFd, ioctls.GET_VCPU_MMAP_SIZE, 0, 'KVM_GET_VCPU_MMAP_SIZE');
}

export function createVm(kvmFd: number): number {
  return ioctlValue(kvmFd, ioctls.CREATE_VM, 0, 'KVM_CREATE_VM');
}

export function setTssAddr(vmFd: number, address: number): void {
  ioctlValue(vmFd, ioctls.SET_TSS_ADDR, address, 'KVM_SET_TSS_ADDR');
}

export function setIdentityMapAddr(vmFd: number, address: number): void {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(address));
  ioctl(vmFd, ioctls.SET_IDENTITY_MAP_ADDR, b, 'KVM_SET_IDENTITY_MAP_ADDR');
}

export function createIrqchip(vmFd: number): void {
  ioctlValue(vmFd, ioctls.CREATE_IRQCHIP, 0, 'KVM_CREATE_IRQCHIP');
}

export function createPit2(vmFd: number, flags = KVM_PIT_SPEAKER_DUMMY): void {
  const b = Buffer.alloc(64);
  b.writeUInt32LE(flags, 0);
  ioctl(vmFd, ioctls.CREATE_PIT2, b, 'KVM_CREATE_PIT2');
}

export interface UserMemoryRegion {
  slot: number;
  flags?: number;
  guestPhysAddr: number;
  size: number;
  userAddr: number;
}

export function setUserMemoryRegion(vmFd: number, r: UserMemoryRegion): void {
  const b = Buffer.alloc(32);
  b.writeUInt32LE(r.slot, 0);
  b.writeUInt32LE(r.flags ?? 0, 4);
  b.writeBigUInt64LE(BigInt(r.guestPhysAddr), 8);
  b.writeBigUInt64LE(BigInt(r.size), 16);
  b.writeBigUInt64LE(BigInt(r.userAddr), 24);
  ioctl(vmFd, ioctls.SET_USER_MEMORY_REGION, b, `KVM_SET_USER_MEMORY_REGION slot ${r.slot}`);
}

export function createVcpu(vmFd: number, index: number): number {
  return ioctlValue(vmFd, ioctls.CREATE_VCPU, index, `KVM_CREATE_VCPU ${index}`);
}

export interface RunMapping {
  address: number;
  /** The whole kvm_run area (KVM_GET_VCPU_MMAP_SIZE bytes), including the PIO data page. */
  bytes: Uint8Array;
  view: DataView;
}

/** Maps a vCPU's kvm_run structure in the calling thread. */
export function mapRun(vcpuFd: number, size: number): RunMapping {
  const PROT_READ_WRITE = 3;
  const MAP_SHARED = 1;
  const ptr = mmapRaw(null, size, PROT_READ_WRITE, MAP_SHARED, vcpuFd, 0);
  const raw = BigInt(koffi.address(ptr));
  if (raw === 0n || raw === 0xffffffffffffffffn) {
    throw new SysError('mmap', koffi.errno(), `kvm_run of vcpu fd ${vcpuFd}`);
  }
  const buffer = koffi.view(ptr, size) as ArrayBuffer;
  return { address: Number(raw), bytes: new Uint8Array(buffer), view: new DataView(buffer) };
}

/**
 * KVM_RUN. Returns 0, or the negated errno for EINTR/EAGAIN (a kick or immediate_exit),
 * and throws on anything else.
 */
export function run(vcpuFd: number): number {
  const ret = ioctlVal(vcpuFd, ioctls.RUN, 0);
  if (ret < 0) {
    const errno = koffi.errno();
    if (errno === 4 /* EINTR */ || errno === 11 /* EAGAIN */) return -errno;
    throw new SysError('ioctl', errno, 'KVM_RUN');
  }
  return ret;
}

/** KVM_GET_SUPPORTED_CPUID: the entries as 40-byte slices of one buffer. */
export function getSupportedCpuid(kvmFd: number, maxEntries = 256): Buffer[] {
  const b = Buffer.alloc(8 + maxEntries * CPUID_ENTRY_SIZE);
  b.writeUInt32LE(maxEntries, 0);
  ioctl(kvmFd, ioctls.GET_SUPPORTED_CPUID, b, 'KVM_GET_SUPPORTED_CPUID');
  const n = b.readUInt32LE(0);
  const out: Buffer[] = [];
  for (let i = 0; i < n; i++) out.push(Buffer.from(b.subarray(8 + i * CPUID_ENTRY_SIZE, 8 + (i + 1) * CPUID_ENTRY_SIZE)));
  return out;
}

export function setCpuid2(vcpuFd: number, entries: Buffer[]): void {
  const b = Buffer.alloc(8 + entries.length * CPUID_ENTRY_SIZE);
  b.writeUInt32LE(entries.length, 0);
  entries.forEach((e, i) => e.copy(b, 8 + i * CPUID_ENTRY_SIZE));
  ioctl(vcpuFd, ioctls.SET_CPUID2, b, 'KVM_SET_CPUID2');
}

export function setMsrs(vcpuFd: number, msrs: Array<[number, bigint]>): number {
  const b = Buffer.alloc(8 + msrs.length * 16);
  b.writeUInt32LE(msrs.length, 0);
  msrs.forEach(([index, value], i) => {
    b.writeUInt32LE(index, 8 + i * 16);
    b.writeBigUInt64LE(value, 8 + i * 16 + 8);
  });
  const set = ioctl(vcpuFd, ioctls.SET_MSRS, b, 'KVM_SET_MSRS');
  if (set !== msrs.length) {
    throw new Error(`KVM_SET_MSRS: MSR 0x${msrs[set][0].toString(16)} was refused (${set} of ${msrs.length} set)`);
  }
  return set;
}

export function getRegs(vcpuFd: number): Buffer {
  const b = Buffer.alloc(REGS_SIZE);
  ioctl(vcpuFd, ioctls.GET_REGS, b, 'KVM_GET_REGS');
  return b;
}

/**
 * The registers that say where a guest stopped, as one line: rip, rsp, rflags, the control
 * registers and EFER. For the log of a triple fault or an internal error, where they are the only
 * clue; never throws (a vCPU that cannot be read gives the reason instead).
 */
export function describeVcpuState(vcpuFd: number): string {
  try {
    const regs = getRegs(vcpuFd);
    const sregs = getSregs(vcpuFd);
    const hex = (v: bigint) => '0x' + v.toString(16);
    // struct kvm_regs: 16 general registers, then rip (128) and rflags (136). struct kvm_sregs:
    // 8 segments of 24 bytes and 2 descriptor tables of 16, then cr0, cr2, cr3, cr4, cr8, efer.
    const fields: [string, bigint][] = [
      ['rip', regs.readBigUInt64LE(128)],
      ['rsp', regs.readBigUInt64LE(48)],
      ['rflags', regs.readBigUInt64LE(136)],
      ['cs', BigInt(sregs.readUInt16LE(12))],
      ['cr0', sregs.readBigUInt64LE(224)],
      ['cr2', sregs.readBigUInt64LE(232)],
      ['cr3', sregs.readBigUInt64LE(240)],
      ['cr4', sregs.readBigUInt64LE(248)],
      ['efer', sregs.readBigUInt64LE(264)],
      ['idt', sregs.readBigUInt64LE(208)],
    ];
    return fields.map(([name, value]) => `${name} ${hex(value)}`).join(' ');
  } catch (err) {
    return `registers unreadable: ${(err as Error).message}`;
  }
}

export function setRegs(vcpuFd: number, regs: Buffer): void {
  ioctl(vcpuFd, ioctls.SET_REGS, regs, 'KVM_SET_REGS');
}

export function getSregs(vcpuFd: number): Buffer {
  const b = Buffer.alloc(SREGS_SIZE);
  ioctl(vcpuFd, ioctls.GET_SREGS, b, 'KVM_GET_SREGS');
  return b;
}

export function setSregs(vcpuFd: number, sregs: Buffer): void {
  ioctl(vcpuFd, ioctls.SET_SREGS, sregs, 'KVM_SET_SREGS');
}

export function setFpu(vcpuFd: number, fpu: Buffer): void {
  ioctl(vcpuFd, ioctls.SET_FPU, fpu, 'KVM_SET_FPU');
}

export function getLapic(vcpuFd: number): Buffer {
  const b = Buffer.alloc(LAPIC_SIZE);
  ioctl(vcpuFd, ioctls.GET_LAPIC, b, 'KVM_GET_LAPIC');
  return b;
}

export function setLapic(vcpuFd: number, lapic: Buffer): void {
  ioctl(vcpuFd, ioctls.SET_LAPIC, lapic, 'KVM_SET_LAPIC');
}

export function irqLine(vmFd: number, irq: number, level: number): void {
  const b = Buffer.alloc(8);
  b.writeUInt32LE(irq, 0);
  b.writeUInt32LE(level, 4);
  ioctl(vmFd, ioctls.IRQ_LINE, b, `KVM_IRQ_LINE ${irq}`);
}

export function irqfd(vmFd: number, fd: number, gsi: number, deassign = false): void {
  const b = Buffer.alloc(32);
  b.writeUInt32LE(fd, 0);
  b.writeUInt32LE(gsi, 4);
  b.writeUInt32LE(deassign ? KVM_IRQFD_FLAG_DEASSIGN : 0, 8);
  ioctl(vmFd, ioctls.IRQFD, b, `KVM_IRQFD gsi ${gsi}`);
}

export interface IoEventFd {
  address: number;
  length: number;
  fd: number;
  datamatch?: number;
  pio?: boolean;
  deassign?: boolean;
}

export function ioeventfd(vmFd: number, e: IoEventFd): void {
  const b = Buffer.alloc(64);
  let flags = 0;
  if (e.datamatch !== undefined) {
    flags |= KVM_IOEVENTFD_FLAG_DATAMATCH;
    b.writeBigUInt64LE(BigInt(e.datamatch), 0);
  }
  if (e.pio) flags |= KVM_IOEVENTFD_FLAG_PIO;
  if (e.deassign) flags |= KVM_IOEVENTFD_FLAG_DEASSIGN;
  b.writeBigUInt64LE(BigInt(e.address), 8);
  b.writeUInt32LE(e.length, 16);
  b.writeInt32LE(e.fd, 20);
  b.writeUInt32LE(flags, 24);
  ioctl(vmFd, ioctls.IOEVENTFD, b, `KVM_IOEVENTFD 0x${e.address.toString(16)}`);
}

/** The calling thread's kernel thread id. */
export function currentTid(): number {
  return gettidRaw();
}

/** Sends `signal` to one thread of this process (used to kick a vCPU out of KVM_RUN). */
export function signalThread(tid: number, signal: number): void {
  check(tgkillRaw(getpidRaw(), tid, signal), 'tgkill', `thread ${tid}`);
}
