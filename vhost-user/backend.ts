// The device side of one vhost-user connection: one handler per request in a table, the per-vring
// state machine (stopped → started on kick with translatable rings; enabled is orthogonal), the
// memory table, the REPLY_ACK rule, and the only place that owns the fds a front-end sends.
import pino, { type Logger } from 'pino';
import { close as closeFd, setNonBlocking } from '../sys/fd.js';
import { checkNotifierFd } from '../sys/eventfd.js';
import { STATUS_FAILED, statusNames } from '../virtio/device-status.js';
import { DESC_SIZE, PACKED_EVENT_BYTES, availRingBytes, descTableBytes, isValidPackedQueueSize, isValidSplitQueueSize, usedRingBytes } from '../virtio/ring-layout.js';
import { Connection, closeFds, takeFd, type ReadinessSource, type ReceivedMessage } from './connection.js';
import type { NetDevice, VringConfig } from './device.js';
import {
  MAX_QUEUE_PAIRS,
  VirtioNetFeature,
  describeFeatures,
  netHeaderLength,
  offeredFeatures,
  offeredProtocolFeatures,
} from './features.js';
import { locateUserRange, mapTable, readUsedIdx, sameTable, tableWithRegion, tableWithoutRegion, unmapReplaced, unmapTable, type MappedTable } from './guest-mapping.js';
import { protectAgainstShrink, type UnsealedMemoryPolicy } from './memory-seals.js';
import { mapDirtyLog, unmapDirtyLog, type MappedLog } from './dirty-log.js';
import {
  FLAG_NEED_REPLY,
  ProtocolError,
  ProtocolFeature,
  MAX_MEM_SLOTS,
  MTU_MIN,
  MTU_MAX,
  REPLY_FLAGS,
  Request,
  VRING_F_LOG,
  bitsOutside,
  checkFdCount,
  decodeLog,
  decodeMemTable,
  decodeSingleRegion,
  decodeMtu,
  decodeRarpMac,
  decodeU64,
  decodeVringAddr,
  decodeVringFile,
  decodeVringState,
  encodeMessage,
  encodeU64,
  encodeVringState,
  hasBit,
  hasIntrinsicReply,
  requestName,
  type VringAddr,
} from './messages.js';

export type { NetDevice, VringConfig, SessionMemory, SessionRegion, RingLocation } from './device.js';

export interface BackendSessionOptions {
  device: NetDevice;
  reactor: ReadinessSource;
  log?: Logger;
  /** Queue pairs offered through GET_QUEUE_NUM (1..32, default 1). */
  maxQueuePairs?: number;
  /** Offer mergeable RX buffers (default true). */
  mergeableRxBuffers?: boolean;
  /** Offer checksum and segmentation offloads both ways: CSUM, HOST_TSO4/6, HOST_ECN, GUEST_CSUM, GUEST_TSO4/6, GUEST_ECN (default false). */
  offloads?: boolean;
  /**
   * The largest MTU the device carries. When given, VIRTIO_NET_F_MTU and the NET_MTU protocol
   * feature are offered, and NET_SET_MTU is accepted up to this value and refused above it.
   */
  maxMtu?: number;
  /** Shown in logs, e.g. the socket path. */
  label?: string;
  /**
   * A memory region whose file can shrink (not sealed with F_SEAL_SHRINK, and not sealable here):
   * 'refuse' the table or accept it with a 'warn'ing (default 'warn', what DPDK virtio-user and
   * QEMU on hugetlbfs need). See memory-seals.ts.
   */
  unsealedMemory?: UnsealedMemoryPolicy;
}

interface VringState {
  index: number;
  num: number;
  base: number;
  addr: VringAddr | null;
  kickFd: number;
  /** True once SET_VRING_KICK arrived (with an fd or NOFD); cleared by GET_VRING_BASE. */
  kicked: boolean;
  callFd: number;
  errFd: number;
  enabled: boolean;
  started: boolean;
  lastAvail: number;
  lastUsed: number;
}

/** A read-only snapshot of one vring, for tests and diagnostics. */
export type VringSnapshot = Readonly<Omit<VringState, 'addr'> & { addr: VringAddr | null }>;

type Handler = (message: ReceivedMessage) => Promise<Uint8Array | void> | Uint8Array | void;

const silentLog = pino({ level: 'silent' });

export class BackendSession {
  private readonly device: NetDevice;
  private readonly log: Logger;
  private readonly connection: Connection;
  private readonly unsealedMemory: UnsealedMemoryPolicy;
  readonly maxQueuePairs: number;
  readonly offeredFeatures: number;
  readonly offeredProtocolFeatures: number;
  /** The largest MTU offered (VIRTIO_NET_F_MTU), if any. */
  readonly maxMtu: number | undefined;
  /** The MTU the front-end announced with NET_SET_MTU, if it did. */
  mtu: number | undefined;
  private ackedFeatures = 0;
  private featuresSet = false;
  private ackedProtocolFeatures = 0;
  /** The virtio device status byte the front-end last set (PROTOCOL_F_STATUS); informational. */
  private deviceStatus = 0;
  private table: MappedTable | null = null;
  /** The live-migration dirty log from SET_LOG_BASE; logging is on while LOG_ALL is also acked. */
  private dirtyLog: MappedLog | null = null;
  private readonly vrings: VringState[];
  private readonly handlers: Map<number, Handler>;

  /** The requests this session has a handler for (each also has its row in messages.ts). */
  get handledRequests(): number[] {
    return [...this.handlers.keys()];
  }
  /** Handler work and teardown run one after another on this chain. */
  private work: Promise<void> = Promise.resolve();
  private tornDown = false;
  private resolveEnded!: () => void;
  /** Resolves after the connection closed and the device heard `disconnected()`. */
  readonly ended: Promise<void>;

  constructor(fd: number, opts: BackendSessionOptions) {
    const pairs = opts.maxQueuePairs ?? 1;
    if (!Number.isInteger(pairs) || pairs < 1 || pairs > MAX_QUEUE_PAIRS) {
      throw new RangeError(`vhost-user backend: maxQueuePairs ${pairs} is outside 1..${MAX_QUEUE_PAIRS}`);
    }
    this.device = opts.device;
    this.unsealedMemory = opts.unsealedMemory ?? 'warn';
    this.maxQueuePairs = pairs;
    if (opts.maxMtu !== undefined && (!Number.isInteger(opts.maxMtu) || opts.maxMtu < MTU_MIN || opts.maxMtu > MTU_MAX)) {
      throw new RangeError(`vhost-user backend: maxMtu ${opts.maxMtu} is outside ${MTU_MIN}..${MTU_MAX}`);
    }
    this.maxMtu = opts.maxMtu;
    this.offeredFeatures = offeredFeatures({ mergeableRxBuffers: opts.mergeableRxBuffers, maxMtu: opts.maxMtu, offloads: opts.offloads });
    this.offeredProtocolFeatures = offeredProtocolFeatures({ maxMtu: opts.maxMtu });
    this.log = (opts.log ?? silentLog).child({ vhostUser: opts.label ?? `fd ${fd}` });
    this.vrings = Array.from({ length: 2 * pairs }, (_, index) => freshVring(index));
    this.ended = new Promise((resolve) => (this.resolveEnded = resolve));
    this.handlers = new Map<number, Handler>([
      [Request.GET_FEATURES, () => encodeU64(this.offeredFeatures)],
      [Request.SET_FEATURES, (m) => this.setFeatures(m)],
      [Request.SET_OWNER, () => undefined],
      [Request.RESET_OWNER, () => this.resetOwner()],
      [Request.SET_MEM_TABLE, (m) => this.setMemTable(m)],
      [Request.GET_MAX_MEM_SLOTS, () => encodeU64(MAX_MEM_SLOTS)],
      [Request.SET_STATUS, (m) => this.setStatus(m)],
      [Request.GET_STATUS, () => encodeU64(this.deviceStatus)],
      [Request.ADD_MEM_REG, (m) => this.addMemReg(m)],
      [Request.REM_MEM_REG, (m) => this.remMemReg(m)],
      [Request.SET_LOG_FD, () => undefined],
      [Request.SET_LOG_BASE, (m) => this.setLogBase(m)],
      [Request.SET_VRING_NUM, (m) => this.setVringNum(m)],
      [Request.SET_VRING_ADDR, (m) => this.setVringAddr(m)],
      [Request.SET_VRING_BASE, (m) => this.setVringBase(m)],
      [Request.GET_VRING_BASE, (m) => this.getVringBase(m)],
      [Request.SET_VRING_KICK, (m) => this.setVringKick(m)],
      [Request.SET_VRING_CALL, (m) => this.setVringCall(m)],
      [Request.SET_VRING_ERR, (m) => this.setVringErr(m)],
      [Request.GET_PROTOCOL_FEATURES, () => encodeU64(this.offeredProtocolFeatures)],
      [Request.SET_PROTOCOL_FEATURES, (m) => this.setProtocolFeatures(m)],
      [Request.GET_QUEUE_NUM, () => encodeU64(this.maxQueuePairs)],
      [Request.SET_VRING_ENABLE, (m) => this.setVringEnable(m)],
      [Request.SEND_RARP, (m) => void this.log.info({ mac: decodeRarpMac(m.payload) }, 'vhost-user: SEND_RARP ignored (RARP not offered)')],
      [Request.NET_SET_MTU, (m) => this.setMtu(m)],
    ]);
    this.connection = new Connection(fd, {
      role: 'backend',
      reactor: opts.reactor,
      log: this.log,
      onMessage: (m) => this.enqueue(() => this.handle(m)),
      onClose: (reason) => void this.enqueue(() => this.teardown(reason)),
    });
  }

  start(): void {
    this.connection.start();
  }

  /** Closes the connection; the device gets vringStopped for started vrings, then disconnected(). */
  close(): Promise<void> {
    this.connection.close();
    return this.ended;
  }

  get features(): number {
    return this.ackedFeatures;
  }

  get protocolFeatures(): number {
    return this.ackedProtocolFeatures;
  }

  get memory(): MappedTable | null {
    return this.table;
  }

  vring(index: number): VringSnapshot {
    const v = this.vrings[index];
    if (!v) throw new RangeError(`vring ${index} does not exist (${this.vrings.length} vrings)`);
    return { ...v };
  }

  private enqueue(step: () => Promise<void>): Promise<void> {
    const next = this.work.then(step);
    // A failed step has already closed the connection; keep the chain usable for teardown.
    this.work = next.catch(() => undefined);
    return next;
  }

  private async handle(message: ReceivedMessage): Promise<void> {
    const { header } = message;
    const name = requestName(header.request);
    this.log.debug({ request: name, flags: header.flags, size: header.size, fds: message.fds.length }, `vhost-user: ${name}`);
    const needReply = (header.flags & FLAG_NEED_REPLY) !== 0;
    const handler = this.handlers.get(header.request);
    let reply: Uint8Array | void;
    try {
      if (!handler) throw new ProtocolError(`${name} (id ${header.request}) is not supported`);
      checkFdCount(header, message.payload, message.fds.length);
      reply = await handler(message);
    } catch (err) {
      // DPDK's rule: a failed request is NACKed when the front-end asked for a reply, otherwise the
      // connection ends. A request with an intrinsic reply cannot be NACKed with a u64.
      closeFds(message.fds);
      if (needReply && !hasIntrinsicReply(header.request, this.ackedProtocolFeatures)) {
        this.log.warn({ request: name, err: (err as Error).message }, `vhost-user: ${name} refused: ${(err as Error).message}`);
        this.send(header.request, encodeU64(1));
        return;
      }
      throw err;
    }
    if (this.connection.isClosed) return;
    if (reply) this.send(header.request, reply);
    else if (needReply) this.send(header.request, encodeU64(0));
  }

  private send(request: number, payload: Uint8Array): void {
    this.connection.send(encodeMessage(request, REPLY_FLAGS, payload));
  }

  private vringFor(index: number, request: string): VringState {
    const v = this.vrings[index];
    if (!v) throw new ProtocolError(`${request}: vring index ${index} is out of range (${this.vrings.length} vrings for ${this.maxQueuePairs} queue pairs)`);
    return v;
  }

  // ---- features ---------------------------------------------------------------------------------

  private async setFeatures(m: ReceivedMessage): Promise<void> {
    const features = decodeU64(m.payload, 'SET_FEATURES');
    const extra = bitsOutside(features, this.offeredFeatures);
    if (extra !== 0) throw new ProtocolError(`SET_FEATURES 0x${features.toString(16)} has bits that were not offered: 0x${extra.toString(16)}`);
    const running = this.vrings.some((v) => v.started);
    const changed = bitsOutside(features, this.ackedFeatures) + bitsOutside(this.ackedFeatures, features);
    // Live migration turns VHOST_F_LOG_ALL on and off under running rings; nothing else may change.
    if (running && changed !== 0 && changed !== 2 ** VirtioNetFeature.LOG_ALL) {
      throw new ProtocolError(`SET_FEATURES 0x${features.toString(16)} changes features while vrings are running (was 0x${this.ackedFeatures.toString(16)})`);
    }
    const logWas = this.loggingOn;
    this.ackedFeatures = features;
    this.featuresSet = true;
    if (!running || changed === 0) {
      this.log.info({ features: describeFeatures(features) }, 'vhost-user: features negotiated');
      return;
    }
    // Logging starts before the reply: QEMU waits for it to know every later write is logged.
    await this.restartRunning();
    this.logLoggingChange(logWas);
  }

  /** Dirty logging is on: LOG_ALL negotiated and a log mapped. */
  private get loggingOn(): boolean {
    return this.dirtyLog !== null && hasBit(this.ackedFeatures, VirtioNetFeature.LOG_ALL);
  }

  private logLoggingChange(wasOn: boolean): void {
    const on = this.loggingOn;
    if (on === wasOn) return;
    if (on) this.log.info({ logBytes: this.dirtyLog!.size }, 'vhost-user: dirty logging on (live migration): every page the relay writes is marked');
    else this.log.info('vhost-user: dirty logging off');
  }

  /**
   * SET_LOG_BASE (PROTOCOL_F_LOG_SHMFD): maps the front-end's dirty log. A new log replaces the
   * old one (QEMU resizes it when memory grows): running rings switch to it before the old one is
   * unmapped. The reply is an empty payload, as QEMU and DPDK expect.
   */
  private async setLogBase(m: ReceivedMessage): Promise<Uint8Array> {
    // Without LOG_SHMFD the request has no reply of its own and no business carrying a log fd.
    if (!hasBit(this.ackedProtocolFeatures, ProtocolFeature.LOG_SHMFD)) throw new ProtocolError('SET_LOG_BASE: PROTOCOL_F_LOG_SHMFD was not negotiated');
    const desc = decodeLog(m.payload);
    // A log that shrinks under the mapping would SIGBUS the daemon at the next marked page. Unlike
    // guest memory there is no front-end whose log cannot be sealed (QEMU seals its log memfd),
    // so an unsealable log is refused whatever VIRTIOFWD_UNSEALED_MEMORY says.
    const sealed = protectAgainstShrink(m.fds[0]);
    if (sealed.kind === 'unprotected') throw new ProtocolError(`SET_LOG_BASE refused: the dirty log can shrink under the mapping (${sealed.why})`);
    const log = mapDirtyLog(desc, m.fds[0]);
    const logWas = this.loggingOn;
    const old = this.dirtyLog;
    this.dirtyLog = log;
    try {
      if (this.loggingOn || logWas) await this.restartRunning();
    } finally {
      if (old) unmapDirtyLog(old);
    }
    this.log.debug({ bytes: desc.mmapSize, offset: desc.mmapOffset }, 'vhost-user: dirty log mapped');
    this.logLoggingChange(logWas);
    return new Uint8Array(0);
  }

  /** Stops and restarts the running vrings, so the device sees the current features and log. */
  private async restartRunning(): Promise<void> {
    const running = this.vrings.filter((v) => v.started);
    for (const v of running) await this.stopVring(v, false);
    for (const v of running) await this.tryStart(v);
  }

  private setProtocolFeatures(m: ReceivedMessage): void {
    const features = decodeU64(m.payload, 'SET_PROTOCOL_FEATURES');
    const extra = bitsOutside(features, this.offeredProtocolFeatures);
    if (extra !== 0) throw new ProtocolError(`SET_PROTOCOL_FEATURES 0x${features.toString(16)} has bits that were not offered: 0x${extra.toString(16)}`);
    this.ackedProtocolFeatures = features;
  }

  /**
   * NET_SET_MTU: the MTU the front-end gives the guest (QEMU's `host_mtu=`). Up to the largest
   * frame the relay carries it is accepted; above it the request is refused (a NACK, which QEMU
   * reports as "MTU not supported by the backend"), because frames that large would be dropped.
   */
  private setMtu(m: ReceivedMessage): void {
    const mtu = decodeMtu(m.payload);
    if (this.maxMtu === undefined) {
      this.log.info({ mtu }, 'vhost-user: NET_SET_MTU ignored (NET_MTU not offered)');
      return;
    }
    if (mtu > this.maxMtu) {
      this.log.warn({ mtu, maxMtu: this.maxMtu }, `vhost-user: NET_SET_MTU ${mtu} refused: the relay carries at most MTU ${this.maxMtu}`);
      throw new ProtocolError(`NET_SET_MTU ${mtu} is above the relay's largest MTU ${this.maxMtu}`);
    }
    this.mtu = mtu;
    this.log.info({ mtu }, `vhost-user: front-end MTU ${mtu}`);
  }

  private async resetOwner(): Promise<void> {
    for (const v of this.vrings) {
      await this.stopVring(v);
      this.releaseVringFds(v);
      Object.assign(v, freshVring(v.index));
    }
    this.ackedFeatures = 0;
    this.featuresSet = false;
    this.deviceStatus = 0;
  }

  /**
   * PROTOCOL_F_STATUS: the front-end tells the device status byte it wrote (QEMU: ACKNOWLEDGE |
   * DRIVER | DRIVER_OK when it starts the device, 0 when it stops it). The rings already start and
   * stop with their own messages, so the relay records it, answers GET_STATUS and logs changes.
   */
  private setStatus(m: ReceivedMessage): void {
    const status = decodeU64(m.payload, 'SET_STATUS');
    if (status > 0xff) throw new ProtocolError(`SET_STATUS 0x${status.toString(16)}: the device status is one byte`);
    if (status === this.deviceStatus) return;
    const names = statusNames(status);
    if ((status & STATUS_FAILED) !== 0) this.log.warn({ status: names }, 'vhost-user: the driver gave up on the device (status FAILED)');
    else this.log.info({ status: names }, `vhost-user: device status ${names.join('|') || 'reset (0)'}`);
    this.deviceStatus = status;
  }

  // ---- memory -----------------------------------------------------------------------------------

  private async setMemTable(m: ReceivedMessage): Promise<void> {
    const descs = decodeMemTable(m.payload);
    if (this.table && sameTable(this.table.descs, descs)) {
      this.log.debug('vhost-user: SET_MEM_TABLE identical to the current table, kept');
      return;
    }
    this.checkShrinkable(descs.length, m.fds);
    // The mappings keep the memory alive; the fds are not needed any more (closed by the connection).
    await this.installTable(mapTable(descs, m.fds), 'SET_MEM_TABLE');
  }

  /**
   * CONFIGURE_MEM_SLOTS: one region more (memory hot-plug). The other regions keep their
   * mappings; the rings restart against the new table like after SET_MEM_TABLE.
   */
  private async addMemReg(m: ReceivedMessage): Promise<void> {
    const desc = decodeSingleRegion(m.payload);
    if (desc.size === 0) throw new ProtocolError('ADD_MEM_REG: a region of size 0');
    this.checkShrinkable(1, m.fds);
    let table: MappedTable;
    try {
      table = tableWithRegion(this.table, desc, m.fds[0], MAX_MEM_SLOTS);
    } catch (err) {
      throw new ProtocolError((err as Error).message);
    }
    await this.installTable(table, 'ADD_MEM_REG');
  }

  /** CONFIGURE_MEM_SLOTS: one region less (memory hot-unplug). An unknown region is logged and ignored. */
  private async remMemReg(m: ReceivedMessage): Promise<void> {
    const desc = decodeSingleRegion(m.payload);
    const table = this.table ? tableWithoutRegion(this.table, desc) : undefined;
    if (table === undefined) {
      this.log.warn({ gpa: hex(desc.guestPhysAddr), size: hex(desc.size), ua: hex(desc.userAddr) }, 'vhost-user: REM_MEM_REG names no mapped region; ignored');
      return;
    }
    if (table === null) {
      // The last region: nothing can run without memory.
      for (const v of this.vrings.filter((x) => x.started)) await this.stopVring(v, false);
      const old = this.table!;
      this.table = null;
      unmapReplaced(old, null);
      this.log.info('vhost-user: last memory region removed; rings wait for memory');
      return;
    }
    await this.installTable(table, 'REM_MEM_REG');
  }

  /** Stops the running rings, hands the device the new memory, then restarts what can run. */
  private async installTable(table: MappedTable, via: 'SET_MEM_TABLE' | 'ADD_MEM_REG' | 'REM_MEM_REG'): Promise<void> {
    const running = this.vrings.filter((v) => v.started);
    try {
      for (const v of running) await this.stopVring(v, false);
      await this.device.memoryChanged({ regions: table.regions, memory: table.memory });
    } catch (err) {
      if (this.table) unmapReplaced(table, this.table);
      else unmapTable(table);
      throw err;
    }
    const old = this.table;
    this.table = table;
    if (old) unmapReplaced(old, table);
    this.log.info({ via, regions: table.descs.map((d) => ({ gpa: hex(d.guestPhysAddr), size: hex(d.size), ua: hex(d.userAddr), offset: hex(d.mmapOffset) })) }, 'vhost-user: memory table mapped');
    // The front-end will not resend SET_VRING_ADDR: restart rings against the new mappings, and
    // start kicked rings whose addresses the old table could not translate.
    for (const v of this.vrings) await this.tryStart(v);
  }

  /**
   * A region file that shrinks under its mapping kills the daemon with SIGBUS at the next touch
   * (Node cannot catch it), so each file must be sealed against shrinking, or sealable by us, or
   * accepted by policy with a warning naming the region.
   */
  private checkShrinkable(count: number, fds: readonly number[]): void {
    const unprotected: string[] = [];
    for (let i = 0; i < count; i++) {
      const p = protectAgainstShrink(fds[i]);
      if (p.kind === 'sealed-here') this.log.info({ region: i }, `vhost-user: memory region ${i} sealed against shrinking (F_SEAL_SHRINK) by the back-end`);
      else if (p.kind === 'unprotected') unprotected.push(`memory region ${i}: ${p.why}`);
    }
    if (unprotected.length === 0) return;
    if (this.unsealedMemory === 'refuse') {
      throw new ProtocolError(
        `SET_MEM_TABLE refused: guest memory can shrink under the mapping, and a shrink would crash the daemon (SIGBUS): ${unprotected.join('; ')}. ` +
          'Seal it (QEMU: memory-backend-memfd, whose default seals=on) or set VIRTIOFWD_UNSEALED_MEMORY=warn',
      );
    }
    this.log.warn(
      { regions: unprotected },
      `vhost-user: guest memory can shrink under the mapping (${unprotected.join('; ')}); a front-end that shrinks it would crash the daemon (SIGBUS). Accepted because VIRTIOFWD_UNSEALED_MEMORY=warn`,
    );
  }

  // ---- vrings -----------------------------------------------------------------------------------

  private async setVringNum(m: ReceivedMessage): Promise<void> {
    const { index, num } = decodeVringState(m.payload);
    const v = this.vringFor(index, 'SET_VRING_NUM');
    if (this.packed) {
      if (!isValidPackedQueueSize(num)) throw new ProtocolError(`SET_VRING_NUM: vring ${index} size ${num} is outside 1..32768`);
    } else if (!isValidSplitQueueSize(num)) throw new ProtocolError(`SET_VRING_NUM: vring ${index} size ${num} is not a power of two in 1..32768`);
    if (v.started) throw new ProtocolError(`SET_VRING_NUM: vring ${index} is running`);
    v.num = num;
  }

  private async setVringAddr(m: ReceivedMessage): Promise<void> {
    const addr = decodeVringAddr(m.payload);
    const v = this.vringFor(addr.index, 'SET_VRING_ADDR');
    if (!this.table) throw new ProtocolError(`SET_VRING_ADDR: vring ${addr.index} addresses arrived before any memory table`);
    // Checked now so a bad address fails this request instead of silently leaving the ring unready.
    this.locateRings(v, addr, Math.max(v.num, 1));
    const wasStarted = v.started;
    if (wasStarted) await this.stopVring(v, false);
    v.addr = addr;
    if (wasStarted) await this.tryStart(v);
  }

  private async setVringBase(m: ReceivedMessage): Promise<void> {
    const { index, num } = decodeVringState(m.payload);
    const v = this.vringFor(index, 'SET_VRING_BASE');
    if (v.started) throw new ProtocolError(`SET_VRING_BASE: vring ${index} is running`);
    let base = num;
    if (this.packed) {
      // Bits 0-14: the next slot, bit 15: the driver's wrap counter. QEMU puts its used index in
      // bits 16-31 too; a net device has completed every chain when it stops, so the used index
      // equals it and the low half is all that matters (as in DPDK).
      base = num & 0xffff;
      if ((base & 0x7fff) >= Math.max(v.num, 1)) throw new ProtocolError(`SET_VRING_BASE: vring ${index} base 0x${num.toString(16)} names slot ${base & 0x7fff}, outside the packed ring of ${v.num}`);
    } else if (num > 0xffff) throw new ProtocolError(`SET_VRING_BASE: vring ${index} base ${num} does not fit a split ring index`);
    v.base = base;
    v.lastAvail = base;
    v.lastUsed = base;
  }

  private async getVringBase(m: ReceivedMessage): Promise<Uint8Array> {
    const { index } = decodeVringState(m.payload);
    const v = this.vringFor(index, 'GET_VRING_BASE');
    const wasStarted = v.started;
    await this.stopVring(v);
    if (wasStarted) this.checkStoppedAtUsedIdx(v);
    // Like DPDK: the fds and ring addresses die with the stop; a restart must send them again, so a
    // rebooted guest never sees stale rings.
    this.releaseVringFds(v);
    v.addr = null;
    v.kicked = false;
    // Packed: QEMU reads its used index (and wrap) from bits 16-31; it equals last_avail at a stop.
    return encodeVringState({ index, num: this.packed ? (v.lastAvail | (v.lastAvail << 16)) >>> 0 : v.lastAvail });
  }

  /** VIRTIO_F_RING_PACKED negotiated: vrings are packed rings. */
  private get packed(): boolean {
    return hasBit(this.ackedFeatures, VirtioNetFeature.RING_PACKED);
  }

  /**
   * A net device completes every chain it takes before it stops, so a stopped ring's last_avail
   * equals used->idx in guest memory. A difference means the device lost track of the ring (its
   * answer would go into a migration stream): say so with both numbers.
   */
  private checkStoppedAtUsedIdx(v: VringState): void {
    // A packed ring has no used index to compare with.
    if (!v.addr || !this.table || v.num === 0 || this.packed) return;
    let usedIdx: number;
    try {
      const used = this.locateRings(v, v.addr, v.num).used;
      usedIdx = readUsedIdx(used.hostAddress);
    } catch {
      return;
    }
    if (usedIdx !== v.lastAvail) {
      this.log.warn({ vring: v.index, lastAvail: v.lastAvail, usedIdx }, `vhost-user: vring ${v.index} stopped at last_avail ${v.lastAvail} but used.idx in guest memory is ${usedIdx}`);
    }
  }

  private async setVringKick(m: ReceivedMessage): Promise<void> {
    const file = decodeVringFile(m.payload);
    const v = this.vringFor(file.index, 'SET_VRING_KICK');
    const fd = file.noFd ? -1 : this.acceptNotifier(takeFd(m), v, 'kick');
    if (v.started) await this.stopVring(v, false);
    replaceFd(v, 'kickFd', fd);
    v.kicked = true;
    await this.tryStart(v);
  }

  private async setVringCall(m: ReceivedMessage): Promise<void> {
    const file = decodeVringFile(m.payload);
    const v = this.vringFor(file.index, 'SET_VRING_CALL');
    const fd = file.noFd ? -1 : this.acceptNotifier(takeFd(m), v, 'call');
    if (!v.started) {
      replaceFd(v, 'callFd', fd);
      return;
    }
    if (this.device.vringCallChanged) {
      const old = v.callFd;
      v.callFd = fd;
      try {
        await this.device.vringCallChanged(v.index, fd);
      } finally {
        if (old >= 0) safeClose(old);
      }
      return;
    }
    await this.stopVring(v, false);
    replaceFd(v, 'callFd', fd);
    await this.tryStart(v);
  }

  /**
   * Kick and call fds must be eventfds: a worker serving many VMs polls, reads and writes them, and
   * any other kind (a pipe, a socket, /dev/null) could make it fail, spin or block. A refused fd
   * is closed and the request fails (NACK with REPLY_ACK, else the connection ends); the vring
   * keeps its previous fd.
   *
   * Accepted fds are made non-blocking here, on the file description the front-end shares with us.
   * That is the choice over checking POLLOUT before each write: a poll costs a second system call
   * per notification and still races with a front-end filling the counter between the poll and
   * the write, while with O_NONBLOCK a saturated counter makes the write fail with EAGAIN and the
   * notification is dropped (a reader that has not drained a full counter has one pending anyway,
   * which is what DPDK relies on too). QEMU and DPDK create their eventfds non-blocking already.
   * A front-end could clear O_NONBLOCK again with fcntl on its own copy and fill the counter: the
   * relay's call guard (relay/call-guard.ts) sees the worker blocked in that write, drains the fd
   * without blocking, and stops the ring; kick reads use RWF_NOWAIT and never depend on the flag.
   */
  private acceptNotifier(fd: number, v: VringState, what: 'kick' | 'call'): number {
    const checked = checkNotifierFd(fd);
    let reason = checked.reason;
    if (checked.ok) {
      try {
        setNonBlocking(fd, true);
        return fd;
      } catch (err) {
        reason = `fd ${fd} cannot be made non-blocking: ${(err as Error).message}`;
      }
    }
    safeClose(fd);
    const request = what === 'kick' ? 'SET_VRING_KICK' : 'SET_VRING_CALL';
    this.log.warn({ vring: v.index, fdKind: checked.kind }, `vhost-user: vring ${v.index} ${what} fd refused: ${reason}`);
    throw new ProtocolError(`${request}: vring ${v.index}: ${reason}`);
  }

  private setVringErr(m: ReceivedMessage): void {
    const file = decodeVringFile(m.payload);
    const v = this.vringFor(file.index, 'SET_VRING_ERR');
    // Net back-ends never signal errors; keep the fd only so a replacement closes the previous one.
    replaceFd(v, 'errFd', file.noFd ? -1 : takeFd(m));
  }

  private async setVringEnable(m: ReceivedMessage): Promise<void> {
    const { index, num } = decodeVringState(m.payload);
    const v = this.vringFor(index, 'SET_VRING_ENABLE');
    if (num > 1) throw new ProtocolError(`SET_VRING_ENABLE: vring ${index} state ${num} is neither 0 nor 1`);
    const enabled = num === 1;
    if (v.enabled === enabled) return;
    v.enabled = enabled;
    if (v.started) await this.device.vringEnabled(index, enabled);
  }

  private locateRings(v: VringState, addr: VringAddr, num: number) {
    const table = this.table!;
    const ring = `vring ${v.index}`;
    if (this.packed) {
      // One descriptor ring, and the driver's and the device's event suppression areas.
      return {
        desc: locateUserRange(table, addr.descUserAddr, DESC_SIZE * num, 16, `${ring} descriptor ring`),
        avail: locateUserRange(table, addr.availUserAddr, PACKED_EVENT_BYTES, 4, `${ring} driver event area`),
        used: locateUserRange(table, addr.usedUserAddr, PACKED_EVENT_BYTES, 4, `${ring} device event area`),
      };
    }
    return {
      desc: locateUserRange(table, addr.descUserAddr, descTableBytes(num), 16, `${ring} descriptor table`),
      avail: locateUserRange(table, addr.availUserAddr, availRingBytes(num), 2, `${ring} available ring`),
      used: locateUserRange(table, addr.usedUserAddr, usedRingBytes(num), 4, `${ring} used ring`),
    };
  }

  /** Starts the vring when it has everything: kick, size, addresses inside the memory table. */
  private async tryStart(v: VringState): Promise<void> {
    if (v.started || !v.kicked || v.num === 0 || !v.addr || !this.table) return;
    let rings;
    try {
      rings = this.locateRings(v, v.addr, v.num);
    } catch (err) {
      this.log.warn({ vring: v.index, err: (err as Error).message }, `vhost-user: vring ${v.index} not started: ${(err as Error).message}`);
      return;
    }
    // used->idx in guest memory is the truth after a reconnect (virtio-user sends base 0 for running
    // rings, QEMU its rewound index): resume from it when it disagrees with the base.
    const usedIdx = this.packed ? v.lastUsed : readUsedIdx(rings.used.hostAddress);
    if (usedIdx !== v.lastUsed) {
      this.log.info({ vring: v.index, base: v.lastAvail, usedIdx }, `vhost-user: vring ${v.index} resumes from used index ${usedIdx}`);
      v.lastAvail = usedIdx;
      v.lastUsed = usedIdx;
    }
    // Without VHOST_USER_F_PROTOCOL_FEATURES a ring is enabled as soon as it starts.
    if (!hasBit(this.ackedFeatures, VirtioNetFeature.PROTOCOL_FEATURES)) v.enabled = true;
    const features = this.ackedFeatures;
    const config: VringConfig = {
      index: v.index,
      size: v.num,
      desc: rings.desc,
      avail: rings.avail,
      used: rings.used,
      logGuestAddr: v.addr.logGuestAddr,
      logUsed: (v.addr.flags & VRING_F_LOG) !== 0,
      dirtyLog: this.loggingOn ? { hostAddress: this.dirtyLog!.hostAddress, size: this.dirtyLog!.size } : null,
      features,
      eventIdx: hasBit(features, VirtioNetFeature.RING_EVENT_IDX),
      packed: hasBit(features, VirtioNetFeature.RING_PACKED),
      indirect: hasBit(features, VirtioNetFeature.RING_INDIRECT_DESC),
      mergeableRxBuffers: hasBit(features, VirtioNetFeature.MRG_RXBUF),
      netHeaderLength: netHeaderLength(features),
      kickFd: v.kickFd,
      callFd: v.callFd,
      lastAvail: v.lastAvail,
      lastUsed: v.lastUsed,
      enabled: v.enabled,
      regions: this.table.regions.map((r) => ({ ...r })),
    };
    if (!this.featuresSet) this.log.warn({ vring: v.index }, `vhost-user: vring ${v.index} starts before SET_FEATURES`);
    v.started = true;
    try {
      await this.device.vringStarted(v.index, config);
    } catch (err) {
      v.started = false;
      throw new Error(`vring ${v.index}: the device failed to start it: ${(err as Error).message}`);
    }
    this.log.info({ vring: v.index, size: v.num, lastAvail: v.lastAvail, enabled: v.enabled, layout: config.packed ? 'packed' : 'split' }, `vhost-user: vring ${v.index} started`);
  }

  /** Stops a started vring through the device and records where it stopped. */
  private async stopVring(v: VringState, logIt = true): Promise<void> {
    if (!v.started) return;
    v.started = false;
    const { lastAvail } = await this.device.vringStopped(v.index);
    v.lastAvail = lastAvail & 0xffff;
    v.lastUsed = v.lastAvail;
    if (logIt) this.log.info({ vring: v.index, lastAvail: v.lastAvail }, `vhost-user: vring ${v.index} stopped`);
  }

  private releaseVringFds(v: VringState): void {
    replaceFd(v, 'kickFd', -1);
    replaceFd(v, 'callFd', -1);
    replaceFd(v, 'errFd', -1);
  }

  // ---- end of the connection -----------------------------------------------------------------------

  private async teardown(reason: Error | undefined): Promise<void> {
    if (this.tornDown) return;
    this.tornDown = true;
    this.log.info({ reason: reason?.message }, reason ? `vhost-user: front-end connection ended: ${reason.message}` : 'vhost-user: front-end disconnected');
    try {
      for (const v of this.vrings) {
        try {
          await this.stopVring(v);
        } catch (err) {
          this.log.warn({ vring: v.index, err: (err as Error).message }, 'vhost-user: device failed to stop vring on disconnect');
        }
        this.releaseVringFds(v);
      }
      await this.device.disconnected();
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'vhost-user: device disconnect hook failed');
    } finally {
      if (this.table) unmapTable(this.table);
      this.table = null;
      if (this.dirtyLog) unmapDirtyLog(this.dirtyLog);
      this.dirtyLog = null;
      this.resolveEnded();
    }
  }
}

function freshVring(index: number): VringState {
  return { index, num: 0, base: 0, addr: null, kickFd: -1, kicked: false, callFd: -1, errFd: -1, enabled: false, started: false, lastAvail: 0, lastUsed: 0 };
}

function replaceFd(v: VringState, key: 'kickFd' | 'callFd' | 'errFd', fd: number): void {
  const old = v[key];
  v[key] = fd;
  if (old >= 0 && old !== fd) safeClose(old);
}

function safeClose(fd: number): void {
  try {
    closeFd(fd);
  } catch {
    /* already closed */
  }
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

/** What server.ts and client.ts need to turn each accepted or connected socket into a session. */
export type BackendFactoryOptions = Omit<BackendSessionOptions, 'label'> & { path: string };

/** A factory of started BackendSessions for `device`, labelled with the socket path in logs. */
export function backendSessionFactory(opts: BackendFactoryOptions): (fd: number) => BackendSession {
  const { path, ...sessionOpts } = opts;
  return (fd) => {
    const session = new BackendSession(fd, { ...sessionOpts, label: path });
    session.start();
    return session;
  };
}
