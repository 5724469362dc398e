// VIRTIOFWD_JUMBO with DPDK's virtio-user (dpdk-testpmd) as the VM and a veth as the VF: the relay
// raises the VF's MTU to 9000 (and gives the old one back when it lets the VF go), carries 9014-byte
// frames (9000 bytes of IP) both ways with and without mergeable receive buffers, drops and counts
// a frame longer than the VF takes instead of cutting it short, and forwards with the MTU it has
// when a device refuses 9000.
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';

vi.setConfig({ testTimeout: 120_000 });
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createFakeSysfs, type FakeSysfs } from '../support/fake-sysfs.js';
import { linkMaxMtu } from '../../sys/netdev.js';
import { join } from 'node:path';
import { createNetns, createVethPair, deleteLink, deleteNetns, linkCounter, nsExec, requireBinary, requireRoot, uniqueTag } from '../support/netns.js';
import { startTestpmd, virtioUserVdev, type Testpmd } from '../support/testpmd.js';
import { repoRoot, startRelay, statsToolCounters, type RunningRelay } from '../support/relay.js';
import { sleep, startProcess, stopAll, waitFor } from '../support/processes.js';
import { multiBufferXdp } from '../support/env.js';

type Counters = Record<string, number>;

/** The relay's own counters for one relay, through the stats service and virtioforwarder_stats --json. */
const relayCounters = (statsEp: string, id: number) => statsToolCounters(statsEp, id) as { vfToVm: Counters; vmToVf: Counters };

const mtuOf = (ifname: string) => Number(readFileSync(`/sys/class/net/${ifname}/mtu`, 'utf8'));

const ready = requireRoot() && requireBinary('dpdk-testpmd') && requireBinary('ip');
const tag = uniqueTag();
const ns = `vjns${tag}`;
const vf = `vj${tag}`;
const peer = `pj${tag}`;
// A macvlan on a 1500-byte veth: the kernel refuses it an MTU above its lower device's (EINVAL).
const lowReal = `lr${tag}`;
const lowPeer = `lp${tag}`;
const lowVlan = `lv${tag}`;
const statsEp = `ipc:///tmp/vio4wd-jumbo-stats-${tag}`;
const portControlEp = `ipc:///tmp/vio4wd-jumbo-pc-${tag}`;
// Two veths behind PCI addresses of a fake sysfs tree, for a bond.
const members = [
  { pci: '0000:07:00.1', vf: `ja${tag}`, peer: `jpa${tag}` },
  { pci: '0000:07:00.2', vf: `jb${tag}`, peer: `jpb${tag}` },
];
/** A VF added through port control with --vf-port=af_xdp: jumbo frames over several AF_XDP chunks. */
const xdpVf = { pci: '0000:07:00.3', vf: `jx${tag}`, peer: `jpx${tag}` };
let sysfs: FakeSysfs | null = null;

function portControl(...args: string[]): string {
  const r = spawnSync('node', [join(repoRoot, 'bin/virtioforwarder_port_control'), `--zmq-ep=${portControlEp}`, ...args], { encoding: 'utf8', timeout: 20_000 });
  if (r.status !== 0) throw new Error(`virtioforwarder_port_control ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return r.stdout;
}
const FRAME = 9014;
const PINGS = 300;

let relay: RunningRelay | null = null;
let testpmd: Testpmd | null = null;

/** Echo requests of 9000 bytes of IP (9014-byte frames) from the namespace, never fragmented. */
async function jumboPings(count: number, to = '10.78.0.2'): Promise<void> {
  const p = startProcess('ip', ['netns', 'exec', ns, 'ping', '-c', String(count), '-i', '0.005', '-W', '1', '-s', '8972', '-M', 'do', to], { label: 'ping' });
  await p.exited;
}

/**
 * testpmd settings for 9000-byte frames: a receive limit above 9018, and either mbufs one frame
 * fits in (needed without MRG_RXBUF) or scattered receive into several 2 KiB mbufs.
 */
function jumboApp(mbufSize?: number): string[] {
  const app = ['--max-pkt-len=9216'];
  if (mbufSize) app.push(`--mbuf-size=${mbufSize}`, '--total-num-mbufs=4096');
  else app.push('--enable-scatter');
  return app;
}

/**
 * With testpmd (macswap) running as relay `id`'s VM: pings with 9014-byte frames from `peerIf`
 * to `to`, stops testpmd, and checks that every echo request reached the guest whole and came
 * back whole, every byte counted.
 */
async function jumboRoundTrip(id: number, peerIf: string, to: string, whileConnected?: () => void): Promise<void> {
  const before = relayCounters(statsEp, id);
  const peerPackets = linkCounter(peerIf, 'rx_packets', ns);
  const peerBytes = linkCounter(peerIf, 'rx_bytes', ns);
  await sleep(700);
  await jumboPings(PINGS, to);
  await sleep(500);
  whileConnected?.();
  const stats = await testpmd!.stop();
  testpmd = null;
  const after = relayCounters(statsEp, id);
  const d = (dir: 'vfToVm' | 'vmToVf', key: string) => after[dir][key] - before[dir][key];
  expect(d('vfToVm', 'packets')).toBeGreaterThanOrEqual(PINGS * 0.95);
  expect(d('vfToVm', 'bytes')).toBe(d('vfToVm', 'packets') * FRAME);
  expect(d('vfToVm', 'dropsBadFrame')).toBe(0);
  expect(stats[0].rxPackets).toBeGreaterThanOrEqual(d('vfToVm', 'packets'));
  expect(d('vmToVf', 'packets')).toBeGreaterThanOrEqual(PINGS * 0.95);
  expect(d('vmToVf', 'bytes')).toBe(d('vmToVf', 'packets') * FRAME);
  expect(d('vmToVf', 'dropsBadFrame')).toBe(0);
  const back = linkCounter(peerIf, 'rx_packets', ns) - peerPackets;
  expect(back).toBe(d('vmToVf', 'packets'));
  expect(linkCounter(peerIf, 'rx_bytes', ns) - peerBytes).toBe(back * FRAME);
}

describe.skipIf(!ready)('relay with VIRTIOFWD_JUMBO and DPDK virtio-user', () => {
  beforeAll(async () => {
    createNetns(ns);
    createVethPair(vf, peer, { nsB: ns, noIpv6: true });
    nsExec(ns, 'ip', ['link', 'set', peer, 'mtu', '9000']);
    nsExec(ns, 'sysctl', ['-qw', 'net.ipv6.conf.all.disable_ipv6=1']);
    nsExec(ns, 'ip', ['addr', 'add', '10.78.0.1/24', 'dev', peer]);
    nsExec(ns, 'ip', ['neigh', 'add', '10.78.0.2', 'lladdr', '02:00:00:78:00:02', 'dev', peer]);
    execFileSync('sysctl', ['-qw', `net.ipv6.conf.${vf}.disable_ipv6=1`]);
    createVethPair(lowReal, lowPeer);
    execFileSync('ip', ['link', 'add', 'link', lowReal, 'name', lowVlan, 'type', 'macvlan']);
    execFileSync('ip', ['link', 'set', lowVlan, 'up']);
    for (const m of members) {
      createVethPair(m.vf, m.peer, { nsB: ns, noIpv6: true });
      nsExec(ns, 'ip', ['link', 'set', m.peer, 'mtu', '9000']);
      execFileSync('sysctl', ['-qw', `net.ipv6.conf.${m.vf}.disable_ipv6=1`]);
      nsExec(ns, 'sysctl', ['-qw', `net.ipv6.conf.${m.peer}.disable_ipv6=1`]);
    }
    createVethPair(xdpVf.vf, xdpVf.peer, { nsB: ns, noIpv6: true });
    nsExec(ns, 'ip', ['link', 'set', xdpVf.peer, 'mtu', '9000']);
    nsExec(ns, 'ip', ['addr', 'add', '10.78.3.1/24', 'dev', xdpVf.peer]);
    nsExec(ns, 'ip', ['neigh', 'add', '10.78.3.2', 'lladdr', '02:00:00:78:03:02', 'dev', xdpVf.peer]);
    execFileSync('sysctl', ['-qw', `net.ipv6.conf.${xdpVf.vf}.disable_ipv6=1`]);
    sysfs = createFakeSysfs({
      devices: [...members, xdpVf].map((m, i) => ({ pci: m.pci, ifnames: [m.vf], physfn: '0000:07:00.0', vfIndex: i + 1 })),
      virtualInterfaces: [vf, lowVlan],
    });
    expect(mtuOf(vf)).toBe(1500);
    relay = await startRelay({
      staticVfs: { [vf]: 1, [lowVlan]: 2 },
      configLines: [
        'VIRTIOFWD_JUMBO=y',
        `VIRTIOFWD_SYSFS_ROOT=${sysfs.root}`,
        `VIRTIOFWD_ZMQ_STATS_EP=${statsEp}`,
        `VIRTIOFWD_ZMQ_PORT_CONTROL_EP=${portControlEp}`,
      ],
    });
  });

  afterEach(async () => {
    await testpmd?.stop().catch(() => undefined);
    testpmd = null;
  });

  afterAll(async () => {
    await relay?.stop();
    relay = null;
    await stopAll();
    deleteLink(lowVlan);
    deleteLink(lowReal);
    deleteLink(vf);
    for (const m of [...members, xdpVf]) deleteLink(m.vf);
    deleteNetns(ns);
    sysfs?.remove();
  });

  it('raises the VF to MTU 9000, and forwards with the MTU it has when a device refuses, saying which and why', () => {
    expect(mtuOf(vf)).toBe(9000);
    expect(linkMaxMtu(vf)).toBe(65535); // a veth's, as `ip -d link` shows it
    expect(mtuOf(lowVlan)).toBe(1500);
    const refused = relay!.logs().find((l) => l.netdev === lowVlan && String(l.msg).includes('refused MTU 9000'));
    expect(refused, 'a log line for the VF that refused').toBeDefined();
    expect(String(refused!.msg)).toMatch(new RegExp(`VF ${lowVlan} refused MTU 9000 \\(EINVAL\\): forwarding with its MTU 1500, frames above 1514 bytes \\(1518 with a VLAN tag\\) are dropped`));
    expect(refused!.level).toBe('warn');
    // The macvlan's driver allows 65535; the refusal comes from its lower device, so no limit is named.
    expect(refused!.maxMtu).toBe(65535);
  });

  for (const mergeable of [true, false]) {
    it(`carries 9014-byte frames both ways ${mergeable ? 'with' : 'without'} mergeable receive buffers`, async () => {
      // macswap: every frame the guest receives goes back to the VF with the MACs swapped.
      testpmd = startTestpmd({
        vdevs: [virtioUserVdev({ path: relay!.socketPath(1), queueSize: 1024, extra: mergeable ? [] : ['mrg_rxbuf=0'] })],
        forwardMode: 'macswap',
        cpu: 1,
        // With mergeable buffers the default 2 KiB mbufs take a frame in five buffers.
        extraApp: jumboApp(mergeable ? undefined : 10240),
      });
      await waitFor(() => relay!.logs().some((l) => String(l.msg) === 'vhost-user: vring 0 started'), 20_000, 'vring 0 to start');
      await jumboRoundTrip(1, peer, '10.78.0.2');
    });
  }

  it('carries 9014-byte frames both ways over an AF_XDP port (--vf-port=af_xdp): each frame over several chunks', async () => {
    if (!multiBufferXdp()) return;
    const portLine = () => relay!.logs().map((l) => String(l.msg)).find((m) => m.startsWith(`VF ${xdpVf.vf}: AF_XDP port`));
    portControl('add', '--virtio-id=3', `--pci-addr=${xdpVf.pci}`, '--vf-port=af_xdp');
    try {
      await waitFor(() => portLine() !== undefined, 10_000, 'the AF_XDP port to be opened');
      expect(mtuOf(xdpVf.vf)).toBe(9000);
      expect(portLine()).toMatch(/, copy mode, frames over several chunks, 1 queue, /);
      const started = () => relay!.logs().filter((l) => String(l.msg) === 'vhost-user: vring 0 started' && String(l.vhostUser).endsWith('3.sock')).length;
      const startedBefore = started();
      testpmd = startTestpmd({
        vdevs: [virtioUserVdev({ path: relay!.socketPath(3), queueSize: 1024 })],
        forwardMode: 'macswap',
        cpu: 1,
        extraApp: jumboApp(),
      });
      await waitFor(() => started() > startedBefore, 20_000, 'vring 0 of relay 3 to start');
      await jumboRoundTrip(3, xdpVf.peer, '10.78.3.2', () => {
        // Read before the VM goes (the port is then opened again, with fresh counters): the
        // echoed frames left from guest memory, each in pieces of a 4 KiB chunk at most.
        const port = (statsToolCounters(statsEp, 3) as unknown as { ports: Array<{ umem: string; txFramesInPlace: number }> }).ports[0];
        expect(port.umem).toBe('guest');
        expect(port.txFramesInPlace).toBeGreaterThanOrEqual(PINGS * 0.95);
      });
    } finally {
      portControl('remove', '--virtio-id=3');
    }
  });

  it('drops and counts a guest frame longer than the VF takes, and sends none of it', async () => {
    const before = relayCounters(statsEp, 1);
    const peerPackets = linkCounter(peer, 'rx_packets', ns);
    testpmd = startTestpmd({
      vdevs: [virtioUserVdev({ path: relay!.socketPath(1), queueSize: 1024 })],
      forwardMode: 'txonly',
      cpu: 1,
      // After --mbuf-size: testpmd checks --txpkts against the mbuf size it has parsed so far.
      extraApp: [...jumboApp(10240), '--txpkts=9100'],
    });
    await waitFor(() => relayCounters(statsEp, 1).vmToVf.dropsBadFrame - before.vmToVf.dropsBadFrame > 1000, 30_000, '1000 oversized frames dropped');
    await testpmd.stop();
    testpmd = null;
    const after = relayCounters(statsEp, 1);
    expect(after.vmToVf.packets).toBe(before.vmToVf.packets);
    expect(after.vmToVf.rxBytes - before.vmToVf.rxBytes).toBe((after.vmToVf.rxPackets - before.vmToVf.rxPackets) * 9100);
    expect(after.vmToVf.dropsBadFrame - before.vmToVf.dropsBadFrame).toBe(after.vmToVf.rxPackets - before.vmToVf.rxPackets - (after.vmToVf.dropsNotConnected - before.vmToVf.dropsNotConnected));
    expect(linkCounter(peer, 'rx_packets', ns)).toBe(peerPackets);
  });

  it('raises both members of a bond to MTU 9000, sends 9014-byte frames on the active one, and restores both on remove', async () => {
    for (const m of members) expect(mtuOf(m.vf)).toBe(1500);
    portControl('add', '--virtio-id=5', '--name=net_bonding5', '--mode=1', ...members.map((m) => `--pci-addr=${m.pci}`));
    try {
      for (const m of members) expect(mtuOf(m.vf)).toBe(9000);
      const before = members.map((m) => [linkCounter(m.peer, 'rx_packets', ns), linkCounter(m.peer, 'rx_bytes', ns)]);
      testpmd = startTestpmd({
        vdevs: [virtioUserVdev({ path: relay!.socketPath(5), queueSize: 1024 })],
        forwardMode: 'txonly',
        cpu: 1,
        extraApp: [...jumboApp(10240), `--txpkts=${FRAME}`],
      });
      await waitFor(() => linkCounter(members[0].peer, 'rx_packets', ns) - before[0][0] >= 1000, 30_000, '1000 jumbo frames on the active member');
      await testpmd.stop();
      testpmd = null;
      await sleep(300);
      const packets = linkCounter(members[0].peer, 'rx_packets', ns) - before[0][0];
      expect(linkCounter(members[0].peer, 'rx_bytes', ns) - before[0][1]).toBe(packets * FRAME);
      expect(linkCounter(members[1].peer, 'rx_packets', ns)).toBe(before[1][0]);
      expect(relayCounters(statsEp, 5).vmToVf.dropsBadFrame).toBe(0);
    } finally {
      portControl('remove', '--virtio-id=5');
    }
    await waitFor(() => members.every((m) => mtuOf(m.vf) === 1500), 10_000, 'both members back at MTU 1500');
  });

  it('gives the VF its old MTU back when the relay lets it go', async () => {
    const status = await relay!.stop();
    relay = null;
    expect(status).toBe(0);
    expect(mtuOf(vf)).toBe(1500);
    expect(mtuOf(lowVlan)).toBe(1500);
  });
});
