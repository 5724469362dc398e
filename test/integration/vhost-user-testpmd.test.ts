// Our vhost-user back-end (server.ts / client.ts + BackendSession) against DPDK 22.11 virtio-user,
// the front-end of dpdk-testpmd: negotiation, memory table, vring start/enable, stop on testpmd exit,
// multiqueue, and reconnects with virtio-user as the server.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Reactor } from '../../sys/poll.js';
import { listenBackend, type VhostUserServer } from '../../vhost-user/server.js';
import { connectBackend, type VhostUserClient } from '../../vhost-user/client.js';
import { RecordingDevice } from '../../vhost-user/recording-device.js';
import { hasBinary, isRoot, requireOrSkip } from '../support/env.js';
import { stopAll } from '../support/processes.js';
import { startTestpmd, virtioUserVdev, type Testpmd } from '../support/testpmd.js';
import { TxChainCounter } from '../../vhost-user/tx-chain-counter.js';

const ready = requireOrSkip(hasBinary('dpdk-testpmd'), 'needs dpdk-testpmd (Debian package dpdk-dev)') && requireOrSkip(isRoot(), 'needs root for dpdk-testpmd');

const logLines: string[] = [];
const log = pino({ level: 'debug' }, { write: (s: string) => void logLines.push(s) });
const trace = () =>
  logLines
    .map((l) => JSON.parse(l) as { msg: string })
    .map((l) => l.msg)
    .join('\n');

let dir: string;
let reactor: Reactor;
let server: VhostUserServer | null = null;
let client: VhostUserClient | null = null;
let testpmd: Testpmd | null = null;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), `vio4wd-vu-${process.pid}-`));
  reactor = new Reactor();
});

afterEach(async (ctx) => {
  await testpmd?.stop();
  testpmd = null;
  await server?.close();
  server = null;
  await client?.close();
  client = null;
  if (ctx.task.result?.state === "fail" || process.env.VHOST_USER_TRACE) console.error(`vhost-user trace:\n${trace()}`);
  logLines.length = 0;
});

afterAll(async () => {
  await stopAll();
  await reactor.close();
  rmSync(dir, { recursive: true, force: true });
});

const bothStartedAndEnabled = (n: number) => (d: RecordingDevice) => Array.from({ length: n }, (_, i) => i).every((i) => d.isStartedAndEnabled(i));

describe.runIf(ready)('virtio-user (dpdk-testpmd) against our back-end', () => {
  it('server mode: reaches started+enabled vrings 0 and 1 with memory mapped, and gets GET_VRING_BASE at testpmd exit', async () => {
    const path = join(dir, 'server1.sock');
    const device = new RecordingDevice();
    server = listenBackend({ path, reactor, device, log });
    testpmd = startTestpmd({ vdevs: [virtioUserVdev({ path })], forwardMode: 'rxonly', label: 'testpmd-rxonly' });
    await device.waitFor(bothStartedAndEnabled(2), 30_000, 'vrings 0 and 1 started and enabled');
    expect(device.memory).not.toBeNull();
    expect(device.memory!.regions.length).toBeGreaterThanOrEqual(1);
    const cfg = device.running.get(1)!;
    expect(cfg.mergeableRxBuffers).toBe(true);
    expect(cfg.eventIdx).toBe(false); // virtio-user never negotiates EVENT_IDX
    expect(cfg.kickFd).toBeGreaterThan(2);
    // The ring lies inside the mapped memory the device was given.
    const r = device.memory!.regions[cfg.desc.region];
    expect(cfg.desc.hostAddress).toBe(r.hostAddress + cfg.desc.offset);
    expect(trace()).toMatch(/SET_MEM_TABLE/);

    await testpmd.stop();
    testpmd = null;
    await device.waitFor((d) => d.disconnectedCount === 1, 15_000, 'disconnect after testpmd exit');
    const stopped = device.events.filter((e) => e.kind === 'vringStopped').map((e) => (e as { index: number }).index);
    expect(stopped).toEqual(expect.arrayContaining([0, 1]));
    expect(trace()).toMatch(/GET_VRING_BASE/);
  });

  it('server mode, 4 queue pairs: all 8 vrings start and enable', async () => {
    const path = join(dir, 'server4.sock');
    const device = new RecordingDevice();
    server = listenBackend({ path, reactor, device, log, maxQueuePairs: 4 });
    testpmd = startTestpmd({ vdevs: [virtioUserVdev({ path, queues: 4 })], forwardMode: 'rxonly', queues: 4, label: 'testpmd-mq' });
    await device.waitFor(bothStartedAndEnabled(8), 30_000, '8 vrings started and enabled');
    expect(server.active).not.toBeNull();
  });

  it('client mode: connects to virtio-user server=1, and reconnects after testpmd restarts', async () => {
    const path = join(dir, 'client.sock');
    const device = new RecordingDevice();
    client = connectBackend({ path, reactor, device, log, retryMs: 200 });
    testpmd = startTestpmd({ vdevs: [virtioUserVdev({ path, server: true })], forwardMode: 'rxonly', label: 'testpmd-server1' });
    await device.waitFor(bothStartedAndEnabled(2), 30_000, 'vrings started (first connection)');
    expect(client.connections).toBe(1);

    await testpmd.stop();
    testpmd = null;
    await device.waitFor((d) => d.disconnectedCount === 1, 15_000, 'disconnect after testpmd exit');
    rmSync(path, { force: true });

    const startsBefore = device.events.filter((e) => e.kind === 'vringStarted').length;
    testpmd = startTestpmd({ vdevs: [virtioUserVdev({ path, server: true })], forwardMode: 'rxonly', label: 'testpmd-server1-again' });
    await device.waitFor(
      (d) => d.events.filter((e) => e.kind === 'vringStarted').length >= startsBefore + 2 && bothStartedAndEnabled(2)(d),
      30_000,
      'vrings started again after the reconnect',
    );
    expect(client.connections).toBe(2);
  });

  it('client mode: our back-end restarts under a running virtio-user (server=1) and resumes from used->idx', async () => {
    const path = join(dir, 'restart.sock');
    testpmd = startTestpmd({ vdevs: [virtioUserVdev({ path, server: true })], forwardMode: 'txonly', txpkts: 64, label: 'testpmd-restart' });
    const first = new RecordingDevice();
    const firstCounter = new TxChainCounter(first, 1);
    client = connectBackend({ path, reactor, device: first, log, retryMs: 200 });
    await first.waitFor(bothStartedAndEnabled(2), 30_000, 'vrings started (first back-end)');
    await firstCounter.waitForPackets(500, 20_000);
    await client.close();
    client = null;
    await first.waitFor((d) => d.disconnectedCount === 1, 10_000, 'first back-end disconnected');
    const stoppedAt = first.events.find((e) => e.kind === 'vringStopped' && e.index === 1) as { lastAvail: number } | undefined;
    expect(stoppedAt?.lastAvail).toBe(firstCounter.packets % 65536);

    // A new daemon: virtio-user replays the start without SET_OWNER and with SET_VRING_BASE 0.
    const second = new RecordingDevice();
    const secondCounter = new TxChainCounter(second, 1);
    client = connectBackend({ path, reactor, device: second, log, retryMs: 200 });
    await second.waitFor(bothStartedAndEnabled(2), 30_000, 'vrings started (second back-end)');
    expect(second.running.get(1)!.lastAvail).toBe(firstCounter.packets % 65536);
    expect(trace()).toMatch(/vring 1 resumes from used index/);
    await secondCounter.waitForPackets(500, 20_000);
    expect(secondCounter.badChains).toBe(0);
    secondCounter.stop();
  });

  it('txonly: the device pops and completes the TX chains testpmd sends', async () => {
    const path = join(dir, 'tx.sock');
    const device = new RecordingDevice();
    const counter = new TxChainCounter(device, 1);
    server = listenBackend({ path, reactor, device, log });
    testpmd = startTestpmd({ vdevs: [virtioUserVdev({ path })], forwardMode: 'txonly', txpkts: 64, label: 'testpmd-txonly' });
    await device.waitFor(bothStartedAndEnabled(2), 30_000, 'vrings started');
    await counter.waitForPackets(1000, 20_000);
    counter.stop();
    const stats = await testpmd.stop();
    testpmd = null;
    expect(counter.packets).toBeGreaterThanOrEqual(1000);
    expect(counter.badChains).toBe(0);
    // Every frame we completed is one testpmd counted as sent (it may have sent more since).
    expect(stats[0].txPackets).toBeGreaterThanOrEqual(counter.packets);
    expect(counter.lastFrameLength).toBe(64);
  });
});
