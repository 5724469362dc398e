// Where the rx frames that reached the relay's VF (vethA) went, by cause, for our relay and for
// DPDK's, over one whole run. Kernel drops (the VF packet ring was full: PACKET_STATISTICS
// tp_drops, which is not in the sockets' sk_drops that `ss -m` shows) come from each relay's own
// counters: ours through its stats service (dropsKernelRing); DPDK's relay does not report them
// (22.11's net_af_packet leaves imissed at 0), so the bench reads its sockets' tp_drops itself
// (foreign-packet-drops.ts), plus RX-dropped of its net_af_packet port should a DPDK report it. Guest ring full: ours
// dropsQueueFull; DPDK's net_vhost port TX-dropped (the vhost enqueue found no room or no guest).
import { ControlClient } from '../../port-control/client.js';
import { parseForwardStats } from '../../test/support/testpmd.js';

export interface LossByCause {
  /** Frames that reached vethA during the run (its rx_packets delta). */
  entered: number;
  /** Frames the virtio-user port received. */
  delivered: number;
  /** The VF packet ring was full (the kernel's tp_drops as each relay counts them). */
  kernelRing: number;
  /**
   * The part of kernelRing that fell while the endpoint had no receive buffers posted and frames
   * waited (ours only: dropsKernelRingGuestNoBuffers; DPDK's relay keeps no such count).
   */
  kernelRingGuestNoBuffers: number | null;
  /** The relay held a frame the guest ring had no room for (ours: dropsQueueFull; DPDK: vhost TX-dropped). */
  guestRingFull: number;
  /** The guest's buffers could not take the frame (ours only; DPDK has no such count). */
  badFrame: number | null;
  /** No guest connected (ours: dropsNotConnected, e.g. frames left when the endpoint stopped). */
  notConnected: number | null;
  /**
   * Frames the relay put in the guest's receive ring that the endpoint had not taken when it
   * stopped (relay's delivered count − the endpoint's RX-packets); null when unknown.
   */
  leftInGuestRing: number | null;
  /** entered − delivered − every counted cause: frames no counter explains (or still in flight). */
  unexplained: number;
}

/** Our relay's VF→VM drop counters for relay `id`, through its stats service. */
export async function ourDropCounters(statsEp: string, id: number): Promise<{ packets: number; kernelRing: number; kernelRingGuestNoBuffers: number; queueFull: number; bad: number; notConnected: number }> {
  const client = new ControlClient(statsEp, 5000);
  try {
    const reply = await client.request('stats', { relays: [id] });
    const c = reply.relays[0].vfToVm;
    return { packets: c.packets, kernelRing: c.dropsKernelRing, kernelRingGuestNoBuffers: c.dropsKernelRingGuestNoBuffers, queueFull: c.dropsQueueFull, bad: c.dropsBadFrame, notConnected: c.dropsNotConnected };
  } finally {
    client.close();
  }
}

/** DPDK relay's drops from its testpmd's final statistics: port 0 net_vhost, port 1 net_af_packet. */
export function dpdkDrops(output: string): { vhostTxPackets: number; vhostTxDropped: number; afPacketRxDropped: number } | null {
  const stats = parseForwardStats(output);
  const vhost = stats.find((p) => p.port === 0);
  const afPacket = stats.find((p) => p.port === 1);
  return vhost && afPacket ? { vhostTxPackets: vhost.txPackets, vhostTxDropped: vhost.txDropped, afPacketRxDropped: afPacket.rxDropped } : null;
}

export function lossByCause(o: Omit<LossByCause, 'unexplained'>): LossByCause {
  const counted = o.delivered + o.kernelRing + o.guestRingFull + (o.badFrame ?? 0) + (o.notConnected ?? 0) + (o.leftInGuestRing ?? 0);
  return { ...o, unexplained: o.entered - counted };
}

/** The loss table: one row per rx run. */
export function formatLossTable(rows: { relay: string; size: number; run: number; loss: LossByCause }[]): string {
  const header = ['size', 'relay', 'run', 'entered VF', 'delivered', 'loss %', 'VF ring full', 'of which guest had no buffers', 'guest ring full', 'bad frame', 'no guest', 'left in guest ring', 'unexplained'];
  const pct = (n: number, of: number) => (of > 0 ? ((100 * n) / of).toFixed(2) : '-');
  const table = [header, ...rows.map((r) => [
    String(r.size),
    r.relay,
    String(r.run),
    String(r.loss.entered),
    String(r.loss.delivered),
    pct(r.loss.entered - r.loss.delivered, r.loss.entered),
    `${r.loss.kernelRing} (${pct(r.loss.kernelRing, r.loss.entered)} %)`,
    r.loss.kernelRingGuestNoBuffers == null ? '-' : `${r.loss.kernelRingGuestNoBuffers} (${pct(r.loss.kernelRingGuestNoBuffers, r.loss.entered)} %)`,
    `${r.loss.guestRingFull} (${pct(r.loss.guestRingFull, r.loss.entered)} %)`,
    r.loss.badFrame === null ? '-' : String(r.loss.badFrame),
    r.loss.notConnected === null ? '-' : String(r.loss.notConnected),
    r.loss.leftInGuestRing === null ? '-' : String(r.loss.leftInGuestRing),
    String(r.loss.unexplained),
  ])];
  const widths = header.map((_, i) => Math.max(...table.map((row) => row[i].length)));
  return table.map((row) => row.map((c, i) => c.padEnd(widths[i])).join('  ')).join('\n');
}
