// The api-channel: a unix socket speaking QMP-style JSON (one object per command, greeting first,
// `qmp_capabilities` before anything else). Malformed input gets an error reply and the
// connection stays open.
import { createServer, type Server, type Socket } from 'node:net';
import { rmSync } from 'node:fs';
import type { Logger } from 'pino';
import { claimSocketPath, SocketPathError } from '../sys/socket-path.js';
import { ConfigError } from './config-types.js';

export interface ApiTarget {
  status(): string;
  cpus(): Array<{ index: number; tid: number; hostCpu?: number }>;
  devices(): Array<Record<string, unknown>>;
  stop(): Promise<void>;
  cont(): void;
  quit(): void;
  name: string;
}

type Reply = Record<string, unknown>;

const COMMANDS = ['qmp_capabilities', 'query-status', 'query-cpus', 'query-devices', 'query-commands', 'stop', 'cont', 'quit'];

function errorReply(klass: string, desc: string, id?: unknown): Reply {
  return id === undefined ? { error: { class: klass, desc } } : { error: { class: klass, desc }, id };
}

/** Splits a byte stream into top-level JSON texts by brace depth (strings and escapes respected). */
export class JsonStreamSplitter {
  private buffer = '';
  private depth = 0;
  private inString = false;
  private escaped = false;
  private start = 0;

  /** Feeds text; returns complete candidate texts (each may still be malformed JSON). */
  push(text: string): string[] {
    const out: string[] = [];
    for (const ch of text) {
      this.buffer += ch;
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (ch === '\\') this.escaped = true;
        else if (ch === '"') this.inString = false;
        continue;
      }
      if (ch === '"') this.inString = true;
      else if (ch === '{' || ch === '[') this.depth++;
      else if (ch === '}' || ch === ']') {
        this.depth--;
        if (this.depth <= 0) {
          out.push(this.buffer.slice(this.start));
          this.reset();
        }
      } else if (ch === '\n' && this.depth === 0) {
        const pending = this.buffer.slice(this.start).trim();
        if (pending) out.push(pending);
        this.reset();
      }
    }
    if (this.buffer.length > 1 << 20) {
      // A runaway unterminated value: hand it over so the caller answers with an error.
      out.push(this.buffer);
      this.reset();
    }
    return out;
  }

  private reset(): void {
    this.buffer = '';
    this.depth = 0;
    this.inString = false;
    this.escaped = false;
    this.start = 0;
  }
}

export async function handleCommand(target: ApiTarget, text: string, state: { negotiated: boolean }): Promise<Reply[]> {
  let message: unknown;
  try {
    message = JSON.parse(text);
  } catch (err) {
    return [errorReply('GenericError', `JSON parse error: ${(err as Error).message}`)];
  }
  if (typeof message !== 'object' || message === null || Array.isArray(message)) {
    return [errorReply('GenericError', 'QMP input must be a JSON object')];
  }
  const m = message as Record<string, unknown>;
  const id = m.id;
  for (const key of Object.keys(m)) {
    if (!['execute', 'arguments', 'id'].includes(key)) return [errorReply('GenericError', `QMP input member '${key}' is unexpected`, id)];
  }
  if (typeof m.execute !== 'string') return [errorReply('GenericError', "QMP input lacks member 'execute'", id)];
  if (m.arguments !== undefined && (typeof m.arguments !== 'object' || m.arguments === null || Array.isArray(m.arguments))) {
    return [errorReply('GenericError', "QMP input member 'arguments' must be an object", id)];
  }
  if (m.arguments && Object.keys(m.arguments).length > 0) {
    return [errorReply('GenericError', `command '${m.execute}' takes no arguments`, id)];
  }
  const ok = (value: unknown): Reply => (id === undefined ? { return: value } : { return: value, id });
  const command = m.execute;
  if (!state.negotiated && command !== 'qmp_capabilities') {
    return [errorReply('CommandNotFound', "Expecting capabilities negotiation with 'qmp_capabilities'", id)];
  }
  switch (command) {
    case 'qmp_capabilities':
      if (state.negotiated) return [errorReply('CommandNotFound', 'Capabilities negotiation is already complete, command ignored', id)];
      state.negotiated = true;
      return [ok({})];
    case 'query-commands':
      return [ok(COMMANDS.map((name) => ({ name })))];
    case 'query-status': {
      const status = target.status();
      return [ok({ status, running: status === 'running', singlestep: false })];
    }
    case 'query-cpus':
      return [
        ok(
          target.cpus().map((c) => ({
            CPU: c.index,
            current: c.index === 0,
            halted: false,
            qom_path: `/machine/unattached/device[${c.index}]`,
            thread_id: c.tid,
            ...(c.hostCpu !== undefined ? { host_cpu: c.hostCpu } : {}),
          })),
        ),
      ];
    case 'query-devices':
      return [ok(target.devices())];
    case 'stop':
      await target.stop();
      return [ok({}), event('STOP')];
    case 'cont':
      target.cont();
      return [ok({}), event('RESUME')];
    case 'quit':
      return [ok({}), event('SHUTDOWN', { guest: false, reason: 'host-qmp-quit' })];
    default:
      return [errorReply('CommandNotFound', `The command ${command} has not been found`, id)];
  }
}

function event(name: string, data?: Record<string, unknown>): Reply {
  const now = Date.now();
  return { event: name, ...(data ? { data } : {}), timestamp: { seconds: Math.floor(now / 1000), microseconds: (now % 1000) * 1000 } };
}

export class ApiChannel {
  private server: Server | null = null;
  private readonly sockets = new Set<Socket>();

  constructor(
    private readonly path: string,
    private readonly target: ApiTarget,
    private readonly log: Logger,
    private readonly label = '-api-channel',
  ) {}

  /** Listens at the path; only a stale socket there is replaced (ConfigError for anything else). */
  async listen(): Promise<void> {
    try {
      claimSocketPath(this.path);
    } catch (err) {
      if (err instanceof SocketPathError) throw new ConfigError(`${this.label}: ${err.message}`);
      throw err;
    }
    const server = createServer((socket) => this.serve(socket));
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(new Error(`${this.label}: cannot listen on ${this.path}: ${err.message}`)));
      server.listen(this.path, () => resolve());
    });
    // Only a socket we bound is ours to remove at close().
    this.server = server;
  }

  private serve(socket: Socket): void {
    this.sockets.add(socket);
    const state = { negotiated: false };
    const splitter = new JsonStreamSplitter();
    const send = (r: Reply) => socket.write(JSON.stringify(r) + '\r\n');
    send({ QMP: { version: { qemu: { micro: 0, minor: 1, major: 0 }, package: `vio4wd-vmm ${this.target.name}` }, capabilities: [] } });
    let queue = Promise.resolve();
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      for (const text of splitter.push(chunk)) {
        queue = queue.then(async () => {
          const replies = await handleCommand(this.target, text, state).catch((err: Error) => [errorReply('GenericError', err.message)]);
          for (const r of replies) send(r);
          if (replies[0] && 'return' in replies[0] && JSON.parse(text).execute === 'quit') {
            socket.end();
            this.target.quit();
          }
        });
      }
    });
    socket.on('error', (err) => this.log.debug({ err: err.message }, 'api-channel client error'));
    socket.on('close', () => this.sockets.delete(socket));
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    if (!this.server) return;
    await new Promise<void>((resolve) => this.server!.close(() => resolve()));
    this.server = null;
    rmSync(this.path, { force: true });
  }
}
