// The driver side of vhost-user (what QEMU or DPDK virtio-user do): used by vmm/ for its virtio-net
// device and by test tools. One request at a time; requests with a reply (or NEED_REPLY once
// REPLY_ACK is negotiated) wait for it, so a back-end error surfaces at the request that caused it.
import { rmSync } from 'node:fs';
import pino, { type Logger } from 'pino';
import { unixAccept, unixConnect, unixListen } from '../sys/unix-socket.js';
import { close as closeFd } from '../sys/fd.js';
import { claimSocketPath } from '../sys/socket-path.js';
import { Connection, type ReadinessSource, type ReceivedMessage } from './connection.js';
import {
  FLAG_NEED_REPLY,
  PROTOCOL_FEATURES_BIT,
  ProtocolFeature,
  Request,
  VERSION,
  decodeU64,
  decodeVringState,
  encodeMemTable,
  encodeMessage,
  encodeU64,
  encodeVringAddr,
  encodeVringFile,
  encodeVringState,
  hasBit,
  hasIntrinsicReply,
  maskAnd,
  maskOr,
  requestName,
  type MemRegionDesc,
} from './messages.js';

export interface FrontendOptions {
  reactor: ReadinessSource;
  log?: Logger;
  label?: string;
  /**
   * How long a request waits for its reply (default 10 s). A back-end that accepts the connection
   * but never answers would otherwise hold VM creation forever; on expiry the request fails and
   * the connection is closed, since a late reply could no longer be matched to its request.
   */
  replyTimeoutMs?: number;
}

export const DEFAULT_REPLY_TIMEOUT_MS = 10_000;

export interface FrontendRegion extends MemRegionDesc {
  /** The fd backing the region (memfd, hugetlbfs, shm), sent with SET_MEM_TABLE; still owned by the caller. */
  fd: number;
}

export interface VringSetup {
  index: number;
  size: number;
  base?: number;
  /** Front-end user addresses (this process's addresses of the rings). */
  descUserAddr: number;
  availUserAddr: number;
  usedUserAddr: number;
  /** -1 = NOFD (the back-end polls / does not signal). Still owned by the caller. */
  kickFd: number;
  callFd: number;
  /** Send SET_VRING_ENABLE(1) after the kick (only when protocol features were negotiated). */
  enable?: boolean;
}

export interface Negotiated {
  features: number;
  protocolFeatures: number;
  /** GET_QUEUE_NUM when MQ was negotiated, else 1. */
  queuePairs: number;
}

interface Pending {
  request: number;
  resolve(payload: Uint8Array): void;
  reject(err: Error): void;
}

const silentLog = pino({ level: 'silent' });

export class Frontend {
  private readonly connection: Connection;
  private readonly log: Logger;
  private pending: Pending | null = null;
  private chain: Promise<unknown> = Promise.resolve();
  private closeReason: Error | null = null;
  private protocolFeatures = 0;
  /** With VHOST_USER_F_PROTOCOL_FEATURES in SET_FEATURES, rings start disabled until SET_VRING_ENABLE. */
  private ringsStartDisabled = false;
  /** Resolves when the connection is gone. */
  readonly closed: Promise<void>;

  private readonly replyTimeoutMs: number;
  private readonly label: string;

  constructor(fd: number, opts: FrontendOptions) {
    this.label = opts.label ?? `fd ${fd}`;
    this.replyTimeoutMs = opts.replyTimeoutMs ?? DEFAULT_REPLY_TIMEOUT_MS;
    this.log = (opts.log ?? silentLog).child({ vhostUserFrontend: this.label });
    this.connection = new Connection(fd, {
      role: 'frontend',
      reactor: opts.reactor,
      log: this.log,
      onMessage: (m) => this.onReply(m),
      onClose: (reason) => {
        this.closeReason = reason ?? new Error('vhost-user back-end closed the connection');
        const p = this.pending;
        this.pending = null;
        p?.reject(this.closeReason);
      },
    });
    this.closed = this.connection.closed;
    this.connection.start();
  }

  /** Connects to a back-end listening at `path`, retrying every `retryMs` until `timeoutMs`. */
  static async connect(path: string, opts: FrontendOptions & { retryMs?: number; timeoutMs?: number }): Promise<Frontend> {
    const deadline = Date.now() + (opts.timeoutMs ?? 10_000);
    for (;;) {
      try {
        return new Frontend(unixConnect(path), opts);
      } catch (err) {
        const code = (err as { code?: string }).code;
        if ((code !== 'ENOENT' && code !== 'ECONNREFUSED' && code !== 'EAGAIN') || Date.now() >= deadline) {
          throw new Error(`vhost-user front-end: cannot connect to ${path}: ${(err as Error).message}`);
        }
      }
      await new Promise((r) => setTimeout(r, opts.retryMs ?? 100));
    }
  }

  /**
   * Listens at `path` and waits for one back-end to connect. Only a stale socket (nobody listening)
   * at the path is replaced; a regular file or a live socket there is an error.
   */
  static async accept(path: string, opts: FrontendOptions & { timeoutMs?: number }): Promise<Frontend> {
    try {
      claimSocketPath(path);
    } catch (err) {
      throw new Error(`vhost-user front-end: cannot listen: ${(err as Error).message}`);
    }
    const listenFd = unixListen(path, 1);
    try {
      const fd = await new Promise<number>((resolve, reject) => {
        const timer = setTimeout(() => {
          opts.reactor.unwatch(listenFd);
          reject(new Error(`vhost-user front-end: no back-end connected to ${path} within ${opts.timeoutMs ?? 10_000} ms`));
        }, opts.timeoutMs ?? 10_000);
        opts.reactor.watch(listenFd, () => {
          let conn: number | null;
          try {
            conn = unixAccept(listenFd);
          } catch (err) {
            conn = null;
            clearTimeout(timer);
            opts.reactor.unwatch(listenFd);
            reject(err as Error);
            return;
          }
          if (conn === null) return;
          clearTimeout(timer);
          opts.reactor.unwatch(listenFd);
          resolve(conn);
        });
      });
      return new Frontend(fd, opts);
    } finally {
      closeFd(listenFd);
      rmSync(path, { force: true });
    }
  }

  close(): Promise<void> {
    this.connection.close();
    return this.closed;
  }

  private onReply(m: ReceivedMessage): void {
    const p = this.pending;
    if (!p || p.request !== m.header.request) {
      throw new Error(`vhost-user front-end: unexpected reply to ${requestName(m.header.request)}${p ? ` while waiting for ${requestName(p.request)}` : ''}`);
    }
    if (m.fds.length > 0) throw new Error(`vhost-user front-end: reply to ${requestName(m.header.request)} carries ${m.fds.length} fds`);
    this.pending = null;
    p.resolve(m.payload);
  }

  /**
   * Sends one request and, when it has a reply (intrinsic, or an ack because REPLY_ACK is on),
   * waits for it. Returns the reply payload, or null when none was expected.
   */
  request(request: number, payload: Uint8Array = new Uint8Array(0), fds: readonly number[] = []): Promise<Uint8Array | null> {
    const run = async (): Promise<Uint8Array | null> => {
      if (this.closeReason) throw new Error(`vhost-user front-end: ${requestName(request)} not sent: ${this.closeReason.message}`);
      const intrinsic = hasIntrinsicReply(request, this.protocolFeatures);
      const ack = !intrinsic && hasBit(this.protocolFeatures, ProtocolFeature.REPLY_ACK);
      const flags = VERSION | (ack ? FLAG_NEED_REPLY : 0);
      this.log.debug({ request: requestName(request), flags, size: payload.length, fds: fds.length }, `vhost-user front-end: ${requestName(request)}`);
      if (!intrinsic && !ack) {
        this.sendRequest(request, flags, payload, fds);
        return null;
      }
      let timer: NodeJS.Timeout | undefined;
      const reply = new Promise<Uint8Array>((resolve, reject) => {
        this.pending = { request, resolve, reject };
        timer = setTimeout(() => {
          if (this.pending?.request !== request) return;
          this.pending = null;
          const what = ack ? 'acknowledgement of' : 'reply to';
          const err = new Error(`vhost-user front-end ${this.label}: no ${what} ${requestName(request)} within ${this.replyTimeoutMs} ms; the back-end accepted the connection but does not answer`);
          reject(err);
          this.connection.close(err);
        }, this.replyTimeoutMs);
      });
      // A failed send also closes the connection, which rejects `reply`; the send error is the one to report.
      reply.catch(() => undefined);
      let body: Uint8Array;
      try {
        this.sendRequest(request, flags, payload, fds);
        body = await reply;
      } finally {
        clearTimeout(timer);
      }
      if (ack) {
        const status = decodeU64(body, `ack of ${requestName(request)}`);
        if (status !== 0) throw new Error(`vhost-user back-end refused ${requestName(request)} (status ${status})`);
        return null;
      }
      return body;
    };
    const result = this.chain.then(run, run);
    this.chain = result.catch(() => undefined);
    return result;
  }

  private sendRequest(request: number, flags: number, payload: Uint8Array, fds: readonly number[]): void {
    try {
      this.connection.send(encodeMessage(request, flags, payload), fds);
    } catch (err) {
      this.pending = null;
      throw new Error(`vhost-user front-end: ${requestName(request)} not sent: ${(err as Error).message}`);
    }
  }

  private async requestU64(request: number): Promise<number> {
    return decodeU64((await this.request(request))!, `reply to ${requestName(request)}`);
  }

  getFeatures(): Promise<number> {
    return this.requestU64(Request.GET_FEATURES);
  }

  async setFeatures(features: number): Promise<void> {
    await this.request(Request.SET_FEATURES, encodeU64(features));
    this.ringsStartDisabled = hasBit(features, PROTOCOL_FEATURES_BIT);
  }

  async setOwner(): Promise<void> {
    await this.request(Request.SET_OWNER);
  }

  getProtocolFeatures(): Promise<number> {
    return this.requestU64(Request.GET_PROTOCOL_FEATURES);
  }

  async setProtocolFeatures(features: number): Promise<void> {
    await this.request(Request.SET_PROTOCOL_FEATURES, encodeU64(features));
    // Acks apply from the next request on.
    this.protocolFeatures = features;
  }

  getQueueNum(): Promise<number> {
    return this.requestU64(Request.GET_QUEUE_NUM);
  }

  /**
   * The probe half of the sequence (kvm-vmm.md §3.4 steps 1–3 and QEMU's order): SET_OWNER,
   * GET_FEATURES, protocol features when offered, GET_QUEUE_NUM with MQ. Returns what the back-end
   * offers intersected with `wanted`; call setFeatures() with the final set at DRIVER_OK.
   */
  async negotiate(wanted: { features: number; protocolFeatures?: number }): Promise<Negotiated> {
    await this.setOwner();
    const offered = await this.getFeatures();
    let features = maskAnd(offered, wanted.features);
    let protocolFeatures = 0;
    let queuePairs = 1;
    if (hasBit(offered, PROTOCOL_FEATURES_BIT)) {
      features = maskOr(features, 2 ** PROTOCOL_FEATURES_BIT);
      const offeredProtocol = await this.getProtocolFeatures();
      protocolFeatures = maskAnd(offeredProtocol, wanted.protocolFeatures ?? (1 << ProtocolFeature.MQ) | (1 << ProtocolFeature.REPLY_ACK));
      await this.setProtocolFeatures(protocolFeatures);
      if (hasBit(protocolFeatures, ProtocolFeature.MQ)) queuePairs = await this.getQueueNum();
    }
    return { features, protocolFeatures, queuePairs };
  }

  async setMemTable(regions: readonly FrontendRegion[]): Promise<void> {
    await this.request(Request.SET_MEM_TABLE, encodeMemTable(regions), regions.map((r) => r.fd));
  }

  async setVringNum(index: number, num: number): Promise<void> {
    await this.request(Request.SET_VRING_NUM, encodeVringState({ index, num }));
  }

  async setVringBase(index: number, num: number): Promise<void> {
    await this.request(Request.SET_VRING_BASE, encodeVringState({ index, num }));
  }

  async setVringAddr(index: number, addr: { descUserAddr: number; usedUserAddr: number; availUserAddr: number; flags?: number; logGuestAddr?: number }): Promise<void> {
    await this.request(
      Request.SET_VRING_ADDR,
      encodeVringAddr({ index, flags: addr.flags ?? 0, descUserAddr: addr.descUserAddr, usedUserAddr: addr.usedUserAddr, availUserAddr: addr.availUserAddr, logGuestAddr: addr.logGuestAddr ?? 0 }),
    );
  }

  async setVringKick(index: number, fd: number): Promise<void> {
    await this.request(Request.SET_VRING_KICK, encodeVringFile({ index, noFd: fd < 0 }), fd < 0 ? [] : [fd]);
  }

  async setVringCall(index: number, fd: number): Promise<void> {
    await this.request(Request.SET_VRING_CALL, encodeVringFile({ index, noFd: fd < 0 }), fd < 0 ? [] : [fd]);
  }

  async setVringEnable(index: number, enabled: boolean): Promise<void> {
    await this.request(Request.SET_VRING_ENABLE, encodeVringState({ index, num: enabled ? 1 : 0 }));
  }

  /** Stops the vring on the back-end and returns its next avail index. */
  async getVringBase(index: number): Promise<number> {
    const reply = decodeVringState((await this.request(Request.GET_VRING_BASE, encodeVringState({ index, num: 0 })))!);
    if (reply.index !== index) throw new Error(`vhost-user front-end: GET_VRING_BASE for vring ${index} answered for vring ${reply.index}`);
    return reply.num;
  }

  /** QEMU's per-vring start order: NUM, BASE, ADDR, KICK, CALL, then ENABLE. */
  async startVring(v: VringSetup): Promise<void> {
    await this.setVringNum(v.index, v.size);
    await this.setVringBase(v.index, v.base ?? 0);
    await this.setVringAddr(v.index, v);
    await this.setVringKick(v.index, v.kickFd);
    await this.setVringCall(v.index, v.callFd);
    if (v.enable !== false && this.ringsStartDisabled) await this.setVringEnable(v.index, true);
  }

  /**
   * The DRIVER_OK half: SET_FEATURES, SET_MEM_TABLE, then every vring (RX and TX of each pair).
   */
  async startDevice(features: number, regions: readonly FrontendRegion[], vrings: readonly VringSetup[]): Promise<void> {
    await this.setFeatures(features);
    await this.setMemTable(regions);
    for (const v of vrings) await this.startVring(v);
  }

  /** Disables and stops every vring given (virtio-user's stop order); returns their avail indexes. */
  async stopDevice(indexes: readonly number[]): Promise<number[]> {
    if (this.ringsStartDisabled) for (const i of indexes) await this.setVringEnable(i, false);
    const bases: number[] = [];
    for (const i of indexes) bases.push(await this.getVringBase(i));
    return bases;
  }
}
