// The four operator tools run as processes against the real daemon with the original Python
// tools' spellings: `--zmq_ep`, space-separated values, argparse's unambiguous prefixes, `-z`
// and `--suppress-zero`, `--output-format`, the pinner's `--virtio-cpu=R:vm2vf,vf2vm` and
// `--print-core-map`, the monitor's `--poll-interval`. A fake PCI address leads to a veth through a
// fake sysfs tree; DPDK testpmd's virtio-user is the VM. Checked: exit status (0, or 1 for every
// failure), the flat values as the original printed them, and what the daemon did.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createFakeSysfs, type FakeSysfs } from '../support/fake-sysfs.js';
import { createNetns, createVethPair, deleteLink, deleteNetns, requireBinary, requireRoot, uniqueTag } from '../support/netns.js';
import { stopAll, waitFor } from '../support/processes.js';
import { repoRoot, startRelay, type RunningRelay } from '../support/relay.js';
import { startTestpmd, virtioUserVdev, type Testpmd } from '../support/testpmd.js';

vi.setConfig({ testTimeout: 90_000, hookTimeout: 60_000 });

const ready = requireRoot() && requireBinary('dpdk-testpmd') && requireBinary('ip');
const tag = uniqueTag();
const ns = `otns${tag}`;
const vf = `ov${tag}`;
const peer = `op${tag}`;
const PCI = '0000:05:08.1';
const RELAY = 1;

let sysfs: FakeSysfs;
let relay: RunningRelay;
let dir: string;
let testpmd: Testpmd | null = null;
const EP = { pc: '', stats: '', cs: '' };

interface Result {
  status: number | null;
  stdout: string;
  stderr: string;
}

function tool(program: string, ...args: string[]): Result {
  const r = spawnSync('node', [join(repoRoot, 'bin', program), ...args], { encoding: 'utf8', timeout: 20_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function ok(r: Result): string {
  expect(r.stderr, `stdout: ${r.stdout}`).toBe('');
  expect(r.status).toBe(0);
  return r.stdout;
}

function failed(r: Result, program: string, message: RegExp): void {
  expect(r.status, `stdout: ${r.stdout} stderr: ${r.stderr}`).toBe(1);
  expect(r.stderr).toMatch(new RegExp(`^${program}: `));
  expect(r.stderr).toMatch(message);
}

function flat(text: string): Map<string, string> {
  const map = new Map<string, string>();
  for (const line of text.split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0) map.set(line.slice(0, eq), line.slice(eq + 1));
  }
  return map;
}

const stats = (...args: string[]) => flat(ok(tool('virtioforwarder_stats', '--stats-ep', EP.stats, ...args)));

describe.skipIf(!ready)('the operator tools with the original spellings, against the daemon', () => {
  beforeAll(async () => {
    createNetns(ns);
    createVethPair(vf, peer, { nsB: ns, noIpv6: true });
    sysfs = createFakeSysfs({ devices: [{ pci: PCI, ifnames: [vf], physfn: '0000:05:00.0', vfIndex: 1 }] });
    dir = mkdtempSync(join(tmpdir(), `vio4wd-tools-${process.pid}-`));
    EP.pc = `ipc://${dir}/port_control`;
    EP.stats = `ipc://${dir}/stats`;
    EP.cs = `ipc://${dir}/core_sched`;
    relay = await startRelay({
      cpus: [0, 1],
      noZmq: false,
      configLines: [
        `VIRTIOFWD_SYSFS_ROOT=${sysfs.root}`,
        `VIRTIOFWD_ZMQ_PORT_CONTROL_EP=${EP.pc}`,
        `VIRTIOFWD_ZMQ_STATS_EP=${EP.stats}`,
        `VIRTIOFWD_ZMQ_CORE_SCHED_EP=${EP.cs}`,
        'VIRTIOFWD_ZMQ_CONFIG_EP=off',
        'VIO4WD_CORE_SCHED_ENABLE=true',
      ],
    });
  });

  afterAll(async () => {
    await testpmd?.stop();
    await relay?.stop();
    await stopAll();
    deleteLink(vf);
    deleteNetns(ns);
    sysfs?.remove();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('virtioforwarder_port_control: --zmq_ep, spaced values, prefixes, --conditional; status 0 or 1', () => {
    const pc = (...args: string[]) => tool('virtioforwarder_port_control', ...args, '--zmq_ep', EP.pc);
    expect(ok(pc('add', '--virtio-id', String(RELAY), '--pci-addr', PCI))).toBe('');
    // argparse took any unambiguous prefix; os-vif's paths and options are spelled out in full.
    expect(ok(pc('query_pci', '--vhost', relay.socketPath(RELAY))).trim()).toBe(PCI);
    ok(pc('add', '--virtio', String(RELAY), '--pci', '05:08.1', '--cond'));
    failed(pc('add', '--virtio-id', String(RELAY), '--pci-addr', PCI), 'virtioforwarder_port_control', /already has .*code 8/);
    // Usage errors are status 1 too (argparse gave 2, which os-vif does not accept).
    failed(pc('add', '--v', '1', '--pci-addr', PCI), 'virtioforwarder_port_control', /--v/);
    failed(pc('add', '--virtio-id', 'one', '--pci-addr', PCI), 'virtioforwarder_port_control', /--virtio-id "one" is not a whole number/);
    failed(pc('add', '--virtio-id', '2', '--pci-addr', PCI, '--mode', '9', '--name', 'net_bonding0'), 'virtioforwarder_port_control', /mode/);
    failed(pc('attach', '--virtio-id', '2'), 'virtioforwarder_port_control', /unknown operation "attach"/);
    // The original's fault-injection switches: both fail, and the service keeps serving after them.
    failed(pc('query_pci', '--vhost-path', '/x', '--send-garbage'), 'virtioforwarder_port_control', /answered the garbage: .*"status":"error"/);
    failed(pc('query_pci', '--vhost-path', '/x', '--crash-after-send'), 'virtioforwarder_port_control', /--crash-after-send/);
    expect(ok(pc('query_pci', '--vhost-path', relay.socketPath(RELAY))).trim()).toBe(PCI);
  });

  it('virtioforwarder_stats: the original keys and values; -z and --suppress-zero; protobuf text', () => {
    // Active relays only by default: relay 1 has a VF but no VM yet.
    expect([...stats('--delay', '0').keys()].some((k) => k.startsWith(`relay_${RELAY}.`))).toBe(false);
    const s = stats('--include', '--delay', '100');
    const p = `relay_${RELAY}`;
    expect(s.get(`${p}.active`)).toBe('False');
    expect(s.get(`${p}.vf.pci_addr_str`)).toBe(PCI);
    expect(s.get(`${p}.vhost.vhost_socket_name`)).toBe(relay.socketPath(RELAY));
    expect(s.get(`${p}.vf_to_vm.active`)).toBe('True');
    expect(s.get(`${p}.vf_to_vm.internal_state`)).toBe('DPDK_ADDED');
    expect(s.get(`${p}.vm_to_vf.active`)).toBe('False');
    expect(s.get(`${p}.vm_to_vf.internal_state`)).toBe('VIRTIO_UNINIT');
    expect(s.has(`${p}.cpu.vm_to_vf`)).toBe(false);
    const cpu = s.get(`${p}.cpu.vf_to_vm`);
    expect(cpu).toMatch(/^[01]$/);
    expect(s.get(`${p}.vf_to_vm.cpu_${cpu}.pkts_rx_from_vf`)).toMatch(/^\d+$/);
    expect(s.get(`${p}.vf_to_vm.cpu_${cpu}.pkt_rate_rx_from_vf`)).toMatch(/^\d+\.\d+$/);
    // The VM side is down: its counters are printed without a CPU in the key.
    expect(s.get(`${p}.vm_to_vf.pkts_rx_from_vm`)).toBe('0');

    // Counters of the VM side, which has no VM: 0 now and still 0 a moment later.
    const zero = [...s].filter(([k, v]) => k.startsWith(`${p}.vm_to_vf.`) && /\.(pkts|bytes)_[a-z_]+$/.test(k) && v === '0').map(([k]) => k);
    expect(zero.length).toBeGreaterThan(0);
    for (const spelling of ['-z', '--suppress-zero', '--suppress']) {
      const z = stats('--include-inactive', '--delay', '0', spelling);
      for (const k of zero) expect(z.has(k), `${spelling} hides ${k}`).toBe(false);
      // Booleans, states, floats and names stay.
      expect(z.get(`${p}.vm_to_vf.active`)).toBe('False');
      expect(z.get(`${p}.vf_to_vm.cpu_${cpu}.pkt_rate_rx_from_vf`)).toBe('nan');
    }

    const text = ok(tool('virtioforwarder_stats', '--stats-ep', EP.stats, '--include-inactive', '--output-format', 'protobuf'));
    expect(text).toMatch(/^status: OK\nrelay \{\n/);
    expect(text).toContain(`relay {\n  id: ${RELAY}\n  active: false\n  cpu {\n    vf_to_vm: `);
    expect(text).toContain(`  vf {\n    pci_addr_str: "${PCI}"\n  }\n`);
    expect(text).toContain('    internal_state: "DPDK_ADDED"\n');

    failed(tool('virtioforwarder_stats', '--stats-ep', EP.stats, '--output-format', 'yaml'), 'virtioforwarder_stats', /"yaml" is not one of flat, protobuf, json/);
    failed(tool('virtioforwarder_stats', '--stats-ep', EP.stats, '--delay', 'soon'), 'virtioforwarder_stats', /--delay "soon"/);
    failed(tool('virtioforwarder_stats', '--stats-ep', EP.stats, '--s'), 'virtioforwarder_stats', /--s/);
  });

  it('with a VM: READY states; the pinner moves directions in the original --virtio-cpu order and in --pin order', async () => {
    testpmd = startTestpmd({ vdevs: [virtioUserVdev({ path: relay.socketPath(RELAY), queueSize: 1024 })], forwardMode: 'rxonly', cpu: 1 });
    const p = `relay_${RELAY}`;
    await waitFor(() => stats('--delay', '0').get(`${p}.active`) === 'True', 30_000, 'the relay to become active');
    let s = stats('--delay', '0');
    expect(s.get(`${p}.vf_to_vm.internal_state`)).toBe('DPDK_READY');
    expect(s.get(`${p}.vm_to_vf.internal_state`)).toBe('VIRTIO_READY');
    expect(s.get(`${p}.vm_to_vf.active`)).toBe('True');

    const pin = (...args: string[]) => tool('virtioforwarder_core_pinner', '--sched-ep', EP.cs, ...args);
    // The original: --virtio-cpu=R:c1,c2 puts VM→VF on c1 and VF→VM on c2.
    let out = ok(pin('--virtio-cpu=1:0,1'));
    expect(out).toMatch(/^Setting relay 1: VF2VM on CPU 1, VM2VF on CPU 0\nScheduler response: OK\nNew worker core mapping:\n=+\n/);
    s = stats('--delay', '0');
    expect([s.get(`${p}.cpu.vm_to_vf`), s.get(`${p}.cpu.vf_to_vm`)]).toEqual(['0', '1']);
    expect(s.has(`${p}.vm_to_vf.cpu_0.pkts_rx_from_vm`)).toBe(true);
    expect(s.has(`${p}.vf_to_vm.cpu_1.pkts_rx_from_vf`)).toBe(true);
    // vio4wd's --pin: the order of VIRTIOFWD_CPU_PINS, VF→VM first. Prefixes work here too.
    ok(pin('--pin', '1:0,1'));
    s = stats('--delay', '0');
    expect([s.get(`${p}.cpu.vf_to_vm`), s.get(`${p}.cpu.vm_to_vf`)]).toEqual(['0', '1']);
    ok(pin('--virtio', '1:1'));
    s = stats('--delay', '0');
    expect([s.get(`${p}.cpu.vf_to_vm`), s.get(`${p}.cpu.vm_to_vf`)]).toEqual(['1', '1']);

    // --print-core-map prints and moves nothing, even with a move given.
    out = ok(pin('--print-core-map', '--virtio-cpu=1:0,0'));
    expect(out).toMatch(/^Worker cores affinities:\n=+\n\|\s+== 00 ==\s+\|\s+== 01 ==\s+\|\n/);
    expect(out).toMatch(/\|\s+\|\s+01\s+01\s+\|/);
    expect(stats('--delay', '0').get(`${p}.cpu.vf_to_vm`)).toBe('1');

    // Refused: a CPU that is not a worker. Status 1, ERROR printed, nothing moved.
    const refused = pin('--virtio-cpu=1:0,7');
    expect(refused.status).toBe(1);
    expect(refused.stdout).toMatch(/^Scheduler response: ERROR$/m);
    expect(refused.stderr).toMatch(/^virtioforwarder_core_pinner: .*CPU 7/);
    expect(stats('--delay', '0').get(`${p}.cpu.vm_to_vf`)).toBe('1');
    failed(pin('--virtio-cpu=1'), 'virtioforwarder_core_pinner', /--virtio-cpu "1" is not of the form R:C1\[,C2\] \(relay, VM-to-VF CPU, VF-to-VM CPU\)/);
    failed(pin('--virtio-cpu=1:0', '--pin=1:1'), 'virtioforwarder_core_pinner', /relay 1 is given twice/);

    // The load monitor with the original's --poll-interval.
    out = ok(tool('virtioforwarder_monitor_load', '--stats-ep', EP.stats, '--sched-ep', EP.cs, '--poll-interval', '0.3', '--count', '1'));
    expect(out).toMatch(/^CPU loads\nCPU0: \[[# ]{60}\] +\d+\.\d%\nCPU1: \[[# ]{60}\] +\d+\.\d%\n$/);
    failed(tool('virtioforwarder_monitor_load', '--stats-ep', EP.stats, '--poll-interval=-1'), 'virtioforwarder_monitor_load', /--interval "-1"/);

    await testpmd.stop();
    testpmd = null;
    // The VM has gone: the counters of its side stay, without a CPU in the key.
    await waitFor(() => stats('--include-inactive', '--delay', '0').get(`${p}.vm_to_vf.internal_state`) === 'VIRTIO_UNINIT', 10_000, 'the VM side to go down');
    s = stats('--include-inactive', '--delay', '0');
    expect(s.get(`${p}.vm_to_vf.pkts_rx_from_vm`)).toMatch(/^\d+$/);
    expect(s.get(`${p}.vf_to_vm.internal_state`)).toBe('DPDK_ADDED');
  });
});
