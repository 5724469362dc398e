// Text output of the operator tools, kept apart from the socket code so it can be tested on
// plain data: the original's flat `relay_<id>.<field>=<value>` stats, the core-pinner grid and
// the load bars.
import type { RelayCpu } from '../../relay/registry-api.js';
import type { DirectionStats, RelayStats, WorkerStats } from '../protocol.js';

type Side = { key: 'vf_to_vm' | 'vm_to_vf'; from: string; to: string; pick: (r: RelayStats) => DirectionStats };

const SIDES: Side[] = [
  { key: 'vf_to_vm', from: 'vf', to: 'vm', pick: (r) => r.vfToVm },
  { key: 'vm_to_vf', from: 'vm', to: 'vf', pick: (r) => r.vmToVf },
];

function rate(value: number | undefined): string {
  return value === undefined ? 'n/a' : value.toFixed(2);
}

/**
 * One `key=value` per line, field names as in the original tool. Rates are per second over the
 * tool's own window; `hideZero` drops integer counters that are 0 (the original's -z).
 */
export function formatStatsFlat(relays: RelayStats[], opts: { hideZero?: boolean } = {}): string {
  const lines: string[] = [];
  const put = (key: string, value: string | number | boolean) => lines.push(`${key}=${value}`);
  const counter = (key: string, value: number) => {
    if (!(opts.hideZero && value === 0)) put(key, value);
  };
  for (const r of relays) {
    const p = `relay_${r.id}`;
    put(`${p}.active`, r.active);
    put(`${p}.cpu.vf_to_vm`, r.vfToVm.cpu);
    put(`${p}.cpu.vm_to_vf`, r.vmToVf.cpu);
    put(`${p}.socket_id`, r.numaNode);
    put(`${p}.vf.pci_addr_str`, r.device ?? 'NONE');
    if (r.bondMembers) put(`${p}.vf.bond_members`, r.bondMembers.join(','));
    put(`${p}.vhost.vhost_socket_name`, r.socketPath ?? 'NONE');
    for (const side of SIDES) {
      const d = side.pick(r);
      const s = `${p}.${side.key}`;
      put(`${s}.active`, d.active);
      put(`${s}.internal_state`, d.state);
      const c = d.cpu >= 0 ? `${s}.cpu_${d.cpu}` : s;
      counter(`${c}.pkts_rx_from_${side.from}`, d.rxPackets);
      counter(`${c}.bytes_rx_from_${side.from}`, d.rxBytes);
      counter(`${c}.pkts_tx_to_${side.to}`, d.packets);
      counter(`${c}.bytes_tx_to_${side.to}`, d.bytes);
      counter(`${c}.pkts_dropped_${side.to}_queue_full`, d.dropsQueueFull);
      counter(`${c}.pkts_dropped_${side.to}_not_connected`, d.dropsNotConnected);
      counter(`${c}.pkts_dropped_bad_frame`, d.dropsBadFrame);
      if (side.key === 'vf_to_vm') {
        counter(`${c}.pkts_dropped_vf_ring_full`, d.dropsKernelRing ?? 0);
        counter(`${c}.pkts_dropped_vf_ring_full_vm_no_buffers`, d.dropsKernelRingGuestNoBuffers ?? 0);
      }
      counter(`${c}.bad_chains`, d.badChains ?? 0);
      counter(`${c}.rings_stopped`, d.ringsStopped ?? 0);
      put(`${c}.pkt_rate_rx_from_${side.from}`, rate(d.rates?.rxPackets));
      put(`${c}.byte_rate_rx_from_${side.from}`, rate(d.rates?.rxBytes));
      put(`${c}.pkt_rate_tx_to_${side.to}`, rate(d.rates?.packets));
      put(`${c}.byte_rate_tx_to_${side.to}`, rate(d.rates?.bytes));
      put(`${c}.busy_fraction`, rate(d.rates?.busy));
    }
  }
  return lines.length ? `${lines.join('\n')}\n` : '';
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
