// Control-plane latency (not a test): how long from a port-control command to the first frame the
// relay forwards through the port it added. Goals from the port-control issue: 50 ms for a ZMQ
// `add`, 200 ms for an OVSDB tag. Runs from dist/ as root:
//
//   npx tsc -p . && node dist/bench/control-latency.js [--rounds 7]
//
// dpdk-testpmd's virtio-user (txonly, CPU 1) is connected to relay 1 the whole time, so frames wait
// in its TX ring; the relay (one worker, CPU 0) drops them while relay 1 has no VF. The clock starts
// just before the command leaves this process (ZMQ request; ovs-vsctl spawn) and stops when the
// VF's tx_packets counter moves, read from sysfs in a loop that yields to I/O between reads.
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { ControlClient } from '../port-control/client.js';
import { findBinary, isRoot, run } from '../test/support/env.js';
import { createFakeSysfs } from '../test/support/fake-sysfs.js';
import { createNetns, createVethPair, deleteLink, deleteNetns, nsExec } from '../test/support/netns.js';
import { missingOvsdbPrerequisite, OvsdbSandbox } from '../test/support/ovsdb.js';
import { sleep, startProcess, stopAll, waitFor, type StartedProcess } from '../test/support/processes.js';
import { testpmdArgs, virtioUserVdev } from '../test/support/testpmd.js';
import { median } from './lib/report.js';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const RELAY = 1;
const PCI = '0000:05:08.1';
const GOAL_ZMQ_MS = 50;
const GOAL_OVSDB_MS = 200;

function parseRounds(argv: string[]): number {
  let rounds = 7;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--rounds') {
      rounds = Number(argv[++i]);
      if (!Number.isInteger(rounds) || rounds < 1) throw new Error('--rounds needs a whole number ≥ 1');
    } else if (argv[i] === '--help' || argv[i] === '-h') {
      process.stdout.write('usage: node dist/bench/control-latency.js [--rounds N]\n');
      process.exit(0);
    } else throw new Error(`unknown argument ${argv[i]} (use --rounds N)`);
  }
  return rounds;
}

const txPackets = (ifname: string) => Number(readFileSync(`/sys/class/net/${ifname}/statistics/tx_packets`, 'utf8'));

/** Resolves with the time at which `ifname` sent its first frame after `baseline`. */
function firstFrameAfter(ifname: string, baseline: number, timeoutMs: number): Promise<number> {
  const deadline = performance.now() + timeoutMs;
  return new Promise((resolvePromise, reject) => {
    const check = () => {
      const now = performance.now();
      if (txPackets(ifname) > baseline) resolvePromise(now);
      else if (now > deadline) reject(new Error(`no frame left ${ifname} within ${timeoutMs} ms`));
      else setImmediate(check);
    };
    check();
  });
}

/** Waits until `ifname` has sent nothing for `quietMs` (the relay no longer forwards to it). */
async function waitQuiet(ifname: string, quietMs = 200): Promise<void> {
  await waitFor(
    async () => {
      const before = txPackets(ifname);
      await sleep(quietMs);
      return txPackets(ifname) === before;
    },
    10_000,
    `${ifname} to stop sending`,
    0,
  );
}

function startRelayProcess(dir: string, lines: string[]): Promise<StartedProcess> {
  mkdirSync(dir, { recursive: true });
  const config = join(dir, 'virtioforwarder');
  writeFileSync(
    config,
    [
      'VIRTIOFWD_CPU_MASK=0',
      'VIRTIOFWD_LOG_LEVEL=6',
      `VIRTIOFWD_SOCKET_DIR=${join(dir, 'sockets')}`,
      `VIRTIOFWD_PID_DIR=${dir}`,
      'VIRTIOFWD_POLL_MODE=adaptive',
      'VIRTIOFWD_ZMQ_STATS_EP=off',
      'VIRTIOFWD_ZMQ_CONFIG_EP=off',
      'VIRTIOFWD_ZMQ_CORE_SCHED_EP=off',
      'VIO4WD_CORE_SCHED_ENABLE=false',
      ...lines,
      '',
    ].join('\n'),
  );
  const relay = startProcess('node', [join(repoRoot, 'bin/virtio-forwarder'), '--config', config], { label: 'relay' });
  return relay.waitForOutput(/virtio-forwarder ready/, 20_000).then(() => relay);
}

function startVm(dir: string): StartedProcess {
  const path = join(dir, 'sockets', `virtio-forwarder${RELAY}.sock`);
  const args = testpmdArgs({ vdevs: [virtioUserVdev({ path, queueSize: 1024 })], forwardMode: 'txonly', txpkts: 64, cpu: 1 });
  return startProcess('dpdk-testpmd', args, { label: 'testpmd' });
}

async function zmqRounds(dir: string, vf: string, rounds: number): Promise<number[]> {
  const sysfs = createFakeSysfs({ devices: [{ pci: PCI, ifnames: [vf], physfn: '0000:05:00.0', vfIndex: 1 }] });
  const ep = `ipc://${dir}/port_control`;
  const relay = await startRelayProcess(dir, [`VIRTIOFWD_SYSFS_ROOT=${sysfs.root}`, `VIRTIOFWD_ZMQ_PORT_CONTROL_EP=${ep}`]);
  const vm = startVm(dir);
  const client = new ControlClient(ep, 5000);
  const results: number[] = [];
  /** When the add's reply arrived: the relay's own work, without the first frame's way out. */
  const replies: number[] = [];
  try {
    await vm.waitForOutput(/Port statistics/, 20_000);
    await sleep(500);
    for (let i = 0; i < rounds + 1; i++) {
      await waitQuiet(vf);
      const baseline = txPackets(vf);
      const t0 = performance.now();
      const first = firstFrameAfter(vf, baseline, 5000);
      await client.request('add', { virtioId: RELAY, pciAddrs: [PCI], conditional: false });
      const replied = performance.now() - t0;
      const ms = (await first) - t0;
      // The first round also pays for code paths being compiled; it is not counted.
      if (i > 0) {
        results.push(ms);
        replies.push(replied);
      }
      await client.request('remove', { virtioId: RELAY, conditional: false });
    }
  } finally {
    client.close();
    await vm.stop(5000);
    await relay.stop(8000);
    sysfs.remove();
  }
  process.stdout.write(`ZMQ add reply (device attached, directions restarted): median ${median(replies).toFixed(1)} ms\n`);
  return results;
}

function vsctl(sandbox: OvsdbSandbox, ...args: string[]): Promise<void> {
  return new Promise((resolvePromise, reject) => {
    execFile('ovs-vsctl', [`--db=unix:${sandbox.socketPath}`, '--no-wait', '--timeout=10', ...args], (err, _out, stderr) =>
      err ? reject(new Error(`ovs-vsctl ${args.join(' ')}: ${stderr || err.message}`)) : resolvePromise(),
    );
  });
}

async function ovsdbRounds(dir: string, vf: string, rounds: number): Promise<number[]> {
  const sandbox = new OvsdbSandbox(join(dir, 'ovsdb'));
  await sandbox.start();
  sandbox.vsctl('init');
  sandbox.vsctl('add-br', 'br-virtio');
  sandbox.vsctl('add-port', 'br-virtio', vf);
  const relay = await startRelayProcess(dir, [`VIRTIOFWD_OVSDB_SOCK_PATH=${sandbox.socketPath}`, 'VIRTIOFWD_ZMQ_PORT_CONTROL_EP=off']);
  const vm = startVm(dir);
  const results: number[] = [];
  try {
    await vm.waitForOutput(/Port statistics/, 20_000);
    await sleep(500);
    for (let i = 0; i < rounds + 1; i++) {
      await waitQuiet(vf);
      const baseline = txPackets(vf);
      const t0 = performance.now();
      const first = firstFrameAfter(vf, baseline, 5000);
      await vsctl(sandbox, 'set', 'Interface', vf, `external_ids:virtio_forwarder=${RELAY}`);
      const ms = (await first) - t0;
      if (i > 0) results.push(ms);
      await vsctl(sandbox, 'remove', 'Interface', vf, 'external_ids', 'virtio_forwarder');
    }
  } finally {
    await vm.stop(5000);
    await relay.stop(8000);
    await sandbox.stop();
  }
  return results;
}

function report(name: string, results: number[], goal: number): void {
  const m = median(results);
  process.stdout.write(
    `${name}: median ${m.toFixed(1)} ms, min ${Math.min(...results).toFixed(1)}, max ${Math.max(...results).toFixed(1)} over ${results.length} rounds ` +
      `(goal ${goal} ms: ${m <= goal ? 'met' : 'missed'})\n  rounds: ${results.map((r) => r.toFixed(1)).join(' ')}\n`,
  );
}

async function main(): Promise<void> {
  const rounds = parseRounds(process.argv.slice(2));
  if (!isRoot()) throw new Error('run as root: the bench creates a network namespace and veths');
  if (!findBinary('dpdk-testpmd')) throw new Error('needs dpdk-testpmd (Debian package dpdk-dev)');
  const tag = `${process.pid % 10000}`;
  const ns = `clns${tag}`;
  const vf = `clv${tag}`;
  const peer = `clp${tag}`;
  const dir = mkdtempSync(join(tmpdir(), `vio4wd-ctl-latency-${process.pid}-`));
  const cleanup = async () => {
    await stopAll();
    deleteLink(vf);
    deleteNetns(ns);
    rmSync(dir, { recursive: true, force: true });
  };
  process.once('SIGINT', () => void cleanup().then(() => process.exit(130)));
  try {
    createNetns(ns);
    createVethPair(vf, peer, { nsB: ns });
    run('sysctl', ['-qw', `net.ipv6.conf.${vf}.disable_ipv6=1`]);
    nsExec(ns, 'sysctl', ['-qw', `net.ipv6.conf.${peer}.disable_ipv6=1`]);
    report('ZMQ add → first forwarded frame', await zmqRounds(join(dir, 'zmq'), vf, rounds), GOAL_ZMQ_MS);
    const missing = missingOvsdbPrerequisite();
    if (missing) process.stdout.write(`OVSDB tag → first forwarded frame: skipped, ${missing}\n`);
    else report('OVSDB tag → first forwarded frame', await ovsdbRounds(join(dir, 'ovsdb'), vf, rounds), GOAL_OVSDB_MS);
  } finally {
    await cleanup();
  }
}

main().catch((err) => {
  process.stderr.write(`control-latency: ${(err as Error).message}\n`);
  process.exit(1);
});
