// The end-to-end rig with a reference back-end: the test guest on QEMU's vhost-user client, DPDK's
// net_vhost back-end (dpdk-testpmd, io forwarding) relaying to an AF_PACKET socket on a veth whose
// peer sits in a network namespace. If this passes, the guest image, the QEMU options and the
// netns plumbing are sound, and a failure in the relay's own e2e tests points at the relay.
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hasBinary, isRoot, requireOrSkip, run } from '../support/env.js';
import { ensureGuestImage } from '../support/guest-image.js';
import { ensureHugepages, hugepagesFree } from '../support/hugepages.js';
import { createNetns, createVethPair, deleteLink, deleteNetns, nsExec, uniqueTag } from '../support/netns.js';
import { startProcess, waitFor, type StartedProcess } from '../support/processes.js';
import { startGuestVm, type GuestVm } from '../support/qemu.js';

const canRun =
  requireOrSkip(isRoot(), 'the DPDK vhost rig needs root (network namespaces, veths, hugepages)') &&
  requireOrSkip(hasBinary('qemu-system-x86_64'), 'the DPDK vhost rig needs qemu-system-x86_64 (package qemu-system-x86)') &&
  requireOrSkip(hasBinary('dpdk-testpmd'), 'the DPDK vhost rig needs dpdk-testpmd (package dpdk-dev)');

// testpmd's -m 256 and, at most, the guest's 256 MiB of hugetlbfs memory, 2 MiB each.
const HUGEPAGES_NEEDED = 256;

// Both connection directions and both shareable memory kinds: the relay meets all of them.
const variants = [
  { qemuRole: 'client', qemuIsServer: false, memoryBackend: 'hugetlbfs' as const },
  { qemuRole: 'server', qemuIsServer: true, memoryBackend: 'memfd' as const },
];

describe.runIf(canRun).each(variants)('test guest ⇄ QEMU vhost-user $qemuRole ($memoryBackend memory) ⇄ DPDK net_vhost ⇄ AF_PACKET ⇄ veth in a netns', ({ qemuIsServer, memoryBackend }) => {
  const tag = uniqueTag();
  const ns = `v4gns${tag}`;
  const hostVeth = `v4gA${tag}`;
  const nsVeth = `v4gB${tag}`;
  const peerIp = '10.0.2.2';
  const guestIp = '10.0.2.15';
  const guestMac = '52:54:00:4d:00:01';
  let dir: string;
  let testpmd: StartedProcess | undefined;
  let vm: GuestVm | undefined;

  beforeAll(async () => {
    await ensureGuestImage();
    ensureHugepages(768);
    if (hugepagesFree() < HUGEPAGES_NEEDED) {
      throw new Error(`the DPDK vhost rig needs ${HUGEPAGES_NEEDED} free hugepages, only ${hugepagesFree()} are free`);
    }

    dir = mkdtempSync(join(tmpdir(), 'vio4wd-guest-dpdk-'));
    const socketPath = join(dir, 'vhost.sock');
    createNetns(ns);
    createVethPair(hostVeth, nsVeth, { nsB: ns });
    nsExec(ns, 'ip', ['addr', 'add', `${peerIp}/24`, 'dev', nsVeth]);
    // The root-namespace end only carries frames for DPDK; keep the host's own IPv6 chatter off it.
    run('sysctl', ['-q', '-w', `net.ipv6.conf.${hostVeth}.disable_ipv6=1`]);

    // CPU 0 for the polling back-end, CPU 1 for QEMU: TCG starves if both share a core.
    const startTestpmd = () =>
      startProcess(
        'dpdk-testpmd',
        [
          '--lcores=0@0,1@0', '--no-pci', '--in-memory', `--file-prefix=v4g${process.pid}`, '-m', '256',
          '--iova-mode=va', '--no-telemetry',
          '--vdev', `net_vhost0,iface=${socketPath}${qemuIsServer ? ',client=1' : ''}`,
          '--vdev', `net_af_packet1,iface=${hostVeth}`,
          '--', '--forward-mode=io', '--port-topology=paired', '--total-num-mbufs=16384',
          '--stats-period=1', '--auto-start', '--nb-cores=1',
        ],
        { label: 'dpdk-testpmd' },
      );
    const startVm = () =>
      startGuestVm({ machine: 'pc', memoryBackend, vhostUser: { socketPath, qemuIsServer }, mac: guestMac, ip: `${guestIp}/24`, cpu: 1 });
    const socketAppears = (owner: string, output: () => string) =>
      waitFor(() => existsSync(socketPath), 30_000, `${owner} to create ${socketPath}`).catch((err: Error) => {
        throw new Error(`${err.message}\n${output().slice(-3000)}`);
      });

    // Whoever listens starts first, so the connecting side finds the socket.
    if (qemuIsServer) {
      vm = await startVm();
      await socketAppears('QEMU', () => vm!.output());
      testpmd = startTestpmd();
    } else {
      testpmd = startTestpmd();
      await socketAppears('dpdk-testpmd', () => testpmd!.output());
      vm = await startVm();
    }
    await vm.ready();
  });

  afterAll(async () => {
    await vm?.stop();
    await testpmd?.stop();
    deleteNetns(ns);
    deleteLink(hostVeth);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('brings the guest up on virtio-net-pci with the vhost-user back-end', async () => {
    expect(vm!.output()).toMatch(new RegExp(`eth0 up addr=${guestIp}/24 mac=${guestMac} driver=virtio_net`));
    // testpmd logs the vhost-user session reaching its running state.
    expect(testpmd!.output()).toMatch(/Port 0: link state change event|VHOST_CONFIG.*new device/i);
  });

  it('lets the guest ping the peer in the namespace', async () => {
    const result = await vm!.exec(`ping -c 3 -w 15 ${peerIp}`, 25_000);
    expect(result.output).toMatch(new RegExp(`bytes from ${peerIp.replace(/\./g, '\\.')}`));
    expect(result.status).toBe(0);
  });

  it('lets the namespace ping the guest and resolve the guest MAC over the relayed path', () => {
    const output = nsExec(ns, 'ping', ['-c', '2', '-w', '15', guestIp], { timeoutMs: 20_000 });
    expect(output).toMatch(/2 received/);
    const neighbour = nsExec(ns, 'ip', ['neigh', 'show', guestIp, 'dev', nsVeth]);
    expect(neighbour).toContain(guestMac);
  });

  it('reports a ping to an address nobody holds as failed', async () => {
    const result = await vm!.exec('ping -c 1 -W 2 10.0.2.99', 15_000);
    expect(result.status).not.toBe(0);
    expect(result.output).toMatch(/0 packets received|100% packet loss/);
  });
});
