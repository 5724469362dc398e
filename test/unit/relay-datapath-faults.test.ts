// The data path's answer to faults, without a worker thread: a VM→VF direction over two guest TX
// rings in real shared memory. A call fd that fails, a kick fd the worker found failing, and
// broken chains must each affect only their ring; the other ring keeps being served.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { eventfd, eventfdRead } from '../../sys/eventfd.js';
import { close, pipe } from '../../sys/fd.js';
import { MAP_SHARED, PROT_READ, PROT_WRITE, ftruncate, memfdCreate, mmap, munmap, type Mapping } from '../../sys/memory.js';
import { GuestMemory } from '../../virtio/guest-memory.js';
import { SplitQueueDriver } from '../../virtio/split-queue-driver.js';
import { VmToVf } from '../../relay/datapath/vm-to-vf.js';
import { ChainWarnings, setChainWarnings } from '../../relay/datapath/chain-warnings.js';
import { Counter, counterBase, createCounterBuffer, Dir } from '../../relay/datapath/counters.js';
import type { DirectionSpec, QueueSpec } from '../../relay/datapath/worker-protocol.js';

const SIZE = 1 << 20;
const QSIZE = 16;
const RING_AT = [0x0, 0x4000];
const BUFFERS_AT = 0x10000;

let memFd: number;
let mem: Mapping;
let memory: GuestMemory;
let drivers: SplitQueueDriver[];
let fds: number[];
let memoryIds = 1000;

beforeEach(() => {
  memFd = memfdCreate('datapath-faults');
  ftruncate(memFd, SIZE);
  mem = mmap({ length: SIZE, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED, fd: memFd });
  memory = new GuestMemory([{ guestPhysAddr: 0, size: SIZE, userAddr: mem.address, bytes: new Uint8Array(mem.buffer) }]);
  drivers = RING_AT.map((at, i) => {
    const l = SplitQueueDriver.layout(at, QSIZE);
    return new SplitQueueDriver({ memory, size: QSIZE, descGpa: l.descGpa, availGpa: l.availGpa, usedGpa: l.usedGpa, name: `tx${i}` });
  });
  fds = [];
});

afterEach(() => {
  setChainWarnings(null);
  for (const fd of fds) {
    try {
      close(fd);
    } catch {
      /* closed by the test */
    }
  }
  munmap(mem);
  close(memFd);
});

function spec(callFds: number[], kickFds: number[], dirty?: { log: Mapping; usedLogAddr: number }): DirectionSpec {
  const queues: QueueSpec[] = drivers.map((d, i) => ({
    index: 2 * i + 1,
    size: QSIZE,
    desc: { region: 0, offset: d.layout.descGpa },
    avail: { region: 0, offset: d.layout.availGpa },
    used: { region: 0, offset: d.layout.usedGpa },
    callFd: callFds[i],
    kickFd: kickFds[i],
    enabled: true,
    usedLogAddr: dirty ? dirty.usedLogAddr : null,
  }));
  return {
    relay: 7,
    dir: 'vm2vf',
    vmConnected: true,
    port: null,
    guest: {
      memoryId: memoryIds++,
      regions: [{ guestPhysAddr: 0, userAddr: mem.address, size: SIZE, hostAddress: mem.address }],
      dirtyLog: dirty ? { hostAddress: dirty.log.address, size: dirty.log.length } : null,
      eventIdx: false,
      indirect: false,
      mergeable: false,
      hdrLen: 12,
      queues,
    },
  };
}

/** Posts one 60-byte frame (after a 12-byte header) on ring `i`. */
function post(i: number): void {
  drivers[i].addBuffers([{ gpa: BUFFERS_AT + i * 0x1000, len: 72, writable: false }]);
  drivers[i].publish();
}

const usedIdx = (i: number) => Atomics.load(new Uint16Array(mem.buffer, drivers[i].layout.usedGpa, 2), 1);

describe('VmToVf faults', () => {
  it('stops only the ring whose call fd fails (a pipe whose reader is gone)', () => {
    const [r, w] = pipe();
    close(r);
    const good = eventfd();
    fds.push(w, good);
    const counters = new Float64Array(createCounterBuffer());
    const errors: [number, string][] = [];
    const d = new VmToVf(spec([w, good], [-1, -1]), null, counters, (q, m) => errors.push([q, m]));
    post(0);
    post(1);
    d.burst();
    d.burst();
    expect(errors).toEqual([[1, expect.stringMatching(/vring 1: call fd \d+ failed: .*EPIPE/)]]);
    expect(d.queues.map((q) => q.index)).toEqual([3]);
    // Both chains went back to the guest; only the healthy ring was signalled and goes on.
    expect([usedIdx(0), usedIdx(1)]).toEqual([1, 1]);
    expect(eventfdRead(good)).toBe(1);
    post(1);
    d.burst();
    expect(usedIdx(1)).toBe(2);
    expect(counters[counterBase(7, Dir.VmToVf) + Counter.RingsStopped]).toBe(1);
    d.release();
  });

  it('stops the ring whose kick fd the worker found failing, and no other', () => {
    const kicks = [eventfd(), eventfd()];
    fds.push(...kicks);
    const counters = new Float64Array(createCounterBuffer());
    const errors: number[] = [];
    const d = new VmToVf(spec([-1, -1], kicks), null, counters, (q) => errors.push(q));
    expect(d.isKickFd(kicks[1])).toBe(true);
    expect(d.kickFault(kicks[1], 'reported POLLHUP')).toBe(true);
    expect(d.kickFault(kicks[1], 'again')).toBe(false);
    expect(errors).toEqual([3]);
    expect(d.wakeFds()).toEqual([kicks[0]]);
    d.release();
  });

  it('drops a broken chain, counts it, warns once per ring, and keeps the ring', () => {
    const counters = new Float64Array(createCounterBuffer());
    const warned: [number, number, string, number][] = [];
    setChainWarnings(new ChainWarnings((...a) => warned.push(a)));
    const errors: number[] = [];
    const d = new VmToVf(spec([-1, -1], [-1, -1]), null, counters, (q) => errors.push(q));
    // A device-writable descriptor in a transmit chain, twice, then a good chain.
    for (let k = 0; k < 2; k++) drivers[0].addBuffers([{ gpa: BUFFERS_AT, len: 72, writable: true }]);
    drivers[0].publish();
    d.burst();
    post(0);
    d.burst();
    const base = counterBase(7, Dir.VmToVf);
    expect(counters[base + Counter.BadChains]).toBe(2);
    expect(counters[base + Counter.RingsStopped]).toBe(0);
    expect(errors).toEqual([]);
    expect(usedIdx(0)).toBe(3);
    expect(warned).toEqual([[7, 1, expect.stringContaining('device-writable descriptors in a transmit queue'), 0]]);
    d.release();
  });
});

describe('dirty logging (live migration)', () => {
  const dirtyPages = (log: Mapping) => {
    const bytes = new Uint8Array(log.buffer);
    const pages: number[] = [];
    for (let p = 0; p < bytes.length * 8; p++) if ((bytes[p >> 3]! >> (p & 7)) & 1) pages.push(p);
    return pages;
  };

  it('marks the used ring at the front-end\'s log address, never the transmit buffers it only read', () => {
    const logFd = memfdCreate('dirty-log');
    ftruncate(logFd, 4096);
    const log = mmap({ length: 4096, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED, fd: logFd });
    try {
      // The front-end names a log address other than the ring's own, so the test can tell them apart.
      const usedLogAddr = 0x80000;
      const counters = new Float64Array(createCounterBuffer());
      const d = new VmToVf(spec([-1, -1], [-1, -1], { log, usedLogAddr }), null, counters, () => undefined);
      post(0);
      d.burst();
      expect(usedIdx(0)).toBe(1);
      expect(dirtyPages(log)).toEqual([usedLogAddr / 4096]);
      d.release();

      // Without a log the same work marks nothing.
      new Uint8Array(log.buffer).fill(0);
      const quiet = new VmToVf(spec([-1, -1], [-1, -1]), null, counters, () => undefined);
      post(0);
      quiet.burst();
      expect(usedIdx(0)).toBe(2);
      expect(dirtyPages(log)).toEqual([]);
      quiet.release();
    } finally {
      munmap(log);
      close(logFd);
    }
  });
});
