// One REP socket per service. Requests are answered strictly one at a time; whatever arrives
// (garbage, several frames, a handler that throws) gets exactly one reply so the peer's REQ
// socket never wedges and the service keeps running. Each request is either vio4wd's JSON or
// the original's protobuf (protobuf.ts, isJsonFrame), and is answered in the same encoding.
import { chmodSync, chownSync, mkdirSync, readFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { Reply } from 'zeromq';
import type { Logger } from 'pino';
import { RegistryError } from '../relay/registry-api.js';
import type { ProtobufHandler } from './protobuf-handlers.js';
import { isJsonFrame } from './protobuf.js';
import {
  ErrorCode,
  MAX_REQUEST_BYTES,
  ProtocolError,
  errorReply,
  ipcPath,
  parseRequest,
  type ErrorReply,
  type OkBase,
  type RequestByService,
  type ServiceName,
} from './protocol.js';

export type Handler<S extends ServiceName> = (req: RequestByService[S]) => Promise<OkBase> | OkBase;

export interface ReplyServiceOptions {
  endpoint: string;
  /** Group (name or gid) given to an ipc socket file; its mode becomes 0660. */
  socketGroup?: string | number;
  /** Serves the requests that are not JSON; without it they get a JSON error reply. */
  protobuf?: ProtobufHandler;
}

export interface ReplyService {
  readonly endpoint: string;
  close(): Promise<void>;
}

/** Resolves a group name through /etc/group (Node has no getgrnam). Numbers pass through. */
export function resolveGroup(group: string | number): number {
  if (typeof group === 'number') return group;
  if (/^\d+$/.test(group)) return Number(group);
  let text: string;
  try {
    text = readFileSync('/etc/group', 'utf8');
  } catch (err) {
    throw new Error(`socket group ${group}: cannot read /etc/group: ${(err as Error).message}`);
  }
  for (const line of text.split('\n')) {
    const [name, , gid] = line.split(':');
    if (name === group && gid !== undefined) return Number(gid);
  }
  throw new Error(`socket group ${group} does not exist in /etc/group`);
}

function toErrorReply(err: unknown, service: string, logger: Logger): ErrorReply {
  if (err instanceof ProtocolError) return errorReply(err.code, err.message);
  if (err instanceof RegistryError) return errorReply(err.code, err.message, 'registry');
  logger.error({ err, service }, `${service} service: request handler failed`);
  return errorReply(ErrorCode.Internal, `${service} service failed internally: ${(err as Error)?.message ?? String(err)}`);
}

/** The op of a request that failed validation, for the error reply; undefined if unreadable. */
function peekOp(frame: Buffer): string | undefined {
  if (frame.length > MAX_REQUEST_BYTES) return undefined;
  try {
    const op = (JSON.parse(frame.toString('utf8')) as { op?: unknown } | null)?.op;
    return typeof op === 'string' ? op.slice(0, 64) : undefined;
  } catch {
    return undefined;
  }
}

export async function startReplyService<S extends ServiceName>(
  service: S,
  options: ReplyServiceOptions,
  handler: Handler<S>,
  logger: Logger,
): Promise<ReplyService> {
  const { endpoint } = options;
  const path = ipcPath(endpoint);
  const gid = options.socketGroup === undefined ? undefined : resolveGroup(options.socketGroup);
  if (path) {
    try {
      mkdirSync(dirname(path), { recursive: true, mode: 0o755 });
    } catch (err) {
      throw new Error(`${service} service: cannot create the directory of ${endpoint}: ${(err as Error).message}`);
    }
  }
  // The transport limit sits well above the protocol limit, so an oversized request still gets
  // a readable error reply rather than a silently dropped connection.
  const sock = new Reply({ linger: 0, maxMessageSize: MAX_REQUEST_BYTES * 16, sendTimeout: 1000 });
  try {
    await sock.bind(endpoint);
  } catch (err) {
    sock.close();
    throw new Error(`${service} service: cannot bind ${endpoint}: ${(err as Error).message}`);
  }
  if (path) {
    try {
      chmodSync(path, 0o660);
      if (gid !== undefined) chownSync(path, -1, gid);
    } catch (err) {
      sock.close();
      throw new Error(`${service} service: cannot set mode/group of ${path}: ${(err as Error).message}`);
    }
  }
  logger.info({ service, endpoint }, `${service} service listening on ${endpoint}`);

  const loop = (async () => {
    for (;;) {
      let frames: Buffer[];
      try {
        frames = await sock.receive();
      } catch (err) {
        if (sock.closed) return;
        logger.error({ err, service }, `${service} service: receive failed`);
        continue;
      }
      if (options.protobuf && frames.length > 0 && !isJsonFrame(frames[0])) {
        // The handler answers every protobuf request itself, errors included, and never throws.
        const answer = await options.protobuf(frames);
        try {
          await sock.send(answer);
        } catch (err) {
          if (sock.closed) return;
          logger.warn({ err, service }, `${service} service: reply could not be sent (client gone?)`);
        }
        continue;
      }
      let reply: OkBase | ErrorReply;
      try {
        if (frames.length !== 1) {
          throw new ProtocolError(ErrorCode.BadMessage, `request has ${frames.length} frames; send one JSON message per request`);
        }
        const req = parseRequest(service, frames[0]);
        reply = { ...(await handler(req)), op: req.op };
      } catch (err) {
        reply = toErrorReply(err, service, logger);
        const op = frames.length === 1 ? peekOp(frames[0]) : undefined;
        if (op !== undefined) reply.op = op;
        logger.warn({ service, code: reply.code, op }, `${service} request refused: ${reply.message}`);
      }
      try {
        await sock.send(JSON.stringify(reply));
      } catch (err) {
        if (sock.closed) return;
        logger.warn({ err, service }, `${service} service: reply could not be sent (client gone?)`);
      }
    }
  })();

  return {
    endpoint,
    async close() {
      if (!sock.closed) sock.close();
      await loop;
    },
  };
}
