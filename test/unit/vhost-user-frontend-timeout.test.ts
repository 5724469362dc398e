// A back-end that accepts the connection but stops answering must not hold the front-end (and so
// VM creation) forever: each request has a reply deadline. The back-ends here are real unix
// socket servers that read the requests and answer only some of them.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { Reactor } from '../../sys/poll.js';
import { Frontend } from '../../vhost-user/frontend.js';
import { PROTOCOL_FEATURES_BIT, REPLY_FLAGS, Request } from '../../vhost-user/messages.js';
import { openVhostUserNet } from '../../vmm/net-device.js';
import type { GuestRam } from '../../vmm/guest-ram.js';

let dir = '';
let reactor: Reactor;
const servers: Server[] = [];
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vu-timeout-'));
  reactor = new Reactor();
});
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});
afterAll(async () => {
  await reactor.close();
  rmSync(dir, { recursive: true, force: true });
});

interface FakeBackend {
  path: string;
  /** Request codes received, in order. */
  requests: number[];
  /** Resolves when the front-end closed its connection. */
  hungUp: Promise<void>;
}

/** A back-end that reads every request and answers only those `answer` returns a payload for. */
async function fakeBackend(name: string, answer: (request: number) => Buffer | null): Promise<FakeBackend> {
  const path = join(dir, name);
  const requests: number[] = [];
  let hangUp!: () => void;
  const hungUp = new Promise<void>((r) => (hangUp = r));
  const server = createServer((socket: Socket) => {
    let buffered = Buffer.alloc(0);
    socket.on('data', (chunk) => {
      buffered = Buffer.concat([buffered, chunk]);
      while (buffered.length >= 12) {
        const request = buffered.readUInt32LE(0);
        const size = buffered.readUInt32LE(8);
        if (buffered.length < 12 + size) break;
        buffered = buffered.subarray(12 + size);
        requests.push(request);
        const payload = answer(request);
        if (payload) {
          const header = Buffer.alloc(12);
          header.writeUInt32LE(request, 0);
          header.writeUInt32LE(REPLY_FLAGS, 4);
          header.writeUInt32LE(payload.length, 8);
          socket.write(Buffer.concat([header, payload]));
        }
      }
    });
    socket.on('error', () => undefined);
    socket.on('close', () => hangUp());
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(path, r));
  return { path, requests, hungUp };
}

const u64 = (value: bigint) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(value);
  return b;
};

describe('vhost-user front-end reply deadline', () => {
  it('a back-end that never answers: GET_FEATURES fails after the deadline, named, and the connection is closed', async () => {
    const backend = await fakeBackend('silent.sock', () => null);
    const frontend = await Frontend.connect(backend.path, { reactor, label: 'nic0', replyTimeoutMs: 300 });
    const started = Date.now();
    await expect(frontend.getFeatures()).rejects.toThrow(
      'vhost-user front-end nic0: no reply to GET_FEATURES within 300 ms; the back-end accepted the connection but does not answer',
    );
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
    await backend.hungUp;
    expect(backend.requests).toEqual([Request.GET_FEATURES]);
    // Nothing more goes out on a connection whose replies can no longer be matched.
    await expect(frontend.getFeatures()).rejects.toThrow(/GET_FEATURES not sent: .*no reply to GET_FEATURES/);
  });

  it('a back-end that answers GET_FEATURES and then stops: the deadline applies to each request', async () => {
    const backend = await fakeBackend('half.sock', (request) => (request === Request.GET_FEATURES ? u64(1n << BigInt(PROTOCOL_FEATURES_BIT)) : null));
    const frontend = await Frontend.connect(backend.path, { reactor, label: 'nic1', replyTimeoutMs: 300 });
    await expect(frontend.negotiate({ features: 2 ** PROTOCOL_FEATURES_BIT })).rejects.toThrow(/nic1: no reply to GET_PROTOCOL_FEATURES within 300 ms/);
    expect(backend.requests).toEqual([Request.SET_OWNER, Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES]);
    await backend.hungUp;
  });

  it('replies within the deadline are unaffected', async () => {
    const backend = await fakeBackend('prompt.sock', (request) => (request === Request.GET_FEATURES ? u64(0x1234n) : null));
    const frontend = await Frontend.connect(backend.path, { reactor, label: 'nic2', replyTimeoutMs: 300 });
    for (let i = 0; i < 3; i++) expect(await frontend.getFeatures()).toBe(0x1234);
    await new Promise((r) => setTimeout(r, 400)); // past the deadline: no stray timer fires
    expect(await frontend.getFeatures()).toBe(0x1234);
    await frontend.close();
  });

  it("the VMM's NIC: VM creation fails with the NIC, the socket and the request named", async () => {
    const backend = await fakeBackend('vmm-nic.sock', () => null);
    const ram = { size: 0, zones: [], regions: [], shared: true } as GuestRam;
    const config = { id: 'net0', socketPath: backend.path, server: false, mac: '52:54:00:00:00:01', queuePairs: 1, socketLabel: '-chardev c0' };
    await expect(openVhostUserNet(config, ram, reactor, pino({ level: 'silent' }), 2000, 300)).rejects.toThrow(
      `NIC net0 (${backend.path}): vhost-user negotiation failed: vhost-user front-end net0 (${backend.path}): no reply to GET_FEATURES within 300 ms`,
    );
    await backend.hungUp;
  });
});
