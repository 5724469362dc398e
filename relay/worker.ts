// A forwarding worker thread: pinned to one CPU, it runs the relay directions the main thread
// assigns to it. Messages are handled between bursts, so a detach always happens at a burst
// boundary and the ring state it returns is exact. In adaptive mode the worker sleeps in poll()
// on the guests' kick eventfds, the VF packet sockets and its wake eventfd when nothing moves.
import { parentPort, workerData } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import { setAffinity, gettid } from '../sys/affinity.js';
import { eventfdRead } from '../sys/eventfd.js';
import { PollSet, POLLIN } from '../sys/poll.js';
import { Counter, WORKER_SLOTS } from './counters.js';
import { VfToVm, VmToVf } from './datapath.js';
import type { DirName, FromWorker, ToWorker, WorkerInit } from './worker-protocol.js';

const init = workerData as WorkerInit;
const port = parentPort!;
const counters = new Float64Array(init.counters);
const load = new Float64Array(init.workerLoad);
const loadBase = init.slot * WORKER_SLOTS;

type Direction = VfToVm | VmToVf;
const directions = new Map<string, Direction>();
let list: Direction[] = [];
let running = true;

const send = (msg: FromWorker) => port.postMessage(msg);
const key = (relay: number, dir: DirName) => `${relay}/${dir}`;

/** Empty polls in a row (about 0.1-0.2 ms, no clock reads) before an adaptive worker considers sleeping. */
const IDLE_POLLS_BEFORE_SLEEP = 4096;
/** Longest sleep; bounded so the thread notices messages even if a wake write were missed. */
const SLEEP_MS = 200;
/** Longest stretch of polling before the event loop gets a turn for messages. */
const SLICE_MS = 2;
/** How often the kernel's VF ring drop counts are folded into the relay counters (a system call per VF). */
const KERNEL_STATS_MS = 100;
let kernelStatsDue = 0;

function refreshList(): void {
  list = [...directions.values()];
}

function reportRingError(relay: number, dir: DirName) {
  return (queue: number, message: string) => send({ type: 'ring-error', relay, dir, queue, message });
}

function handle(msg: ToWorker): void {
  switch (msg.type) {
    case 'attach': {
      const { spec, state } = msg;
      const k = key(spec.relay, spec.dir);
      try {
        directions.get(k)?.release();
        const d =
          spec.dir === 'vm2vf'
            ? new VmToVf(spec, state, counters, reportRingError(spec.relay, spec.dir))
            : new VfToVm(spec, state, counters, reportRingError(spec.relay, spec.dir));
        directions.set(k, d);
        refreshList();
        send({ type: 'done', reqId: msg.reqId });
      } catch (err) {
        send({ type: 'done', reqId: msg.reqId, error: `relay ${spec.relay} ${spec.dir}: ${(err as Error).message}` });
      }
      break;
    }
    case 'detach': {
      const k = key(msg.relay, msg.dir);
      const d = directions.get(k);
      directions.delete(k);
      refreshList();
      if (!d) {
        send({ type: 'done', reqId: msg.reqId, state: null });
        break;
      }
      const state = d.exportState();
      d.release();
      send({ type: 'done', reqId: msg.reqId, state });
      break;
    }
    case 'set-active-member': {
      const d = directions.get(key(msg.relay, msg.dir));
      d?.port?.setActive(msg.active, msg.up);
      break;
    }
    case 'stop':
      running = false;
      for (const d of directions.values()) d.release();
      directions.clear();
      refreshList();
      send({ type: 'done', reqId: msg.reqId });
      break;
  }
}

let idlePolls = 0;
let wallMark = performance.now();

/** Adds elapsed wall time to the worker and to every direction it serves (the load denominator). */
function accountWall(now: number): void {
  const dt = (now - wallMark) * 1e6;
  wallMark = now;
  load[loadBase + 1] += dt;
  for (const d of list) counters[d.base + Counter.PollNs] += dt;
}

function sleepUntilWork(): void {
  let work = false;
  for (const d of list) if (d.armForSleep()) work = true;
  if (!work) {
    const fds: number[] = [init.wakeFd];
    for (const d of list) for (const fd of d.wakeFds()) fds.push(fd);
    const set = new PollSet(fds.map((fd) => ({ fd, events: POLLIN })));
    set.wait(SLEEP_MS);
    // Kicks are edge information only: drain them so the next sleep does not return at once.
    for (let i = 1; i < fds.length; i++) if (set.revents(i) & POLLIN) eventfdRead(fds[i]);
  }
  for (const d of list) d.disarm();
  idlePolls = 0;
}

function slice(): void {
  if (!running) return;
  const sliceEnd = performance.now() + SLICE_MS;
  for (let iteration = 1; ; iteration++) {
    let moved = 0;
    for (let i = 0; i < list.length; i++) {
      const d = list[i];
      // The clock is read only around bursts that have work: on this kind of host a clock read
      // costs as much as an empty poll, and spinning on it halved the forwarding rate.
      if (!d.hasWork()) continue;
      const t0 = performance.now();
      const n = d.burst();
      if (n > 0) {
        const busy = (performance.now() - t0) * 1e6;
        counters[d.base + Counter.BusyNs] += busy;
        load[loadBase] += busy;
        moved += n;
      }
    }
    if (moved > 0) idlePolls = 0;
    else if (++idlePolls >= IDLE_POLLS_BEFORE_SLEEP && (init.pollMode === 'adaptive' || list.length === 0)) {
      accountWall(performance.now());
      sleepUntilWork();
      break; // give messages a turn: a wake usually means one is waiting
    }
    if ((iteration & 63) === 0 && performance.now() >= sliceEnd) break;
  }
  const now = performance.now();
  accountWall(now);
  if (now >= kernelStatsDue) {
    kernelStatsDue = now + KERNEL_STATS_MS;
    for (const d of list) if (d instanceof VfToVm) d.foldKernelDrops();
  }
  // The wake eventfd may have been written while we were polling; clear it so poll() can block next time.
  eventfdRead(init.wakeFd);
  setImmediate(slice);
}

port.on('message', (msg: ToWorker) => handle(msg));
setAffinity([init.cpu]);
send({ type: 'ready', cpu: init.cpu, tid: gettid() });
setImmediate(slice);
