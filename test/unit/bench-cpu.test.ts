// The bench's CPU accounting: /proc/<pid>/stat parsing, and which time of a process falls inside a
// measurement window. A kworker changes its name with the work queue it serves; counting its whole
// life whenever the name changed made an idle kernel thread look like a third of a core.
import { describe, expect, it } from 'vitest';
import { cpuWindow, parseProcessStat, type CpuSnapshot, type ProcessTimes } from '../../bench/lib/cpu.js';

/** A /proc/<pid>/stat line with the fields the bench reads set, the others plausible. */
function statLine(pid: number, comm: string, utime: number, stime: number, start: number): string {
  const fields = ['S', '2', '0', '0', '0', '-1', '69238880', '0', '0', '0', '0', String(utime), String(stime), '0', '0', '20', '0', '1', '0', String(start), '0', '0'];
  return `${pid} (${comm}) ${fields.join(' ')}`;
}

function snapshot(seconds: number, busy: number, processes: ProcessTimes[]): CpuSnapshot {
  return {
    atNs: BigInt(Math.round(seconds * 1e9)),
    system: { busy, idle: 0, steal: 0 },
    processes: new Map(processes.map((p) => [p.pid, p])),
  };
}

describe('bench CPU accounting', () => {
  it('reads utime, stime and the start time after a name with spaces and parentheses', () => {
    expect(parseProcessStat(statLine(4242, 'kworker/0:1-mm_percpu_wq', 120, 3400, 98765))).toEqual({
      pid: 4242, comm: 'kworker/0:1-mm_percpu_wq', utime: 120, stime: 3400, start: 98765,
    });
    expect(parseProcessStat(statLine(7, 'a (b) c', 1, 2, 3))).toMatchObject({ comm: 'a (b) c', utime: 1, stime: 2, start: 3 });
    expect(() => parseProcessStat('garbage')).toThrow(/malformed/);
  });

  it('counts only the window for a process that changed its name, and the whole life of a new one', () => {
    const kworkerBefore = parseProcessStat(statLine(50, 'kworker/0:1-events', 0, 3300, 500));
    const kworkerAfter = parseProcessStat(statLine(50, 'kworker/0:1-mm_percpu_wq', 0, 3302, 500));
    const reusedBefore = parseProcessStat(statLine(60, 'old', 0, 900, 600));
    const reusedAfter = parseProcessStat(statLine(60, 'new', 0, 40, 4000));
    const oursBefore = parseProcessStat(statLine(70, 'node', 400, 100, 700));
    const oursAfter = parseProcessStat(statLine(70, 'dpdk-testpmd', 900, 100, 700));
    const a = snapshot(0, 10_000, [kworkerBefore, reusedBefore, oursBefore]);
    // 5 s later: 542 ticks of work in all (2 + 40 foreign, 500 ours).
    const b = snapshot(5, 10_542, [kworkerAfter, reusedAfter, oursAfter]);
    const w = cpuWindow(a, b, [70]);
    expect(w.oursPercent).toBeCloseTo(100, 5);
    expect(w.foreignPercent).toBeCloseTo(8.4, 5);
    // The kworker's 2 ticks in 5 s are 0.4 %, under the 1 % shown; the reused pid's 40 ticks count whole.
    expect(w.topForeign).toEqual([{ pid: 60, comm: 'new', percent: 8 }]);
  });
});
