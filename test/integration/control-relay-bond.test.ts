// Bonds of two veths added through the port-control CLI to the running relay, with dpdk-testpmd's
// virtio-user sending (txonly) into the relay: which member's peer sees the frames is the mode's
// whole meaning, so that is what is checked, per mode. Active-backup also fails over: the active
// member's peer goes down, the relay-side veth loses carrier, and the frames move to the backup.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { run } from '../support/env.js';
import { createFakeSysfs, type FakeSysfs } from '../support/fake-sysfs.js';
import { createNetns, createVethPair, deleteLink, deleteNetns, linkCounter, nsExec, requireBinary, requireRoot, uniqueTag } from '../support/netns.js';
import { sleep, stopAll, waitFor } from '../support/processes.js';
import { ControlClient } from '../../port-control/client.js';
import { repoRoot, startRelay, statsToolCounters, type RunningRelay } from '../support/relay.js';
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

interface BondRun {
  /** Frames each member's peer received. */
  perPeer: number[];
  /** Frames the relay forwarded to the bond (its own counter). */
  forwarded: number;
  /** Frames testpmd counted as sent: includes those still in the vring, or discarded while it was disabled, at start and stop. */
  sent: PortStats;
  /** Frames the relay took from the guest without forwarding them (ring disabled, no member up). */
  notConnected: number;
  /** Frames the kernel did not accept from the relay (socket busy), and frames too long or malformed. */
  full: number;
  bad: number;
  taken: number;
}

async function vmToVfCounters(id: number) {
  const stats = new ControlClient(`ipc://${dir}/stats`, 5000);
  try {
    const r = (await stats.request('stats', { relays: [id], includeInactive: true })).relays[0];
    return {
      packets: r.vmToVf.packets,
      rxPackets: r.vmToVf.rxPackets,
      notConnected: r.vmToVf.dropsNotConnected,
      full: r.vmToVf.dropsQueueFull,
      bad: r.vmToVf.dropsBadFrame,
    };
  } finally {
    stats.close();
  }
}

/**
 * Runs testpmd txonly into relay `id` until the peers together saw `frames`, and returns what
 * each peer got and what the relay counted. The peers are compared with the relay's count, not
 * testpmd's: the relay discards what a disabled ring holds (vhost-user spec), which virtio-user
 * fills before enabling it at start and after disabling it at stop.
 */
async function sendThroughBond(id: number, frames: number, extraApp: string[] = [], broadcast = false): Promise<BondRun> {
  const before = peerRx();
  const relayBefore = await vmToVfCounters(id);
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
  const relayAfter = await vmToVfCounters(id);
  const run = {
    perPeer: peerRx().map((n, i) => n - before[i]),
    sent,
    forwarded: relayAfter.packets - relayBefore.packets,
    notConnected: relayAfter.notConnected - relayBefore.notConnected,
    full: relayAfter.full - relayBefore.full,
    bad: relayAfter.bad - relayBefore.bad,
    taken: relayAfter.rxPackets - relayBefore.rxPackets,
  };
  const text = JSON.stringify(run);
  // What the relay says it sent, the peers received (a broadcast frame counts once, and each
  // member's peer receives a copy).
  expect(run.perPeer.reduce((a, n) => a + n, 0), text).toBe(run.forwarded * (broadcast ? members.length : 1));
  expect(run.bad, text).toBe(0);
  // Every frame the relay took was forwarded or counted as dropped, once.
  expect(run.taken, text).toBe(run.forwarded + run.notConnected + run.full);
  expect(run.taken, text).toBeLessThanOrEqual(sent.txPackets);
  expect(run.forwarded, text).toBeGreaterThanOrEqual(frames);
  return run;
}

/** Relays a test gave a bond; afterEach empties them, so one failing test does not fail the next. */
const bonded = new Set<number>();

function addBond(id: number, mode: number): void {
  bonded.add(id);
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
      // Two workers, so one test can move a bond's directions between them; the other relays are
      // pinned to CPU 0, away from testpmd's poller on CPU 1, whose softirq backlog would
      // otherwise overflow and blur the frame counts.
      cpus: [0, 1],
      noZmq: false,
      configLines: [
        `VIRTIOFWD_SYSFS_ROOT=${sysfs.root}`,
        'VIRTIOFWD_CPU_PINS=(10:0 11:0 12:0 13:0 14:0 16:0 20:0 31:0)',
        `VIRTIOFWD_ZMQ_PORT_CONTROL_EP=${portControlEp}`,
        `VIRTIOFWD_ZMQ_STATS_EP=ipc://${dir}/stats`,
        'VIRTIOFWD_ZMQ_CONFIG_EP=off',
        `VIRTIOFWD_ZMQ_CORE_SCHED_EP=ipc://${dir}/core_sched`,
        'VIO4WD_CORE_SCHED_ENABLE=true',
      ],
    });
  });

  afterEach(async () => {
    await testpmd?.stop();
    testpmd = null;
    for (const id of bonded) portControl('remove', `--virtio-id=${id}`, '--conditional');
    bonded.clear();
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
    const { perPeer, forwarded } = await sendThroughBond(10, 20_000);
    portControl('remove', '--virtio-id=10', '--name=net_bonding10');
    expect(perPeer[0] + perPeer[1]).toBe(forwarded);
    // Strict alternation: the two halves differ by at most one frame.
    expect(Math.abs(perPeer[0] - perPeer[1])).toBeLessThanOrEqual(1);
  });

  it('mode 1 (active-backup) sends on the first member only, and fails over when it loses carrier', async () => {
    addBond(11, 1);
    const first = await sendThroughBond(11, 10_000);
    expect(first.perPeer).toEqual([first.forwarded, 0]);

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
    expect(one.perPeer[busy]).toBe(one.forwarded);
    expect(one.perPeer[1 - busy]).toBe(0);
    const many = await sendThroughBond(12, 20_000, ['--txonly-multi-flow']);
    portControl('remove', '--virtio-id=12', '--name=net_bonding12');
    expect(many.perPeer[0] + many.perPeer[1]).toBe(many.forwarded);
    for (const n of many.perPeer) expect(n).toBeGreaterThan(many.forwarded / 10);
  });

  it('mode 3 (broadcast) sends every frame on both members', async () => {
    addBond(13, 3);
    const { perPeer } = await sendThroughBond(13, 20_000, [], true);
    portControl('remove', '--virtio-id=13', '--name=net_bonding13');
    expect(perPeer[0]).toBe(perPeer[1]);
  });

  it('active-backup fails over while its directions are being moved between workers', async () => {
    addBond(15, 1);
    const coreSched = new ControlClient(`ipc://${dir}/core_sched`, 5000);
    testpmd = startTestpmd({ vdevs: [virtioUserVdev({ path: relay.socketPath(15), queueSize: QUEUE_SIZE })], forwardMode: 'txonly', txpkts: 64, cpu: 1 });
    let swapping = true;
    let swaps = 0;
    const swapper = (async () => {
      while (swapping) {
        const even = swaps++ % 2 === 0;
        await coreSched.request('update', { map: [{ relay: 15, vfToVmCpu: even ? 1 : 0, vmToVfCpu: even ? 0 : 1 }] });
        await sleep(2);
      }
    })();
    try {
      // Each carrier change is likely to land while a direction is between workers.
      for (let round = 0; round < 10; round++) {
        const from = round % 2;
        const to = 1 - from;
        const before = linkCounter(members[from].peer, 'rx_packets', ns);
        await waitFor(() => linkCounter(members[from].peer, 'rx_packets', ns) - before > 2_000, 20_000, `round ${round}: frames on ${members[from].peer}`);
        nsExec(ns, 'ip', ['link', 'set', members[from].peer, 'down']);
        const onNew = linkCounter(members[to].peer, 'rx_packets', ns);
        await waitFor(() => linkCounter(members[to].peer, 'rx_packets', ns) - onNew > 2_000, 10_000, `round ${round}: frames on ${members[to].peer} after failover (${swaps} swaps so far)`);
        nsExec(ns, 'ip', ['link', 'set', members[from].peer, 'up']);
        await waitFor(() => relay.logs().filter((l) => l.relay === 15 && l.msg === 'bond member has carrier').length > round, 5_000, `round ${round}: carrier back`);
      }
    } finally {
      swapping = false;
      await swapper.catch(() => undefined);
      coreSched.close();
      for (const m of members) nsExec(ns, 'ip', ['link', 'set', m.peer, 'up']);
    }
    expect(swaps).toBeGreaterThan(20);
    await testpmd.stop();
    testpmd = null;
    portControl('remove', '--virtio-id=15');
  });

  it('a memif member (DPDK net_memif) backs up a VF in active-backup, both ways, and gives way when its peer leaves', async () => {
    const id = 16;
    const nfSocket = join(dir, 'nf16.sock');
    bonded.add(id);
    portControl('add', `--virtio-id=${id}`, `--name=net_bonding${id}`, '--mode=1', `--pci-addr=${members[0].pci}`, `--memif-socket=${nfSocket}`, '--memif-role=server', '--memif-id=0');
    const ofRelay = (msg: string) => relay.logs().filter((l) => l.relay === id && l.msg === msg);
    const memifName = `memif:${nfSocket}#0`;
    const statsEp = `ipc://${dir}/stats`;
    const stats = () => statsToolCounters(statsEp, id);
    const nf = (mode: 'rxonly' | 'txonly') =>
      startTestpmd({ vdevs: [`net_memif0,role=client,socket=${nfSocket},socket-abstract=no,id=0`], forwardMode: mode, txpkts: 64, cpu: 1, label: `nf-${mode}` });
    const connected = () => relay.logs().filter((l) => l.relay === id && /: connected to /.test(String(l.msg))).length;
    const vm = (mode: 'rxonly' | 'txonly') => startTestpmd({ vdevs: [virtioUserVdev({ path: relay.socketPath(id), queueSize: QUEUE_SIZE })], forwardMode: mode, txpkts: 64, cpu: 1 });

    // The network function connects; the VF keeps the traffic, being the active member with carrier.
    let networkFunction: Testpmd | null = nf('rxonly');
    await waitFor(() => connected() === 1, 20_000, 'the memif member to connect');
    await waitFor(() => ofRelay('bond member has carrier').some((l) => l.memif === nfSocket), 5_000, 'carrier on the memif member');
    const onVf = await sendThroughBond(id, 10_000);
    expect(onVf.perPeer[0]).toBe(onVf.forwarded);

    try {
      // The VF loses carrier: frames go to the network function over memif.
      nsExec(ns, 'ip', ['link', 'set', members[0].peer, 'down']);
      await waitFor(() => ofRelay('active-backup failover').some((l) => l.to === memifName), 5_000, 'failover to the memif member');
      const vfPeerBefore = linkCounter(members[0].peer, 'rx_packets', ns);
      const before = stats().vmToVf.packets;
      testpmd = vm('txonly');
      await waitFor(() => stats().vmToVf.packets - before > 20_000, 30_000, '20 000 frames VM→memif');
      await testpmd.stop();
      testpmd = null;
      await sleep(300);
      // Every frame the relay forwarded reached the network function, none the VF's peer.
      const [nfPort] = await networkFunction.stop();
      networkFunction = null;
      expect(nfPort.rxPackets).toBe(stats().vmToVf.packets - before);
      expect(linkCounter(members[0].peer, 'rx_packets', ns)).toBe(vfPeerBefore);
      await waitFor(() => ofRelay('bond member lost carrier').some((l) => l.memif === nfSocket), 10_000, 'the memif member to lose carrier');

      // The network function comes back sending: the VM receives from the memif member.
      testpmd = vm('rxonly');
      await sleep(1000);
      const before2 = stats().vfToVm.packets;
      networkFunction = nf('txonly');
      await waitFor(() => connected() === 2, 20_000, 'the memif member to connect again');
      await waitFor(() => stats().vfToVm.packets - before2 > 20_000, 30_000, '20 000 frames memif→VM');
      await networkFunction.stop();
      networkFunction = null;
      await sleep(300);
      const [vmPort] = await testpmd.stop();
      testpmd = null;
      expect(vmPort.rxPackets).toBe(stats().vfToVm.packets - before2);

      // The memif's peer has left and the VF's carrier returns: the VF takes the traffic again.
      await waitFor(() => ofRelay('bond member lost carrier').filter((l) => l.memif === nfSocket).length === 2, 10_000, 'the memif member to lose carrier again');
      nsExec(ns, 'ip', ['link', 'set', members[0].peer, 'up']);
      await waitFor(() => ofRelay('active-backup failover').some((l) => l.to === members[0].vf), 5_000, 'failover back to the VF');
      const back = await sendThroughBond(id, 5_000);
      expect(back.perPeer[0]).toBe(back.forwarded);
    } finally {
      await networkFunction?.stop();
      nsExec(ns, 'ip', ['link', 'set', members[0].peer, 'up']);
    }
    const inStats = JSON.parse(spawnSync('node', [join(repoRoot, 'bin/virtioforwarder_stats'), `--stats-ep=${statsEp}`, '--json', '--delay=0', '--include-inactive'], { encoding: 'utf8' }).stdout) as {
      relays: { id: number; device: string; bondMembers?: string[] }[];
    };
    expect(inStats.relays.find((r) => r.id === id)).toMatchObject({ device: `net_bonding${id}`, bondMembers: [members[0].pci, memifName] });
    // The memif is held by this bond: nobody else may take it.
    expect(portControlFailure('add', '--virtio-id=17', `--memif-socket=${nfSocket}`, '--memif-role=server', '--memif-id=0')).toMatch(/already attached to relay 16/);
    portControl('remove', `--virtio-id=${id}`, `--name=net_bonding${id}`);
  });

  it('a bond whose second memif server cannot bind its socket is refused whole: its VF and first memif are let go', async () => {
    const id = 17;
    const shared = join(dir, 'nf17.sock');
    const control = new ControlClient(portControlEp, 10_000);
    try {
      const memifMembers = [0, 1].map((memifId) => ({ socket: shared, role: 'server', id: memifId }));
      await expect(control.request('add', { virtioId: id, name: `net_bonding${id}`, mode: 1, pciAddrs: [members[1].pci], memifMembers })).rejects.toThrow(
        new RegExp(`cannot attach bond net_bonding${id}: .*${shared}`),
      );
    } finally {
      control.close();
    }
    // Nothing was kept: the VF can be attached elsewhere, the socket is gone with its listener.
    expect(existsSync(shared)).toBe(false);
    bonded.add(18);
    portControl('add', '--virtio-id=18', `--pci-addr=${members[1].pci}`);
    portControl('remove', '--virtio-id=18');
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
