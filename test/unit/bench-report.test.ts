// The bench's summary: the ratio to DPDK's relay taken run by run, next to the ratio of medians.
import { describe, expect, it } from 'vitest';
import { summarize, formatTable, type RelayKind, type RunRecord } from '../../bench/lib/report.js';

function record(relay: RelayKind, run: number, mpps: number): RunRecord {
  return {
    direction: 'tx', size: 64, relay, run, attempts: 1, windowSeconds: 5, deliveredPps: mpps * 1e6, offeredPps: null,
    injectedPps: null, runTotals: null, lossPercent: null, relayBuild: null, relayCpu: { user: 100, system: 0 },
    trafficCpu: { user: 100, system: 0 }, foreignCpu: 0, stealCpu: 0, busyCpu: 200, topForeign: [], contaminated: false,
  };
}

describe('bench summary', () => {
  // A run where the whole machine is three times faster moves both relays; the same-run ratio keeps to 0.5.
  const records = [
    record('dpdk-memif', 1, 4), record('busy-memif', 1, 2),
    record('dpdk-memif', 2, 4.4), record('busy-memif', 2, 2.2),
    record('dpdk-memif', 3, 15), record('busy-memif', 3, 7.5),
  ];

  it('divides each run by the fastest DPDK relay of the same run, and only by relays of its kind', () => {
    const withVfRelay = [...records, record('dpdk', 1, 100), record('dpdk', 2, 100), record('dpdk', 3, 100)];
    const ours = summarize(withVfRelay).find((s) => s.relay === 'busy-memif')!;
    expect(ours.sameRunRatio).toEqual({ min: 0.5, median: 0.5, max: 0.5 });
    expect(ours.ratioToDpdk).toBeCloseTo(2.2 / 4.4, 6);
    expect(summarize(withVfRelay).find((s) => s.relay === 'dpdk-memif')!.sameRunRatio).toBeNull();
  });

  it('shows the same-run ratio with its range in the table, and nothing where there is no DPDK run', () => {
    const table = formatTable(summarize(records));
    expect(table.split('\n')[0]).toContain('same run (min-max)');
    expect(table).toMatch(/ours busy memif .* 0\.50 \(0\.50-0\.50\)/);
    const alone = summarize(records.filter((r) => r.relay === 'busy-memif'));
    expect(alone[0].sameRunRatio).toBeNull();
  });

  it('takes a run without a DPDK figure out of the same-run ratio instead of dividing by zero', () => {
    const s = summarize([record('dpdk-memif', 1, 4), record('busy-memif', 1, 2), record('busy-memif', 2, 3)]).find((x) => x.relay === 'busy-memif')!;
    expect(s.sameRunRatio).toEqual({ min: 0.5, median: 0.5, max: 0.5 });
  });
});
