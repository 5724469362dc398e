// Relay throughput, side by side with DPDK's own relay (dpdk-testpmd net_vhost ⇄ net_af_packet or
// net_af_xdp), each with the same kind of VF port as ours.
// Runs from dist/ as root:   npx tsc -p . && node dist/bench/relay.js [options]   (--help)
//
// The relay (ours or DPDK's) runs on one CPU and one traffic process on the other, so only two
// pollers share the two CPUs (perf-anchors.md §6). tx = VM→VF: virtio-user txonly → relay → vethA →
// vethB, counted on vethB. rx = VF→VM: one testpmd injects on vethB and counts what its virtio-user
// port receives. The relays alternate inside every round so drift in the machine's load hits all
// of them alike; foreign CPU (work the bench did not start) is measured in every window.
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { isRoot, findBinary } from '../test/support/env.js';
import { ensureHugepages, hugepagesFree } from '../test/support/hugepages.js';
import { cpuSnapshot, cpuWindow, processUsage, type CpuSnapshot } from './lib/cpu.js';
import {
  killAllBenchProcessesNow,
  RX_ENDPOINT_PORTS,
  startDpdkMemifRelay,
  startDpdkRelay,
  startMemifEndpoint,
  MEMIF_ENDPOINT_PORTS,
  startNamespaceAnchor,
  startOurRelay,
  startRxEndpoint,
  startTxSource,
  stopAllBenchProcesses,
  testpmdMemoryMb,
  type BenchProcess,
  type RelayUnderTest,
  type TestpmdProcess,
} from './lib/launch.js';
import { formatForeign, formatTable, isDpdk, isMemif, summarize, type Direction, type FailedRun, type RelayKind, type RunRecord } from './lib/report.js';
import { meanRate } from './lib/testpmd-stats.js';
import { dpdkDrops, formatLossTable, lossByCause, ourDropCounters, type LossByCause } from './lib/loss-causes.js';
import { foreignPacketDrops } from './lib/foreign-packet-drops.js';
import { parseForwardStats } from '../test/support/testpmd.js';
import { relayBuild } from './lib/build-info.js';
import { createTopology, deleteTopology, limitVethBRate, nsLinkCounters, rootLinkCounters, setTopologyMtu, topologyNames, type Topology } from './lib/topology.js';
import { isJumbo, parseOptions, USAGE, type BenchOptions } from './lib/options.js';
import { JUMBO_MTU } from '../vocabulary/limits.js';

const log = pino({ base: { bench: 'relay' } }, pino.destination(2));

/** Two testpmd processes at once, plus slack for EAL's own allocations (2 MiB pages). */
const hugepagesPerRun = (jumbo: boolean) => 2 * (testpmdMemoryMb(jumbo) / 2) + 16;

class Aborted extends Error {}
const abort = new AbortController();

function pause(ms: number): Promise<void> {
  return new Promise((resolve, reject) => {
    if (abort.signal.aborted) return reject(new Aborted('interrupted'));
    const onAbort = () => {
      clearTimeout(t);
      reject(new Aborted('interrupted'));
    };
    const t = setTimeout(() => {
      abort.signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    abort.signal.addEventListener('abort', onAbort, { once: true });
  });
}

interface Bench {
  opts: BenchOptions;
  topo: Topology;
  anchor: BenchProcess;
  socketDir: string;
}

/** Waits (up to --quiet-wait) for a second in which foreign CPU stays under --max-foreign. */
async function waitForQuiet(b: Bench): Promise<number> {
  const deadline = Date.now() + b.opts.quietWaitSeconds * 1000;
  for (;;) {
    const a = cpuSnapshot();
    await pause(1000);
    const w = cpuWindow(a, cpuSnapshot(), [process.pid, b.anchor.pid]);
    if (w.foreignPercent <= b.opts.maxForeign) return w.foreignPercent;
    if (Date.now() >= deadline) {
      log.warn({ foreign: Math.round(w.foreignPercent), top: w.topForeign }, 'machine not quiet; measuring anyway (the run will show its foreign CPU)');
      return w.foreignPercent;
    }
  }
}

async function waitForHugepages(jumbo: boolean): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (hugepagesFree() < hugepagesPerRun(jumbo)) {
    if (Date.now() > deadline) {
      throw new Error(`hugepages: ${hugepagesFree()} free 2 MiB pages, a run needs ${hugepagesPerRun(jumbo)} (others are using them)`);
    }
    await pause(1000);
  }
}

/** The memif relays' control socket: the relay under test listens, the traffic process connects. */
const memifSocket = (b: Bench) => join(b.socketDir, 'memif.sock');

function startRelay(b: Bench, kind: RelayKind, jumbo: boolean): Promise<RelayUnderTest> {
  if (kind === 'dpdk-memif') return startDpdkMemifRelay({ cpu: b.opts.relayCpu, socketDir: b.socketDir, memifSocket: memifSocket(b) });
  if (isMemif(kind)) {
    return startOurRelay({ vf: b.topo.vethA, cpu: b.opts.relayCpu, pollMode: kind.slice(0, -6) as 'busy' | 'adaptive', pin: b.opts.pinRelay, memifSocket: memifSocket(b) });
  }
  if (isDpdk(kind)) return startDpdkRelay({ vf: b.topo.vethA, cpu: b.opts.relayCpu, socketDir: b.socketDir, xdp: kind === 'dpdk-xdp', jumbo });
  const xdp = kind.endsWith('-xdp');
  return startOurRelay({
    vf: b.topo.vethA,
    cpu: b.opts.relayCpu,
    pollMode: xdp ? (kind.slice(0, -4) as 'busy' | 'adaptive') : (kind as 'busy' | 'adaptive'),
    pin: b.opts.pinRelay,
    jumbo,
    config: [`VIRTIOFWD_VF_PORT=${xdp ? 'af_xdp' : 'af_packet'}`, ...(xdp ? [`VIRTIOFWD_XDP_UMEM=${b.opts.xdpUmem}`, `VIRTIOFWD_XDP_RX=${b.opts.xdpRx}`] : [])],
  });
}

function startTraffic(b: Bench, direction: Direction, size: number, socketPath: string, kind: RelayKind): TestpmdProcess {
  if (isMemif(kind)) return startMemifEndpoint({ direction, socketPath, memifSocket: memifSocket(b), size, cpu: b.opts.trafficCpu, packed: b.opts.packed });
  const jumbo = isJumbo(size);
  if (direction === 'tx') return startTxSource({ socketPath, size, cpu: b.opts.trafficCpu, packed: b.opts.packed, jumbo });
  if (b.opts.rxRateMpps !== null) limitVethBRate(b.topo, b.opts.rxRateMpps, size);
  return startRxEndpoint({ socketPath, size, cpu: b.opts.trafficCpu, netns: b.topo.ns, vethB: b.topo.vethB, throughQdisc: b.opts.rxRateMpps !== null, packed: b.opts.packed, jumbo });
}

const vethBRx = (b: Bench) => nsLinkCounters(b.anchor.pid, b.topo.vethB).rxPackets;
const vethARx = (b: Bench) => rootLinkCounters(b.topo.vethA).rxPackets;

/** Waits until frames come out of the far end; says which hop stayed silent if they never do. */
async function waitForFlow(b: Bench, direction: Direction, relay: RelayUnderTest, traffic: TestpmdProcess, memif = false): Promise<void> {
  const deadline = Date.now() + 30_000;
  const vethB0 = vethBRx(b);
  const vethA0 = vethARx(b);
  for (;;) {
    if (memif) {
      if ((traffic.stats.latest(MEMIF_ENDPOINT_PORTS.delivered)?.rxPackets ?? 0) >= 1000) return;
    } else if (direction === 'tx' ? vethBRx(b) - vethB0 >= 1000 : (traffic.stats.latest(RX_ENDPOINT_PORTS.virtio)?.rxPackets ?? 0) >= 1000) return;
    for (const p of [relay, traffic]) {
      const status = await Promise.race([p.proc.exited, pause(0).then(() => undefined)]);
      if (status !== undefined) throw new Error(`${p.label} exited (${status}) before traffic flowed:\n${p.tail()}`);
    }
    if (Date.now() > deadline && memif) {
      throw new Error(`${relay.label}: no ${direction} traffic through memif in 30 s\nrelay output:\n${relay.tail(1500)}\ntraffic output:\n${traffic.tail(1500)}`);
    }
    if (Date.now() > deadline) {
      const reachedRelay = vethARx(b) - vethA0;
      const why =
        direction === 'tx'
          ? `vethB ${b.topo.vethB} received ${vethBRx(b) - vethB0} frames in 30 s (source Tx-pps ${traffic.stats.latest(0)?.txPps ?? 'unknown'})`
          : `${reachedRelay} frames reached the relay's VF ${b.topo.vethA} but the virtio-user port received ` +
            `${traffic.stats.latest(RX_ENDPOINT_PORTS.virtio)?.rxPackets ?? 0}` +
            (reachedRelay > 0 ? ' (the injected frames are zero-filled net_null frames: dst MAC 00:00:00:00:00:00, ethertype 0; a relay must forward them)' : '');
      throw new Error(`${relay.label}: no ${direction} traffic: ${why}\nrelay output:\n${relay.tail(1500)}\ntraffic output:\n${traffic.tail(1500)}`);
    }
    await pause(200);
  }
}

async function measureOnce(b: Bench, direction: Direction, size: number, kind: RelayKind, run: number): Promise<Omit<RunRecord, 'attempts'>> {
  const jumbo = isJumbo(size);
  await waitForHugepages(jumbo);
  await waitForQuiet(b);
  const build = isDpdk(kind) ? null : relayBuild();
  // Before the relay starts: DPDK's relay keeps the VF's MTU, ours raises it to 9000 with JUMBO
  // and gives back, when it ends, what it found.
  setTopologyMtu(b.topo, jumbo ? JUMBO_MTU : 1500);
  const relay = await startRelay(b, kind, jumbo);
  let traffic: TestpmdProcess | null = null;
  let stopped = false;
  try {
    // Whole-run counts: the loss figure compares exact packet counts, not two sampled rates.
    const vethBRun = vethBRx(b);
    const vethARun = vethARx(b);
    const memif = isMemif(kind);
    traffic = startTraffic(b, direction, size, relay.socketPath, kind);
    await waitForFlow(b, direction, relay, traffic, memif);
    await pause(b.opts.warmupSeconds * 1000);

    const ours = [process.pid, b.anchor.pid, relay.pid, traffic.pid];
    const cpuA: CpuSnapshot = cpuSnapshot();
    const tA = performance.now();
    const vethBA = vethBRx(b);
    const vethAA = vethARx(b);
    await pause(b.opts.windowSeconds * 1000);
    const cpuB = cpuSnapshot();
    const tB = performance.now();
    const vethBB = vethBRx(b);
    const vethAB = vethARx(b);
    // Let the per-second sample that closes the window arrive.
    await pause(300);

    const seconds = (tB - tA) / 1000;
    const cpu = cpuWindow(cpuA, cpuB, ours);
    const relayCpu = processUsage(cpuA, cpuB, relay.pid);
    const trafficCpu = processUsage(cpuA, cpuB, traffic.pid);
    if (!relayCpu || !trafficCpu) {
      const gone = relayCpu ? traffic : relay;
      const status = await Promise.race([gone.proc.exited, pause(2000).then(() => 'still running?')]);
      throw new Error(`${gone.label} (pid ${gone.pid}) exited during the window (status ${status}):\n${gone.tail(3000)}`);
    }
    // A testpmd sample covers the second before it arrived: take those that lie inside the window.
    const inWindow = (port: number) => traffic!.stats.between(port, tA + 900, tB + 300);
    let deliveredPps: number;
    let offeredPps: number | null;
    let injectedPps: number | null = null;
    if (memif) {
      // Both ends are ports of the traffic process: its own per-second rates, both ways.
      const rx = meanRate(inWindow(MEMIF_ENDPOINT_PORTS.delivered), 'rxPps');
      if (rx === null) throw new Error(`memif endpoint printed no statistics for its receiving port during the ${seconds.toFixed(1)} s window`);
      deliveredPps = rx;
      offeredPps = meanRate(inWindow(MEMIF_ENDPOINT_PORTS.offered), 'txPps');
    } else if (direction === 'tx') {
      deliveredPps = (vethBB - vethBA) / seconds;
      offeredPps = meanRate(inWindow(0), 'txPps');
    } else {
      const rx = meanRate(inWindow(RX_ENDPOINT_PORTS.virtio), 'rxPps');
      if (rx === null) throw new Error(`rx-endpoint printed no statistics for its virtio-user port during the ${seconds.toFixed(1)} s window`);
      deliveredPps = rx;
      offeredPps = (vethAB - vethAA) / seconds;
      injectedPps = meanRate(inWindow(RX_ENDPOINT_PORTS.injector), 'txPps');
    }

    await traffic.stop();
    stopped = true;
    await pause(200); // frames still in the relay's rings reach the far end
    const final = parseForwardStats(traffic.proc.output());
    const port = (n: number) => final.find((p) => p.port === n);
    let runTotals: RunRecord['runTotals'] = null;
    if (memif && port(MEMIF_ENDPOINT_PORTS.offered) && port(MEMIF_ENDPOINT_PORTS.delivered)) {
      runTotals = { offered: port(MEMIF_ENDPOINT_PORTS.offered)!.txPackets, delivered: port(MEMIF_ENDPOINT_PORTS.delivered)!.rxPackets };
    } else if (memif) {
      runTotals = null;
    } else if (direction === 'tx' && port(0)) {
      runTotals = { offered: port(0)!.txPackets, delivered: vethBRx(b) - vethBRun };
    } else if (direction === 'rx' && port(RX_ENDPOINT_PORTS.virtio)) {
      runTotals = { offered: vethARx(b) - vethARun, delivered: port(RX_ENDPOINT_PORTS.virtio)!.rxPackets };
    }
    if (!runTotals) log.warn({ relay: kind, direction, size }, 'traffic testpmd printed no final forward statistics; no loss figure for this run');
    let causes: LossByCause | null = null;
    if (direction === 'rx' && runTotals && !memif) {
      try {
        if (relay.statsEp) {
          const c = await ourDropCounters(relay.statsEp, 1);
          causes = lossByCause({ entered: runTotals.offered, delivered: runTotals.delivered, kernelRing: c.kernelRing, kernelRingGuestNoBuffers: c.kernelRingGuestNoBuffers, guestRingFull: c.queueFull, badFrame: c.bad, notConnected: c.notConnected, leftInGuestRing: c.packets - runTotals.delivered });
        } else {
          const kernelRing = foreignPacketDrops(relay.pid);
          await relay.stop(); // testpmd prints its final statistics on SIGTERM
          const d = dpdkDrops(relay.proc.output());
          if (d) causes = lossByCause({ entered: runTotals.offered, delivered: runTotals.delivered, kernelRing: kernelRing + d.afPacketRxDropped, kernelRingGuestNoBuffers: null, guestRingFull: d.vhostTxDropped, badFrame: null, notConnected: null, leftInGuestRing: d.vhostTxPackets - runTotals.delivered });
        }
      } catch (err) {
        log.warn({ relay: kind, err: (err as Error).message }, 'no loss-by-cause figures for this run');
      }
    }
    const lossPercent = runTotals && runTotals.offered > 0 ? (1 - runTotals.delivered / runTotals.offered) * 100 : null;
    return {
      direction,
      size,
      relay: kind,
      run,
      windowSeconds: seconds,
      deliveredPps,
      offeredPps,
      injectedPps,
      runTotals,
      lossPercent,
      lossByCause: causes,
      relayBuild: build,
      relayCpu,
      trafficCpu,
      foreignCpu: cpu.foreignPercent,
      stealCpu: cpu.stealPercent,
      busyCpu: cpu.busyPercent,
      topForeign: cpu.topForeign,
      contaminated: cpu.foreignPercent > b.opts.maxForeign,
    };
  } finally {
    if (!stopped) await traffic?.stop();
    await relay.stop();
  }
}

/** One run of one case; re-done up to --redo times when foreign CPU spoiled it (the cleanest attempt is kept). */
async function measure(b: Bench, direction: Direction, size: number, kind: RelayKind, run: number): Promise<RunRecord> {
  let best: Omit<RunRecord, 'attempts'> | null = null;
  let attempts = 0;
  while (attempts <= b.opts.redo) {
    attempts++;
    const r = await measureOnce(b, direction, size, kind, run);
    if (!best || r.foreignCpu < best.foreignCpu) best = r;
    if (!r.contaminated) break;
    if (attempts <= b.opts.redo) log.info({ direction, size, relay: kind, foreign: Math.round(r.foreignCpu) }, 're-doing a run spoiled by foreign CPU');
  }
  return { ...best!, attempts };
}

function checkPrerequisites(): void {
  const missing: string[] = [];
  if (!isRoot()) missing.push('root (network namespaces, AF_PACKET, hugepages)');
  for (const bin of ['dpdk-testpmd', 'ip', 'taskset', 'sysctl']) if (!findBinary(bin)) missing.push(`the program ${bin}`);
  if (missing.length) throw new Error(`relay bench needs ${missing.join(', ')}`);
}

interface SavedResults {
  started: string;
  options: BenchOptions;
  runs: RunRecord[];
  failures: FailedRun[];
}

function printResults(saved: SavedResults, interrupted = false): void {
  const { options: opts, runs: records, failures } = saved;
  const summaries = summarize(records);
  const header =
    `relay bench ${saved.started}: ${opts.runs} run(s), ${opts.warmupSeconds} s warm-up, ${opts.windowSeconds} s window, ` +
    `relay on CPU ${opts.relayCpu}, traffic on CPU ${opts.trafficCpu}` +
    `${opts.rxRateMpps ? `, rx offered at most ${opts.rxRateMpps} Mpps (tbf on vethB)` : ''}${opts.packed ? ', packed virtqueues' : ''}${interrupted ? ' (INTERRUPTED: partial results)' : ''}`;
  const builds = [...new Set(records.filter((r) => r.relayBuild).map((r) => `commit ${r.relayBuild!.commit}, dist compiled ${r.relayBuild!.compiledAt}`))];
  const buildLine =
    builds.length <= 1
      ? `our relay: ${builds[0] ?? 'not run'}`
      : `our relay was RECOMPILED during the bench: ${builds.length} builds, from ${builds[0]} to ${builds[builds.length - 1]} (each run's in --json)`;
  process.stdout.write(`${header}\n${buildLine}\n${formatTable(summaries)}\n`);
  process.stdout.write(
    `CPU: % of one core over the window. foreign = all CPU time minus the bench's processes; '!' = a run above ${opts.maxForeign} %.\n` +
      `${formatForeign(records)}\n`,
  );
  const lossRows = records
    .filter((r) => r.lossByCause)
    .map((r) => ({ relay: isDpdk(r.relay) ? `DPDK ${r.relay === 'dpdk' ? 'af_packet' : 'af_xdp'}` : `ours ${r.relay}`, size: r.size, run: r.run, loss: r.lossByCause! }));
  if (lossRows.length > 0) process.stdout.write(`rx loss by cause (whole runs; frames that entered the VF):\n${formatLossTable(lossRows)}\n`);
  for (const f of failures) process.stdout.write(`FAILED ${f.direction} ${f.size} ${f.relay} run ${f.run}: ${f.error.split('\n')[0]}\n`);
}

async function main(): Promise<number> {
  let opts: BenchOptions;
  try {
    opts = parseOptions(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (opts.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (opts.summarizePath) {
    let saved: SavedResults;
    try {
      saved = JSON.parse(readFileSync(opts.summarizePath, 'utf8')) as SavedResults;
    } catch (err) {
      process.stderr.write(`relay bench: cannot read ${opts.summarizePath}: ${(err as Error).message}\n`);
      return 2;
    }
    if (!Array.isArray(saved?.runs) || !saved.options) {
      process.stderr.write(`relay bench: ${opts.summarizePath} is not a file written by --json (no runs or options)\n`);
      return 2;
    }
    printResults(saved);
    return 0;
  }
  checkPrerequisites();
  ensureHugepages(768);

  const topo = topologyNames(`${process.pid % 100000}`);
  const socketDir = mkdtempSync(join(tmpdir(), 'vbench-'));
  mkdirSync(socketDir, { recursive: true });
  const cleanup = async () => {
    await stopAllBenchProcesses();
    const left = deleteTopology(topo);
    rmSync(socketDir, { recursive: true, force: true });
    if (left.length) log.error({ left }, 'could not remove everything');
  };
  // Last line of defence: whatever path the process takes out, no poller and no veth stays behind.
  process.on('exit', () => {
    killAllBenchProcessesNow();
    deleteTopology(topo);
  });
  let interrupted = false;
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.on(sig, () => {
      if (interrupted) {
        process.exit(130); // second signal: the exit handler kills by PID
      }
      interrupted = true;
      log.warn({ signal: sig }, 'stopping: ending every process the bench started and removing its veths');
      abort.abort();
    });
  }

  const records: RunRecord[] = [];
  const failures: FailedRun[] = [];
  const relays: RelayKind[] = opts.vfPorts.flatMap((port) => {
    const suffix = port === 'af_xdp' ? '-xdp' : port === 'memif' ? '-memif' : '';
    return [...(opts.dpdk ? [`dpdk${suffix}`] : []), ...opts.modes.map((m) => `${m}${suffix}`)] as RelayKind[];
  });
  const started = new Date();
  try {
    createTopology(topo);
    const anchor = await startNamespaceAnchor(topo.ns);
    const b: Bench = { opts, topo, anchor, socketDir };
    log.info({ topology: topo, relays, sizes: opts.sizes, directions: opts.directions, runs: opts.runs, xdpUmem: opts.xdpUmem, xdpRx: opts.xdpRx }, 'relay bench starting');
    for (let run = 1; run <= opts.runs; run++) {
      for (const direction of opts.directions) {
        for (const size of opts.sizes) {
          for (const relay of relays) {
            if (relay === 'dpdk-xdp' && isJumbo(size)) {
              if (run === 1) log.info({ direction, size }, "DPDK's af_xdp relay left out: DPDK 22.11's net_af_xdp has no jumbo frames");
              continue;
            }
            try {
              const r = await measure(b, direction, size, relay, run);
              records.push(r);
              log.info(
                {
                  run,
                  direction,
                  size,
                  relay,
                  mpps: +(r.deliveredPps / 1e6).toFixed(4),
                  offeredMpps: r.offeredPps === null ? null : +(r.offeredPps / 1e6).toFixed(4),
                  relayCpu: `${r.relayCpu.user.toFixed(0)}+${r.relayCpu.system.toFixed(0)}`,
                  foreign: Math.round(r.foreignCpu),
                  steal: Math.round(r.stealCpu),
                },
                'run done',
              );
            } catch (err) {
              if (err instanceof Aborted) throw err;
              const message = (err as Error).message;
              failures.push({ direction, size, relay, run, error: message });
              log.error({ run, direction, size, relay, err: message }, 'run failed');
            }
          }
        }
      }
    }
  } catch (err) {
    if (!(err instanceof Aborted)) throw err;
  } finally {
    await cleanup();
  }

  printResults({ started: started.toISOString(), options: opts, runs: records, failures }, interrupted);
  if (opts.jsonPath) {
    const summaries = summarize(records);
    writeFileSync(opts.jsonPath, `${JSON.stringify({ started: started.toISOString(), options: opts, summaries, runs: records, failures }, null, 2)}\n`);
  }
  return interrupted ? 130 : failures.length ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`relay bench: ${(err as Error).stack ?? err}\n`);
    process.exit(1);
  },
);
