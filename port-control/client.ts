// The REQ side, used by the CLIs and the core scheduler. A REQ socket that missed a reply can
// never send again, so a timed-out request throws the socket away and the next call starts a
// fresh one (the original scheduler stayed stuck instead).
import { existsSync } from 'node:fs';
import { Request } from 'zeromq';
import {
  PROTOCOL_VERSION,
  ipcPath,
  parseReply,
  type AnyOp,
  type ErrorReply,
  type ReplyByOp,
} from './protocol.js';

export const DEFAULT_TIMEOUT_MS = 2000;

/** A request the service answered with an error reply. */
export class ServiceError extends Error {
  readonly code: number;
  readonly source: string;
  constructor(reply: ErrorReply, what: string) {
    super(`${what}: ${reply.message} (code ${reply.code}${reply.source === 'registry' ? '' : `, ${reply.source}`})`);
    this.name = 'ServiceError';
    this.code = reply.code;
    this.source = reply.source;
  }
}

export class ControlClient {
  private sock: Request | undefined;

  constructor(
    readonly endpoint: string,
    private readonly timeoutMs = DEFAULT_TIMEOUT_MS,
  ) {}

  private socket(): Request {
    if (!this.sock) {
      this.sock = new Request({ linger: 0, receiveTimeout: this.timeoutMs, sendTimeout: this.timeoutMs });
      this.sock.connect(this.endpoint);
    }
    return this.sock;
  }

  /** Sends one raw frame and returns the raw reply; for tests of malformed input. */
  async requestRaw(frames: string | Buffer | (string | Buffer)[]): Promise<string> {
    const path = ipcPath(this.endpoint);
    if (path && !existsSync(path)) {
      throw new Error(`${this.endpoint}: socket ${path} does not exist (is virtio-forwarder running with this endpoint configured?)`);
    }
    const sock = this.socket();
    try {
      await sock.send(frames);
      const [reply] = await sock.receive();
      return reply.toString('utf8');
    } catch (err) {
      this.reset();
      const code = (err as { code?: string }).code;
      if (code === 'EAGAIN') {
        throw new Error(`${this.endpoint}: no reply within ${this.timeoutMs} ms (is virtio-forwarder running with this endpoint configured?)`);
      }
      throw new Error(`${this.endpoint}: ${(err as Error).message}`);
    }
  }

  /** Sends `op` with `fields`; resolves with the OK reply or throws ServiceError / Error. */
  async request<O extends AnyOp>(op: O, fields: Record<string, unknown> = {}): Promise<ReplyByOp[O]> {
    const text = await this.requestRaw(JSON.stringify({ version: PROTOCOL_VERSION, op, ...fields }));
    const reply = parseReply<ReplyByOp[O]>(text, `${op} on ${this.endpoint}`);
    if (reply.status === 'error') throw new ServiceError(reply, `${op} failed`);
    return reply;
  }

  private reset(): void {
    this.sock?.close();
    this.sock = undefined;
  }

  close(): void {
    this.reset();
  }
}
