// The OVSDB monitor: speaks RFC 7047 JSON-RPC on ovsdb-server's unix socket, watches the name and
// external_ids of the Interface table, and keeps the relays in step with the interfaces tagged
// external_ids:virtio_forwarder=<id> (or virtio_relay=<id>).
//
// The monitor keeps a picture of the table and, after every change, reconciles the assignments it
// has applied (relay id + interface) with the ones the table asks for. A reconnect after an
// ovsdb-server restart replaces the picture with the fresh snapshot, so only relays whose
// assignment really changed see a registry call.
import { createConnection, type Socket } from 'node:net';
import type { Logger } from 'pino';
import type { NetdevResolver, RelayRegistry, VfRef } from '../../relay/registry-api.js';
import { MAX_RELAYS } from '../protocol.js';

import { JsonStreamSplitter } from './json-stream.js';

export const RELAY_TAG_KEYS = ['virtio_forwarder', 'virtio_relay'] as const;
const MONITOR_ID = 'vio4wd-interfaces';
const DATABASE = 'Open_vSwitch';

export interface OvsdbMonitorOptions {
  socketPath: string;
  resolveNetdev: NetdevResolver;
  /** Delay between connection attempts while ovsdb-server is away. */
  retryMs?: number;
}

interface InterfaceRow {
  name: string;
  /** Relay id from the tag, or undefined when the interface is not tagged (or badly tagged). */
  relay: number | undefined;
}

interface Assignment {
  relay: number;
  netdev: string;
  vf: VfRef;
}

const keyOf = (relay: number, netdev: string) => `${relay}/${netdev}`;

/** Reads an OVSDB `["map", [[k, v], ...]]` into a plain object; anything else is an empty map. */
export function ovsdbMap(value: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  if (!Array.isArray(value) || value[0] !== 'map' || !Array.isArray(value[1])) return out;
  for (const pair of value[1]) {
    if (Array.isArray(pair) && typeof pair[0] === 'string' && typeof pair[1] === 'string') out[pair[0]] = pair[1];
  }
  return out;
}

/** The relay id an external_ids map asks for; throws with the reason when the tag is malformed. */
export function relayIdFromExternalIds(ids: Record<string, string>): number | undefined {
  for (const key of RELAY_TAG_KEYS) {
    const raw = ids[key];
    if (raw === undefined) continue;
    const text = raw.trim();
    const id = /^\d+$/.test(text) ? Number(text) : /^0x[0-9a-f]+$/i.test(text) ? parseInt(text, 16) : NaN;
    if (!Number.isInteger(id) || id < 0 || id >= MAX_RELAYS) {
      throw new Error(`external_ids:${key}=${JSON.stringify(raw)} is not a relay id in 0..${MAX_RELAYS - 1}`);
    }
    return id;
  }
  return undefined;
}

export class OvsdbMonitor {
  private readonly retryMs: number;
  private rows = new Map<string, InterfaceRow>();
  private readonly applied = new Map<string, Assignment>();
  /** Assignments the registry refused; retried at the next full resync, not on every update. */
  private readonly failed = new Set<string>();
  private sock: Socket | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private closing = false;
  private outageLogged = false;
  /** The last refusal of the monitor request, logged once rather than at every retry. */
  private lastRefusal = '';
  private nextRequestId = 1;
  private monitorRequestId = 0;
  private queue: Promise<void> = Promise.resolve();
  private reconcileQueued = false;
  private retryFailedOnNextReconcile = false;
  /** Number of snapshots (initial sync and resyncs) fully reconciled; lets tests wait for a resync. */
  syncCount = 0;

  constructor(
    private readonly registry: RelayRegistry,
    private readonly options: OvsdbMonitorOptions,
    private readonly logger: Logger,
  ) {
    this.retryMs = options.retryMs ?? 1000;
  }

  get connected(): boolean {
    return this.sock !== undefined && !this.sock.connecting && !this.sock.destroyed;
  }

  start(): void {
    this.connect();
  }

  /** Resolves once every registry call caused so far has finished. */
  idle(): Promise<void> {
    return this.queue;
  }

  async close(): Promise<void> {
    this.closing = true;
    clearTimeout(this.retryTimer);
    this.sock?.destroy();
    await this.queue;
  }

  private connect(): void {
    if (this.closing) return;
    const sock = createConnection(this.options.socketPath);
    this.sock = sock;
    const splitter = new JsonStreamSplitter();
    sock.setEncoding('utf8');
    sock.on('connect', () => {
      this.outageLogged = false;
      this.logger.info({ path: this.options.socketPath }, `OVSDB monitor connected to ${this.options.socketPath}`);
      this.monitorRequestId = this.nextRequestId++;
      this.send({
        method: 'monitor',
        params: [DATABASE, MONITOR_ID, { Interface: { columns: ['name', 'external_ids'] } }],
        id: this.monitorRequestId,
      });
    });
    sock.on('data', (text: string) => {
      let messages: unknown[];
      try {
        messages = splitter.push(text);
      } catch (err) {
        this.logger.error({ err }, `OVSDB monitor: unreadable data from ${this.options.socketPath}; reconnecting`);
        sock.destroy();
        return;
      }
      for (const m of messages) this.handleMessage(m as Record<string, unknown>);
    });
    sock.on('error', (err) => {
      if (!this.outageLogged) {
        this.logger.warn(
          { err: err.message, path: this.options.socketPath },
          `OVSDB monitor: cannot talk to ovsdb-server at ${this.options.socketPath} (${err.message}); retrying every ${this.retryMs} ms`,
        );
        this.outageLogged = true;
      }
    });
    sock.on('close', () => {
      if (this.sock === sock) this.sock = undefined;
      if (this.closing) return;
      if (!this.outageLogged) {
        this.logger.warn({ path: this.options.socketPath }, `OVSDB monitor: ovsdb-server closed the connection; reconnecting every ${this.retryMs} ms`);
        this.outageLogged = true;
      }
      this.retryTimer = setTimeout(() => this.connect(), this.retryMs);
    });
  }

  private send(message: unknown): void {
    this.sock?.write(JSON.stringify(message));
  }

  private handleMessage(msg: Record<string, unknown>): void {
    if (msg.method === 'echo') {
      this.send({ id: msg.id, result: msg.params ?? [], error: null });
      return;
    }
    if (msg.method === 'update') {
      const params = msg.params as unknown[] | undefined;
      if (!Array.isArray(params) || params[0] !== MONITOR_ID) return;
      this.applyTableUpdates(params[1]);
      this.scheduleReconcile();
      return;
    }
    if (msg.id !== undefined && msg.id === this.monitorRequestId) {
      if (msg.error) {
        const refusal = JSON.stringify(msg.error);
        if (refusal !== this.lastRefusal) {
          this.logger.error(
            { error: msg.error },
            `OVSDB monitor: ovsdb-server at ${this.options.socketPath} refused to monitor ${DATABASE}.Interface: ${refusal}; retrying every ${this.retryMs} ms`,
          );
          this.lastRefusal = refusal;
        }
        this.outageLogged = true;
        this.sock?.destroy();
        return;
      }
      this.lastRefusal = '';
      // A fresh snapshot: everything not in it is gone.
      this.rows = new Map();
      this.applyTableUpdates(msg.result);
      this.retryFailedOnNextReconcile = true;
      this.scheduleReconcile(true);
    }
  }

  private applyTableUpdates(updates: unknown): void {
    const table = (updates as { Interface?: Record<string, { old?: Record<string, unknown>; new?: Record<string, unknown> }> } | null)
      ?.Interface;
    if (!table || typeof table !== 'object') return;
    for (const [uuid, change] of Object.entries(table)) {
      const row = change?.new;
      if (!row) {
        this.rows.delete(uuid);
        continue;
      }
      const name = typeof row.name === 'string' ? row.name : this.rows.get(uuid)?.name;
      if (name === undefined) continue;
      let relay: number | undefined;
      try {
        relay = relayIdFromExternalIds(ovsdbMap(row.external_ids));
      } catch (err) {
        this.logger.warn({ interface: name }, `OVSDB monitor: interface ${name}: ${(err as Error).message}; ignored`);
      }
      this.rows.set(uuid, { name, relay });
    }
  }

  private scheduleReconcile(isSnapshot = false): void {
    if (this.reconcileQueued) {
      if (isSnapshot) this.queue = this.queue.then(() => void this.syncCount++);
      return;
    }
    this.reconcileQueued = true;
    this.queue = this.queue.then(async () => {
      this.reconcileQueued = false;
      await this.reconcile();
      if (isSnapshot) this.syncCount++;
    });
  }

  private desired(): Map<string, { relay: number; netdev: string }> {
    const out = new Map<string, { relay: number; netdev: string }>();
    for (const row of this.rows.values()) {
      if (row.relay !== undefined) out.set(keyOf(row.relay, row.name), { relay: row.relay, netdev: row.name });
    }
    return out;
  }

  private async reconcile(): Promise<void> {
    const want = this.desired();
    const retryFailed = this.retryFailedOnNextReconcile;
    this.retryFailedOnNextReconcile = false;
    for (const key of [...this.failed]) if (!want.has(key) || retryFailed) this.failed.delete(key);

    for (const [key, a] of [...this.applied]) {
      if (want.has(key)) continue;
      this.applied.delete(key);
      try {
        await this.registry.removeDevice(a.relay, { pci: a.vf.pci, conditional: true });
        this.logger.info({ relay: a.relay, interface: a.netdev }, `OVSDB monitor: removed ${a.netdev} from relay ${a.relay}`);
      } catch (err) {
        this.logger.error({ relay: a.relay, interface: a.netdev }, `OVSDB monitor: removing ${a.netdev} from relay ${a.relay} failed: ${(err as Error).message}`);
      }
    }
    for (const [key, w] of want) {
      if (this.applied.has(key) || this.failed.has(key)) continue;
      try {
        const vf = this.options.resolveNetdev(w.netdev);
        await this.registry.addVf(w.relay, vf, { conditional: true });
        this.applied.set(key, { ...w, vf });
        this.logger.info({ relay: w.relay, interface: w.netdev, vf }, `OVSDB monitor: added ${w.netdev} to relay ${w.relay}`);
      } catch (err) {
        this.failed.add(key);
        this.logger.error({ relay: w.relay, interface: w.netdev }, `OVSDB monitor: adding ${w.netdev} to relay ${w.relay} failed: ${(err as Error).message}`);
      }
    }
  }
}
