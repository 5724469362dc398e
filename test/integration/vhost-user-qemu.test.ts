// QEMU 7.2 as the front-end, without a guest: at netdev creation QEMU runs the connect half of the
// protocol (features, protocol features, queue count, owner, call fds) and then waits for a guest
// driver that never comes (-S). That half is what decides whether QEMU accepts a back-end at all.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Reactor } from '../../sys/poll.js';
import { listenBackend, type VhostUserServer } from '../../vhost-user/server.js';
import { connectBackend, type VhostUserClient } from '../../vhost-user/client.js';
import { RecordingDevice } from '../../vhost-user/recording-device.js';
import { hasBinary, requireOrSkip } from '../support/env.js';
import { startProcess, stopAll, waitFor, type StartedProcess } from '../support/processes.js';

const ready = requireOrSkip(hasBinary('qemu-system-x86_64'), 'needs qemu-system-x86_64 (Debian package qemu-system-x86)');

const logLines: string[] = [];
const log = pino({ level: 'debug' }, { write: (s: string) => void logLines.push(s) });
const requests = () =>
  logLines
    .map((l) => JSON.parse(l) as { msg: string; request?: string })
    .filter((l) => l.request)
    .map((l) => l.request!);

let dir: string;
let reactor: Reactor;
let qemu: StartedProcess | null = null;
let server: VhostUserServer | null = null;
let client: VhostUserClient | null = null;

function startQemu(chardev: string, queues = 1): StartedProcess {
  const netdev = `vhost-user,id=n0,chardev=c0${queues > 1 ? `,queues=${queues}` : ''}`;
  const device = `virtio-net-pci,netdev=n0,vectors=0${queues > 1 ? ',mq=on' : ''}`;
  return startProcess(
    'qemu-system-x86_64',
    ['-M', 'pc,accel=tcg', '-m', '64M', '-nodefaults', '-no-user-config', '-display', 'none', '-S',
      '-object', 'memory-backend-memfd,id=mem,size=64M,share=on', '-numa', 'node,memdev=mem',
      '-chardev', chardev, '-netdev', netdev, '-device', device],
    { label: 'qemu' },
  );
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), `vio4wd-qemu-${process.pid}-`));
  reactor = new Reactor();
});

afterEach(async (ctx) => {
  await qemu?.stop();
  qemu = null;
  await server?.close();
  server = null;
  await client?.close();
  client = null;
  if (ctx.task.result?.state === 'fail') console.error(`requests seen: ${requests().slice(0, 60).join(' ')}`);
  logLines.length = 0;
});

afterAll(async () => {
  await stopAll();
  await reactor.close();
  rmSync(dir, { recursive: true, force: true });
});

describe.runIf(ready)('QEMU 7.2 connecting to our back-end', () => {
  it('server mode: QEMU negotiates MQ|REPLY_ACK|CONFIGURE_MEM_SLOTS|STATUS, sets the owner and the call fds, and stays up', async () => {
    const path = join(dir, 'q.sock');
    const device = new RecordingDevice();
    server = listenBackend({ path, reactor, device, log, maxQueuePairs: 2 });
    qemu = startQemu(`socket,id=c0,path=${path}`, 2);
    await waitFor(() => requests().filter((r) => r === 'SET_VRING_CALL').length >= 4, 30_000, 'SET_VRING_CALL for 4 vrings');
    const seen = requests();
    expect(seen.slice(0, 4)).toEqual(['GET_FEATURES', 'GET_PROTOCOL_FEATURES', 'SET_PROTOCOL_FEATURES', 'GET_QUEUE_NUM']);
    expect(seen).toContain('SET_OWNER');
    const session = server.active as unknown as { protocolFeatures: number };
    expect(session.protocolFeatures).toBe(0x1800b); // MQ, LOG_SHMFD, REPLY_ACK, CONFIGURE_MEM_SLOTS, STATUS
    expect(qemu.output()).not.toMatch(/error|failed/i);
    await qemu.stop();
    qemu = null;
    await device.waitFor((d) => d.disconnectedCount === 1, 10_000, 'disconnect after QEMU exit');
  });

  it('refuses more queue pairs than offered: QEMU rejects the back-end and never starts it', async () => {
    const path = join(dir, 'q1.sock');
    const device = new RecordingDevice();
    server = listenBackend({ path, reactor, device, log, maxQueuePairs: 1 });
    qemu = startQemu(`socket,id=c0,path=${path}`, 2);
    await qemu.waitForOutput(/asking more queues than supported: 1/, 30_000);
    await device.waitFor((d) => d.disconnectedCount >= 1, 30_000, 'QEMU dropping the connection');
    expect(requests()).not.toContain('SET_MEM_TABLE');
  });

  it('client mode: our client connects to QEMU listening (server=on)', async () => {
    const path = join(dir, 'qs.sock');
    qemu = startQemu(`socket,id=c0,path=${path},server=on,wait=off`);
    const device = new RecordingDevice();
    client = connectBackend({ path, reactor, device, log, retryMs: 100 });
    await waitFor(() => requests().includes('SET_OWNER') && requests().filter((r) => r === 'SET_VRING_CALL').length >= 2, 30_000, 'QEMU connect sequence');
    expect(client.connections).toBe(1);
  });
});
