// Our memif server and client connected over a real SOCK_SEQPACKET socket in a temporary
// directory, and the small helpers the memif tests share: wait for a condition, a numbered
// frame, send frames from a port.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Reactor } from '../../sys/poll.js';
import { MemifEndpoint } from '../../sys/memif-control.js';
import type { MemifPort, MemifPortHandle } from '../../sys/memif-rings.js';

export type Cleanup = () => Promise<void> | void;

export interface MemifPairOptions {
  secret?: string;
  clientSecret?: string;
  id?: number;
  clientId?: number;
  rings?: number;
}

/**
 * Runs our server and our client against each other; `up` fills with their handles as each
 * connects. What it starts is ended by the functions it pushes onto `cleanups` (run them last first).
 */
export async function connectedPair(cleanups: Cleanup[], opts: MemifPairOptions = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'memif-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const socketPath = join(dir, 'memif.sock');
  const reactor = new Reactor();
  cleanups.push(() => reactor.close());
  const events: string[] = [];
  const up: Record<string, MemifPortHandle[]> = { server: [], client: [] };
  const down: Record<string, string[]> = { server: [], client: [] };
  const make = (role: 'server' | 'client', id: number, secret?: string) =>
    new MemifEndpoint({
      role, socketPath, id, secret, maxFrameLength: 1514, rxInterrupts: false, reactor, log2RingSize: 6, rings: role === 'client' ? opts.rings : undefined,
      onUp: async (h) => void up[role].push(h),
      onDown: async (r) => void down[role].push(r),
      onEvent: (_level, msg) => void events.push(`${role}: ${msg}`),
    });
  const server = make('server', opts.id ?? 7, opts.secret);
  const client = make('client', opts.clientId ?? opts.id ?? 7, opts.clientSecret ?? opts.secret);
  server.start();
  client.start();
  cleanups.push(async () => {
    await client.close();
    await server.close();
  });
  return { server, client, up, down, events, socketPath, reactor };
}

/** Waits until `what` holds; throws after `ms`. */
export async function until(what: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!what()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** A broadcast IPv4 frame of `length` bytes whose bytes 14–15 carry `n`. */
export function numberedFrame(n: number, length = 60): Uint8Array {
  const f = new Uint8Array(length);
  f.fill(0xff, 0, 6);
  f[12] = 0x08;
  f[14] = n & 0xff;
  f[15] = n >> 8;
  return f;
}

/** Sends `frames` from `port` as far as its ring has room; returns how many went. */
export function sendFrames(port: MemifPort, frames: readonly Uint8Array[]): number {
  let sent = 0;
  for (const f of frames) {
    const slot = port.txSlot();
    if (slot === null) break;
    slot.bytes.set(f, slot.offset);
    if (port.txCommit(f.length)) sent++;
  }
  port.txFlush();
  return sent;
}
