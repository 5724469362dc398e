// Bonds of two veths added through the port-control CLI to the running relay, with dpdk-testpmd's
// virtio-user sending (txonly) into the relay: which member's peer sees the frames is the mode's
// whole meaning, so that is what is checked, per mode. Active-backup also fails over: the active
// member's peer goes down, the relay-side veth loses carrier, and the frames move to the backup.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { run } from '../support/env.js';
import { createFakeSysfs, type FakeSysfs } from '../support/fake-sysfs.js';
import { createNetns, createVethPair, deleteLink, deleteNetns, linkCounter, nsExec, requireBinary, requireRoot, uniqueTag } from '../support/netns.js';
import { sleep, stopAll, waitFor } from '../support/processes.js';
import { repoRoot, startRelay, type RunningRelay } from '../support/relay.js';
import { startTestpmd, virtioUserVdev, type PortStats, type Testpmd } from '../support/testpmd.js';

vi.setConfig({ testTimeout: 90_000, hookTimeout: 60_000 });

const ready = requireRoot() && requireBinary('dpdk-testpmd') && requireBinary('ip');
const tag = uniqueTag();
const ns = `bdns${tag}`;
const members = [
  { pci: '0000:07:00.1', vf: `ba${tag}`, peer: `bpa${tag}` },
  { pci: '0000:07:00.2', vf: `bb${tag}`, peer: `bpb${tag}` },
];

let sysfs: FakeSysfs;
let relay: RunningRelay;
let dir: string;
let portControlEp: string;
let testpmd: Testpmd | null = null;
/**
 * testpmd counts a frame as sent once it is in the TX vring; frames still there when it stops
 * (at most one ring) were never the relay's to forward.
 */
const QUEUE_SIZE = 1024;

function portControl(...args: string[]): string {
  const r = spawnSync('node', [join(repoRoot, 'bin/virtioforwarder_port_control'), `--zmq-ep=${portControlEp}`, ...args], {
    encoding: 'utf8',
    timeout: 20_000,
  });
  if (r.status !== 0) throw new Error(`virtioforwarder_port_control ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return r.stdout;
}

function portControlFailure(...args: string[]): string {
  const r = spawnSync('node', [join(repoRoot, 'bin/virtioforwarder_port_control'), `--zmq-ep=${portControlEp}`, ...args], {
    encoding: 'utf8',
    timeout: 20_000,
  });
  expect(r.status, r.stdout).toBe(1);
  return r.stderr;
}

const peerRx = () => members.map((m) => linkCounter(m.peer, 'rx_packets', ns));

/** Runs testpmd txonly into relay `id` until the peers together saw `frames`, and returns what each peer got. */
async function sendThroughBond(id: number, frames: number, extraApp: string[] = []): Promise<{ perPeer: number[]; sent: PortStats }> {
  const before = peerRx();
  testpmd = startTestpmd({
    vdevs: [virtioUserVdev({ path: relay.socketPath(id), queueSize: QUEUE_SIZE })],
    forwardMode: 'txonly',
    txpkts: 64,
    cpu: 1,
    extraApp,
  });
  await waitFor(() => peerRx().reduce((a, n, i) => a + n - before[i], 0) >= frames, 30_000, `${frames} frames on the bond members' peers`);
  const [sent] = await testpmd.stop();
  testpmd = null;
  await sleep(300);
  return { perPeer: peerRx().map((n, i) => n - before[i]), sent };
}

function addBond(id: number, mode: number): void {
  portControl('add', `--virtio-id=${id}`, `--name=net_bonding${id}`, `--mode=${mode}`, ...members.map((m) => `--pci-addr=${m.pci}`));
}

describe.skipIf(!ready)('bonds on the running relay', () => {
  beforeAll(async () => {
    createNetns(ns);
    for (const m of members) {
      createVethPair(m.vf, m.peer, { nsB: ns });
      // No IPv6 on either end: router solicitations and MLD reports would blur the frame counts.
      run('sysctl', ['-qw', `net.ipv6.conf.${m.vf}.disable_ipv6=1`]);
      nsExec(ns, 'sysctl', ['-qw', `net.ipv6.conf.${m.peer}.disable_ipv6=1`]);
    }
    sysfs = createFakeSysfs({ devices: members.map((m, i) => ({ pci: m.pci, ifnames: [m.vf], physfn: '0000:07:00.0', vfIndex: i + 1 })) });
    dir = mkdtempSync(join(tmpdir(), `vio4wd-bond-${process.pid}-`));
    portControlEp = `ipc://${dir}/port_control`;
    relay = await startRelay({
      cpus: [0],
      noZmq: false,
      configLines: [
        `VIRTIOFWD_SYSFS_ROOT=${sysfs.root}`,
        `VIRTIOFWD_ZMQ_PORT_CONTROL_EP=${portControlEp}`,
        'VIRTIOFWD_ZMQ_STATS_EP=off',
        'VIRTIOFWD_ZMQ_CONFIG_EP=off',
        'VIRTIOFWD_ZMQ_CORE_SCHED_EP=off',
        'VIO4WD_CORE_SCHED_ENABLE=false',
      ],
    });
  });

  afterEach(async () => {
    await testpmd?.stop();
    testpmd = null;
  });

  afterAll(async () => {
    await relay?.stop();
    await stopAll();
    for (const m of members) deleteLink(m.vf);
    deleteNetns(ns);
    sysfs?.remove();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('mode 0 (round-robin) alternates frames over both members', async () => {
    addBond(10, 0);
    const { perPeer, sent } = await sendThroughBond(10, 20_000);
    portControl('remove', '--virtio-id=10', '--name=net_bonding10');
    expect(perPeer[0] + perPeer[1]).toBeGreaterThanOrEqual(sent.txPackets - QUEUE_SIZE);
    // Strict alternation: the two halves differ by at most one frame (plus a little kernel noise).
    expect(Math.abs(perPeer[0] - perPeer[1])).toBeLessThan(10);
  });

  it('mode 1 (active-backup) sends on the first member only, and fails over when it loses carrier', async () => {
    addBond(11, 1);
    const first = await sendThroughBond(11, 10_000);
    expect(first.perPeer[0]).toBeGreaterThanOrEqual(first.sent.txPackets - QUEUE_SIZE);
    expect(first.perPeer[1]).toBeLessThan(5);

    // Traffic running; the active member's far end goes down.
    const before = peerRx();
    testpmd = startTestpmd({ vdevs: [virtioUserVdev({ path: relay.socketPath(11), queueSize: QUEUE_SIZE })], forwardMode: 'txonly', txpkts: 64, cpu: 1 });
    await waitFor(() => linkCounter(members[0].peer, 'rx_packets', ns) - before[0] > 2_000, 30_000, 'frames on the active member before failover');
    nsExec(ns, 'ip', ['link', 'set', members[0].peer, 'down']);
    try {
      await waitFor(() => linkCounter(members[1].peer, 'rx_packets', ns) - before[1] > 5_000, 20_000, 'frames on the backup member after failover');
      await waitFor(
        () => relay.logs().some((l) => l.relay === 11 && l.msg === 'active-backup failover' && l.to === members[1].vf),
        5_000,
        'the relay to log the failover',
      );
      await testpmd.stop();
      testpmd = null;
    } finally {
      nsExec(ns, 'ip', ['link', 'set', members[0].peer, 'up']);
    }
    await waitFor(() => relay.logs().some((l) => l.relay === 11 && l.msg === 'bond member has carrier' && l.netdev === members[0].vf), 5_000, 'carrier back on the first member');
    portControl('remove', '--virtio-id=11', '--name=net_bonding11');
  });

  it('mode 1 (active-backup) takes VF→VM frames from the active member only, and from the backup after failover', async () => {
    addBond(14, 1);
    testpmd = startTestpmd({ vdevs: [virtioUserVdev({ path: relay.socketPath(14), queueSize: QUEUE_SIZE })], forwardMode: 'rxonly', cpu: 1 });
    await waitFor(() => relay.logs().some((l) => l.relay === 14 && typeof l.vring === 'number' && String(l.msg).includes('started')), 20_000, 'the VM on relay 14');
    await sleep(300);
    sendFrames(members[0].peer, 300);
    sendFrames(members[1].peer, 200);
    nsExec(ns, 'ip', ['link', 'set', members[0].peer, 'down']);
    try {
      await waitFor(() => relay.logs().some((l) => l.relay === 14 && l.msg === 'active-backup failover'), 5_000, 'the failover');
      sendFrames(members[1].peer, 400);
      await sleep(500);
    } finally {
      nsExec(ns, 'ip', ['link', 'set', members[0].peer, 'up']);
    }
    const [port] = await testpmd.stop();
    testpmd = null;
    portControl('remove', '--virtio-id=14');
    // 300 from the active member, none of the 200 sent to the backup, then the 400 sent to the new active one.
    expect(port.rxPackets).toBe(700);
  });

  it('mode 2 (balance) keeps one flow on one member and spreads many flows over both', async () => {
    addBond(12, 2);
    const one = await sendThroughBond(12, 10_000);
    const busy = one.perPeer[0] > one.perPeer[1] ? 0 : 1;
    expect(one.perPeer[busy]).toBeGreaterThanOrEqual(one.sent.txPackets - QUEUE_SIZE);
    expect(one.perPeer[1 - busy]).toBeLessThan(5);
    const many = await sendThroughBond(12, 20_000, ['--txonly-multi-flow']);
    portControl('remove', '--virtio-id=12', '--name=net_bonding12');
    expect(many.perPeer[0] + many.perPeer[1]).toBeGreaterThanOrEqual(many.sent.txPackets - QUEUE_SIZE);
    for (const n of many.perPeer) expect(n).toBeGreaterThan(many.sent.txPackets / 10);
  });

  it('mode 3 (broadcast) sends every frame on both members', async () => {
    addBond(13, 3);
    const { perPeer, sent } = await sendThroughBond(13, 20_000);
    portControl('remove', '--virtio-id=13', '--name=net_bonding13');
    for (const n of perPeer) expect(n).toBeGreaterThanOrEqual(sent.txPackets - QUEUE_SIZE);
  });

  it('add_sock finds no free relay when every relay has its fixed socket', () => {
    const pcis = members.map((m) => `--pci-addr=${m.pci}`);
    expect(portControlFailure('add_sock', `--vhost-path=${join(dir, 'bonded-vm.sock')}`, '--name=net_bonding20', ...pcis)).toMatch(
      /no free relay among 64 \(code 2\)/,
    );
  });
});

/** Sends `count` frames out of `ifname` in the namespace through an AF_PACKET socket (python3). */
function sendFrames(ifname: string, count: number): void {
  const script = [
    'import socket,sys',
    's=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)',
    's.bind((sys.argv[1],0))',
    "f=bytes.fromhex('ffffffffffff020000000001'+'88b5')+bytes(50)",
    'for i in range(int(sys.argv[2])): s.send(f)',
  ].join('\n');
  const r = spawnSync('ip', ['netns', 'exec', ns, 'python3', '-c', script, ifname, String(count)], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`sending frames on ${ifname} failed: ${r.stderr}`);
}
