// Text output of the operator tools, kept apart from the socket code so it can be tested on
// plain data: the original's flat `relay_<id>.<field>=<value>` stats, the core-pinner grid and
// the load bars.
import type { RelayCpu } from '../../relay/registry-api.js';
import type { DirectionStats, RelayStats, WorkerStats } from '../protocol.js';

type Side = {
  key: 'vf_to_vm' | 'vm_to_vf';
  from: string;
  to: string;
  pick: (r: RelayStats) => DirectionStats;
  /** Is this side up (the original's `active` of the direction)? */
  active: (r: RelayStats) => boolean;
  /** The original's internal state names: DPDK_* for the VF side, VIRTIO_* for the VM side. */
  state: (r: RelayStats) => string;
};

const SIDES: Side[] = [
  {
    key: 'vf_to_vm',
    from: 'vf',
    to: 'vm',
    pick: (r) => r.vfToVm,
    active: (r) => r.device !== null,
    state: (r) => (r.device === null ? 'DPDK_UNINIT' : r.vmConnected ? 'DPDK_READY' : 'DPDK_ADDED'),
  },
  {
    key: 'vm_to_vf',
    from: 'vm',
    to: 'vf',
    pick: (r) => r.vmToVf,
    active: (r) => r.vmConnected,
    state: (r) => (r.vmConnected ? 'VIRTIO_READY' : 'VIRTIO_UNINIT'),
  },
];

/** A boolean as Python prints it. */
export const pyBool = (b: boolean): string => (b ? 'True' : 'False');

/**
 * A float as Python's str() prints it: `0.0`, `250000.0`, `1234.5`, `1e-05`, `1.5e+16`, `nan`
 * (vio4wd's "no rate yet": a first request has no window).
 */
export function pyFloat(value: number | null | undefined): string {
  if (value === null || value === undefined || Number.isNaN(value)) return 'nan';
  if (!Number.isFinite(value)) return value > 0 ? 'inf' : '-inf';
  const abs = Math.abs(value);
  if (abs !== 0 && (abs >= 1e16 || abs < 1e-4)) {
    const [mantissa, exp] = value.toExponential().split('e');
    const sign = exp.startsWith('-') ? '-' : '+';
    return `${mantissa}e${sign}${exp.replace(/^[+-]/, '').padStart(2, '0')}`;
  }
  return Number.isInteger(value) ? `${value.toFixed(1)}` : String(value);
}

/** The CPU that serves a side, when the side is up and placed; the original printed no CPU otherwise. */
function sideCpu(r: RelayStats, side: Side): number | undefined {
  const cpu = side.pick(r).cpu;
  return side.active(r) && cpu >= 0 ? cpu : undefined;
}

/**
 * One `key=value` per line, keys, order and value spellings as the original tool printed them
 * (`True`/`False`, `DPDK_READY`, `VIRTIO_UNINIT`, rates as Python floats), counters under
 * `relay_<id>.<direction>.cpu_<n>.` when a CPU serves the direction. vio4wd's own fields follow
 * the original's in each section. `hideZero` (the original's -z) drops integer counters that
 * are 0. Unlike the original, counters of a direction that is down are still printed.
 */
export function formatStatsFlat(relays: RelayStats[], opts: { hideZero?: boolean } = {}): string {
  const lines: string[] = [];
  const put = (key: string, value: string | number) => lines.push(`${key}=${value}`);
  const counter = (key: string, value: number) => {
    if (!(opts.hideZero && value === 0)) put(key, value);
  };
  for (const r of relays) {
    const p = `relay_${r.id}`;
    put(`${p}.active`, pyBool(r.active));
    for (const side of SIDES) {
      const cpu = sideCpu(r, side);
      if (cpu !== undefined) put(`${p}.cpu.${side.key}`, cpu);
    }
    if (r.device !== null) put(`${p}.vf.pci_addr_str`, r.device);
    if (r.bondMembers) put(`${p}.vf.bond_members`, r.bondMembers.join(','));
    put(`${p}.vhost.vhost_socket_name`, r.socketPath ?? 'NONE');
    put(`${p}.socket_id`, r.numaNode);
    for (const side of SIDES) {
      const d = side.pick(r);
      const s = `${p}.${side.key}`;
      put(`${s}.active`, pyBool(side.active(r)));
      put(`${s}.internal_state`, side.state(r));
      const cpu = sideCpu(r, side);
      const c = cpu === undefined ? s : `${s}.cpu_${cpu}`;
      counter(`${c}.pkts_rx_from_${side.from}`, d.rxPackets);
      counter(`${c}.bytes_rx_from_${side.from}`, d.rxBytes);
      counter(`${c}.pkts_tx_to_${side.to}`, d.packets);
      counter(`${c}.bytes_tx_to_${side.to}`, d.bytes);
      put(`${c}.pkt_rate_rx_from_${side.from}`, pyFloat(d.rates?.rxPackets));
      put(`${c}.byte_rate_rx_from_${side.from}`, pyFloat(d.rates?.rxBytes));
      put(`${c}.pkt_rate_tx_to_${side.to}`, pyFloat(d.rates?.packets));
      put(`${c}.byte_rate_tx_to_${side.to}`, pyFloat(d.rates?.bytes));
      counter(`${c}.pkts_dropped_${side.to}_queue_full`, d.dropsQueueFull);
      counter(`${c}.pkts_dropped_${side.to}_not_connected`, d.dropsNotConnected);
      // vio4wd's own counters and measurements.
      counter(`${c}.pkts_dropped_bad_frame`, d.dropsBadFrame);
      if (side.key === 'vf_to_vm') {
        counter(`${c}.pkts_dropped_vf_ring_full`, d.dropsKernelRing ?? 0);
        counter(`${c}.pkts_dropped_vf_ring_full_vm_no_buffers`, d.dropsKernelRingGuestNoBuffers ?? 0);
        counter(`${c}.pkts_segmented`, d.rxSegmented ?? 0);
      }
      counter(`${c}.bad_chains`, d.badChains ?? 0);
      counter(`${c}.rings_stopped`, d.ringsStopped ?? 0);
      put(`${c}.busy_fraction`, pyFloat(d.rates?.busy));
    }
  }
  return lines.length ? `${lines.join('\n')}\n` : '';
}

/**
 * The reply in the text form the original's `--output-format=protobuf` printed (its
 * StatsResponse message: field names and order of virtioforwarder.proto, strings quoted).
 * Only the original's fields are shown; `--json` has everything.
 */
export function formatStatsProtobufText(relays: RelayStats[]): string {
  const out: string[] = ['status: OK'];
  const quote = (t: string) => JSON.stringify(t);
  for (const r of relays) {
    out.push('relay {', `  id: ${r.id}`, `  active: ${r.active}`);
    const cpus = SIDES.map((side) => [side.key, sideCpu(r, side)] as const).filter(([, c]) => c !== undefined);
    if (cpus.length > 0) out.push('  cpu {', ...cpus.map(([k, c]) => `    ${k}: ${c}`), '  }');
    out.push('  vhost {', `    vhost_socket_name: ${quote(r.socketPath ?? 'NONE')}`, '  }');
    if (r.device !== null) out.push('  vf {', `    pci_addr_str: ${quote(r.device)}`, '  }');
    for (const side of SIDES) {
      const d = side.pick(r);
      out.push(`  ${side.key} {`, `    active: ${side.active(r)}`, `    internal_state: ${quote(side.state(r))}`);
      out.push(
        `    pkts_rx_from_${side.from}: ${d.rxPackets}`,
        `    bytes_rx_from_${side.from}: ${d.rxBytes}`,
        `    pkts_tx_to_${side.to}: ${d.packets}`,
        `    bytes_tx_to_${side.to}: ${d.bytes}`,
        `    pkts_dropped_${side.to}_queue_full: ${d.dropsQueueFull}`,
        `    pkts_dropped_${side.to}_not_connected: ${d.dropsNotConnected}`,
        `    pkt_rate_rx_from_${side.from}: ${pyFloat(d.rates?.rxPackets)}`,
        `    byte_rate_rx_from_${side.from}: ${pyFloat(d.rates?.rxBytes)}`,
        `    pkt_rate_tx_to_${side.to}: ${pyFloat(d.rates?.packets)}`,
        `    byte_rate_tx_to_${side.to}: ${pyFloat(d.rates?.bytes)}`,
        '  }',
      );
    }
    // SOCKET_ID_ANY, as the original's uint32 field showed an unknown node.
    out.push(`  socket_id: ${r.numaNode < 0 ? 4294967295 : r.numaNode}`, '}');
  }
  return `${out.join('\n')}\n`;
}

const pad2 = (n: number) => String(n).padStart(2, '0');

/**
 * The relay→CPU map as a grid: one column per worker CPU headed `== NN ==`, each with two
 * sub-columns of relay ids, VF2VM (served on that CPU in the VF→VM direction) and VM2VF.
 */
export function formatCpuGrid(workerCpus: number[], map: RelayCpu[]): string {
  const cpus = [...workerCpus].sort((a, b) => a - b);
  const columns = cpus.map((cpu) => ({
    cpu,
    vf2vm: map.filter((m) => m.vfToVmCpu === cpu).map((m) => m.relay).sort((a, b) => a - b),
    vm2vf: map.filter((m) => m.vmToVfCpu === cpu).map((m) => m.relay).sort((a, b) => a - b),
  }));
  const cellWidth = 13; // "VF2VM  VM2VF"
  const rule = '='.repeat(columns.length * (cellWidth + 1) + 1);
  const row = (cells: string[]) => `|${cells.map((c) => c.padStart(Math.floor((cellWidth + c.length) / 2)).padEnd(cellWidth)).join('|')}|`;
  const lines = [rule, row(columns.map((c) => `== ${pad2(c.cpu)} ==`)), row(columns.map(() => 'VF2VM VM2VF')), rule];
  const depth = Math.max(0, ...columns.map((c) => Math.max(c.vf2vm.length, c.vm2vf.length)));
  for (let i = 0; i < depth; i++) {
    lines.push(
      row(
        columns.map((c) => {
          const a = c.vf2vm[i] === undefined ? '  ' : pad2(c.vf2vm[i]);
          const b = c.vm2vf[i] === undefined ? '  ' : pad2(c.vm2vf[i]);
          return `  ${a}    ${b} `;
        }),
      ),
    );
  }
  lines.push(rule);
  const unplaced = map.filter((m) => !cpus.includes(m.vfToVmCpu) || !cpus.includes(m.vmToVfCpu));
  for (const m of unplaced) {
    lines.push(`relay ${pad2(m.relay)}: VF2VM on ${m.vfToVmCpu < 0 ? 'no CPU' : `CPU ${m.vfToVmCpu}`}, VM2VF on ${m.vmToVfCpu < 0 ? 'no CPU' : `CPU ${m.vmToVfCpu}`}`);
  }
  return `${lines.join('\n')}\n`;
}

export const LOAD_BAR_WIDTH = 60;

/** `CPU<n>: [#####     ]  42.0%` per worker; load is the busy share of the worker's polls. */
export function formatLoadBars(workers: WorkerStats[]): string {
  const lines = ['CPU loads'];
  for (const w of [...workers].sort((a, b) => a.cpu - b.cpu)) {
    if (w.load === null) {
      lines.push(`CPU${w.cpu}: [${' '.repeat(LOAD_BAR_WIDTH)}]    n/a`);
      continue;
    }
    const filled = Math.round(Math.min(1, Math.max(0, w.load)) * LOAD_BAR_WIDTH);
    lines.push(`CPU${w.cpu}: [${'#'.repeat(filled)}${' '.repeat(LOAD_BAR_WIDTH - filled)}] ${(w.load * 100).toFixed(1).padStart(5)}%`);
  }
  return `${lines.join('\n')}\n`;
}
