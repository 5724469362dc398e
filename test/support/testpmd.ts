// dpdk-testpmd as a real vhost-user peer: DPDK's virtio-user front-end (server=0|1) or its net_vhost
// back-end, with the EAL and app arguments that work on a 2-CPU machine (perf-anchors.md §3):
// both lcores on one CPU, no PCI, in-memory, IOVA as VA, a small mbuf pool, and hugepages only when
// enough are reserved (else --no-huge, which gives one memfd region). Stopped with SIGTERM, after
// which testpmd prints its final per-port statistics, parsed here.
import { readFileSync } from 'node:fs';
import { startProcess, type StartedProcess } from './processes.js';

export interface VirtioUserOptions {
  path: string;
  /** 1 = DPDK listens and we connect (its reconnecting mode). */
  server?: boolean;
  queues?: number;
  queueSize?: number;
  /** Extra devargs, e.g. 'mrg_rxbuf=0' or 'packed_vq=1'. */
  extra?: string[];
}

export function virtioUserVdev(o: VirtioUserOptions, id = 0): string {
  const args = [`net_virtio_user${id}`, `path=${o.path}`, `queue_size=${o.queueSize ?? 256}`];
  if (o.server) args.push('server=1');
  if (o.queues && o.queues > 1) args.push(`queues=${o.queues}`, 'cq=1');
  args.push(...(o.extra ?? []));
  return args.join(',');
}

export interface VhostBackendOptions {
  iface: string;
  queues?: number;
  /** The PMD connects instead of listening. */
  client?: boolean;
}

export function vhostVdev(o: VhostBackendOptions, id = 0): string {
  const args = [`net_vhost${id}`, `iface=${o.iface}`, `queues=${o.queues ?? 1}`];
  if (o.client) args.push('client=1');
  return args.join(',');
}

export interface TestpmdOptions {
  vdevs: string[];
  forwardMode: 'txonly' | 'rxonly' | 'io' | 'macswap' | 'flowgen';
  /** Unique EAL file prefix (defaults to one with the pid). */
  filePrefix?: string;
  /** CPU both lcores run on (default 1, leaving CPU 0 to the test). */
  cpu?: number;
  /** Forwarding queues per port (rxq/txq), for multiqueue runs. */
  queues?: number;
  txpkts?: number;
  label?: string;
  echo?: boolean;
  extraApp?: string[];
  /** Extra EAL arguments, e.g. a --log-level. */
  extraEal?: string[];
  /** Start forwarding at once (default true); false when a --cmdline-file starts it. */
  autoStart?: boolean;
}

export interface PortStats {
  port: number;
  rxPackets: number;
  rxDropped: number;
  txPackets: number;
  txDropped: number;
}

export interface Testpmd {
  proc: StartedProcess;
  pid: number;
  output(): string;
  /** SIGTERM, wait for exit, and return the final per-port statistics. */
  stop(): Promise<PortStats[]>;
}

const HUGEPAGE_MB_NEEDED = 256 + 64;

/** Free 2 MiB hugepages, in MiB. */
export function freeHugepageMb(): number {
  try {
    const info = readFileSync('/proc/meminfo', 'utf8');
    const free = Number(/HugePages_Free:\s+(\d+)/.exec(info)?.[1] ?? 0);
    const sizeKb = Number(/Hugepagesize:\s+(\d+) kB/.exec(info)?.[1] ?? 2048);
    return (free * sizeKb) / 1024;
  } catch {
    return 0;
  }
}

let counter = 0;

export function testpmdArgs(o: TestpmdOptions): string[] {
  const cpu = o.cpu ?? 1;
  const prefix = o.filePrefix ?? `vio4wd-${process.pid}-${counter++}`;
  const memory =
    freeHugepageMb() >= HUGEPAGE_MB_NEEDED ? ['--in-memory', '--single-file-segments', '-m', '256'] : ['--no-huge', '-m', '512'];
  const eal = [`--lcores=0@${cpu},1@${cpu}`, '--no-pci', ...memory, '--iova-mode=va', `--file-prefix=${prefix}`, '--no-telemetry'];
  for (const v of o.vdevs) eal.push('--vdev', v);
  eal.push(...(o.extraEal ?? []));
  const app = [
    `--forward-mode=${o.forwardMode}`,
    '--total-num-mbufs=16384',
    '--stats-period=1',
    ...(o.autoStart === false ? [] : ['--auto-start']),
    '--nb-cores=1',
    '--port-topology=loop',
  ];
  if (o.queues && o.queues > 1) app.push(`--rxq=${o.queues}`, `--txq=${o.queues}`);
  if (o.txpkts) app.push(`--txpkts=${o.txpkts}`);
  app.push(...(o.extraApp ?? []));
  return [...eal, '--', ...app];
}

/** EAL argument that makes the virtio PMD log which receive and transmit paths it chose. */
export const LOG_VIRTIO_PATHS = '--log-level=pmd.net.virtio.init:info';

/** The virtio PMD's chosen paths, from its log: e.g. { rx: 'inorder', tx: 'inorder' }. */
export function virtioPaths(output: string): { rx: string | null; tx: string | null } {
  return {
    rx: /using (.+?) Rx path/.exec(output)?.[1] ?? null,
    tx: /using (.+?) Tx path/.exec(output)?.[1] ?? null,
  };
}

/** Parses testpmd's "Forward statistics for port N" blocks (the last one per port wins). */
export function parseForwardStats(output: string): PortStats[] {
  const stats = new Map<number, PortStats>();
  const block = /Forward statistics for port (\d+)\s*-+\s*\n\s*RX-packets:\s*(\d+)\s+RX-dropped:\s*(\d+)\s+RX-total:\s*\d+\s*\n\s*TX-packets:\s*(\d+)\s+TX-dropped:\s*(\d+)/g;
  for (const m of output.matchAll(block)) {
    const port = Number(m[1]);
    stats.set(port, { port, rxPackets: Number(m[2]), rxDropped: Number(m[3]), txPackets: Number(m[4]), txDropped: Number(m[5]) });
  }
  return [...stats.values()].sort((a, b) => a.port - b.port);
}

/** One forwarding stream's totals (printed when a port forwards on several queues). */
export interface StreamStats {
  rxQueue: number;
  txQueue: number;
  rxPackets: number;
  txPackets: number;
  txDropped: number;
}

/** Parses testpmd's "Forward Stats for RX Port= p/Queue= q -> TX Port= p/Queue= q" blocks (the last one per stream wins). */
export function parseStreamStats(output: string): StreamStats[] {
  const stats = new Map<string, StreamStats>();
  const block = /Forward Stats for RX Port=\s*\d+\/Queue=\s*(\d+) -> TX Port=\s*\d+\/Queue=\s*(\d+)\s*-+\s*\n\s*RX-packets:\s*(\d+)\s+TX-packets:\s*(\d+)\s+TX-dropped:\s*(\d+)/g;
  for (const m of output.matchAll(block)) {
    stats.set(`${m[1]}/${m[2]}`, { rxQueue: Number(m[1]), txQueue: Number(m[2]), rxPackets: Number(m[3]), txPackets: Number(m[4]), txDropped: Number(m[5]) });
  }
  return [...stats.values()].sort((a, b) => a.rxQueue - b.rxQueue);
}

export function startTestpmd(o: TestpmdOptions): Testpmd {
  const proc = startProcess('dpdk-testpmd', testpmdArgs(o), { label: o.label ?? 'testpmd', echo: o.echo });
  return {
    proc,
    pid: proc.pid,
    output: () => proc.output(),
    async stop() {
      await proc.stop(5000);
      return parseForwardStats(proc.output());
    },
  };
}
