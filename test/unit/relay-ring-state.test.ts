// The ring state a direction hands back at detach is what GET_VRING_BASE answers and what a VM's
// next start (or a migration stream) resumes from. A queue the worker dropped after a ring error
// must still report where it stopped: the older state the relay saved at attach would make the VM
// replay chains already completed.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MAP_PRIVATE, PROT_READ, PROT_WRITE, mmap, munmap, type Mapping } from '../../sys/memory.js';
import { GuestMemory } from '../../virtio/guest-memory.js';
import { SplitQueueDriver } from '../../virtio/split-queue-driver.js';
import { createCounterBuffer } from '../../relay/datapath/counters.js';
import { VmToVf } from '../../relay/datapath/vm-to-vf.js';
import type { DirectionSpec, DirectionState } from '../../relay/datapath/worker-protocol.js';

const MEM = 1 << 20;
const QSIZE = 64;
const RING_GPA = 0x1000;
const BUFFERS_GPA = 0x8_0000;

let mem: Mapping;
let driver: SplitQueueDriver;
let availIdx: Uint16Array;

function spec(): DirectionSpec {
  const l = SplitQueueDriver.layout(RING_GPA, QSIZE);
  return {
    relay: 3,
    dir: 'vm2vf',
    vmConnected: true,
    port: null,
    guest: {
      memoryId: 1000 + Math.floor(Math.random() * 1e6),
      regions: [{ guestPhysAddr: 0, userAddr: mem.address, size: MEM, hostAddress: mem.address }],
      eventIdx: false,
      indirect: false,
      mergeable: false,
      hdrLen: 12,
      queues: [
        {
          index: 1,
          size: QSIZE,
          desc: { region: 0, offset: l.descGpa },
          avail: { region: 0, offset: l.availGpa },
          used: { region: 0, offset: l.usedGpa },
          callFd: -1,
          kickFd: -1,
          enabled: true,
        },
      ],
    },
  };
}

/** Queues `n` 64-byte frames on the TX ring. */
function sendFrames(n: number): void {
  for (let i = 0; i < n; i++) driver.addBuffers([{ gpa: BUFFERS_GPA + (i % QSIZE) * 128, len: 12 + 60, writable: false }]);
  driver.publish();
}

function collectUsed(): number {
  let n = 0;
  while (driver.popUsed() !== null) n++;
  return n;
}

beforeEach(() => {
  mem = mmap({ length: MEM, prot: PROT_READ | PROT_WRITE, flags: MAP_PRIVATE });
  const memory = new GuestMemory([{ guestPhysAddr: 0, size: MEM, userAddr: mem.address, bytes: new Uint8Array(mem.buffer) }]);
  const l = SplitQueueDriver.layout(RING_GPA, QSIZE);
  driver = new SplitQueueDriver({ memory, size: QSIZE, descGpa: l.descGpa, availGpa: l.availGpa, usedGpa: l.usedGpa });
  availIdx = new Uint16Array(mem.buffer, l.availGpa, 2);
});

afterEach(() => munmap(mem));

describe('ring state exported at detach', () => {
  it('reports where a healthy queue stopped', () => {
    const errors: string[] = [];
    const d = new VmToVf(spec(), null, new Float64Array(createCounterBuffer()), (_q, m) => errors.push(m));
    sendFrames(5);
    expect(d.burst()).toBe(5);
    const state = d.exportState();
    d.release();
    expect(errors).toEqual([]);
    expect(state.queues[1]).toMatchObject({ lastAvail: 5, lastUsed: 5 });
  });

  it('still reports where a queue dropped after a ring error stopped, with its chains returned', () => {
    const errors: string[] = [];
    const s = spec();
    const resume: DirectionState = { queues: { 1: { lastAvail: 0, lastUsed: 0, signalledUsed: 0, signalledValid: false } }, rrQueue: 0, rrMember: 0 };
    const d = new VmToVf(s, resume, new Float64Array(createCounterBuffer()), (_q, m) => errors.push(m));
    sendFrames(7);
    expect(d.burst()).toBe(7);
    // avail.idx jumps more than a ring ahead: the worker drops the queue.
    availIdx[1] = (availIdx[1] + 1000) & 0xffff;
    expect(d.burst()).toBe(0);
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatch(/avail\.idx/);
    const state = d.exportState();
    d.release();
    expect(state.queues[1]).toMatchObject({ lastAvail: 7, lastUsed: 7 });
    expect(collectUsed()).toBe(7);
  });

  it('hands back the state it was given for a queue it could not build', () => {
    const errors: string[] = [];
    const s = spec();
    s.guest!.queues[0].avail = { region: 5, offset: 0 }; // no such region
    const resume: DirectionState = { queues: { 1: { lastAvail: 4242, lastUsed: 4242, signalledUsed: 4242, signalledValid: true } }, rrQueue: 0, rrMember: 0 };
    const d = new VmToVf(s, resume, new Float64Array(createCounterBuffer()), (_q, m) => errors.push(m));
    const state = d.exportState();
    d.release();
    expect(errors).toHaveLength(1);
    expect(state.queues[1]).toMatchObject({ lastAvail: 4242, lastUsed: 4242 });
  });
});
