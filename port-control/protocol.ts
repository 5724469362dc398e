// The wire protocol of the ZMQ control services: one JSON object per frame, REQ/REP.
// Server, CLIs and the core scheduler all build and check messages through this module, so a
// field rename or a new rule lands everywhere at once.
import { MAX_BOND_MEMBERS } from '../relay/registry-api.js';
import type { DirectionCounters, MemberPort, MemifRef, RelayCpu, VfPortChoice, WorkerInfo } from '../relay/registry-api.js';
import { VF_PORT_CHOICES } from '../relay/registry-api.js';

import { MAX_CPU_ID, MAX_RELAYS, MAX_SOCKET_PATH_BYTES, MEMIF_MAX_CLIENT_RINGS, MEMIF_RINGS_CLIENT_ONLY, isMemifRingCount } from '../vocabulary/limits.js';
import { canonicalPciAddress } from '../vocabulary/pci.js';

export { MAX_BOND_MEMBERS, MAX_RELAYS };
export { DEFAULT_ENDPOINTS } from '../vocabulary/endpoints.js';

export const PROTOCOL_VERSION = 1;

export const BOND_NAME_PREFIX = 'net_bonding';
/** Requests larger than this are answered with an error instead of being parsed. */
export const MAX_REQUEST_BYTES = 64 * 1024;
export const MAX_CLIENT_ID_LENGTH = 64;


/**
 * Protocol-level error codes. Errors raised by the relay registry keep the registry's own code
 * (small integers following the original daemon) and carry `source: "registry"`.
 */
export const ErrorCode = {
  /** Not JSON, not an object, more than one frame, or too large. */
  BadMessage: 1000,
  /** `version` missing or not one this side speaks. */
  BadVersion: 1001,
  /** `op` missing or not served by this endpoint. */
  UnknownOp: 1002,
  /** A field is missing, has the wrong type or range, or is not part of the op. */
  BadField: 1003,
  /** The handler failed in a way that is not a registry error (a bug; see the daemon log). */
  Internal: 1004,
} as const;

export type ErrorSource = 'protocol' | 'registry';

export interface ErrorReply {
  status: 'error';
  version: number;
  /** The request's op, when the request was readable enough to have one. */
  op?: string;
  code: number;
  source: ErrorSource;
  message: string;
}

export class ProtocolError extends Error {
  readonly code: number;
  constructor(code: number, message: string) {
    super(message);
    this.name = 'ProtocolError';
    this.code = code;
  }
}

/** The file behind an `ipc://` endpoint, or undefined for other transports and abstract sockets. */
export function ipcPath(endpoint: string): string | undefined {
  if (!endpoint.startsWith('ipc://')) return undefined;
  const path = endpoint.slice('ipc://'.length);
  return path.startsWith('@') ? undefined : path;
}

// ---------------------------------------------------------------------------------------------
// Requests

export type PortControlOp = 'add' | 'remove' | 'add_sock' | 'remove_sock' | 'query_pci';
export const PORT_CONTROL_OPS: readonly PortControlOp[] = ['add', 'remove', 'add_sock', 'remove_sock', 'query_pci'];

export interface PortControlRequest {
  version: number;
  op: PortControlOp;
  virtioId?: number;
  /** `dddd:bb:ss.f` or `bb:ss.f`, any case; more than one means a bond. */
  pciAddrs?: string[];
  /** Bond name (must start with net_bonding). */
  name?: string;
  /** Bond mode 0..3; 1 (active-backup) when a bond is given without a mode. */
  mode?: number;
  vhostPath?: string;
  /** add: succeed when the same device is already there; remove: an empty relay is fine. */
  conditional?: boolean;
  /** add, add_sock: how to reach the VF (every member of a bond); absent: VIRTIOFWD_VF_PORT. */
  vfPort?: VfPortChoice;
  /** add, add_sock: a memif interface instead of a VF (no pciAddrs, name, mode or vfPort then). */
  memif?: MemifRef;
  /**
   * add, add_sock: memif interfaces that are members of the bond `name`, after its VFs (pciAddrs)
   * in member order; VFs and memifs count together towards the 2..8 members.
   */
  memifMembers?: MemifRef[];
}

export interface StatsRequest {
  version: number;
  op: 'stats';
  /** Relay ids to report; absent or empty means all. */
  relays?: number[];
  /** Report relays that are not active (default true). */
  includeInactive?: boolean;
  /**
   * Rates are measured since this client's previous request with the same id. Without an id
   * (or on the first request) the reply has no rates. Nothing shared is reset.
   */
  clientId?: string;
}

export interface ConfigRequest {
  version: number;
  op: 'config';
}

export interface GetWorkerCpusRequest {
  version: number;
  op: 'get_worker_cpus';
}

export interface UpdateCpuMapRequest {
  version: number;
  op: 'update';
  /** Applied as a whole or rejected as a whole. */
  map: RelayCpu[];
}

export type CoreSchedRequest = GetWorkerCpusRequest | UpdateCpuMapRequest;
export type ServiceName = 'portControl' | 'stats' | 'config' | 'coreSched';

export interface RequestByService {
  portControl: PortControlRequest;
  stats: StatsRequest;
  config: ConfigRequest;
  coreSched: CoreSchedRequest;
}

export const SERVICE_OPS: Record<ServiceName, readonly string[]> = {
  portControl: PORT_CONTROL_OPS,
  stats: ['stats'],
  config: ['config'],
  coreSched: ['get_worker_cpus', 'update'],
};

// ---------------------------------------------------------------------------------------------
// Replies

export interface OkBase {
  status: 'ok';
  version: number;
  /** The op this replies to (added by the server). */
  op?: string;
}

export interface PortControlReply extends OkBase {
  /** The relay the operation acted on (add_sock: the relay it took). */
  virtioId?: number;
  /** query_pci: the PCI address (or bond name) behind the socket. */
  pci?: string;
}

export interface DirectionRates {
  packets: number;
  bytes: number;
  rxPackets: number;
  rxBytes: number;
  /** Share of this direction's poll time that moved packets, 0..1, over the window. */
  busy: number;
}

export interface DirectionStats extends DirectionCounters {
  /** Per-second rates over the client's window; null on the client's first request. */
  rates: DirectionRates | null;
}

export interface RelayStats {
  id: number;
  /** A VM is connected and a device is attached. */
  active: boolean;
  socketPath: string | null;
  /** PCI address of the VF, the bond name, or the plain netdev; null when the relay has none. */
  device: string | null;
  deviceKind: 'vf' | 'bond' | 'memif' | null;
  bondMembers?: string[];
  /** How each VF (each bond member) is reached: af_packet or af_xdp, with the XDP attach mode. */
  ports: MemberPort[];
  vmConnected: boolean;
  numaNode: number;
  queuePairs: number;
  vfToVm: DirectionStats;
  vmToVf: DirectionStats;
}

export interface WorkerStats extends WorkerInfo {
  /** busyNs delta / pollNs delta over the client's window, 0..1; null without a window. */
  load: number | null;
}

/** The daemon process's memory (process.memoryUsage() of its main thread). */
export interface DaemonMemory {
  /** Resident set of the whole process, every thread. */
  rssBytes: number;
  /** The main thread's JavaScript heap: in use, and reserved by V8. */
  heapUsedBytes: number;
  heapTotalBytes: number;
  /** Memory outside the heap that JavaScript objects of the main thread hold (buffers). */
  externalBytes: number;
}

export interface StatsReply extends OkBase {
  /** Monotonic server time of this snapshot, in ms. */
  timeMs: number;
  /** Length of the client's window in ms, or null when this was its first request. */
  windowMs: number | null;
  relays: RelayStats[];
  workers: WorkerStats[];
  daemon: DaemonMemory;
}

export interface ConfigReply extends OkBase {
  /** Pins from VIRTIOFWD_CPU_PINS. */
  pins: RelayCpu[];
  /** The live relay→CPU assignment. */
  map: RelayCpu[];
}

export interface WorkerCpusReply extends OkBase {
  cpus: number[];
  workers: WorkerInfo[];
  /** The live relay→CPU assignment (so a client can show or amend it in one round trip). */
  map: RelayCpu[];
}

export type UpdateCpuMapReply = OkBase;

export interface ReplyByOp {
  add: PortControlReply;
  remove: PortControlReply;
  add_sock: PortControlReply;
  remove_sock: PortControlReply;
  query_pci: PortControlReply;
  stats: StatsReply;
  config: ConfigReply;
  get_worker_cpus: WorkerCpusReply;
  update: UpdateCpuMapReply;
}

export type AnyOp = keyof ReplyByOp;

// ---------------------------------------------------------------------------------------------
// PCI addresses and bonds

/**
 * Canonical lower-case `dddd:bb:ss.f` (the grammar of vocabulary/pci.ts); throws ProtocolError
 * naming the address otherwise. A field carries no surrounding white space.
 */
export function canonicalPci(text: string): string {
  try {
    if (text.trim() !== text) throw new Error(`"${text}" has white space around it`);
    return canonicalPciAddress(text);
  } catch (err) {
    throw new ProtocolError(ErrorCode.BadField, (err as Error).message);
  }
}

const BOND_MODE_HELP = '0 (round-robin), 1 (active-backup), 2 (balance) or 3 (broadcast)';

export function checkBondMode(mode: unknown): 0 | 1 | 2 | 3 {
  if (typeof mode !== 'number' || !Number.isInteger(mode)) {
    throw new ProtocolError(ErrorCode.BadField, `bond mode ${JSON.stringify(mode)} is not an integer; use ${BOND_MODE_HELP}`);
  }
  if (mode >= 4 && mode <= 6) {
    const names = { 4: '802.3ad', 5: 'balance-tlb', 6: 'balance-alb' } as Record<number, string>;
    throw new ProtocolError(
      ErrorCode.BadField,
      `bond mode ${mode} (${names[mode]}) is not supported: it needs switch or MAC management the forwarder does not do; use ${BOND_MODE_HELP}`,
    );
  }
  if (mode < 0 || mode > 3) throw new ProtocolError(ErrorCode.BadField, `bond mode ${mode} does not exist; use ${BOND_MODE_HELP}`);
  return mode as 0 | 1 | 2 | 3;
}

export function checkBondName(name: string): void {
  if (!name.startsWith(BOND_NAME_PREFIX)) {
    throw new ProtocolError(ErrorCode.BadField, `bond name ${JSON.stringify(name)} must start with ${BOND_NAME_PREFIX}`);
  }
  if (name.length > 63 || !/^[A-Za-z0-9_.:-]+$/.test(name)) {
    throw new ProtocolError(
      ErrorCode.BadField,
      `bond name ${JSON.stringify(name)} must be at most 63 characters of letters, digits and _ . : -`,
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Validation

type Json = Record<string, unknown>;

function bad(message: string): never {
  throw new ProtocolError(ErrorCode.BadField, message);
}

function onlyFields(msg: Json, op: string, allowed: readonly string[]): void {
  const extra = Object.keys(msg).filter((k) => k !== 'op' && k !== 'version' && !allowed.includes(k));
  if (extra.length > 0) bad(`op ${op} does not take the field(s) ${extra.join(', ')}`);
}

function intField(msg: Json, key: string, min: number, max: number, required: boolean): number | undefined {
  const v = msg[key];
  if (v === undefined) {
    if (required) bad(`field ${key} is required`);
    return undefined;
  }
  if (typeof v !== 'number' || !Number.isInteger(v)) bad(`field ${key} must be an integer, not ${JSON.stringify(v)}`);
  if (v < min || v > max) bad(`field ${key} is ${v}, outside ${min}..${max}`);
  return v;
}

function boolField(msg: Json, key: string): boolean | undefined {
  const v = msg[key];
  if (v === undefined) return undefined;
  if (typeof v !== 'boolean') bad(`field ${key} must be true or false, not ${JSON.stringify(v)}`);
  return v;
}

function stringField(msg: Json, key: string, maxLength: number): string | undefined {
  const v = msg[key];
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || v.length === 0) bad(`field ${key} must be a non-empty string`);
  if (v.length > maxLength) bad(`field ${key} is longer than ${maxLength} characters`);
  return v;
}

function vhostPathField(msg: Json): string | undefined {
  const path = stringField(msg, 'vhostPath', 4096);
  if (path === undefined) return undefined;
  if (!path.startsWith('/')) bad(`vhostPath ${JSON.stringify(path)} must be an absolute path`);
  if (Buffer.byteLength(path) > MAX_SOCKET_PATH_BYTES) {
    bad(`vhostPath ${path} is longer than the ${MAX_SOCKET_PATH_BYTES} bytes a unix socket path can hold`);
  }
  if (path.includes('\0')) bad('vhostPath contains a NUL byte');
  return path;
}

function pciListField(msg: Json): string[] | undefined {
  const v = msg.pciAddrs;
  if (v === undefined) return undefined;
  if (!Array.isArray(v)) bad('field pciAddrs must be an array of PCI address strings');
  const out = v.map((item) => {
    if (typeof item !== 'string') bad(`pciAddrs holds ${JSON.stringify(item)}, which is not a string`);
    return canonicalPci(item);
  });
  const dup = out.find((p, i) => out.indexOf(p) !== i);
  if (dup) bad(`PCI address ${dup} is given twice`);
  return out;
}

function checkDeviceSpec(op: string, pci: string[], name: string | undefined, mode: number | undefined): void {
  if (name === undefined) {
    if (mode !== undefined) bad(`op ${op}: a bond mode was given without a bond name`);
    if (pci.length > 1) bad(`op ${op}: ${pci.length} PCI addresses need a bond name (--name)`);
    return;
  }
  checkBondName(name);
  if (mode !== undefined) checkBondMode(mode);
}

function checkBondMembers(op: string, pci: string[], memifs: number, name: string | undefined): void {
  if (name === undefined) return;
  const n = pci.length + memifs;
  if (n < 2) bad(`op ${op}: bond ${name} needs at least 2 ${memifs === 0 ? 'PCI addresses' : 'members (PCI addresses and memifMembers)'}, got ${n}`);
  if (n > MAX_BOND_MEMBERS) bad(`op ${op}: bond ${name} has ${n} members; at most ${MAX_BOND_MEMBERS} are allowed`);
}

/** memifMembers: a non-empty array of memif objects, no interface given twice. */
function memifMembersField(v: unknown): MemifRef[] {
  if (!Array.isArray(v) || v.length === 0) bad(`field memifMembers must be a non-empty array of memif objects { socket, role, id, secret? }, not ${JSON.stringify(v)}`);
  const out = v.map((item, i) => {
    try {
      return memifField(item);
    } catch (err) {
      bad(`memifMembers[${i}]: ${(err as Error).message}`);
    }
  });
  const twice = out.find((m, i) => out.findIndex((o) => o.socket === m.socket && o.id === m.id && o.role === m.role) !== i);
  if (twice) bad(`memifMembers: memif ${twice.role} ${twice.socket}#${twice.id} is given twice`);
  return out;
}

function validatePortControl(msg: Json, op: PortControlOp): PortControlRequest {
  onlyFields(msg, op, ['virtioId', 'pciAddrs', 'name', 'mode', 'vhostPath', 'conditional', 'vfPort', 'memif', 'memifMembers']);
  const req: PortControlRequest = { version: PROTOCOL_VERSION, op };
  const virtioId = intField(msg, 'virtioId', 0, MAX_RELAYS - 1, op === 'add' || op === 'remove');
  const pciAddrs = pciListField(msg) ?? [];
  const name = stringField(msg, 'name', 64);
  // Mode is range-checked with its own messages (4..6 are refused by name).
  const mode = msg.mode === undefined ? undefined : checkBondMode(msg.mode);
  const vhostPath = vhostPathField(msg);
  const conditional = boolField(msg, 'conditional');
  const vfPort = msg.vfPort === undefined ? undefined : vfPortField(msg.vfPort);
  if (vfPort !== undefined && op !== 'add' && op !== 'add_sock') bad(`op ${op}: field vfPort is for add and add_sock only`);
  const memif = msg.memif === undefined ? undefined : memifField(msg.memif);
  if (memif !== undefined) {
    if (op !== 'add' && op !== 'add_sock') bad(`op ${op}: field memif is for add and add_sock only`);
    if (pciAddrs.length > 0 || name !== undefined || mode !== undefined || vfPort !== undefined) {
      bad(`op ${op}: a memif interface takes the place of a VF: pciAddrs, name, mode and vfPort cannot go with it (a bond takes memifMembers)`);
    }
  }
  const memifMembers = msg.memifMembers === undefined ? undefined : memifMembersField(msg.memifMembers);
  if (memifMembers !== undefined) {
    if (op !== 'add' && op !== 'add_sock') bad(`op ${op}: field memifMembers is for add and add_sock only`);
    if (name === undefined) bad(`op ${op}: memifMembers are members of a bond: give its name (a lone memif goes in field memif)`);
    if (memif !== undefined) bad(`op ${op}: field memif cannot go with memifMembers`);
  }

  switch (op) {
    case 'add':
    case 'add_sock':
      if (op === 'add_sock' && vhostPath === undefined) bad('op add_sock: field vhostPath is required');
      if (memif !== undefined) break;
      if (pciAddrs.length === 0 && memifMembers === undefined) bad(`op ${op}: at least one PCI address is required`);
      checkDeviceSpec(op, pciAddrs, name, mode);
      checkBondMembers(op, pciAddrs, memifMembers?.length ?? 0, name);
      break;
    case 'remove':
      checkDeviceSpec(op, pciAddrs, name, mode);
      if (name !== undefined && pciAddrs.length > MAX_BOND_MEMBERS) bad(`op remove: a bond has at most ${MAX_BOND_MEMBERS} members`);
      break;
    case 'remove_sock':
      checkDeviceSpec(op, pciAddrs, name, mode);
      if (vhostPath === undefined && pciAddrs.length === 0 && name === undefined) {
        bad('op remove_sock: give vhostPath, a PCI address or a bond name');
      }
      break;
    case 'query_pci':
      if (vhostPath === undefined) bad('op query_pci: field vhostPath is required');
      if (pciAddrs.length > 0 || name !== undefined || mode !== undefined) bad('op query_pci takes only vhostPath');
      break;
  }
  if (virtioId !== undefined) req.virtioId = virtioId;
  if (pciAddrs.length > 0) req.pciAddrs = pciAddrs;
  if (name !== undefined) req.name = name;
  if (name !== undefined && op.startsWith('add')) req.mode = mode ?? 1;
  else if (mode !== undefined) req.mode = mode;
  if (vhostPath !== undefined) req.vhostPath = vhostPath;
  if (conditional !== undefined) req.conditional = conditional;
  if (vfPort !== undefined) req.vfPort = vfPort;
  if (memif !== undefined) req.memif = memif;
  if (memifMembers !== undefined) req.memifMembers = memifMembers;
  return req;
}

const MEMIF_FIELDS = ['socket', 'role', 'id', 'secret', 'rings'] as const;

/** The memif field: { socket, role: 'server'|'client', id, secret?, rings? }, every part checked. */
function memifField(v: unknown): MemifRef {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) bad(`field memif must be an object { socket, role, id, secret?, rings? }, not ${JSON.stringify(v)}`);
  const m = v as Record<string, unknown>;
  const unknown = Object.keys(m).filter((k) => !(MEMIF_FIELDS as readonly string[]).includes(k));
  if (unknown.length > 0) bad(`field memif: unknown field${unknown.length > 1 ? 's' : ''} ${unknown.join(', ')} (allowed: ${MEMIF_FIELDS.join(', ')})`);
  if (typeof m.socket !== 'string' || m.socket.length === 0) bad('field memif.socket must be a non-empty socket path');
  if (!m.socket.startsWith('/')) bad(`field memif.socket must be an absolute path, not ${JSON.stringify(m.socket)}`);
  if (Buffer.byteLength(m.socket) > 107) bad(`field memif.socket is ${Buffer.byteLength(m.socket)} bytes; a unix socket path may have at most 107`);
  if (m.role !== 'server' && m.role !== 'client') bad(`field memif.role must be "server" or "client", not ${JSON.stringify(m.role)}`);
  if (typeof m.id !== 'number' || !Number.isInteger(m.id) || m.id < 0 || m.id > 0xffffffff) bad(`field memif.id must be an integer in [0, 4294967295], not ${JSON.stringify(m.id)}`);
  const out: MemifRef = { socket: m.socket, role: m.role, id: m.id };
  if (m.secret !== undefined) {
    if (typeof m.secret !== 'string' || m.secret.length === 0 || Buffer.byteLength(m.secret) > 23 || m.secret.includes('\0')) {
      bad('field memif.secret must be a string of 1 to 23 bytes without NUL');
    }
    out.secret = m.secret;
  }
  if (m.rings !== undefined) {
    if (!isMemifRingCount(m.rings)) {
      bad(`field memif.rings must be an integer in [1, ${MEMIF_MAX_CLIENT_RINGS}], not ${JSON.stringify(m.rings)}`);
    }
    if (m.role !== 'client') bad(`field memif.${MEMIF_RINGS_CLIENT_ONLY}`);
    out.rings = m.rings;
  }
  return out;
}

function vfPortField(v: unknown): VfPortChoice {
  if (typeof v !== 'string' || !VF_PORT_CHOICES.includes(v as VfPortChoice)) bad(`field vfPort must be one of ${VF_PORT_CHOICES.join(', ')}, not ${JSON.stringify(v)}`);
  return v as VfPortChoice;
}

function validateStats(msg: Json): StatsRequest {
  onlyFields(msg, 'stats', ['relays', 'includeInactive', 'clientId']);
  const req: StatsRequest = { version: PROTOCOL_VERSION, op: 'stats' };
  if (msg.relays !== undefined) {
    if (!Array.isArray(msg.relays)) bad('field relays must be an array of relay ids');
    if (msg.relays.length > MAX_RELAYS) bad(`field relays names ${msg.relays.length} relays; there are at most ${MAX_RELAYS}`);
    req.relays = msg.relays.map((r) => {
      if (typeof r !== 'number' || !Number.isInteger(r) || r < 0 || r >= MAX_RELAYS) {
        bad(`relay id ${JSON.stringify(r)} is not an integer in 0..${MAX_RELAYS - 1}`);
      }
      return r;
    });
  }
  const includeInactive = boolField(msg, 'includeInactive');
  if (includeInactive !== undefined) req.includeInactive = includeInactive;
  const clientId = stringField(msg, 'clientId', MAX_CLIENT_ID_LENGTH);
  if (clientId !== undefined) req.clientId = clientId;
  return req;
}

function validateCpuMap(msg: Json): RelayCpu[] {
  const v = msg.map;
  if (!Array.isArray(v)) bad('field map must be an array of {relay, vfToVmCpu, vmToVfCpu}');
  if (v.length === 0) bad('field map is empty: name at least one relay');
  if (v.length > MAX_RELAYS) bad(`field map has ${v.length} entries; there are at most ${MAX_RELAYS} relays`);
  const seen = new Set<number>();
  return v.map((entry, i) => {
    if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) bad(`map[${i}] is not an object`);
    const e = entry as Json;
    const extra = Object.keys(e).filter((k) => !['relay', 'vfToVmCpu', 'vmToVfCpu'].includes(k));
    if (extra.length > 0) bad(`map[${i}] has unknown field(s) ${extra.join(', ')}`);
    const relay = intFieldAt(e, 'relay', i, 0, MAX_RELAYS - 1);
    if (seen.has(relay)) bad(`map names relay ${relay} twice`);
    seen.add(relay);
    return {
      relay,
      vfToVmCpu: intFieldAt(e, 'vfToVmCpu', i, 0, MAX_CPU_ID),
      vmToVfCpu: intFieldAt(e, 'vmToVfCpu', i, 0, MAX_CPU_ID),
    };
  });
}

function intFieldAt(e: Json, key: string, index: number, min: number, max: number): number {
  const v = e[key];
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    bad(`map[${index}].${key} must be an integer in ${min}..${max}, not ${JSON.stringify(v)}`);
  }
  return v;
}

/** Parses one frame into a request of `service`; throws ProtocolError with the right code. */
export function parseRequest<S extends ServiceName>(service: S, frame: Buffer | string): RequestByService[S] {
  const size = typeof frame === 'string' ? Buffer.byteLength(frame) : frame.length;
  if (size > MAX_REQUEST_BYTES) {
    throw new ProtocolError(ErrorCode.BadMessage, `request of ${size} bytes is larger than the ${MAX_REQUEST_BYTES}-byte limit`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(typeof frame === 'string' ? frame : frame.toString('utf8'));
  } catch (err) {
    throw new ProtocolError(ErrorCode.BadMessage, `request is not JSON: ${(err as Error).message}`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new ProtocolError(ErrorCode.BadMessage, 'request must be a JSON object with op and version');
  }
  const msg = parsed as Json;
  if (msg.version === undefined) throw new ProtocolError(ErrorCode.BadVersion, `request has no version (this side speaks version ${PROTOCOL_VERSION})`);
  if (msg.version !== PROTOCOL_VERSION) {
    throw new ProtocolError(ErrorCode.BadVersion, `protocol version ${JSON.stringify(msg.version)} is not supported (this side speaks version ${PROTOCOL_VERSION})`);
  }
  const op = msg.op;
  const ops = SERVICE_OPS[service];
  if (typeof op !== 'string') throw new ProtocolError(ErrorCode.UnknownOp, `request has no op (the ${service} service takes ${ops.join(', ')})`);
  if (!ops.includes(op)) {
    throw new ProtocolError(ErrorCode.UnknownOp, `op ${JSON.stringify(op)} is unknown to the ${service} service (it takes ${ops.join(', ')})`);
  }
  switch (op) {
    case 'stats':
      return validateStats(msg) as RequestByService[S];
    case 'config':
      onlyFields(msg, op, []);
      return { version: PROTOCOL_VERSION, op } as RequestByService[S];
    case 'get_worker_cpus':
      onlyFields(msg, op, []);
      return { version: PROTOCOL_VERSION, op } as RequestByService[S];
    case 'update':
      onlyFields(msg, op, ['map']);
      return { version: PROTOCOL_VERSION, op, map: validateCpuMap(msg) } as RequestByService[S];
    default:
      return validatePortControl(msg, op as PortControlOp) as RequestByService[S];
  }
}

export function errorReply(code: number, message: string, source: ErrorSource = 'protocol'): ErrorReply {
  return { status: 'error', version: PROTOCOL_VERSION, code, source, message };
}

/** Checks the envelope of a reply on the client side; returns the reply or throws a readable Error. */
export function parseReply<T extends OkBase>(frame: Buffer | string, what: string): T | ErrorReply {
  let parsed: unknown;
  try {
    parsed = JSON.parse(typeof frame === 'string' ? frame : frame.toString('utf8'));
  } catch (err) {
    throw new Error(`${what}: reply is not JSON: ${(err as Error).message}`);
  }
  if (typeof parsed !== 'object' || parsed === null) throw new Error(`${what}: reply is not a JSON object`);
  const r = parsed as Json;
  if (r.version !== PROTOCOL_VERSION) throw new Error(`${what}: reply speaks protocol version ${JSON.stringify(r.version)}, expected ${PROTOCOL_VERSION}`);
  if (r.status === 'error') {
    if (typeof r.code !== 'number' || typeof r.message !== 'string') throw new Error(`${what}: malformed error reply`);
    return parsed as ErrorReply;
  }
  if (r.status !== 'ok') throw new Error(`${what}: reply has status ${JSON.stringify(r.status)}`);
  return parsed as T;
}
