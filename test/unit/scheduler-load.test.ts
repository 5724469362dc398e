import { describe, expect, it } from 'vitest';
import { estimateLoads, type RelaySample } from '../../scheduler/load.js';

function sample(id: number, busy: [number, number], poll: [number, number], cpus: [number, number] = [1, 2], numaNode = 0): RelaySample {
  return {
    id,
    numaNode,
    vfToVm: { busyNs: busy[0], pollNs: poll[0], cpu: cpus[0], active: true },
    vmToVf: { busyNs: busy[1], pollNs: poll[1], cpu: cpus[1], active: true },
  };
}

describe('estimateLoads', () => {
  it('is the busy time of each direction over the interval', () => {
    const prev = { atNs: 1e9, relays: [sample(0, [100e6, 0], [900e6, 900e6])] };
    const cur = { atNs: 2e9, relays: [sample(0, [400e6, 50e6], [1400e6, 1400e6])] };
    const est = estimateLoads(prev, cur);
    expect(est.resets).toEqual([]);
    expect(est.malformed).toEqual([]);
    expect(est.loads).toEqual([
      { relay: 0, direction: 'vfToVm', load: 0.3, cpu: 1, numaNode: 0 },
      { relay: 0, direction: 'vmToVf', load: 0.05, cpu: 2, numaNode: 0 },
    ]);
  });

  it('counts a relay first seen in this read as idle and keeps its CPU', () => {
    const est = estimateLoads({ atNs: 0, relays: [] }, { atNs: 1e9, relays: [sample(3, [5e8, 5e8], [1e9, 1e9], [2, 2], 1)] });
    expect(est.loads.map((l) => [l.relay, l.load, l.cpu, l.numaNode])).toEqual([
      [3, 0, 2, 1],
      [3, 0, 2, 1],
    ]);
  });

  it('reports counters that went backwards and counts them as idle', () => {
    const prev = { atNs: 0, relays: [sample(0, [5e8, 5e8], [1e9, 1e9])] };
    const cur = { atNs: 1e9, relays: [sample(0, [1e6, 6e8], [2e6, 2e9])] };
    const est = estimateLoads(prev, cur);
    expect(est.resets).toEqual([{ relay: 0, direction: 'vfToVm' }]);
    expect(est.loads[0].load).toBe(0);
    expect(est.loads[1].load).toBeCloseTo(0.1, 9);
  });

  it('never reports more than a whole worker, nor more busy than poll time', () => {
    const prev = { atNs: 0, relays: [sample(0, [0, 0], [0, 0])] };
    const cur = { atNs: 1e9, relays: [sample(0, [3e9, 8e8], [3e9, 4e8])] };
    const est = estimateLoads(prev, cur);
    expect(est.loads[0].load).toBe(1);
    expect(est.loads[1].load).toBeCloseTo(0.4, 9);
  });

  it('skips directions that are neither running nor placed, and zeroes inactive placed ones', () => {
    const r = sample(0, [0, 0], [0, 0]);
    const prev = { atNs: 0, relays: [r] };
    const cur = {
      atNs: 1e9,
      relays: [
        {
          ...r,
          vfToVm: { busyNs: 5e8, pollNs: 1e9, cpu: -1, active: false },
          vmToVf: { busyNs: 5e8, pollNs: 1e9, cpu: 2, active: false },
        },
      ],
    };
    const est = estimateLoads(prev, cur);
    expect(est.loads).toEqual([{ relay: 0, direction: 'vmToVf', load: 0, cpu: 2, numaNode: 0 }]);
  });

  it('leaves out malformed or duplicated relay reports and says why', () => {
    const good = sample(1, [0, 0], [0, 0]);
    const prev = { atNs: 0, relays: [sample(0, [0, 0], [0, 0]), good] };
    const broken = (patch: Record<string, unknown>) => ({ ...sample(0, [1, 1], [2, 2]), ...patch }) as unknown as RelaySample;
    const cases: [RelaySample, RegExp][] = [
      [broken({ id: -3 }), /id -3 is not a relay number/],
      [broken({ id: '0' }), /id "0" is not a relay number/],
      [broken({ numaNode: 0.5 }), /numaNode 0.5/],
      [broken({ numaNode: undefined }), /numaNode undefined/],
      [broken({ vfToVm: null }), /vfToVm is missing/],
      [broken({ vmToVf: { busyNs: '5', pollNs: 1, cpu: 1, active: true } }), /vmToVf busyNs\/pollNs are not counts/],
      [broken({ vmToVf: { busyNs: 1, pollNs: -1, cpu: 1, active: true } }), /vmToVf busyNs\/pollNs are not counts/],
      [broken({ vfToVm: { busyNs: 1, pollNs: 1, cpu: 1.5, active: true } }), /vfToVm.cpu 1.5/],
      [broken({ vfToVm: { busyNs: 1, pollNs: 1, cpu: 1, active: 'yes' } }), /vfToVm.active/],
      [null as unknown as RelaySample, /not an object/],
    ];
    for (const [relay, reason] of cases) {
      const est = estimateLoads(prev, { atNs: 1e9, relays: [relay, good] });
      expect(est.malformed).toHaveLength(1);
      expect(est.malformed[0].reason).toMatch(reason);
      expect(est.loads.map((l) => l.relay)).toEqual([1, 1]);
    }
    const twice = estimateLoads(prev, { atNs: 1e9, relays: [good, good] });
    expect(twice.malformed).toEqual([{ relay: 1, reason: 'reported twice' }]);
    expect(twice.loads).toHaveLength(2);
  });

  it('rejects reads out of time order', () => {
    expect(() => estimateLoads({ atNs: 5, relays: [] }, { atNs: 5, relays: [] })).toThrow(/not in time order/);
    expect(() => estimateLoads({ atNs: 5, relays: [] }, { atNs: 1, relays: [] })).toThrow(/not in time order/);
    expect(() => estimateLoads({ atNs: NaN, relays: [] }, { atNs: 1, relays: [] })).toThrow(/not in time order/);
  });
});
