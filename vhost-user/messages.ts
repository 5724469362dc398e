// The vhost-user wire format: request ids, the 12-byte header, payload codecs and the validators
// that decide, before any handler runs, whether a message from the peer is well formed.
// Decoding never trusts the peer: sizes are exact, u64 values that do not fit a JS number are refused,
// and the number of attached fds is checked against what the request carries.
import * as F from '../virtio/features.js';

export class ProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProtocolError';
  }
}

/** Front-end → back-end request ids (vhost-user.rst, "Front-end message types"). */
export const Request = {
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_LOG_BASE: 6,
  SET_LOG_FD: 7,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  SEND_RARP: 19,
  NET_SET_MTU: 20,
  SET_BACKEND_REQ_FD: 21,
  IOTLB_MSG: 22,
  SET_VRING_ENDIAN: 23,
  GET_CONFIG: 24,
  SET_CONFIG: 25,
  CREATE_CRYPTO_SESSION: 26,
  CLOSE_CRYPTO_SESSION: 27,
  POSTCOPY_ADVISE: 28,
  POSTCOPY_LISTEN: 29,
  POSTCOPY_END: 30,
  GET_INFLIGHT_FD: 31,
  SET_INFLIGHT_FD: 32,
  GPU_SET_SOCKET: 33,
  RESET_DEVICE: 34,
  VRING_KICK: 35,
  GET_MAX_MEM_SLOTS: 36,
  ADD_MEM_REG: 37,
  REM_MEM_REG: 38,
  SET_STATUS: 39,
  GET_STATUS: 40,
} as const;

export type RequestName = keyof typeof Request;

const requestNames = new Map<number, string>(Object.entries(Request).map(([name, id]) => [id, name]));

export function requestName(id: number): string {
  return requestNames.get(id) ?? `UNKNOWN_${id}`;
}

export function isKnownRequest(id: number): boolean {
  return requestNames.has(id);
}

/** Protocol feature bits (GET/SET_PROTOCOL_FEATURES). */
/** The protocol feature bits by short name; the numbers are virtio/features.ts's. */
export const ProtocolFeature = {
  MQ: F.VHOST_USER_PROTOCOL_F_MQ,
  LOG_SHMFD: F.VHOST_USER_PROTOCOL_F_LOG_SHMFD,
  RARP: F.VHOST_USER_PROTOCOL_F_RARP,
  REPLY_ACK: F.VHOST_USER_PROTOCOL_F_REPLY_ACK,
  NET_MTU: F.VHOST_USER_PROTOCOL_F_NET_MTU,
  BACKEND_REQ: F.VHOST_USER_PROTOCOL_F_SLAVE_REQ,
  CROSS_ENDIAN: F.VHOST_USER_PROTOCOL_F_CROSS_ENDIAN,
  CRYPTO_SESSION: F.VHOST_USER_PROTOCOL_F_CRYPTO_SESSION,
  PAGEFAULT: F.VHOST_USER_PROTOCOL_F_PAGEFAULT,
  CONFIG: F.VHOST_USER_PROTOCOL_F_CONFIG,
  BACKEND_SEND_FD: F.VHOST_USER_PROTOCOL_F_SLAVE_SEND_FD,
  HOST_NOTIFIER: F.VHOST_USER_PROTOCOL_F_HOST_NOTIFIER,
  INFLIGHT_SHMFD: F.VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD,
  RESET_DEVICE: F.VHOST_USER_PROTOCOL_F_RESET_DEVICE,
  INBAND_NOTIFICATIONS: F.VHOST_USER_PROTOCOL_F_INBAND_NOTIFICATIONS,
  CONFIGURE_MEM_SLOTS: F.VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS,
  STATUS: F.VHOST_USER_PROTOCOL_F_STATUS,
} as const;

/** VHOST_USER_F_PROTOCOL_FEATURES: the virtio feature bit that announces GET_PROTOCOL_FEATURES. */
export const PROTOCOL_FEATURES_BIT = F.VHOST_USER_F_PROTOCOL_FEATURES;

// Header layout and flags.
export const HEADER_SIZE = 12;
export const VERSION = 1;
export const FLAG_VERSION_MASK = 0x3;
export const FLAG_REPLY = 0x4;
export const FLAG_NEED_REPLY = 0x8;
/** Replies carry exactly VERSION|REPLY: QEMU and virtio-user reject anything else. */
export const REPLY_FLAGS = VERSION | FLAG_REPLY;

export const MAX_MEM_REGIONS = 8;
/**
 * Regions a back-end takes one at a time (CONFIGURE_MEM_SLOTS, ADD_MEM_REG): QEMU's DIMM slots
 * plus RAM. Each region is one mapping; 32 is far above what hosts configure.
 */
export const MAX_MEM_SLOTS = 32;
export const MEM_REGION_SIZE = 32;
/** Enough for every payload any front-end sends (GET/SET_CONFIG is the largest at 12+256). */
export const MAX_PAYLOAD = 4096;
/** Ancillary buffer capacity per receive; more fds than this is a control truncation. */
export const MAX_FDS_PER_MESSAGE = 32;

/** Vring file payloads: bits 0–7 index, bit 8 = no fd attached. */
export const VRING_INDEX_MASK = 0xff;
export const VRING_NOFD_MASK = 0x100;
/** SET_VRING_ADDR flags: bit 0 asks for dirty logging of the used ring. */
export const VRING_F_LOG = 0x1;

export const MTU_MIN = 68;
export const MTU_MAX = 65535;

export interface MessageHeader {
  request: number;
  flags: number;
  size: number;
}

/**
 * Allowed payload sizes. A number is the exact size; `memTable` is 8+32·n with 1 ≤ n ≤ 8; a range
 * is used for requests we never negotiate, which we still read in full so the session can NACK
 * them instead of losing framing.
 */
type SizeRule = number | 'memTable' | { min: number; max: number };

/**
 * File descriptors a request carries: an exact count, `regions` (one per memory region of the
 * table), `vringFile` (one, unless the payload's NOFD bit is set), or a range (REM_MEM_REG's stray
 * fd is tolerated, then closed by the caller).
 */
type FdRule = number | 'regions' | 'vringFile' | { min: number; max: number };

/**
 * The reply a request gets whatever REPLY_ACK says: its exact payload size, `varies` (a reply
 * whose size differs between back-ends), `logShmfd` (SET_LOG_BASE: a reply only once LOG_SHMFD
 * is negotiated), or null (none; a NEED_REPLY flag under REPLY_ACK asks for a u64 ack).
 */
type ReplyRule = number | 'varies' | 'logShmfd' | null;

interface RequestRule {
  payload: SizeRule;
  fds: FdRule;
  reply: ReplyRule;
}

const U64 = 8;
const STATE = 8;
const ADDR = 40;
const LOG = 16;
const SINGLE_REGION = 8 + MEM_REGION_SIZE;
const ANY: SizeRule = { min: 0, max: MAX_PAYLOAD };

/** One row per request: everything the wire says about it. Handlers are the back-end's (backend.ts). */
const REQUESTS = new Map<number, RequestRule>([
  [Request.GET_FEATURES, { payload: 0, fds: 0, reply: U64 }],
  [Request.SET_FEATURES, { payload: U64, fds: 0, reply: null }],
  [Request.SET_OWNER, { payload: 0, fds: 0, reply: null }],
  [Request.RESET_OWNER, { payload: 0, fds: 0, reply: null }],
  [Request.SET_MEM_TABLE, { payload: 'memTable', fds: 'regions', reply: null }],
  [Request.SET_LOG_BASE, { payload: LOG, fds: 1, reply: 'logShmfd' }],
  [Request.SET_LOG_FD, { payload: 0, fds: 1, reply: null }],
  [Request.SET_VRING_NUM, { payload: STATE, fds: 0, reply: null }],
  [Request.SET_VRING_ADDR, { payload: ADDR, fds: 0, reply: null }],
  [Request.SET_VRING_BASE, { payload: STATE, fds: 0, reply: null }],
  [Request.GET_VRING_BASE, { payload: STATE, fds: 0, reply: STATE }],
  [Request.SET_VRING_KICK, { payload: U64, fds: 'vringFile', reply: null }],
  [Request.SET_VRING_CALL, { payload: U64, fds: 'vringFile', reply: null }],
  [Request.SET_VRING_ERR, { payload: U64, fds: 'vringFile', reply: null }],
  [Request.GET_PROTOCOL_FEATURES, { payload: 0, fds: 0, reply: U64 }],
  [Request.SET_PROTOCOL_FEATURES, { payload: U64, fds: 0, reply: null }],
  [Request.GET_QUEUE_NUM, { payload: 0, fds: 0, reply: U64 }],
  [Request.SET_VRING_ENABLE, { payload: STATE, fds: 0, reply: null }],
  [Request.SEND_RARP, { payload: U64, fds: 0, reply: null }],
  [Request.NET_SET_MTU, { payload: U64, fds: 0, reply: null }],
  [Request.SET_BACKEND_REQ_FD, { payload: 0, fds: 1, reply: null }],
  [Request.IOTLB_MSG, { payload: ANY, fds: 0, reply: 'varies' }],
  [Request.SET_VRING_ENDIAN, { payload: STATE, fds: 0, reply: null }],
  [Request.GET_CONFIG, { payload: ANY, fds: 0, reply: 'varies' }],
  [Request.POSTCOPY_ADVISE, { payload: ANY, fds: 0, reply: 'varies' }],
  [Request.POSTCOPY_LISTEN, { payload: ANY, fds: 0, reply: 'varies' }],
  [Request.POSTCOPY_END, { payload: ANY, fds: 0, reply: 'varies' }],
  [Request.GET_INFLIGHT_FD, { payload: ANY, fds: 0, reply: 'varies' }],
  [Request.SET_INFLIGHT_FD, { payload: ANY, fds: 1, reply: null }],
  [Request.GPU_SET_SOCKET, { payload: ANY, fds: 1, reply: null }],
  [Request.RESET_DEVICE, { payload: 0, fds: 0, reply: null }],
  [Request.VRING_KICK, { payload: STATE, fds: 0, reply: null }],
  [Request.GET_MAX_MEM_SLOTS, { payload: 0, fds: 0, reply: U64 }],
  [Request.ADD_MEM_REG, { payload: SINGLE_REGION, fds: 1, reply: null }],
  [Request.REM_MEM_REG, { payload: SINGLE_REGION, fds: { min: 0, max: 1 }, reply: null }],
  [Request.SET_STATUS, { payload: U64, fds: 0, reply: null }],
  [Request.GET_STATUS, { payload: 0, fds: 0, reply: U64 }],
]);

/** Requests this table does not know: read in full (bounded) so they can be refused cleanly. */
const UNKNOWN_REQUEST: RequestRule = { payload: ANY, fds: 0, reply: null };

/** True when the request has its own row (everything else is read as an unknown request). */
export function hasRequestRow(request: number): boolean {
  return REQUESTS.has(request);
}

function ruleFor(request: number): RequestRule {
  return REQUESTS.get(request) ?? UNKNOWN_REQUEST;
}

function sizeRuleFor(request: number): SizeRule {
  return ruleFor(request).payload;
}

/** The largest payload the request may carry; the connection refuses a header announcing more. */
export function maxPayloadSize(request: number): number {
  const rule = sizeRuleFor(request);
  if (typeof rule === 'number') return rule;
  if (rule === 'memTable') return 8 + MEM_REGION_SIZE * MAX_MEM_REGIONS;
  return rule.max;
}

function sizeAllowed(rule: SizeRule, size: number): boolean {
  if (typeof rule === 'number') return size === rule;
  if (rule === 'memTable') {
    const n = (size - 8) / MEM_REGION_SIZE;
    return size >= 8 + MEM_REGION_SIZE && Number.isInteger(n) && n <= MAX_MEM_REGIONS;
  }
  return size >= rule.min && size <= rule.max;
}

export function encodeHeader(header: MessageHeader, out: Uint8Array = new Uint8Array(HEADER_SIZE)): Uint8Array {
  const view = new DataView(out.buffer, out.byteOffset, HEADER_SIZE);
  view.setUint32(0, header.request >>> 0, true);
  view.setUint32(4, header.flags >>> 0, true);
  view.setUint32(8, header.size >>> 0, true);
  return out;
}

function readHeader(bytes: Uint8Array): MessageHeader {
  if (bytes.length < HEADER_SIZE) {
    throw new ProtocolError(`vhost-user header is ${bytes.length} bytes, needs ${HEADER_SIZE}`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, HEADER_SIZE);
  return { request: view.getUint32(0, true), flags: view.getUint32(4, true), size: view.getUint32(8, true) };
}

/**
 * Decodes and validates the header of a front-end request: version 1, no REPLY flag, no reserved
 * flag bits, and a payload size that the request can legally have. Unknown request ids pass here
 * (bounded by MAX_PAYLOAD) so the session can answer them with a NACK or close.
 */
export function decodeRequestHeader(bytes: Uint8Array): MessageHeader {
  const header = readHeader(bytes);
  const name = requestName(header.request);
  if ((header.flags & FLAG_VERSION_MASK) !== VERSION) {
    throw new ProtocolError(`${name}: unsupported vhost-user version ${header.flags & FLAG_VERSION_MASK} (flags 0x${header.flags.toString(16)})`);
  }
  if (header.flags & FLAG_REPLY) throw new ProtocolError(`${name}: request has the REPLY flag set`);
  if (header.flags & ~(FLAG_VERSION_MASK | FLAG_NEED_REPLY)) {
    throw new ProtocolError(`${name}: reserved flag bits set (flags 0x${header.flags.toString(16)})`);
  }
  const rule = sizeRuleFor(header.request);
  if (header.size > maxPayloadSize(header.request)) {
    throw new ProtocolError(`${name}: payload size ${header.size} exceeds the maximum ${maxPayloadSize(header.request)}`);
  }
  if (!sizeAllowed(rule, header.size)) {
    throw new ProtocolError(`${name}: payload size ${header.size} is not valid for this request`);
  }
  return header;
}

/** Decodes and validates the header of a back-end reply (flags exactly VERSION|REPLY). */
export function decodeReplyHeader(bytes: Uint8Array): MessageHeader {
  const header = readHeader(bytes);
  const name = requestName(header.request);
  if (header.flags !== REPLY_FLAGS) {
    throw new ProtocolError(`reply to ${name}: flags 0x${header.flags.toString(16)}, expected 0x${REPLY_FLAGS.toString(16)}`);
  }
  if (header.size > MAX_PAYLOAD) throw new ProtocolError(`reply to ${name}: payload size ${header.size} exceeds ${MAX_PAYLOAD}`);
  // SET_LOG_BASE replies vary between back-ends (DPDK: empty, rust-vmm: the 16-byte log), so only
  // replies with a fixed shape, and acks (u64), are checked exactly.
  const expected = ruleFor(header.request).reply;
  if (typeof expected === 'number' && header.size !== expected) {
    throw new ProtocolError(`reply to ${name}: payload size ${header.size}, expected ${expected}`);
  }
  return header;
}

// ---- u64 helpers ----------------------------------------------------------------------------------

const TWO_32 = 2 ** 32;

/** Reads a little-endian u64 as a number, refusing values above Number.MAX_SAFE_INTEGER. */
export function readU64(view: DataView, offset: number, what: string): number {
  const lo = view.getUint32(offset, true);
  const hi = view.getUint32(offset + 4, true);
  if (hi > 0x1fffff) throw new ProtocolError(`${what} 0x${hi.toString(16).padStart(8, '0')}${lo.toString(16).padStart(8, '0')} is too large to handle`);
  return hi * TWO_32 + lo;
}

export function writeU64(view: DataView, offset: number, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`u64 value ${value} is not a non-negative safe integer`);
  view.setUint32(offset, value % TWO_32, true);
  view.setUint32(offset + 4, Math.floor(value / TWO_32), true);
}

function viewOf(payload: Uint8Array, size: number, what: string): DataView {
  if (payload.length !== size) throw new ProtocolError(`${what}: payload is ${payload.length} bytes, expected ${size}`);
  return new DataView(payload.buffer, payload.byteOffset, payload.length);
}

/** Tests bit `bit` (0..52) of a u64 held in a number. */
export function hasBit(value: number, bit: number): boolean {
  return Math.floor(value / 2 ** bit) % 2 === 1;
}

/** The bits of `value` not present in `allowed` (both u64 numbers), as a number. */
export function bitsOutside(value: number, allowed: number): number {
  return Number(BigInt(value) & ~BigInt(allowed));
}

export function bitsToMask(bits: readonly number[]): number {
  let mask = 0n;
  for (const b of bits) mask |= 1n << BigInt(b);
  return Number(mask);
}

export function maskAnd(a: number, b: number): number {
  return Number(BigInt(a) & BigInt(b));
}

export function maskOr(a: number, b: number): number {
  return Number(BigInt(a) | BigInt(b));
}

// ---- payload codecs -------------------------------------------------------------------------------

export function decodeU64(payload: Uint8Array, what = 'u64 payload'): number {
  return readU64(viewOf(payload, U64, what), 0, what);
}

export function encodeU64(value: number): Uint8Array {
  const out = new Uint8Array(U64);
  writeU64(new DataView(out.buffer), 0, value);
  return out;
}

export interface VringState {
  index: number;
  num: number;
}

export function decodeVringState(payload: Uint8Array): VringState {
  const view = viewOf(payload, STATE, 'vring state');
  return { index: view.getUint32(0, true), num: view.getUint32(4, true) };
}

export function encodeVringState(state: VringState): Uint8Array {
  const out = new Uint8Array(STATE);
  const view = new DataView(out.buffer);
  view.setUint32(0, state.index >>> 0, true);
  view.setUint32(4, state.num >>> 0, true);
  return out;
}

export interface VringFile {
  index: number;
  /** True when the NOFD bit is set: no fd is attached and none is expected. */
  noFd: boolean;
}

export function decodeVringFile(payload: Uint8Array): VringFile {
  const value = decodeU64(payload, 'vring file');
  if (value & ~(VRING_INDEX_MASK | VRING_NOFD_MASK) || value > 0xffffffff) {
    throw new ProtocolError(`vring file 0x${value.toString(16)} has bits other than the index and NOFD set`);
  }
  return { index: value & VRING_INDEX_MASK, noFd: (value & VRING_NOFD_MASK) !== 0 };
}

export function encodeVringFile(file: VringFile): Uint8Array {
  if (file.index < 0 || file.index > VRING_INDEX_MASK) throw new RangeError(`vring index ${file.index} does not fit 8 bits`);
  return encodeU64(file.index | (file.noFd ? VRING_NOFD_MASK : 0));
}

export interface VringAddr {
  index: number;
  flags: number;
  descUserAddr: number;
  usedUserAddr: number;
  availUserAddr: number;
  logGuestAddr: number;
}

/** SET_VRING_ADDR: note that the used ring address precedes the avail ring address on the wire. */
export function decodeVringAddr(payload: Uint8Array): VringAddr {
  const view = viewOf(payload, ADDR, 'vring address');
  const index = view.getUint32(0, true);
  const flags = view.getUint32(4, true);
  if (flags & ~VRING_F_LOG) throw new ProtocolError(`vring ${index} address: unknown flag bits 0x${flags.toString(16)}`);
  return {
    index,
    flags,
    descUserAddr: readU64(view, 8, `vring ${index} descriptor table address`),
    usedUserAddr: readU64(view, 16, `vring ${index} used ring address`),
    availUserAddr: readU64(view, 24, `vring ${index} available ring address`),
    logGuestAddr: readU64(view, 32, `vring ${index} log address`),
  };
}

export function encodeVringAddr(addr: VringAddr): Uint8Array {
  const out = new Uint8Array(ADDR);
  const view = new DataView(out.buffer);
  view.setUint32(0, addr.index >>> 0, true);
  view.setUint32(4, addr.flags >>> 0, true);
  writeU64(view, 8, addr.descUserAddr);
  writeU64(view, 16, addr.usedUserAddr);
  writeU64(view, 24, addr.availUserAddr);
  writeU64(view, 32, addr.logGuestAddr);
  return out;
}

export interface MemRegionDesc {
  guestPhysAddr: number;
  size: number;
  userAddr: number;
  mmapOffset: number;
}

function decodeRegionAt(view: DataView, offset: number, i: number): MemRegionDesc {
  const region = {
    guestPhysAddr: readU64(view, offset, `memory region ${i} guest address`),
    size: readU64(view, offset + 8, `memory region ${i} size`),
    userAddr: readU64(view, offset + 16, `memory region ${i} user address`),
    mmapOffset: readU64(view, offset + 24, `memory region ${i} mmap offset`),
  };
  validateRegion(region, i);
  return region;
}

function validateRegion(r: MemRegionDesc, i: number): void {
  if (r.size === 0) throw new ProtocolError(`memory region ${i} has size 0`);
  // Every end address must stay representable: readU64 already capped each term at 2^53.
  for (const [what, start] of [['guest', r.guestPhysAddr], ['user', r.userAddr], ['mmap offset', r.mmapOffset]] as const) {
    if (!Number.isSafeInteger(start + r.size)) {
      throw new ProtocolError(`memory region ${i}: ${what} range 0x${start.toString(16)}+0x${r.size.toString(16)} overflows`);
    }
  }
}

function writeRegionAt(view: DataView, offset: number, r: MemRegionDesc): void {
  writeU64(view, offset, r.guestPhysAddr);
  writeU64(view, offset + 8, r.size);
  writeU64(view, offset + 16, r.userAddr);
  writeU64(view, offset + 24, r.mmapOffset);
}

/**
 * SET_MEM_TABLE: 1..8 regions, no zero sizes, no overflowing ranges, no overlap in either the
 * guest-physical or the front-end user address space.
 */
export function decodeMemTable(payload: Uint8Array): MemRegionDesc[] {
  if (payload.length < 8) throw new ProtocolError(`memory table payload is ${payload.length} bytes, needs at least 8`);
  const view = new DataView(payload.buffer, payload.byteOffset, payload.length);
  const count = view.getUint32(0, true);
  if (count === 0) throw new ProtocolError('memory table has no regions');
  if (count > MAX_MEM_REGIONS) throw new ProtocolError(`memory table has ${count} regions, at most ${MAX_MEM_REGIONS} are allowed`);
  if (payload.length !== 8 + MEM_REGION_SIZE * count) {
    throw new ProtocolError(`memory table announces ${count} regions but its payload is ${payload.length} bytes (expected ${8 + MEM_REGION_SIZE * count})`);
  }
  const regions: MemRegionDesc[] = [];
  for (let i = 0; i < count; i++) regions.push(decodeRegionAt(view, 8 + MEM_REGION_SIZE * i, i));
  checkNoOverlap(regions, 'guestPhysAddr', 'guest-physical');
  checkNoOverlap(regions, 'userAddr', 'user');
  return regions;
}

function checkNoOverlap(regions: MemRegionDesc[], key: 'guestPhysAddr' | 'userAddr', space: string): void {
  const sorted = regions.map((r, i) => ({ start: r[key], end: r[key] + r.size, i })).sort((a, b) => a.start - b.start);
  for (let k = 1; k < sorted.length; k++) {
    if (sorted[k].start < sorted[k - 1].end) {
      throw new ProtocolError(`memory regions ${sorted[k - 1].i} and ${sorted[k].i} overlap in the ${space} address space`);
    }
  }
}

export function encodeMemTable(regions: readonly MemRegionDesc[]): Uint8Array {
  if (regions.length === 0 || regions.length > MAX_MEM_REGIONS) throw new RangeError(`memory table needs 1..${MAX_MEM_REGIONS} regions, got ${regions.length}`);
  const out = new Uint8Array(8 + MEM_REGION_SIZE * regions.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, regions.length, true);
  regions.forEach((r, i) => writeRegionAt(view, 8 + MEM_REGION_SIZE * i, r));
  return out;
}

/** ADD_MEM_REG / REM_MEM_REG: 8 bytes of padding then one region. */
export function decodeSingleRegion(payload: Uint8Array): MemRegionDesc {
  const view = viewOf(payload, SINGLE_REGION, 'single memory region');
  return decodeRegionAt(view, 8, 0);
}

export function encodeSingleRegion(region: MemRegionDesc): Uint8Array {
  const out = new Uint8Array(SINGLE_REGION);
  writeRegionAt(new DataView(out.buffer), 8, region);
  return out;
}

export interface LogDesc {
  mmapSize: number;
  mmapOffset: number;
}

export function decodeLog(payload: Uint8Array): LogDesc {
  const view = viewOf(payload, LOG, 'log');
  const log = { mmapSize: readU64(view, 0, 'log size'), mmapOffset: readU64(view, 8, 'log offset') };
  if (log.mmapSize === 0) throw new ProtocolError('log has size 0');
  if (!Number.isSafeInteger(log.mmapSize + log.mmapOffset)) throw new ProtocolError('log size + offset overflows');
  return log;
}

export function encodeLog(log: LogDesc): Uint8Array {
  const out = new Uint8Array(LOG);
  const view = new DataView(out.buffer);
  writeU64(view, 0, log.mmapSize);
  writeU64(view, 8, log.mmapOffset);
  return out;
}

/** SEND_RARP: the guest MAC in the first 6 bytes of a u64. */
export function decodeRarpMac(payload: Uint8Array): string {
  viewOf(payload, U64, 'SEND_RARP');
  return Array.from(payload.subarray(0, 6), (b) => b.toString(16).padStart(2, '0')).join(':');
}

export function encodeRarpMac(mac: string): Uint8Array {
  const parts = mac.split(':');
  if (parts.length !== 6 || parts.some((p) => !/^[0-9a-fA-F]{2}$/.test(p))) throw new RangeError(`"${mac}" is not a MAC address`);
  const out = new Uint8Array(U64);
  parts.forEach((p, i) => (out[i] = parseInt(p, 16)));
  return out;
}

export function decodeMtu(payload: Uint8Array): number {
  const mtu = decodeU64(payload, 'NET_SET_MTU');
  if (mtu < MTU_MIN || mtu > MTU_MAX) throw new ProtocolError(`MTU ${mtu} is outside ${MTU_MIN}..${MTU_MAX}`);
  return mtu;
}

// ---- fds ------------------------------------------------------------------------------------------

/**
 * How many fds the request must carry, given its (already size-checked) payload. Returns a range so
 * REM_MEM_REG's optional stray fd is tolerated (then closed by the caller).
 */
export function expectedFdCount(request: number, payload: Uint8Array): { min: number; max: number } {
  const rule = ruleFor(request).fds;
  if (typeof rule === 'number') return { min: rule, max: rule };
  if (rule === 'regions') {
    const count = payload.length >= 4 ? new DataView(payload.buffer, payload.byteOffset, 4).getUint32(0, true) : 0;
    return { min: count, max: count };
  }
  if (rule === 'vringFile') {
    const noFd = payload.length === U64 && (payload[1] & 0x01) !== 0;
    return noFd ? { min: 0, max: 0 } : { min: 1, max: 1 };
  }
  return rule;
}

/** Throws unless `fdCount` is what the request needs. */
export function checkFdCount(header: MessageHeader, payload: Uint8Array, fdCount: number): void {
  const { min, max } = expectedFdCount(header.request, payload);
  if (fdCount < min || fdCount > max) {
    const want = min === max ? `${min}` : `${min}..${max}`;
    throw new ProtocolError(`${requestName(header.request)}: ${fdCount} file descriptors attached, expected ${want}`);
  }
}

/** Builds header + payload in one buffer so a message goes out in a single send. */
export function encodeMessage(request: number, flags: number, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const out = new Uint8Array(HEADER_SIZE + payload.length);
  encodeHeader({ request, flags, size: payload.length }, out);
  out.set(payload, HEADER_SIZE);
  return out;
}

/** True when the request gets a reply whatever REPLY_ACK says. */
export function hasIntrinsicReply(request: number, protocolFeatures = 0): boolean {
  const reply = ruleFor(request).reply;
  if (reply === 'logShmfd') return hasBit(protocolFeatures, ProtocolFeature.LOG_SHMFD);
  return reply !== null;
}
