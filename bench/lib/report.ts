// Results of the relay benchmark: one record per measured run, the per-case summary (median of the
// runs, DPDK as the reference) and the printed table.
import type { ForeignConsumer } from './cpu.js';
import type { RelayBuild } from './build-info.js';

export type Direction = 'tx' | 'rx';
/**
 * 'dpdk' is dpdk-testpmd net_vhost ⇄ net_af_packet, 'dpdk-xdp' the same with net_af_xdp; the others
 * are bin/virtio-forwarder in a poll mode, with AF_PACKET VF ports or (-xdp) AF_XDP ones. The
 * -memif kinds relay to a memif peer instead of a VF: 'dpdk-memif' is testpmd net_vhost ⇄
 * net_memif, the others ours with a memif device (both in the memif server role).
 */
export type RelayKind = 'dpdk' | 'dpdk-xdp' | 'busy' | 'adaptive' | 'busy-xdp' | 'adaptive-xdp' | 'dpdk-memif' | 'busy-memif' | 'adaptive-memif';
export const isDpdk = (k: RelayKind) => k === 'dpdk' || k === 'dpdk-xdp' || k === 'dpdk-memif';
export const isMemif = (k: RelayKind) => k.endsWith('-memif');

import type { LossByCause } from './loss-causes.js';

export interface RunRecord {
  direction: Direction;
  size: number;
  relay: RelayKind;
  run: number;
  /** Attempts made (more than one when a run was re-done because of foreign CPU). */
  attempts: number;
  windowSeconds: number;
  /** Frames per second that reached the far end (vethB in tx, the virtio-user port in rx). */
  deliveredPps: number;
  /** Frames per second offered to the relay in the window: virtio-user Tx-pps in tx, vethA rx_packets in rx. */
  offeredPps: number | null;
  /** rx only: Tx-pps of the injector on vethB. */
  injectedPps: number | null;
  /**
   * Exact packet counts over the whole run (start to stop of the traffic process): tx offered =
   * virtio-user TX-packets, delivered = vethB rx_packets; rx offered = frames that reached vethA,
   * delivered = virtio-user RX-packets. Null when testpmd printed no final statistics.
   */
  runTotals: { offered: number; delivered: number } | null;
  /** 1 − delivered/offered over the whole run, %. */
  lossPercent: number | null;
  /** rx only: where the frames that entered the VF went, by cause (null when unknown). */
  lossByCause?: LossByCause | null;
  /** Our relay's commit and compile time (null for DPDK's). */
  relayBuild: RelayBuild | null;
  relayCpu: { user: number; system: number };
  trafficCpu: { user: number; system: number };
  foreignCpu: number;
  stealCpu: number;
  busyCpu: number;
  topForeign: ForeignConsumer[];
  contaminated: boolean;
}

export interface FailedRun {
  direction: Direction;
  size: number;
  relay: RelayKind;
  run: number;
  error: string;
}

export interface CaseSummary {
  direction: Direction;
  size: number;
  relay: RelayKind;
  runs: number;
  deliveredMpps: { min: number; median: number; max: number };
  relayCpu: { user: number; system: number; total: number };
  /** Relay CPU time per delivered packet, in ns: comparable even when the injector sets the rate. */
  relayNsPerPacket: number | null;
  lossPercent: number | null;
  foreignCpu: { median: number; max: number };
  stealCpu: { median: number; max: number };
  contaminatedRuns: number;
  /** Median over the runs whose foreign CPU stayed under the limit: on a shared machine, the figure to trust. */
  cleanMpps: { median: number; runs: number } | null;
  /** median delivered / the fastest DPDK relay's median delivered for the same direction and size. */
  ratioToDpdk: number | null;
  /**
   * The same ratio taken run by run (each run's figure over the fastest DPDK relay's in the same
   * run, measured minutes apart at most): steadier where the machine's speed changes between runs
   * (a virtual machine's vCPUs placed on other host cores) and moves every relay alike.
   */
  sameRunRatio: { min: number; median: number; max: number } | null;
}

export function median(values: number[]): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

export function summarize(records: RunRecord[]): CaseSummary[] {
  // A run's contaminated verdict was taken with that bench's --max-foreign; a saved file summarized again keeps it.
  const groups = new Map<string, RunRecord[]>();
  for (const r of records) {
    const k = `${r.direction}/${r.size}/${r.relay}`;
    groups.set(k, [...(groups.get(k) ?? []), r]);
  }
  const out: CaseSummary[] = [];
  for (const rs of groups.values()) {
    const { direction, size, relay } = rs[0];
    const mpps = rs.map((r) => r.deliveredPps / 1e6);
    const clean = rs.filter((r) => !r.contaminated).map((r) => r.deliveredPps / 1e6);
    const user = median(rs.map((r) => r.relayCpu.user));
    const system = median(rs.map((r) => r.relayCpu.system));
    const nsPerPacket = rs.filter((r) => r.deliveredPps > 0).map((r) => ((r.relayCpu.user + r.relayCpu.system) / 100 / r.deliveredPps) * 1e9);
    const losses = rs.filter((r) => r.lossPercent !== null).map((r) => r.lossPercent!);
    out.push({
      direction,
      size,
      relay,
      runs: rs.length,
      deliveredMpps: { min: Math.min(...mpps), median: median(mpps), max: Math.max(...mpps) },
      relayCpu: { user, system, total: median(rs.map((r) => r.relayCpu.user + r.relayCpu.system)) },
      relayNsPerPacket: nsPerPacket.length ? median(nsPerPacket) : null,
      lossPercent: losses.length ? median(losses) : null,
      foreignCpu: { median: median(rs.map((r) => r.foreignCpu)), max: Math.max(...rs.map((r) => r.foreignCpu)) },
      stealCpu: { median: median(rs.map((r) => r.stealCpu)), max: Math.max(...rs.map((r) => r.stealCpu)) },
      contaminatedRuns: rs.filter((r) => r.contaminated).length,
      cleanMpps: clean.length ? { median: median(clean), runs: clean.length } : null,
      ratioToDpdk: null,
      sameRunRatio: null,
    });
  }
  for (const s of out) {
    if (isDpdk(s.relay)) continue;
    // A memif relay has no VF in its path: it is compared with DPDK's memif relay only, and the VF relays without it.
    const refs = out.filter((d) => isDpdk(d.relay) && isMemif(d.relay) === isMemif(s.relay) && d.direction === s.direction && d.size === s.size);
    const best = Math.max(0, ...refs.map((d) => d.deliveredMpps.median));
    if (best > 0) s.ratioToDpdk = s.deliveredMpps.median / best;
    const ratios: number[] = [];
    for (const r of records) {
      if (r.relay !== s.relay || r.direction !== s.direction || r.size !== s.size) continue;
      const sameRun = records.filter((d) => d.run === r.run && d.direction === s.direction && d.size === s.size && refs.some((x) => x.relay === d.relay));
      const bestThen = Math.max(0, ...sameRun.map((d) => d.deliveredPps));
      if (bestThen > 0) ratios.push(r.deliveredPps / bestThen);
    }
    if (ratios.length) s.sameRunRatio = { min: Math.min(...ratios), median: median(ratios), max: Math.max(...ratios) };
  }
  const relayOrder: RelayKind[] = ['dpdk', 'dpdk-xdp', 'busy', 'adaptive', 'busy-xdp', 'adaptive-xdp', 'dpdk-memif', 'busy-memif', 'adaptive-memif'];
  return out.sort(
    (a, b) =>
      (a.direction === b.direction ? 0 : a.direction === 'tx' ? -1 : 1) || a.size - b.size || relayOrder.indexOf(a.relay) - relayOrder.indexOf(b.relay),
  );
}

const RELAY_LABEL: Record<RelayKind, string> = {
  dpdk: 'DPDK af_packet',
  'dpdk-xdp': 'DPDK af_xdp',
  busy: 'ours busy af_packet',
  adaptive: 'ours adaptive af_packet',
  'busy-xdp': 'ours busy af_xdp',
  'adaptive-xdp': 'ours adaptive af_xdp',
  'dpdk-memif': 'DPDK memif',
  'busy-memif': 'ours busy memif',
  'adaptive-memif': 'ours adaptive memif',
};

function pad(cells: string[][]): string {
  const widths = cells[0].map((_, i) => Math.max(...cells.map((row) => row[i].length)));
  return cells.map((row) => row.map((c, i) => (i < 3 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ')).join('\n');
}

const f = (v: number, digits: number) => (Number.isFinite(v) ? v.toFixed(digits) : '-');

export function formatTable(summaries: CaseSummary[]): string {
  const rows: string[][] = [
    ['dir', 'size', 'relay', 'Mpps median', '(min-max)', 'relay CPU usr+sys %', 'ns/pkt', 'loss %', 'foreign % med/max', 'steal %', 'ours/best DPDK', 'same run (min-max)', 'clean Mpps (runs)'],
  ];
  for (const s of summaries) {
    rows.push([
      s.direction,
      String(s.size),
      RELAY_LABEL[s.relay],
      f(s.deliveredMpps.median, 3),
      `(${f(s.deliveredMpps.min, 3)}-${f(s.deliveredMpps.max, 3)})`,
      `${f(s.relayCpu.user, 0)}+${f(s.relayCpu.system, 0)}`,
      s.relayNsPerPacket === null ? '-' : f(s.relayNsPerPacket, 0),
      s.lossPercent === null ? '-' : f(s.lossPercent, 2),
      `${f(s.foreignCpu.median, 0)}/${f(s.foreignCpu.max, 0)}${s.contaminatedRuns ? '!' : ''}`,
      f(s.stealCpu.median, 0),
      s.ratioToDpdk === null ? '' : f(s.ratioToDpdk, 2),
      s.sameRunRatio === null ? '' : `${f(s.sameRunRatio.median, 2)} (${f(s.sameRunRatio.min, 2)}-${f(s.sameRunRatio.max, 2)})`,
      s.cleanMpps ? `${f(s.cleanMpps.median, 3)} (${s.cleanMpps.runs})` : '-',
    ]);
  }
  return pad(rows);
}

/** One line per foreign process that took ≥ 1 % of a core in some run, with its peak. */
export function formatForeign(records: RunRecord[]): string {
  const peak = new Map<string, number>();
  for (const r of records) for (const c of r.topForeign) peak.set(c.comm, Math.max(peak.get(c.comm) ?? 0, c.percent));
  const top = [...peak.entries()].sort((a, b) => b[1] - a[1]).slice(0, 6);
  return top.length ? `foreign CPU seen (peak % of a core): ${top.map(([c, p]) => `${c} ${p.toFixed(0)}`).join(', ')}` : 'no foreign process used ≥ 1 % of a core';
}
