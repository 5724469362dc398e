// The operator CLIs and the OVSDB monitor against the real daemon: a veth stands in for VF
// 0000:05:08.1 through a fake sysfs, sockets are created on demand by add_sock, and DPDK virtio-user
// in a testpmd process is the VM, so the stats and load tools report real traffic. Needs root and
// `npx tsc -p .` first.
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createFakeSysfs, type FakeSysfs } from '../support/fake-sysfs.js';
import { requireOrSkip } from '../support/env.js';
import { requireBuilt, runCli } from '../support/memory-registry.js';
import { createNetns, createVethPair, deleteLink, deleteNetns, nsExec, requireBinary, requireRoot, uniqueTag } from '../support/netns.js';
import { startProcess, stopAll, waitFor } from '../support/processes.js';
import { startRelay, type RunningRelay } from '../support/relay.js';
import { startTestpmd, virtioUserVdev, type Testpmd } from '../support/testpmd.js';
import { missingOvsdbPrerequisite, OvsdbSandbox } from '../support/ovsdb.js';
import { ControlClient } from '../../port-control/client.js';
import { PROTOCOL_VERSION } from '../../port-control/protocol.js';

vi.setConfig({ testTimeout: 90_000 });

const ready = requireRoot() && requireBinary('ip') && requireBinary('dpdk-testpmd');
const tag = uniqueTag();
const ns = `pcns${tag}`;
const vf = `pcvf${tag}`;
const peer = `pcpr${tag}`;
const VF_PCI = '0000:05:08.1';
/** A VF whose function has no netdev (as when bound to vfio-pci): attaching it must fail cleanly. */
const NO_NETDEV_PCI = '0000:05:08.2';

const dir = mkdtempSync(join(tmpdir(), `pc-relay-${process.pid}-`));
const EP = { pc: `ipc://${dir}/zmq/port_control`, stats: `ipc://${dir}/zmq/stats`, config: `ipc://${dir}/zmq/config`, cs: `ipc://${dir}/zmq/core_sched` };
const vmSocket = join(dir, 'vm1.sock');

let sysfs: FakeSysfs | undefined;
let relay: RunningRelay | undefined;
let testpmd: Testpmd | undefined;

const pc = (...args: string[]) => runCli('virtioforwarder_port_control', [...args, `--zmq-ep=${EP.pc}`]);
const statsLines = async (...args: string[]) => {
  const r = await runCli('virtioforwarder_stats', [`--stats-ep=${EP.stats}`, ...args]);
  expect(r.code, r.stderr).toBe(0);
  return r.stdout;
};
const value = (text: string, key: RegExp) => {
  const m = new RegExp(`^${key.source}=(\\S+)$`, 'm').exec(text);
  return m ? m[1] : undefined;
};

beforeAll(() => {
  if (!ready) return;
  requireBuilt();
  createNetns(ns);
    createVethPair(vf, peer, { nsB: ns });
  nsExec(ns, 'ip', ['addr', 'add', '10.78.0.1/24', 'dev', peer]);
  nsExec(ns, 'ip', ['neigh', 'add', '10.78.0.2', 'lladdr', '02:00:00:78:00:02', 'dev', peer]);
  sysfs = createFakeSysfs({
    devices: [
      { pci: VF_PCI, ifnames: [vf], physfn: '0000:05:00.0', vfIndex: 1 },
      { pci: NO_NETDEV_PCI, physfn: '0000:05:00.0', vfIndex: 2 },
    ],
  });
});

afterAll(async () => {
  await stopAll();
  deleteLink(vf);
  deleteNetns(ns);
  sysfs?.remove();
  rmSync(dir, { recursive: true, force: true });
});

describe.skipIf(!ready)('operator tools against the real relay', () => {
  beforeAll(async () => {
    relay = await startRelay({
      cpus: [0],
      dynamicSockets: true,
      noZmq: false,
      configLines: [
        `VIRTIOFWD_SYSFS_ROOT=${sysfs!.root}`,
        `VIRTIOFWD_ZMQ_PORT_CONTROL_EP=${EP.pc}`,
        `VIRTIOFWD_ZMQ_STATS_EP=${EP.stats}`,
        `VIRTIOFWD_ZMQ_CONFIG_EP=${EP.config}`,
        `VIRTIOFWD_ZMQ_CORE_SCHED_EP=${EP.cs}`,
        'VIO4WD_CORE_SCHED_ENABLE=true',
      ],
    });
  });

  afterAll(async () => {
    await testpmd?.stop().catch(() => undefined);
    await relay?.stop();
    relay = undefined;
  });

  it('creates a socket for a VF with add_sock and names the VF with query_pci', async () => {
    let r = await pc('add_sock', `--vhost-path=${vmSocket}`, `--pci-addr=05:08.1`);
    expect(r.code, r.stderr).toBe(0);
    await waitFor(() => existsSync(vmSocket), 10_000, `the vhost-user socket ${vmSocket}`);
    r = await pc('query_pci', `--vhost-path=${vmSocket}`);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe(`${VF_PCI}\n`);
    // The same VF cannot back a second socket.
    r = await pc('add_sock', `--vhost-path=${vmSocket}.2`, `--pci-addr=${VF_PCI.toUpperCase()}`);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/add_sock failed: .*0000:05:08\.1/);
    expect(existsSync(`${vmSocket}.2`)).toBe(false);
  });

  it('refuses a VF with no netdev, naming it, and leaves no socket behind', async () => {
    const path = join(dir, 'vm-bad.sock');
    const r = await pc('add_sock', `--vhost-path=${path}`, `--pci-addr=${NO_NETDEV_PCI}`);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/0000:05:08\.2/);
    expect(existsSync(path)).toBe(false);
  });

  it('reports real traffic in the stats and the load monitor once a VM is connected', async () => {
    testpmd = startTestpmd({ vdevs: [virtioUserVdev({ path: vmSocket, queueSize: 1024 })], forwardMode: 'rxonly', cpu: 1 });
    await waitFor(async () => value(await statsLines('--delay=0'), /relay_\d+\.active/) === 'True', 30_000, 'the relay to become active');
    const ping = startProcess('ip', ['netns', 'exec', ns, 'ping', '-c', '200', '-i', '0.005', '-W', '1', '10.78.0.2'], { label: 'ping' });
    await ping.exited;
    const text = await statsLines('--delay=300');
    expect(value(text, /relay_\d+\.vf\.pci_addr_str/)).toBe(VF_PCI);
    expect(value(text, /relay_\d+\.vhost\.vhost_socket_name/)).toBe(vmSocket);
    expect(Number(value(text, /relay_\d+\.vf_to_vm\.cpu_0\.pkts_rx_from_vf/))).toBeGreaterThanOrEqual(200);
    expect(Number(value(text, /relay_\d+\.vf_to_vm\.cpu_0\.pkts_tx_to_vm/))).toBeGreaterThanOrEqual(200);
    expect(value(text, /relay_\d+\.vm_to_vf\.cpu_0\.pkt_rate_tx_to_vf/)).toMatch(/^\d+\.\d+(e[+-]\d+)?$/);

    const load = await runCli('virtioforwarder_monitor_load', [`--stats-ep=${EP.stats}`, '--interval=0.3', '--count=1']);
    expect(load.code, load.stderr).toBe(0);
    expect(load.stdout).toMatch(/^CPU loads\nCPU0: \[[# ]{60}\] +\d+\.\d%\n$/);

    const grid = await runCli('virtioforwarder_core_pinner', [`--sched-ep=${EP.cs}`]);
    expect(grid.code, grid.stderr).toBe(0);
    expect(grid.stdout).toMatch(/== 00 ==/);
    const pin = await runCli('virtioforwarder_core_pinner', [`--sched-ep=${EP.cs}`, '--virtio-cpu=0:1']);
    expect(pin.code).toBe(1);
    expect(pin.stderr).toMatch(/CPU 1/);
  });

  it('removes the socket and the VF with remove_sock', async () => {
    await testpmd?.stop();
    testpmd = undefined;
    const r = await pc('remove_sock', `--vhost-path=${vmSocket}`, `--pci-addr=${VF_PCI}`);
    expect(r.code, r.stderr).toBe(0);
    await waitFor(() => !existsSync(vmSocket), 10_000, `${vmSocket} to be removed`);
    const q = await pc('query_pci', `--vhost-path=${vmSocket}`);
    expect(q.code).toBe(1);
    // The VF is free again: it can go onto a relay by id.
    expect((await pc('add', '--virtio-id=3', `--pci-addr=${VF_PCI}`)).code).toBe(0);
    expect((await pc('add', '--virtio-id=3', `--pci-addr=${VF_PCI}`, '--conditional')).code).toBe(0);
    expect((await pc('remove', '--virtio-id=3', '--pci-addr=05:08.1')).code).toBe(0);
    const again = await pc('remove', '--virtio-id=3');
    expect(again.code).toBe(1);
  });

  it('add --vf-port picks the port of that VF over VIRTIOFWD_VF_PORT; a bad kind is refused by the CLI and by the service', async () => {
    const portsOf = async (id: number) => {
      const r = await runCli('virtioforwarder_stats', [`--stats-ep=${EP.stats}`, '--json', '--include-inactive', '--delay=0', `--relay=${id}`]);
      expect(r.code, r.stderr).toBe(0);
      return (JSON.parse(r.stdout) as { relays: { id: number; ports: unknown[] }[] }).relays.find((x) => x.id === id)?.ports;
    };
    expect((await pc('add', '--virtio-id=4', `--pci-addr=${VF_PCI}`, '--vf-port=af_xdp')).code).toBe(0);
    expect(await portsOf(4)).toEqual([{ netdev: vf, port: 'af_xdp', attach: 'native', dispatcher: false, zeroCopy: false, umem: 'relay', rxInPlace: false, rxFramesInPlace: 0, txFramesInPlace: 0 }]); // no VM: the relay's chunks only
    expect((await pc('remove', '--virtio-id=4')).code).toBe(0);
    expect((await pc('add', '--virtio-id=4', `--pci-addr=${VF_PCI}`)).code).toBe(0);
    expect(await portsOf(4)).toEqual([{ netdev: vf, port: 'af_packet' }]);
    expect((await pc('remove', '--virtio-id=4')).code).toBe(0);

    const cli = await pc('add', '--virtio-id=4', `--pci-addr=${VF_PCI}`, '--vf-port=dpdk');
    expect(cli.code).toBe(1);
    expect(cli.stderr).toMatch(/--vf-port=dpdk: use one of af_packet, af_xdp, auto/);
    const wrongOp = await pc('remove', '--virtio-id=4', '--vf-port=af_xdp');
    expect(wrongOp.code).toBe(1);
    expect(wrongOp.stderr).toMatch(/--vf-port is for add and add_sock only/);
    // Past the CLI, straight to the service: the daemon names the field and stays up.
    const client = new ControlClient(EP.pc, 2000);
    try {
      const reply = await client.requestRaw(JSON.stringify({ version: PROTOCOL_VERSION, op: 'add', virtioId: 4, pciAddrs: [VF_PCI], vfPort: 'xdp' }));
      expect(reply).toMatch(/field vfPort must be one of af_packet, af_xdp, auto/);
    } finally {
      client.close();
    }
    // Nothing was attached: an empty relay is not listed at all.
    expect(await portsOf(4)).toBeUndefined();
  });
});

const ovsdbReady = ready && requireOrSkip(missingOvsdbPrerequisite() === null, missingOvsdbPrerequisite() ?? '');

describe.skipIf(!ovsdbReady)('OVSDB monitor in the real relay', () => {
  const sandbox = new OvsdbSandbox(join(dir, 'ovsdb'));
  const statsEp = `ipc://${dir}/zmq-ovsdb/stats`;
  const relayOf = async (id: number) => {
    const r = await runCli('virtioforwarder_stats', [`--stats-ep=${statsEp}`, '--include-inactive', '--delay=0', `--relay=${id}`]);
    expect(r.code, r.stderr).toBe(0);
    return value(r.stdout, new RegExp(`relay_${id}\\.vf\\.pci_addr_str`));
  };

  beforeAll(async () => {
    await sandbox.start();
    sandbox.vsctl('init');
    sandbox.vsctl('add-br', 'br0');
    relay = await startRelay({
      cpus: [0],
      dynamicSockets: true,
      noZmq: false,
      configLines: [
        `VIRTIOFWD_SYSFS_ROOT=${sysfs!.root}`,
        `VIRTIOFWD_OVSDB_SOCK_PATH=${sandbox.socketPath}`,
        'VIRTIOFWD_ZMQ_PORT_CONTROL_EP=off',
        `VIRTIOFWD_ZMQ_STATS_EP=${statsEp}`,
        'VIRTIOFWD_ZMQ_CONFIG_EP=off',
        'VIO4WD_CORE_SCHED_ENABLE=false',
      ],
    });
  });

  afterAll(async () => {
    await relay?.stop();
    relay = undefined;
    await sandbox.stop();
  });

  it('attaches the VF behind a tagged interface, moves it on retag and detaches it on untag', async () => {
    sandbox.vsctl('add-port', 'br0', vf, '--', 'set', 'Interface', vf, 'external_ids:virtio_forwarder=2');
    await waitFor(async () => (await relayOf(2)) === VF_PCI, 15_000, `relay 2 to hold ${VF_PCI}`);
    sandbox.vsctl('set', 'Interface', vf, 'external_ids:virtio_forwarder=4');
    await waitFor(async () => (await relayOf(4)) === VF_PCI, 15_000, `relay 4 to hold ${VF_PCI}`);
    expect(await relayOf(2)).not.toBe(VF_PCI);
    sandbox.vsctl('remove', 'Interface', vf, 'external_ids', 'virtio_forwarder');
    await waitFor(async () => (await relayOf(4)) !== VF_PCI, 15_000, `relay 4 to let go of ${VF_PCI}`);
  });
});
