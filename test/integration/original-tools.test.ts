// Netronome virtio-forwarder's own Python tools against vio4wd: port control (add, add_sock,
// remove_sock, query_pci), stats (flat and protobuf output), the core pinner and the load monitor.
// Their code cannot be part of this repository and cannot be fetched in CI, so the test runs only
// when VIO4WD_ORIGINAL_SRC names a directory holding the original's files (virtioforwarder.proto
// and scripts/python3/, e.g. from `git archive` of its repository); otherwise it is skipped with a
// warning. The tools are laid out as its install does: the scripts side by side, and the module
// protoc generates from its .proto in protobuf/virtioforwarder/ (a package) beside them.
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { Reactor } from '../../sys/poll.js';
import { ControlClient } from '../../port-control/client.js';
import { run } from '../support/env.js';
import { createFakeSysfs, type FakeSysfs } from '../support/fake-sysfs.js';
import { createNetns, createVethPair, deleteLink, deleteNetns, nsExec, requireBinary, requireRoot, uniqueTag } from '../support/netns.js';
import { DEBIAN_PYTHON, OUR_PROTO, generatePythonModule, requireProtobufPeer } from '../support/pb-peer.js';
import { sleep, stopAll, waitFor } from '../support/processes.js';
import { repoRoot, startRelay, type RunningRelay } from '../support/relay.js';
import { TestVm } from '../support/test-vm.js';

vi.setConfig({ testTimeout: 60_000, hookTimeout: 60_000 });

const SRC = process.env.VIO4WD_ORIGINAL_SRC;
if (!SRC) {
  console.warn(
    [
      '',
      '################################################################################',
      '# SKIPPED: original-tools.test.ts did not run the original virtio-forwarder tools.',
      '# Their code may not be committed here and cannot be downloaded in CI. Point',
      '# VIO4WD_ORIGINAL_SRC at a copy of its repository (virtioforwarder.proto and',
      '# scripts/python3/) to run them against vio4wd.',
      '################################################################################',
      '',
    ].join('\n'),
  );
}
const ready = Boolean(SRC) && requireRoot() && requireBinary('ip') && requireProtobufPeer();

const tag = uniqueTag();
const ns = `otns${tag}`;
const vfA = `oa${tag}`;
const peerA = `opa${tag}`;
const PCI_A = '0000:af:09.1';

/** Lays the original's tools out in `dest` the way its install does. */
function installOriginalTools(src: string, dest: string): void {
  const scripts = existsSync(join(src, 'scripts/python3')) ? join(src, 'scripts/python3') : src;
  const proto = join(src, 'virtioforwarder.proto');
  if (!existsSync(proto)) throw new Error(`VIO4WD_ORIGINAL_SRC=${src} holds no virtioforwarder.proto`);
  for (const f of readdirSync(scripts).filter((n) => n.endsWith('.py'))) copyFileSync(join(scripts, f), join(dest, f));
  const pkg = join(dest, 'protobuf', 'virtioforwarder');
  mkdirSync(pkg, { recursive: true });
  writeFileSync(join(dest, 'protobuf', '__init__.py'), '');
  writeFileSync(join(pkg, '__init__.py'), '');
  generatePythonModule(proto, pkg);
}

describe.skipIf(!ready)("the original virtio-forwarder's Python tools against vio4wd", () => {
  let sysfs: FakeSysfs;
  let relay: RunningRelay;
  let dir: string;
  let tools: string;
  let reactor: Reactor;
  let vm: TestVm;
  const EP = { pc: '', stats: '', cs: '' };

  const tool = (name: string, args: string[]) => {
    const r = spawnSync(DEBIAN_PYTHON, [join(tools, name), ...args], {
      encoding: 'utf8',
      timeout: 20_000,
      cwd: tools,
      env: { ...process.env, PYTHONDONTWRITEBYTECODE: '1' },
    });
    return { status: r.status, stdout: r.stdout, stderr: r.stderr };
  };
  const portControl = (...args: string[]) => tool('virtioforwarder_port_control.py', [...args, `--zmq_ep=${EP.pc}`]);

  async function jsonStats() {
    const c = new ControlClient(EP.stats);
    try {
      return await c.request('stats');
    } finally {
      c.close();
    }
  }

  beforeAll(async () => {
    createNetns(ns);
    createVethPair(vfA, peerA, { nsB: ns });
    run('sysctl', ['-qw', `net.ipv6.conf.${vfA}.disable_ipv6=1`]);
    nsExec(ns, 'sysctl', ['-qw', `net.ipv6.conf.${peerA}.disable_ipv6=1`]);
    sysfs = createFakeSysfs({ devices: [{ pci: PCI_A, ifnames: [vfA], physfn: '0000:af:00.0', vfIndex: 1 }] });
    dir = mkdtempSync(join(tmpdir(), `vio4wd-orig-${process.pid}-`));
    tools = join(dir, 'lib');
    mkdirSync(tools);
    installOriginalTools(SRC as string, tools);
    EP.pc = `ipc://${dir}/port_control`;
    EP.stats = `ipc://${dir}/stats`;
    EP.cs = `ipc://${dir}/core_sched`;
    relay = await startRelay({
      cpus: [0, 1],
      dynamicSockets: true,
      noZmq: false,
      logLevel: 6,
      configLines: [
        `VIRTIOFWD_SYSFS_ROOT=${sysfs.root}`,
        `VIRTIOFWD_ZMQ_PORT_CONTROL_EP=${EP.pc}`,
        `VIRTIOFWD_ZMQ_STATS_EP=${EP.stats}`,
        `VIRTIOFWD_ZMQ_CORE_SCHED_EP=${EP.cs}`,
        'VIRTIOFWD_ZMQ_CONFIG_EP=off',
        'VIO4WD_CORE_SCHED_ENABLE=true',
      ],
    });
    reactor = new Reactor();
    vm = new TestVm('orig');
  });

  afterAll(async () => {
    await vm?.close();
    await reactor?.close();
    await relay?.stop();
    await stopAll();
    deleteLink(vfA);
    deleteNetns(ns);
    sysfs?.remove();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("our .proto describes the same wire format as the original's (names, numbers, types, labels, defaults, enums)", () => {
    const a = join(dir, 'original.desc');
    const b = join(dir, 'ours.desc');
    for (const [proto, out] of [[join(SRC as string, 'virtioforwarder.proto'), a], [OUR_PROTO, b]]) {
      const r = spawnSync('protoc', [`--proto_path=${dirname(proto)}`, `--descriptor_set_out=${out}`, proto], { encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
    }
    const r = spawnSync(DEBIAN_PYTHON, [join(repoRoot, 'test/peers/compare_descriptors.py'), a, b], { encoding: 'utf8' });
    expect(r.stdout + r.stderr).toBe('identical\n');
  });

  it('virtioforwarder_port_control.py add and remove; a refused add prints the reply and exits 1', async () => {
    let r = portControl('add', '--virtio-id=2', `--pci-addr=${PCI_A}`);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toBe('');
    expect((await jsonStats()).relays.find((x) => x.id === 2)).toMatchObject({ device: PCI_A });
    // The tool always sends conditional (false without --conditional): the second add is busy.
    r = portControl('add', '--virtio-id=2', '--pci-addr=AF:09.1');
    expect(r.status).toBe(1);
    expect(r.stdout).toMatch(/status: ERROR/);
    expect(r.stdout).toMatch(/error_code: 8/);
    r = portControl('add', '--virtio-id=2', '--pci-addr=AF:09.1', '--conditional');
    expect(r.status, r.stdout).toBe(0);
    r = portControl('remove', '--virtio-id=2', '--pci-addr=af:09.1');
    expect(r.status, r.stdout + r.stderr).toBe(0);
    r = portControl('remove', '--virtio-id=2', `--pci-addr=${PCI_A}`);
    expect(r.status).toBe(1);
    expect(r.stdout).toMatch(/error_code: 4/);
  });

  it('add_sock, query_pci and remove_sock, the way os-vif calls them', () => {
    const path = join(dir, 'vm-a.sock');
    let r = portControl('add_sock', `--vhost-path=${path}`, `--pci-addr=${PCI_A}`);
    expect(r.status, r.stdout + r.stderr).toBe(0);
    expect(existsSync(path)).toBe(true);
    r = portControl('query_pci', `--vhost-path=${path}`);
    expect(r.status, r.stdout + r.stderr).toBe(0);
    expect(r.stdout.trim()).toBe(PCI_A);
    r = portControl('remove_sock', `--vhost-path=${path}`, `--pci-addr=${PCI_A}`);
    expect(r.status, r.stdout + r.stderr).toBe(0);
    expect(existsSync(path)).toBe(false);
    r = portControl('query_pci', `--vhost-path=${path}`);
    expect(r.status).toBe(1);
    expect(r.stdout).toMatch(/error_code: 2/);
  });

  describe('with a VM connected', () => {
    let id: number;
    const path = () => join(dir, 'vm-b.sock');

    beforeAll(async () => {
      const r = portControl('add_sock', `--vhost-path=${path()}`, `--pci-addr=${PCI_A}`);
      expect(r.status, r.stdout + r.stderr).toBe(0);
      await vm.connect(path(), reactor);
      const mine = await waitFor(
        async () => (await jsonStats()).relays.find((x) => x.socketPath === path() && x.active),
        10_000,
        'the relay to become active',
      );
      id = mine!.id;
    });

    it('virtioforwarder_stats.py prints the flat form and the protobuf text form', () => {
      let r = tool('virtioforwarder_stats.py', [`--stats-ep=${EP.stats}`, '--delay=300']);
      expect(r.status, r.stderr).toBe(0);
      const lines = r.stdout.split('\n');
      const cpuUp = lines.find((l) => l.startsWith(`relay_${id}.cpu.vf_to_vm=`))?.split('=')[1];
      const cpuDown = lines.find((l) => l.startsWith(`relay_${id}.cpu.vm_to_vf=`))?.split('=')[1];
      expect(lines).toEqual(
        expect.arrayContaining([
          `relay_${id}.active=True`,
          `relay_${id}.vf.pci_addr_str=${PCI_A}`,
          `relay_${id}.vhost.vhost_socket_name=${path()}`,
          `relay_${id}.vf_to_vm.active=True`,
          `relay_${id}.vf_to_vm.internal_state=DPDK_READY`,
          `relay_${id}.vm_to_vf.internal_state=VIRTIO_READY`,
          `relay_${id}.vf_to_vm.cpu_${cpuUp}.pkt_rate_rx_from_vf=0.0`,
        ]),
      );
      expect(lines.some((l) => l.startsWith(`relay_${id}.vm_to_vf.cpu_${cpuDown}.pkts_rx_from_vm=`))).toBe(true);
      // Only active relays without --include-inactive.
      expect(lines.filter((l) => /^relay_\d+\.active=/.test(l))).toHaveLength(1);
      r = tool('virtioforwarder_stats.py', [`--stats-ep=${EP.stats}`, '--include-inactive', '-z']);
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout.split('\n').filter((l) => /^relay_\d+\.active=/.test(l))).toHaveLength(64);
      r = tool('virtioforwarder_stats.py', [`--stats-ep=${EP.stats}`, '--output-format=protobuf', '--delay=100']);
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/^status: OK/m);
      expect(r.stdout).toContain(`internal_state: "VIRTIO_READY"`);
      expect(r.stdout).toContain(`pci_addr_str: "${PCI_A}"`);
      expect(r.stdout).toMatch(/socket_id: \d+/);
    });

    it('virtioforwarder_core_pinner.py moves the relay (VM-to-VF CPU first) and prints the map', async () => {
      let r = tool('virtioforwarder_core_pinner.py', [`--stats-ep=${EP.stats}`, `--sched-ep=${EP.cs}`, `--virtio-cpu=${id}:0,1`]);
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout).toContain('Scheduler response: OK');
      expect(r.stdout).toMatch(/== 00 == +== 01 ==/);
      const c = new ControlClient(EP.cs);
      try {
        expect((await c.request('get_worker_cpus')).map).toContainEqual({ relay: id, vfToVmCpu: 1, vmToVfCpu: 0 });
      } finally {
        c.close();
      }
      r = tool('virtioforwarder_core_pinner.py', [`--stats-ep=${EP.stats}`, `--sched-ep=${EP.cs}`, `--virtio-cpu=${id}:1,0`]);
      expect(r.stdout).toContain('Scheduler response: OK');
      // The grid: worker 00 holds the relay's VF-to-VM direction, worker 01 its VM-to-VF one.
      const row = String(id).padStart(2, '0');
      expect(r.stdout).toContain(`      ${row}   ${row}`);
      r = tool('virtioforwarder_core_pinner.py', [`--stats-ep=${EP.stats}`, `--sched-ep=${EP.cs}`, `--virtio-cpu=${id}:1,7`]);
      expect(r.stdout).toContain('Scheduler response: ERROR');
      r = tool('virtioforwarder_core_pinner.py', [`--stats-ep=${EP.stats}`, `--sched-ep=${EP.cs}`, '--print-core-map']);
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout).toContain('Worker cores affinities:');
    });

    it('virtioforwarder_monitor_load.py draws a bar line per worker CPU', async () => {
      const proc = spawn(DEBIAN_PYTHON, [join(tools, 'virtioforwarder_monitor_load.py'), `--stats-ep=${EP.stats}`, `--sched-ep=${EP.cs}`, '--poll-interval=0.3'], {
        cwd: tools,
        env: { ...process.env, PYTHONUNBUFFERED: '1', PYTHONDONTWRITEBYTECODE: '1', TERM: 'dumb' },
      });
      let out = '';
      let err = '';
      proc.stdout.on('data', (d: Buffer) => (out += d.toString()));
      proc.stderr.on('data', (d: Buffer) => (err += d.toString()));
      try {
        await waitFor(() => (/CPU0:.*\n.*CPU1:/.test(out) ? true : undefined), 15_000, `monitor output (stderr: ${err})`);
      } finally {
        proc.kill('SIGINT');
        await sleep(300);
        if (proc.exitCode === null) proc.kill('SIGKILL');
      }
      expect(out).toContain('CPU loads');
    });
  });
});
