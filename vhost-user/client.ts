// The connecting side: used when the front-end is the server (QEMU server=on, virtio-user
// server=1). Retries every second (like DPDK) until the path accepts, and again after the front-end
// goes away, until close().
import pino, { type Logger } from 'pino';
import { unixConnect } from '../sys/unix-socket.js';
import { close as closeFd } from '../sys/fd.js';
import { backendSessionFactory, type BackendSessionOptions } from './backend.js';
import type { ReadinessSource } from './connection.js';
import { endSession, type PeerFactory, type PeerSession } from './peer.js';

export interface ClientOptions {
  path: string;
  reactor: ReadinessSource;
  /** Delay between attempts (default 1000 ms). */
  retryMs?: number;
  log?: Logger;
  onConnection: PeerFactory;
}

const silentLog = pino({ level: 'silent' });

export class VhostUserClient {
  readonly path: string;
  private readonly opts: ClientOptions;
  private readonly log: Logger;
  private timer: NodeJS.Timeout | null = null;
  private current: PeerSession | null = null;
  private closed = false;
  private failures = 0;
  /** Number of sessions established so far (tests watch reconnects with it). */
  connections = 0;

  constructor(opts: ClientOptions) {
    this.opts = opts;
    this.path = opts.path;
    this.log = (opts.log ?? silentLog).child({ socket: opts.path });
  }

  get active(): PeerSession | null {
    return this.current;
  }

  start(): void {
    if (this.closed) throw new Error(`vhost-user client for ${this.path} is closed`);
    this.attempt();
  }

  private schedule(): void {
    if (this.closed || this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.attempt();
    }, this.opts.retryMs ?? 1000);
  }

  private attempt(): void {
    if (this.closed || this.current) return;
    let fd: number;
    try {
      fd = unixConnect(this.path);
    } catch (err) {
      // Log the first failure of a series only: the front-end may be down for a long time.
      if (this.failures++ === 0) this.log.info({ err: (err as Error).message }, `vhost-user: ${this.path} not reachable yet; retrying`);
      this.schedule();
      return;
    }
    this.failures = 0;
    let session: PeerSession;
    try {
      session = this.opts.onConnection(fd);
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, `vhost-user: could not start a session on ${this.path}`);
      closeFd(fd);
      this.schedule();
      return;
    }
    this.connections++;
    this.current = session;
    this.log.info(`vhost-user: connected to ${this.path}`);
    void session.ended.then(() => {
      if (this.current === session) this.current = null;
      if (!this.closed) {
        this.log.info(`vhost-user: front-end at ${this.path} went away; reconnecting`);
        this.schedule();
      }
    });
  }

  /** Stops retrying and ends the current session. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    await endSession(this.current);
  }
}

/** A reconnecting client whose connections become BackendSessions for `device`. */
export function connectBackend(
  opts: Omit<ClientOptions, 'onConnection'> & Omit<BackendSessionOptions, 'reactor' | 'log' | 'label'>,
): VhostUserClient {
  const { device, maxQueuePairs, mergeableRxBuffers, offloads, maxMtu, unsealedMemory, ...endpointOpts } = opts;
  const endpoint = new VhostUserClient({
    ...endpointOpts,
    onConnection: backendSessionFactory({ device, maxQueuePairs, mergeableRxBuffers, offloads, maxMtu, unsealedMemory, reactor: opts.reactor, log: opts.log, path: opts.path }),
  });
  endpoint.start();
  return endpoint;
}
