import { describe, expect, it } from 'vitest';
import {
  coefficientOfVariation,
  pinOverrides,
  planBalance,
  type DirectionLoad,
  type WorkerCpu,
} from '../../scheduler/balance.js';

const local = { sensitivity: 0.25, globalNuma: false };

function dir(relay: number, direction: 'vfToVm' | 'vmToVf', load: number, cpu: number, numaNode = 0): DirectionLoad {
  return { relay, direction, load, cpu, numaNode };
}

/** Both directions of a relay with the same load on the same CPU. */
function relay(id: number, load: number, cpu: number, numaNode = 0): DirectionLoad[] {
  return [dir(id, 'vfToVm', load, cpu, numaNode), dir(id, 'vmToVf', load, cpu, numaNode)];
}

const twoWorkers: WorkerCpu[] = [
  { cpu: 1, numaNode: 0 },
  { cpu: 2, numaNode: 0 },
];

/** Worker loads a plan's update would produce, recomputed independently of the planner. */
function loadsAfterUpdate(loads: DirectionLoad[], plan: ReturnType<typeof planBalance>): Map<number, number> {
  const byRelay = new Map(plan.update.map((u) => [u.relay, u]));
  const out = new Map<number, number>();
  for (const d of loads) {
    const u = byRelay.get(d.relay);
    const cpu = u ? (d.direction === 'vfToVm' ? u.vfToVmCpu : u.vmToVfCpu) : d.cpu;
    out.set(cpu, (out.get(cpu) ?? 0) + d.load);
  }
  return out;
}

describe('coefficientOfVariation', () => {
  it('is 0 for equal, empty and all-zero loads', () => {
    expect(coefficientOfVariation([0.5, 0.5, 0.5])).toBe(0);
    expect(coefficientOfVariation([])).toBe(0);
    expect(coefficientOfVariation([0, 0])).toBe(0);
  });
  it('is stddev over mean', () => {
    // mean 0.5, population stddev 0.5
    expect(coefficientOfVariation([1, 0])).toBeCloseTo(1, 12);
    expect(coefficientOfVariation([0.3, 0.1])).toBeCloseTo(0.5, 12);
  });
});

describe('planBalance', () => {
  it('leaves a balanced placement alone', () => {
    const loads = [...relay(0, 0.3, 1), ...relay(1, 0.3, 2)];
    const plan = planBalance(loads, twoWorkers, local);
    expect(plan.update).toEqual([]);
    expect(plan.groups).toHaveLength(1);
    expect(plan.groups[0].apply).toBe(false);
    expect(plan.groups[0].cvBefore).toBe(0);
  });

  it('spreads a skewed placement and reports loads before and after', () => {
    const loads = [...relay(0, 0.3, 1), ...relay(1, 0.3, 1), ...relay(2, 0.2, 1)];
    const plan = planBalance(loads, twoWorkers, local);
    const g = plan.groups[0];
    expect(g.verdict).toBe('improved');
    expect(g.apply).toBe(true);
    expect(g.loadsBefore).toEqual({ 1: 1.6, 2: 0 });
    expect(g.cvBefore).toBeCloseTo(1, 6);
    expect(g.loadsAfter[1] + g.loadsAfter[2]).toBeCloseTo(1.6, 6);
    expect(Math.abs(g.loadsAfter[1] - g.loadsAfter[2])).toBeLessThanOrEqual(0.2 + 1e-9);
    const after = loadsAfterUpdate(loads, plan);
    expect(after.get(1)).toBeCloseTo(g.loadsAfter[1], 6);
    expect(after.get(2)).toBeCloseTo(g.loadsAfter[2], 6);
    for (const u of plan.update) {
      expect([1, 2]).toContain(u.vfToVmCpu);
      expect([1, 2]).toContain(u.vmToVfCpu);
    }
  });

  it('assigns heaviest first to the least-loaded worker', () => {
    // LPT on 0.5, 0.4, 0.3, 0.2 over two workers gives {0.5, 0.2} and {0.4, 0.3}.
    const loads = [dir(0, 'vfToVm', 0.5, 1), dir(0, 'vmToVf', 0.4, 1), dir(1, 'vfToVm', 0.3, 1), dir(1, 'vmToVf', 0.2, 1)];
    const plan = planBalance(loads, twoWorkers, local);
    expect(plan.update).toEqual([
      { relay: 0, vfToVmCpu: 1, vmToVfCpu: 2 },
      { relay: 1, vfToVmCpu: 2, vmToVfCpu: 1 },
    ]);
    expect(plan.groups[0].loadsAfter).toEqual({ 1: 0.7, 2: 0.7 });
  });

  it('splits one hot relay across workers by direction and leaves idle ones where they are', () => {
    const loads = [dir(0, 'vfToVm', 0.9, 1), dir(0, 'vmToVf', 0.8, 1), ...relay(1, 0, 2), ...relay(2, 0, 1)];
    const plan = planBalance(loads, twoWorkers, local);
    expect(plan.groups[0].apply).toBe(true);
    expect(plan.update).toEqual([{ relay: 0, vfToVmCpu: 1, vmToVfCpu: 2 }]);
  });

  it('does not move anything when the improvement is within the sensitivity', () => {
    // Before: {0.55, 0.45} (cv 0.1); best possible is {0.5, 0.5}: gain 0.1 < 0.25.
    const loads = [dir(0, 'vfToVm', 0.3, 1), dir(0, 'vmToVf', 0.25, 1), dir(1, 'vfToVm', 0.25, 2), dir(1, 'vmToVf', 0.2, 2)];
    const plan = planBalance(loads, twoWorkers, local);
    expect(plan.groups[0].verdict).toBe('within-sensitivity');
    expect(plan.update).toEqual([]);
    // The same input with no hysteresis does move.
    const eager = planBalance(loads, twoWorkers, { sensitivity: 0, globalNuma: false });
    expect(eager.groups[0].verdict).toBe('improved');
    expect(eager.update.length).toBeGreaterThan(0);
  });

  it('applies when the gain is just above the sensitivity and not when just below', () => {
    const loads = [...relay(0, 0.3, 1), ...relay(1, 0.3, 1)]; // cv 1 before, 0 after
    expect(planBalance(loads, twoWorkers, { sensitivity: 0.99, globalNuma: false }).update).not.toEqual([]);
    expect(planBalance(loads, twoWorkers, { sensitivity: 1, globalNuma: false }).update).toEqual([]);
  });

  it('does nothing with zero load, even on a lopsided placement', () => {
    const loads = [...relay(0, 0, 1), ...relay(1, 0, 1), ...relay(2, 0, 1)];
    const plan = planBalance(loads, twoWorkers, local);
    expect(plan.groups[0].verdict).toBe('idle');
    expect(plan.update).toEqual([]);
  });

  it('never moves anything with a single worker', () => {
    const loads = [...relay(0, 0.9, 1), ...relay(1, 0.5, 1)];
    const plan = planBalance(loads, [{ cpu: 1, numaNode: 0 }], local);
    expect(plan.groups[0].cvBefore).toBe(0);
    expect(plan.update).toEqual([]);
  });

  it('moves a loaded direction off a CPU that is not a worker even with a single worker', () => {
    const loads = [dir(0, 'vfToVm', 0.4, 5), dir(0, 'vmToVf', 0.1, 1)];
    const plan = planBalance(loads, [{ cpu: 1, numaNode: 0 }], local);
    expect(plan.groups[0].verdict).toBe('misplaced');
    expect(plan.groups[0].cvBefore).toBeNull();
    expect(plan.update).toEqual([{ relay: 0, vfToVmCpu: 1, vmToVfCpu: 1 }]);
  });

  it('balances each NUMA node on its own workers', () => {
    const workers: WorkerCpu[] = [
      { cpu: 1, numaNode: 0 },
      { cpu: 2, numaNode: 0 },
      { cpu: 9, numaNode: 1 },
      { cpu: 10, numaNode: 1 },
    ];
    const loads = [...relay(0, 0.4, 1, 0), ...relay(1, 0.4, 1, 0), ...relay(2, 0.5, 9, 1), ...relay(3, 0.5, 9, 1)];
    const plan = planBalance(loads, workers, local);
    expect(plan.groups.map((g) => g.cpus)).toEqual([
      [1, 2],
      [9, 10],
    ]);
    expect(plan.groups.map((g) => g.nodes)).toEqual([[0], [1]]);
    expect(plan.groups.every((g) => g.apply)).toBe(true);
    for (const u of plan.update) {
      const allowed = u.relay < 2 ? [1, 2] : [9, 10];
      expect(allowed).toContain(u.vfToVmCpu);
      expect(allowed).toContain(u.vmToVfCpu);
    }
    const after = loadsAfterUpdate(loads, plan);
    expect(after.get(1)).toBeCloseTo(0.8, 6);
    expect(after.get(2)).toBeCloseTo(0.8, 6);
    expect(after.get(9)).toBeCloseTo(1.0, 6);
    expect(after.get(10)).toBeCloseTo(1.0, 6);
  });

  it('decides each node separately: a balanced node is left alone while a skewed one moves', () => {
    const workers: WorkerCpu[] = [
      { cpu: 1, numaNode: 0 },
      { cpu: 2, numaNode: 0 },
      { cpu: 9, numaNode: 1 },
      { cpu: 10, numaNode: 1 },
    ];
    const loads = [...relay(0, 0.4, 1, 0), ...relay(1, 0.4, 2, 0), ...relay(2, 0.5, 9, 1), ...relay(3, 0.5, 9, 1)];
    const plan = planBalance(loads, workers, local);
    expect(plan.groups[0].apply).toBe(false);
    expect(plan.groups[1].apply).toBe(true);
    expect(plan.update.map((u) => u.relay).every((r) => r >= 2)).toBe(true);
  });

  it('moves a loaded relay running on the wrong node back to its own node', () => {
    const workers: WorkerCpu[] = [
      { cpu: 1, numaNode: 0 },
      { cpu: 9, numaNode: 1 },
    ];
    const loads = [...relay(0, 0.3, 9, 0)];
    const plan = planBalance(loads, workers, local);
    expect(plan.groups[0].verdict).toBe('misplaced');
    expect(plan.update).toEqual([{ relay: 0, vfToVmCpu: 1, vmToVfCpu: 1 }]);
  });

  it('falls back to all workers for a relay on a node without workers, and reports it', () => {
    const workers: WorkerCpu[] = [
      { cpu: 1, numaNode: 0 },
      { cpu: 9, numaNode: 1 },
    ];
    // Relay 5 lives on node 3 (no worker) and sits with two hot node-0 relays on CPU 1.
    const loads = [...relay(0, 0.4, 1, 0), ...relay(5, 0.4, 1, 3), ...relay(7, 0.1, 9, -1)];
    const plan = planBalance(loads, workers, local);
    expect(plan.fallbacks).toEqual([
      { relay: 5, numaNode: 3, reason: 'no-worker-on-node' },
      { relay: 7, numaNode: -1, reason: 'unknown-node' },
    ]);
    // The fallback links both nodes into one group.
    expect(plan.groups).toHaveLength(1);
    expect(plan.groups[0].cpus).toEqual([1, 9]);
    // Relay 0 must stay on node 0; relay 5 may go to node 1.
    const entry0 = plan.update.find((u) => u.relay === 0);
    if (entry0) expect([entry0.vfToVmCpu, entry0.vmToVfCpu]).toEqual([1, 1]);
    const after = loadsAfterUpdate(loads, plan);
    // LPT: relay 0 fills CPU 1 (0.8), relay 5 goes to CPU 9 (0.8), relay 7 splits 0.1 + 0.1.
    expect(after.get(1)).toBeCloseTo(0.9, 6);
    expect(after.get(9)).toBeCloseTo(0.9, 6);
    expect(plan.update.find((u) => u.relay === 5)).toEqual({ relay: 5, vfToVmCpu: 9, vmToVfCpu: 9 });
  });

  it('balances across nodes with the global option', () => {
    const workers: WorkerCpu[] = [
      { cpu: 1, numaNode: 0 },
      { cpu: 9, numaNode: 1 },
    ];
    const loads = [...relay(0, 0.4, 1, 0), ...relay(1, 0.4, 1, 0)];
    expect(planBalance(loads, workers, local).update).toEqual([]);
    const plan = planBalance(loads, workers, { sensitivity: 0.25, globalNuma: true });
    expect(plan.groups).toHaveLength(1);
    expect(plan.fallbacks).toEqual([]);
    const after = loadsAfterUpdate(loads, plan);
    expect(after.get(1)).toBeCloseTo(0.8, 6);
    expect(after.get(9)).toBeCloseTo(0.8, 6);
  });

  it('gives both CPUs for a relay whose other direction was never placed', () => {
    const loads = [dir(0, 'vmToVf', 0.5, 1), dir(1, 'vmToVf', 0.5, 1), dir(1, 'vfToVm', 0, -1)];
    const plan = planBalance(loads, twoWorkers, local);
    for (const u of plan.update) {
      expect(u.vfToVmCpu).toBeGreaterThanOrEqual(0);
      expect(u.vmToVfCpu).toBeGreaterThanOrEqual(0);
    }
    expect(plan.update.length).toBe(1);
  });

  it('returns an empty plan with no workers and no relays', () => {
    expect(planBalance(relay(0, 0.5, 1), [], local)).toEqual({ groups: [], fallbacks: [], update: [] });
    const plan = planBalance([], twoWorkers, local);
    expect(plan.update).toEqual([]);
    expect(plan.groups[0].verdict).toBe('idle');
  });

  it('is deterministic for equal loads', () => {
    const loads = [...relay(0, 0.2, 1), ...relay(1, 0.2, 1), ...relay(2, 0.2, 1), ...relay(3, 0.2, 1)];
    expect(planBalance(loads, twoWorkers, local)).toEqual(planBalance([...loads].reverse(), twoWorkers, local));
  });

  it('rejects bad input naming the culprit', () => {
    expect(() => planBalance(relay(0, -0.1, 1), twoWorkers, local)).toThrow(/relay 0 vfToVm has load -0.1/);
    expect(() => planBalance(relay(0, NaN, 1), twoWorkers, local)).toThrow(/relay 0 vfToVm has load NaN/);
    expect(() => planBalance(relay(0, Infinity, 1), twoWorkers, local)).toThrow(/has load Infinity/);
    expect(() => planBalance([...relay(0, 0.1, 1), ...relay(0, 0.1, 1)], twoWorkers, local)).toThrow(/listed twice/);
    expect(() => planBalance(relay(-1, 0.1, 1), twoWorkers, local)).toThrow(/relay id -1/);
    expect(() => planBalance([{ ...dir(0, 'vfToVm', 0.1, 1), direction: 'up' as never }], twoWorkers, local)).toThrow(/unknown direction up/);
    expect(() => planBalance([], [{ cpu: 1, numaNode: 0 }, { cpu: 1, numaNode: 0 }], local)).toThrow(/worker CPU 1 is listed twice/);
    expect(() => planBalance([], [{ cpu: 1.5, numaNode: 0 }], local)).toThrow(/worker CPU 1.5/);
    expect(() => planBalance([], twoWorkers, { sensitivity: -1, globalNuma: false })).toThrow(/sensitivity -1/);
    expect(() => planBalance([], twoWorkers, { sensitivity: NaN, globalNuma: false })).toThrow(/sensitivity NaN/);
  });
});

describe('pinOverrides', () => {
  it('lists directions moved away from their configured pin', () => {
    const update = [
      { relay: 0, vfToVmCpu: 2, vmToVfCpu: 1 },
      { relay: 1, vfToVmCpu: 1, vmToVfCpu: 1 },
    ];
    const pins = [
      { relay: 0, vfToVmCpu: 1, vmToVfCpu: 1 },
      { relay: 1, vfToVmCpu: 1, vmToVfCpu: 1 },
      { relay: 4, vfToVmCpu: 2, vmToVfCpu: 2 },
    ];
    expect(pinOverrides(update, pins)).toEqual([{ relay: 0, direction: 'vfToVm', pinnedCpu: 1, newCpu: 2 }]);
    expect(pinOverrides(update, [])).toEqual([]);
  });
});
