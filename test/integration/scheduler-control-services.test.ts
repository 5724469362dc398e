// The scheduler against the relay's own control services (port-control/services.ts: the real
// stats, core-sched and config handlers over real ipc sockets) in front of a registry whose
// directions report busy time at fixed shares of the wall clock. This checks that what the
// scheduler sends is what the services accept, and that a refused map leaves it running.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startControlServices, type ControlServices } from '../../port-control/services.js';
import {
  RegistryError,
  type DirectionCounters,
  type NetdevInfo,
  type RelayCpu,
  type RelayInfo,
  type RelayRegistry,
  type WorkerInfo,
} from '../../relay/registry-api.js';
import { createScheduler, type CycleReport } from '../../scheduler/scheduler.js';
import { sleep } from '../support/processes.js';

interface LoadedRelay {
  id: number;
  numaNode: number;
  load: { vfToVm: number; vmToVf: number };
  cpu: { vfToVm: number; vmToVf: number };
}

/** Just enough registry for the stats, config and core-sched services. */
class LoadRegistry implements RelayRegistry {
  readonly applied: RelayCpu[][] = [];
  refuseNextMap = false;
  private readonly start = performance.now();

  constructor(
    private readonly relays: LoadedRelay[],
    private readonly workerCpus: { cpu: number; numaNode: number }[],
    private readonly pins: RelayCpu[] = [],
  ) {}

  private counters(r: LoadedRelay, d: 'vfToVm' | 'vmToVf', elapsedNs: number): DirectionCounters {
    return {
      packets: 0, bytes: 0, rxPackets: 0, rxBytes: 0,
            dropsQueueFull: 0, dropsNotConnected: 0, dropsBadFrame: 0, dropsKernelRing: 0, dropsKernelRingGuestNoBuffers: 0, rxSegmented: 0, badChains: 0, ringsStopped: 0,
      busyNs: Math.floor(elapsedNs * r.load[d]), pollNs: Math.floor(elapsedNs),
      cpu: r.cpu[d], active: true, state: 'running',
    };
  }

  list(): RelayInfo[] {
    const elapsedNs = (performance.now() - this.start) * 1e6;
    return this.relays.map((r) => ({
      id: r.id,
      socketPath: `/tmp/relay${r.id}.sock`,
      device: { kind: 'vf', vf: { pci: `0000:05:08.${r.id}`, netdev: `veth${r.id}` } },
      vmConnected: true,
      numaNode: r.numaNode,
      queuePairs: 1,
      ports: [],
      vfToVm: this.counters(r, 'vfToVm', elapsedNs),
      vmToVf: this.counters(r, 'vmToVf', elapsedNs),
    }));
  }
  get(id: number): RelayInfo | undefined {
    return this.list().find((r) => r.id === id);
  }
  cpuMap(): RelayCpu[] {
    return this.relays.map((r) => ({ relay: r.id, vfToVmCpu: r.cpu.vfToVm, vmToVfCpu: r.cpu.vmToVf }));
  }
  async applyCpuMap(map: RelayCpu[]): Promise<void> {
    if (this.refuseNextMap) {
      this.refuseNextMap = false;
      throw new RegistryError(3, 'CPU map refused by the test registry');
    }
    const cpus = new Set(this.workerCpus.map((w) => w.cpu));
    for (const e of map) {
      if (!this.relays.some((r) => r.id === e.relay)) throw new RegistryError(1, `relay ${e.relay} does not exist`);
      for (const c of [e.vfToVmCpu, e.vmToVfCpu]) if (!cpus.has(c)) throw new RegistryError(2, `CPU ${c} is not a worker`);
    }
    for (const e of map) {
      const r = this.relays.find((x) => x.id === e.relay)!;
      r.cpu = { vfToVm: e.vfToVmCpu, vmToVf: e.vmToVfCpu };
    }
    this.applied.push(map);
  }
  workers(): WorkerInfo[] {
    return this.workerCpus.map((w) => ({ ...w, busyNs: 0, pollNs: 0, restarts: 0, heapBytes: 0 }));
  }
  configuredPins(): RelayCpu[] {
    return this.pins;
  }
  describeNetdev(netdev: string): NetdevInfo {
    return { ref: { netdev } };
  }
  workerLoads(): Map<number, number> {
    const out = new Map<number, number>();
    for (const r of this.relays) for (const d of ['vfToVm', 'vmToVf'] as const) out.set(r.cpu[d], (out.get(r.cpu[d]) ?? 0) + r.load[d]);
    return out;
  }
  private unused(): never {
    throw new RegistryError(99, 'not served by the scheduler test registry');
  }
  addVf = async () => this.unused();
  addBond = async () => this.unused();
  addMemif = async () => this.unused();
  removeDevice = async () => this.unused();
  addSocket = async (): Promise<number> => this.unused();
  removeSocket = async (): Promise<number> => this.unused();
  queryPci = (): string => this.unused();
}

let base = '';
let sysfs = '';
beforeAll(() => {
  base = mkdtempSync(join(tmpdir(), `vio4wd-sched-svc-${process.pid}-`));
  sysfs = join(base, 'sys');
  for (const [node, list] of [['node0', '0-3'], ['node1', '4-7']]) {
    mkdirSync(join(sysfs, 'devices/system/node', node), { recursive: true });
    writeFileSync(join(sysfs, 'devices/system/node', node, 'cpulist'), `${list}\n`);
  }
});
afterAll(() => {
  if (base) rmSync(base, { recursive: true, force: true });
});

async function withServices(registry: LoadRegistry, body: (eps: { stats: string; coreSched: string; config: string }) => Promise<void>) {
  const dir = mkdtempSync(join(base, 'run-'));
  const eps = { stats: `ipc://${dir}/stats`, coreSched: `ipc://${dir}/core_sched`, config: `ipc://${dir}/config` };
  const services: ControlServices = await startControlServices(
    registry,
    { statsEp: eps.stats, coreSchedEp: eps.coreSched, configEp: eps.config, coreSchedEnabled: true },
    pino({ level: 'silent' }),
  );
  try {
    await body(eps);
  } finally {
    await services.close();
  }
}

describe('scheduler against the real control services', () => {
  it('balances two NUMA nodes separately through get_worker_cpus, stats and update', async () => {
    const registry = new LoadRegistry(
      [
        { id: 0, numaNode: 0, load: { vfToVm: 0.4, vmToVf: 0.1 }, cpu: { vfToVm: 1, vmToVf: 1 } },
        { id: 1, numaNode: 0, load: { vfToVm: 0.4, vmToVf: 0.1 }, cpu: { vfToVm: 1, vmToVf: 1 } },
        { id: 2, numaNode: 1, load: { vfToVm: 0.3, vmToVf: 0.3 }, cpu: { vfToVm: 5, vmToVf: 5 } },
        { id: 3, numaNode: 1, load: { vfToVm: 0.3, vmToVf: 0.3 }, cpu: { vfToVm: 5, vmToVf: 5 } },
      ],
      [
        { cpu: 1, numaNode: 0 },
        { cpu: 2, numaNode: 0 },
        { cpu: 5, numaNode: 1 },
        { cpu: 6, numaNode: 1 },
      ],
      [{ relay: 2, vfToVmCpu: 5, vmToVfCpu: 5 }],
    );
    const lines: string[] = [];
    await withServices(registry, async (eps) => {
      const scheduler = createScheduler({
        statsEndpoint: eps.stats,
        coreSchedEndpoint: eps.coreSched,
        configEndpoint: eps.config,
        sysfsRoot: sysfs,
        logger: pino({ level: 'debug' }, { write: (s: string) => void lines.push(s) }),
      });
      try {
        const reports: CycleReport[] = [];
        for (let i = 0; i < 3; i++) {
          reports.push(await scheduler.runCycle());
          await sleep(100);
        }
        expect(reports.map((r) => r.outcome)).toEqual(['baseline', 'updated', 'kept']);
      } finally {
        await scheduler.stop();
      }
    });
    expect(registry.applied).toHaveLength(1);
    for (const e of registry.applied[0]) {
      const allowed = e.relay < 2 ? [1, 2] : [5, 6];
      expect(allowed).toContain(e.vfToVmCpu);
      expect(allowed).toContain(e.vmToVfCpu);
    }
    const loads = registry.workerLoads();
    expect(loads.get(1)).toBeCloseTo(0.5, 6);
    expect(loads.get(2)).toBeCloseTo(0.5, 6);
    expect(loads.get(5)).toBeCloseTo(0.6, 6);
    expect(loads.get(6)).toBeCloseTo(0.6, 6);
    expect(lines.join('')).toMatch(/relay 2 \w+: overriding the configured pin to CPU 5 with CPU 6/);
  });

  it('keeps running when the relay refuses a map, and succeeds on the next interval', async () => {
    const registry = new LoadRegistry(
      [
        { id: 0, numaNode: 0, load: { vfToVm: 0.5, vmToVf: 0.5 }, cpu: { vfToVm: 1, vmToVf: 1 } },
        { id: 1, numaNode: 0, load: { vfToVm: 0.5, vmToVf: 0.5 }, cpu: { vfToVm: 1, vmToVf: 1 } },
      ],
      [
        { cpu: 1, numaNode: 0 },
        { cpu: 2, numaNode: 0 },
      ],
    );
    registry.refuseNextMap = true;
    const lines: string[] = [];
    await withServices(registry, async (eps) => {
      const scheduler = createScheduler({
        statsEndpoint: eps.stats,
        coreSchedEndpoint: eps.coreSched,
        sysfsRoot: sysfs,
        logger: pino({ level: 'info' }, { write: (s: string) => void lines.push(s) }),
      });
      try {
        const outcomes: string[] = [];
        for (let i = 0; i < 3; i++) {
          outcomes.push((await scheduler.runCycle()).outcome);
          await sleep(100);
        }
        expect(outcomes).toEqual(['baseline', 'rejected', 'updated']);
      } finally {
        await scheduler.stop();
      }
    });
    expect(registry.applied).toHaveLength(1);
    expect(lines.join('')).toMatch(/virtio-forwarder refused the new CPU map: update failed: CPU map refused by the test registry \(code 3\)/);
  });
});
