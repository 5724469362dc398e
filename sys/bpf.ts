// The XDP side of an AF_XDP port, with bpf(2) directly: an XSKMAP (receive queue → AF_XDP
// socket), a five-instruction program that redirects each frame to the socket of the queue it
// arrived on (or passes it to the kernel's stack when that queue has none), and a bpf_link that
// attaches the program to the interface. The link is an fd: when it is closed, or the process
// dies, the kernel detaches the program, so a killed daemon leaves no program on a VF behind.
import { libc, lastErrno, SysError, check } from './libc.js';
import { close as closeFd } from './fd.js';
import { nativeBuffer, type NativeBuffer } from './native-buffer.js';

const SYS_bpf = 321;
const syscallNative = libc.func('long syscall(long number, ...)');

const BPF_MAP_CREATE = 0;
const BPF_MAP_UPDATE_ELEM = 2;
const BPF_PROG_LOAD = 5;
const BPF_OBJ_GET_INFO_BY_FD = 15;
const BPF_LINK_CREATE = 28;
const BPF_MAP_TYPE_XSKMAP = 17;
const BPF_PROG_TYPE_XDP = 6;
const BPF_XDP = 37; // enum bpf_attach_type
const BPF_F_XDP_HAS_FRAGS = 1 << 5;
const BPF_FUNC_redirect_map = 51;
const XDP_PASS = 2;
export const XDP_FLAGS_SKB_MODE = 1 << 1;
export const XDP_FLAGS_DRV_MODE = 1 << 2;
const ATTR_SIZE = 128;

// What bpf_attr points to (keys, values, instructions, the license, the verifier's log) must stay
// at one address for the whole call: one page of this thread's, at fixed offsets.
const KEY_AT = 0;
const VALUE_AT = 8;
const LICENSE_AT = 16;
const CODE_AT = 64;
const INFO_AT = 512;
const LOG_AT = 1024;
const LOG_SIZE = 3072;
let scratchPage: NativeBuffer | null = null;
function scratch(): NativeBuffer {
  scratchPage ??= nativeBuffer(4096);
  return scratchPage;
}

/** An object name as the kernel accepts it: at most 15 of [A-Za-z0-9_.]. */
function objectName(name: string): Uint8Array {
  return new TextEncoder().encode(name.replace(/[^A-Za-z0-9_.]/g, '_').slice(0, 15));
}

function bpf(cmd: number, attr: Uint8Array, what: string): number {
  const ret = Number(syscallNative(SYS_bpf, 'int', cmd, 'void *', attr, 'unsigned int', attr.byteLength));
  return check(ret, 'bpf', what);
}

/** An XSKMAP with `entries` slots (one per receive queue of the interface). */
export function createXskMap(entries: number, name: string): number {
  const attr = new Uint8Array(ATTR_SIZE);
  const v = new DataView(attr.buffer);
  v.setUint32(0, BPF_MAP_TYPE_XSKMAP, true);
  v.setUint32(4, 4, true); // key: queue index
  v.setUint32(8, 4, true); // value: socket fd
  v.setUint32(12, entries, true);
  attr.set(objectName(name), 28); // map_name[16]
  return bpf(BPF_MAP_CREATE, attr, `XSKMAP of ${entries} entries for ${name}`);
}

/** Puts socket `fd` in slot `queue` of the XSKMAP. */
export function setXskMapEntry(mapFd: number, queue: number, fd: number): void {
  const page = scratch();
  page.view.setUint32(KEY_AT, queue, true);
  page.view.setUint32(VALUE_AT, fd, true);
  const attr = new Uint8Array(ATTR_SIZE);
  const v = new DataView(attr.buffer);
  v.setUint32(0, mapFd, true);
  v.setBigUint64(8, BigInt(page.address + KEY_AT), true);
  v.setBigUint64(16, BigInt(page.address + VALUE_AT), true);
  bpf(BPF_MAP_UPDATE_ELEM, attr, `XSKMAP slot ${queue} ← socket ${fd}`);
}


// struct bpf_insn: code u8, dst_reg:4 | src_reg:4 u8, off s16, imm s32
function insn(code: number, dst: number, src: number, off: number, imm: number): number[] {
  return [code, dst | (src << 4), off & 0xff, (off >> 8) & 0xff, imm & 0xff, (imm >> 8) & 0xff, (imm >> 16) & 0xff, (imm >>> 24) & 0xff];
}

/**
 * The redirect program:
 *   r2 = ctx->rx_queue_index; r1 = &xskmap; r3 = XDP_PASS; return bpf_redirect_map(r1, r2, r3)
 * The flags argument's low bits are the action when the queue has no socket: XDP_PASS.
 */
function redirectProgram(mapFd: number): Uint8Array {
  const BPF_LDX_MEM_W = 0x61;
  const BPF_LD_IMM64 = 0x18;
  const BPF_PSEUDO_MAP_FD = 1;
  const BPF_MOV64_K = 0xb7;
  const BPF_CALL = 0x85;
  const BPF_EXIT = 0x95;
  return new Uint8Array([
    ...insn(BPF_LDX_MEM_W, 2, 1, 16, 0), // struct xdp_md: rx_queue_index at 16
    ...insn(BPF_LD_IMM64, 1, BPF_PSEUDO_MAP_FD, 0, mapFd),
    ...insn(0, 0, 0, 0, 0),
    ...insn(BPF_MOV64_K, 3, 0, 0, XDP_PASS),
    ...insn(BPF_CALL, 0, 0, 0, BPF_FUNC_redirect_map),
    ...insn(BPF_EXIT, 0, 0, 0, 0),
  ]);
}

/** Loads the redirect program for `mapFd` (`frags`: for frames in several buffers); the verifier's log is in the error when it refuses. */
export function loadRedirectProgram(mapFd: number, name: string, frags = false): number {
  const page = scratch();
  const code = redirectProgram(mapFd);
  page.bytes.set(code, CODE_AT);
  page.bytes.set(new TextEncoder().encode('GPL\0'), LICENSE_AT);
  page.bytes.fill(0, LOG_AT, LOG_AT + LOG_SIZE);
  const attr = new Uint8Array(ATTR_SIZE);
  const v = new DataView(attr.buffer);
  v.setUint32(0, BPF_PROG_TYPE_XDP, true);
  v.setUint32(4, code.length / 8, true);
  v.setBigUint64(8, BigInt(page.address + CODE_AT), true);
  v.setBigUint64(16, BigInt(page.address + LICENSE_AT), true);
  v.setUint32(24, 1, true); // log_level
  v.setUint32(28, LOG_SIZE, true);
  v.setBigUint64(32, BigInt(page.address + LOG_AT), true);
  // A program that may see a frame in several buffers (multi-buffer AF_XDP) must say it can.
  if (frags) v.setUint32(44, BPF_F_XDP_HAS_FRAGS, true); // prog_flags
  attr.set(objectName(name), 48); // prog_name[16]
  v.setUint32(68, BPF_XDP, true); // expected_attach_type
  const ret = Number(syscallNative(SYS_bpf, 'int', BPF_PROG_LOAD, 'void *', attr, 'unsigned int', attr.byteLength));
  if (ret < 0) {
    const errno = lastErrno();
    const log = page.bytes.subarray(LOG_AT, LOG_AT + LOG_SIZE);
    const end = log.indexOf(0);
    const text = new TextDecoder().decode(log.subarray(0, end < 0 ? log.length : end)).trim();
    throw new SysError('bpf', errno, `loading the XDP redirect program for ${name}${text ? `; verifier: ${text}` : ''}`);
  }
  return ret;
}

/**
 * Attaches `progFd` to `ifindex` in driver mode (XDP_FLAGS_DRV_MODE) or generic mode
 * (XDP_FLAGS_SKB_MODE) and returns the link fd. EBUSY: another XDP program is attached there.
 */
export function attachXdp(progFd: number, ifindex: number, flags: number, what: string): number {
  const attr = new Uint8Array(ATTR_SIZE);
  const v = new DataView(attr.buffer);
  v.setUint32(0, progFd, true);
  v.setUint32(4, ifindex, true);
  v.setUint32(8, BPF_XDP, true);
  v.setUint32(12, flags, true);
  return bpf(BPF_LINK_CREATE, attr, what);
}

/** The kernel's id of the program behind `progFd` (what `ip link`, bpftool and xdp-loader show). */
export function programId(progFd: number): number {
  const page = scratch();
  page.bytes.fill(0, INFO_AT, INFO_AT + 8);
  const attr = new Uint8Array(ATTR_SIZE);
  const v = new DataView(attr.buffer);
  v.setUint32(0, progFd, true);
  v.setUint32(4, 8, true); // info_len: struct bpf_prog_info's type and id
  v.setBigUint64(8, BigInt(page.address + INFO_AT), true);
  bpf(BPF_OBJ_GET_INFO_BY_FD, attr, `the id of program fd ${progFd}`);
  return page.view.getUint32(INFO_AT + 4, true);
}

export function closeBpfFd(fd: number): void {
  if (fd >= 0) closeFd(fd);
}
