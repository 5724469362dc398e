// A VF→VM direction without a worker thread, for tests of what reaches a guest: one guest RX ring
// in the rig's memfd (test/support/tx-direction.ts opens it with the VF's packet ring), driven
// from the test as a guest driver does (mergeable single buffers, or chains of several
// descriptors as Linux posts without MRG_RXBUF), and a VfToVm direction reading the real ring.
import { GuestMemory } from '../../virtio/guest-memory.js';
import { SplitQueueDriver } from '../../virtio/split-queue-driver.js';
import { VfToVm } from '../../relay/datapath/vf-to-vm.js';
import { Counter, counterBase, createCounterBuffer, Dir } from '../../relay/datapath/counters.js';
import type { DirectionSpec, PortSpec } from '../../relay/datapath/worker-protocol.js';
import { resumeStateFromGuest } from '../../relay/control/resume-state.js';
import type { TxRig } from './tx-direction.js';

const QSIZE = 256;
/** Virtio-net header with num_buffers (VERSION_1 guests). */
export const RX_HDR = 12;
const BUFFERS_AT = 0x10000;
let memoryIds = 9500;

export interface ReceivedFrame {
  header: Uint8Array;
  frame: Uint8Array;
  /** The head of the (first) chain it came in. */
  head: number;
}

export interface RxDirection {
  d: VfToVm;
  /** Posts `count` single-descriptor buffers of `length` bytes (a guest with MRG_RXBUF). */
  postMergeable(count: number, length: number): void;
  /** Posts `count` chains of descriptors of `lengths` bytes each (a guest without MRG_RXBUF). */
  postChains(count: number, lengths: number[]): void;
  /** Posts one chain of buffers where the caller says (a hostile guest's addresses). */
  postAt(parts: { gpa: number; len: number }[]): void;
  /** Heads of the chains posted so far, in posting (avail) order. */
  postedHeads: number[];
  /**
   * Replaces `d` by a new direction over the same ring and port, as a worker that restarts after
   * its thread ended does: resuming from the used index in guest memory (resumeStateFromGuest).
   */
  restartFromGuest(): void;
  /** Frames the relay completed since the last call, the virtio-net header apart. */
  received(): ReceivedFrame[];
  counter(c: Counter): number;
}

/** A fresh RX ring and a VfToVm direction for relay `relay` over the rig. */
export function rxDirection(rig: TxRig, relay: number, guest: { rxOffloads?: number; mergeable: boolean }, port?: PortSpec): RxDirection {
  const { mem, handle, vf } = rig;
  const size = mem.length;
  const bytes = new Uint8Array(mem.buffer);
  const memory = new GuestMemory([{ guestPhysAddr: 0, size, userAddr: mem.address, bytes }]);
  const l = SplitQueueDriver.layout(0, QSIZE);
  bytes.fill(0, 0, BUFFERS_AT);
  const driver = new SplitQueueDriver({ memory, size: QSIZE, descGpa: l.descGpa, availGpa: l.availGpa, usedGpa: l.usedGpa, name: 'rx' });
  const spec: DirectionSpec = {
    relay,
    dir: 'vf2vm',
    vmConnected: true,
    port: port ?? { mode: 'single', active: 0, members: [{ netdev: vf, handle, up: true }] },
    guest: {
      memoryId: memoryIds++,
      regions: [{ guestPhysAddr: 0, userAddr: mem.address, size, hostAddress: mem.address }],
      rxOffloads: guest.rxOffloads ?? 0,
      eventIdx: false,
      indirect: false,
      mergeable: guest.mergeable,
      hdrLen: RX_HDR,
      queues: [{ index: 0, size: QSIZE, desc: { region: 0, offset: l.descGpa }, avail: { region: 0, offset: l.availGpa }, used: { region: 0, offset: l.usedGpa }, callFd: -1, kickFd: -1, enabled: true }],
    },
  };
  const counters = new Float64Array(createCounterBuffer());
  const onRingError = (q: number, m: string) => {
    throw new Error(`ring ${q} stopped: ${m}`);
  };
  const d = new VfToVm(spec, null, counters, onRingError);
  const base = counterBase(relay, Dir.VfToVm);
  /** The buffers of each posted chain, by head: where the device wrote. */
  const chains = new Map<number, Array<{ gpa: number; len: number }>>();
  let next = BUFFERS_AT;
  const take = (len: number) => {
    if (next + len > size) next = BUFFERS_AT;
    const gpa = next;
    next += Math.ceil(len / 64) * 64;
    return gpa;
  };
  const postedHeads: number[] = [];
  const postParts = (parts: { gpa: number; len: number; writable: boolean }[]) => {
    const head = driver.addBuffers(parts);
    chains.set(head, parts);
    postedHeads.push(head);
  };
  const post = (lengths: number[]) => postParts(lengths.map((len) => ({ gpa: take(len), len, writable: true })));
  /** The `len` bytes the device wrote into the chain at `head`. */
  const written = (head: number, len: number): Uint8Array => {
    const out = new Uint8Array(len);
    let at = 0;
    for (const p of chains.get(head)!) {
      const n = Math.min(p.len, len - at);
      out.set(bytes.subarray(p.gpa, p.gpa + n), at);
      at += n;
    }
    chains.delete(head);
    return out;
  };
  const api: RxDirection = {
    d,
    restartFromGuest: () => {
      api.d = new VfToVm(spec, resumeStateFromGuest(spec), counters, onRingError);
    },
    postMergeable: (count, length) => {
      for (let i = 0; i < count; i++) post([length]);
      driver.publish();
    },
    postChains: (count, lengths) => {
      for (let i = 0; i < count; i++) post(lengths);
      driver.publish();
    },
    postAt: (parts) => {
      postParts(parts.map((p) => ({ ...p, writable: true })));
      driver.publish();
    },
    postedHeads,
    received: () => {
      const out: ReceivedFrame[] = [];
      for (let e = driver.popUsed(); e !== null; e = driver.popUsed()) {
        const first = written(e.id, e.len);
        const header = first.slice(0, RX_HDR);
        const pieces = [first.subarray(RX_HDR)];
        // With MRG_RXBUF the frame goes on in num_buffers − 1 more used entries.
        const count = guest.mergeable ? header[10] | (header[11] << 8) : 1;
        for (let k = 1; k < count; k++) {
          const more = driver.popUsed();
          if (more === null) throw new Error(`frame announced ${count} buffers, the used ring had ${k}`);
          pieces.push(written(more.id, more.len));
        }
        out.push({ header, frame: new Uint8Array(Buffer.concat(pieces)), head: e.id });
      }
      return out;
    },
    counter: (c) => counters[base + c],
  };
  return api;
}
