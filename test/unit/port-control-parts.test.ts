import { mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { formatCpuGrid, formatLoadBars, formatStatsFlat, formatStatsProtobufText, pyBool, pyFloat } from '../../port-control/cli/format.js';
import { expandAbbreviations, normaliseArgv } from '../../port-control/cli/common.js';
import { parseVirtioCpu } from '../../port-control/cli/virtio-cpu.js';
import { parseIpcLine } from '../../port-control/ipc-monitor.js';
import { describeNetdev, vfIndexOfNetdev } from '../../relay/control/vf.js';
import { JsonStreamSplitter } from '../../port-control/ovsdb/json-stream.js';
import { ovsdbMap, relayIdFromExternalIds } from '../../port-control/ovsdb/monitor.js';
import { selectPortControl } from '../../port-control/services.js';
import { MAX_TRACKED_CLIENTS, StatsService } from '../../port-control/stats.js';
import { resolveGroup } from '../../port-control/zmq-server.js';
import { ipcPath } from '../../port-control/protocol.js';
import { MemoryRegistry } from '../support/memory-registry.js';

describe('JSON stream splitter', () => {
  it('cuts back-to-back messages, across chunk boundaries and inside strings with braces', () => {
    const s = new JsonStreamSplitter();
    const text = '{"a":"}{\\"x"}{"b":[1,{"c":"]"}]}  \n{"id":null}';
    const out: unknown[] = [];
    for (const ch of text) out.push(...s.push(ch));
    expect(out).toEqual([{ a: '}{"x' }, { b: [1, { c: ']' }] }, { id: null }]);
  });

  it('refuses garbage between messages and unbalanced brackets', () => {
    expect(() => new JsonStreamSplitter().push('x{}')).toThrow(/unexpected "x"/);
    expect(() => new JsonStreamSplitter().push('}')).toThrow(/closing bracket/);
    expect(() => new JsonStreamSplitter().push('{"a":tru}')).toThrow();
  });
});

describe('OVSDB tags', () => {
  it('reads OVSDB maps', () => {
    expect(ovsdbMap(['map', [['virtio_forwarder', '1'], ['x', 'y']]])).toEqual({ virtio_forwarder: '1', x: 'y' });
    expect(ovsdbMap(['map', []])).toEqual({});
    expect(ovsdbMap(['set', []])).toEqual({});
    expect(ovsdbMap(null)).toEqual({});
    expect(ovsdbMap(['map', [['k', 5], 'junk']])).toEqual({});
  });

  it('takes the relay id from virtio_forwarder or virtio_relay', () => {
    expect(relayIdFromExternalIds({ virtio_forwarder: '1' })).toBe(1);
    expect(relayIdFromExternalIds({ virtio_relay: '7' })).toBe(7);
    expect(relayIdFromExternalIds({ virtio_forwarder: '0x10' })).toBe(16);
    expect(relayIdFromExternalIds({ virtio_forwarder: '2', virtio_relay: '3' })).toBe(2);
    expect(relayIdFromExternalIds({ other: '1' })).toBeUndefined();
    expect(() => relayIdFromExternalIds({ virtio_forwarder: 'one' })).toThrow(/not a relay id/);
    expect(() => relayIdFromExternalIds({ virtio_forwarder: '64' })).toThrow(/0\.\.63/);
    expect(() => relayIdFromExternalIds({ virtio_forwarder: '-1' })).toThrow(/not a relay id/);
  });
});

describe('IPC command lines', () => {
  it('parses add_port and del_port', () => {
    expect(parseIpcLine('add_port eth1 3')).toEqual({ op: 'add_port', netdev: 'eth1', relay: 3 });
    expect(parseIpcLine('  add_port   eth1  ')).toEqual({ op: 'add_port', netdev: 'eth1' });
    expect(parseIpcLine('del_port eth1')).toEqual({ op: 'del_port', netdev: 'eth1' });
    expect(parseIpcLine('')).toBeNull();
    expect(parseIpcLine('# comment')).toBeNull();
  });

  it('refuses what the original let through by comparing one character', () => {
    expect(() => parseIpcLine('apple eth1')).toThrow(/unknown command/);
    expect(() => parseIpcLine('delete eth1')).toThrow(/unknown command/);
    expect(() => parseIpcLine('add_port')).toThrow(/needs an interface/);
    expect(() => parseIpcLine('add_port eth1 x')).toThrow(/relay id/);
    expect(() => parseIpcLine('add_port eth1 64')).toThrow(/relay id/);
    expect(() => parseIpcLine('add_port eth1 1 2')).toThrow(/extra/);
    expect(() => parseIpcLine('del_port eth1 1')).toThrow(/extra/);
    expect(() => parseIpcLine('add_port ../../etc 1')).toThrow(/not a valid interface name/);
    expect(() => parseIpcLine('add_port averyveryverylongname 1')).toThrow(/not a valid interface name/);
  });
});

describe('netdev resolution through a fake sysfs', () => {
  const root = mkdtempSync(join(tmpdir(), 'pc-sysfs-'));
  afterAll(() => rmSync(root, { recursive: true, force: true }));
  // PF 0000:05:00.0 with VFs 0000:05:08.0 (virtfn0, netdev vf0) and 0000:05:08.1 (virtfn1, netdev vf1).
  const dev = (pci: string) => join(root, 'devices/pci0000:00', pci);
  for (const pci of ['0000:05:00.0', '0000:05:08.0', '0000:05:08.1', '0000:06:00.0']) mkdirSync(dev(pci), { recursive: true });
  mkdirSync(join(root, 'class/net/vf0'), { recursive: true });
  mkdirSync(join(root, 'class/net/vf1'), { recursive: true });
  mkdirSync(join(root, 'class/net/pf'), { recursive: true });
  mkdirSync(join(root, 'class/net/veth0'), { recursive: true });
  symlinkSync(dev('0000:05:08.0'), join(root, 'class/net/vf0/device'));
  symlinkSync(dev('0000:05:08.1'), join(root, 'class/net/vf1/device'));
  symlinkSync(dev('0000:06:00.0'), join(root, 'class/net/pf/device'));
  symlinkSync(dev('0000:05:00.0'), join(dev('0000:05:08.0'), 'physfn'));
  symlinkSync(dev('0000:05:00.0'), join(dev('0000:05:08.1'), 'physfn'));
  symlinkSync(dev('0000:05:08.0'), join(dev('0000:05:00.0'), 'virtfn0'));
  symlinkSync(dev('0000:05:08.1'), join(dev('0000:05:00.0'), 'virtfn1'));

  it('names a VF by PCI address and anything else by netdev', () => {
    const resolve = (n: string) => describeNetdev(n, root).ref;
    expect(resolve('vf1')).toEqual({ pci: '0000:05:08.1' });
    expect(resolve('pf')).toEqual({ netdev: 'pf' });
    expect(resolve('veth0')).toEqual({ netdev: 'veth0' });
    expect(resolve('absent')).toEqual({ netdev: 'absent' });
    expect(() => resolve('../x')).toThrow(/not a valid interface name/);
  });

  it('finds a VF index under its PF', () => {
    expect(vfIndexOfNetdev('vf0', root)).toBe(0);
    expect(vfIndexOfNetdev('vf1', root)).toBe(1);
    expect(vfIndexOfNetdev('pf', root)).toBeUndefined();
    expect(describeNetdev('vf1', root)).toEqual({ ref: { pci: '0000:05:08.1' }, vfIndex: 1 });
    expect(describeNetdev('veth0', root)).toEqual({ ref: { netdev: 'veth0' } });
  });
});

describe('port control channel selection', () => {
  it('takes the one configured channel', () => {
    expect(selectPortControl({ zmqPortControlEp: 'ipc:///x' })).toEqual({ mode: 'zmq', endpoint: 'ipc:///x' });
    expect(selectPortControl({ ovsdbSockPath: '/run/db.sock' })).toEqual({ mode: 'ovsdb', socketPath: '/run/db.sock' });
    expect(selectPortControl({ ipcPortControl: true })).toEqual({ mode: 'ipc', file: '/tmp/vio_cmd' });
    expect(selectPortControl({ ipcPortControl: true, ipcFile: '/run/cmd' })).toEqual({ mode: 'ipc', file: '/run/cmd' });
    expect(selectPortControl({ zmqPortControlEp: null, ovsdbSockPath: '', ipcPortControl: false })).toEqual({ mode: 'none' });
  });

  it('refuses more than one, naming them', () => {
    expect(() => selectPortControl({ zmqPortControlEp: 'ipc:///x', ipcPortControl: true })).toThrow(
      /VIRTIOFWD_ZMQ_PORT_CONTROL_EP \(ipc:\/\/\/x\) and VIRTIOFWD_IPC_PORT_CONTROL.*mutually exclusive/,
    );
    expect(() => selectPortControl({ zmqPortControlEp: 'ipc:///x', ovsdbSockPath: '/db', ipcPortControl: true })).toThrow(
      /VIRTIOFWD_ZMQ_PORT_CONTROL_EP.*VIRTIOFWD_OVSDB_SOCK_PATH \(\/db\).*VIRTIOFWD_IPC_PORT_CONTROL/,
    );
  });
});

describe('stats windows', () => {
  function setup() {
    let now = 1000;
    const registry = new MemoryRegistry({ workerCpus: [0, 1] });
    registry.seed(1, { kind: 'vf', vf: { pci: '0000:05:08.1' } }, '/tmp/a.sock', true);
    registry.seed(2, { kind: 'vf', vf: { pci: '0000:05:08.2' } });
    const stats = new StatsService(registry, () => now);
    return { stats, advance: (ms: number) => (now += ms) };
  }

  it('has no rates on a client first request and rates over its own window afterwards', () => {
    const { stats, advance } = setup();
    const first = stats.snapshot({ version: 1, op: 'stats', clientId: 'a' });
    expect(first.windowMs).toBeNull();
    expect(first.relays.map((r) => r.id)).toEqual([1, 2]);
    expect(first.relays[0].vfToVm.rates).toBeNull();
    expect(first.workers.every((w) => w.load === null)).toBe(true);
    advance(500);
    const second = stats.snapshot({ version: 1, op: 'stats', clientId: 'a' });
    expect(second.windowMs).toBe(500);
    expect(second.relays[0].vfToVm.rates).not.toBeNull();
    expect(second.workers.map((w) => w.load)).toEqual([0.25, 0.5]);
  });

  it('keeps clients apart: one client polling does not shorten another one window', () => {
    const { stats, advance } = setup();
    stats.snapshot({ version: 1, op: 'stats', clientId: 'slow' });
    advance(100);
    stats.snapshot({ version: 1, op: 'stats', clientId: 'fast' });
    advance(100);
    stats.snapshot({ version: 1, op: 'stats', clientId: 'fast' });
    stats.snapshot({ version: 1, op: 'stats' });
    advance(100);
    expect(stats.snapshot({ version: 1, op: 'stats', clientId: 'slow' }).windowMs).toBe(300);
    expect(stats.snapshot({ version: 1, op: 'stats', clientId: 'fast' }).windowMs).toBe(100);
  });

  it('filters relays and inactive ones, and bounds the number of remembered clients', () => {
    const { stats } = setup();
    expect(stats.snapshot({ version: 1, op: 'stats', includeInactive: false }).relays.map((r) => r.id)).toEqual([1]);
    expect(stats.snapshot({ version: 1, op: 'stats', relays: [2, 9] }).relays.map((r) => r.id)).toEqual([2]);
    for (let i = 0; i < MAX_TRACKED_CLIENTS + 50; i++) stats.snapshot({ version: 1, op: 'stats', clientId: `c${i}` });
    expect(stats.trackedClients).toBe(MAX_TRACKED_CLIENTS);
  });
});

describe('tool output', () => {
  const registry = new MemoryRegistry({ workerCpus: [0, 1] });
  registry.seed(3, { kind: 'vf', vf: { pci: '0000:05:08.1' } }, '/tmp/vm3.sock', true);
  registry.seed(4, { kind: 'bond', bond: { name: 'net_bonding0', mode: 1, members: [{ pci: '0000:05:08.2' }, { pci: '0000:05:08.3' }] } });

  it('prints the flat stats with the original field names for both directions', () => {
    const stats = new StatsService(registry);
    const text = formatStatsFlat(stats.snapshot({ version: 1, op: 'stats' }).relays);
    const lines = text.trim().split('\n');
    expect(lines.every((l) => /^relay_\d+\.[a-z0-9_.]+=\S*$/.test(l))).toBe(true);
    expect(lines).toContain('relay_3.active=True');
    expect(lines).toContain('relay_3.vf_to_vm.internal_state=DPDK_READY');
    expect(lines).toContain('relay_3.vm_to_vf.internal_state=VIRTIO_READY');
    expect(lines).toContain('relay_3.vf.pci_addr_str=0000:05:08.1');
    expect(lines).toContain('relay_3.vhost.vhost_socket_name=/tmp/vm3.sock');
    expect(lines).toContain('relay_3.cpu.vf_to_vm=1');
    expect(text).toMatch(/^relay_3\.vf_to_vm\.cpu_1\.pkts_rx_from_vf=\d+$/m);
    expect(text).toMatch(/^relay_3\.vm_to_vf\.cpu_1\.pkts_tx_to_vf=\d+$/m);
    expect(text).toMatch(/^relay_3\.vf_to_vm\.cpu_1\.pkt_rate_tx_to_vm=nan$/m);
    expect(lines).toContain('relay_4.vf.pci_addr_str=net_bonding0');
    expect(lines).toContain('relay_4.vf.bond_members=0000:05:08.2,0000:05:08.3');
    expect(lines).toContain('relay_4.vhost.vhost_socket_name=NONE');
    expect(lines).toContain('relay_4.active=False');
    // A bond with no VM: the VF side is up (DPDK_ADDED), the VM side down and its counters keyless of a CPU.
    expect(lines).toContain('relay_4.vf_to_vm.internal_state=DPDK_ADDED');
    expect(lines).toContain('relay_4.vm_to_vf.active=False');
    expect(lines).toContain('relay_4.vm_to_vf.internal_state=VIRTIO_UNINIT');
    expect(text).toMatch(/^relay_4\.vm_to_vf\.pkts_rx_from_vm=\d+$/m);
    expect(text).not.toMatch(/^relay_4\.cpu\.vm_to_vf=/m);
    const hidden = formatStatsFlat(stats.snapshot({ version: 1, op: 'stats' }).relays, { hideZero: true });
    expect(hidden).not.toMatch(/queue_full=0/);
    expect(text).toMatch(/queue_full=0/);
  });

  it('draws the CPU grid with one column per worker', () => {
    const grid = formatCpuGrid([1, 0], [
      { relay: 3, vfToVmCpu: 0, vmToVfCpu: 1 },
      { relay: 12, vfToVmCpu: 0, vmToVfCpu: 0 },
    ]);
    const lines = grid.trimEnd().split('\n');
    expect(lines[1]).toMatch(/^\|\s+== 00 ==\s+\|\s+== 01 ==\s+\|$/);
    expect(lines[2]).toMatch(/VF2VM VM2VF \| VF2VM VM2VF/);
    expect(lines[4]).toMatch(/^\|\s+03\s+12\s+\|\s+03\s+\|$/);
    expect(lines[5]).toMatch(/^\|\s+12\s+\|\s+\|$/);
    expect(lines.filter((l) => /^=+$/.test(l))).toHaveLength(3);
    expect(formatCpuGrid([0], [{ relay: 2, vfToVmCpu: -1, vmToVfCpu: 0 }])).toMatch(/relay 02: VF2VM on no CPU, VM2VF on CPU 0/);
  });

  it('draws load bars 60 wide', () => {
    const text = formatLoadBars([
      { cpu: 1, numaNode: 0, busyNs: 0, pollNs: 0, restarts: 0, heapBytes: 0, load: 1 },
      { cpu: 0, numaNode: 0, busyNs: 0, pollNs: 0, restarts: 0, heapBytes: 0, load: 0.25 },
      { cpu: 2, numaNode: 0, busyNs: 0, pollNs: 0, restarts: 0, heapBytes: 0, load: null },
    ]);
    expect(text).toBe(
      'CPU loads\n' +
        `CPU0: [${'#'.repeat(15)}${' '.repeat(45)}]  25.0%\n` +
        `CPU1: [${'#'.repeat(60)}] 100.0%\n` +
        `CPU2: [${' '.repeat(60)}]    n/a\n`,
    );
  });
});

describe('command-line details', () => {
  it('accepts the original underscore spellings', () => {
    expect(normaliseArgv(['add', '--zmq_ep=ipc:///a_b', '--pci_addr', '05:08.1', '--vhost_path=/x_y'])).toEqual([
      'add',
      '--zmq-ep=ipc:///a_b',
      '--pci-addr',
      '05:08.1',
      '--vhost-path=/x_y',
    ]);
  });

  it('reads --pin with VF→VM first and --virtio-cpu with VM→VF first', () => {
    expect(parseVirtioCpu('3:1,0')).toEqual({ relay: 3, vfToVmCpu: 1, vmToVfCpu: 0 });
    expect(parseVirtioCpu('3:1,0', 'vm-to-vf-first', '--virtio-cpu')).toEqual({ relay: 3, vfToVmCpu: 0, vmToVfCpu: 1 });
    expect(parseVirtioCpu('3:2', 'vm-to-vf-first')).toEqual({ relay: 3, vfToVmCpu: 2, vmToVfCpu: 2 });
    expect(() => parseVirtioCpu('3:x', 'vm-to-vf-first', '--virtio-cpu')).toThrow(/--virtio-cpu "3:x" .*VM-to-VF CPU, VF-to-VM CPU/);
    expect(parseVirtioCpu('3:1')).toEqual({ relay: 3, vfToVmCpu: 1, vmToVfCpu: 1 });
    expect(() => parseVirtioCpu('3')).toThrow(/R:C1\[,C2\]/);
    expect(() => parseVirtioCpu('3:1,2,3')).toThrow(/R:C1\[,C2\]/);
    expect(() => parseVirtioCpu('64:1')).toThrow(/relay 64/);
  });
});

describe('the original tools\' spellings', () => {
  it('expands unambiguous prefixes of long options, as argparse did', () => {
    const names = ['virtio-id', 'vhost-path', 'pci-addr', 'zmq-ep', 'stats-ep', 'suppress-zero', 'help'];
    expect(expandAbbreviations(['add', '--virtio=3', '--vh', '/x', '--pci', '05:08.1', '--zmq=ipc:///a'], names)).toEqual([
      'add',
      '--virtio-id=3',
      '--vhost-path',
      '/x',
      '--pci-addr',
      '05:08.1',
      '--zmq-ep=ipc:///a',
    ]);
    // Ambiguous (--s: stats-ep or suppress-zero) and unknown prefixes are left for the parser to refuse.
    expect(expandAbbreviations(['--s', '--bogus=1', '-z'], names)).toEqual(['--s', '--bogus=1', '-z']);
    // An exact name wins over a longer one it prefixes; nothing after -- is touched.
    expect(expandAbbreviations(['--pin=1:2', '--', '--virtio'], ['pin', 'pin-all', 'virtio-cpu'])).toEqual(['--pin=1:2', '--', '--virtio']);
  });

  it('prints booleans and floats as Python does', () => {
    expect([pyBool(true), pyBool(false)]).toEqual(['True', 'False']);
    expect([0, 250000, 1234.5, -2, 0.1].map(pyFloat)).toEqual(['0.0', '250000.0', '1234.5', '-2.0', '0.1']);
    expect([1e-5, 1.5e16, 1e22, 0.0001].map(pyFloat)).toEqual(['1e-05', '1.5e+16', '1e+22', '0.0001']);
    expect([null, undefined, Number.NaN, Infinity].map(pyFloat)).toEqual(['nan', 'nan', 'nan', 'inf']);
  });

  it('prints the original message as protobuf text, unknown NUMA node as SOCKET_ID_ANY', () => {
    const registry = new MemoryRegistry({ workerCpus: [0, 1] });
    registry.seed(2, { kind: 'vf', vf: { pci: '0000:05:08.1' } });
    const relays = new StatsService(registry).snapshot({ version: 1, op: 'stats' }).relays;
    const text = formatStatsProtobufText(relays.map((r) => ({ ...r, numaNode: -1 })));
    expect(text).toMatch(/^status: OK\nrelay \{\n  id: 2\n  active: false\n/);
    expect(text).toMatch(/\n  vhost \{\n    vhost_socket_name: "NONE"\n  \}\n  vf \{\n    pci_addr_str: "0000:05:08\.1"\n  \}\n/);
    expect(text).toMatch(/\n  vm_to_vf \{\n    active: false\n    internal_state: "VIRTIO_UNINIT"\n/);
    expect(text).toMatch(/pkt_rate_rx_from_vf: nan\n/);
    expect(text).toMatch(/\n  socket_id: 4294967295\n\}\n$/);
    expect(formatStatsProtobufText([])).toBe('status: OK\n');
  });
});

describe('socket files', () => {
  it('finds the file behind ipc endpoints only', () => {
    expect(ipcPath('ipc:///var/run/virtio-forwarder/stats')).toBe('/var/run/virtio-forwarder/stats');
    expect(ipcPath('ipc://@abstract')).toBeUndefined();
    expect(ipcPath('tcp://127.0.0.1:5555')).toBeUndefined();
  });

  it('resolves socket groups by name or number and names a group that does not exist', () => {
    expect(resolveGroup('root')).toBe(0);
    expect(resolveGroup(42)).toBe(42);
    expect(resolveGroup('42')).toBe(42);
    expect(() => resolveGroup('no-such-group-here')).toThrow('socket group no-such-group-here does not exist in /etc/group');
  });
});
