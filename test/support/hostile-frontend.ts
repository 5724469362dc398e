// A hostile vhost-user front-end: the attacks of the hostile-guest campaign against the relay, as
// reusable cases over a TestVm, and a seeded random mode over messages, fds and rings. Every
// case leaves the hostile VM disconnected; the caller then checks the daemon and the other VMs.
import { closeSync, openSync } from 'node:fs';
import { eventfd, eventfdWrite } from '../../sys/eventfd.js';
import { close as closeFd, pipe, setNonBlocking, write } from '../../sys/fd.js';
import { ftruncate, memfdCreate } from '../../sys/memory.js';
import type { Reactor } from '../../sys/poll.js';
import { socketPair } from '../../sys/unix-socket.js';
import { Request, encodeLog, encodeU64, encodeVringAddr, encodeVringFile, encodeVringState } from '../../vhost-user/messages.js';
export { mulberry32 as rng } from './seeded-random.js';
import { MEM_SIZE, QSIZE, RX_RING_AT, SCRATCH_AT, TX_RING_AT, type TestVm } from './test-vm.js';

/** An fd to hand over as kick or call, and how to clean up everything made for it. */
export interface HostileFd {
  kind: string;
  fd: number;
  /** Whether the relay must accept it (an eventfd in normal mode). */
  acceptable: boolean;
  cleanup(): void;
}

function closeAll(...fds: number[]): () => void {
  return () => {
    for (const fd of fds) {
      try {
        closeFd(fd);
      } catch {
        /* closed already */
      }
    }
  };
}

const openDev = (path: string): number => openSync(path, 'r+');
const closeDev = (fd: number) => () => closeSync(fd);

/** Fills an eventfd to 0xfffffffffffffffe, the most it holds, then leaves it blocking. */
export function fillEventfd(fd: number): void {
  setNonBlocking(fd, true);
  for (let step = 2 ** 53 - 1; step >= 1; step = Math.floor(step / 2)) while (eventfdWrite(fd, step));
  setNonBlocking(fd, false);
}

/** The fds of the campaign's findings, by name. */
export const HOSTILE_FDS: Record<string, () => HostileFd> = {
  'pipe read end with 3 bytes': () => {
    const [r, w] = pipe();
    write(w, new Uint8Array([1, 2, 3]));
    return { kind: 'pipe read end with 3 bytes', fd: r, acceptable: false, cleanup: closeAll(r, w) };
  },
  'socketpair with 3 bytes': () => {
    const [a, b] = socketPair();
    write(b, new Uint8Array([1, 2, 3]));
    return { kind: 'socketpair with 3 bytes', fd: a, acceptable: false, cleanup: closeAll(a, b) };
  },
  'socket at EOF': () => {
    const [a, b] = socketPair();
    closeFd(b);
    return { kind: 'socket at EOF', fd: a, acceptable: false, cleanup: closeAll(a) };
  },
  '/dev/null': () => {
    const fd = openDev('/dev/null');
    return { kind: '/dev/null', fd, acceptable: false, cleanup: closeDev(fd) };
  },
  '/dev/full': () => {
    const fd = openDev('/dev/full');
    return { kind: '/dev/full', fd, acceptable: false, cleanup: closeDev(fd) };
  },
  '/dev/zero': () => {
    const fd = openDev('/dev/zero');
    return { kind: '/dev/zero', fd, acceptable: false, cleanup: closeDev(fd) };
  },
  'pipe read end': () => {
    const [r, w] = pipe();
    return { kind: 'pipe read end', fd: r, acceptable: false, cleanup: closeAll(r, w) };
  },
  'pipe without reader': () => {
    const [r, w] = pipe();
    closeFd(r);
    return { kind: 'pipe without reader', fd: w, acceptable: false, cleanup: closeAll(w) };
  },
  'full blocking pipe': () => {
    const [r, w] = pipe();
    const chunk = new Uint8Array(65536);
    while (write(w, chunk) !== null);
    setNonBlocking(w, false);
    return { kind: 'full blocking pipe', fd: w, acceptable: false, cleanup: closeAll(r, w) };
  },
  'pipe whose writer closed': () => {
    const [r, w] = pipe();
    closeFd(w);
    return { kind: 'pipe whose writer closed', fd: r, acceptable: false, cleanup: closeAll(r) };
  },
  memfd: () => {
    const fd = memfdCreate('hostile-kick');
    return { kind: 'memfd', fd, acceptable: false, cleanup: closeAll(fd) };
  },
  'semaphore eventfd, always readable': () => {
    const fd = eventfd(2 ** 31, { semaphore: true });
    return { kind: 'semaphore eventfd, always readable', fd, acceptable: false, cleanup: closeAll(fd) };
  },
  'full blocking eventfd': () => {
    const fd = eventfd(0, { nonblock: false });
    fillEventfd(fd);
    return { kind: 'full blocking eventfd', fd, acceptable: true, cleanup: closeAll(fd) };
  },
  eventfd: () => {
    const fd = eventfd();
    return { kind: 'eventfd', fd, acceptable: true, cleanup: closeAll(fd) };
  },
};

/** The fixed cases: which fd goes where. Ring 0 is RX, ring 1 TX. */
export const FD_CASES: { role: 'kick' | 'call'; ring: 0 | 1; fd: string }[] = [
  { role: 'kick', ring: 1, fd: 'pipe read end with 3 bytes' },
  { role: 'kick', ring: 1, fd: 'socketpair with 3 bytes' },
  { role: 'kick', ring: 0, fd: 'socket at EOF' },
  { role: 'kick', ring: 1, fd: '/dev/null' },
  { role: 'call', ring: 1, fd: 'pipe read end' },
  { role: 'call', ring: 0, fd: 'pipe without reader' },
  { role: 'call', ring: 0, fd: '/dev/full' },
  { role: 'call', ring: 0, fd: 'full blocking eventfd' },
  { role: 'call', ring: 1, fd: 'full blocking eventfd' },
  { role: 'call', ring: 0, fd: 'full blocking pipe' },
  { role: 'kick', ring: 1, fd: 'memfd' },
  { role: 'kick', ring: 0, fd: '/dev/zero' },
  { role: 'kick', ring: 1, fd: 'pipe whose writer closed' },
  { role: 'kick', ring: 1, fd: 'semaphore eventfd, always readable' },
];

const F_NEXT = 1;
const F_WRITE = 2;

/** Broken descriptor chains: what goes in the table, on which ring, and the reason the relay gives. */
export const CHAIN_CASES: { name: string; ring: 0 | 1; descs: { slot: number; addr: number; len: number; flags: number; next: number }[]; head: number }[] = [
  { name: 'loop', ring: 1, head: 200, descs: [{ slot: 200, addr: SCRATCH_AT, len: 100, flags: F_NEXT, next: 201 }, { slot: 201, addr: SCRATCH_AT, len: 100, flags: F_NEXT, next: 200 }] },
  { name: 'out-of-range address', ring: 1, head: 202, descs: [{ slot: 202, addr: MEM_SIZE + 0x1000, len: 100, flags: 0, next: 0 }] },
  { name: 'next out of the table', ring: 1, head: 203, descs: [{ slot: 203, addr: SCRATCH_AT, len: 100, flags: F_NEXT, next: QSIZE + 5 }] },
  { name: 'writable descriptor in a transmit chain', ring: 1, head: 204, descs: [{ slot: 204, addr: SCRATCH_AT, len: 100, flags: F_WRITE, next: 0 }] },
  { name: 'readable descriptor in a receive chain', ring: 0, head: 205, descs: [{ slot: 205, addr: SCRATCH_AT, len: 2048, flags: 0, next: 0 }] },
];


export const pick = <T>(r: () => number, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)];

/**
 * A virtio-net header as a guest that negotiated offloads may write it: half its bytes random,
 * the GSO type one of the known ones, ECN-marked, or anything; and a frame length to go with it.
 */
export function randomOffloadRequest(r: () => number, hdrLen: number): { header: Uint8Array; length: number } {
  const header = new Uint8Array(hdrLen);
  for (let i = 0; i < 10; i++) header[i] = r() < 0.5 ? Math.floor(r() * 256) : 0;
  header[1] = pick(r, [0, 1, 3, 4, 5, 0x80, 0x81, Math.floor(r() * 256)]);
  return { header, length: pick(r, [14, 60, 200, 1514, 3000, 9000, 16000]) };
}

/** What one random case did, printed with the seed when it fails. */
export interface RandomCaseLog {
  steps: string[];
}

/**
 * A random sequence of requests from a connected hostile VM: ring setup in any order with random
 * sizes, addresses and indexes, hostile or good fds as kick and call, enables, stops, feature
 * changes, unknown ids and truncated payloads. Stops at the first request the relay answers by
 * closing the connection. Resolves with the steps taken; rejects only when the relay does not
 * answer within `timeoutMs` (a frozen daemon).
 */
export async function randomMessages(vm: TestVm, path: string, reactor: Reactor, r: () => number, timeoutMs = 5000): Promise<RandomCaseLog> {
  const log: RandomCaseLog = { steps: [] };
  const made: HostileFd[] = [];
  const run = async () => {
    const packed = r() < 0.3;
    if (packed) log.steps.push('negotiates packed rings (over what a split driver writes)');
    await vm.connect(path, reactor, {}, { postRx: r() < 0.5, migration: r() < 0.5, packed });
    const fe = vm.frontend!;
    const count = 1 + Math.floor(r() * 12);
    for (let i = 0; i < count; i++) {
      const ring = r() < 0.8 ? Math.floor(r() * 2) : Math.floor(r() * 70);
      const choice = Math.floor(r() * 13);
      let step = '';
      let send: () => Promise<unknown>;
      switch (choice) {
        case 0:
        case 1: {
          const f = HOSTILE_FDS[pick(r, Object.keys(HOSTILE_FDS))]();
          made.push(f);
          const role = choice === 0 ? Request.SET_VRING_KICK : Request.SET_VRING_CALL;
          step = `${choice === 0 ? 'KICK' : 'CALL'} ring ${ring} fd ${f.kind}`;
          send = () => fe.request(role, encodeVringFile({ index: ring, noFd: false }), [f.fd]);
          break;
        }
        case 2: {
          const num = pick(r, [0, 1, 3, 256, 32768, 65536]);
          step = `NUM ring ${ring} ${num}`;
          send = () => fe.request(Request.SET_VRING_NUM, encodeVringState({ index: ring, num }));
          break;
        }
        case 3: {
          const base = vm.mem.address + Math.floor(r() * (MEM_SIZE + 0x10000));
          step = `ADDR ring ${ring} at +0x${(base - vm.mem.address).toString(16)}`;
          send = () =>
            fe.request(Request.SET_VRING_ADDR, encodeVringAddr({ index: ring, flags: 0, descUserAddr: base & ~15, availUserAddr: (base + 0x1000) & ~1, usedUserAddr: (base + 0x2000) & ~3, logGuestAddr: 0 }));
          break;
        }
        case 4:
          step = `ENABLE ring ${ring}`;
          send = () => fe.request(Request.SET_VRING_ENABLE, encodeVringState({ index: ring, num: Math.floor(r() * 3) }));
          break;
        case 5:
          step = `GET_VRING_BASE ring ${ring}`;
          send = () => fe.request(Request.GET_VRING_BASE, encodeVringState({ index: ring, num: 0 }));
          break;
        case 6: {
          const base = Math.floor(r() * 0x10000);
          step = `SET_VRING_BASE ring ${ring} ${base}`;
          send = () => fe.request(Request.SET_VRING_BASE, encodeVringState({ index: ring, num: base }));
          break;
        }
        case 7:
          step = 'SET_MEM_TABLE (same region)';
          send = () => fe.setMemTable([vm.region]);
          break;
        case 8: {
          // 2^26 is LOG_ALL: live migration turns it on and off under running rings.
          // 2^34 is RING_PACKED: the ring layout changes under rings set up for the other one.
          const features = pick(r, [0, 2 ** 32, 2 ** 32 + 2 ** 30, 2 ** 32 + 2 ** 30 + 2 ** 26, 2 ** 34 + 2 ** 32 + 2 ** 30, 2 ** 63, 2 ** 29]);
          step = `SET_FEATURES 0x${features.toString(16)}`;
          send = () => fe.request(Request.SET_FEATURES, encodeU64(features));
          break;
        }
        case 9: {
          const id = pick(r, [0, 41, 99, 1000]);
          step = `unknown request ${id}`;
          send = () => fe.request(id, new Uint8Array(Math.floor(r() * 40)));
          break;
        }
        case 10: {
          // Random bytes over part of either ring (descriptors, indexes, flags, event areas),
          // then a kick on both: the relay walks whatever it finds, split or packed.
          const at = pick(r, [RX_RING_AT, TX_RING_AT]) + Math.floor(r() * 0x3000);
          const length = 1 + Math.floor(r() * 256);
          for (let k = 0; k < length && at + k < MEM_SIZE; k++) vm.bytes[at + k] = Math.floor(r() * 256);
          step = `scribble ${length} random bytes at +0x${at.toString(16)} and kick`;
          send = async () => {
            eventfdWrite(vm.kickFds[0], 1);
            eventfdWrite(vm.kickFds[1], 1);
          };
          break;
        }
        case 11: {
          // A dirty log of any size and offset: half the time a log the relay can seal and map,
          // otherwise any kind of fd (a pipe, a device, a memfd that could shrink...).
          let f: HostileFd;
          if (r() < 0.5) {
            const fd = memfdCreate('hostile-log', { allowSealing: true });
            ftruncate(fd, 2 ** 20);
            f = { kind: 'sealable 1 MiB memfd', fd, acceptable: true, cleanup: closeAll(fd) };
          } else f = HOSTILE_FDS[pick(r, Object.keys(HOSTILE_FDS))]();
          made.push(f);
          const mmapSize = pick(r, [0, 1, 64, 4096, 2 ** 20, 2 ** 31, 2 ** 52]);
          const mmapOffset = pick(r, [0, 1, 4096, 2 ** 40]);
          step = `SET_LOG_BASE size ${mmapSize} offset ${mmapOffset} fd ${f.kind}`;
          send = () => fe.request(Request.SET_LOG_BASE, encodeLog({ mmapSize, mmapOffset }), [f.fd]);
          break;
        }
        case 12: {
          // Ring addresses with the log flag and a log address anywhere, even past all memory.
          const logGuestAddr = pick(r, [0, 0x2000, MEM_SIZE - 8, MEM_SIZE * 64, 2 ** 52]);
          const base = vm.mem.address + 0x1000 * Math.floor(r() * 16);
          step = `ADDR ring ${ring} with the log flag, log address 0x${logGuestAddr.toString(16)}`;
          send = () => fe.request(Request.SET_VRING_ADDR, encodeVringAddr({ index: ring, flags: 1, descUserAddr: base, availUserAddr: base + 0x1000, usedUserAddr: base + 0x2000, logGuestAddr }));
          break;
        }
        default: {
          step = `truncated SET_VRING_ADDR ring ${ring}`;
          send = () => fe.request(Request.SET_VRING_ADDR, new Uint8Array(Math.floor(r() * 40)));
          break;
        }
      }
      log.steps.push(step);
      try {
        await send();
      } catch (err) {
        // Refused, or the relay closed the connection: later requests then fail at once.
        log.steps.push(`  → ${(err as Error).message}`);
      }
      if (r() < 0.3) {
        try {
          vm.sendFrame(new Uint8Array(60).fill(0xff, 0, 6));
        } catch {
          // Our own driver's view may disagree with rings the soup rebased: not the relay's fault.
        }
      }
    }
  };
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      run(),
      new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`the relay did not answer within ${timeoutMs} ms`)), timeoutMs))),
    ]);
  } finally {
    clearTimeout(timer);
    await vm.disconnect();
    for (const f of made) f.cleanup();
  }
  return log;
}
