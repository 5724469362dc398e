// server.ts, client.ts and frontend.ts over real unix sockets in a temporary directory, with our own
// back-end (BackendSession + RecordingDevice) on the other side.
import { lstatSync, mkdtempSync, readdirSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { close as closeFd } from '../../sys/fd.js';
import { eventfd } from '../../sys/eventfd.js';
import { MAP_SHARED, PROT_READ, PROT_WRITE, ftruncate, memfdCreate, mmap, munmap } from '../../sys/memory.js';
import { Reactor } from '../../sys/poll.js';
import { receiveMessage, unixConnect, unixListen } from '../../sys/unix-socket.js';
import { listenBackend, prepareSocketPath, type VhostUserServer } from '../../vhost-user/server.js';
import { connectBackend, type VhostUserClient } from '../../vhost-user/client.js';
import { Frontend } from '../../vhost-user/frontend.js';
import { RecordingDevice } from '../../vhost-user/recording-device.js';
import { offeredFeatures, VirtioNetFeature } from '../../vhost-user/features.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const openFds = () => readdirSync('/proc/self/fd').length;

let dir: string;
let reactor: Reactor;
const cleanups: Array<() => unknown> = [];

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), `vio4wd-srv-${process.pid}-`));
  reactor = new Reactor();
});

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

afterAll(async () => {
  await reactor.close();
  rmSync(dir, { recursive: true, force: true });
});

function serve(name: string, device = new RecordingDevice(), extra: { mode?: number; maxQueuePairs?: number; uid?: number; gid?: number } = {}): { server: VhostUserServer; device: RecordingDevice; path: string } {
  const path = join(dir, name);
  const server = listenBackend({ path, reactor, device, ...extra });
  cleanups.push(() => server.close());
  return { server, device, path };
}

async function frontendAt(path: string): Promise<Frontend> {
  const f = await Frontend.connect(path, { reactor, timeoutMs: 5000, retryMs: 20 });
  cleanups.push(() => f.close());
  return f;
}

/** Waits until the peer closes `fd` (EOF). */
async function expectEof(fd: number, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const got = receiveMessage(fd, 64, 4);
    if (got && got.bytes.length === 0) return;
    if (Date.now() > deadline) throw new Error(`fd ${fd} was not closed by the server`);
    await sleep(5);
  }
}

describe('server socket path', () => {
  it('creates the socket with mode 0660 and removes it on close', async () => {
    const { server, path } = serve('mode.sock');
    expect(lstatSync(path).isSocket()).toBe(true);
    expect(lstatSync(path).mode & 0o777).toBe(0o660);
    await server.close();
    expect(existsSync(path)).toBe(false);
  });

  it('applies the owner when asked', () => {
    // Root can give the socket away (to nobody); anyone can "change" it to themselves.
    const uid = process.getuid!() === 0 ? 65534 : process.getuid!();
    const gid = process.getuid!() === 0 ? 65534 : process.getgid!();
    const path = join(dir, 'owner.sock');
    const server = listenBackend({ path, reactor, device: new RecordingDevice(), uid, gid });
    cleanups.push(() => server.close());
    expect(lstatSync(path).uid).toBe(uid);
    expect(lstatSync(path).gid).toBe(gid);
  });

  it('applies another mode when asked', () => {
    const { path } = serve('mode600.sock', undefined, { mode: 0o600 });
    expect(lstatSync(path).mode & 0o777).toBe(0o600);
  });

  it('replaces a stale socket file that nothing listens on', async () => {
    const path = join(dir, 'stale.sock');
    const fd = unixListen(path);
    closeFd(fd); // the file stays, nobody listens
    expect(lstatSync(path).isSocket()).toBe(true);
    const { server } = serve('stale.sock');
    const f = await frontendAt(path);
    expect(await f.getFeatures()).toBe(offeredFeatures());
    expect(server.active).not.toBeNull();
  });

  it('refuses to replace a regular file, naming the path', () => {
    const path = join(dir, 'not-a-socket');
    writeFileSync(path, 'precious');
    expect(() => serve('not-a-socket')).toThrow(new RegExp(`${path}: the path exists and is not a socket`));
    expect(existsSync(path)).toBe(true);
  });

  it('refuses a path where another process listens', () => {
    const path = join(dir, 'live.sock');
    const fd = unixListen(path);
    cleanups.push(() => closeFd(fd));
    expect(() => prepareSocketPath(path)).toThrow(/another process is listening/);
  });

  it('names the path when the directory does not exist', () => {
    expect(() => serve('missing-dir/x.sock')).toThrow(/missing-dir\/x\.sock/);
  });
});

describe('one front-end at a time', () => {
  it('refuses a second connection and accepts again after the first leaves', async () => {
    const { server, device, path } = serve('single.sock');
    const first = await frontendAt(path);
    expect(await first.getQueueNum()).toBe(1);
    const second = unixConnect(path);
    await expectEof(second);
    closeFd(second);
    // The first session is unaffected.
    expect(await first.getFeatures()).toBe(offeredFeatures());
    await first.close();
    await device.waitFor((d) => d.disconnectedCount === 1);
    const third = await frontendAt(path);
    expect(await third.getQueueNum()).toBe(1);
    expect(server.active).not.toBeNull();
  });
});

describe('reconnecting client', () => {
  it('retries until the front-end listens, and reconnects after it goes away', async () => {
    const path = join(dir, 'fe-server.sock');
    const device = new RecordingDevice();
    const client: VhostUserClient = connectBackend({ path, reactor, device, retryMs: 20 });
    cleanups.push(() => client.close());
    await sleep(100);
    expect(client.connections).toBe(0);

    const f1 = await Frontend.accept(path, { reactor, timeoutMs: 5000 });
    expect(await f1.getFeatures()).toBe(offeredFeatures());
    expect(client.connections).toBe(1);
    await f1.close();
    await device.waitFor((d) => d.disconnectedCount === 1);

    const f2 = await Frontend.accept(path, { reactor, timeoutMs: 5000 });
    cleanups.push(() => f2.close());
    expect(await f2.getQueueNum()).toBe(1);
    expect(client.connections).toBe(2);
  });

  it('stops retrying after close()', async () => {
    const path = join(dir, 'never.sock');
    const client = connectBackend({ path, reactor, device: new RecordingDevice(), retryMs: 10 });
    await sleep(50);
    await client.close();
    const fe = Frontend.accept(path, { reactor, timeoutMs: 300 });
    await expect(fe).rejects.toThrow(/no back-end connected/);
    expect(client.connections).toBe(0);
  });
});

describe('front-end against our back-end', () => {
  it('runs the whole start and stop sequence with REPLY_ACK, two queue pairs, and leaks no fd', async () => {
    const before = openFds();
    const { device, path } = serve('full.sock', undefined, { maxQueuePairs: 2 });
    const memFd = memfdCreate('fe-ram');
    ftruncate(memFd, 1 << 20);
    const mem = mmap({ length: 1 << 20, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED, fd: memFd });
    const f = await frontendAt(path);
    const n = await f.negotiate({ features: 2 ** VirtioNetFeature.VERSION_1 + 2 ** VirtioNetFeature.MRG_RXBUF + 2 ** VirtioNetFeature.MQ });
    expect(n.queuePairs).toBe(2);
    expect(n.protocolFeatures).toBe(0b1001);
    const fds: number[] = [];
    const vrings = [0, 1, 2, 3].map((index) => {
      const kickFd = eventfd();
      const callFd = eventfd();
      fds.push(kickFd, callFd);
      const base = mem.address + index * 0x1_0000;
      return { index, size: 256, descUserAddr: base, availUserAddr: base + 0x1000, usedUserAddr: base + 0x2000, kickFd, callFd, enable: index < 2 };
    });
    await f.startDevice(n.features, [{ guestPhysAddr: 0, size: 1 << 20, userAddr: mem.address, mmapOffset: 0, fd: memFd }], vrings);
    await device.waitFor((d) => d.running.size === 4);
    expect(device.isStartedAndEnabled(0) && device.isStartedAndEnabled(1)).toBe(true);
    expect(device.enabled.get(2)).toBe(false);
    expect(device.running.get(3)!.mergeableRxBuffers).toBe(true);
    // A refused request surfaces where it was made.
    await expect(f.setVringNum(9, 256)).rejects.toThrow(/refused SET_VRING_NUM/);
    expect(await f.stopDevice([0, 1, 2, 3])).toEqual([0, 0, 0, 0]);
    expect(device.running.size).toBe(0);
    await f.close();
    await device.waitFor((d) => d.disconnectedCount === 1);
    for (const fd of fds) closeFd(fd);
    munmap(mem);
    closeFd(memFd);
    // The session closes what it kept of the memory table (a copy of each region's fd) just after
    // it told the device: give it that moment.
    for (let i = 0; i < 50 && openFds() !== before + 1; i++) await new Promise((r) => setTimeout(r, 10));
    expect(openFds()).toBe(before + 0 /* the listening socket */ + 1);
  });

  it('fails pending requests when the back-end goes away', async () => {
    const { server, path } = serve('vanish.sock');
    const f = await frontendAt(path);
    expect(await f.getQueueNum()).toBe(1);
    await server.close();
    await expect(f.getFeatures()).rejects.toThrow(/closed|not sent/);
  });
});
