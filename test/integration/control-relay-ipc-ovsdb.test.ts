// The IPC file monitor and the OVSDB monitor driving the real daemon. One dpdk-testpmd (the VM
// side) sends txonly into two relay sockets the whole time; a VF joins and leaves relays through
// the command file or through ovs-vsctl tags, and the frames that reach the VF's veth peer, and
// the per-relay counters of the stats service, show which relay (if any) now forwards.
import { appendFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { ControlClient } from '../../port-control/client.js';
import { createFakeSysfs, type FakeSysfs } from '../support/fake-sysfs.js';
import { createNetns, createVethPair, deleteLink, deleteNetns, linkCounter, requireBinary, requireRoot, uniqueTag } from '../support/netns.js';
import { missingOvsdbPrerequisite, OvsdbSandbox } from '../support/ovsdb.js';
import { sleep, stopAll, waitFor } from '../support/processes.js';
import { startRelay, type RunningRelay } from '../support/relay.js';
import { startTestpmd, virtioUserVdev, type Testpmd } from '../support/testpmd.js';
import { requireOrSkip } from '../support/env.js';

vi.setConfig({ testTimeout: 120_000, hookTimeout: 60_000 });

const ready = requireRoot() && requireBinary('dpdk-testpmd') && requireBinary('ip');
const ovsdbReady = ready && requireOrSkip(missingOvsdbPrerequisite() === null, missingOvsdbPrerequisite() ?? '');
const tag = uniqueTag();
const ns = `icns${tag}`;

let dir: string;
let relay: RunningRelay | null = null;
let testpmd: Testpmd | null = null;
let stats: ControlClient | null = null;

beforeAll(() => {
  createNetns(ns);
  dir = mkdtempSync(join(tmpdir(), `vio4wd-ipc-ovsdb-${process.pid}-`));
});

afterEach(async () => {
  await testpmd?.stop();
  testpmd = null;
  stats?.close();
  stats = null;
  await relay?.stop();
  relay = null;
});

afterAll(async () => {
  await stopAll();
  deleteNetns(ns);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

function vethToNamespace(vf: string, peer: string): void {
  createVethPair(vf, peer, { nsB: ns, noIpv6: true });
}

function relayZmqLines(): string[] {
  return [
    `VIRTIOFWD_ZMQ_STATS_EP=ipc://${dir}/stats`,
    'VIRTIOFWD_ZMQ_PORT_CONTROL_EP=off',
    'VIRTIOFWD_ZMQ_CONFIG_EP=off',
    'VIRTIOFWD_ZMQ_CORE_SCHED_EP=off',
    'VIO4WD_CORE_SCHED_ENABLE=false',
  ];
}

/** testpmd sending into the sockets of `relays` (one virtio-user port each), on CPU 1. */
async function startSending(relays: number[]): Promise<void> {
  testpmd = startTestpmd({
    vdevs: relays.map((r, i) => virtioUserVdev({ path: relay!.socketPath(r), queueSize: 1024 }, i)),
    forwardMode: 'txonly',
    txpkts: 64,
    cpu: 1,
  });
  stats = new ControlClient(`ipc://${dir}/stats`, 5000);
  for (const r of relays) await waitFor(async () => (await relayInfo(r))?.vmConnected, 20_000, `testpmd connected to relay ${r}`);
}

async function relayInfo(id: number) {
  const reply = await stats!.request('stats', { includeInactive: true, relays: [id] });
  return reply.relays.find((r) => r.id === id);
}

/** Frames relay `id` forwarded to its VF so far. */
async function forwardedBy(id: number): Promise<number> {
  return (await relayInfo(id))?.vmToVf.packets ?? 0;
}

/** Waits until `peer` received `frames` more frames than now, all forwarded by relay `id`. */
async function expectForwarding(id: number, peer: string, frames = 5_000): Promise<void> {
  // The relay's count first: frames it forwards while the peer's count is read then land on both
  // sides, so the relay's delta can only be the larger one.
  const relayBefore = await forwardedBy(id);
  const peerBefore = linkCounter(peer, 'rx_packets', ns);
  await waitFor(() => linkCounter(peer, 'rx_packets', ns) - peerBefore >= frames, 20_000, `${frames} frames from relay ${id} on ${peer}`);
  expect((await forwardedBy(id)) - relayBefore).toBeGreaterThanOrEqual(frames);
}

/** Checks that `peer` gets nothing for a while (the VF belongs to no relay). */
async function expectSilence(peer: string): Promise<void> {
  await sleep(300); // frames already in the VF's TX ring may still leave
  const before = linkCounter(peer, 'rx_packets', ns);
  await sleep(700);
  expect(linkCounter(peer, 'rx_packets', ns) - before).toBe(0);
}

describe.skipIf(!ready)('IPC file monitor on the running relay', () => {
  const vf = `iv${tag}`;
  const peer = `ip${tag}`;
  /** A VF (index 4 under its PF) that joins "the relay of its VF index" when no id is given. */
  const sriovVf = `is${tag}`;
  const sriovPeer = `isp${tag}`;
  let sysfs: FakeSysfs;

  beforeAll(() => {
    vethToNamespace(vf, peer);
    vethToNamespace(sriovVf, sriovPeer);
    sysfs = createFakeSysfs({
      devices: [{ pci: '0000:05:08.4', ifnames: [sriovVf], physfn: '0000:05:00.0', vfIndex: 4 }],
      virtualInterfaces: [vf],
    });
  });

  afterAll(() => {
    deleteLink(vf);
    deleteLink(sriovVf);
    sysfs?.remove();
  });

  it('adds a port written to the command file, forwards through it, and removes it', async () => {
    const commandFile = join(dir, 'vio_cmd');
    relay = await startRelay({
      cpus: [0],
      noZmq: false,
      configLines: [
        `VIRTIOFWD_SYSFS_ROOT=${sysfs.root}`,
        'VIRTIOFWD_IPC_PORT_CONTROL=true',
        `VIRTIOFWD_IPC_COMMAND_FILE=${commandFile}`,
        ...relayZmqLines(),
      ],
    });
    await startSending([3, 4]);

    // A line that is not understood does not stop the one after it.
    writeFileSync(commandFile, `frobnicate ${vf}\nadd_port ${vf} 3\n`);
    await expectForwarding(3, peer);
    await waitFor(() => relay!.logs().some((l) => typeof l.msg === 'string' && /frobnicate/.test(JSON.stringify(l))), 5_000, 'the bad line to be logged');

    // No id: an SR-IOV VF joins the relay of its VF index.
    appendFileSync(commandFile, `add_port ${sriovVf}\n`);
    await expectForwarding(4, sriovPeer);

    appendFileSync(commandFile, `del_port ${vf}\n`);
    await waitFor(async () => (await relayInfo(3))?.device === null, 10_000, 'relay 3 to lose its VF');
    await expectSilence(peer);
    // The other relay is untouched.
    await expectForwarding(4, sriovPeer);
  });
});

describe.skipIf(!ovsdbReady)('OVSDB monitor on the running relay', () => {
  const vf = `ov${tag}`;
  const peer = `op${tag}`;
  let sandbox: OvsdbSandbox;

  beforeAll(async () => {
    vethToNamespace(vf, peer);
    sandbox = new OvsdbSandbox(join(dir, 'ovsdb'));
    await sandbox.start();
    sandbox.vsctl('init');
    sandbox.vsctl('add-br', 'br-virtio');
  });

  afterAll(async () => {
    await sandbox?.stop();
    deleteLink(vf);
  });

  it('follows tag, retag, untag, delete and an ovsdb-server restart, with traffic', async () => {
    relay = await startRelay({
      cpus: [0],
      noZmq: false,
      configLines: [`VIRTIOFWD_OVSDB_SOCK_PATH=${sandbox.socketPath}`, ...relayZmqLines()],
    });
    await startSending([1, 2]);
    const attachedTo = async () => {
      for (const id of [1, 2]) if ((await relayInfo(id))?.device) return id;
      return null;
    };

    sandbox.vsctl('add-port', 'br-virtio', vf, '--', 'set', 'Interface', vf, 'external_ids:virtio_forwarder=1');
    await expectForwarding(1, peer);

    sandbox.vsctl('set', 'Interface', vf, 'external_ids:virtio_forwarder=2');
    await waitFor(async () => (await attachedTo()) === 2, 10_000, 'the VF to move to relay 2');
    await expectForwarding(2, peer);
    expect((await relayInfo(1))?.device).toBeNull();

    sandbox.vsctl('remove', 'Interface', vf, 'external_ids', 'virtio_forwarder');
    await waitFor(async () => (await attachedTo()) === null, 10_000, 'the VF to leave relay 2');
    await expectSilence(peer);

    sandbox.vsctl('set', 'Interface', vf, 'external_ids:virtio_forwarder=1');
    await expectForwarding(1, peer);
    sandbox.vsctl('del-port', 'br-virtio', vf);
    await waitFor(async () => (await attachedTo()) === null, 10_000, 'the VF to leave relay 1 when its port is deleted');
    await expectSilence(peer);

    // A restart of ovsdb-server: the tagged VF keeps forwarding and is not detached and re-added.
    sandbox.vsctl('add-port', 'br-virtio', vf, '--', 'set', 'Interface', vf, 'external_ids:virtio_forwarder=2');
    await expectForwarding(2, peer);
    const detachesBefore = relay.logs().filter((l) => l.msg === 'device detached').length;
    const connects = () => relay!.logs().filter((l) => /^OVSDB monitor connected/.test(String(l.msg))).length;
    const connectsBefore = connects();
    await sandbox.stop();
    await waitFor(() => relay!.logs().some((l) => /ovsdb-server closed the connection/.test(String(l.msg))), 10_000, 'the monitor to notice the restart');
    await expectForwarding(2, peer);
    await sandbox.start();
    await waitFor(() => connects() > connectsBefore, 15_000, 'the monitor to reconnect');
    await sleep(500); // the resync that follows the reconnection
    await expectForwarding(2, peer);
    expect(relay.logs().filter((l) => l.msg === 'device detached').length).toBe(detachesBefore);
    // And it follows the server again afterwards.
    sandbox.vsctl('set', 'Interface', vf, 'external_ids:virtio_forwarder=1');
    await waitFor(async () => (await attachedTo()) === 1, 15_000, 'the VF to move to relay 1 after the restart');
    await expectForwarding(1, peer);
  });
});
