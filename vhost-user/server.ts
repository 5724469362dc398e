// The listening side: one vhost-user socket path, one front-end at a time (a second connection is
// refused and closed), and the path is served again after the front-end goes away. A leftover
// socket file that nothing listens on is replaced; any other file at the path is an error, so a
// typo never deletes somebody's data.
import { chmodSync, chownSync, lstatSync, rmSync } from 'node:fs';
import pino, { type Logger } from 'pino';
import { close as closeFd } from '../sys/fd.js';
import { unixAccept, unixConnect, unixListen } from '../sys/unix-socket.js';
import { backendSessionFactory, type BackendSessionOptions } from './backend.js';
import type { ReadinessSource } from './connection.js';
import { endSession, type PeerFactory, type PeerSession } from './peer.js';

export interface ServerOptions {
  path: string;
  reactor: ReadinessSource;
  /** Socket file mode (default 0o660). */
  mode?: number;
  uid?: number;
  gid?: number;
  log?: Logger;
  onConnection: PeerFactory;
}

const silentLog = pino({ level: 'silent' });

/** Removes a stale socket at `path`; throws when a live listener or a non-socket file is there. */
export function prepareSocketPath(path: string): void {
  let stat;
  try {
    stat = lstatSync(path);
  } catch (err) {
    if ((err as { code?: string }).code === 'ENOENT') return;
    throw new Error(`vhost-user socket ${path}: cannot inspect the path: ${(err as Error).message}`);
  }
  if (!stat.isSocket()) throw new Error(`vhost-user socket ${path}: the path exists and is not a socket; refusing to replace it`);
  let probe: number;
  try {
    probe = unixConnect(path);
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === 'ECONNREFUSED') {
      rmSync(path, { force: true });
      return;
    }
    throw new Error(`vhost-user socket ${path}: cannot probe the existing socket: ${(err as Error).message}`);
  }
  closeFd(probe);
  throw new Error(`vhost-user socket ${path}: another process is listening on it`);
}

export class VhostUserServer {
  readonly path: string;
  private readonly opts: ServerOptions;
  private readonly log: Logger;
  private listenFd = -1;
  private current: PeerSession | null = null;
  private closing = false;

  constructor(opts: ServerOptions) {
    this.opts = opts;
    this.path = opts.path;
    this.log = (opts.log ?? silentLog).child({ socket: opts.path });
  }

  /** The connected front-end's session, if any. */
  get active(): PeerSession | null {
    return this.current;
  }

  listen(): void {
    if (this.listenFd >= 0) throw new Error(`vhost-user socket ${this.path}: already listening`);
    prepareSocketPath(this.path);
    const fd = unixListen(this.path, 1);
    try {
      chmodSync(this.path, this.opts.mode ?? 0o660);
      if (this.opts.uid !== undefined || this.opts.gid !== undefined) chownSync(this.path, this.opts.uid ?? -1, this.opts.gid ?? -1);
    } catch (err) {
      closeFd(fd);
      rmSync(this.path, { force: true });
      throw new Error(`vhost-user socket ${this.path}: cannot apply mode/owner: ${(err as Error).message}`);
    }
    this.listenFd = fd;
    this.opts.reactor.watch(fd, () => this.acceptPending());
    this.log.info(`vhost-user: listening on ${this.path}`);
  }

  private acceptPending(): void {
    for (;;) {
      if (this.listenFd < 0) return;
      let fd: number | null;
      try {
        fd = unixAccept(this.listenFd);
      } catch (err) {
        this.log.warn({ err: (err as Error).message }, `vhost-user: accept on ${this.path} failed`);
        return;
      }
      if (fd === null) return;
      if (this.current || this.closing) {
        this.log.warn(`vhost-user: ${this.path} already has a front-end; second connection refused`);
        closeFd(fd);
        continue;
      }
      this.log.info(`vhost-user: front-end connected on ${this.path}`);
      let session: PeerSession;
      try {
        session = this.opts.onConnection(fd);
      } catch (err) {
        this.log.warn({ err: (err as Error).message }, `vhost-user: could not start a session on ${this.path}`);
        closeFd(fd);
        continue;
      }
      this.current = session;
      void session.ended.then(() => {
        if (this.current === session) this.current = null;
        this.log.info(`vhost-user: front-end left ${this.path}; accepting again`);
      });
    }
  }

  /** Stops listening, ends the current session and removes the socket file. */
  async close(): Promise<void> {
    this.closing = true;
    if (this.listenFd >= 0) {
      this.opts.reactor.unwatch(this.listenFd);
      closeFd(this.listenFd);
      this.listenFd = -1;
      rmSync(this.path, { force: true });
    }
    await endSession(this.current);
  }
}

/** A server whose connections become BackendSessions for `device`. */
export function listenBackend(
  opts: Omit<ServerOptions, 'onConnection'> & Omit<BackendSessionOptions, 'reactor' | 'log' | 'label'>,
): VhostUserServer {
  const { device, maxQueuePairs, mergeableRxBuffers, offloads, maxMtu, unsealedMemory, ...endpointOpts } = opts;
  const endpoint = new VhostUserServer({
    ...endpointOpts,
    onConnection: backendSessionFactory({ device, maxQueuePairs, mergeableRxBuffers, offloads, maxMtu, unsealedMemory, reactor: opts.reactor, log: opts.log, path: opts.path }),
  });
  endpoint.listen();
  return endpoint;
}
