// CPU accounting for a measurement window, from /proc only (no process of our own does the
// sampling, so it costs nothing inside the window). Times are clock ticks; results are % of one core.
//
// The kernel here uses tick-based accounting without IRQ time accounting, so softirq work done in
// a process's context (the veth and AF_PACKET paths) is charged to that process's stime and also
// shows up in /proc/stat's softirq column. "Busy" therefore sums user+nice+system+irq+softirq, and
// foreign = busy − what our processes used. Steal (time the hypervisor gave to someone else) is
// reported apart: it is lost capacity, not work done on this machine.
import { readFileSync, readdirSync } from 'node:fs';

/** USER_HZ; every Linux x86-64 build exposes 100 to user space. */
export const CLOCK_TICKS_PER_SECOND = 100;

export interface SystemTimes {
  busy: number;
  idle: number;
  steal: number;
}

export function readSystemTimes(statText = readFileSync('/proc/stat', 'utf8')): SystemTimes {
  const line = statText.split('\n').find((l) => l.startsWith('cpu '));
  if (!line) throw new Error('cpu accounting: /proc/stat has no aggregate "cpu " line');
  const f = line.trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, idle, iowait, irq, softirq, steal] = f;
  // guest and guest_nice are already included in user and nice.
  return { busy: user + nice + system + irq + softirq, idle: idle + (iowait ?? 0), steal: steal ?? 0 };
}

export interface ProcessTimes {
  pid: number;
  comm: string;
  utime: number;
  stime: number;
  /** When the process started (clock ticks after boot): a pid with another start time is another process. */
  start: number;
}

/** Parses /proc/<pid>/stat; comm may contain spaces and parentheses, so fields are taken after the last ')'. */
export function parseProcessStat(text: string): ProcessTimes {
  const open = text.indexOf('(');
  const close = text.lastIndexOf(')');
  if (open < 0 || close < open) throw new Error(`cpu accounting: malformed /proc/<pid>/stat line: ${text.slice(0, 80)}`);
  const pid = Number(text.slice(0, open).trim());
  const rest = text.slice(close + 2).split(' ');
  // rest[0] is field 3 (state); utime and stime are fields 14 and 15, starttime field 22.
  return { pid, comm: text.slice(open + 1, close), utime: Number(rest[11]), stime: Number(rest[12]), start: Number(rest[19]) };
}

export function readProcessTimes(pid: number): ProcessTimes | null {
  try {
    return parseProcessStat(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return null; // the process has exited
  }
}

/** Every process on the machine (threads are summed into their process by the kernel). */
export function readAllProcessTimes(): Map<number, ProcessTimes> {
  const all = new Map<number, ProcessTimes>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const t = readProcessTimes(Number(name));
    if (t) all.set(t.pid, t);
  }
  return all;
}

export interface CpuSnapshot {
  atNs: bigint;
  system: SystemTimes;
  processes: Map<number, ProcessTimes>;
}

export function cpuSnapshot(): CpuSnapshot {
  const atNs = process.hrtime.bigint();
  return { atNs, system: readSystemTimes(), processes: readAllProcessTimes() };
}

export interface ForeignConsumer {
  pid: number;
  comm: string;
  percent: number;
}

export interface CpuWindow {
  seconds: number;
  /** Every CPU's non-idle time, % of one core (200 = both cores of a 2-CPU machine busy). */
  busyPercent: number;
  /** What the processes in `ours` used. */
  oursPercent: number;
  /** busy − ours: work the bench did not start (other users' tests, VMs, daemons, kernel threads). */
  foreignPercent: number;
  stealPercent: number;
  /** The biggest foreign consumers by process name (pid = one of them), summed over processes of that name. */
  topForeign: ForeignConsumer[];
}

const percentOf = (ticks: number, seconds: number) => (seconds > 0 ? (ticks / CLOCK_TICKS_PER_SECOND / seconds) * 100 : 0);

/** Per-process usage between two snapshots, % of one core (user and system apart). */
export function processUsage(a: CpuSnapshot, b: CpuSnapshot, pid: number): { user: number; system: number } | null {
  const p0 = a.processes.get(pid);
  const p1 = b.processes.get(pid);
  if (!p0 || !p1) return null;
  const seconds = Number(b.atNs - a.atNs) / 1e9;
  return { user: percentOf(p1.utime - p0.utime, seconds), system: percentOf(p1.stime - p0.stime, seconds) };
}

export function cpuWindow(a: CpuSnapshot, b: CpuSnapshot, ours: Iterable<number>): CpuWindow {
  const seconds = Number(b.atNs - a.atNs) / 1e9;
  const ourPids = new Set(ours);
  let oursTicks = 0;
  const foreign: ForeignConsumer[] = [];
  for (const [pid, p1] of b.processes) {
    const p0 = a.processes.get(pid);
    if (!p0 || p0.start !== p1.start) {
      // Started inside the window (or the pid was reused): all of its time is inside the window.
      // A changed name alone is the same process: a kworker takes the name of the work queue it
      // serves at the moment, and an exec'd child of ours takes its program's.
      if (!ourPids.has(pid)) foreign.push({ pid, comm: p1.comm, percent: percentOf(p1.utime + p1.stime, seconds) });
      else oursTicks += p1.utime + p1.stime;
      continue;
    }
    const ticks = p1.utime + p1.stime - (p0.utime + p0.stime);
    if (ourPids.has(pid)) oursTicks += ticks;
    else if (ticks > 0) foreign.push({ pid, comm: p1.comm, percent: percentOf(ticks, seconds) });
  }
  const busyTicks = b.system.busy - a.system.busy;
  // Tests run as many processes of one name (node, qemu-system-x86): sum them per name.
  const byName = new Map<string, ForeignConsumer>();
  for (const c of foreign) {
    const seen = byName.get(c.comm);
    if (seen) seen.percent += c.percent;
    else byName.set(c.comm, { ...c });
  }
  const top = [...byName.values()].sort((x, y) => y.percent - x.percent);
  return {
    seconds,
    busyPercent: percentOf(busyTicks, seconds),
    oursPercent: percentOf(oursTicks, seconds),
    foreignPercent: Math.max(0, percentOf(busyTicks - oursTicks, seconds)),
    stealPercent: percentOf(b.system.steal - a.system.steal, seconds),
    topForeign: top.filter((f) => f.percent >= 1).slice(0, 5),
  };
}
