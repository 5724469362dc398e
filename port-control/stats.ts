// Stats snapshots and per-client rate windows. Each client that names itself (clientId) gets its
// own baseline, so the core scheduler, a monitor and an operator's one-off query never disturb
// each other's rates (the original reset one global baseline on every request).
import { bondMemberName, type DirectionCounters, type RelayInfo, type RelayRegistry, type WorkerInfo } from '../relay/registry-api.js';
import {
  PROTOCOL_VERSION,
  type DaemonMemory,
  type DirectionRates,
  type DirectionStats,
  type RelayStats,
  type StatsReply,
  type StatsRequest,
  type WorkerStats,
} from './protocol.js';

interface DirectionSample {
  packets: number;
  bytes: number;
  rxPackets: number;
  rxBytes: number;
  busyNs: number;
  pollNs: number;
}

interface Baseline {
  timeMs: number;
  relays: Map<number, { vfToVm: DirectionSample; vmToVf: DirectionSample }>;
  workers: Map<number, { busyNs: number; pollNs: number }>;
}

/** Bounded so that clients inventing a new id per request cannot grow the daemon without limit. */
export const MAX_TRACKED_CLIENTS = 256;

export function describeDevice(info: RelayInfo): Pick<RelayStats, 'device' | 'deviceKind' | 'bondMembers'> {
  const d = info.device;
  if (!d) return { device: null, deviceKind: null };
  if (d.kind === 'vf') return { device: d.vf.pci ?? d.vf.netdev ?? null, deviceKind: 'vf' };
  if (d.kind === 'memif') return { device: `memif:${d.memif.socket}#${d.memif.id}`, deviceKind: 'memif' };
  return {
    device: d.bond.name,
    deviceKind: 'bond',
    bondMembers: d.bond.members.map(bondMemberName),
  };
}

function sample(c: DirectionCounters): DirectionSample {
  return { packets: c.packets, bytes: c.bytes, rxPackets: c.rxPackets, rxBytes: c.rxBytes, busyNs: c.busyNs, pollNs: c.pollNs };
}

/** A counter that went backwards (the relay was torn down and rebuilt) counts as a fresh start. */
const delta = (now: number, before: number) => (now >= before ? now - before : now);

function rates(now: DirectionSample, before: DirectionSample | undefined, seconds: number): DirectionRates | null {
  if (!before || seconds <= 0) return null;
  const poll = delta(now.pollNs, before.pollNs);
  return {
    packets: delta(now.packets, before.packets) / seconds,
    bytes: delta(now.bytes, before.bytes) / seconds,
    rxPackets: delta(now.rxPackets, before.rxPackets) / seconds,
    rxBytes: delta(now.rxBytes, before.rxBytes) / seconds,
    busy: poll > 0 ? Math.min(1, delta(now.busyNs, before.busyNs) / poll) : 0,
  };
}

function daemonMemory(m: NodeJS.MemoryUsage): DaemonMemory {
  return { rssBytes: m.rss, heapUsedBytes: m.heapUsed, heapTotalBytes: m.heapTotal, externalBytes: m.external };
}

export class StatsService {
  private readonly baselines = new Map<string, Baseline>();

  constructor(
    private readonly registry: RelayRegistry,
    private readonly clock: () => number = () => performance.now(),
    private readonly memory: () => NodeJS.MemoryUsage = () => process.memoryUsage(),
  ) {}

  get trackedClients(): number {
    return this.baselines.size;
  }

  snapshot(req: StatsRequest): StatsReply {
    const timeMs = this.clock();
    const wanted = req.relays && req.relays.length > 0 ? new Set(req.relays) : undefined;
    const includeInactive = req.includeInactive ?? true;
    const infos = this.registry.list().filter((r) => !wanted || wanted.has(r.id));
    const workers = this.registry.workers();
    const before = req.clientId !== undefined ? this.baselines.get(req.clientId) : undefined;
    const seconds = before ? (timeMs - before.timeMs) / 1000 : 0;

    const next: Baseline = { timeMs, relays: new Map(), workers: new Map() };
    const relays: RelayStats[] = [];
    for (const info of infos) {
      const up = sample(info.vfToVm);
      const down = sample(info.vmToVf);
      next.relays.set(info.id, { vfToVm: up, vmToVf: down });
      const active = info.vmConnected && info.device !== undefined;
      if (!active && !includeInactive) continue;
      const prev = before?.relays.get(info.id);
      const direction = (c: DirectionCounters, now: DirectionSample, was: DirectionSample | undefined): DirectionStats => ({
        ...c,
        rates: rates(now, was, seconds),
      });
      relays.push({
        id: info.id,
        active,
        socketPath: info.socketPath ?? null,
        ...describeDevice(info),
        ports: info.ports ?? [],
        vmConnected: info.vmConnected,
        numaNode: info.numaNode,
        queuePairs: info.queuePairs,
        vfToVm: direction(info.vfToVm, up, prev?.vfToVm),
        vmToVf: direction(info.vmToVf, down, prev?.vmToVf),
      });
    }
    relays.sort((a, b) => a.id - b.id);

    const workerStats: WorkerStats[] = workers.map((w: WorkerInfo) => {
      next.workers.set(w.cpu, { busyNs: w.busyNs, pollNs: w.pollNs });
      const was = before?.workers.get(w.cpu);
      let load: number | null = null;
      if (was) {
        const poll = delta(w.pollNs, was.pollNs);
        load = poll > 0 ? Math.min(1, delta(w.busyNs, was.busyNs) / poll) : 0;
      }
      return { ...w, load };
    });

    if (req.clientId !== undefined) this.remember(req.clientId, next);
    return {
      status: 'ok',
      version: PROTOCOL_VERSION,
      timeMs,
      windowMs: before ? timeMs - before.timeMs : null,
      relays,
      workers: workerStats,
      daemon: daemonMemory(this.memory()),
    };
  }

  private remember(clientId: string, baseline: Baseline): void {
    // Map iteration order is insertion order: re-inserting keeps the most recently used last.
    this.baselines.delete(clientId);
    this.baselines.set(clientId, baseline);
    while (this.baselines.size > MAX_TRACKED_CLIENTS) {
      const oldest = this.baselines.keys().next().value as string;
      this.baselines.delete(oldest);
    }
  }
}
