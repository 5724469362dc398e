// Turns two consecutive stats reads into the load of each relay direction. Workers measure the
// nanoseconds they spend in polls that moved packets (busyNs) and in all polls (pollNs); the busy
// time a direction accumulated over the interval, divided by the interval, is the fraction of one
// worker's time that direction costs, and it stays the same wherever the direction is moved.

import { DIRECTIONS, type DirectionLoad } from './balance.js';

/** The fields of a relay's stats the scheduler reads (a structural subset of the relay's RelayInfo). */
export interface RelaySample {
  id: number;
  numaNode: number;
  vfToVm: DirectionSample;
  vmToVf: DirectionSample;
}

export interface DirectionSample {
  busyNs: number;
  pollNs: number;
  cpu: number;
  active: boolean;
}

export interface StatsSnapshot {
  /** Monotonic time of the read in nanoseconds (the relay's clock when it reports one, else ours). */
  atNs: number;
  relays: readonly RelaySample[];
}

export interface LoadEstimate {
  loads: DirectionLoad[];
  /** Directions whose counters went backwards (the relay restarted or re-created it): load unknown, counted as 0. */
  resets: { relay: number; direction: string }[];
  /** Relays left out because their report is malformed, with the reason. */
  malformed: { relay: unknown; reason: string }[];
}

const isCount = (x: unknown): x is number => typeof x === 'number' && Number.isFinite(x) && x >= 0;
const isCpu = (x: unknown): x is number => typeof x === 'number' && Number.isInteger(x) && x >= -1;

/** Why a relay's report cannot be used, or null when it can. */
export function sampleProblem(relay: RelaySample): string | null {
  if (typeof relay !== 'object' || relay === null) return 'not an object';
  if (typeof relay.id !== 'number' || !Number.isInteger(relay.id) || relay.id < 0) return `id ${JSON.stringify(relay.id)} is not a relay number`;
  if (typeof relay.numaNode !== 'number' || !Number.isInteger(relay.numaNode) || relay.numaNode < -1) {
    return `numaNode ${JSON.stringify(relay.numaNode)} is not a node number or -1`;
  }
  for (const direction of DIRECTIONS) {
    const d = relay[direction];
    if (typeof d !== 'object' || d === null) return `${direction} is missing`;
    if (!isCount(d.busyNs) || !isCount(d.pollNs)) return `${direction} busyNs/pollNs are not counts`;
    if (!isCpu(d.cpu)) return `${direction}.cpu ${JSON.stringify(d.cpu)} is not a CPU number or -1`;
    if (typeof d.active !== 'boolean') return `${direction}.active is not true or false`;
  }
  return null;
}

/**
 * Loads of every relay present in `current`. A relay absent from `previous` (new since the last
 * read) or whose counters went backwards has no measurement yet and counts as idle this round, so
 * it stays where it is instead of being moved on a guess.
 */
export function estimateLoads(previous: StatsSnapshot, current: StatsSnapshot): LoadEstimate {
  const elapsedNs = current.atNs - previous.atNs;
  if (!Number.isFinite(elapsedNs) || elapsedNs <= 0) {
    throw new Error(`load estimate: stats reads at ${previous.atNs} ns and ${current.atNs} ns are not in time order`);
  }
  const before = new Map(previous.relays.filter((r) => sampleProblem(r) === null).map((r) => [r.id, r]));
  const out: LoadEstimate = { loads: [], resets: [], malformed: [] };
  const seen = new Set<number>();
  for (const relay of current.relays) {
    const problem = sampleProblem(relay) ?? (seen.has(relay.id) ? 'reported twice' : null);
    if (problem) {
      out.malformed.push({ relay: (relay as { id?: unknown } | null)?.id, reason: problem });
      continue;
    }
    seen.add(relay.id);
    const old = before.get(relay.id);
    for (const direction of DIRECTIONS) {
      const now = relay[direction];
      // A direction that is neither running nor placed has nothing to move.
      if (!now.active && now.cpu < 0) continue;
      let load = 0;
      if (old && now.active) {
        const busy = now.busyNs - old[direction].busyNs;
        const poll = now.pollNs - old[direction].pollNs;
        if (!Number.isFinite(busy) || !Number.isFinite(poll) || busy < 0 || poll < 0) {
          out.resets.push({ relay: relay.id, direction });
        } else {
          // Busy time is part of poll time; a larger value is a torn read, so trust the smaller.
          load = Math.min(busy, poll, elapsedNs) / elapsedNs;
        }
      }
      out.loads.push({
        relay: relay.id,
        direction,
        load,
        cpu: now.cpu,
        numaNode: relay.numaNode,
      });
    }
  }
  return out;
}
