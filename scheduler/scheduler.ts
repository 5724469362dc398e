// The scheduler loop: every interval it reads the relay's worker list and stats, turns the
// busy-time deltas into loads, asks balance.ts for a plan and sends one update when the plan is
// worth it. The relay may restart or stall at any time; each cycle stands on its own, and a
// request that times out costs its socket (the client recreates it), never the process.

import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import { ControlClient, ServiceError } from '../port-control/client.js';
import type { ConfigReply, StatsReply, WorkerCpusReply } from '../port-control/protocol.js';
import { pinOverrides, planBalance, type BalancePlan, type WorkerCpu } from './balance.js';
import { DEFAULTS, schedulerLogger, type SchedulerSettings } from './config.js';
import { estimateLoads, type StatsSnapshot } from './load.js';
import { readCpuNodes } from '../sys/topology.js';

export type SchedulerOptions = Partial<Omit<SchedulerSettings, 'configPath'>> & {
  /** Where logs go; a pino logger on stdout at `logLevel` when absent. */
  logger?: Logger;
};

export type CycleOutcome =
  /** The relay did not answer; nothing measured. */
  | 'unreachable'
  /** First read after start, reconnection or a relay restart: a baseline, no decision yet. */
  | 'baseline'
  /** Measured and decided to leave the placement alone. */
  | 'kept'
  /** Sent a new map and the relay accepted it. */
  | 'updated'
  /** Sent a new map and the relay refused it. */
  | 'rejected'
  /** The cycle hit an unexpected error (logged); the next one starts from a new baseline. */
  | 'failed';

export interface CycleReport {
  outcome: CycleOutcome;
  plan?: BalancePlan;
  error?: string;
}

export interface Scheduler extends EventEmitter {
  readonly settings: Readonly<Omit<SchedulerSettings, 'configPath'>>;
  /** Ends the loop after the cycle in flight and closes the sockets. */
  stop(): Promise<void>;
  /** Runs one cycle now (used by tests that drive the scheduler step by step). */
  runCycle(): Promise<CycleReport>;
  on(event: 'cycle', listener: (report: CycleReport) => void): this;
}

function defaultLogger(level: number): Logger {
  return schedulerLogger(level);
}

class SchedulerLoop extends EventEmitter implements Scheduler {
  readonly settings: Readonly<Omit<SchedulerSettings, 'configPath'>>;
  private readonly log: Logger;
  private readonly stats: ControlClient;
  private readonly coreSched: ControlClient;
  private readonly config: ControlClient | null;
  private readonly sysfsNodes: Map<number, number>;
  private previous: StatsSnapshot | null = null;
  private reachable: boolean | null = null;
  private readonly reportedFallbacks = new Map<number, number>();
  private timer: NodeJS.Timeout | null = null;
  private inFlight: Promise<CycleReport> | null = null;
  private stopped = false;

  constructor(options: SchedulerOptions, autoStart: boolean) {
    super();
    const { logger, ...rest } = options;
    const settings = { ...DEFAULTS, ...Object.fromEntries(Object.entries(rest).filter(([, v]) => v !== undefined)) };
    if (!(settings.pollIntervalMs > 0)) throw new Error(`scheduler: poll interval ${settings.pollIntervalMs} ms must be above 0`);
    if (!(settings.sensitivity >= 0)) throw new Error(`scheduler: sensitivity ${settings.sensitivity} must be >= 0`);
    this.settings = settings;
    this.log = logger ?? defaultLogger(settings.logLevel);
    this.stats = new ControlClient(settings.statsEndpoint, settings.requestTimeoutMs);
    this.coreSched = new ControlClient(settings.coreSchedEndpoint, settings.requestTimeoutMs);
    this.config = settings.configEndpoint ? new ControlClient(settings.configEndpoint, settings.requestTimeoutMs) : null;
    this.sysfsNodes = readCpuNodes(settings.sysfsRoot);
    this.log.info(
      {
        statsEndpoint: settings.statsEndpoint,
        coreSchedEndpoint: settings.coreSchedEndpoint,
        configEndpoint: settings.configEndpoint,
        pollIntervalMs: settings.pollIntervalMs,
        sensitivity: settings.sensitivity,
        globalNuma: settings.globalNuma,
        numaCpus: Object.fromEntries(this.sysfsNodes),
      },
      'core scheduler started',
    );
    if (this.sysfsNodes.size === 0) {
      this.log.warn({ sysfsRoot: settings.sysfsRoot }, `no NUMA nodes under ${settings.sysfsRoot}/devices/system/node; using the nodes the relay reports for its workers`);
    }
    if (autoStart) this.schedule(0);
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.runCycle().finally(() => this.schedule(this.settings.pollIntervalMs));
    }, delayMs);
  }

  runCycle(): Promise<CycleReport> {
    if (this.inFlight) return this.inFlight;
    this.inFlight = this.cycle()
      .catch((err: unknown): CycleReport => {
        // A bug in a cycle must not end the scheduler; the next interval tries again.
        this.log.error({ err }, `scheduler cycle failed: ${(err as Error).message}`);
        this.previous = null;
        return { outcome: 'failed', error: (err as Error).message };
      })
      .then((report) => {
        this.inFlight = null;
        try {
          this.emit('cycle', report);
        } catch (err) {
          // A listener's mistake must not stop the loop that schedules the next cycle.
          this.log.error({ err }, `cycle listener failed: ${(err as Error).message}`);
        }
        return report;
      });
    return this.inFlight;
  }

  private markReachable(ok: boolean, error?: string): void {
    if (ok && this.reachable !== true) {
      this.log.info({ statsEndpoint: this.settings.statsEndpoint, coreSchedEndpoint: this.settings.coreSchedEndpoint }, 'connected to virtio-forwarder');
    } else if (!ok && this.reachable !== false) {
      this.log.warn({ error }, `virtio-forwarder unreachable, retrying every ${this.settings.pollIntervalMs} ms: ${error}`);
    } else if (!ok) {
      this.log.debug({ error }, 'virtio-forwarder still unreachable');
    }
    this.reachable = ok;
  }

  private async cycle(): Promise<CycleReport> {
    let workersReply: WorkerCpusReply;
    let statsReply: StatsReply;
    try {
      workersReply = await this.coreSched.request('get_worker_cpus');
      statsReply = await this.stats.request('stats', { includeInactive: true });
    } catch (err) {
      const message = (err as Error).message;
      this.markReachable(false, message);
      this.previous = null;
      return { outcome: 'unreachable', error: message };
    }
    this.markReachable(true);

    const snapshot: StatsSnapshot = { atNs: statsReply.timeMs * 1e6, relays: statsReply.relays };
    const previous = this.previous;
    this.previous = snapshot;
    if (!previous) return { outcome: 'baseline' };
    if (snapshot.atNs <= previous.atNs) {
      // The relay's monotonic clock went back: it restarted between two reads.
      this.log.info('virtio-forwarder restarted; measuring loads afresh');
      return { outcome: 'baseline' };
    }

    const estimate = estimateLoads(previous, snapshot);
    for (const m of estimate.malformed) {
      this.log.warn({ relay: m.relay }, `stats for relay ${String(m.relay)} ignored: ${m.reason}`);
    }
    for (const r of estimate.resets) {
      this.log.info({ relay: r.relay, direction: r.direction }, `relay ${r.relay} ${r.direction}: counters restarted; load counted as 0 this interval`);
    }
    const workers = this.workerNodes(workersReply);
    const plan = planBalance(estimate.loads, workers, {
      sensitivity: this.settings.sensitivity,
      globalNuma: this.settings.globalNuma,
    });
    this.logFallbacks(plan);
    for (const g of plan.groups) {
      const fields = { cpus: g.cpus, nodes: g.nodes, loadsBefore: g.loadsBefore, loadsAfter: g.loadsAfter, cvBefore: g.cvBefore, cvAfter: g.cvAfter, verdict: g.verdict };
      if (g.apply) this.log.info({ ...fields, moves: g.moves }, `rebalancing CPUs ${g.cpus.join(',')}: ${describeVerdict(g.verdict)}`);
      else this.log.debug(fields, `keeping placement on CPUs ${g.cpus.join(',')}: ${describeVerdict(g.verdict)}`);
    }
    if (plan.update.length === 0) return { outcome: 'kept', plan };

    await this.logPinOverrides(plan);
    try {
      await this.coreSched.request('update', { map: plan.update });
    } catch (err) {
      const message = (err as Error).message;
      if (err instanceof ServiceError) {
        this.log.error({ map: plan.update, code: err.code }, `virtio-forwarder refused the new CPU map: ${message}`);
        return { outcome: 'rejected', plan, error: message };
      }
      // No reply: the relay may or may not have applied it; the next read shows which.
      this.markReachable(false, message);
      this.previous = null;
      return { outcome: 'unreachable', plan, error: message };
    }
    this.log.info(
      {
        map: plan.update,
        loadsBefore: Object.assign({}, ...plan.groups.filter((g) => g.apply).map((g) => g.loadsBefore)),
        loadsAfter: Object.assign({}, ...plan.groups.filter((g) => g.apply).map((g) => g.loadsAfter)),
      },
      `applied new CPU map for relay(s) ${plan.update.map((u) => u.relay).join(',')}`,
    );
    return { outcome: 'updated', plan };
  }

  /** Worker CPUs with their node: sysfs first, the relay's report for CPUs sysfs does not list. */
  private workerNodes(reply: WorkerCpusReply): WorkerCpu[] {
    const reported = new Map(reply.workers.map((w) => [w.cpu, w.numaNode]));
    return [...new Set(reply.cpus)].map((cpu) => ({ cpu, numaNode: this.sysfsNodes.get(cpu) ?? reported.get(cpu) ?? -1 }));
  }

  private logFallbacks(plan: BalancePlan): void {
    const current = new Map(plan.fallbacks.map((f) => [f.relay, f]));
    for (const f of plan.fallbacks) {
      if (this.reportedFallbacks.get(f.relay) === f.numaNode) continue;
      this.reportedFallbacks.set(f.relay, f.numaNode);
      const why = f.reason === 'unknown-node' ? 'its NUMA node is unknown' : `NUMA node ${f.numaNode} has no worker CPU`;
      this.log.warn({ relay: f.relay, numaNode: f.numaNode }, `relay ${f.relay}: ${why}; balancing it over all workers`);
    }
    for (const relay of this.reportedFallbacks.keys()) if (!current.has(relay)) this.reportedFallbacks.delete(relay);
  }

  private async logPinOverrides(plan: BalancePlan): Promise<void> {
    if (!this.config) return;
    let reply: ConfigReply;
    try {
      reply = await this.config.request('config');
    } catch (err) {
      this.log.warn(`cannot read the configured pins from ${this.settings.configEndpoint}: ${(err as Error).message}`);
      return;
    }
    for (const o of pinOverrides(plan.update, reply.pins)) {
      this.log.warn(o, `relay ${o.relay} ${o.direction}: overriding the configured pin to CPU ${o.pinnedCpu} with CPU ${o.newCpu}`);
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.inFlight) await this.inFlight;
    this.stats.close();
    this.coreSched.close();
    this.config?.close();
    this.log.info('core scheduler stopped');
  }
}

function describeVerdict(verdict: string): string {
  switch (verdict) {
    case 'improved':
      return 'load spread improves by more than the sensitivity';
    case 'misplaced':
      return 'a loaded direction runs on a CPU it may not use';
    case 'within-sensitivity':
      return 'improvement within the sensitivity';
    case 'unchanged':
      return 'already the best placement found';
    default:
      return 'no load';
  }
}

/** Starts the loop (first cycle at once, then every poll interval). */
export function startScheduler(options: SchedulerOptions = {}): Scheduler {
  return new SchedulerLoop(options, true);
}

/** A scheduler that only runs when `runCycle()` is called; for step-by-step tests. */
export function createScheduler(options: SchedulerOptions = {}): Scheduler {
  return new SchedulerLoop(options, false);
}
