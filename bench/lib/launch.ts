// The processes of a benchmark run: the relay under test (ours or DPDK's) and the traffic process.
// Every process is started through `setpriv --pdeathsig KILL`, so a busy poller cannot outlive the
// bench even if the bench itself is killed with SIGKILL, and is registered here so that normal
// ends, errors and SIGINT all stop it by PID.
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sleep, startProcess, type StartedProcess } from '../../test/support/processes.js';
import { findBinary } from '../../test/support/env.js';
import { relayBin } from '../../test/support/relay.js';
import { TestpmdStatsStream } from './testpmd-stats.js';
import { ControlClient } from '../../port-control/client.js';

const live = new Set<StartedProcess>();

export interface BenchProcess {
  pid: number;
  label: string;
  proc: StartedProcess;
  /** The last `chars` characters of its output, for error messages. */
  tail(chars?: number): string;
  stop(): Promise<void>;
}

const setpriv = findBinary('setpriv');

function launch(label: string, argv: string[], opts: { netns?: string; cpu?: number } = {}): BenchProcess {
  const prefix: string[] = [];
  if (opts.netns) prefix.push('ip', 'netns', 'exec', opts.netns);
  // `ip netns exec`, setpriv and taskset all exec, so the pid we get is the final program's.
  if (setpriv) prefix.push(setpriv, '--pdeathsig', 'KILL');
  if (opts.cpu !== undefined) prefix.push('taskset', '-c', String(opts.cpu));
  const full = [...prefix, ...argv];
  const proc = startProcess(full[0], full.slice(1), { label });
  live.add(proc);
  void proc.exited.then(() => live.delete(proc));
  return {
    pid: proc.pid,
    label,
    proc,
    tail: (chars = 2000) => proc.output().slice(-chars),
    async stop() {
      await proc.stop(5000);
      live.delete(proc);
    },
  };
}

/** Stops everything still running: SIGTERM, SIGKILL after 5 s. */
export async function stopAllBenchProcesses(): Promise<void> {
  await Promise.all([...live].map((p) => p.stop(5000)));
  live.clear();
}

/** Last resort from a synchronous exit path: SIGKILL by PID, no waiting. */
export function killAllBenchProcessesNow(): void {
  for (const p of live) {
    try {
      process.kill(p.pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
  }
}

export function livePids(): number[] {
  return [...live].map((p) => p.pid);
}

// ---- EAL arguments (perf-anchors §3): one process = one CPU, small memory, no PCI, IOVA as VA ----

let prefixCounter = 0;

/** Memory of one testpmd process, MiB: 10 KiB mbufs for jumbo cases need more than 2 KiB ones. */
export const testpmdMemoryMb = (jumbo: boolean): number => (jumbo ? 512 : 256);

function eal(cpu: number, extra: string[], vdevs: string[], jumbo = false): string[] {
  const args = [
    `--lcores=0@${cpu},1@${cpu}`,
    '--no-pci',
    '--in-memory',
    `--file-prefix=vbench${process.pid}-${prefixCounter++}`,
    '-m',
    String(testpmdMemoryMb(jumbo)),
    '--iova-mode=va',
    '--no-telemetry',
    ...extra,
  ];
  for (const v of vdevs) args.push('--vdev', v);
  return args;
}

function app(forwardMode: string, topology: 'loop' | 'paired', extra: string[] = [], jumbo = false): string[] {
  return [
    `--forward-mode=${forwardMode}`,
    `--port-topology=${topology}`,
    '--total-num-mbufs=16384',
    // A jumbo frame in one mbuf. No --max-pkt-len: net_af_packet refuses any above 1518 at
    // configuration, yet carries what its ring frames hold; the veths' MTU is set by the bench.
    ...(jumbo ? ['--mbuf-size=10368'] : []),
    '--stats-period=1',
    '--auto-start',
    '--nb-cores=1',
    ...extra,
  ];
}

/**
 * net_af_packet's options for jumbo frames: a ring frame holds the frame and its header, and no
 * more than an mbuf's 10,240 bytes of data room (the port refuses to start otherwise). A block
 * is whole pages and whole frames: the driver finds frame i at i × framesz, which holds only
 * when no block has room left over (with one frame in a 12 KiB block, one frame went out).
 */
const afPacketJumbo = (jumbo: boolean) => (jumbo ? ',blocksz=20480,framesz=10240,framecnt=512' : '');

export interface TestpmdProcess extends BenchProcess {
  stats: TestpmdStatsStream;
}

function startTestpmd(label: string, argv: string[], opts: { netns?: string }): TestpmdProcess {
  const p = launch(label, ['dpdk-testpmd', ...argv], opts);
  const stats = new TestpmdStatsStream();
  const feed = (chunk: Buffer) => stats.feed(chunk.toString('utf8'));
  p.proc.proc.stdout?.on('data', feed);
  p.proc.proc.stderr?.on('data', feed);
  return { ...p, stats };
}

// ---- the relays under test ----

export interface RelayUnderTest extends BenchProcess {
  socketPath: string;
  /** Our relay's stats service (its VF→VM drop counters by cause); absent for DPDK's relay. */
  statsEp?: string;
}

export type OurPollMode = 'busy' | 'adaptive';

/**
 * bin/virtio-forwarder with one static VF and its worker on `cpu`. The whole process (main thread,
 * libuv threads, worker) is confined to that CPU like the DPDK relay, so nothing of the relay
 * competes with the traffic process on the other CPU.
 */
export async function startOurRelay(o: { vf: string; cpu: number; pollMode: OurPollMode; pin: boolean; config?: string[]; memifSocket?: string; jumbo?: boolean }): Promise<RelayUnderTest> {
  const dir = mkdtempSync(join(tmpdir(), 'vbench-relay-'));
  const socketDir = join(dir, 'sockets');
  const configPath = join(dir, 'virtioforwarder');
  writeFileSync(
    configPath,
    [
      `VIRTIOFWD_CPU_MASK=${o.cpu}`,
      'VIRTIOFWD_LOG_LEVEL=6',
      `VIRTIOFWD_SOCKET_DIR=${socketDir}`,
      `VIRTIOFWD_PID_DIR=${dir}`,
      `VIRTIOFWD_POLL_MODE=${o.pollMode}`,
      'VIRTIOFWD_VHOST_CLIENT=false',
      // A memif device is attached through port control (add_sock) once the relay is up.
      ...(o.memifSocket ? ['VIRTIOFWD_DYNAMIC_SOCKETS=true', `VIRTIOFWD_ZMQ_PORT_CONTROL_EP=ipc://${dir}/port_control`] : ['VIRTIOFWD_DYNAMIC_SOCKETS=false', `VIRTIOFWD_STATIC_VFS=(${o.vf}=1)`, 'VIRTIOFWD_ZMQ_PORT_CONTROL_EP=off']),
      'VIO4WD_CORE_SCHED_ENABLE=false',
      `VIRTIOFWD_JUMBO=${o.jumbo ? 'true' : 'false'}`,
      // Idle until the bench asks once, after the window, for the loss by cause.
      `VIRTIOFWD_ZMQ_STATS_EP=ipc://${dir}/stats`,
      'VIRTIOFWD_ZMQ_CONFIG_EP=off',
      'VIRTIOFWD_ZMQ_CORE_SCHED_EP=off',
      ...(o.config ?? []),
      '',
    ].join('\n'),
  );
  const profile = process.env.VIO4WD_BENCH_CPU_PROF ? ['--cpu-prof', `--cpu-prof-dir=${process.env.VIO4WD_BENCH_CPU_PROF}`] : [];
  const flags = (process.env.VIO4WD_BENCH_NODE_FLAGS ?? '').split(' ').filter(Boolean);
  const p = launch(`relay-${o.pollMode}`, [process.execPath, ...flags, ...profile, relayBin, '--config', configPath], { cpu: o.pin ? o.cpu : undefined });
  const stop = async () => {
    await p.stop();
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await p.proc.waitForOutput(/"msg":"virtio-forwarder ready"/, 30_000);
  } catch (err) {
    await stop();
    throw new Error(`our relay (${o.pollMode}) did not become ready: ${(err as Error).message}`);
  }
  if (o.memifSocket) {
    const vmSocket = join(socketDir, 'vm-memif.sock');
    const client = new ControlClient(`ipc://${dir}/port_control`, 10_000);
    try {
      await client.request('add_sock', { vhostPath: vmSocket, memif: { socket: o.memifSocket, role: 'server', id: 0 } });
    } catch (err) {
      await stop();
      throw new Error(`our relay (${o.pollMode}) refused the memif device: ${(err as Error).message}`);
    } finally {
      client.close();
    }
    return { ...p, socketPath: vmSocket, statsEp: `ipc://${dir}/stats`, stop };
  }
  return { ...p, socketPath: join(socketDir, 'virtio-forwarder1.sock'), statsEp: `ipc://${dir}/stats`, stop };
}

/** DPDK's memif relay: testpmd net_vhost (server) ⇄ net_memif (server role, listening on `memifSocket`). */
export async function startDpdkMemifRelay(o: { cpu: number; socketDir: string; memifSocket: string }): Promise<RelayUnderTest> {
  const socketPath = join(o.socketDir, 'dpdk-relay.sock');
  rmSync(socketPath, { force: true });
  rmSync(o.memifSocket, { force: true });
  const p = startTestpmd(
    'dpdk-relay-memif',
    [...eal(o.cpu, [], [`net_vhost0,iface=${socketPath}`, memifVdev(1, o.memifSocket, 'server')]), '--', ...app('io', 'paired')],
    {},
  );
  try {
    await waitForOrExit(p, () => existsSync(socketPath) && existsSync(o.memifSocket), 30_000, `DPDK memif relay sockets ${socketPath} and ${o.memifSocket}`);
  } catch (err) {
    const tail = p.tail();
    await p.stop();
    throw new Error(`DPDK memif relay (dpdk-testpmd net_vhost ⇄ net_memif) did not start: ${(err as Error).message}\n${tail}`);
  }
  return { ...p, socketPath };
}

/** A net_memif port; DPDK 22.11 defaults to the abstract namespace, the relays use a file. */
const memifVdev = (id: number, socket: string, role: 'server' | 'client') => `net_memif${id},role=${role},socket=${socket},socket-abstract=no,id=0`;

/**
 * DPDK's relay: testpmd net_vhost (server) ⇄ net_af_packet, or net_af_xdp on the VF's queue 0 (its
 * default program, in the driver), in io forwarding, both lcores on `cpu`.
 */
export async function startDpdkRelay(o: { vf: string; cpu: number; socketDir: string; xdp?: boolean; jumbo?: boolean }): Promise<RelayUnderTest> {
  if (o.xdp && o.jumbo) throw new Error('DPDK 22.11 net_af_xdp has no frames over several chunks: no jumbo frames');
  const socketPath = join(o.socketDir, 'dpdk-relay.sock');
  // A stale socket file makes net_vhost fail to bind and the port never starts (perf-anchors §6.7).
  rmSync(socketPath, { force: true });
  const vfPort = o.xdp ? `net_af_xdp1,iface=${o.vf},start_queue=0,queue_count=1` : `net_af_packet1,iface=${o.vf}${afPacketJumbo(!!o.jumbo)}`;
  const p = startTestpmd(
    o.xdp ? 'dpdk-relay-xdp' : 'dpdk-relay',
    [...eal(o.cpu, [], [`net_vhost0,iface=${socketPath}`, vfPort], o.jumbo), '--', ...app('io', 'paired', [], o.jumbo)],
    {},
  );
  try {
    await waitForOrExit(p, () => existsSync(socketPath), 30_000, `DPDK relay socket ${socketPath}`);
  } catch (err) {
    const tail = p.tail();
    await p.stop();
    throw new Error(`DPDK relay (dpdk-testpmd net_vhost ⇄ ${o.xdp ? 'net_af_xdp' : 'net_af_packet'} on ${o.vf}) did not start: ${(err as Error).message}\n${tail}`);
  }
  return { ...p, socketPath };
}

// ---- traffic ----

/** The VM side: virtio-user with 1024-descriptor rings, packed ones with `packed`. */
const virtioUser = (id: number, path: string, packed = false) => `net_virtio_user${id},path=${path},queue_size=1024${packed ? ',packed_vq=1' : ''}`;

/** VM→VF source: virtio-user txonly. Its single port is port 0. */
export function startTxSource(o: { socketPath: string; size: number; cpu: number; packed?: boolean; jumbo?: boolean }): TestpmdProcess {
  return startTestpmd(
    'tx-source',
    [...eal(o.cpu, ['--single-file-segments'], [virtioUser(0, o.socketPath, o.packed)], o.jumbo), '--', ...app('txonly', 'loop', [`--txpkts=${o.size}`], o.jumbo)],
    {},
  );
}

/**
 * VF→VM endpoint (perf-anchors §3): ONE testpmd injects and counts, so only two pollers share the
 * two CPUs. Port 0 (net_null generator) → port 1 (AF_PACKET on vethB) injects; port 2
 * (virtio-user) → port 3 (net_null sink) counts. It runs in the peer's namespace to reach vethB.
 *
 * Behind a rate limit (--rx-rate) this loop has no spare receive capacity: net_af_packet's
 * transmit waits in poll() until the qdisc frees TX ring slots, so the loop turns rate/32 times a
 * second, and the receiver, at most 32 frames a turn, takes exactly the offered rate. A backlog
 * that forms once (a relay's start-up, any pause of the relay) never drains; a relay that holds
 * frames in its VF ring keeps it as a standing queue that overflows now and then, one that drops
 * what the guest ring cannot take at once loses only that. Giving the receiver an lcore of its
 * own on the same CPU was tried: then the two pollers share the CPU in scheduler slices and DPDK's
 * relay lost 80 %, so the single loop stays, and docs/benchmarks.md says what it measures.
 */
export const RX_ENDPOINT_PORTS = { injector: 1, virtio: 2 } as const;

export function startRxEndpoint(o: { socketPath: string; size: number; cpu: number; netns: string; vethB: string; throughQdisc?: boolean; packed?: boolean; jumbo?: boolean }): TestpmdProcess {
  return startTestpmd(
    'rx-endpoint',
    [
      ...eal(o.cpu, ['--single-file-segments'], [
        `net_null0,size=${o.size}`,
        // qdisc_bypass=0 only when a rate limit sits on vethB's qdisc: bypass is faster otherwise.
        `net_af_packet1,iface=${o.vethB}${o.throughQdisc ? ',qdisc_bypass=0' : ''}${afPacketJumbo(!!o.jumbo)}`,
        virtioUser(2, o.socketPath, o.packed),
        'net_null3,no-rx=1',
      ], o.jumbo),
      '--',
      ...app('io', 'paired', [], o.jumbo),
    ],
    { netns: o.netns },
  );
}

/**
 * The memif path's single traffic process: port 0 (net_null generator) → port 1 sends into the
 * relay, port 2 receives from it → port 3 (net_null sink). VM→NF (tx): port 1 is the VM
 * (virtio-user), port 2 the network function (net_memif client). NF→VM (rx): the other way round.
 * Either way port 1's TX is what was offered and port 2's RX what was delivered.
 */
export const MEMIF_ENDPOINT_PORTS = { offered: 1, delivered: 2 } as const;

export function startMemifEndpoint(o: { direction: 'tx' | 'rx'; socketPath: string; memifSocket: string; size: number; cpu: number; packed?: boolean }): TestpmdProcess {
  const vm = virtioUser(o.direction === 'tx' ? 1 : 2, o.socketPath, o.packed);
  const nf = memifVdev(o.direction === 'tx' ? 2 : 1, o.memifSocket, 'client');
  return startTestpmd(
    `memif-endpoint-${o.direction}`,
    [...eal(o.cpu, ['--single-file-segments'], [`net_null0,size=${o.size}`, ...(o.direction === 'tx' ? [vm, nf] : [nf, vm]), 'net_null3,no-rx=1']), '--', ...app('io', 'paired')],
    {},
  );
}

/** A process that does nothing inside the peer's namespace, so its /proc/<pid>/net/dev shows vethB. */
export async function startNamespaceAnchor(netns: string): Promise<BenchProcess> {
  const p = launch('ns-anchor', ['sleep', 'infinity'], { netns });
  // Until `ip` has entered the namespace and exec'd, /proc/<pid>/net is still the root namespace's.
  await waitForOrExit(p, () => commOf(p.pid) === 'sleep', 10_000, `sleep process inside ${netns}`);
  return p;
}

function commOf(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return '';
  }
}

/** Polls `probe` until it holds; gives up at once, with the process's output, if the process exits. */
async function waitForOrExit(p: BenchProcess, probe: () => boolean, timeoutMs: number, what: string): Promise<void> {
  let exited: number | string | undefined;
  void p.proc.exited.then((s) => (exited = s));
  const deadline = Date.now() + timeoutMs;
  while (!probe()) {
    if (exited !== undefined) throw new Error(`${p.label} exited (${exited}) while waiting for ${what}:\n${p.tail()}`);
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(100);
  }
}
