// The scheduler against a stand-in for the relay's ZMQ services: real REP sockets over ipc,
// requests checked with the real protocol module, loads advanced in virtual time per stats read
// (so nothing depends on how fast this machine is).
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Reply } from 'zeromq';
import {
  PROTOCOL_VERSION,
  ProtocolError,
  errorReply,
  parseRequest,
  type CoreSchedRequest,
  type RelayStats,
  type ServiceName,
} from '../../port-control/protocol.js';
import type { RelayCpu } from '../../relay/registry-api.js';
import { createScheduler, type CycleReport } from '../../scheduler/scheduler.js';
import { requireOrSkip } from '../support/env.js';
import { sleep, startProcess, stopAll, waitFor, type StartedProcess } from '../support/processes.js';

const repoRoot = join(import.meta.dirname, '..', '..');
const bin = join(repoRoot, 'bin', 'vio4wd_core_scheduler');
const compiled = join(repoRoot, 'dist', 'scheduler', 'main.js');

interface SimRelay {
  id: number;
  numaNode: number;
  /** Fraction of a worker each direction costs. */
  load: { vfToVm: number; vmToVf: number };
  cpu: { vfToVm: number; vmToVf: number };
  busyNs: { vfToVm: number; vmToVf: number };
  pollNs: { vfToVm: number; vmToVf: number };
}

interface StandInOptions {
  workers: { cpu: number; numaNode: number }[];
  relays: { id: number; numaNode: number; load: [number, number]; cpu: [number, number] }[];
  pins?: RelayCpu[];
  /** Stats replies to hold back by `delayMs` before answering (to make the client time out). */
  delayedStatsReplies?: number;
  delayMs?: number;
}

/** Plays the relay's stats, core-sched and config services. */
class StandIn {
  readonly requests: { service: ServiceName; op: string; body: unknown }[] = [];
  readonly updates: RelayCpu[][] = [];
  private readonly sockets: Reply[] = [];
  private readonly relays: SimRelay[];
  private timeMs = 1000;
  private delayedLeft: number;

  constructor(
    readonly dir: string,
    private readonly opts: StandInOptions,
  ) {
    this.relays = opts.relays.map((r) => ({
      id: r.id,
      numaNode: r.numaNode,
      load: { vfToVm: r.load[0], vmToVf: r.load[1] },
      cpu: { vfToVm: r.cpu[0], vmToVf: r.cpu[1] },
      busyNs: { vfToVm: 0, vmToVf: 0 },
      pollNs: { vfToVm: 0, vmToVf: 0 },
    }));
    this.delayedLeft = opts.delayedStatsReplies ?? 0;
  }

  static endpoints(dir: string) {
    return {
      stats: `ipc://${dir}/stats`,
      coreSched: `ipc://${dir}/core_sched`,
      config: `ipc://${dir}/config`,
    };
  }

  async start(): Promise<this> {
    const eps = StandIn.endpoints(this.dir);
    for (const [service, ep] of [
      ['stats', eps.stats],
      ['coreSched', eps.coreSched],
      ['config', eps.config],
    ] as const) {
      const sock = new Reply({ linger: 0 });
      await sock.bind(ep);
      this.sockets.push(sock);
      void this.serve(service, sock);
    }
    return this;
  }

  count(op: string): number {
    return this.requests.filter((r) => r.op === op).length;
  }

  private async serve(service: ServiceName, sock: Reply): Promise<void> {
    try {
      for await (const [frame] of sock) {
        let reply: unknown;
        try {
          const req = parseRequest(service, frame);
          this.requests.push({ service, op: req.op, body: req });
          if (req.op === 'stats' && this.delayedLeft > 0) {
            this.delayedLeft--;
            await sleep(this.opts.delayMs ?? 1500);
          }
          reply = this.handle(req as { op: string } & Partial<CoreSchedRequest>);
        } catch (err) {
          reply = err instanceof ProtocolError ? errorReply(err.code, err.message) : errorReply(1, (err as Error).message, 'registry');
        }
        if (sock.closed) return;
        await sock.send(JSON.stringify(reply));
      }
    } catch (err) {
      if (!sock.closed) throw err;
    }
  }

  private handle(req: { op: string; map?: RelayCpu[] }): unknown {
    const ok = { status: 'ok', version: PROTOCOL_VERSION };
    switch (req.op) {
      case 'stats':
        return { ...ok, ...this.snapshot() };
      case 'get_worker_cpus':
        return {
          ...ok,
          cpus: this.opts.workers.map((w) => w.cpu),
          workers: this.opts.workers.map((w) => ({ ...w, busyNs: 0, pollNs: 0 })),
          map: this.map(),
        };
      case 'config':
        return { ...ok, pins: this.opts.pins ?? [], map: this.map() };
      case 'update': {
        const map = req.map!;
        const cpus = new Set(this.opts.workers.map((w) => w.cpu));
        for (const e of map) {
          if (!this.relays.some((r) => r.id === e.relay)) throw new Error(`relay ${e.relay} does not exist`);
          for (const c of [e.vfToVmCpu, e.vmToVfCpu]) if (!cpus.has(c)) throw new Error(`CPU ${c} is not a worker`);
        }
        for (const e of map) {
          const r = this.relays.find((x) => x.id === e.relay)!;
          r.cpu = { vfToVm: e.vfToVmCpu, vmToVf: e.vmToVfCpu };
        }
        this.updates.push(map);
        return ok;
      }
      default:
        throw new Error(`stand-in does not serve ${req.op}`);
    }
  }

  private map(): RelayCpu[] {
    return this.relays.map((r) => ({ relay: r.id, vfToVmCpu: r.cpu.vfToVm, vmToVfCpu: r.cpu.vmToVf }));
  }

  /** Advances virtual time by one second per read; each direction is busy for its load share of it. */
  private snapshot(): { timeMs: number; windowMs: null; relays: RelayStats[]; workers: [] } {
    this.timeMs += 1000;
    const relays = this.relays.map((r): RelayStats => {
      const direction = (d: 'vfToVm' | 'vmToVf') => {
        r.busyNs[d] += r.load[d] * 1e9;
        r.pollNs[d] += 1e9;
        return {
          packets: 0, bytes: 0, rxPackets: 0, rxBytes: 0,
                    dropsQueueFull: 0, dropsNotConnected: 0, dropsBadFrame: 0, dropsKernelRing: 0, dropsKernelRingGuestNoBuffers: 0, rxSegmented: 0, badChains: 0, ringsStopped: 0,
          busyNs: r.busyNs[d], pollNs: r.pollNs[d], cpu: r.cpu[d], active: true, state: 'running', rates: null,
        };
      };
      return {
        id: r.id, active: true, socketPath: null, device: null, deviceKind: null,
        vmConnected: true, numaNode: r.numaNode, queuePairs: 1, ports: [],
        vfToVm: direction('vfToVm'), vmToVf: direction('vmToVf'),
      };
    });
    return { timeMs: this.timeMs, windowMs: null, relays, workers: [] };
  }

  /** Worker loads under the current map, from the configured loads. */
  workerLoads(): Map<number, number> {
    const out = new Map<number, number>();
    for (const r of this.relays) {
      for (const d of ['vfToVm', 'vmToVf'] as const) out.set(r.cpu[d], (out.get(r.cpu[d]) ?? 0) + r.load[d]);
    }
    return out;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.close();
    this.sockets.length = 0;
  }
}

let base = '';
let runCount = 0;
let sysfs = '';
const standIns: StandIn[] = [];
const procs: StartedProcess[] = [];
let canRunBin = false;

beforeAll(() => {
  base = mkdtempSync(join(tmpdir(), `vio4wd-sched-${process.pid}-`));
  sysfs = join(base, 'sys');
  mkdirSync(join(sysfs, 'devices/system/node/node0'), { recursive: true });
  mkdirSync(join(sysfs, 'devices/system/node/node1'), { recursive: true });
  writeFileSync(join(sysfs, 'devices/system/node/node0/cpulist'), '0-3\n');
  writeFileSync(join(sysfs, 'devices/system/node/node1/cpulist'), '4-7\n');
  canRunBin = existsSync(compiled);
});

afterEach(async () => {
  for (const p of procs.splice(0)) await p.stop();
  for (const s of standIns.splice(0)) await s.close();
});

afterAll(async () => {
  await stopAll();
  if (base) rmSync(base, { recursive: true, force: true });
});

function freshDir(): string {
  const dir = join(base, `run${runCount++}`);
  mkdirSync(dir);
  return dir;
}

async function standIn(dir: string, opts: StandInOptions): Promise<StandIn> {
  const s = await new StandIn(dir, opts).start();
  standIns.push(s);
  return s;
}

function runScheduler(dir: string, extra: string[] = []): StartedProcess {
  const eps = StandIn.endpoints(dir);
  const config = join(dir, 'virtioforwarder');
  // The file carries the endpoints and sensitivity; flags override the interval.
  writeFileSync(
    config,
    [
      '# written by the scheduler process test',
      `VIRTIOFWD_ZMQ_STATS_EP=${eps.stats}`,
      `VIRTIOFWD_ZMQ_CORE_SCHED_EP="${eps.coreSched}"`,
      `VIRTIOFWD_ZMQ_CONFIG_EP='${eps.config}'`,
      'VIO4WD_CORE_SCHED_SENSITIVITY=0.25',
      'VIO4WD_CORE_SCHED_POLL_INTERVAL=30  # overridden by the flag below',
      'VIO4WD_CORE_SCHED_LOG_LEVEL=7',
      '',
    ].join('\n'),
  );
  const p = startProcess(
    process.execPath,
    [bin, '--config', config, '--poll-interval', '0.1', '--request-timeout', '400', '--sysfs-root', sysfs, ...extra],
    { label: 'vio4wd_core_scheduler' },
  );
  procs.push(p);
  return p;
}

const skewed: StandInOptions = {
  workers: [
    { cpu: 1, numaNode: 0 },
    { cpu: 2, numaNode: 0 },
  ],
  relays: [
    { id: 0, numaNode: 0, load: [0.3, 0.3], cpu: [1, 1] },
    { id: 1, numaNode: 0, load: [0.3, 0.3], cpu: [1, 1] },
    // Node 1 has no worker: balanced over all workers, with a warning.
    { id: 2, numaNode: 1, load: [0, 0], cpu: [2, 2] },
  ],
  pins: [{ relay: 0, vfToVmCpu: 1, vmToVfCpu: 1 }],
};

describe('vio4wd_core_scheduler process against a stand-in relay', () => {
  it('sends exactly one update for a skewed placement, then leaves the balanced result alone', async () => {
    if (!requireOrSkip(canRunBin, `${compiled} is missing; run npx tsc -p . first`)) return;
    const dir = freshDir();
    const relay = await standIn(dir, skewed);
    const proc = runScheduler(dir);
    await waitFor(() => relay.updates.length >= 1, 20_000, `an update from the scheduler:\n${proc.output().slice(-2000)}`);
    const statsAtUpdate = relay.count('stats');
    await waitFor(() => relay.count('stats') >= statsAtUpdate + 5, 20_000, 'five more stats reads after the update');
    expect(relay.updates).toHaveLength(1);
    const loads = relay.workerLoads();
    expect(loads.get(1)).toBeCloseTo(0.6, 6);
    expect(loads.get(2)).toBeCloseTo(0.6, 6);
    // Every update went through the real schema (parseRequest) and named only worker CPUs.
    expect(relay.updates[0].every((e) => [1, 2].includes(e.vfToVmCpu) && [1, 2].includes(e.vmToVfCpu))).toBe(true);
    const out = proc.output();
    expect(out).toMatch(/"msg":"applied new CPU map for relay\(s\) [0-9,]+"/);
    expect(out).toMatch(/"loadsBefore":\{"1":1\.2,"2":0\}/);
    expect(out).toMatch(/"loadsAfter":\{"1":0\.6,"2":0\.6\}/);
    expect(out).toMatch(/relay 2: NUMA node 1 has no worker CPU; balancing it over all workers/);
    expect(out.match(/NUMA node 1 has no worker CPU/g)).toHaveLength(1);
    expect(out).toMatch(/relay 0 vmToVf: overriding the configured pin to CPU 1 with CPU 2/);
  });

  it('sends no update when the load is balanced within the sensitivity', async () => {
    if (!requireOrSkip(canRunBin, `${compiled} is missing; run npx tsc -p . first`)) return;
    const dir = freshDir();
    // CPU 1 carries 0.55 and CPU 2 0.45 (cv 0.1): a perfect split exists but gains less than 0.25.
    const nearlyBalanced: StandInOptions = {
      workers: skewed.workers,
      relays: [
        { id: 0, numaNode: 0, load: [0.3, 0.25], cpu: [1, 1] },
        { id: 1, numaNode: 0, load: [0.25, 0.2], cpu: [2, 2] },
      ],
    };
    const relay = await standIn(dir, nearlyBalanced);
    const proc = runScheduler(dir);
    await waitFor(() => relay.count('stats') >= 6, 20_000, 'six stats reads');
    expect(relay.updates).toEqual([]);
    expect(proc.output()).toMatch(/keeping placement on CPUs 1,2: improvement within the sensitivity/);

    // The same loads with no hysteresis do move, so the check above is the sensitivity at work.
    await proc.stop();
    const eagerDir = freshDir();
    const eagerRelay = await standIn(eagerDir, nearlyBalanced);
    runScheduler(eagerDir, ['--sensitivity', '0']);
    await waitFor(() => eagerRelay.updates.length >= 1, 20_000, 'an update with sensitivity 0');
  });

  it('reconnects when the relay goes away and comes back, and balances the restarted relay', async () => {
    if (!requireOrSkip(canRunBin, `${compiled} is missing; run npx tsc -p . first`)) return;
    const dir = freshDir();
    const first = await standIn(dir, {
      workers: skewed.workers,
      relays: [{ id: 0, numaNode: 0, load: [0.1, 0.1], cpu: [1, 2] }],
    });
    const proc = runScheduler(dir);
    await waitFor(() => first.count('stats') >= 2, 20_000, 'stats reads from the scheduler');
    await first.close();
    await proc.waitForOutput(/virtio-forwarder unreachable/, 20_000);
    // The restarted relay's clock and counters start again from zero, with a skewed placement.
    const second = await standIn(dir, skewed);
    await waitFor(() => second.updates.length >= 1, 20_000, `an update to the restarted relay:\n${proc.output().slice(-2000)}`);
    expect(first.updates).toEqual([]);
    const loads = second.workerLoads();
    expect(loads.get(1)).toBeCloseTo(0.6, 6);
    expect(loads.get(2)).toBeCloseTo(0.6, 6);
    expect(proc.output().match(/connected to virtio-forwarder/g)?.length).toBeGreaterThanOrEqual(2);
    expect(proc.pid).toBeGreaterThan(0);
    expect(proc.proc.exitCode).toBeNull();
  });

  it('recovers its REQ socket after a request times out', async () => {
    if (!requireOrSkip(canRunBin, `${compiled} is missing; run npx tsc -p . first`)) return;
    const dir = freshDir();
    const relay = await standIn(dir, { ...skewed, delayedStatsReplies: 2, delayMs: 1200 });
    const proc = runScheduler(dir);
    await proc.waitForOutput(/no reply within 400 ms/, 20_000);
    await waitFor(() => relay.updates.length >= 1, 20_000, `an update after the timeouts:\n${proc.output().slice(-2000)}`);
    expect(relay.updates).toHaveLength(1);
    // A wedged REQ socket would have answered every later call with an EFSM error instead.
    expect(proc.output()).not.toMatch(/EFSM|Operation cannot be accomplished in current state/);
  });

  it('exits with status 78 (EX_CONFIG, no restart by systemd) and names the variable for a bad configuration value', async () => {
    if (!requireOrSkip(canRunBin, `${compiled} is missing; run npx tsc -p . first`)) return;
    const dir = freshDir();
    const config = join(dir, 'bad');
    writeFileSync(config, 'VIO4WD_CORE_SCHED_SENSITIVITY=-1\n');
    const p = startProcess(process.execPath, [bin, '--config', config], { label: 'vio4wd_core_scheduler' });
    procs.push(p);
    expect(await p.exited).toBe(78);
    expect(p.output()).toMatch(/VIO4WD_CORE_SCHED_SENSITIVITY="-1" is not valid: expected a decimal number >= 0/);
  });
});

describe('startScheduler in-process, one cycle at a time', () => {
  it('measures, then updates, then keeps; and reports an unreachable relay', async () => {
    const dir = freshDir();
    const eps = StandIn.endpoints(dir);
    const relay = await standIn(dir, skewed);
    const lines: string[] = [];
    const { default: pino } = await import('pino');
    const logger = pino({ level: 'debug' }, { write: (s: string) => void lines.push(s) });
    const scheduler = createScheduler({
      statsEndpoint: eps.stats,
      coreSchedEndpoint: eps.coreSched,
      configEndpoint: eps.config,
      sysfsRoot: sysfs,
      requestTimeoutMs: 400,
      logger,
    });
    try {
      const reports: CycleReport[] = [];
      for (let i = 0; i < 3; i++) reports.push(await scheduler.runCycle());
      expect(reports.map((r) => r.outcome)).toEqual(['baseline', 'updated', 'kept']);
      expect(relay.updates).toHaveLength(1);
      expect(reports[1].plan!.update).toEqual(relay.updates[0]);
      await relay.close();
      standIns.splice(standIns.indexOf(relay), 1);
      const down = await scheduler.runCycle();
      expect(down.outcome).toBe('unreachable');
      expect(down.error).toMatch(/core_sched/);
    } finally {
      await scheduler.stop();
    }
    expect(lines.join('')).toMatch(/core scheduler stopped/);
  });
});
