// Message framing over a connected, non-blocking AF_UNIX stream socket that carries fds.
// Reads exactly the 12-byte header, then exactly the announced payload, never past the current
// message: fds arrive with the first byte of the sendmsg that carried them, so everything received
// while assembling message M belongs to M. Messages are handed out strictly one at a time; the next
// one is not even read until the handler (possibly async) has finished.
import type { Logger } from 'pino';
import { close as closeFd } from '../sys/fd.js';
import { receiveMessage, sendMessage } from '../sys/unix-socket.js';
import {
  HEADER_SIZE,
  MAX_FDS_PER_MESSAGE,
  ProtocolError,
  decodeReplyHeader,
  decodeRequestHeader,
  requestName,
  type MessageHeader,
} from './messages.js';

/** What the connection needs from sys/poll.ts's Reactor. */
export interface ReadinessSource {
  watch(fd: number, onReadable: () => void): void;
  unwatch(fd: number): void;
}

export interface ReceivedMessage {
  header: MessageHeader;
  payload: Uint8Array;
  /** Fds attached to this message. A handler that keeps one takes it with takeFd(). */
  fds: number[];
}

/** Takes ownership of fd `i` of the message: the connection will no longer close it. */
export function takeFd(message: ReceivedMessage, i = 0): number {
  const fd = message.fds[i];
  if (fd === undefined || fd < 0) throw new Error(`${requestName(message.header.request)}: no file descriptor ${i} to take`);
  message.fds[i] = -1;
  return fd;
}

export function closeFds(fds: number[]): void {
  for (let i = 0; i < fds.length; i++) {
    if (fds[i] >= 0) {
      try {
        closeFd(fds[i]);
      } catch {
        /* already closed: nothing else to release */
      }
      fds[i] = -1;
    }
  }
}

export interface ConnectionOptions {
  /** 'backend' reads front-end requests; 'frontend' reads back-end replies. */
  role: 'backend' | 'frontend';
  reactor: ReadinessSource;
  log: Logger;
  onMessage(message: ReceivedMessage): void | Promise<void>;
  /** Called once, after the socket is closed, with the reason (undefined on a clean EOF). */
  onClose(reason: Error | undefined): void;
}

type ReadPhase = 'header' | 'payload';

export class Connection {
  readonly fd: number;
  private readonly opts: ConnectionOptions;
  private readonly headerBytes = new Uint8Array(HEADER_SIZE);
  private headerFill = 0;
  private phase: ReadPhase = 'header';
  private header: MessageHeader | null = null;
  private payload: Uint8Array = new Uint8Array(0);
  private payloadFill = 0;
  private pendingFds: number[] = [];
  private busy = false;
  private reading = false;
  private watching = false;
  private sendQueue: Uint8Array[] = [];
  private sendTimer: NodeJS.Timeout | null = null;
  private closedFlag = false;
  private resolveClosed!: () => void;
  /** Resolves once the socket is closed, whatever the reason. */
  readonly closed: Promise<void>;

  constructor(fd: number, opts: ConnectionOptions) {
    this.fd = fd;
    this.opts = opts;
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
  }

  get isClosed(): boolean {
    return this.closedFlag;
  }

  start(): void {
    this.watch();
    // Data may already be queued (the peer wrote before we watched).
    this.readAvailable();
  }

  private watch(): void {
    if (this.watching || this.closedFlag) return;
    this.watching = true;
    this.opts.reactor.watch(this.fd, () => this.readAvailable());
  }

  private unwatch(): void {
    if (!this.watching) return;
    this.watching = false;
    try {
      this.opts.reactor.unwatch(this.fd);
    } catch (err) {
      this.opts.log.debug({ err }, 'vhost-user: unwatch failed');
    }
  }

  /**
   * Sends one message (header+payload already in one buffer) with optional fds in a single send.
   * A short write queues the rest; fds always travel with the first byte.
   */
  send(bytes: Uint8Array, fds: readonly number[] = []): void {
    if (this.closedFlag) throw new Error(`vhost-user connection fd ${this.fd}: cannot send, the connection is closed`);
    if (this.sendQueue.length > 0) {
      if (fds.length > 0) throw new Error('vhost-user: cannot queue a message with fds behind a blocked send');
      this.sendQueue.push(bytes);
      return;
    }
    let sent: number | null;
    try {
      sent = sendMessage(this.fd, bytes, [...fds]);
    } catch (err) {
      this.fail(err as Error);
      throw err;
    }
    if (sent === null) {
      if (fds.length > 0) {
        const err = new Error(`vhost-user connection fd ${this.fd}: socket full while sending a message with fds`);
        this.fail(err);
        throw err;
      }
      this.sendQueue.push(bytes);
    } else if (sent < bytes.length) {
      this.sendQueue.push(bytes.subarray(sent));
    }
    if (this.sendQueue.length > 0) this.scheduleFlush();
  }

  // Replies are tiny and the peer waits for them, so a full socket is rare enough that retrying on
  // a short timer beats wiring write-readiness through the reactor.
  private scheduleFlush(): void {
    if (this.sendTimer || this.closedFlag) return;
    this.sendTimer = setTimeout(() => {
      this.sendTimer = null;
      this.flush();
    }, 1);
  }

  private flush(): void {
    while (this.sendQueue.length > 0 && !this.closedFlag) {
      const head = this.sendQueue[0];
      let sent: number | null;
      try {
        sent = sendMessage(this.fd, head, []);
      } catch (err) {
        this.fail(err as Error);
        return;
      }
      if (sent === null) break;
      if (sent < head.length) {
        this.sendQueue[0] = head.subarray(sent);
        break;
      }
      this.sendQueue.shift();
    }
    if (this.sendQueue.length > 0) this.scheduleFlush();
  }

  private readAvailable(): void {
    if (this.busy || this.reading || this.closedFlag) return;
    this.reading = true;
    try {
      while (!this.busy && !this.closedFlag) {
        const message = this.readStep();
        if (message === 'again') break;
        if (message === 'progress') continue;
        this.dispatch(message);
      }
    } finally {
      this.reading = false;
    }
  }

  /** Reads the missing part of the header or payload; returns a complete message when there is one. */
  private readStep(): ReceivedMessage | 'again' | 'progress' {
    const want = this.phase === 'header' ? HEADER_SIZE - this.headerFill : this.payload.length - this.payloadFill;
    let got: ReturnType<typeof receiveMessage>;
    try {
      got = receiveMessage(this.fd, want, MAX_FDS_PER_MESSAGE);
    } catch (err) {
      this.fail(err as Error);
      return 'again';
    }
    if (got === null) return 'again';
    // Fds first: whatever happens next, they are ours to close.
    for (const fd of got.fds) this.pendingFds.push(fd);
    if (got.controlTruncated) {
      this.fail(new ProtocolError(`vhost-user connection fd ${this.fd}: file descriptors were truncated (MSG_CTRUNC)`));
      return 'again';
    }
    if (got.bytes.length === 0) {
      if (this.phase === 'header' && this.headerFill === 0 && this.pendingFds.length === 0) this.finish(undefined);
      else this.fail(new ProtocolError(`vhost-user connection fd ${this.fd}: peer closed in the middle of a message`));
      return 'again';
    }
    if (got.bytes.length > want) {
      this.fail(new Error(`vhost-user connection fd ${this.fd}: receive returned ${got.bytes.length} bytes, asked for ${want}`));
      return 'again';
    }
    if (this.phase === 'header') {
      this.headerBytes.set(got.bytes, this.headerFill);
      this.headerFill += got.bytes.length;
      if (this.headerFill < HEADER_SIZE) return 'progress';
      try {
        this.header = this.opts.role === 'backend' ? decodeRequestHeader(this.headerBytes) : decodeReplyHeader(this.headerBytes);
      } catch (err) {
        this.fail(err as Error);
        return 'again';
      }
      this.payload = new Uint8Array(this.header.size);
      this.payloadFill = 0;
      this.phase = 'payload';
      if (this.header.size > 0) return 'progress';
    } else {
      this.payload.set(got.bytes, this.payloadFill);
      this.payloadFill += got.bytes.length;
      if (this.payloadFill < this.payload.length) return 'progress';
    }
    return this.completeMessage();
  }

  private completeMessage(): ReceivedMessage {
    const message: ReceivedMessage = { header: this.header!, payload: this.payload, fds: this.pendingFds };
    this.pendingFds = [];
    this.header = null;
    this.headerFill = 0;
    this.payload = new Uint8Array(0);
    this.payloadFill = 0;
    this.phase = 'header';
    return message;
  }

  private dispatch(message: ReceivedMessage): void {
    let result: void | Promise<void>;
    try {
      result = this.opts.onMessage(message);
    } catch (err) {
      closeFds(message.fds);
      this.fail(err as Error);
      return;
    }
    if (result && typeof (result as Promise<void>).then === 'function') {
      this.busy = true;
      // Not reading while the handler runs keeps messages strictly ordered and stops a level-triggered
      // reactor from spinning on the unread socket.
      this.unwatch();
      (result as Promise<void>).then(
        () => {
          closeFds(message.fds);
          this.busy = false;
          if (this.closedFlag) return;
          this.watch();
          this.readAvailable();
        },
        (err) => {
          closeFds(message.fds);
          this.busy = false;
          this.fail(err as Error);
        },
      );
    } else {
      closeFds(message.fds);
    }
  }

  private fail(err: Error): void {
    if (this.closedFlag) return;
    this.opts.log.warn({ err: err.message }, `vhost-user connection fd ${this.fd} closed: ${err.message}`);
    this.finish(err);
  }

  /** Closes the socket and every fd not yet handed to a handler. Safe to call more than once. */
  close(reason?: Error): void {
    this.finish(reason);
  }

  private finish(reason: Error | undefined): void {
    if (this.closedFlag) return;
    this.closedFlag = true;
    this.unwatch();
    if (this.sendTimer) clearTimeout(this.sendTimer);
    this.sendTimer = null;
    this.sendQueue = [];
    closeFds(this.pendingFds);
    try {
      closeFd(this.fd);
    } catch {
      /* already closed */
    }
    this.resolveClosed();
    this.opts.onClose(reason);
  }
}
