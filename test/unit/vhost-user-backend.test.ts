// The control-plane checklist (vhost-user reference §3.2, C1–C12) driven over a real socketpair
// against a BackendSession with a recording device. The peer side speaks raw bytes so malformed
// messages can be sent exactly as a hostile front-end would.
import { closeSync, openSync, readdirSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { close as closeFd, isNonBlocking, pipe } from '../../sys/fd.js';
import { eventfd } from '../../sys/eventfd.js';
import { F_SEAL_SHRINK, MAP_SHARED, PROT_READ, PROT_WRITE, addSeals, fileSeals, ftruncate, memfdCreate, mmap, munmap, viewAt, type Mapping } from '../../sys/memory.js';
import { Reactor } from '../../sys/poll.js';
import { receiveMessage, sendMessage, socketPair } from '../../sys/unix-socket.js';
import { BackendSession, type BackendSessionOptions } from '../../vhost-user/backend.js';
import {
  FLAG_NEED_REPLY,
  REPLY_FLAGS,
  Request,
  VERSION,
  decodeU64,
  decodeVringState,
  encodeHeader,
  encodeMemTable,
  encodeSingleRegion,
  MAX_MEM_SLOTS,
  encodeMessage,
  encodeU64,
  encodeLog,
  encodeVringAddr,
  encodeVringFile,
  VRING_F_LOG,
  encodeVringState,
  hasRequestRow,
  requestName,
  type MemRegionDesc,
  hasBit,
} from '../../vhost-user/messages.js';
import { offeredFeatures, offeredProtocolFeatures } from '../../vhost-user/features.js';
import { VIRTIO_NET_F_MTU, VHOST_USER_PROTOCOL_F_NET_MTU } from '../../virtio/features.js';
import { RecordingDevice } from '../../vhost-user/recording-device.js';

const MEM_SIZE = 1 << 20;
const USER_BASE = 0x7f12_3400_0000;
const GPA_BASE = 0x1_0000_0000;
const QSIZE = 256;
// Ring offsets inside the region.
const DESC_AT = 0x1_0000;
const AVAIL_AT = 0x2_0000;
const USED_AT = 0x3_0000;
const RING_STRIDE = 0x4_0000;

const openFds = () => readdirSync('/proc/self/fd').length;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let reactor: Reactor;
let memFd: number;
let local: Mapping;
let peer: number;
let session: BackendSession;
let device: RecordingDevice;
let baseline: number;

const region = (): MemRegionDesc & { fd: number } => ({ guestPhysAddr: GPA_BASE, size: MEM_SIZE, userAddr: USER_BASE, mmapOffset: 0, fd: memFd });

function send(request: number, payload: Uint8Array = new Uint8Array(0), fds: number[] = [], flags = VERSION): void {
  const n = sendMessage(peer, encodeMessage(request, flags, payload), fds);
  expect(n).toBe(12 + payload.length);
}

interface Reply {
  request: number;
  flags: number;
  payload: Uint8Array;
}

/** Reads one reply; null when the back-end closed the connection. */
async function reply(timeoutMs = 5000): Promise<Reply | null> {
  const deadline = Date.now() + timeoutMs;
  const read = async (n: number): Promise<Uint8Array | null> => {
    const out = new Uint8Array(n);
    let fill = 0;
    while (fill < n) {
      const got = receiveMessage(peer, n - fill, 4);
      if (got === null) {
        if (Date.now() > deadline) throw new Error('no reply from the back-end in time');
        await sleep(2);
        continue;
      }
      expect(got.fds).toEqual([]);
      if (got.bytes.length === 0) return null;
      out.set(got.bytes, fill);
      fill += got.bytes.length;
    }
    return out;
  };
  const head = await read(12);
  if (!head) return null;
  const v = new DataView(head.buffer);
  const size = v.getUint32(8, true);
  const payload = size ? await read(size) : new Uint8Array(0);
  if (!payload) return null;
  return { request: v.getUint32(0, true), flags: v.getUint32(4, true), payload };
}

async function ask(request: number, payload?: Uint8Array, fds: number[] = []): Promise<Uint8Array> {
  send(request, payload, fds, VERSION | FLAG_NEED_REPLY);
  const r = await reply();
  expect(r, `reply to request ${request}`).not.toBeNull();
  expect(r!.request).toBe(request);
  expect(r!.flags).toBe(REPLY_FLAGS);
  return r!.payload;
}

/** Sends with NEED_REPLY and returns the ack status (0 = success). */
async function ack(request: number, payload?: Uint8Array, fds: number[] = []): Promise<number> {
  return decodeU64(await ask(request, payload, fds));
}

async function expectClosedByBackend(): Promise<void> {
  expect(await reply()).toBeNull();
  await session.ended;
}

function startSession(maxQueuePairs = 1, extra: Partial<BackendSessionOptions> = {}): void {
  const [a, b] = socketPair();
  peer = a;
  device = new RecordingDevice();
  session = new BackendSession(b, { device, reactor, maxQueuePairs, ...extra });
  session.start();
}

function ringAddr(index: number) {
  const base = USER_BASE + index * RING_STRIDE;
  return { index, flags: 0, descUserAddr: base + DESC_AT, availUserAddr: base + AVAIL_AT, usedUserAddr: base + USED_AT, logGuestAddr: 0 };
}

/** The virtio-user start sequence for vrings 0..n-1 (features, table, NUM/BASE/ADDR/KICK/ENABLE). */
async function startRings(n: number, opts: { protocol?: boolean; protocolFeatures?: number } = {}): Promise<number[]> {
  const protocol = opts.protocol ?? true;
  if (protocol) expect(await ack(Request.SET_PROTOCOL_FEATURES, encodeU64(opts.protocolFeatures ?? 0b1001))).toBe(0);
  expect(await ack(Request.SET_FEATURES, encodeU64(protocol ? 2 ** 32 + 2 ** 30 : 2 ** 32))).toBe(0);
  expect(await ack(Request.SET_MEM_TABLE, encodeMemTable([region()]), [memFd])).toBe(0);
  const kicks: number[] = [];
  for (let i = 0; i < n; i++) {
    expect(await ack(Request.SET_VRING_NUM, encodeVringState({ index: i, num: QSIZE }))).toBe(0);
    expect(await ack(Request.SET_VRING_BASE, encodeVringState({ index: i, num: 0 }))).toBe(0);
    expect(await ack(Request.SET_VRING_ADDR, encodeVringAddr(ringAddr(i)))).toBe(0);
    const kick = eventfd();
    kicks.push(kick);
    expect(await ack(Request.SET_VRING_KICK, encodeVringFile({ index: i, noFd: false }), [kick])).toBe(0);
    if (protocol) expect(await ack(Request.SET_VRING_ENABLE, encodeVringState({ index: i, num: 1 }))).toBe(0);
  }
  // Our copies: the back-end holds its own duplicates.
  for (const k of kicks) closeFd(k);
  return kicks;
}

beforeEach(() => {
  reactor = new Reactor();
  memFd = memfdCreate('vhost-user-test');
  ftruncate(memFd, MEM_SIZE);
  local = mmap({ length: MEM_SIZE, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED, fd: memFd });
  baseline = openFds();
  startSession();
});

afterEach(async () => {
  try {
    closeFd(peer);
  } catch {
    /* closed by the test */
  }
  await session.ended;
  // Every fd the back-end received (duplicates of ours) is closed by now.
  expect(openFds()).toBe(baseline);
  munmap(local);
  closeFd(memFd);
  await reactor.close();
});

describe('a well-behaved front-end (virtio-user order)', () => {
  it('negotiates, maps memory, starts and enables vrings 0 and 1, and stops them on GET_VRING_BASE', async () => {
    send(Request.SET_OWNER);
    expect(decodeU64(await ask(Request.GET_FEATURES))).toBe(offeredFeatures());
    expect(decodeU64(await ask(Request.GET_PROTOCOL_FEATURES))).toBe(0x1800b);
    expect(decodeU64(await ask(Request.GET_QUEUE_NUM))).toBe(1);
    // virtio-user sends the call fds before anything else.
    const calls = [eventfd(), eventfd()];
    send(Request.SET_VRING_CALL, encodeVringFile({ index: 0, noFd: false }), [calls[0]]);
    send(Request.SET_VRING_CALL, encodeVringFile({ index: 1, noFd: false }), [calls[1]]);
    await startRings(2);
    await device.waitFor((d) => d.isStartedAndEnabled(0) && d.isStartedAndEnabled(1), 5000, 'vrings 0 and 1 started and enabled');
    expect(device.memory!.regions).toHaveLength(1);
    const cfg = device.running.get(1)!;
    expect(cfg.size).toBe(QSIZE);
    expect(cfg.desc.region).toBe(0);
    expect(cfg.desc.offset).toBe(RING_STRIDE + DESC_AT);
    expect(cfg.used.hostAddress).toBe(device.memory!.regions[0].hostAddress + RING_STRIDE + USED_AT);
    expect(cfg.kickFd).toBeGreaterThan(2);
    expect(cfg.callFd).toBeGreaterThan(2);
    expect(cfg.features).toBe(2 ** 32 + 2 ** 30);
    expect(cfg.netHeaderLength).toBe(12);
    expect(cfg.eventIdx).toBe(false);
    // The session maps the same memory as ours: a byte written here is visible through the device's view.
    new Uint8Array(local.buffer)[RING_STRIDE + DESC_AT] = 0xab;
    expect(device.memory!.memory.userToHost(USER_BASE + RING_STRIDE + DESC_AT, 1)!.bytes[RING_STRIDE + DESC_AT]).toBe(0xab);

    device.lastAvailOf = (i) => (i === 1 ? 17 : 3);
    const base1 = decodeVringState(await ask(Request.GET_VRING_BASE, encodeVringState({ index: 1, num: 0 })));
    expect(base1).toEqual({ index: 1, num: 17 });
    expect(device.running.has(1)).toBe(false);
    expect(session.vring(1).kickFd).toBe(-1);
    expect(session.vring(1).callFd).toBe(-1);
    expect(session.vring(1).addr).toBeNull();
    for (const c of calls) closeFd(c);
  });

  it('starts rings enabled when VHOST_USER_F_PROTOCOL_FEATURES is not negotiated', async () => {
    await startRings(1, { protocol: false });
    await device.waitFor((d) => d.running.has(0));
    expect(device.running.get(0)!.enabled).toBe(true);
  });

  it('resumes from used->idx when it differs from the base (reconnect)', async () => {
    new DataView(local.buffer).setUint16(USED_AT + 2, 7, true);
    await startRings(1);
    expect(device.running.get(0)!.lastAvail).toBe(7);
    expect(device.running.get(0)!.lastUsed).toBe(7);
  });

  it('answers GET_VRING_BASE on a ring that never started with its base', async () => {
    send(Request.SET_VRING_BASE, encodeVringState({ index: 0, num: 42 }));
    expect(decodeVringState(await ask(Request.GET_VRING_BASE, encodeVringState({ index: 0, num: 0 })))).toEqual({ index: 0, num: 42 });
    expect(device.events).toEqual([]);
  });

  it('processes messages split across writes and several messages in one write, in order', async () => {
    const call = eventfd();
    const msg = encodeMessage(Request.SET_VRING_CALL, VERSION, encodeVringFile({ index: 0, noFd: false }));
    expect(sendMessage(peer, msg.subarray(0, 5), [call])).toBe(5);
    await sleep(20);
    expect(sendMessage(peer, msg.subarray(5, 14))).toBe(9);
    await sleep(20);
    const two = new Uint8Array([...msg.subarray(14), ...encodeMessage(Request.GET_QUEUE_NUM, VERSION), ...encodeMessage(Request.GET_FEATURES, VERSION)]);
    sendMessage(peer, two);
    const r1 = await reply();
    const r2 = await reply();
    expect([r1!.request, r2!.request]).toEqual([Request.GET_QUEUE_NUM, Request.GET_FEATURES]);
    expect(session.vring(0).callFd).toBeGreaterThan(2);
    closeFd(call);
  });

  it('waits for a slow device hook before reading the next message', async () => {
    const order: string[] = [];
    device.memoryChanged = async (memory) => {
      await sleep(50);
      device.memory = memory;
      order.push('memoryChanged done');
    };
    const both = new Uint8Array([
      ...encodeMessage(Request.SET_MEM_TABLE, VERSION, encodeMemTable([region()])),
      ...encodeMessage(Request.GET_QUEUE_NUM, VERSION),
    ]);
    expect(sendMessage(peer, both, [memFd])).toBe(both.length);
    const r = await reply();
    order.push('GET_QUEUE_NUM answered');
    expect(r!.request).toBe(Request.GET_QUEUE_NUM);
    expect(order).toEqual(['memoryChanged done', 'GET_QUEUE_NUM answered']);
    expect(session.memory).not.toBeNull();
  });

  it('NACKs a start the device refuses and leaves the ring stopped', async () => {
    device.vringStarted = async () => {
      throw new Error('no worker available');
    };
    expect(await ack(Request.SET_MEM_TABLE, encodeMemTable([region()]), [memFd])).toBe(0);
    expect(await ack(Request.SET_VRING_NUM, encodeVringState({ index: 0, num: QSIZE }))).toBe(0);
    expect(await ack(Request.SET_VRING_ADDR, encodeVringAddr(ringAddr(0)))).toBe(0);
    const kick = eventfd();
    expect(await ack(Request.SET_VRING_KICK, encodeVringFile({ index: 0, noFd: false }), [kick])).toBe(1);
    closeFd(kick);
    expect(session.vring(0).started).toBe(false);
  });

  it('keeps running when the same memory table arrives again, and restarts rings on a new one', async () => {
    await startRings(2);
    const before = device.events.length;
    expect(await ack(Request.SET_MEM_TABLE, encodeMemTable([region()]), [memFd])).toBe(0);
    expect(device.events.length).toBe(before);
    // Same memory, different guest-physical base: a new table.
    const moved = { ...region(), guestPhysAddr: 0 };
    expect(await ack(Request.SET_MEM_TABLE, encodeMemTable([moved]), [memFd])).toBe(0);
    const kinds = device.events.slice(before).map((e) => e.kind);
    expect(kinds).toEqual(['vringStopped', 'vringStopped', 'memoryChanged', 'vringStarted', 'vringStarted']);
    expect(device.memory!.regions[0].guestPhysAddr).toBe(0);
    expect(device.isStartedAndEnabled(0) && device.isStartedAndEnabled(1)).toBe(true);
  });

  it('tells the device about the end of the connection after stopping running rings', async () => {
    await startRings(2);
    closeFd(peer);
    await session.ended;
    const kinds = device.events.map((e) => e.kind);
    expect(kinds.slice(-3)).toEqual(['vringStopped', 'vringStopped', 'disconnected']);
    expect(session.memory).toBeNull();
  });
});

describe('the request table', () => {
  it('has a wire row (payload, fds, reply) for every request the back-end handles', () => {
    // beforeEach started the session.
    expect(session.handledRequests.length).toBeGreaterThan(15);
    for (const request of session.handledRequests) expect(hasRequestRow(request), requestName(request)).toBe(true);
  });
});

describe('C1: malformed headers close the connection', () => {
  const cases: Array<[string, Uint8Array]> = [
    ['version 2', encodeHeader({ request: Request.GET_FEATURES, flags: 2, size: 0 })],
    ['REPLY flag in a request', encodeHeader({ request: Request.GET_FEATURES, flags: 5, size: 0 })],
    ['reserved flag bits', encodeHeader({ request: Request.GET_FEATURES, flags: 0x41, size: 0 })],
    ['size above the maximum', encodeHeader({ request: Request.SET_FEATURES, flags: 1, size: 100_000 })],
    ['size different from the exact size', encodeHeader({ request: Request.SET_VRING_NUM, flags: 1, size: 4 })],
  ];
  for (const [what, bytes] of cases) {
    it(`closes on ${what}`, async () => {
      sendMessage(peer, bytes);
      await expectClosedByBackend();
      expect(device.disconnectedCount).toBe(1);
    });
  }

  it('closes when the peer hangs up in the middle of a message', async () => {
    sendMessage(peer, encodeMessage(Request.SET_FEATURES, VERSION, encodeU64(0)).subarray(0, 16));
    await sleep(20);
    closeFd(peer);
    await session.ended;
    expect(device.disconnectedCount).toBe(1);
  });
});

describe('C2/C3: wrong fd counts close every received fd', () => {
  it('refuses a memory table with more fds than regions (NACK with NEED_REPLY)', async () => {
    const extra = eventfd();
    expect(await ack(Request.SET_MEM_TABLE, encodeMemTable([region()]), [memFd, extra])).toBe(1);
    closeFd(extra);
    expect(session.memory).toBeNull();
    // The session is still usable.
    expect(decodeU64(await ask(Request.GET_QUEUE_NUM))).toBe(1);
  });

  it('refuses a memory table with fewer fds than regions and closes without NEED_REPLY', async () => {
    const two = [region(), { ...region(), guestPhysAddr: 0, userAddr: USER_BASE + MEM_SIZE }];
    send(Request.SET_MEM_TABLE, encodeMemTable(two), [memFd]);
    await expectClosedByBackend();
  });

  it('refuses fds on a message that takes none', async () => {
    const fds = [eventfd(), eventfd(), eventfd()];
    send(Request.SET_FEATURES, encodeU64(2 ** 32), fds);
    for (const f of fds) closeFd(f);
    await expectClosedByBackend();
  });

  it('refuses a kick with NOFD and an fd, and a kick without NOFD and no fd', async () => {
    const fd = eventfd();
    expect(await ack(Request.SET_VRING_KICK, encodeVringFile({ index: 0, noFd: true }), [fd])).toBe(1);
    expect(await ack(Request.SET_VRING_CALL, encodeVringFile({ index: 0, noFd: false }))).toBe(1);
    closeFd(fd);
    expect(session.vring(0).kickFd).toBe(-1);
    expect(session.vring(0).callFd).toBe(-1);
  });

  it('treats control truncation (more fds than the receive buffer holds) as fatal', async () => {
    const fds = Array.from({ length: 40 }, () => eventfd());
    send(Request.SET_OWNER, new Uint8Array(0), fds);
    for (const f of fds) closeFd(f);
    await expectClosedByBackend();
  });
});

describe('C4/C5: vring index and size', () => {
  it('refuses a vring index beyond 2·maxQueuePairs', async () => {
    expect(await ack(Request.SET_VRING_NUM, encodeVringState({ index: 2, num: 256 }))).toBe(1);
    expect(await ack(Request.SET_VRING_ENABLE, encodeVringState({ index: 2, num: 1 }))).toBe(1);
    const call = eventfd();
    expect(await ack(Request.SET_VRING_CALL, encodeVringFile({ index: 9, noFd: false }), [call])).toBe(1);
    closeFd(call);
    // GET_VRING_BASE cannot be NACKed: its reply has a fixed shape, so the connection ends.
    send(Request.GET_VRING_BASE, encodeVringState({ index: 200, num: 0 }), [], VERSION | FLAG_NEED_REPLY);
    await expectClosedByBackend();
  });

  it('accepts up to 2·maxQueuePairs vrings when more pairs are configured', async () => {
    closeFd(peer);
    await session.ended;
    startSession(4);
    expect(decodeU64(await ask(Request.GET_QUEUE_NUM))).toBe(4);
    expect(await ack(Request.SET_VRING_NUM, encodeVringState({ index: 7, num: 256 }))).toBe(0);
    expect(await ack(Request.SET_VRING_NUM, encodeVringState({ index: 8, num: 256 }))).toBe(1);
  });

  it('packed rings: any size up to 32768, a base with its wrap bit, 4-byte event areas, and GET_VRING_BASE in both halves', async () => {
    expect(await ack(Request.SET_PROTOCOL_FEATURES, encodeU64(0b1001))).toBe(0);
    expect(await ack(Request.SET_FEATURES, encodeU64(2 ** 34 + 2 ** 32 + 2 ** 30))).toBe(0);
    expect(await ack(Request.SET_MEM_TABLE, encodeMemTable([region()]), [memFd])).toBe(0);
    for (const num of [0, 65536]) expect(await ack(Request.SET_VRING_NUM, encodeVringState({ index: 0, num }))).toBe(1);
    expect(await ack(Request.SET_VRING_NUM, encodeVringState({ index: 0, num: 255 }))).toBe(0);
    // Slot 255 does not exist in a ring of 255; slot 3 in the second round (wrap bit 0) does.
    expect(await ack(Request.SET_VRING_BASE, encodeVringState({ index: 0, num: 0x80ff }))).toBe(1);
    // QEMU sends its used index in bits 16-31: equal to the low half once a ring stopped.
    expect(await ack(Request.SET_VRING_BASE, encodeVringState({ index: 0, num: 0x0003_0003 }))).toBe(0);
    // The device event area is 4 bytes: a used address 4 bytes from the end of memory fits.
    const addr = { ...ringAddr(0), usedUserAddr: USER_BASE + MEM_SIZE - 4 };
    expect(await ack(Request.SET_VRING_ADDR, encodeVringAddr(addr))).toBe(0);
    expect(await ack(Request.SET_VRING_ADDR, encodeVringAddr({ ...addr, usedUserAddr: USER_BASE + MEM_SIZE - 2 }))).toBe(1);
    const kick = eventfd();
    expect(await ack(Request.SET_VRING_KICK, encodeVringFile({ index: 0, noFd: false }), [kick])).toBe(0);
    closeFd(kick);
    await device.waitFor((d) => d.running.has(0), 5000, 'vring 0 started');
    const cfg = device.running.get(0)!;
    expect(cfg.packed).toBe(true);
    expect(cfg.size).toBe(255);
    expect(cfg.lastAvail).toBe(0x0003);
    expect(cfg.used.hostAddress).toBe(device.memory!.regions[0].hostAddress + MEM_SIZE - 4);
    device.lastAvailOf = () => 0x8011;
    expect(decodeVringState(await ask(Request.GET_VRING_BASE, encodeVringState({ index: 0, num: 0 })))).toEqual({ index: 0, num: 0x8011_8011 });
  });

  it('refuses sizes 0, non-powers of two and above 32768', async () => {
    for (const num of [0, 3, 255, 65536]) expect(await ack(Request.SET_VRING_NUM, encodeVringState({ index: 0, num }))).toBe(1);
    expect(await ack(Request.SET_VRING_NUM, encodeVringState({ index: 0, num: 32768 }))).toBe(0);
    expect(await ack(Request.SET_VRING_BASE, encodeVringState({ index: 0, num: 0x1_0000 }))).toBe(1);
  });

  it('refuses SET_VRING_ENABLE values other than 0 and 1', async () => {
    expect(await ack(Request.SET_VRING_ENABLE, encodeVringState({ index: 0, num: 2 }))).toBe(1);
  });
});

describe('C6: bad memory tables', () => {
  it('refuses overlapping regions and closes their fds', async () => {
    const overlap = [region(), { ...region(), guestPhysAddr: GPA_BASE + 0x1000, userAddr: USER_BASE + MEM_SIZE }];
    expect(await ack(Request.SET_MEM_TABLE, encodeMemTable(overlap), [memFd, memFd])).toBe(1);
    expect(session.memory).toBeNull();
  });

  it('refuses a region that reaches past the end of its file', async () => {
    expect(await ack(Request.SET_MEM_TABLE, encodeMemTable([{ ...region(), size: MEM_SIZE * 2 }]), [memFd])).toBe(1);
    expect(await ack(Request.SET_MEM_TABLE, encodeMemTable([{ ...region(), mmapOffset: 4096 }]), [memFd])).toBe(1);
    expect(session.memory).toBeNull();
  });

  it('refuses a region whose fd cannot be mapped', async () => {
    const [x, y] = socketPair();
    expect(await ack(Request.SET_MEM_TABLE, encodeMemTable([region()]), [x])).toBe(1);
    closeFd(x);
    closeFd(y);
  });

  it('refuses an empty region and a table with no regions', async () => {
    expect(await ack(Request.SET_MEM_TABLE, encodeMemTable([{ ...region(), size: 0 }]), [memFd])).toBe(1);
    const empty = new Uint8Array(8 + 32); // header says 1 region's worth of bytes, count says 0
    expect(await ack(Request.SET_MEM_TABLE, empty)).toBe(1);
  });
});

describe('C7: ring addresses', () => {
  it('refuses addresses before any memory table', async () => {
    expect(await ack(Request.SET_VRING_ADDR, encodeVringAddr(ringAddr(0)))).toBe(1);
  });

  it('refuses misaligned, untranslatable and region-crossing rings, and unknown flags', async () => {
    expect(await ack(Request.SET_MEM_TABLE, encodeMemTable([region()]), [memFd])).toBe(0);
    expect(await ack(Request.SET_VRING_NUM, encodeVringState({ index: 0, num: QSIZE }))).toBe(0);
    const good = ringAddr(0);
    expect(await ack(Request.SET_VRING_ADDR, encodeVringAddr({ ...good, descUserAddr: good.descUserAddr + 8 }))).toBe(1);
    expect(await ack(Request.SET_VRING_ADDR, encodeVringAddr({ ...good, usedUserAddr: good.usedUserAddr + 2 }))).toBe(1);
    expect(await ack(Request.SET_VRING_ADDR, encodeVringAddr({ ...good, availUserAddr: good.availUserAddr + 1 }))).toBe(1);
    expect(await ack(Request.SET_VRING_ADDR, encodeVringAddr({ ...good, availUserAddr: 0x1000 }))).toBe(1);
    expect(await ack(Request.SET_VRING_ADDR, encodeVringAddr({ ...good, usedUserAddr: USER_BASE + MEM_SIZE - 16 }))).toBe(1);
    const flags = encodeVringAddr(good);
    flags[4] = 0x2;
    expect(await ack(Request.SET_VRING_ADDR, flags)).toBe(1);
    expect(session.vring(0).addr).toBeNull();
    expect(await ack(Request.SET_VRING_ADDR, encodeVringAddr(good))).toBe(0);
  });

  it('keeps a ring stopped when its size makes it run past the region', async () => {
    expect(await ack(Request.SET_MEM_TABLE, encodeMemTable([region()]), [memFd])).toBe(0);
    const addr = { ...ringAddr(0), descUserAddr: USER_BASE + MEM_SIZE - 0x1000 };
    expect(await ack(Request.SET_VRING_ADDR, encodeVringAddr(addr))).toBe(0); // size not known yet: 1 descriptor fits
    expect(await ack(Request.SET_VRING_NUM, encodeVringState({ index: 0, num: 1024 }))).toBe(0);
    const kick = eventfd();
    expect(await ack(Request.SET_VRING_KICK, encodeVringFile({ index: 0, noFd: false }), [kick])).toBe(0);
    closeFd(kick);
    expect(session.vring(0).started).toBe(false);
    expect(device.running.size).toBe(0);
  });
});

describe('C8: features', () => {
  it('refuses virtio and protocol features that were not offered', async () => {
    expect(await ack(Request.SET_FEATURES, encodeU64(2 ** 38))).toBe(1); // NOTIFICATION_DATA
    expect(await ack(Request.SET_FEATURES, encodeU64(1 << 17))).toBe(1); // CTRL_VQ
    expect(await ack(Request.SET_PROTOCOL_FEATURES, encodeU64(1 << 11))).toBe(1); // HOST_NOTIFIER
    expect(await ack(Request.SET_PROTOCOL_FEATURES, encodeU64(1 << 5))).toBe(1); // BACKEND_REQ
    expect(session.features).toBe(0);
    expect(await ack(Request.SET_FEATURES, encodeU64(offeredFeatures()))).toBe(0);
  });

  it('refuses a feature change while rings run', async () => {
    await startRings(1);
    expect(await ack(Request.SET_FEATURES, encodeU64(2 ** 32))).toBe(1);
    expect(await ack(Request.SET_FEATURES, encodeU64(2 ** 32 + 2 ** 30))).toBe(0);
  });

  it('refuses SET_LOG_BASE while LOG_SHMFD is not negotiated, and closes its fd', async () => {
    await startRings(1);
    const fd = memfdCreate('log', { allowSealing: true });
    ftruncate(fd, 4096);
    // A log the relay could map, but without LOG_SHMFD the request has no reply of its own: NACKed.
    expect(await ack(Request.SET_LOG_BASE, encodeLog({ mmapSize: 64, mmapOffset: 0 }), [fd])).toBe(1);
    closeFd(fd);
  });
});

describe('C8b: dirty logging for live migration (LOG_ALL, LOG_SHMFD, SET_LOG_BASE)', () => {
  const LOG_ALL = 2 ** 26;
  const FEATURES = 2 ** 32 + 2 ** 30;
  const LOG_SHMFD_PROTOCOL = 0b1011; // MQ | LOG_SHMFD | REPLY_ACK

  it('maps the log, replies with an empty payload, and logs while LOG_ALL is on, under running rings', async () => {
    await startRings(2, { protocolFeatures: LOG_SHMFD_PROTOCOL });
    const logFd = memfdCreate('log', { allowSealing: true });
    ftruncate(logFd, 8192);
    // QEMU's order: the log, then LOG_ALL, then every ring's address with the log flag.
    expect(await ask(Request.SET_LOG_BASE, encodeLog({ mmapSize: 4096, mmapOffset: 4096 }), [logFd])).toEqual(new Uint8Array(0));
    // The back-end sealed the log against shrinking, as it does guest memory.
    expect(fileSeals(logFd) & F_SEAL_SHRINK).toBe(F_SEAL_SHRINK);
    expect(device.running.get(0)!.dirtyLog).toBeNull(); // LOG_ALL not on yet
    expect(await ack(Request.SET_FEATURES, encodeU64(FEATURES + LOG_ALL))).toBe(0);
    const on = device.running.get(0)!.dirtyLog!;
    expect(on.size).toBe(4096);
    expect(device.running.get(1)!.dirtyLog).toEqual(on);
    // The device's log is our file at offset 4096: a bit it sets shows up here.
    const ours = mmap({ length: 8192, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED, fd: logFd });
    new Uint8Array(viewAt(on.hostAddress, 1))[0] = 0x5a;
    expect(new Uint8Array(ours.buffer)[4096]).toBe(0x5a);
    munmap(ours);
    expect(await ack(Request.SET_VRING_ADDR, encodeVringAddr({ ...ringAddr(0), flags: VRING_F_LOG, logGuestAddr: 0x7000 }))).toBe(0);
    expect(device.running.get(0)!.logUsed).toBe(true);
    expect(device.running.get(0)!.logGuestAddr).toBe(0x7000);
    // Rings restarted, never stopped for good: both still run, with their indexes.
    expect(device.isStartedAndEnabled(0) && device.isStartedAndEnabled(1)).toBe(true);
    // The end of the migration turns logging off; any other change under running rings is refused.
    expect(await ack(Request.SET_FEATURES, encodeU64(FEATURES))).toBe(0);
    expect(device.running.get(0)!.dirtyLog).toBeNull();
    expect(await ack(Request.SET_FEATURES, encodeU64(FEATURES + LOG_ALL - 2 ** 30))).toBe(1);
    closeFd(logFd);
  });

  it('switches a running ring to a new log before it unmaps the old one', async () => {
    await startRings(1, { protocolFeatures: LOG_SHMFD_PROTOCOL });
    expect(await ack(Request.SET_FEATURES, encodeU64(FEATURES + LOG_ALL))).toBe(0);
    const logs = [memfdCreate('log1', { allowSealing: true }), memfdCreate('log2', { allowSealing: true })];
    for (const fd of logs) ftruncate(fd, 4096);
    expect(await ask(Request.SET_LOG_BASE, encodeLog({ mmapSize: 64, mmapOffset: 0 }), [logs[0]])).toEqual(new Uint8Array(0));
    const first = device.running.get(0)!.dirtyLog!;
    expect(await ask(Request.SET_LOG_BASE, encodeLog({ mmapSize: 128, mmapOffset: 0 }), [logs[1]])).toEqual(new Uint8Array(0));
    const second = device.running.get(0)!.dirtyLog!;
    expect(second.size).toBe(128);
    expect(second.hostAddress).not.toBe(first.hostAddress);
    for (const fd of logs) closeFd(fd);
  });

  for (const [what, size, fileSize, sealable] of [
    ['reaches past the end of its file', 8192, 4096, true],
    ['is larger than 1 GiB', 2 ** 31, 4096, true],
    // It could shrink under the mapping, and the next marked page would SIGBUS the daemon.
    ['cannot be sealed against shrinking', 64, 4096, false],
  ] as const) {
    it(`ends the connection for a log that ${what} (the request has its own reply, so no NACK), mapping nothing`, async () => {
      await startRings(1, { protocolFeatures: LOG_SHMFD_PROTOCOL });
      const fd = memfdCreate('log', { allowSealing: sealable });
      ftruncate(fd, fileSize);
      send(Request.SET_LOG_BASE, encodeLog({ mmapSize: size, mmapOffset: 0 }), [fd], VERSION | FLAG_NEED_REPLY);
      await expectClosedByBackend();
      closeFd(fd);
    });
  }
});

describe('C11: repeated and reordered messages', () => {
  it('accepts SET_VRING_ENABLE before features and memory, and applies it when the ring starts', async () => {
    expect(await ack(Request.SET_VRING_ENABLE, encodeVringState({ index: 1, num: 1 }))).toBe(0);
    expect(await ack(Request.SET_VRING_ENABLE, encodeVringState({ index: 1, num: 1 }))).toBe(0);
    expect(session.vring(1).enabled).toBe(true);
    await startRings(2);
    expect(device.isStartedAndEnabled(1)).toBe(true);
  });

  it('reports enable changes of running rings to the device', async () => {
    await startRings(1);
    expect(await ack(Request.SET_VRING_ENABLE, encodeVringState({ index: 0, num: 0 }))).toBe(0);
    expect(device.enabled.get(0)).toBe(false);
    expect(device.events.at(-1)).toEqual({ kind: 'vringEnabled', index: 0, enabled: false });
  });

  it('leaks nothing when SET_VRING_CALL and SET_VRING_KICK repeat', async () => {
    await startRings(1);
    const before = openFds();
    for (let i = 0; i < 50; i++) {
      const fd = eventfd();
      expect(await ack(i % 2 ? Request.SET_VRING_CALL : Request.SET_VRING_KICK, encodeVringFile({ index: 0, noFd: false }), [fd])).toBe(0);
      closeFd(fd);
    }
    expect(await ack(Request.SET_VRING_CALL, encodeVringFile({ index: 0, noFd: true }))).toBe(0);
    expect(session.vring(0).callFd).toBe(-1);
    // Before: one kick fd. After: the latest kick fd, and the call fd replaced by NOFD.
    expect(openFds()).toBe(before);
    expect(device.running.get(0)!.callFd).toBe(-1);
  });
});

describe('C12: unknown requests', () => {
  it('NACKs an unknown id with NEED_REPLY and keeps going', async () => {
    expect(await ack(99, new Uint8Array(16))).toBe(1);
    expect(await ack(Request.SET_VRING_ENDIAN, new Uint8Array(8))).toBe(1); // CROSS_ENDIAN not offered
    expect(decodeU64(await ask(Request.GET_QUEUE_NUM))).toBe(1);
  });

  it('closes on an unknown id without NEED_REPLY', async () => {
    send(99);
    await expectClosedByBackend();
  });

  it('closes on an unknown id that carries fds, closing them', async () => {
    const fd = eventfd();
    send(77, new Uint8Array(8), [fd]);
    closeFd(fd);
    await expectClosedByBackend();
  });
});

describe('messages a net back-end tolerates or refuses without offering them', () => {
  it('accepts SEND_RARP and a valid NET_SET_MTU, refuses an MTU out of range', async () => {
    const mac = new Uint8Array([0x52, 0x54, 0, 0x12, 0x34, 0x56, 0, 0]);
    expect(await ack(Request.SEND_RARP, mac)).toBe(0);
    expect(await ack(Request.NET_SET_MTU, encodeU64(1500))).toBe(0);
    expect(await ack(Request.NET_SET_MTU, encodeU64(40))).toBe(1);
  });

  it('with a largest MTU (jumbo) offers VIRTIO_NET_F_MTU and NET_MTU, keeps an MTU up to it and NACKs one above', async () => {
    closeFd(peer);
    await session.ended;
    startSession(1, { maxMtu: 9000 });
    const features = decodeU64(await ask(Request.GET_FEATURES));
    expect(features).toBe(offeredFeatures({ maxMtu: 9000 }));
    expect(hasBit(features, VIRTIO_NET_F_MTU)).toBe(true);
    expect(hasBit(offeredFeatures(), VIRTIO_NET_F_MTU)).toBe(false);
    const protocol = decodeU64(await ask(Request.GET_PROTOCOL_FEATURES));
    expect(hasBit(protocol, VHOST_USER_PROTOCOL_F_NET_MTU)).toBe(true);
    expect(protocol).toBe(offeredProtocolFeatures({ maxMtu: 9000 }));
    expect(await ack(Request.SET_PROTOCOL_FEATURES, encodeU64(protocol))).toBe(0);
    expect(await ack(Request.SET_FEATURES, encodeU64(features))).toBe(0);
    expect(session.mtu).toBeUndefined();
    expect(await ack(Request.NET_SET_MTU, encodeU64(9000))).toBe(0);
    expect(session.mtu).toBe(9000);
    expect(await ack(Request.NET_SET_MTU, encodeU64(9001))).toBe(1);
    expect(await ack(Request.NET_SET_MTU, encodeU64(67))).toBe(1);
    expect(session.mtu).toBe(9000);
    expect(await ack(Request.NET_SET_MTU, encodeU64(1500))).toBe(0);
    expect(session.mtu).toBe(1500);
    // Still talking after the refusals.
    expect(decodeU64(await ask(Request.GET_QUEUE_NUM))).toBe(1);
  });

  it('without a largest MTU offers neither MTU bit and never keeps a NET_SET_MTU', async () => {
    expect(hasBit(decodeU64(await ask(Request.GET_FEATURES)), VIRTIO_NET_F_MTU)).toBe(false);
    expect(hasBit(decodeU64(await ask(Request.GET_PROTOCOL_FEATURES)), VHOST_USER_PROTOCOL_F_NET_MTU)).toBe(false);
    expect(await ack(Request.SET_PROTOCOL_FEATURES, encodeU64(1 << VHOST_USER_PROTOCOL_F_NET_MTU))).toBe(1);
    expect(await ack(Request.NET_SET_MTU, encodeU64(9000))).toBe(0);
    expect(session.mtu).toBeUndefined();
  });

  it('refuses a largest MTU outside 68..65535 when the session is made', () => {
    const [a, b] = socketPair();
    try {
      for (const maxMtu of [67, 65536, 9000.5]) {
        expect(() => new BackendSession(b, { device: new RecordingDevice(), reactor, maxMtu })).toThrow(/maxMtu .* is outside 68\.\.65535/);
      }
    } finally {
      closeFd(a);
      closeFd(b);
    }
  });

  it('PROTOCOL_F_STATUS: keeps the status byte the front-end sets, refuses more than a byte, forgets it on RESET_OWNER', async () => {
    expect(decodeU64(await ask(Request.GET_STATUS))).toBe(0);
    expect(await ack(Request.SET_STATUS, encodeU64(0x0f))).toBe(0);
    expect(decodeU64(await ask(Request.GET_STATUS))).toBe(0x0f);
    expect(await ack(Request.SET_STATUS, encodeU64(0x100))).toBe(1);
    expect(decodeU64(await ask(Request.GET_STATUS))).toBe(0x0f);
    expect(await ack(Request.RESET_OWNER)).toBe(0);
    expect(decodeU64(await ask(Request.GET_STATUS))).toBe(0);
  });

  it('CONFIGURE_MEM_SLOTS: adds and removes regions one at a time, refuses overlaps and a full table, ignores unknown removals', async () => {
    expect(decodeU64(await ask(Request.GET_MAX_MEM_SLOTS))).toBe(MAX_MEM_SLOTS);
    const { fd: _fd, ...first } = region();
    expect(await ack(Request.ADD_MEM_REG, encodeSingleRegion(first), [memFd])).toBe(0);
    expect(session.memory?.regions.length).toBe(1);
    // A second region of the same file further up in both address spaces.
    const half = MEM_SIZE / 2;
    const second = { guestPhysAddr: GPA_BASE + MEM_SIZE, size: half, userAddr: USER_BASE + MEM_SIZE, mmapOffset: half };
    expect(await ack(Request.ADD_MEM_REG, encodeSingleRegion(second), [memFd])).toBe(0);
    expect(session.memory?.regions.map((r) => r.guestPhysAddr)).toEqual([GPA_BASE, GPA_BASE + MEM_SIZE]);
    expect(session.memory?.memory.translate(GPA_BASE + MEM_SIZE + 16, 4)).not.toBeNull();
    // Overlapping what is mapped: refused, the table unchanged.
    const overlap = { ...second, guestPhysAddr: GPA_BASE + 4096, userAddr: USER_BASE + 8 * MEM_SIZE };
    expect(await ack(Request.ADD_MEM_REG, encodeSingleRegion(overlap), [memFd])).toBe(1);
    expect(session.memory?.regions.length).toBe(2);
    // Removing a region nobody added is ignored; removing a real one takes it out of translation.
    expect(await ack(Request.REM_MEM_REG, encodeSingleRegion({ ...second, size: 4096 }))).toBe(0);
    expect(session.memory?.regions.length).toBe(2);
    expect(await ack(Request.REM_MEM_REG, encodeSingleRegion(second))).toBe(0);
    expect(session.memory?.regions.length).toBe(1);
    expect(session.memory?.memory.translate(GPA_BASE + MEM_SIZE + 16, 4)).toBeNull();
    expect(await ack(Request.REM_MEM_REG, encodeSingleRegion(first))).toBe(0);
    expect(session.memory).toBeNull();
    // At most MAX_MEM_SLOTS regions.
    for (let i = 0; i < MAX_MEM_SLOTS; i++) {
      const r = { guestPhysAddr: i * MEM_SIZE, size: 4096, userAddr: USER_BASE + i * MEM_SIZE, mmapOffset: 0 };
      expect(await ack(Request.ADD_MEM_REG, encodeSingleRegion(r), [memFd])).toBe(0);
    }
    const extra = { guestPhysAddr: MAX_MEM_SLOTS * MEM_SIZE, size: 4096, userAddr: USER_BASE + MAX_MEM_SLOTS * MEM_SIZE, mmapOffset: 0 };
    expect(await ack(Request.ADD_MEM_REG, encodeSingleRegion(extra), [memFd])).toBe(1);
    expect(session.memory?.regions.length).toBe(MAX_MEM_SLOTS);
  });

  it('stops every ring and forgets features on RESET_OWNER', async () => {
    await startRings(2);
    expect(await ack(Request.RESET_OWNER)).toBe(0);
    expect(device.running.size).toBe(0);
    expect(session.features).toBe(0);
    expect(session.vring(0).kickFd).toBe(-1);
  });

  it('keeps a ring stopped when a new memory table no longer holds it', async () => {
    await startRings(1);
    const shrunk = { ...region(), size: 0x8000 }; // rings sit at 0x10000 and above
    expect(await ack(Request.SET_MEM_TABLE, encodeMemTable([shrunk]), [memFd])).toBe(0);
    expect(device.running.size).toBe(0);
    expect(session.vring(0).started).toBe(false);
    // Restoring the table brings it back without a new kick.
    expect(await ack(Request.SET_MEM_TABLE, encodeMemTable([region()]), [memFd])).toBe(0);
    expect(session.vring(0).started).toBe(true);
  });
});

describe('guest memory that could shrink under the mapping (SIGBUS)', () => {
  /** Replaces the default session with one using `policy` for unsealed memory. */
  async function restartWith(policy: 'refuse' | 'warn'): Promise<void> {
    closeFd(peer);
    await session.ended;
    startSession(1, { unsealedMemory: policy });
  }

  function memfd(opts: { sealable: boolean; sealed: boolean }): number {
    const fd = memfdCreate('vhost-user-seal-test', { allowSealing: opts.sealable });
    ftruncate(fd, MEM_SIZE);
    if (opts.sealed) addSeals(fd, F_SEAL_SHRINK);
    return fd;
  }

  it('refuses a memfd that can no longer be sealed when the policy is refuse, and maps nothing', async () => {
    await restartWith('refuse');
    // memFd was made without MFD_ALLOW_SEALING, like DPDK virtio-user's: it can shrink for ever.
    expect(await ack(Request.SET_MEM_TABLE, encodeMemTable([region()]), [memFd])).toBe(1);
    expect(session.memory).toBeNull();
    expect(device.events.map((e) => e.kind)).not.toContain('memoryChanged');
  });

  it('accepts a memfd sealed against shrinking when the policy is refuse', async () => {
    await restartWith('refuse');
    const fd = memfd({ sealable: true, sealed: true });
    try {
      expect(await ack(Request.SET_MEM_TABLE, encodeMemTable([region()]), [fd])).toBe(0);
      expect(session.memory).not.toBeNull();
    } finally {
      closeFd(fd);
    }
  });

  it('seals a sealable but unsealed memfd itself, so the front-end can no longer shrink it', async () => {
    await restartWith('refuse');
    const fd = memfd({ sealable: true, sealed: false });
    try {
      expect(fileSeals(fd) & F_SEAL_SHRINK).toBe(0);
      expect(await ack(Request.SET_MEM_TABLE, encodeMemTable([region()]), [fd])).toBe(0);
      expect(fileSeals(fd) & F_SEAL_SHRINK).toBe(F_SEAL_SHRINK);
      expect(() => ftruncate(fd, 0)).toThrow(expect.objectContaining({ code: 'EPERM' }));
    } finally {
      closeFd(fd);
    }
  });

  it('accepts memory that cannot be sealed when the policy is warn', async () => {
    await restartWith('warn');
    expect(await ack(Request.SET_MEM_TABLE, encodeMemTable([region()]), [memFd])).toBe(0);
    expect(session.memory).not.toBeNull();
  });
});

describe('kick and call fds that are not eventfds', () => {
  it('refuses a pipe, a socket, /dev/null and a semaphore eventfd as kick or call, keeps the vring as it was, and closes them', async () => {
    await startRings(1);
    const goodCall = eventfd();
    expect(await ack(Request.SET_VRING_CALL, encodeVringFile({ index: 0, noFd: false }), [goodCall])).toBe(0);
    closeFd(goodCall);
    const before = openFds();
    const { kickFd, callFd } = session.vring(0);
    const [pr, pw] = pipe();
    const [s1, s2] = socketPair();
    const devNull = openSync('/dev/null', 'r+');
    const sem = eventfd(3, { semaphore: true });
    for (const fd of [pr, pw, s1, devNull, sem]) {
      expect(await ack(Request.SET_VRING_KICK, encodeVringFile({ index: 0, noFd: false }), [fd])).toBe(1);
      expect(await ack(Request.SET_VRING_CALL, encodeVringFile({ index: 0, noFd: false }), [fd])).toBe(1);
    }
    for (const fd of [pr, pw, s1, s2, sem]) closeFd(fd);
    closeSync(devNull);
    expect(session.vring(0)).toMatchObject({ kickFd, callFd, started: true });
    expect(device.running.get(0)!.callFd).toBe(callFd);
    expect(openFds()).toBe(before);
  });

  it('ends the connection on a refused kick fd without REPLY_ACK', async () => {
    const [pr, pw] = pipe();
    send(Request.SET_VRING_KICK, encodeVringFile({ index: 0, noFd: false }), [pr]);
    closeFd(pr);
    closeFd(pw);
    await expectClosedByBackend();
  });

  it('makes an accepted blocking eventfd non-blocking, so a full counter can never block a write', async () => {
    await startRings(1);
    const call = eventfd(0, { nonblock: false });
    expect(await ack(Request.SET_VRING_CALL, encodeVringFile({ index: 0, noFd: false }), [call])).toBe(0);
    expect(isNonBlocking(call)).toBe(true);
    closeFd(call);
  });
});
