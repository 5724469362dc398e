// memif ports against DPDK 22.11's net_memif, in both roles: a VM (DPDK virtio-user) relayed to a
// network function (testpmd with a memif port), frames counted at the far end both ways; the
// network function going away and coming back; and hostile peers (this test writing bad messages
// and bad descriptors) that must cost their connection, never the daemon.
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { requireBinary } from '../support/netns.js';
import { parseStreamStats, startTestpmd, virtioUserVdev, type Testpmd } from '../support/testpmd.js';
import { repoRoot, startRelay, statsToolCounters, type RunningRelay } from '../support/relay.js';
import { sleep, stopAll, waitFor } from '../support/processes.js';
import { Reactor } from '../../sys/poll.js';
import { ControlClient } from '../../port-control/client.js';
import { PROTOCOL_VERSION } from '../../port-control/protocol.js';
import { close, pipe } from '../../sys/fd.js';
import { receiveMessage, sendMessage, unixConnect } from '../../sys/unix-socket.js';
import { MemifEndpoint, decodeMessage, encodeMessage, MEMIF_VERSION } from '../../sys/memif-control.js';
import { MemifPort, type MemifPortHandle } from '../../sys/memif-rings.js';
import { F_SEAL_SHRINK, addSeals, ftruncate, memfdCreate, viewAt } from '../../sys/memory.js';
import { eventfd } from '../../sys/eventfd.js';

vi.setConfig({ testTimeout: 120_000 });

const ready = requireBinary('dpdk-testpmd');

let dir = '';
let relay: RunningRelay | null = null;
let portControlEp = '';
let statsEp = '';
const running: Testpmd[] = [];

function portControl(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync('node', [join(repoRoot, 'bin', 'virtioforwarder_port_control'), `--zmq-ep=${portControlEp}`, ...args], { encoding: 'utf8', timeout: 20_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function expectOk(r: { status: number | null; stderr: string }): void {
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
}

/** testpmd with one net_memif port, on CPU 1 like every DPDK process of the suite. */
function networkFunction(role: 'server' | 'client', socket: string, id: number, mode: 'rxonly' | 'txonly', label: string, queues = 1): Testpmd {
  const t = startTestpmd({
    vdevs: [`net_memif0,role=${role},socket=${socket},socket-abstract=no,id=${id}`],
    forwardMode: mode,
    queues,
    txpkts: 64,
    cpu: 1,
    label,
  });
  running.push(t);
  return t;
}

function virtualMachine(path: string, mode: 'rxonly' | 'txonly', extraApp: string[] = []): Testpmd {
  const t = startTestpmd({ vdevs: [virtioUserVdev({ path, queueSize: 1024 })], forwardMode: mode, txpkts: 64, cpu: 1, label: `vm-${mode}`, extraApp });
  running.push(t);
  return t;
}

async function stop(t: Testpmd): Promise<{ rx: number; tx: number }> {
  const stats = await t.stop();
  running.splice(running.indexOf(t), 1);
  return { rx: stats[0]?.rxPackets ?? 0, tx: stats[0]?.txPackets ?? 0 };
}

const memifLog = (pattern: RegExp) => relay!.logs().filter((l) => pattern.test(String(l.msg)));

interface StatsRelay {
  id: number;
  socketPath: string | null;
  ports: { port: string; memifPeerErrors?: number; memifState?: string; memifRings?: number }[];
}

function statsRelays(): StatsRelay[] {
  const r = spawnSync('node', [join(repoRoot, 'bin/virtioforwarder_stats'), `--stats-ep=${statsEp}`, '--json', '--delay=0', '--include-inactive'], { encoding: 'utf8' });
  return (JSON.parse(r.stdout) as { relays: StatsRelay[] }).relays;
}

/** The relay port control gave the socket `path`. */
function relayOf(path: string): number {
  const found = statsRelays().find((r) => r.socketPath === path);
  if (!found) throw new Error(`no relay serves ${path}`);
  return found.id;
}

/** Frames VM→NF and NF→VM through relay `id`, counted by the receiving testpmd. */
async function trafficBothWays(id: number, vmPath: string, memif: { role: 'server' | 'client'; socket: string; memifId: number; queues?: number }, label: string) {
  // VM → network function.
  let nf = networkFunction(memif.role, memif.socket, memif.memifId, 'rxonly', `${label}-nf-rx`, memif.queues);
  await waitFor(() => memifLog(/: connected to /).length > connectedBefore, 20_000, 'the memif connection');
  connectedBefore = memifLog(/: connected to /).length;
  // What stats say of the connection: rings the relay receives on.
  const memifRings = statsRelays().find((r) => r.id === id)?.ports[0].memifRings;
  const before = statsToolCounters(statsEp, id);
  // Many flows (source addresses), so that the relay spreads them over the network function's queues.
  let vm = virtualMachine(vmPath, 'txonly', ['--txonly-multi-flow']);
  await waitFor(() => statsToolCounters(statsEp, id).vmToVf.packets - before.vmToVf.packets > 50_000, 30_000, '50 000 frames VM→NF');
  await stop(vm);
  await sleep(300);
  const afterVm = statsToolCounters(statsEp, id);
  const receiver = nf;
  const nfSide = await stop(nf);
  const nfQueues = parseStreamStats(receiver.output());
  const relayed = afterVm.vmToVf.packets - before.vmToVf.packets;
  expect(relayed).toBeGreaterThan(50_000);
  expect(nfSide.rx).toBe(relayed);
  expect(afterVm.vmToVf.dropsBadFrame + afterVm.vmToVf.badChains).toBe(0);
  // A ring per receive queue of the network function, flows spread over them (a quarter each at least).
  if ((memif.queues ?? 1) > 1) {
    expect(nfQueues.map((s) => s.rxQueue)).toEqual([...Array(memif.queues).keys()]);
    for (const s of nfQueues) expect(s.rxPackets).toBeGreaterThan(relayed / (2 * memif.queues!));
  }
  await waitFor(() => memifLog(/connection ended/).length > endedBefore, 20_000, 'the relay to see the network function go');
  endedBefore = memifLog(/connection ended/).length;

  // The network function comes back, now sending: NF → VM.
  vm = virtualMachine(vmPath, 'rxonly');
  await sleep(1000);
  const beforeNf = statsToolCounters(statsEp, id);
  nf = networkFunction(memif.role, memif.socket, memif.memifId, 'txonly', `${label}-nf-tx`, memif.queues);
  await waitFor(() => memifLog(/: connected to /).length > connectedBefore, 20_000, 'the memif connection again');
  connectedBefore = memifLog(/: connected to /).length;
  const before2 = statsToolCounters(statsEp, id);
  await waitFor(() => statsToolCounters(statsEp, id).vfToVm.packets - before2.vfToVm.packets > 50_000, 30_000, '50 000 frames NF→VM');
  const sender = nf;
  const nfSent = (await stop(nf)).tx;
  const streams = parseStreamStats(sender.output());
  await sleep(300);
  const after2 = statsToolCounters(statsEp, id);
  // What the network function sent, on whichever of its queues, reached the relay, but for what
  // was still in the rings when it left (at most a ring's worth per queue).
  const notRead = nfSent - (after2.vfToVm.rxPackets - beforeNf.vfToVm.rxPackets);
  expect(notRead).toBeGreaterThanOrEqual(0);
  expect(notRead).toBeLessThanOrEqual(1024 * (memif.queues ?? 1));
  // Each of its queues sent more than its ring holds: the relay read every ring.
  if ((memif.queues ?? 1) > 1) {
    expect(streams.map((s) => s.txQueue)).toEqual([...Array(memif.queues).keys()]);
    for (const s of streams) expect(s.txPackets).toBeGreaterThan(10 * 1024);
  }
  const vmSide = await stop(vm);
  const delivered = after2.vfToVm.packets - before2.vfToVm.packets;
  expect(delivered).toBeGreaterThan(50_000);
  // The VM counts what it received since it started, which is all the relay delivered to it.
  expect(vmSide.rx).toBe(after2.vfToVm.packets - before.vfToVm.packets);
  await waitFor(() => memifLog(/connection ended/).length > endedBefore, 20_000, 'the relay to see the network function go again');
  endedBefore = memifLog(/connection ended/).length;
  return { memifRings };
}

let connectedBefore = 0;
let endedBefore = 0;

describe.skipIf(!ready)('memif ports with DPDK net_memif', () => {
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'vio4wd-memif-'));
    portControlEp = `ipc://${dir}/port_control`;
    statsEp = `ipc://${dir}/stats`;
    relay = await startRelay({
      cpus: [0],
      dynamicSockets: true,
      noZmq: false,
      configLines: [
        `VIRTIOFWD_ZMQ_PORT_CONTROL_EP=${portControlEp}`,
        `VIRTIOFWD_ZMQ_STATS_EP=${statsEp}`,
        'VIRTIOFWD_ZMQ_CONFIG_EP=off',
        'VIRTIOFWD_ZMQ_CORE_SCHED_EP=off',
        'VIO4WD_CORE_SCHED_ENABLE=false',
      ],
    });
  });

  afterEach(async () => {
    for (const t of running.splice(0)) await t.stop().catch(() => undefined);
  });

  afterAll(async () => {
    await relay?.stop();
    await stopAll();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('relay as memif server, testpmd as client: frames both ways, counted at the far end, across reconnections', async () => {
    const vmPath = join(dir, 'vm-server.sock');
    const socket = join(dir, 'memif-server.sock');
    expectOk(portControl('add_sock', `--vhost-path=${vmPath}`, `--memif-socket=${socket}`, '--memif-role=server', '--memif-id=3'));
    expect((await trafficBothWays(relayOf(vmPath), vmPath, { role: 'client', socket, memifId: 3 }, 'srv')).memifRings).toBe(1);
    expectOk(portControl('remove_sock', `--vhost-path=${vmPath}`));
  });

  it('relay as memif client, testpmd as server: frames both ways, counted at the far end, across reconnections', async () => {
    const vmPath = join(dir, 'vm-client.sock');
    const socket = join(dir, 'memif-client.sock');
    expectOk(portControl('add_sock', `--vhost-path=${vmPath}`, `--memif-socket=${socket}`, '--memif-role=client', '--memif-id=0'));
    await trafficBothWays(relayOf(vmPath), vmPath, { role: 'server', socket, memifId: 0 }, 'cli');
    expectOk(portControl('remove_sock', `--vhost-path=${vmPath}`));
  });

  it('a network function with two queue pairs: a ring each way per queue, frames on every ring, both roles', async () => {
    for (const role of ['server', 'client'] as const) {
      const vmPath = join(dir, `vm-mq-${role}.sock`);
      const socket = join(dir, `memif-mq-${role}.sock`);
      const connected = memifLog(/: connected to /).length;
      expectOk(portControl('add_sock', `--vhost-path=${vmPath}`, `--memif-socket=${socket}`, `--memif-role=${role}`, '--memif-id=5', ...(role === 'client' ? ['--memif-rings=2'] : [])));
      const { memifRings } = await trafficBothWays(relayOf(vmPath), vmPath, { role: role === 'server' ? 'client' : 'server', socket, memifId: 5, queues: 2 }, `mq-${role}`);
      expect(memifRings).toBe(2);
      expect(memifLog(/: connected to /).slice(connected).map((l) => String(l.msg))).toEqual(expect.arrayContaining([expect.stringMatching(/2 rings each way/)]));
      expectOk(portControl('remove_sock', `--vhost-path=${vmPath}`));
    }
  });

  it('--memif-rings is for the client role and 1..16; the service refuses the same with the field named', async () => {
    const socket = join(dir, 'memif-rings.sock');
    const server = portControl('add', '--virtio-id=20', `--memif-socket=${socket}`, '--memif-role=server', '--memif-rings=2');
    expect(server.status).toBe(1);
    expect(server.stderr).toMatch(/--memif-rings is for --memif-role=client/);
    for (const n of ['0', '17', 'two']) {
      const r = portControl('add', '--virtio-id=20', `--memif-socket=${socket}`, '--memif-role=client', `--memif-rings=${n}`);
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(/memif-rings/);
    }
    const client = new ControlClient(portControlEp, 2000);
    try {
      for (const [memif, why] of [
        [{ socket, role: 'server', id: 0, rings: 2 }, /field memif\.rings is for the client role/],
        [{ socket, role: 'client', id: 0, rings: 65 }, /field memif\.rings must be an integer in \[1, 16\], not 65/],
      ] as const) {
        expect(await client.requestRaw(JSON.stringify({ version: PROTOCOL_VERSION, op: 'add', virtioId: 20, memif }))).toMatch(why);
      }
    } finally {
      client.close();
    }
    expect(statsRelays().some((r) => r.id === 20)).toBe(false);
  });

  it('hostile clients lose their connection, with the reason logged; the daemon keeps serving', async () => {
    const vmPath = join(dir, 'vm-hostile.sock');
    const socket = join(dir, 'memif-hostile.sock');
    expectOk(portControl('add_sock', `--vhost-path=${vmPath}`, `--memif-socket=${socket}`, '--memif-role=server', '--memif-id=9', '--memif-secret=open-sesame'));
    const id = relayOf(vmPath);

    /** Connects, reads HELLO, sends `messages` (with fds), and returns the DISCONNECT reason the relay sends back. */
    async function hostile(messages: { bytes: Uint8Array; fds?: number[] }[]): Promise<string> {
      const fd = unixConnect(socket, { seqpacket: true });
      try {
        await waitFor(() => receiveMessage(fd, 129, 2), 5000, 'HELLO');
        for (const m of messages) sendMessage(fd, m.bytes, m.fds ?? []);
        const reply = await waitFor((): string | null => {
          for (;;) {
            const r = receiveMessage(fd, 129, 2);
            if (r === null) return null;
            if (r.bytes.length === 0) return 'closed without a reason';
            const msg = decodeMessage(r.bytes);
            if (msg.type === 'disconnect') return msg.reason;
          }
        }, 8000, 'the relay to disconnect');
        return reply as string;
      } finally {
        close(fd);
      }
    }
    const init = (over: Partial<{ version: number; id: number; secret: string; mode: number }> = {}) =>
      ({ bytes: encodeMessage({ type: 'init', version: MEMIF_VERSION, id: 9, mode: 0, secret: 'open-sesame', name: 'hostile', ...over }) });
    expect(await hostile([init({ secret: 'guess' })])).toBe('incorrect secret');
    expect(await hostile([init({ id: 10 })])).toMatch(/interface id 10 is not served here/);
    expect(await hostile([init({ version: 0x0100 })])).toMatch(/version 1\.0 is not 2\.0/);
    expect(await hostile([{ bytes: new Uint8Array(40) }])).toMatch(/message of 40 bytes/);
    const [readEnd, writeEnd] = pipe();
    expect(await hostile([init(), { bytes: encodeMessage({ type: 'add_region', index: 0, size: 4096 }), fds: [readEnd] }])).toMatch(/does not support seals/);
    close(readEnd);
    close(writeEnd);
    expect(await hostile([init(), { bytes: encodeMessage({ type: 'add_region', index: 0, size: 4096 }) }])).toMatch(/without a region fd/);
    expect(await hostile([init(), { bytes: encodeMessage({ type: 'add_ring', flags: 1, index: 0, region: 0, offset: 0, log2RingSize: 10, privateHdrSize: 0 }), fds: [readEnd] }])).toMatch(/not a memfd|was not added|fd/);
    expect(await hostile([init(), { bytes: encodeMessage({ type: 'connect', ifName: 'x' }) }])).toMatch(/CONNECT before a ring/);
    // Rings must come in order, one index per direction at a time.
    const region = memfdCreate('hostile-region', { allowSealing: true });
    ftruncate(region, 4096);
    addSeals(region, F_SEAL_SHRINK);
    const interrupt = eventfd(0, { nonblock: true });
    const addRegion = { bytes: encodeMessage({ type: 'add_region', index: 0, size: 4096 }), fds: [region] };
    const ring = (index: number, offset: number) => ({ bytes: encodeMessage({ type: 'add_ring', flags: 1, index, region: 0, offset, log2RingSize: 4, privateHdrSize: 0 }), fds: [interrupt] });
    expect(await hostile([init(), addRegion, ring(1, 0)])).toMatch(/client-to-server ring index 1, expected 0/);
    expect(await hostile([init(), addRegion, ring(0, 0), ring(0, 512)])).toMatch(/client-to-server ring index 0, expected 1/);
    expect(await hostile([init(), addRegion, ring(64, 0)])).toMatch(/ring index 64: at most 64 rings per direction/);
    close(region);
    close(interrupt);

    // A client that connects properly, then writes descriptors pointing outside its region.
    const reactor = new Reactor();
    let handle: MemifPortHandle | null = null;
    const client = new MemifEndpoint({
      role: 'client', socketPath: socket, id: 9, secret: 'open-sesame', maxFrameLength: 1514, rxInterrupts: false, reactor, log2RingSize: 8,
      onUp: async (h) => void (handle = h), onDown: async () => undefined, onEvent: () => undefined,
    });
    client.start();
    try {
      await waitFor(() => handle, 10_000, 'the well-behaved handshake');
      const port = MemifPort.attach(handle!);
      const h = handle!;
      const ring = new Uint32Array(viewAt(h.regions[0].address, h.regions[0].length), h.tx[0].offset, (128 + 16 * 256) / 4);
      for (let round = 0; round < 20; round++) {
        for (let i = 0; i < 16; i++) {
          const slot = port.txSlot();
          if (slot === null) break;
          slot.bytes.fill(0xab, slot.offset, slot.offset + 60);
          port.txCommit(60);
        }
        // Spoil the descriptors just written (not yet published: head still points at the first), as a buggy or malicious client could.
        const head = new Uint16Array(ring.buffer, h.tx[0].offset, 64)[3];
        for (let k = 1; k <= 16; k++) {
          const d = 32 + 4 * ((head + k - 1) & 255);
          if (k % 3 === 0) ring[d] = 0x7fff0000; // region 32767
          else if (k % 3 === 1) ring[d + 2] = 0xfffffff0; // offset past the region
          else ring[d + 1] = 0xffffffff; // length
        }
        port.txFlush();
        await sleep(20);
      }
      await waitFor(() => statsToolCounters(statsEp, id).vmToVf !== undefined, 5000, 'stats');
    } finally {
      await client.close();
      await reactor.close();
    }
    // Still alive, still answering, and it counted what the client got wrong.
    const info = statsRelays().find((r) => r.id === id)!;
    expect(info.ports[0].port).toBe('memif');
    expect(info.ports[0].memifPeerErrors).toBeGreaterThan(100);
    expect(memifLog(/connection ended: incorrect secret/).length).toBe(1);
    // And a real network function still gets through afterwards.
    const nf = networkFunction('client', socket, 9, 'rxonly', 'after-hostile');
    // testpmd's memif client sends no secret unless told: the relay requires it.
    await waitFor(() => memifLog(/a secret is required/).length > 0, 20_000, 'the secret check');
    await stop(nf);
    expectOk(portControl('remove_sock', `--vhost-path=${vmPath}`));
  });
});
