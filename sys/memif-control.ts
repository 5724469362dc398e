// The memif control channel (protocol 2.0), in both roles, on the main thread's Reactor.
//
// A SOCK_SEQPACKET unix socket carries fixed 128-byte messages, a type (u16) then the body:
//   server → client: HELLO (versions and limits), ACK, CONNECTED, DISCONNECT
//   client → server: INIT (version, interface id, mode, secret), ADD_REGION (+ memfd),
//                    ADD_RING (+ interrupt eventfd), CONNECT, DISCONNECT
// The client sends one message and waits for the server's ACK before the next; CONNECT is answered
// by CONNECTED, and from then on both sides poll the rings (memif-rings.ts).
//
// The peer is untrusted in both roles. Every message is checked before it changes anything; a bad
// one ends the connection (DISCONNECT with the reason, then close) and is reported through
// `onEvent`, never thrown: the daemon and its other relays carry on. In the server role the
// regions come from the client: each must be a memfd sealed against shrinking (or sealable here),
// as large as announced, and every ring must lie inside its region; a file that could shrink under
// the mapping would turn the next touch into a SIGBUS that takes the whole process down.
import { close } from './fd.js';
import { Reactor } from './poll.js';
import { eventfd, checkNotifierFd } from './eventfd.js';
import { receiveMessage, sendMessage, unixAccept, unixConnect, unixListen } from './unix-socket.js';
import { claimSocketPath } from './socket-path.js';
import { F_SEAL_SEAL, F_SEAL_SHRINK, addSeals, fileSeals, fstatSize, ftruncate, memfdCreate, mmap, munmap, viewAt, MAP_SHARED, PROT_READ, PROT_WRITE } from './memory.js';
import { unlinkSync } from 'node:fs';
import { MEMIF_MAX_CLIENT_RINGS, isMemifRingCount } from '../vocabulary/limits.js';
import {
  MEMIF_MAX_LOG2_RING, MEMIF_RING_FLAG_MASK_INT, initRing, newMemifCounters, postAllBuffers, resetRing, ringBytes, ringHasCookie,
  type MemifPortHandle, type MemifRegionMapping, type MemifRingHandle, type MemifRole,
} from './memif-rings.js';

export const MEMIF_VERSION = 0x0200;
export const MEMIF_MESSAGE_SIZE = 128;
const NAME_SIZE = 32;
const SECRET_SIZE = 24;
const REASON_SIZE = 96;

export const MSG_ACK = 1;
export const MSG_HELLO = 2;
export const MSG_INIT = 3;
export const MSG_ADD_REGION = 4;
export const MSG_ADD_RING = 5;
export const MSG_CONNECT = 6;
export const MSG_CONNECTED = 7;
export const MSG_DISCONNECT = 8;
/** ADD_RING flag: the ring carries frames from the client to the server. */
export const ADD_RING_FLAG_C2S = 1;
const MODE_ETHERNET = 0;

/**
 * Rings per direction a server accepts: a client gets one per queue up to this (HELLO says so).
 * A client told fewer than it has queues uses that many, but DPDK 22.11's net_memif then points
 * the queues left over at the region's first ring, which breaks the ring for both sides: so this
 * is generous. Each ring costs an eventfd and one poll per burst.
 */
export const MEMIF_MAX_RINGS = 64;
/** Regions a client may add (the relay's own client uses one). */
export const MEMIF_MAX_REGIONS = 16;
/** Largest region the relay maps (one view must cover it, and it bounds what a client can pin). */
export const MEMIF_MAX_REGION_BYTES = 1 << 30;
/** How long a connection may take from accept (or connect) to CONNECTED before it is dropped. */
const HANDSHAKE_MS = 5000;
const RECONNECT_MS = 1000;

export type MemifMessage =
  | { type: 'ack' }
  | { type: 'hello'; name: string; minVersion: number; maxVersion: number; maxRegion: number; maxS2cRing: number; maxC2sRing: number; maxLog2RingSize: number }
  | { type: 'init'; version: number; id: number; mode: number; secret: string; name: string }
  | { type: 'add_region'; index: number; size: number }
  | { type: 'add_ring'; flags: number; index: number; region: number; offset: number; log2RingSize: number; privateHdrSize: number }
  | { type: 'connect'; ifName: string }
  | { type: 'connected'; ifName: string }
  | { type: 'disconnect'; code: number; reason: string };

export class MemifProtocolError extends Error {
  override name = 'MemifProtocolError';
}

function putString(bytes: Uint8Array, at: number, size: number, text: string): void {
  const encoded = Buffer.from(text, 'utf8').subarray(0, size - 1);
  bytes.set(encoded, at);
}

function getString(bytes: Uint8Array, at: number, size: number): string {
  const field = bytes.subarray(at, at + size);
  const end = field.indexOf(0);
  return Buffer.from(field.subarray(0, end < 0 ? size : end)).toString('utf8');
}

export function encodeMessage(m: MemifMessage): Uint8Array {
  const bytes = new Uint8Array(MEMIF_MESSAGE_SIZE);
  const v = new DataView(bytes.buffer);
  const body = 2;
  switch (m.type) {
    case 'ack':
      v.setUint16(0, MSG_ACK, true);
      break;
    case 'hello':
      v.setUint16(0, MSG_HELLO, true);
      putString(bytes, body, NAME_SIZE, m.name);
      v.setUint16(body + 32, m.minVersion, true);
      v.setUint16(body + 34, m.maxVersion, true);
      v.setUint16(body + 36, m.maxRegion, true);
      v.setUint16(body + 38, m.maxS2cRing, true);
      v.setUint16(body + 40, m.maxC2sRing, true);
      v.setUint8(body + 42, m.maxLog2RingSize);
      break;
    case 'init':
      v.setUint16(0, MSG_INIT, true);
      v.setUint16(body, m.version, true);
      v.setUint32(body + 2, m.id, true);
      v.setUint8(body + 6, m.mode);
      putString(bytes, body + 7, SECRET_SIZE, m.secret);
      putString(bytes, body + 7 + SECRET_SIZE, NAME_SIZE, m.name);
      break;
    case 'add_region':
      v.setUint16(0, MSG_ADD_REGION, true);
      v.setUint16(body, m.index, true);
      v.setBigUint64(body + 2, BigInt(m.size), true);
      break;
    case 'add_ring':
      v.setUint16(0, MSG_ADD_RING, true);
      v.setUint16(body, m.flags, true);
      v.setUint16(body + 2, m.index, true);
      v.setUint16(body + 4, m.region, true);
      v.setUint32(body + 6, m.offset, true);
      v.setUint8(body + 10, m.log2RingSize);
      v.setUint16(body + 11, m.privateHdrSize, true);
      break;
    case 'connect':
    case 'connected':
      v.setUint16(0, m.type === 'connect' ? MSG_CONNECT : MSG_CONNECTED, true);
      putString(bytes, body, NAME_SIZE, m.ifName);
      break;
    case 'disconnect':
      v.setUint16(0, MSG_DISCONNECT, true);
      v.setUint32(body, m.code >>> 0, true);
      putString(bytes, body + 4, REASON_SIZE, m.reason);
      break;
  }
  return bytes;
}

/** Decodes one message; throws MemifProtocolError for a wrong size or an unknown type. */
export function decodeMessage(bytes: Uint8Array): MemifMessage {
  if (bytes.byteLength !== MEMIF_MESSAGE_SIZE) throw new MemifProtocolError(`message of ${bytes.byteLength} bytes, memif messages are ${MEMIF_MESSAGE_SIZE}`);
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const body = 2;
  const type = v.getUint16(0, true);
  switch (type) {
    case MSG_ACK:
      return { type: 'ack' };
    case MSG_HELLO:
      return {
        type: 'hello',
        name: getString(bytes, body, NAME_SIZE),
        minVersion: v.getUint16(body + 32, true),
        maxVersion: v.getUint16(body + 34, true),
        maxRegion: v.getUint16(body + 36, true),
        maxS2cRing: v.getUint16(body + 38, true),
        maxC2sRing: v.getUint16(body + 40, true),
        maxLog2RingSize: v.getUint8(body + 42),
      };
    case MSG_INIT:
      return {
        type: 'init',
        version: v.getUint16(body, true),
        id: v.getUint32(body + 2, true),
        mode: v.getUint8(body + 6),
        secret: getString(bytes, body + 7, SECRET_SIZE),
        name: getString(bytes, body + 7 + SECRET_SIZE, NAME_SIZE),
      };
    case MSG_ADD_REGION: {
      const size = v.getBigUint64(body + 2, true);
      // Sizes beyond 2^53 are reported as such rather than rounded into a plausible value.
      return { type: 'add_region', index: v.getUint16(body, true), size: size > BigInt(Number.MAX_SAFE_INTEGER) ? Infinity : Number(size) };
    }
    case MSG_ADD_RING:
      return {
        type: 'add_ring',
        flags: v.getUint16(body, true),
        index: v.getUint16(body + 2, true),
        region: v.getUint16(body + 4, true),
        offset: v.getUint32(body + 6, true),
        log2RingSize: v.getUint8(body + 10),
        privateHdrSize: v.getUint16(body + 11, true),
      };
    case MSG_CONNECT:
      return { type: 'connect', ifName: getString(bytes, body, NAME_SIZE) };
    case MSG_CONNECTED:
      return { type: 'connected', ifName: getString(bytes, body, NAME_SIZE) };
    case MSG_DISCONNECT:
      return { type: 'disconnect', code: v.getUint32(body, true), reason: getString(bytes, body + 4, REASON_SIZE) };
    default:
      throw new MemifProtocolError(`unknown message type ${type}`);
  }
}

/** What ADD_RING may describe, given the regions added so far: null when acceptable, else why not. Pure, for the unit tests. */
export function checkRingPlacement(regionLengths: readonly number[], m: { index: number; region: number; offset: number; log2RingSize: number; privateHdrSize: number }): string | null {
  if (m.index >= MEMIF_MAX_RINGS) return `ring index ${m.index}: at most ${MEMIF_MAX_RINGS} rings per direction are supported`;
  if (m.region >= regionLengths.length) return `ring in region ${m.region}, which was not added (${regionLengths.length} regions)`;
  if (m.log2RingSize < 1 || m.log2RingSize > MEMIF_MAX_LOG2_RING) return `log2 ring size ${m.log2RingSize} is outside [1, ${MEMIF_MAX_LOG2_RING}]`;
  if (m.privateHdrSize !== 0) return `private header size ${m.privateHdrSize} is not supported`;
  if (m.offset % 4 !== 0) return `ring offset ${m.offset} is not 4-byte aligned`;
  const end = m.offset + ringBytes(m.log2RingSize);
  if (end > regionLengths[m.region]) return `ring at offset ${m.offset} with ${1 << m.log2RingSize} slots ends at ${end}, past the ${regionLengths[m.region]}-byte region ${m.region}`;
  return null;
}

/** Checks a region's file before it is mapped: why it cannot be, or null. Seals it against shrinking when it can. */
function checkRegionFile(fd: number, size: number): string | null {
  let seals: number;
  try {
    seals = fileSeals(fd);
  } catch {
    return 'the region file does not support seals (not a memfd): it could shrink under the mapping';
  }
  if ((seals & F_SEAL_SHRINK) === 0) {
    if ((seals & F_SEAL_SEAL) !== 0) return 'the region file is not sealed against shrinking and cannot be sealed any more';
    try {
      addSeals(fd, F_SEAL_SHRINK);
    } catch (err) {
      return `the region file cannot be sealed against shrinking (${(err as { code?: string }).code ?? (err as Error).message})`;
    }
  }
  const actual = fstatSize(fd);
  if (actual < size) return `region announced as ${size} bytes, its file has ${actual}`;
  return null;
}

export interface MemifEndpointOptions {
  role: MemifRole;
  socketPath: string;
  /** Interface id: the server serves one id; the client asks for it. */
  id: number;
  /** Up to 24 bytes; the server requires it when set, the client sends it. */
  secret?: string;
  /** Our name in HELLO/INIT/CONNECT (at most 31 bytes are sent). */
  name?: string;
  /** Client role: log2 of ring slots (default 10) and bytes per buffer (default 2048). */
  log2RingSize?: number;
  /**
   * Client role: ring pairs to create (default 1), at most MEMIF_MAX_CLIENT_RINGS and what the
   * server allows. A server expects as many as it has queues.
   */
  rings?: number;
  bufferSize?: number;
  maxFrameLength: number;
  /** Ask the peer for an interrupt per burst on the ring the relay receives on. */
  rxInterrupts: boolean;
  reactor: Reactor;
  /** Called with a connected handle; its promise resolves once nothing polls the previous handle. */
  onUp(handle: MemifPortHandle): Promise<void>;
  /** Called when the connection ended; the resolved promise means no thread polls the handle any more (its memory is then unmapped). */
  onDown(reason: string): Promise<void>;
  onEvent(level: 'info' | 'warn', message: string, data?: Record<string, unknown>): void;
}

/** The resources of one connection. */
interface Session {
  fd: number;
  regions: { mapping: MemifRegionMapping; fd: number }[];
  /** By ring index, in the order added. */
  rings: { c2s: MemifRingHandle[]; s2c: MemifRingHandle[] };
  ringFds: number[];
  /** Client role: messages waiting for the server's ACK, sent one at a time. */
  outbox: { bytes: Uint8Array; fds: number[] }[];
  /** Client role: bytes per buffer of the relay's own. */
  bufferSize: number;
  connected: boolean;
  timer: NodeJS.Timeout | null;
  peerName: string;
  /** Server role: INIT was accepted. */
  initSeen: boolean;
}

/** One memif interface of the relay: a listener (server) or a connection kept up (client). */
export class MemifEndpoint {
  private listenFd = -1;
  private session: Session | null = null;
  private retry: NodeJS.Timeout | null = null;
  private closed = false;
  private connectFailures = 0;
  /** Disconnections are handled one at a time, after the previous up/down callbacks. */
  private chain: Promise<void> = Promise.resolve();
  readonly counters = newMemifCounters();
  /** 'listening' | 'connecting' | 'handshake' | 'connected' | 'closed', for stats. */
  state = 'idle';
  lastDisconnectReason = '';

  constructor(private readonly opts: MemifEndpointOptions) {
    if (!Number.isInteger(opts.id) || opts.id < 0 || opts.id > 0xffffffff) throw new RangeError(`memif id ${opts.id} is not a u32`);
    if (opts.secret !== undefined && Buffer.byteLength(opts.secret) > SECRET_SIZE - 1) throw new RangeError(`memif secret is longer than ${SECRET_SIZE - 1} bytes`);
    const rings = opts.rings ?? 1;
    if (!isMemifRingCount(rings)) throw new RangeError(`memif rings ${rings} is not an integer in [1, ${MEMIF_MAX_CLIENT_RINGS}]`);
  }

  get name(): string {
    return `memif:${this.opts.socketPath}#${this.opts.id}`;
  }

  /** The handle of a port with no connection (what workers poll while the peer is away). */
  downHandle(): MemifPortHandle {
    return {
      kind: 'memif', name: this.name, role: this.opts.role, connected: false, regions: [], rx: [], tx: [], bufferSize: 0,
      maxFrameLength: this.opts.maxFrameLength, rxInterrupts: this.opts.rxInterrupts, counters: this.counters,
    };
  }

  /** Server: starts listening (throws when the path cannot be bound). Client: starts connecting. */
  start(): void {
    if (this.opts.role === 'server') {
      claimSocketPath(this.opts.socketPath);
      this.listenFd = unixListen(this.opts.socketPath, 4, { seqpacket: true });
      this.state = 'listening';
      this.opts.reactor.watch(this.listenFd, () => this.acceptPending());
    } else {
      this.state = 'connecting';
      this.tryConnect();
    }
  }

  private acceptPending(): void {
    for (;;) {
      let fd: number | null;
      try {
        fd = unixAccept(this.listenFd);
      } catch (err) {
        this.opts.onEvent('warn', `${this.name}: accept failed: ${(err as Error).message}`);
        return;
      }
      if (fd === null) return;
      if (this.session !== null) {
        // One peer per interface id, as DPDK does: the newcomer is told why and let go.
        sendMessage(fd, encodeMessage({ type: 'disconnect', code: 0, reason: 'interface already connected' }));
        close(fd);
        this.opts.onEvent('warn', `${this.name}: a second client was refused, the interface is already in use`);
        continue;
      }
      this.begin(fd);
      this.send(encodeMessage({
        type: 'hello', name: this.opts.name ?? 'vio4wd', minVersion: MEMIF_VERSION, maxVersion: MEMIF_VERSION,
        maxRegion: MEMIF_MAX_REGIONS - 1, maxS2cRing: MEMIF_MAX_RINGS - 1, maxC2sRing: MEMIF_MAX_RINGS - 1, maxLog2RingSize: MEMIF_MAX_LOG2_RING,
      }));
    }
  }

  private tryConnect(): void {
    this.retry = null;
    if (this.closed) return;
    let fd: number;
    try {
      fd = unixConnect(this.opts.socketPath, { seqpacket: true });
    } catch (err) {
      if (this.connectFailures++ === 0) this.opts.onEvent('info', `${this.name}: server not reachable yet (${(err as { code?: string }).code ?? (err as Error).message}); retrying every ${RECONNECT_MS} ms`);
      this.scheduleReconnect();
      return;
    }
    this.connectFailures = 0;
    this.begin(fd);
  }

  private scheduleReconnect(): void {
    if (this.closed || this.opts.role !== 'client' || this.retry !== null) return;
    this.state = 'connecting';
    this.retry = setTimeout(() => this.tryConnect(), RECONNECT_MS);
    this.retry.unref();
  }

  private begin(fd: number): void {
    const s: Session = { fd, regions: [], rings: { c2s: [], s2c: [] }, ringFds: [], outbox: [], bufferSize: 0, connected: false, timer: null, peerName: '', initSeen: false };
    this.session = s;
    this.state = 'handshake';
    s.timer = setTimeout(() => {
      if (this.session === s && !s.connected) this.fail(s, `no connection within ${HANDSHAKE_MS} ms of the handshake's start`);
    }, HANDSHAKE_MS);
    s.timer.unref();
    this.opts.reactor.watch(fd, () => this.readable(s));
  }

  private send(bytes: Uint8Array, fds: number[] = []): void {
    const s = this.session;
    if (s === null) return;
    // A message that cannot be sent whole now (a full socket buffer: a peer that does not read)
    // ends the connection rather than block the main thread.
    if (sendMessage(s.fd, bytes, fds) !== bytes.byteLength) throw new MemifProtocolError('the peer does not read its control socket');
  }

  private readable(s: Session): void {
    while (this.session === s) {
      let msg;
      try {
        msg = receiveMessage(s.fd, MEMIF_MESSAGE_SIZE + 1, 2);
      } catch (err) {
        this.fail(s, `control socket error: ${(err as Error).message}`, false);
        return;
      }
      if (msg === null) return;
      if (msg.bytes.byteLength === 0) {
        for (const f of msg.fds) close(f);
        this.fail(s, 'the peer closed the control socket', false);
        return;
      }
      try {
        if (msg.controlTruncated) throw new MemifProtocolError('message came with more fds than any memif message carries');
        if (msg.fds.length > 1) throw new MemifProtocolError(`message came with ${msg.fds.length} fds, memif messages carry at most one`);
        const decoded = decodeMessage(msg.bytes);
        const fd = msg.fds.length === 1 ? msg.fds[0] : -1;
        msg.fds.length = 0;
        this.handle(s, decoded, fd);
      } catch (err) {
        for (const f of msg.fds) close(f);
        if (err instanceof MemifProtocolError) this.fail(s, err.message);
        else this.fail(s, `unexpected error: ${(err as Error).message}`);
        return;
      }
    }
  }

  /** Handles one message; `fd` (or −1) is owned by the session from here on (closed with it). */
  private handle(s: Session, m: MemifMessage, fd: number): void {
    const expectFd = this.opts.role === 'server' && (m.type === 'add_region' || m.type === 'add_ring');
    if (fd >= 0 && !expectFd) {
      close(fd);
      throw new MemifProtocolError(`${m.type} message came with an fd`);
    }
    if (m.type === 'disconnect') {
      this.fail(s, `the peer disconnected: ${m.reason || 'no reason given'} (code ${m.code})`, false);
      return;
    }
    if (this.opts.role === 'server') this.handleAsServer(s, m, fd);
    else this.handleAsClient(s, m);
  }

  private handleAsServer(s: Session, m: MemifMessage, fd: number): void {
    if (s.connected) throw new MemifProtocolError(`${m.type} message after the connection was made`);
    switch (m.type) {
      case 'init': {
        if (s.initSeen) throw new MemifProtocolError('a second INIT');
        if (m.version !== MEMIF_VERSION) throw new MemifProtocolError(`memif version ${m.version >> 8}.${m.version & 0xff} is not 2.0`);
        if (m.id !== this.opts.id) throw new MemifProtocolError(`interface id ${m.id} is not served here (this socket serves ${this.opts.id})`);
        if (m.mode !== MODE_ETHERNET) throw new MemifProtocolError(`interface mode ${m.mode}: only ethernet (0) is supported`);
        if (this.opts.secret && m.secret !== this.opts.secret) throw new MemifProtocolError(m.secret ? 'incorrect secret' : 'a secret is required');
        s.initSeen = true;
        s.peerName = m.name;
        this.send(encodeMessage({ type: 'ack' }));
        return;
      }
      case 'add_region': {
        if (!s.initSeen) throw new MemifProtocolError('ADD_REGION before INIT');
        if (fd < 0) throw new MemifProtocolError('ADD_REGION without a region fd');
        let mapped = false;
        try {
          if (m.index !== s.regions.length || m.index >= MEMIF_MAX_REGIONS) throw new MemifProtocolError(`region index ${m.index}, expected ${s.regions.length} (at most ${MEMIF_MAX_REGIONS} regions)`);
          if (!(m.size > 0 && m.size <= MEMIF_MAX_REGION_BYTES)) throw new MemifProtocolError(`region size ${m.size} is outside (0, ${MEMIF_MAX_REGION_BYTES}]`);
          const why = checkRegionFile(fd, m.size);
          if (why) throw new MemifProtocolError(`region ${m.index}: ${why}`);
          let mapping;
          try {
            mapping = mmap({ length: m.size, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED, fd });
          } catch (err) {
            throw new MemifProtocolError(`region ${m.index}: ${(err as Error).message}`);
          }
          s.regions.push({ mapping: { address: mapping.address, length: mapping.length }, fd });
          mapped = true;
        } finally {
          if (!mapped) close(fd);
        }
        this.send(encodeMessage({ type: 'ack' }));
        return;
      }
      case 'add_ring': {
        if (!s.initSeen) throw new MemifProtocolError('ADD_RING before INIT');
        if (fd < 0) throw new MemifProtocolError('ADD_RING without an interrupt fd');
        let kept = false;
        try {
          const c2s = (m.flags & ADD_RING_FLAG_C2S) !== 0;
          const why = checkRingPlacement(s.regions.map((r) => r.mapping.length), m);
          if (why) throw new MemifProtocolError(why);
          const list = c2s ? s.rings.c2s : s.rings.s2c;
          if (m.index !== list.length) throw new MemifProtocolError(`${c2s ? 'client-to-server' : 'server-to-client'} ring index ${m.index}, expected ${list.length} (rings are added in order)`);
          const notifier = checkNotifierFd(fd);
          if (!notifier.ok) throw new MemifProtocolError(`interrupt fd refused: ${notifier.reason}`);
          list.push({ region: m.region, offset: m.offset, log2Size: m.log2RingSize, interruptFd: fd, buffersAt: -1 });
          s.ringFds.push(fd);
          kept = true;
        } finally {
          if (!kept) close(fd);
        }
        this.send(encodeMessage({ type: 'ack' }));
        return;
      }
      case 'connect': {
        const { c2s, s2c } = s.rings;
        if (c2s.length === 0 || s2c.length === 0) throw new MemifProtocolError('CONNECT before a ring in each direction was added');
        for (const [what, rings] of [['client-to-server', c2s], ['server-to-client', s2c]] as const) {
          rings.forEach((ring, i) => {
            if (!ringHasCookie(this.regionBuffer(s, ring.region), ring.offset)) throw new MemifProtocolError(`${what} ring ${i} has no memif cookie`);
          });
        }
        for (const ring of c2s) resetRing(this.regionBuffer(s, ring.region), ring.offset, this.opts.rxInterrupts ? 0 : MEMIF_RING_FLAG_MASK_INT);
        for (const ring of s2c) resetRing(this.regionBuffer(s, ring.region), ring.offset, null);
        this.send(encodeMessage({ type: 'connected', ifName: this.opts.name ?? 'vio4wd' }));
        this.up(s, m.ifName, { rx: c2s, tx: s2c });
        return;
      }
      default:
        throw new MemifProtocolError(`unexpected ${m.type.toUpperCase()} from a client`);
    }
  }

  private regionBuffer(s: Session, index: number): ArrayBuffer {
    const r = s.regions[index].mapping;
    return viewAt(r.address, r.length);
  }

  private handleAsClient(s: Session, m: MemifMessage): void {
    switch (m.type) {
      case 'hello': {
        if (s.regions.length > 0) throw new MemifProtocolError('a second HELLO');
        if (m.minVersion > MEMIF_VERSION || m.maxVersion < MEMIF_VERSION) throw new MemifProtocolError(`server speaks memif ${m.minVersion >> 8}.${m.minVersion & 0xff} to ${m.maxVersion >> 8}.${m.maxVersion & 0xff}, not 2.0`);
        if (m.maxLog2RingSize < 1) throw new MemifProtocolError(`server allows rings of 2^${m.maxLog2RingSize} slots`);
        s.peerName = m.name;
        // A server with fewer rings than asked for gets as many as it allows.
        const rings = Math.min(this.opts.rings ?? 1, m.maxC2sRing + 1, m.maxS2cRing + 1);
        this.createRegion(s, Math.min(this.opts.log2RingSize ?? 10, m.maxLog2RingSize, MEMIF_MAX_LOG2_RING), rings);
        const r = s.regions[0];
        const { c2s, s2c } = s.rings;
        const addRing = (ring: MemifRingHandle, index: number, flags: number) => ({
          bytes: encodeMessage({ type: 'add_ring', flags, index, region: 0, offset: ring.offset, log2RingSize: ring.log2Size, privateHdrSize: 0 }),
          fds: [ring.interruptFd],
        });
        this.send(encodeMessage({ type: 'init', version: MEMIF_VERSION, id: this.opts.id, mode: MODE_ETHERNET, secret: this.opts.secret ?? '', name: this.opts.name ?? 'vio4wd' }));
        s.outbox.push(
          { bytes: encodeMessage({ type: 'add_region', index: 0, size: r.mapping.length }), fds: [r.fd] },
          ...c2s.map((ring, i) => addRing(ring, i, ADD_RING_FLAG_C2S)),
          ...s2c.map((ring, i) => addRing(ring, i, 0)),
          { bytes: encodeMessage({ type: 'connect', ifName: this.opts.name ?? 'vio4wd' }), fds: [] },
        );
        return;
      }
      case 'ack': {
        const next = s.outbox.shift();
        if (next === undefined) throw new MemifProtocolError('an ACK with nothing to acknowledge');
        this.send(next.bytes, next.fds);
        return;
      }
      case 'connected': {
        if (s.outbox.length > 0 || s.regions.length === 0 || s.connected) throw new MemifProtocolError('CONNECTED before CONNECT');
        const { c2s, s2c } = s.rings;
        const region = this.regionBuffer(s, 0);
        for (const ring of c2s) resetRing(region, ring.offset, null);
        for (const ring of s2c) {
          resetRing(region, ring.offset, this.opts.rxInterrupts ? 0 : MEMIF_RING_FLAG_MASK_INT);
          postAllBuffers(region, ring.offset, ring.log2Size);
        }
        this.up(s, m.ifName, { rx: s2c, tx: c2s });
        return;
      }
      default:
        throw new MemifProtocolError(`unexpected ${m.type.toUpperCase()} from a server`);
    }
  }

  /**
   * Client role: one memfd region with `count` rings in each direction, then every ring's
   * buffers: C2S rings, S2C rings, C2S buffers ring by ring, S2C buffers ring by ring.
   */
  private createRegion(s: Session, log2: number, count: number): void {
    const bufferSize = this.opts.bufferSize ?? 2048;
    const slots = 1 << log2;
    const ring = ringBytes(log2);
    const ringsEnd = 2 * count * ring;
    const buffersOf = (n: number) => ringsEnd + n * slots * bufferSize;
    const size = buffersOf(2 * count);
    const fd = memfdCreate(`vio4wd-memif-${this.opts.id}`, { allowSealing: true });
    let mapping;
    try {
      ftruncate(fd, size);
      addSeals(fd, F_SEAL_SHRINK);
      mapping = mmap({ length: size, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED, fd });
    } catch (err) {
      close(fd);
      throw err;
    }
    s.regions.push({ mapping: { address: mapping.address, length: size }, fd });
    s.bufferSize = bufferSize;
    // n counts rings over both directions: C2S rings are 0..count-1, S2C rings count..2*count-1.
    const make = (n: number): MemifRingHandle => {
      initRing(mapping.buffer, n * ring, log2, buffersOf(n), bufferSize);
      const interruptFd = eventfd(0, { nonblock: true });
      s.ringFds.push(interruptFd);
      return { region: 0, offset: n * ring, log2Size: log2, interruptFd, buffersAt: buffersOf(n) };
    };
    for (let i = 0; i < count; i++) s.rings.c2s.push(make(i));
    for (let i = 0; i < count; i++) s.rings.s2c.push(make(count + i));
  }

  private up(s: Session, peerIfName: string, rings: { rx: MemifRingHandle[]; tx: MemifRingHandle[] }): void {
    s.connected = true;
    if (s.timer) clearTimeout(s.timer);
    s.timer = null;
    this.state = 'connected';
    this.lastDisconnectReason = '';
    const handle: MemifPortHandle = {
      kind: 'memif', name: this.name, role: this.opts.role, connected: true,
      regions: s.regions.map((r) => r.mapping), rx: rings.rx, tx: rings.tx, bufferSize: s.bufferSize,
      maxFrameLength: this.opts.maxFrameLength, rxInterrupts: this.opts.rxInterrupts, counters: this.counters,
    };
    this.opts.onEvent('info', `${this.name}: connected to ${s.peerName || 'a peer'} (interface ${peerIfName || '?'}) as ${this.opts.role}, ${ringPairs(rings.rx.length, rings.tx.length)}, ${1 << rings.rx[0].log2Size} slots per ring`, { peer: s.peerName, peerInterface: peerIfName, rxRings: rings.rx.length, txRings: rings.tx.length });
    this.chain = this.chain.then(() => this.opts.onUp(handle)).catch((err) => {
      this.opts.onEvent('warn', `${this.name}: the relay could not start on the connection: ${(err as Error).message}`);
    });
  }

  /** Ends the session: tells the peer why (when `tell`), then releases everything once no worker polls it. */
  private fail(s: Session, reason: string, tell = true): void {
    if (this.session !== s) return;
    this.session = null;
    this.lastDisconnectReason = reason;
    if (s.timer) clearTimeout(s.timer);
    this.opts.reactor.unwatch(s.fd);
    if (tell) {
      try {
        sendMessage(s.fd, encodeMessage({ type: 'disconnect', code: 0, reason }));
      } catch {
        /* the peer is gone already */
      }
    }
    close(s.fd);
    this.opts.onEvent(tell || s.connected ? 'warn' : 'info', `${this.name}: connection ended: ${reason}`, { reason });
    const wasUp = s.connected;
    this.state = this.closed ? 'closed' : this.opts.role === 'server' ? 'listening' : 'connecting';
    this.chain = this.chain
      .then(() => (wasUp ? this.opts.onDown(reason) : undefined))
      .catch((err) => this.opts.onEvent('warn', `${this.name}: stopping the relay on the connection failed: ${(err as Error).message}`))
      .then(() => release(s));
    if (!this.closed) this.scheduleReconnect();
  }

  /** Stops listening or reconnecting, ends the connection, and resolves once everything is released. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.retry) clearTimeout(this.retry);
    this.retry = null;
    if (this.session) this.fail(this.session, 'interface removed');
    if (this.listenFd >= 0) {
      this.opts.reactor.unwatch(this.listenFd);
      close(this.listenFd);
      this.listenFd = -1;
      try {
        unlinkSync(this.opts.socketPath);
      } catch {
        /* already gone */
      }
    }
    this.state = 'closed';
    await this.chain;
  }
}

/** "1 ring each way", "2 rings each way", "2 rings in, 1 out" (the relay's view). */
function ringPairs(rx: number, tx: number): string {
  if (rx === tx) return `${rx} ring${rx === 1 ? '' : 's'} each way`;
  return `${rx} ring${rx === 1 ? '' : 's'} in, ${tx} out`;
}

function release(s: Session): void {
  for (const r of s.regions) {
    try {
      munmap(r.mapping);
    } catch {
      /* nothing more to do */
    }
    close(r.fd);
  }
  for (const f of s.ringFds) close(f);
  s.regions = [];
  s.ringFds = [];
}
