// A Linux guest under QEMU 7.2 driving our back-end: the full QEMU start order (enable before
// features, call fds after kicks, EVENT_IDX), and frames the guest transmits completed by the
// device side. The back-end here is only the protocol session and a TX counter, no relay.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Reactor } from '../../sys/poll.js';
import { listenBackend, type VhostUserServer } from '../../vhost-user/server.js';
import { RecordingDevice } from '../../vhost-user/recording-device.js';
import { TxChainCounter } from '../../vhost-user/tx-chain-counter.js';
import { hasBinary, requireOrSkip } from '../support/env.js';
import { guestImageAvailable } from '../support/guest-image.js';
import { startGuestVm, type GuestVm } from '../support/qemu.js';
import { stopAll } from '../support/processes.js';

const ready =
  requireOrSkip(hasBinary('qemu-system-x86_64'), 'needs qemu-system-x86_64 (Debian package qemu-system-x86)') &&
  requireOrSkip(guestImageAvailable(), 'needs the test guest image (test/guest/build-guest-image.sh)');

const logLines: string[] = [];
const log = pino({ level: 'debug' }, { write: (s: string) => void logLines.push(s) });
const trace = () => logLines.map((l) => (JSON.parse(l) as { msg: string }).msg).join('\n');

let dir: string;
let reactor: Reactor;
let server: VhostUserServer | null = null;
let vm: GuestVm | null = null;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), `vio4wd-qg-${process.pid}-`));
  reactor = new Reactor();
});

afterEach(async (ctx) => {
  await vm?.stop();
  vm = null;
  await server?.close();
  server = null;
  if (ctx.task.result?.state === 'fail' || process.env.VHOST_USER_TRACE) console.error(`vhost-user trace:\n${trace()}`);
  logLines.length = 0;
});

afterAll(async () => {
  await stopAll();
  await reactor.close();
  rmSync(dir, { recursive: true, force: true });
});

describe.runIf(ready)('a Linux guest under QEMU on our back-end', () => {
  it('starts and enables vrings 0 and 1, and the frames the guest sends come out of the TX ring', async () => {
    const path = join(dir, 'guest.sock');
    const device = new RecordingDevice();
    const counter = new TxChainCounter(device, 1);
    server = listenBackend({ path, reactor, device, log });
    vm = await startGuestVm({ vhostUser: { socketPath: path }, cpu: 1, label: 'qemu-vhost-user' });
    await vm.ready(120_000);
    await device.waitFor((d) => d.isStartedAndEnabled(0) && d.isStartedAndEnabled(1), 30_000, 'vrings 0 and 1 started and enabled');
    const tx = device.running.get(1)!;
    expect(tx.eventIdx).toBe(true); // Linux negotiates EVENT_IDX through QEMU
    expect(tx.callFd).toBeGreaterThan(2);
    expect(device.memory!.regions.length).toBeGreaterThanOrEqual(1);

    // ARP requests for an address nobody has: they can only leave through our TX ring.
    await vm.exec('ping -c 3 -W 1 10.0.2.99', 20_000);
    await counter.waitForPackets(1, 10_000);
    expect(counter.badChains).toBe(0);
    // ARP requests (0x0806) from the guest's MAC; the guest also sends IPv6 neighbour discovery.
    const deadline = Date.now() + 10_000;
    while (!counter.byEthertype.get(0x0806) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(counter.byEthertype.get(0x0806)).toBeGreaterThanOrEqual(1);
    const head = counter.lastFrameHead;
    expect(Array.from(head.subarray(6, 12), (b) => b.toString(16).padStart(2, '0')).join(':')).toBe('52:54:00:12:34:56');
    counter.stop();

    await vm.stop();
    vm = null;
    await device.waitFor((d) => d.disconnectedCount === 1, 30_000, 'disconnect after the guest powered off');
  }, 240_000);
});
