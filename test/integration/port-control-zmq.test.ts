// The ZMQ services over real ipc sockets, driven by the CLIs run as real processes, against a
// service process backed by the in-memory registry. Needs `npx tsc -p .` first.
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Reply } from 'zeromq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ControlClient } from '../../port-control/client.js';
import { ErrorCode, PROTOCOL_VERSION, type ConfigReply } from '../../port-control/protocol.js';
import { MemoryRegistry, requireBuilt, runCli, startRegistryService, type ServiceProcess } from '../support/memory-registry.js';
import { startControlServices } from '../../port-control/services.js';
import pino from 'pino';

const dir = mkdtempSync(join(tmpdir(), `pc-zmq-${process.pid}-`));
// A subdirectory that does not exist yet: the service must create it.
const ep = (name: string) => `ipc://${dir}/run/${name}`;
const EP = { pc: ep('port_control'), stats: ep('stats'), config: ep('config'), cs: ep('core_sched') };
const SOCKET_GID = 1; // "daemon" on Debian; any gid works for root

let service: ServiceProcess;

const pc = (...args: string[]) => runCli('virtioforwarder_port_control', [...args, `--zmq-ep=${EP.pc}`]);

beforeAll(async () => {
  requireBuilt();
  service = await startRegistryService({
    workerCpus: [0, 1],
    pins: [{ relay: 5, vfToVmCpu: 1, vmToVfCpu: 0 }],
    seed: [
      { id: 5, device: { kind: 'vf', vf: { pci: '0000:05:08.5' } }, socketPath: '/tmp/vm5.sock', vmConnected: true },
      { id: 6, device: { kind: 'vf', vf: { pci: '0000:05:08.6' } } },
    ],
    services: {
      zmqPortControlEp: EP.pc,
      statsEp: EP.stats,
      configEp: EP.config,
      coreSchedEp: EP.cs,
      coreSchedEnabled: true,
      socketGroup: SOCKET_GID,
    },
  });
});

afterAll(async () => {
  await service?.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** Runs `fn` and returns the registry calls it caused. */
async function callsOf(fn: () => Promise<unknown>) {
  const mark = service.calls().length;
  await fn();
  return service.callsSince(mark);
}

describe('service sockets', () => {
  it('creates the directory and gives ipc socket files mode 0660 and the configured group', () => {
    for (const name of ['port_control', 'stats', 'config', 'core_sched']) {
      const st = statSync(join(dir, 'run', name));
      expect(st.isSocket()).toBe(true);
      expect(st.mode & 0o777).toBe(0o660);
      expect(st.gid).toBe(SOCKET_GID);
    }
  });

  it('answers garbage, several frames, unknown ops and bad fields with an error and keeps serving', async () => {
    const client = new ControlClient(EP.pc);
    try {
      const garbage = JSON.parse(await client.requestRaw('{this is not json'));
      expect(garbage).toMatchObject({ status: 'error', code: ErrorCode.BadMessage, version: PROTOCOL_VERSION });
      const frames = JSON.parse(await client.requestRaw(['{"version":1,"op":"query_pci"}', 'second']));
      expect(frames).toMatchObject({ status: 'error', code: ErrorCode.BadMessage });
      expect(frames.message).toMatch(/2 frames/);
      // A frame that does not start with '{' is protobuf: garbage gets the PortControlResponse
      // ERROR (field 4 = 0) with a reason in field 6, not JSON.
      for (const notJson of [Buffer.from([0, 1, 2, 255]), Buffer.from('this is not json'), Buffer.from(' {"version":1,"op":"query_pci"}')]) {
        const reply = Buffer.from(await client.requestRaw(notJson), 'latin1');
        expect(reply.subarray(0, 3).toString('hex')).toBe('200032');
      }
      const big = JSON.parse(await client.requestRaw(`{"version":1,"op":"query_pci","vhostPath":"/${'x'.repeat(200_000)}"}`));
      expect(big.code).toBe(ErrorCode.BadMessage);
      expect(garbage.op).toBeUndefined();
      const noVersion = JSON.parse(await client.requestRaw('{"op":"add"}'));
      expect(noVersion).toMatchObject({ code: ErrorCode.BadVersion, op: 'add' });
      const unknown = JSON.parse(await client.requestRaw(`{"version":${PROTOCOL_VERSION},"op":"reboot"}`));
      expect(unknown).toMatchObject({ status: 'error', code: ErrorCode.UnknownOp, op: 'reboot', source: 'protocol' });
      expect(unknown.message).toMatch(/"reboot" is unknown to the portControl service \(it takes add, remove, add_sock, remove_sock, query_pci\)/);
      await expect(client.request('stats' as 'add')).rejects.toMatchObject({ code: ErrorCode.UnknownOp });
      await expect(client.request('add', { virtioId: 'one', pciAddrs: ['05:08.1'] })).rejects.toMatchObject({ code: ErrorCode.BadField });
      // Still alive and answering properly.
      expect(await client.request('query_pci', { vhostPath: '/tmp/vm5.sock' })).toEqual({
        status: 'ok',
        version: PROTOCOL_VERSION,
        op: 'query_pci',
        pci: '0000:05:08.5',
      });
    } finally {
      client.close();
    }
  });

  it('stats and core-sched services refuse ops of other services', async () => {
    const stats = new ControlClient(EP.stats);
    const cs = new ControlClient(EP.cs);
    try {
      await expect(stats.request('add', { virtioId: 1, pciAddrs: ['05:08.1'] })).rejects.toMatchObject({ code: ErrorCode.UnknownOp });
      await expect(cs.request('stats')).rejects.toThrow(/unknown to the coreSched service/);
    } finally {
      stats.close();
      cs.close();
    }
  });

  it('reports the configured pins and the live map on the config service', async () => {
    const client = new ControlClient(EP.config);
    try {
      const reply: ConfigReply = await client.request('config');
      expect(reply.pins).toEqual([{ relay: 5, vfToVmCpu: 1, vmToVfCpu: 0 }]);
      expect(reply.map.map((m) => m.relay)).toEqual(expect.arrayContaining([5, 6]));
    } finally {
      client.close();
    }
  });
});

describe('virtioforwarder_port_control', () => {
  it('prints usage with --help and refuses bad command lines without contacting the service', async () => {
    const help = await runCli('virtioforwarder_port_control', ['--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/Usage: virtioforwarder_port_control <add\|remove\|add_sock\|remove_sock\|query_pci>/);
    const calls = await callsOf(async () => {
      for (const [args, message] of [
        [[], /exactly one operation/],
        [['attach'], /unknown operation "attach"/],
        [['add', '--virtio-id=x', '--pci-addr=05:08.1'], /--virtio-id "x" is not a whole number/],
        [['add', '--virtio-id=64', '--pci-addr=05:08.1'], /outside 0\.\.63/],
        [['add', '--virtio-id=1', '--pci-addr=05:08'], /"05:08" is not a PCI address: expected dddd:bb:ss.f or bb:ss.f/],
        [['add', '--virtio-id=1', '--bogus'], /Unknown option '--bogus'/],
        [['add', '--virtio-id=1', '--mode=5', '--name=net_bonding0', '--pci-addr=05:08.1', '--pci-addr=05:08.2'], /mode 5 \(balance-tlb\) is not supported/],
      ] as const) {
        const r = await pc(...args);
        expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(1);
        expect(r.stderr).toMatch(message);
        expect(r.stderr).toMatch(/^virtioforwarder_port_control: /);
      }
    });
    expect(calls).toEqual([]);
  });

  it('adds and removes a VF, comparing PCI addresses case-insensitively', async () => {
    let r;
    const calls = await callsOf(async () => {
      r = await pc('add', '--virtio-id=3', '--pci-addr=0000:AF:00.1');
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toBe('');
      r = await pc('remove', '--virtio-id=3', '--pci-addr=af:00.1');
      expect(r.code, r.stderr).toBe(0);
    });
    expect(calls).toEqual([
      { method: 'addVf', args: [3, { pci: '0000:af:00.1' }, { conditional: false }] },
      { method: 'removeDevice', args: [3, { pci: '0000:af:00.1', conditional: false }] },
    ]);
  });

  it('passes registry errors through with their code, and honours --conditional', async () => {
    expect((await pc('add', '--virtio-id=7', '--pci-addr=05:08.1')).code).toBe(0);
    let r = await pc('add', '--virtio-id=7', '--pci-addr=05:08.1');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/add failed: relay 7 already has VF 0000:05:08.1 \(code 8\)/);
    r = await pc('add', '--virtio-id=7', '--pci-addr=05:08.1', '--conditional');
    expect(r.code, r.stderr).toBe(0);
    r = await pc('add', '--virtio-id=8', '--pci-addr=05:08.1');
    expect(r.stderr).toMatch(/already attached to relay 7 \(code -17\)/);
    r = await pc('add', '--virtio-id=9', '--pci-addr=ee:00.1');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/VF 0000:ee:00.1 has no netdev .*\(code 2\)/);
    r = await pc('remove', '--virtio-id=7', '--pci-addr=05:08.2');
    expect(r.stderr).toMatch(/not VF 0000:05:08.2 \(code 3\)/);
    r = await pc('remove', '--virtio-id=7', '--name=net_bonding7');
    expect(r.stderr).toMatch(/not bond net_bonding7 \(code 3\)/);
    expect((await pc('remove', '--virtio-id=7')).code).toBe(0);
    r = await pc('remove', '--virtio-id=7');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/relay 7 has no device to remove \(code 4\)/);
    expect((await pc('remove', '--virtio-id=7', '--conditional')).code).toBe(0);
  });

  it('adds bonds with the default active-backup mode or the mode given, and removes them by name', async () => {
    const calls = await callsOf(async () => {
      let r = await pc('add', '--virtio-id=10', '--name=net_bonding10', '--pci-addr=07:00.1', '--pci-addr=07:00.2');
      expect(r.code, r.stderr).toBe(0);
      r = await pc('add', '--virtio-id=11', '--name=net_bonding11', '--mode=3', '--pci_addr=07:00.3', '--pci_addr=07:00.4', '--pci_addr=07:00.5');
      expect(r.code, r.stderr).toBe(0);
      r = await pc('remove', '--virtio-id=10', '--name=net_bonding10');
      expect(r.code, r.stderr).toBe(0);
    });
    expect(calls).toEqual([
      {
        method: 'addBond',
        args: [10, { name: 'net_bonding10', mode: 1, members: [{ pci: '0000:07:00.1' }, { pci: '0000:07:00.2' }] }, { conditional: false }],
      },
      {
        method: 'addBond',
        args: [11, { name: 'net_bonding11', mode: 3, members: [{ pci: '0000:07:00.3' }, { pci: '0000:07:00.4' }, { pci: '0000:07:00.5' }] }, { conditional: false }],
      },
      { method: 'removeDevice', args: [10, { name: 'net_bonding10', conditional: false }] },
    ]);
  });

  it('refuses bonds that break the rules, on the service side too', async () => {
    const nine = Array.from({ length: 9 }, (_, i) => `--pci-addr=08:00.${i % 8}`.replace(/\.0$/, i === 8 ? '' : '.0')).map((a, i) =>
      i === 8 ? '--pci-addr=08:01.0' : a,
    );
    const calls = await callsOf(async () => {
      for (const [args, message] of [
        [['--name=bond0', '--pci-addr=08:00.1', '--pci-addr=08:00.2'], /must start with net_bonding/],
        [['--name=net_bonding1', '--pci-addr=08:00.1'], /needs at least 2 PCI addresses/],
        [['--pci-addr=08:00.1', '--pci-addr=08:00.2'], /2 PCI addresses need a bond name/],
        [['--name=net_bonding1', ...nine], /9 members; at most 8/],
        [['--name=net_bonding1', '--mode=9', '--pci-addr=08:00.1', '--pci-addr=08:00.2'], /mode 9 does not exist/],
      ] as const) {
        const r = await pc('add', '--virtio-id=12', ...args);
        expect(r.code, r.stderr).toBe(1);
        expect(r.stderr).toMatch(message);
      }
    });
    expect(calls).toEqual([]);
  });

  it('handles the os-vif socket sequence: add_sock, query_pci, remove_sock', async () => {
    const path = join(dir, 'vhu-os-vif.sock');
    let r = await pc('add_sock', `--vhost-path=${path}`, '--pci-addr=0000:06:00.1');
    expect(r.code, r.stderr).toBe(0);
    r = await pc('query_pci', `--vhost-path=${path}`);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe('0000:06:00.1\n');
    r = await pc('add_sock', `--vhost-path=${path}`, '--pci-addr=0000:06:00.2');
    expect(r.stderr).toMatch(/already registered .*\(code 1\)/);
    r = await pc('add_sock', `--vhost-path=${path}-2`, '--pci-addr=0000:06:00.1');
    expect(r.stderr).toMatch(/already attached .*\(code -17\)/);
    r = await pc('add_sock', `--vhost-path=${path}-3`, '--pci-addr=ee:00.3');
    expect(r.stderr).toMatch(/\(code 3\)/);
    r = await pc('remove_sock', `--vhost-path=${path}`, '--pci-addr=0000:06:00.2');
    expect(r.stderr).toMatch(/not VF 0000:06:00.2 \(code 2\)/);
    const calls = await callsOf(async () => {
      r = await pc('remove_sock', `--vhost-path=${path}`, '--pci-addr=0000:06:00.1');
      expect(r.code, r.stderr).toBe(0);
    });
    expect(calls).toEqual([{ method: 'removeSocket', args: [{ path, pci: '0000:06:00.1' }] }]);
    r = await pc('query_pci', `--vhost-path=${path}`);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/no relay serves vhost-user socket .*\(code 2\)/);
  });

  it('adds a bond with a socket and removes it by bond name alone', async () => {
    const path = join(dir, 'vhu-bond.sock');
    let r = await pc('add_sock', `--vhost-path=${path}`, '--name=net_bonding20', '--pci-addr=09:00.1', '--pci-addr=09:00.2');
    expect(r.code, r.stderr).toBe(0);
    expect((await pc('query_pci', `--vhost-path=${path}`)).stdout).toBe('net_bonding20\n');
    r = await pc('remove_sock', '--name=net_bonding20');
    expect(r.code, r.stderr).toBe(0);
    r = await pc('remove_sock');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/give vhostPath, a PCI address or a bond name/);
    r = await pc('add_sock', '--pci-addr=09:00.1');
    expect(r.stderr).toMatch(/vhostPath is required/);
    r = await pc('add_sock', '--vhost-path=relative.sock', '--pci-addr=09:00.1');
    expect(r.stderr).toMatch(/must be an absolute path/);
  });

  it('says clearly when nothing listens or nothing answers', async () => {
    let r = await runCli('virtioforwarder_port_control', ['query_pci', '--vhost-path=/x', `--zmq-ep=ipc://${dir}/absent`]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/socket .*absent does not exist/);
    const mute = new Reply();
    const muteEp = `ipc://${dir}/mute`;
    await mute.bind(muteEp);
    try {
      r = await runCli('virtioforwarder_port_control', ['query_pci', '--vhost-path=/x', `--zmq_ep=${muteEp}`, '--timeout=300']);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/no reply within 300 ms/);
    } finally {
      mute.close();
    }
  });
});

describe('virtioforwarder_stats', () => {
  it('prints counters and rates of both directions in the flat form', async () => {
    const r = await runCli('virtioforwarder_stats', [`--stats-ep=${EP.stats}`, '--delay=100']);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines.every((l) => /^relay_\d+\.[a-z0-9_.]+=\S+$/.test(l)), r.stdout).toBe(true);
    // Only active relays by default: relay 5 has a VM and a VF, relay 6 no VM.
    expect(new Set(lines.map((l) => l.split('.')[0]))).toEqual(new Set(['relay_5']));
    expect(lines).toContain('relay_5.active=True');
    expect(lines).toContain('relay_5.vf_to_vm.internal_state=DPDK_READY');
    expect(lines).toContain('relay_5.vm_to_vf.internal_state=VIRTIO_READY');
    expect(lines).toContain('relay_5.vf.pci_addr_str=0000:05:08.5');
    expect(lines).toContain('relay_5.vhost.vhost_socket_name=/tmp/vm5.sock');
    for (const key of [
      'vf_to_vm.cpu_\\d+.pkts_rx_from_vf',
      'vf_to_vm.cpu_\\d+.pkts_tx_to_vm',
      'vf_to_vm.cpu_\\d+.bytes_tx_to_vm',
      'vf_to_vm.cpu_\\d+.pkts_dropped_vm_not_connected',
      'vf_to_vm.cpu_\\d+.pkts_dropped_vf_ring_full',
      'vm_to_vf.cpu_\\d+.pkts_rx_from_vm',
      'vm_to_vf.cpu_\\d+.bytes_tx_to_vf',
      'vm_to_vf.cpu_\\d+.pkts_dropped_vf_queue_full',
    ]) {
      expect(r.stdout).toMatch(new RegExp(`^relay_5\\.${key}=\\d+$`, 'm'));
    }
    // With a window the rates are numbers (the registry's relays always move packets).
    const rate = /^relay_5\.vm_to_vf\.cpu_\d+\.pkt_rate_tx_to_vf=(\S+)$/m.exec(r.stdout);
    expect(Number(rate?.[1])).toBeGreaterThan(0);
  });

  it('filters, includes inactive relays, hides zeros, prints JSON, and has no rates without a window', async () => {
    let r = await runCli('virtioforwarder_stats', [`--stats-ep=${EP.stats}`, '--include-inactive', '--relay=6', '--delay=0']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^relay_6\.active=False$/m);
    expect(r.stdout).toMatch(/^relay_6\.vf_to_vm\.internal_state=DPDK_ADDED$/m);
    expect(r.stdout).toMatch(/^relay_6\.vm_to_vf\.internal_state=VIRTIO_UNINIT$/m);
    expect(r.stdout).not.toMatch(/^relay_5/m);
    expect(r.stdout).toMatch(/^relay_6\.vf_to_vm\.cpu_\d+\.pkt_rate_rx_from_vf=nan$/m);
    r = await runCli('virtioforwarder_stats', [`--stats-ep=${EP.stats}`, '-z', '--delay=0']);
    expect(r.stdout).toMatch(/^relay_5\.vf_to_vm\.cpu_\d+\.pkts_tx_to_vm=\d+$/m);
    expect(r.stdout).not.toMatch(/(pkts|bytes)_[a-z_]+=0$/m);
    r = await runCli('virtioforwarder_stats', [`--zmq-ep=${EP.stats}`, '--json', '--delay=50']);
    const reply = JSON.parse(r.stdout);
    expect(reply.status).toBe('ok');
    expect(reply.windowMs).toBeGreaterThan(0);
    expect(reply.relays[0].vfToVm.rates.packets).toBeGreaterThan(0);
    expect(reply.workers.map((w: { cpu: number }) => w.cpu)).toEqual([0, 1]);
    r = await runCli('virtioforwarder_stats', [`--stats-ep=${EP.stats}`, '--output-format=json', '--delay=0']);
    expect(JSON.parse(r.stdout).windowMs).toBeNull();
    r = await runCli('virtioforwarder_stats', [`--stats-ep=${EP.stats}`, '--output-format=protobuf']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^status: OK\nrelay \{\n  id: 5\n  active: true\n/);
    expect(r.stdout).toMatch(/^ {4}internal_state: "DPDK_READY"$/m);
    r = await runCli('virtioforwarder_stats', [`--stats-ep=${EP.stats}`, '--output-format=xml']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/--output-format "xml" is not one of flat, protobuf, json/);
    r = await runCli('virtioforwarder_stats', [`--stats-ep=${EP.stats}`, '--relay=99']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/--relay 99 is outside 0\.\.63/);
    expect((await runCli('virtioforwarder_stats', ['--help'])).stdout).toMatch(/Usage: virtioforwarder_stats/);
  });
});

describe('virtioforwarder_core_pinner', () => {
  it('prints the current map as a grid with no arguments', async () => {
    const r = await runCli('virtioforwarder_core_pinner', [`--sched-ep=${EP.cs}`]);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.trimEnd().split('\n');
    expect(lines[0]).toBe('Worker cores affinities:');
    expect(lines[2]).toMatch(/^\|\s+== 00 ==\s+\|\s+== 01 ==\s+\|$/);
    expect(lines[3]).toMatch(/VF2VM VM2VF/);
    expect(r.stdout).toMatch(/\b05\b/);
  });

  it('moves a relay: --pin puts VF→VM first, the original --virtio-cpu VM→VF first', async () => {
    let calls;
    let r = { code: -1, stdout: '', stderr: '' };
    calls = await callsOf(async () => {
      r = await runCli('virtioforwarder_core_pinner', [`--sched-ep=${EP.cs}`, '--pin=5:1,0']);
    });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^Setting relay 5: VF2VM on CPU 1, VM2VF on CPU 0\nScheduler response: OK\nNew worker core mapping:\n/);
    expect(calls.filter((c) => c.method === 'applyCpuMap')).toEqual([{ method: 'applyCpuMap', args: [[{ relay: 5, vfToVmCpu: 1, vmToVfCpu: 0 }]] }]);
    // Column 00: relay 5 under VM2VF (right half); column 01: relay 5 under VF2VM (left half).
    const row = r.stdout.split('\n').find((l) => /\b05\b/.test(l) && l.startsWith('|')) as string;
    const [col0, col1] = row.split('|').slice(1, 3);
    expect(col0.indexOf('05')).toBeGreaterThan(6);
    expect(col1.indexOf('05')).toBeLessThan(6);
    calls = await callsOf(async () => {
      r = await runCli('virtioforwarder_core_pinner', [`--sched-ep=${EP.cs}`, '--virtio-cpu=5:1,0']);
    });
    expect(r.code, r.stderr).toBe(0);
    expect(calls.filter((c) => c.method === 'applyCpuMap')[0].args).toEqual([[{ relay: 5, vfToVmCpu: 0, vmToVfCpu: 1 }]]);
    calls = await callsOf(async () => {
      r = await runCli('virtioforwarder_core_pinner', [`--zmq-ep=${EP.cs}`, '--virtio-cpu=5:0']);
    });
    expect(r.code, r.stderr).toBe(0);
    expect(calls.filter((c) => c.method === 'applyCpuMap')[0].args).toEqual([[{ relay: 5, vfToVmCpu: 0, vmToVfCpu: 0 }]]);
    // --print-core-map prints and moves nothing, whatever else is given.
    calls = await callsOf(async () => {
      r = await runCli('virtioforwarder_core_pinner', [`--sched-ep=${EP.cs}`, '--print-core-map', '--virtio-cpu=5:1,1']);
    });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^Worker cores affinities:\n=+\n/);
    expect(calls.filter((c) => c.method === 'applyCpuMap')).toEqual([]);
  });

  it('rejects a map whole when an entry is refused, and bad syntax before sending', async () => {
    let r = await runCli('virtioforwarder_core_pinner', [`--sched-ep=${EP.cs}`, '--pin=5:1,1', '--pin=6:7,0']);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/^Scheduler response: ERROR$/m);
    expect(r.stderr).toMatch(/CPU 7, which is not a worker/);
    const cfg = new ControlClient(EP.config);
    try {
      const map = (await cfg.request('config')).map;
      expect(map.find((m) => m.relay === 5)).toEqual({ relay: 5, vfToVmCpu: 0, vmToVfCpu: 0 });
    } finally {
      cfg.close();
    }
    r = await runCli('virtioforwarder_core_pinner', [`--sched-ep=${EP.cs}`, '--virtio-cpu=40:0,1']);
    expect(r.stderr).toMatch(/relay 40, which has no device or socket/);
    for (const bad of ['5', '5:a', '5:1,2,3', '70:1']) {
      r = await runCli('virtioforwarder_core_pinner', [`--sched-ep=${EP.cs}`, `--virtio-cpu=${bad}`]);
      expect(r.code, bad).toBe(1);
      expect(r.stderr).toMatch(/--virtio-cpu/);
      r = await runCli('virtioforwarder_core_pinner', [`--sched-ep=${EP.cs}`, `--pin=${bad}`]);
      expect(r.code, bad).toBe(1);
      expect(r.stderr).toMatch(/--pin/);
    }
    r = await runCli('virtioforwarder_core_pinner', [`--sched-ep=${EP.cs}`, '--pin=5:1', '--virtio-cpu=5:0']);
    expect(r.stderr).toMatch(/relay 5 is given twice/);
    expect((await runCli('virtioforwarder_core_pinner', ['-h'])).stdout).toMatch(/--virtio-cpu=R:C1\[,C2\]\s+the original pinner's spelling, other order: VM-to-VF/);
  });
});

describe('virtioforwarder_monitor_load', () => {
  it('prints one frame of load bars from the workers busy/poll time', async () => {
    const r = await runCli('virtioforwarder_monitor_load', [`--stats-ep=${EP.stats}`, '--interval=0.2', '--count=1']);
    expect(r.code, r.stderr).toBe(0);
    // The in-memory workers are busy exactly (n+1)/4 of their poll time.
    expect(r.stdout).toBe(`CPU loads\nCPU0: [${'#'.repeat(15)}${' '.repeat(45)}]  25.0%\nCPU1: [${'#'.repeat(30)}${' '.repeat(30)}]  50.0%\n`);
  });

  it('refuses bad options', async () => {
    for (const args of [['--interval=0'], ['--interval=abc'], ['--count=0'], ['--frobnicate']]) {
      const r = await runCli('virtioforwarder_monitor_load', [`--stats-ep=${EP.stats}`, ...args]);
      expect(r.code, args.join(' ')).toBe(1);
      expect(r.stderr).toMatch(/^virtioforwarder_monitor_load: /);
    }
    expect((await runCli('virtioforwarder_monitor_load', ['--help'])).code).toBe(0);
  });
});

describe('service start failures', () => {
  it('refuses a socket group that does not exist, naming it, and leaves nothing bound', async () => {
    const registry = new MemoryRegistry();
    const endpoint = `ipc://${dir}/d/pc`;
    await expect(
      startControlServices(registry, { zmqPortControlEp: endpoint, socketGroup: 'no-such-group-here' }, pino({ level: 'silent' })),
    ).rejects.toThrow(/socket group no-such-group-here does not exist/);
    // The endpoint is free: a second start with a valid group binds it.
    const services = await startControlServices(registry, { zmqPortControlEp: endpoint, statsEp: `${endpoint}-stats` }, pino({ level: 'silent' }));
    await services.close();
  });

  it('refuses an endpoint it cannot bind, naming the service and the endpoint', async () => {
    const registry = new MemoryRegistry();
    await expect(
      startControlServices(registry, { statsEp: 'tcp://256.0.0.1:1' }, pino({ level: 'silent' })),
    ).rejects.toThrow(/stats service: cannot bind tcp:\/\/256\.0\.0\.1:1/);
  });
});

describe('service selection', () => {
  it('leaves core sched off unless enabled, and refuses two port control channels by name', async () => {
    const other = await startRegistryService({
      services: { zmqPortControlEp: `ipc://${dir}/b/pc`, coreSchedEp: `ipc://${dir}/b/cs`, statsEp: `ipc://${dir}/b/stats` },
    });
    try {
      const r = await runCli('virtioforwarder_core_pinner', [`--sched-ep=ipc://${dir}/b/cs`]);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/does not exist/);
    } finally {
      await other.stop();
    }
    await expect(
      startRegistryService({ services: { zmqPortControlEp: `ipc://${dir}/c/pc`, ipcPortControl: true } }),
    ).rejects.toThrow(/VIRTIOFWD_ZMQ_PORT_CONTROL_EP .* and VIRTIOFWD_IPC_PORT_CONTROL .*mutually exclusive/);
  });
});
