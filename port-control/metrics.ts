// The stats service's counters for Prometheus: GET /metrics over HTTP, in the Prometheus text
// format or in OpenMetrics when the scraper's Accept header asks for it. Nothing is kept up to
// date between scrapes: each scrape takes one snapshot through the stats service (the counters
// the workers write to shared memory, read by the main thread), so the workers never see the
// endpoint and a scrape costs them nothing.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { Counter, Gauge, Registry, type Metric, type OpenMetricsContentType, type PrometheusContentType } from 'prom-client';
import type { DirectionCounters, RelayRegistry } from '../relay/registry-api.js';
import { formatListenAddress, type ListenAddress } from '../vocabulary/listen-address.js';
import { PROTOCOL_VERSION, type StatsReply } from './protocol.js';
import { StatsService } from './stats.js';

export const METRICS_PATH = '/metrics';

/** Label values of `direction`, as the stats tool names the two directions. */
export type DirectionLabel = 'vf_to_vm' | 'vm_to_vf';

/** The states a direction reports (DirectionCounters.state), each a series of vio4wd_relay_direction_state. */
export const DIRECTION_STATES = ['UNINIT', 'ADDED', 'READY'] as const;

/**
 * Drop causes, as the `cause` label of vio4wd_relay_dropped_packets_total. `queue_full` and
 * `not_connected` are about the destination of the direction (the guest for vf_to_vm, the VF for
 * vm_to_vf); `vf_ring_full` (the kernel found the VF packet ring full) exists for vf_to_vm only.
 */
const DROP_CAUSES: readonly { cause: string; value: (c: DirectionCounters) => number; only?: DirectionLabel }[] = [
  { cause: 'queue_full', value: (c) => c.dropsQueueFull },
  { cause: 'not_connected', value: (c) => c.dropsNotConnected },
  { cause: 'bad_frame', value: (c) => c.dropsBadFrame },
  { cause: 'vf_ring_full', value: (c) => c.dropsKernelRing, only: 'vf_to_vm' },
];

/** One counter per field of a direction, all labelled relay and direction (`only`: that direction alone). */
const DIRECTION_COUNTERS: readonly { name: string; help: string; value: (c: DirectionCounters) => number; only?: DirectionLabel }[] = [
  {
    name: 'vio4wd_relay_received_packets_total',
    help: 'Frames the relay took from the source of the direction (the VF for vf_to_vm, the guest for vm_to_vf).',
    value: (c) => c.rxPackets,
  },
  {
    name: 'vio4wd_relay_received_bytes_total',
    help: 'Bytes of the frames taken from the source of the direction.',
    value: (c) => c.rxBytes,
  },
  {
    name: 'vio4wd_relay_sent_packets_total',
    help: 'Frames delivered to the destination of the direction (the guest for vf_to_vm, the VF for vm_to_vf).',
    value: (c) => c.packets,
  },
  {
    name: 'vio4wd_relay_sent_bytes_total',
    help: 'Bytes of the frames delivered to the destination of the direction.',
    value: (c) => c.bytes,
  },
  {
    // Not a cause of its own: a part of vf_ring_full, so the two must not be added up.
    name: 'vio4wd_relay_vf_ring_full_guest_no_buffers_packets_total',
    help: 'The part of the vf_ring_full drops that fell in 100 ms intervals in which frames waited while the guest had posted no receive buffers: the guest, not the relay, fell behind.',
    value: (c) => c.dropsKernelRingGuestNoBuffers,
    only: 'vf_to_vm',
  },
  {
    name: 'vio4wd_relay_segmented_packets_total',
    help: 'GSO frames from the VF (up to 64 KiB of TCP) that the relay cut into segments because the guest did not negotiate GUEST_TSO4/6 (or GUEST_ECN); each segment counts as a sent packet.',
    value: (c) => c.rxSegmented,
    only: 'vf_to_vm',
  },
  {
    name: 'vio4wd_relay_bad_chains_total',
    help: 'Guest descriptor chains dropped because they broke a rule (loop, bounds, direction, length).',
    value: (c) => c.badChains,
  },
  {
    name: 'vio4wd_relay_rings_stopped_total',
    help: 'Guest rings stopped after a fault (a broken ring, a failing kick or call fd, an unexpected error).',
    value: (c) => c.ringsStopped,
  },
  {
    name: 'vio4wd_relay_busy_seconds_total',
    help: 'Time the worker serving the direction spent in polls that moved packets.',
    value: (c) => c.busyNs / 1e9,
  },
  {
    name: 'vio4wd_relay_poll_seconds_total',
    help: 'Time the worker serving the direction spent polling it, busy or not.',
    value: (c) => c.pollNs / 1e9,
  },
];

const bit = (b: boolean) => (b ? 1 : 0);

/**
 * One registry of the metrics, in one exposition format. Each format has its own metric objects:
 * prom-client renames a counter in place (it drops `_total`) when an OpenMetrics registry renders
 * it, so a counter shared with a text-format registry would lose its suffix there.
 */
class MetricSet {
  private readonly directionCounters: { counter: Counter<'relay' | 'direction'>; value: (c: DirectionCounters) => number; only?: DirectionLabel }[];
  private readonly dropped: Counter<'relay' | 'direction' | 'cause'>;
  private readonly relayInfo: Gauge<'relay' | 'device' | 'device_kind' | 'socket'>;
  private readonly relayActive: Gauge<'relay'>;
  private readonly vmConnected: Gauge<'relay'>;
  private readonly queuePairs: Gauge<'relay'>;
  private readonly directionActive: Gauge<'relay' | 'direction'>;
  private readonly directionState: Gauge<'relay' | 'direction' | 'state'>;
  private readonly directionCpu: Gauge<'relay' | 'direction'>;
  private readonly workerRestarts: Counter<'cpu'>;
  private readonly workerBusy: Counter<'cpu'>;
  private readonly workerPoll: Counter<'cpu'>;
  private readonly workerHeap: Gauge<'cpu'>;
  private readonly daemonMemory: Gauge<'kind'>;
  private readonly all: Metric[];

  constructor(readonly registry: Registry<PrometheusContentType> | Registry<OpenMetricsContentType>) {
    const registers = [registry as Registry];
    const counter = <L extends string>(name: string, help: string, labelNames: readonly L[]) =>
      new Counter<L>({ name, help, labelNames, registers });
    const gauge = <L extends string>(name: string, help: string, labelNames: readonly L[]) =>
      new Gauge<L>({ name, help, labelNames, registers });

    this.directionCounters = DIRECTION_COUNTERS.map((d) => ({
      counter: counter(d.name, d.help, ['relay', 'direction'] as const),
      value: d.value,
      only: d.only,
    }));
    this.dropped = counter(
      'vio4wd_relay_dropped_packets_total',
      'Frames dropped, by cause: queue_full and not_connected are about the destination of the direction, vf_ring_full (vf_to_vm only) counts the frames the kernel dropped because the VF packet ring was full.',
      ['relay', 'direction', 'cause'] as const,
    );
    this.relayInfo = gauge(
      'vio4wd_relay_info',
      'Always 1: what the relay holds (device: PCI address, bond name or netdev, empty when none) and its vhost-user socket.',
      ['relay', 'device', 'device_kind', 'socket'] as const,
    );
    this.relayActive = gauge('vio4wd_relay_active', '1 when a VM is connected and a device is attached, else 0.', ['relay'] as const);
    this.vmConnected = gauge('vio4wd_relay_vm_connected', '1 while a VM is connected and its rings run, else 0.', ['relay'] as const);
    this.queuePairs = gauge('vio4wd_relay_queue_pairs', 'Guest queue pairs in use.', ['relay'] as const);
    this.directionActive = gauge('vio4wd_relay_direction_active', '1 when the direction is active, else 0.', ['relay', 'direction'] as const);
    this.directionState = gauge(
      'vio4wd_relay_direction_state',
      'State of the direction: 1 for the state it is in (UNINIT, ADDED or READY), 0 for the others.',
      ['relay', 'direction', 'state'] as const,
    );
    this.directionCpu = gauge('vio4wd_relay_direction_cpu', 'Worker CPU serving the direction, -1 when none does.', ['relay', 'direction'] as const);
    this.workerRestarts = counter(
      'vio4wd_worker_restarts_total',
      'Times the worker thread of this CPU ended unexpectedly and was started again with its directions.',
      ['cpu'] as const,
    );
    this.workerBusy = counter('vio4wd_worker_busy_seconds_total', 'Time the worker spent in polls that moved packets.', ['cpu'] as const);
    this.workerPoll = counter('vio4wd_worker_poll_seconds_total', 'Time the worker spent polling, busy or not.', ['cpu'] as const);
    this.workerHeap = gauge('vio4wd_worker_heap_bytes', "Bytes the worker thread's JavaScript heap holds.", ['cpu'] as const);
    this.daemonMemory = gauge(
      'vio4wd_daemon_memory_bytes',
      "The daemon's memory: rss (the whole process), heap_used and heap_total (the main thread's JavaScript heap), external (buffers its objects hold).",
      ['kind'] as const,
    );
    this.all = [
      ...this.directionCounters.map((d) => d.counter),
      this.dropped,
      this.relayInfo,
      this.relayActive,
      this.vmConnected,
      this.queuePairs,
      this.directionActive,
      this.directionState,
      this.directionCpu,
      this.workerRestarts,
      this.workerBusy,
      this.workerPoll,
      this.workerHeap,
      this.daemonMemory,
    ];
  }

  /** Replaces every series with the snapshot's values. */
  fill(snapshot: StatsReply): void {
    // Series of relays that went away (a removed dynamic socket) must go with them.
    for (const m of this.all) m.reset();
    for (const r of snapshot.relays) {
      const relay = String(r.id);
      this.relayInfo.set({ relay, device: r.device ?? '', device_kind: r.deviceKind ?? '', socket: r.socketPath ?? '' }, 1);
      this.relayActive.set({ relay }, bit(r.active));
      this.vmConnected.set({ relay }, bit(r.vmConnected));
      this.queuePairs.set({ relay }, r.queuePairs);
      const directions: [DirectionLabel, DirectionCounters][] = [['vf_to_vm', r.vfToVm], ['vm_to_vf', r.vmToVf]];
      for (const [direction, c] of directions) {
        const labels = { relay, direction };
        // A counter is set by resetting it (above) and adding the value once.
        for (const d of this.directionCounters) if (!d.only || d.only === direction) d.counter.inc(labels, d.value(c));
        for (const drop of DROP_CAUSES) {
          if (!drop.only || drop.only === direction) this.dropped.inc({ ...labels, cause: drop.cause }, drop.value(c));
        }
        this.directionActive.set(labels, bit(c.active));
        for (const state of DIRECTION_STATES) this.directionState.set({ ...labels, state }, bit(c.state === state));
        this.directionCpu.set(labels, c.cpu);
      }
    }
    for (const w of snapshot.workers) {
      const cpu = String(w.cpu);
      this.workerRestarts.inc({ cpu }, w.restarts);
      this.workerBusy.inc({ cpu }, w.busyNs / 1e9);
      this.workerPoll.inc({ cpu }, w.pollNs / 1e9);
      this.workerHeap.set({ cpu }, w.heapBytes);
    }
    const d = snapshot.daemon;
    this.daemonMemory.set({ kind: 'rss' }, d.rssBytes);
    this.daemonMemory.set({ kind: 'heap_used' }, d.heapUsedBytes);
    this.daemonMemory.set({ kind: 'heap_total' }, d.heapTotalBytes);
    this.daemonMemory.set({ kind: 'external' }, d.externalBytes);
  }
}

/** The metrics of one daemon, in both exposition formats, each filled from a fresh snapshot when scraped. */
export class RelayMetrics {
  private readonly stats: StatsService;
  private readonly text: MetricSet;
  private readonly openMetrics: MetricSet;

  constructor(registry: RelayRegistry) {
    this.stats = new StatsService(registry);
    this.text = new MetricSet(new Registry<PrometheusContentType>());
    const openMetrics = new Registry<OpenMetricsContentType>();
    openMetrics.setContentType(Registry.OPENMETRICS_CONTENT_TYPE);
    this.openMetrics = new MetricSet(openMetrics);
  }

  /** The exposition of a fresh snapshot of every relay (active or not) and worker. */
  async render(openMetrics: boolean): Promise<{ contentType: string; body: string }> {
    const set = openMetrics ? this.openMetrics : this.text;
    set.fill(this.stats.snapshot({ version: PROTOCOL_VERSION, op: 'stats', includeInactive: true }));
    return { contentType: set.registry.contentType, body: await set.registry.metrics() };
  }
}

/**
 * Whether the Accept header prefers OpenMetrics to the Prometheus text format: it names
 * application/openmetrics-text with a q above 0 and at least the q of text/plain (or of the
 * wildcards that cover it). Without an Accept header the answer is the text format.
 */
export function wantsOpenMetrics(accept: string | undefined): boolean {
  if (!accept) return false;
  let openMetrics = 0;
  let text = 0;
  for (const range of accept.split(',')) {
    const [type, ...params] = range.split(';').map((p) => p.trim().toLowerCase());
    let q = 1;
    for (const p of params) {
      // RFC 9110 weights: 0 to 1 with up to three decimals; anything else makes the range unusable.
      if (p.startsWith('q=')) q = /^q=(0(\.\d{0,3})?|1(\.0{0,3})?)$/.test(p) ? Number(p.slice(2)) : 0;
    }
    if (type === 'application/openmetrics-text') openMetrics = Math.max(openMetrics, q);
    else if (type === 'text/plain' || type === 'text/*' || type === '*/*') text = Math.max(text, q);
  }
  return openMetrics > 0 && openMetrics >= text;
}

export interface MetricsServer {
  /** Where it listens, with the port the kernel chose when 0 was asked for. */
  readonly address: ListenAddress;
  /** http://HOST:PORT/metrics */
  readonly url: string;
  /** Starts answering scrapes from `registry`; until then a scrape gets 503. */
  serve(registry: RelayRegistry): void;
  close(): Promise<void>;
}

/** A bind that failed: the address and the system error, for the daemon to report as configuration. */
export class MetricsListenError extends Error {
  constructor(
    readonly address: ListenAddress,
    readonly code: string | undefined,
    message: string,
  ) {
    super(message);
    this.name = 'MetricsListenError';
  }
}

/** What a failed bind means, for the errors an operator can meet. */
const BIND_ERRORS: Record<string, string> = {
  EADDRINUSE: 'the port is in use',
  EADDRNOTAVAIL: 'not an address of this host',
  EACCES: 'a port below 1024 needs root or CAP_NET_BIND_SERVICE',
  ENOTFOUND: 'the host name does not resolve',
  EAI_AGAIN: 'the host name does not resolve',
};

function reply(res: ServerResponse, status: number, body: string, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8', 'Content-Length': Buffer.byteLength(body), ...headers });
  res.end(body);
}

/**
 * Listens on `address`, and serves GET /metrics once given the registry (serve): the daemon binds
 * first, so that an address it cannot have stops the start before any relay or worker exists.
 * Rejects with MetricsListenError when the bind fails.
 */
export async function startMetricsServer(address: ListenAddress, log: Logger): Promise<MetricsServer> {
  let metrics: RelayMetrics | null = null;
  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    let path: string;
    try {
      path = new URL(req.url ?? '', 'http://metrics').pathname;
    } catch {
      reply(res, 400, 'bad request target\n');
      return;
    }
    if (path !== METRICS_PATH) {
      reply(res, 404, `not found: the metrics are at ${METRICS_PATH}\n`);
      return;
    }
    // HEAD is GET without the body (node's http drops it), as HTTP requires of a server with GET.
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      reply(res, 405, `method ${req.method} not allowed: use GET\n`, { Allow: 'GET, HEAD' });
      return;
    }
    if (!metrics) {
      reply(res, 503, 'the daemon is starting\n', { 'Retry-After': '1' });
      return;
    }
    try {
      const { contentType, body } = await metrics.render(wantsOpenMetrics(req.headers.accept));
      reply(res, 200, body, { 'Content-Type': contentType, 'Cache-Control': 'no-store', Vary: 'Accept' });
    } catch (err) {
      log.warn({ err: (err as Error).message }, 'metrics scrape failed');
      if (!res.headersSent) reply(res, 500, 'the metrics could not be collected; see the daemon log\n');
      else res.destroy();
    }
  };

  const server: Server = createServer({ requestTimeout: 10_000, headersTimeout: 10_000 }, (req, res) => {
    // Nothing a client does may end the daemon through an unhandled rejection.
    handle(req, res).catch((err: Error) => {
      log.warn({ err: err.message }, 'metrics request failed');
      res.destroy();
    });
  });
  // A scraper needs one or two connections; more is someone else, who gets refused.
  server.maxConnections = 32;
  server.keepAliveTimeout = 30_000;

  await new Promise<void>((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException) => {
      server.off('listening', onListening);
      const meaning = (err.code && BIND_ERRORS[err.code]) ?? err.message;
      reject(new MetricsListenError(address, err.code, `cannot listen on ${formatListenAddress(address)}: ${meaning}${err.code ? ` (${err.code})` : ''}`));
    };
    const onListening = () => {
      server.off('error', onError);
      resolve();
    };
    server.once('error', onError);
    server.once('listening', onListening);
    server.listen({ host: address.host, port: address.port, exclusive: true });
  });
  server.on('error', (err) => log.warn({ err: err.message }, 'metrics endpoint error'));

  const bound = server.address() as AddressInfo;
  const actual: ListenAddress = { host: bound.address, port: bound.port };
  const url = `http://${formatListenAddress(actual)}${METRICS_PATH}`;
  return {
    address: actual,
    url,
    serve: (registry) => {
      metrics = new RelayMetrics(registry);
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
