// The load-balancing decision, kept free of I/O so every rule can be tested over synthetic loads.
//
// Each relay direction has a measured load (the fraction of one worker's time it costs) and may
// only run on the workers of its VM's NUMA node, or on every worker with the global option or when
// its node has none. Directions whose allowed sets overlap form one balancing group; each group is
// reassigned heaviest-first onto its least-loaded worker, and the result is applied only when the
// spread of worker loads (coefficient of variation) shrinks by more than the sensitivity.

export type Direction = 'vfToVm' | 'vmToVf';
export const DIRECTIONS: readonly Direction[] = ['vfToVm', 'vmToVf'];

export interface DirectionLoad {
  relay: number;
  direction: Direction;
  /** Fraction of one worker's time this direction costs (0 when idle or not yet measured). */
  load: number;
  /** Worker CPU serving it now, or -1. */
  cpu: number;
  /** NUMA node of the VM's memory, -1 when unknown. */
  numaNode: number;
}

export interface WorkerCpu {
  cpu: number;
  /** NUMA node of the CPU, -1 when unknown. */
  numaNode: number;
}

export interface BalanceOptions {
  /** Minimum drop in the coefficient of variation that justifies moving anything. */
  sensitivity: number;
  /** Balance across all NUMA nodes instead of within each node. */
  globalNuma: boolean;
}

export interface RelayCpuChange {
  relay: number;
  vfToVmCpu: number;
  vmToVfCpu: number;
}

export interface Move {
  relay: number;
  direction: Direction;
  fromCpu: number;
  toCpu: number;
  load: number;
}

export type GroupVerdict =
  /** Every worker of the group is idle: nothing to balance. */
  | 'idle'
  /** The proposal does not beat the current spread by more than the sensitivity. */
  | 'within-sensitivity'
  /** The proposal is the current placement. */
  | 'unchanged'
  /** The spread improves enough: apply. */
  | 'improved'
  /** A loaded direction runs on a CPU it may not use (not a worker, or off its node): apply. */
  | 'misplaced';

export interface GroupDecision {
  /** Worker CPUs of the group, ascending. */
  cpus: number[];
  /** NUMA nodes of those workers, ascending (-1 for unknown). */
  nodes: number[];
  /** Load per worker CPU before and after the proposal. */
  loadsBefore: Record<number, number>;
  loadsAfter: Record<number, number>;
  /** Coefficient of variation before (null when a loaded direction is misplaced) and after. */
  cvBefore: number | null;
  cvAfter: number;
  verdict: GroupVerdict;
  /** Direction moves of the proposal (applied only when `apply`). */
  moves: Move[];
  apply: boolean;
}

export interface NodeFallback {
  relay: number;
  numaNode: number;
  reason: 'unknown-node' | 'no-worker-on-node';
}

export interface BalancePlan {
  groups: GroupDecision[];
  /** Relays balanced over all workers because their node has none. */
  fallbacks: NodeFallback[];
  /** Relay entries to send as one update: every relay with at least one move in an applied group. */
  update: RelayCpuChange[];
}

/** Population coefficient of variation (stddev / mean); 0 for an empty or all-zero set. */
export function coefficientOfVariation(values: readonly number[]): number {
  if (values.length === 0) return 0;
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  if (mean <= 0) return 0;
  const variance = values.reduce((a, v) => a + (v - mean) * (v - mean), 0) / values.length;
  return Math.sqrt(variance) / mean;
}

/** Checks inputs that would make the arithmetic meaningless; throws naming the culprit. */
function validate(loads: readonly DirectionLoad[], workers: readonly WorkerCpu[], options: BalanceOptions): void {
  if (!Number.isFinite(options.sensitivity) || options.sensitivity < 0) {
    throw new Error(`balance: sensitivity ${options.sensitivity} must be a finite number >= 0`);
  }
  const seenCpus = new Set<number>();
  for (const w of workers) {
    if (!Number.isInteger(w.cpu) || w.cpu < 0) throw new Error(`balance: worker CPU ${w.cpu} is not a CPU number`);
    if (seenCpus.has(w.cpu)) throw new Error(`balance: worker CPU ${w.cpu} is listed twice`);
    seenCpus.add(w.cpu);
  }
  const seenDirections = new Set<string>();
  for (const d of loads) {
    const key = `${d.relay}/${d.direction}`;
    if (!Number.isInteger(d.relay) || d.relay < 0) throw new Error(`balance: relay id ${d.relay} is not a relay number`);
    if (d.direction !== 'vfToVm' && d.direction !== 'vmToVf') throw new Error(`balance: relay ${d.relay} has unknown direction ${String(d.direction)}`);
    if (!Number.isFinite(d.load) || d.load < 0) throw new Error(`balance: relay ${d.relay} ${d.direction} has load ${d.load}, expected a finite number >= 0`);
    if (seenDirections.has(key)) throw new Error(`balance: relay ${d.relay} ${d.direction} is listed twice`);
    seenDirections.add(key);
  }
}

/** Union-find over worker CPUs, so directions whose allowed worker sets overlap share a group. */
class CpuGroups {
  private readonly parent = new Map<number, number>();
  constructor(cpus: Iterable<number>) {
    for (const c of cpus) this.parent.set(c, c);
  }
  find(c: number): number {
    let root = c;
    while (this.parent.get(root) !== root) root = this.parent.get(root)!;
    this.parent.set(c, root);
    return root;
  }
  join(cpus: readonly number[]): void {
    for (let i = 1; i < cpus.length; i++) {
      const a = this.find(cpus[0]);
      const b = this.find(cpus[i]);
      if (a !== b) this.parent.set(b, a);
    }
  }
}

const round = (x: number) => Math.round(x * 1e6) / 1e6;

/**
 * Proposes a placement of relay directions on worker CPUs and says, per group, whether it is
 * worth applying. Never throws for a valid input; an empty worker list yields an empty plan.
 */
export function planBalance(
  loads: readonly DirectionLoad[],
  workers: readonly WorkerCpu[],
  options: BalanceOptions,
): BalancePlan {
  validate(loads, workers, options);
  const plan: BalancePlan = { groups: [], fallbacks: [], update: [] };
  if (workers.length === 0) return plan;

  const allCpus = workers.map((w) => w.cpu).sort((a, b) => a - b);
  const cpusByNode = new Map<number, number[]>();
  for (const w of workers) {
    if (w.numaNode < 0) continue;
    const list = cpusByNode.get(w.numaNode) ?? [];
    list.push(w.cpu);
    cpusByNode.set(w.numaNode, list);
  }
  for (const list of cpusByNode.values()) list.sort((a, b) => a - b);

  // Allowed workers per direction; a relay on a node without workers may use any of them.
  const allowed = new Map<DirectionLoad, number[]>();
  const fellBack = new Set<number>();
  for (const d of loads) {
    let cpus: number[] | undefined;
    if (options.globalNuma) cpus = allCpus;
    else cpus = cpusByNode.get(d.numaNode);
    if (cpus === undefined) {
      cpus = allCpus;
      if (!fellBack.has(d.relay)) {
        fellBack.add(d.relay);
        plan.fallbacks.push({
          relay: d.relay,
          numaNode: d.numaNode,
          reason: d.numaNode < 0 ? 'unknown-node' : 'no-worker-on-node',
        });
      }
    }
    allowed.set(d, cpus);
  }

  const groups = new CpuGroups(allCpus);
  // Workers of one NUMA node always form one group, even when no direction names them yet.
  for (const cpus of cpusByNode.values()) groups.join(cpus);
  // Workers of unknown node are only ever reachable through the all-workers set.
  for (const cpus of allowed.values()) groups.join(cpus);

  const groupCpus = new Map<number, number[]>();
  for (const c of allCpus) {
    const root = groups.find(c);
    const list = groupCpus.get(root) ?? [];
    list.push(c);
    groupCpus.set(root, list);
  }
  const nodeOfCpu = new Map(workers.map((w) => [w.cpu, w.numaNode]));

  for (const [root, cpus] of [...groupCpus.entries()].sort((a, b) => a[1][0] - b[1][0])) {
    const members = loads.filter((d) => groups.find(allowed.get(d)![0]) === root);
    plan.groups.push(decideGroup(cpus, members, allowed, nodeOfCpu, options));
  }

  const byRelay = new Map<number, RelayCpuChange>();
  const current = new Map(loads.map((d) => [`${d.relay}/${d.direction}`, d.cpu]));
  for (const g of plan.groups) {
    if (!g.apply) continue;
    for (const m of g.moves) {
      let entry = byRelay.get(m.relay);
      if (!entry) {
        entry = {
          relay: m.relay,
          vfToVmCpu: current.get(`${m.relay}/vfToVm`) ?? -1,
          vmToVfCpu: current.get(`${m.relay}/vmToVf`) ?? -1,
        };
        byRelay.set(m.relay, entry);
      }
      if (m.direction === 'vfToVm') entry.vfToVmCpu = m.toCpu;
      else entry.vmToVfCpu = m.toCpu;
    }
  }
  // A relay names both CPUs in an update; a direction that was never placed and had no move takes
  // its sibling's CPU rather than -1, which the relay would reject as "not a worker".
  for (const entry of byRelay.values()) {
    if (entry.vfToVmCpu < 0) entry.vfToVmCpu = entry.vmToVfCpu;
    if (entry.vmToVfCpu < 0) entry.vmToVfCpu = entry.vfToVmCpu;
  }
  plan.update = [...byRelay.values()].sort((a, b) => a.relay - b.relay);
  return plan;
}

function decideGroup(
  cpus: number[],
  members: DirectionLoad[],
  allowed: Map<DirectionLoad, number[]>,
  nodeOfCpu: Map<number, number>,
  options: BalanceOptions,
): GroupDecision {
  const before = new Map<number, number>(cpus.map((c) => [c, 0]));
  const after = new Map<number, number>(cpus.map((c) => [c, 0]));
  let misplaced = false;
  for (const d of members) {
    if (d.load <= 0) continue;
    if (allowed.get(d)!.includes(d.cpu)) before.set(d.cpu, before.get(d.cpu)! + d.load);
    else misplaced = true;
  }

  // Heaviest first; ties in a stable order so equal inputs give equal plans.
  const order = [...members].sort(
    (a, b) => b.load - a.load || a.relay - b.relay || (a.direction < b.direction ? -1 : a.direction > b.direction ? 1 : 0),
  );
  const placed = new Map<DirectionLoad, number>();
  for (const d of order) {
    const candidates = allowed.get(d)!;
    // An idle direction costs nothing where it is; moving it would only churn.
    if (d.load <= 0 && candidates.includes(d.cpu)) {
      placed.set(d, d.cpu);
      continue;
    }
    let best = -1;
    for (const c of candidates) {
      if (best < 0) {
        best = c;
        continue;
      }
      const lc = after.get(c)!;
      const lb = after.get(best)!;
      // Among equally loaded workers prefer the one the direction already runs on.
      if (lc < lb || (lc === lb && c === d.cpu && best !== d.cpu)) best = c;
    }
    placed.set(d, best);
    after.set(best, after.get(best)! + d.load);
  }

  const loadsBefore = Object.fromEntries(cpus.map((c) => [c, round(before.get(c)!)]));
  const loadsAfter = Object.fromEntries(cpus.map((c) => [c, round(after.get(c)!)]));
  const cvBefore = misplaced ? null : coefficientOfVariation(cpus.map((c) => before.get(c)!));
  const cvAfter = coefficientOfVariation(cpus.map((c) => after.get(c)!));
  const moves: Move[] = [];
  for (const d of members) {
    const to = placed.get(d)!;
    if (to !== d.cpu) moves.push({ relay: d.relay, direction: d.direction, fromCpu: d.cpu, toCpu: to, load: round(d.load) });
  }
  moves.sort((a, b) => a.relay - b.relay || (a.direction < b.direction ? -1 : 1));

  const totalLoad = members.reduce((a, d) => a + d.load, 0);
  let verdict: GroupVerdict;
  if (misplaced) verdict = 'misplaced';
  else if (totalLoad <= 0) verdict = 'idle';
  else if (moves.length === 0) verdict = 'unchanged';
  else if (cvAfter + options.sensitivity < cvBefore!) verdict = 'improved';
  else verdict = 'within-sensitivity';

  const nodes = [...new Set(cpus.map((c) => nodeOfCpu.get(c) ?? -1))].sort((a, b) => a - b);
  return {
    cpus,
    nodes,
    loadsBefore,
    loadsAfter,
    cvBefore: cvBefore === null ? null : round(cvBefore),
    cvAfter: round(cvAfter),
    verdict,
    moves,
    apply: (verdict === 'misplaced' || verdict === 'improved') && moves.length > 0,
  };
}

/** Directions a plan moves away from a manually configured pin, so the override can be logged. */
export function pinOverrides(
  update: readonly RelayCpuChange[],
  pins: readonly RelayCpuChange[],
): { relay: number; direction: Direction; pinnedCpu: number; newCpu: number }[] {
  const pinByRelay = new Map(pins.map((p) => [p.relay, p]));
  const out: { relay: number; direction: Direction; pinnedCpu: number; newCpu: number }[] = [];
  for (const u of update) {
    const pin = pinByRelay.get(u.relay);
    if (!pin) continue;
    if (pin.vfToVmCpu >= 0 && pin.vfToVmCpu !== u.vfToVmCpu) {
      out.push({ relay: u.relay, direction: 'vfToVm', pinnedCpu: pin.vfToVmCpu, newCpu: u.vfToVmCpu });
    }
    if (pin.vmToVfCpu >= 0 && pin.vmToVfCpu !== u.vmToVfCpu) {
      out.push({ relay: u.relay, direction: 'vmToVf', pinnedCpu: pin.vmToVfCpu, newCpu: u.vmToVfCpu });
    }
  }
  return out;
}
