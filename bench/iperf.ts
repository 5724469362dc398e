// Guest TCP throughput through a relay, measured with Debian's iperf3 between a QEMU guest (TCG,
// the test guest with iperf3 added) and an iperf3 server in a network namespace behind the VF
// stand-in (a veth pair), for three relays in the same run:
//   ours        vio4wd with VIRTIOFWD_TSO=y: the guest negotiates checksum and TSO offloads both
//               ways, so its TCP moves 64 KiB segments through the relay;
//   ours-plain  vio4wd without offloads: MTU-sized frames from the guest, and the host's TSO
//               super-frames cut into segments by the relay;
//   dpdk        DPDK's relay (dpdk-testpmd net_vhost ⇄ net_af_packet, io forwarding), which cannot
//               pass offloads: the guest's offloads are off, and the host's veth end has checksum
//               offload, TSO and GSO off, without which its frames would reach the guest with
//               checksums left open, or cut short in net_af_packet's 2 KiB frames.
// tx = guest → namespace (iperf3 client in the guest), rx = namespace → guest (iperf3 -R).
// The relay runs on one CPU, QEMU on the other. Runs from dist/ as root:
//   npx tsc -p . && node dist/bench/iperf.js [options]   (--help)
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { findBinary, isRoot, run as runCommand } from '../test/support/env.js';
import { startGuestVm, type GuestVm } from '../test/support/qemu.js';
import { createTopology, deleteTopology, topologyNames, type Topology } from './lib/topology.js';
import { killAllBenchProcessesNow, startDpdkRelay, startOurRelay, stopAllBenchProcesses, type OurPollMode, type RelayUnderTest } from './lib/launch.js';
import { readProcessTimes, CLOCK_TICKS_PER_SECOND } from './lib/cpu.js';
import { ensureIperfGuestImage } from './lib/iperf-guest.js';
import { list, positive } from './lib/options.js';
import { relayBuild } from './lib/build-info.js';
import { ourDropCounters } from './lib/loss-causes.js';
import { median } from './lib/report.js';
import { startProcess, type StartedProcess } from '../test/support/processes.js';

const log = pino({ base: { bench: 'iperf' } }, pino.destination(2));

const RELAYS = ['ours', 'ours-plain', 'dpdk'] as const;
type Relay = (typeof RELAYS)[number];
const DIRECTIONS = ['tx', 'rx'] as const;
type Direction = (typeof DIRECTIONS)[number];

const USAGE = `usage: node dist/bench/iperf.js [options]      (as root, after npx tsc -p .)

Guest TCP throughput (iperf3) through vio4wd with offloads (ours), vio4wd without (ours-plain)
and DPDK's relay (dpdk-testpmd net_vhost ⇄ net_af_packet, which passes no offload), with the
same QEMU guest (TCG) in the same run. tx = guest to namespace, rx = namespace to guest.

  --runs N            iperf3 runs per case; the table shows the median (default 2)
  --time S            seconds per iperf3 run (default 10)
  --relays LIST       ours,ours-plain,dpdk (default all three)
  --directions LIST   tx,rx (default both)
  --relay-cpu N       CPU of the relay (default 0)
  --guest-cpu N       CPU of QEMU (default 1)
  --poll-mode MODE    our relay's poll mode, busy or adaptive (default busy, as DPDK's relay polls)
  -h, --help          this text

Columns: Gbit/s = iperf3's receiver rate (median, min-max); retr = TCP retransmissions the
sender counted (median); relay CPU, QEMU CPU = user+system time of the relay process and of
QEMU during the run, % of one core; ours/DPDK = ratio of the medians; relay drops = frames our
relay took from the VF (or the VF's kernel ring refused) and could not give the guest, per run
(median; DPDK's relay reports none per run).
`;

interface Options {
  runs: number;
  seconds: number;
  relays: Relay[];
  directions: Direction[];
  relayCpu: number;
  guestCpu: number;
  pollMode: OurPollMode;
}

function parse(argv: string[]): Options | null {
  const o: Options = { runs: 2, seconds: 10, relays: [...RELAYS], directions: [...DIRECTIONS], relayCpu: 0, guestCpu: 1, pollMode: 'busy' };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => argv[++i];
    if (a === '-h' || a === '--help') return null;
    else if (a === '--runs') o.runs = positive(a, value(), { integer: true });
    else if (a === '--time') o.seconds = positive(a, value(), { integer: true });
    else if (a === '--relays') o.relays = list(a, value(), RELAYS);
    else if (a === '--directions') o.directions = list(a, value(), DIRECTIONS);
    else if (a === '--relay-cpu') o.relayCpu = positive(a, value(), { integer: true, zero: true });
    else if (a === '--guest-cpu') o.guestCpu = positive(a, value(), { integer: true, zero: true });
    else if (a === '--poll-mode') o.pollMode = list(a, value(), ['busy', 'adaptive'] as const)[0];
    else throw new Error(`unknown option ${a} (see --help)`);
  }
  return o;
}

const HOST_IP = '10.78.0.1';
const GUEST_IP = '10.78.0.2';

interface Result {
  relay: Relay;
  direction: Direction;
  run: number;
  gbps: number;
  retransmits: number;
  relayCpu: number;
  /** QEMU's CPU time during the run, % of one core (TCG runs the guest on one thread per vCPU). */
  guestCpu: number;
  /** Our relay, rx: frames from the VF it could not give the guest (VF ring full + guest ring full); null for DPDK's. */
  relayDrops: number | null;
}

/** The relay process's CPU time in seconds (user + system), or 0 when it is gone. */
function cpuSeconds(pid: number): number {
  const t = readProcessTimes(pid);
  return t ? (t.utime + t.stime) / CLOCK_TICKS_PER_SECOND : 0;
}

async function startRelay(relay: Relay, topo: Topology, o: Options, socketDir: string): Promise<RelayUnderTest> {
  if (relay === 'dpdk') return startDpdkRelay({ vf: topo.vethA, cpu: o.relayCpu, socketDir });
  return startOurRelay({ vf: topo.vethA, cpu: o.relayCpu, pollMode: o.pollMode, pin: true, config: relay === 'ours' ? ['VIRTIOFWD_TSO=y'] : [] });
}

/** Our relay's VF→VM drops so far (VF ring full + guest ring full), from its stats service; null for DPDK's. */
async function relayDrops(relay: RelayUnderTest): Promise<number | null> {
  if (!relay.statsEp) return null;
  const c = await ourDropCounters(relay.statsEp, 1);
  return c.kernelRing + c.queueFull;
}

/**
 * Offloads of the namespace's veth end. DPDK's relay needs what a wire would carry: frames of at
 * most the MTU (its net_af_packet frames are 2 KiB) with complete checksums (it forwards a
 * frame's bytes as they are, and the host's stack leaves checksums to the device).
 */
function hostOffloads(topo: Topology, on: boolean): void {
  const state = on ? 'on' : 'off';
  runCommand('ip', ['netns', 'exec', topo.ns, 'ethtool', '-K', topo.vethB, 'tx', state, 'tso', state, 'gso', state]);
}

async function measureRelay(relay: Relay, topo: Topology, o: Options, socketDir: string, results: Result[]): Promise<void> {
  if (relay === 'dpdk') hostOffloads(topo, false);
  let relayProcess: RelayUnderTest | null = null;
  let vm: GuestVm | null = null;
  try {
    relayProcess = await startRelay(relay, topo, o, socketDir);
    vm = await startGuestVm({
      image: await ensureIperfGuestImage(),
      memoryBackend: 'memfd',
      vhostUser: { socketPath: relayProcess.socketPath, offloads: relay === 'ours' },
      ip: `${GUEST_IP}/24`,
      mac: '52:54:00:78:00:02',
      cpu: o.guestCpu,
      label: `guest-${relay}`,
      echo: false,
    });
    await vm.ready(240_000);
    const ping = await vm.exec(`ping -c 3 -W 2 ${HOST_IP}`, 30_000);
    if (ping.status !== 0) throw new Error(`the guest cannot reach the host through ${relay}: ${ping.output}`);
    for (let run = 1; run <= o.runs; run++) {
      for (const direction of o.directions) {
        const dropsBefore = await relayDrops(relayProcess);
        const before = cpuSeconds(relayProcess.pid);
        const guestBefore = cpuSeconds(vm.pid);
        const started = Date.now();
        const r = await vm.exec(`iperf3 -c ${HOST_IP} -t ${o.seconds} -J${direction === 'rx' ? ' -R' : ''}`, (o.seconds + 60) * 1000);
        const elapsed = (Date.now() - started) / 1000;
        const cpu = (100 * (cpuSeconds(relayProcess.pid) - before)) / elapsed;
        const guestCpu = (100 * (cpuSeconds(vm.pid) - guestBefore)) / elapsed;
        const dropsAfter = await relayDrops(relayProcess);
        if (r.status !== 0) throw new Error(`iperf3 in the guest failed (${relay}, ${direction}): ${r.output.slice(-2000)}`);
        const report = JSON.parse(r.output.slice(r.output.indexOf('{'))) as { end: { sum_received: { bits_per_second: number }; sum_sent: { retransmits?: number } } };
        const result: Result = { relay, direction, run, gbps: report.end.sum_received.bits_per_second / 1e9, retransmits: report.end.sum_sent.retransmits ?? 0, relayCpu: cpu, guestCpu,
          relayDrops: dropsBefore === null || dropsAfter === null ? null : dropsAfter - dropsBefore };
        results.push(result);
        log.info({ ...result, gbps: +result.gbps.toFixed(3), relayCpu: Math.round(cpu), guestCpu: Math.round(guestCpu) }, 'run done');
      }
    }
  } finally {
    await vm?.stop();
    await relayProcess?.stop();
    if (relay === 'dpdk') hostOffloads(topo, true);
  }
}

function table(results: Result[], o: Options): string {
  const lines = ['dir  relay       Gbit/s median  (min-max)      retr  relay CPU %  QEMU CPU %  ours/DPDK  relay drops'];
  for (const direction of o.directions) {
    const dpdk = median(results.filter((r) => r.relay === 'dpdk' && r.direction === direction).map((r) => r.gbps));
    for (const relay of o.relays) {
      const rs = results.filter((r) => r.relay === relay && r.direction === direction);
      if (rs.length === 0) {
        lines.push(`${direction.padEnd(4)} ${relay.padEnd(11)} (no run finished)`);
        continue;
      }
      const g = rs.map((r) => r.gbps);
      const m = median(g);
      const ratio = relay !== 'dpdk' && Number.isFinite(dpdk) ? `${(m / dpdk).toFixed(2)}` : '';
      lines.push(
        `${direction.padEnd(4)} ${relay.padEnd(11)} ${m.toFixed(3).padStart(13)}  (${Math.min(...g).toFixed(3)}-${Math.max(...g).toFixed(3)})`.padEnd(48) +
          `${String(Math.round(median(rs.map((r) => r.retransmits)))).padStart(5)}  ${String(Math.round(median(rs.map((r) => r.relayCpu)))).padStart(11)}  ` +
          `${String(Math.round(median(rs.map((r) => r.guestCpu)))).padStart(10)}  ${ratio.padStart(9)}  ` +
          `${rs[0].relayDrops === null ? '-' : String(Math.round(median(rs.map((r) => r.relayDrops ?? 0))))}`.padStart(11),
      );
    }
  }
  return lines.join('\n');
}

async function main(): Promise<number> {
  let o: Options | null;
  try {
    o = parse(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`iperf bench: ${(err as Error).message}\n`);
    return 2;
  }
  if (o === null) {
    process.stdout.write(USAGE);
    return 0;
  }
  const missing = ['qemu-system-x86_64', 'iperf3', 'ethtool', ...(o.relays.includes('dpdk') ? ['dpdk-testpmd'] : [])].filter((b) => !findBinary(b));
  if (!isRoot() || missing.length > 0) {
    process.stderr.write(`iperf bench: needs root and ${missing.join(', ') || 'nothing else'} (scripts/setup.sh installs them)\n`);
    return 2;
  }
  const topo = topologyNames(`i${process.pid % 10000}`);
  const socketDir = mkdtempSync(join(tmpdir(), 'vbench-iperf-'));
  let server: StartedProcess | null = null;
  process.on('exit', () => {
    killAllBenchProcessesNow();
    deleteTopology(topo);
  });
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => process.exit(130));
  const results: Result[] = [];
  const failures: string[] = [];
  const started = new Date();
  try {
    createTopology(topo);
    runCommand('ip', ['-n', topo.ns, 'addr', 'add', `${HOST_IP}/24`, 'dev', topo.vethB]);
    server = startProcess('ip', ['netns', 'exec', topo.ns, 'iperf3', '-s', '-B', HOST_IP], { label: 'iperf3-server', echo: false });
    log.info({ topology: topo, relays: o.relays, directions: o.directions, runs: o.runs, seconds: o.seconds }, 'iperf bench starting');
    for (const relay of o.relays) {
      try {
        await measureRelay(relay, topo, o, socketDir, results);
      } catch (err) {
        failures.push(`${relay}: ${(err as Error).message}`);
        log.error({ relay, err: (err as Error).message }, 'relay failed');
      }
    }
  } finally {
    await server?.stop();
    await stopAllBenchProcesses();
    deleteTopology(topo);
    rmSync(socketDir, { recursive: true, force: true });
  }
  const build = relayBuild();
  process.stdout.write(
    `iperf bench ${started.toISOString()}: ${o.runs} run(s) of ${o.seconds} s, relay on CPU ${o.relayCpu}, QEMU (TCG) on CPU ${o.guestCpu}\n` +
      `our relay: commit ${build.commit}, dist compiled ${build.compiledAt}\n${table(results, o)}\n` +
      (failures.length ? `failed:\n${failures.map((f) => `  ${f}`).join('\n')}\n` : ''),
  );
  return failures.length ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`iperf bench: ${(err as Error).stack ?? err}\n`);
    process.exit(1);
  },
);
