// ZMQ port control against the real daemon: the operator CLI (a process) adds and removes VFs and
// dynamic vhost-user sockets over a real ipc:// socket, dpdk-testpmd's virtio-user then connects to
// the socket it created, and frames are counted on the veth peer. Fake PCI addresses lead to veths
// through a fake sysfs tree (VIRTIOFWD_SYSFS_ROOT). Every refusal is checked for exit status 1 and
// a message naming what failed.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { run } from '../support/env.js';
import { createFakeSysfs, type FakeSysfs } from '../support/fake-sysfs.js';
import { createNetns, createVethPair, deleteLink, deleteNetns, linkCounter, nsExec, requireBinary, requireRoot, uniqueTag } from '../support/netns.js';
import { sleep, stopAll, waitFor } from '../support/processes.js';
import { repoRoot, startRelay, type RunningRelay } from '../support/relay.js';
import { startTestpmd, virtioUserVdev, type Testpmd } from '../support/testpmd.js';

vi.setConfig({ testTimeout: 90_000, hookTimeout: 60_000 });

const ready = requireRoot() && requireBinary('dpdk-testpmd') && requireBinary('ip');
const tag = uniqueTag();
const ns = `zcns${tag}`;
const vfA = `za${tag}`;
const peerA = `zpa${tag}`;
const vfB = `zb${tag}`;
const peerB = `zpb${tag}`;
const PCI_A = '0000:05:08.1';
const PCI_B = '0000:05:08.2';
/** A function bound to no network driver: it exists in sysfs but has no netdev. */
const PCI_NO_NETDEV = '0000:05:08.3';
/** An address that does not exist at all. */
const PCI_ABSENT = '0000:05:09.0';

let sysfs: FakeSysfs;
let relay: RunningRelay;
let dir: string;
let portControlEp: string;
let statsEp: string;

interface CliResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

function cli(program: string, args: string[]): CliResult {
  const r = spawnSync('node', [join(repoRoot, 'bin', program), ...args], { encoding: 'utf8', timeout: 20_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const portControl = (...args: string[]) => cli('virtioforwarder_port_control', [`--zmq-ep=${portControlEp}`, ...args]);

function expectOk(r: CliResult): string {
  expect(r.stderr, `stderr of a command expected to succeed`).toBe('');
  expect(r.status).toBe(0);
  return r.stdout;
}

function expectFailure(r: CliResult, message: RegExp): void {
  expect(r.status, `stdout: ${r.stdout} stderr: ${r.stderr}`).toBe(1);
  expect(r.stderr).toMatch(/^virtioforwarder_port_control: /);
  expect(r.stderr).toMatch(message);
}

function stats(...args: string[]): Map<string, string> {
  const r = cli('virtioforwarder_stats', [`--stats-ep=${statsEp}`, ...args]);
  expect(r.status, r.stderr).toBe(0);
  const map = new Map<string, string>();
  for (const line of r.stdout.split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0) map.set(line.slice(0, eq), line.slice(eq + 1));
  }
  return map;
}

/** The value of `relay_<id>.<dir>.cpu_<n>.<field>` whatever worker CPU serves the direction. */
function counter(s: Map<string, string>, relayId: number, direction: string, field: string): number {
  for (const [k, v] of s) {
    if (new RegExp(`^relay_${relayId}\\.${direction}\\.(cpu_\\d+\\.)?${field}$`).test(k)) return Number(v);
  }
  return Number.NaN;
}

describe.skipIf(!ready)('ZMQ port control against the running relay', () => {
  beforeAll(async () => {
    createNetns(ns);
    createVethPair(vfA, peerA, { nsB: ns });
    createVethPair(vfB, peerB, { nsB: ns });
    // No IPv6 on the veths: their router solicitations and MLD reports would blur frame counts.
    for (const [vf, peer] of [[vfA, peerA], [vfB, peerB]]) {
      run('sysctl', ['-qw', `net.ipv6.conf.${vf}.disable_ipv6=1`]);
      nsExec(ns, 'sysctl', ['-qw', `net.ipv6.conf.${peer}.disable_ipv6=1`]);
    }
    sysfs = createFakeSysfs({
      devices: [
        { pci: PCI_A, ifnames: [vfA], physfn: '0000:05:00.0', vfIndex: 1 },
        { pci: PCI_B, ifnames: [vfB], physfn: '0000:05:00.0', vfIndex: 2 },
        { pci: PCI_NO_NETDEV, physfn: '0000:05:00.0', vfIndex: 3 },
      ],
    });
    dir = mkdtempSync(join(tmpdir(), `vio4wd-zmqctl-${process.pid}-`));
    portControlEp = `ipc://${dir}/port_control`;
    statsEp = `ipc://${dir}/stats`;
    relay = await startRelay({
      cpus: [0],
      dynamicSockets: true,
      noZmq: false,
      configLines: [
        `VIRTIOFWD_SYSFS_ROOT=${sysfs.root}`,
        `VIRTIOFWD_ZMQ_PORT_CONTROL_EP=${portControlEp}`,
        `VIRTIOFWD_ZMQ_STATS_EP=${statsEp}`,
        'VIRTIOFWD_ZMQ_CONFIG_EP=off',
        'VIRTIOFWD_ZMQ_CORE_SCHED_EP=off',
        'VIO4WD_CORE_SCHED_ENABLE=false',
      ],
    });
  });

  afterAll(async () => {
    await relay?.stop();
    await stopAll();
    deleteLink(vfA);
    deleteLink(vfB);
    deleteNetns(ns);
    sysfs?.remove();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('add_sock creates a socket a virtio-user VM connects to; its frames reach the VF peer; stats count them', async () => {
    const path = join(dir, 'vm1.sock');
    const out = expectOk(portControl('add_sock', `--pci-addr=${PCI_A}`, `--vhost-path=${path}`));
    expect(out).toBe('');
    expect(existsSync(path)).toBe(true);
    expect(expectOk(portControl('query_pci', `--vhost-path=${path}`)).trim()).toBe(PCI_A);
    // The short form and upper case name the same VF.
    expectFailure(portControl('add_sock', '--pci-addr=05:08.1', `--vhost-path=${join(dir, 'other.sock')}`), /already attached to relay 0.*code -17/);

    const before = linkCounter(peerA, 'rx_packets', ns);
    let testpmd: Testpmd | null = startTestpmd({ vdevs: [virtioUserVdev({ path, queueSize: 1024 })], forwardMode: 'txonly', txpkts: 64, cpu: 1 });
    try {
      await waitFor(() => linkCounter(peerA, 'rx_packets', ns) - before > 5_000, 30_000, '5 000 frames on the peer of the added VF');
      const ports = await testpmd.stop();
      testpmd = null;
      await sleep(300);
      const received = linkCounter(peerA, 'rx_packets', ns) - before;
      expect(ports[0].txPackets).toBeGreaterThan(5_000);

      const s = stats('--include-inactive', '--delay=0', '--relay=0');
      expect(s.get('relay_0.vf.pci_addr_str')).toBe(PCI_A);
      expect(s.get('relay_0.vhost.vhost_socket_name')).toBe(path);
      // Every frame taken from the guest went to the VF and reached the peer, or is counted as
      // dropped: virtio-user fills its ring before enabling it and after disabling it, and the
      // relay discards what a disabled ring holds (vhost-user spec). testpmd counts a frame as
      // sent once it is in the vring, so it may count more than the relay took.
      const fromVm = counter(s, 0, 'vm_to_vf', 'pkts_rx_from_vm');
      const toVf = counter(s, 0, 'vm_to_vf', 'pkts_tx_to_vf');
      const dropped = counter(s, 0, 'vm_to_vf', 'pkts_dropped_vf_not_connected') + counter(s, 0, 'vm_to_vf', 'pkts_dropped_vf_queue_full');
      expect(fromVm).toBeLessThanOrEqual(ports[0].txPackets);
      expect(toVf + dropped).toBe(fromVm);
      expect(toVf).toBeGreaterThan(5_000);
      expect(counter(s, 0, 'vm_to_vf', 'bytes_tx_to_vf')).toBe(toVf * 64);
      expect(received).toBe(toVf);
    } finally {
      await testpmd?.stop();
    }

    // remove_sock with a device that is not the relay's is refused and changes nothing.
    expectFailure(portControl('remove_sock', `--vhost-path=${path}`, `--pci-addr=${PCI_B}`), /has 0000:05:08\.1, not 0000:05:08\.2.*code 2/);
    expect(expectOk(portControl('query_pci', `--vhost-path=${path}`)).trim()).toBe(PCI_A);
    expectOk(portControl('remove_sock', `--vhost-path=${path}`, `--pci-addr=${PCI_A}`));
    expect(existsSync(path)).toBe(false);
    expectFailure(portControl('query_pci', `--vhost-path=${path}`), new RegExp(`no relay serves ${path}.*code 2`));
    expectFailure(portControl('remove_sock', `--vhost-path=${path}`), /no relay for .*vm1\.sock.*code 1/);
    // The VF is free again: a second add_sock may take it.
    const path2 = join(dir, 'vm2.sock');
    expectOk(portControl('add_sock', `--pci-addr=${PCI_A}`, `--vhost-path=${path2}`));
    expectFailure(portControl('add_sock', `--pci-addr=${PCI_B}`, `--vhost-path=${path2}`), /socket .*vm2\.sock is already registered.*code 1/);
    expectOk(portControl('remove_sock', `--pci-addr=${PCI_A}`));
    expect(existsSync(path2)).toBe(false);
  });

  it('add and remove by --virtio-id, conditional forms, and traffic from the VF peer is counted on the relay', async () => {
    expectOk(portControl('add', '--virtio-id=5', `--pci-addr=${PCI_B}`));
    // The tools run synchronously, so the relay's log lines are read once the event loop turns.
    await waitFor(
      () => relay.logs().some((l) => l.relay === 5 && l.msg === 'device attached' && JSON.stringify(l.netdevs) === JSON.stringify([vfB])),
      5_000,
      `the relay to log that relay 5 polls ${vfB}`,
    );
    // Conditional add of the same VF on the same relay is fine; unconditional is "busy".
    expectOk(portControl('add', '--virtio-id=5', `--pci-addr=${PCI_B}`, '--conditional'));
    expectFailure(portControl('add', '--virtio-id=5', `--pci-addr=${PCI_B}`), /relay 5 already has 0000:05:08\.2.*code 8/);
    expectFailure(portControl('add', '--virtio-id=5', `--pci-addr=${PCI_A}`, '--conditional'), /relay 5 already has 0000:05:08\.2.*code 8/);
    // The same VF on another relay.
    expectFailure(portControl('add', '--virtio-id=6', `--pci-addr=${PCI_B}`), /0000:05:08\.2 is already attached to relay 5/);

    // With no VM, frames from the VF side are taken and counted as "VM not connected".
    const s0 = stats('--include-inactive', '--delay=0', '--relay=5');
    const dropped0 = counter(s0, 5, 'vf_to_vm', 'pkts_dropped_vm_not_connected');
    const sent = sendFrames(peerB, 200);
    await waitFor(
      () => counter(stats('--include-inactive', '--delay=0', '--relay=5'), 5, 'vf_to_vm', 'pkts_rx_from_vf') >= sent,
      10_000,
      'the relay to count the frames injected on the VF peer',
    );
    const s1 = stats('--include-inactive', '--delay=0', '--relay=5');
    expect(counter(s1, 5, 'vf_to_vm', 'pkts_dropped_vm_not_connected') - dropped0).toBeGreaterThanOrEqual(sent);
    expect(s1.get('relay_5.vf.pci_addr_str')).toBe(PCI_B);
    // Inactive relays are left out unless asked for.
    expect(stats('--delay=0').has('relay_5.vf.pci_addr_str')).toBe(false);

    expectFailure(portControl('remove', '--virtio-id=5', `--pci-addr=${PCI_A}`), /relay 5 has 0000:05:08\.2, not VF 0000:05:08\.1.*code 3/);
    expectFailure(portControl('remove', '--virtio-id=5', '--name=net_bonding7'), /relay 5 has 0000:05:08\.2, not bond net_bonding7.*code 3/);
    expectOk(portControl('remove', '--virtio-id=5', `--pci-addr=${PCI_B}`));
    expectFailure(portControl('remove', '--virtio-id=5'), /relay 5 has no device to remove.*code 4/);
    expectOk(portControl('remove', '--virtio-id=5', '--conditional'));
    // remove with the id alone takes whatever the relay holds.
    expectOk(portControl('add', '--virtio-id=63', '--pci-addr=05:08.2'));
    expectOk(portControl('remove', '--virtio-id=63'));
  });

  it('refuses bad devices, bad ids and malformed requests with status 1 and a message', () => {
    expectFailure(portControl('add', '--virtio-id=3', `--pci-addr=${PCI_ABSENT}`), /cannot attach VF 0000:05:09\.0: VF 0000:05:09\.0 does not exist.*code 2/);
    expectFailure(portControl('add', '--virtio-id=3', `--pci-addr=${PCI_NO_NETDEV}`), /VF 0000:05:08\.3 has no netdev.*code 2/);
    expectFailure(portControl('add_sock', `--pci-addr=${PCI_ABSENT}`, `--vhost-path=${join(dir, 'x.sock')}`), /0000:05:09\.0 does not exist.*code 3/);
    // A failed add_sock leaves nothing behind.
    expect(existsSync(join(dir, 'x.sock'))).toBe(false);
    expectFailure(portControl('query_pci', `--vhost-path=${join(dir, 'x.sock')}`), /no relay serves/);
    // Malformed addresses and ids never reach the daemon.
    expectFailure(portControl('add', '--virtio-id=3', '--pci-addr=05:08'), /05:08/);
    expectFailure(portControl('add', '--virtio-id=3', '--pci-addr=zz:00.0'), /zz:00\.0/);
    expectFailure(portControl('add', '--virtio-id=64', `--pci-addr=${PCI_A}`), /--virtio-id 64 is outside 0\.\.63/);
    expectFailure(portControl('add', '--virtio-id=-1', `--pci-addr=${PCI_A}`), /virtio-id/);
    expectFailure(portControl('add', `--pci-addr=${PCI_A}`), /virtio.?id/i);
    expectFailure(portControl('remove'), /virtio.?id/i);
    expectFailure(portControl('query_pci'), /vhost.?path/i);
    expectFailure(portControl('add_sock', `--pci-addr=${PCI_A}`), /vhost.?path|socket path/i);
    expectFailure(portControl('remove_sock'), /socket path|vhost.?path/i);
    expectFailure(portControl('frobnicate'), /unknown operation "frobnicate"/);
    expectFailure(portControl(), /exactly one operation/);
    expectFailure(portControl('add', '--virtio-id=3', `--pci-addr=${PCI_A}`, '--bogus'), /bogus/);
    // Bond rules.
    expectFailure(portControl('add', '--virtio-id=3', `--pci-addr=${PCI_A}`, `--pci-addr=${PCI_B}`), /name/i);
    expectFailure(portControl('add', '--virtio-id=3', '--name=net_bonding1', `--pci-addr=${PCI_A}`), /at least 2|≥ ?2|two/i);
    expectFailure(portControl('add', '--virtio-id=3', '--name=bond1', `--pci-addr=${PCI_A}`, `--pci-addr=${PCI_B}`), /must start with net_bonding/);
    expectFailure(portControl('add', '--virtio-id=3', '--name=net_bonding1', '--mode=4', `--pci-addr=${PCI_A}`, `--pci-addr=${PCI_B}`), /mode 4/);
    expectFailure(portControl('add', '--virtio-id=3', '--name=net_bonding1', '--mode=7', `--pci-addr=${PCI_A}`, `--pci-addr=${PCI_B}`), /mode/);
    const nine = Array.from({ length: 9 }, (_, i) => `--pci-addr=0000:06:0${i}.0`);
    expectFailure(portControl('add', '--virtio-id=3', '--name=net_bonding1', ...nine), /9 .*at most 8|at most 8/);
    // A bond whose member is missing attaches nothing.
    expectFailure(portControl('add', '--virtio-id=3', '--name=net_bonding1', `--pci-addr=${PCI_A}`, `--pci-addr=${PCI_ABSENT}`), /net_bonding1.*0000:05:09\.0/);
    expectOk(portControl('add', '--virtio-id=3', `--pci-addr=${PCI_A}`));
    expectOk(portControl('remove', '--virtio-id=3', `--pci-addr=${PCI_A}`));
    // A daemon that is not there: the tool gives up with a message, not a hang.
    const r = cli('virtioforwarder_port_control', [`--zmq-ep=ipc://${dir}/nobody`, '--timeout=300', 'query_pci', '--vhost-path=/x']);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/virtioforwarder_port_control: .*nobody does not exist \(is virtio-forwarder running/);
  });

  it('add_sock with a bond: query_pci names it, traffic follows its mode, remove_sock by name undoes it', async () => {
    const path = join(dir, 'bonded-vm.sock');
    const pcis = [`--pci-addr=${PCI_A}`, `--pci-addr=${PCI_B}`];
    expectOk(portControl('add_sock', `--vhost-path=${path}`, '--name=net_bonding20', '--mode=3', ...pcis));
    expect(expectOk(portControl('query_pci', `--vhost-path=${path}`)).trim()).toBe('net_bonding20');
    // Its members are taken: neither a VF nor another bond may use them.
    expectFailure(portControl('add_sock', `--vhost-path=${join(dir, 'other.sock')}`, `--pci-addr=${PCI_B}`), /0000:05:08\.2 is already attached to relay \d+.*code -17/);
    expectFailure(portControl('add', '--virtio-id=30', '--name=net_bonding30', ...pcis), /member 0000:05:08\.1 is already attached.*code 3/);
    const before = [linkCounter(peerA, 'rx_packets', ns), linkCounter(peerB, 'rx_packets', ns)];
    const delta = () => [linkCounter(peerA, 'rx_packets', ns) - before[0], linkCounter(peerB, 'rx_packets', ns) - before[1]];
    let testpmd: Testpmd | null = startTestpmd({ vdevs: [virtioUserVdev({ path, queueSize: 1024 })], forwardMode: 'txonly', txpkts: 64, cpu: 1 });
    try {
      await waitFor(() => delta().every((n) => n > 5_000), 30_000, '5 000 frames on each bond member peer');
      await testpmd.stop();
      testpmd = null;
    } finally {
      await testpmd?.stop();
    }
    await sleep(300);
    // Broadcast: both members carry the same frames.
    const [a, b] = delta();
    expect(a).toBe(b);
    expectFailure(portControl('remove_sock', `--vhost-path=${path}`, '--name=net_bonding21'), /not bond net_bonding21.*code 2/);
    expectOk(portControl('remove_sock', '--name=net_bonding20'));
    expect(existsSync(path)).toBe(false);
    expectFailure(portControl('query_pci', `--vhost-path=${path}`), /no relay serves/);
    // The members are free again.
    expectOk(portControl('add', '--virtio-id=31', '--name=net_bonding31', '--mode=0', ...pcis));
    expectOk(portControl('remove', '--virtio-id=31'));
  });
});

/** Sends `count` broadcast frames out of `ifname` in the namespace through an AF_PACKET socket (python3). */
function sendFrames(ifname: string, count: number): number {
  const script = [
    'import socket,sys',
    's=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)',
    `s.bind((sys.argv[1],0))`,
    "f=bytes.fromhex('ffffffffffff020000000001'+'88b5')+bytes(50)",
    'for i in range(int(sys.argv[2])): s.send(f)',
  ].join('\n');
  const r = spawnSync('ip', ['netns', 'exec', ns, 'python3', '-c', script, ifname, String(count)], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`sending frames on ${ifname} failed: ${r.stderr}`);
  return count;
}
