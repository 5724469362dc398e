// A forwarding worker thread: pinned to one CPU, it runs the relay directions the main thread
// assigns to it. Messages are handled between bursts, so a detach always happens at a burst
// boundary and the ring state it returns is exact. In adaptive mode the worker sleeps in poll()
// on the guests' kick eventfds, the VF packet sockets and its wake eventfd when nothing moves.
// Faults stay where they happen: a failing kick or call fd or a broken ring stops that ring, an
// unexpected error stops that direction, and the other relays on this worker keep forwarding.
import { parentPort, workerData } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import { getHeapStatistics } from 'node:v8';
import { setAffinity, setTimerSlack, gettid } from '../../sys/affinity.js';
import { pipe, readInto } from '../../sys/fd.js';
import { NOTIFIER_STUCK, eventfdDrain, eventfdRead } from '../../sys/eventfd.js';
import { PollSet, POLLERR, POLLHUP, POLLIN, POLLNVAL } from '../../sys/poll.js';
import { ChainWarnings, setChainWarnings } from './chain-warnings.js';
import { setCallGuard } from './call-guard.js';
import { Counter, WORKER_SLOTS } from './counters.js';
import { VmToVf } from './vm-to-vf.js';
import { VfToVm } from './vf-to-vm.js';
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

/** Empty polls in a row (about 0.1-0.2 ms, no clock reads) before a worker with nothing to serve sleeps. */
const IDLE_POLLS_BEFORE_SLEEP = 4096;
/** Longest sleep; bounded so the thread notices messages even if a wake write were missed. */
const SLEEP_MS = 200;
/** Longest stretch of polling before the event loop gets a turn for messages. */
const SLICE_MS = 2;
/** Passes that moved nothing between clock reads (a power of two); a few tens of µs of polls. */
const IDLE_POLLS_PER_CLOCK = 1024;
/**
 * Adaptive mode below saturation: a pass that moved fewer frames than this is followed by a nap
 * of NAP_MS instead of the next pass, so frames gather into bursts instead of being met by a
 * worker that spins between them. At rates where passes fill their bursts it never naps. A nap
 * costs a frame at most its length in latency (about 70 µs with the timer slack set to 1 µs);
 * the VF and guest rings hold far more than a nap's worth of frames. After IDLE_NAPS_BEFORE_SLEEP
 * naps in a row with nothing moved, the worker sleeps in poll() until a kick or a frame wakes it.
 */
const NAP_BELOW_FRAMES = 16;
const NAP_MS = 0.05;
const IDLE_NAPS_BEFORE_SLEEP = 32;
const napWord = new Int32Array(new SharedArrayBuffer(4));
const adaptive = init.pollMode === 'adaptive';
/** How often the kernel's VF ring drop counts are folded into the relay counters (a system call per VF). */
const KERNEL_STATS_MS = 100;
let kernelStatsDue = 0;

function refreshList(): void {
  list = [...directions.values()];
}

setCallGuard(init.callGuard);

setChainWarnings(
  new ChainWarnings((relay, vring, reason, unreported) =>
    send({
      type: 'log',
      level: 'warn',
      msg: `vring ${vring}: descriptor chain dropped: ${reason}${unreported > 0 ? ` (${unreported} more on this ring since the last warning)` : ''}`,
      data: { relay, vring, unreported },
    }),
  ),
);

/**
 * An unexpected error in one direction (not a guest ring fault, which the data path handles per
 * ring): that direction stops, its rings count as stopped, and the main thread logs it. The
 * other directions on this worker never see it.
 */
function failDirection(d: Direction, err: unknown): void {
  let k: string | undefined;
  for (const [key, value] of directions) if (value === d) k = key;
  if (k === undefined) return;
  directions.delete(k);
  refreshList();
  counters[d.base + Counter.RingsStopped] += Math.max(1, d.queues.length);
  try {
    d.release();
  } catch {
    /* the direction is gone either way */
  }
  const dir: DirName = d instanceof VmToVf ? 'vm2vf' : 'vf2vm';
  const message = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
  send({ type: 'direction-failed', relay: d.relay, dir, message });
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
    case 'crash':
      // Test hook (VIO4WD_TEST_HOOKS only): end this thread the way an unexpected error outside
      // any direction would, or leave it stuck in the kernel, so the pool's supervision and
      // watchdog can be tested.
      if (!init.testHooks) break;
      if (msg.how === 'block') {
        const [r] = pipe({ nonblock: false });
        readInto(r, new Uint8Array(1)); // nobody ever writes the pipe
      }
      setImmediate(() => {
        throw new Error('worker ended by the test hook');
      });
      break;
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

const FAULT_EVENTS = POLLERR | POLLHUP | POLLNVAL;

/**
 * Kick fds still readable after a full drain, counted over idle sleeps in a row with no packet
 * moved in between. One such drain proves nothing: a busy guest kicks after every burst it adds,
 * faster than a few reads. A kick fd that wakes the worker at every sleep while no packet ever
 * moves is broken (a semaphore eventfd a kernel did not let us spot at SET_VRING_KICK): its ring
 * stops after STUCK_SLEEPS of those, a few tens of milliseconds.
 */
const stuckStreaks = new Map<number, number>();
const STUCK_SLEEPS = 64;

function sleepUntilWork(): void {
  let work = false;
  for (const d of list) {
    try {
      if (d.armForSleep()) work = true;
    } catch (err) {
      failDirection(d, err);
    }
  }
  if (!work) {
    const fds: number[] = [init.wakeFd];
    const owners: (Direction | null)[] = [null];
    for (const d of list) {
      for (const fd of d.wakeFds()) {
        fds.push(fd);
        owners.push(d.isKickFd(fd) ? d : null);
      }
    }
    const set = new PollSet(fds.map((fd) => ({ fd, events: POLLIN })));
    set.wait(SLEEP_MS);
    // Kicks are edge information only: drain them so the next sleep does not return at once. A
    // kick fd that reports an error or a hang-up, fails a read, or stays readable would wake
    // this worker forever: its ring stops instead.
    for (let i = 1; i < fds.length; i++) {
      const owner = owners[i];
      const revents = set.revents(i);
      if (owner === null || revents === 0) continue;
      let fault = '';
      if (revents & FAULT_EVENTS) fault = `reported ${describeRevents(revents)}`;
      else {
        try {
          if (eventfdDrain(fds[i]) !== NOTIFIER_STUCK) stuckStreaks.delete(fds[i]);
          else {
            const streak = (stuckStreaks.get(fds[i]) ?? 0) + 1;
            stuckStreaks.set(fds[i], streak);
            if (streak >= STUCK_SLEEPS) {
              stuckStreaks.delete(fds[i]);
              fault = `stays readable after every read, at ${streak} idle sleeps in a row with no packet moved`;
            }
          }
        } catch (err) {
          fault = `failed: ${(err as Error).message}`;
        }
      }
      if (fault !== '') owner.kickFault(fds[i], fault);
    }
  }
  for (const d of list) d.disarm();
  idlePolls = 0;
}

function describeRevents(revents: number): string {
  const names: string[] = [];
  if (revents & POLLERR) names.push('POLLERR');
  if (revents & POLLHUP) names.push('POLLHUP');
  if (revents & POLLNVAL) names.push('POLLNVAL');
  return names.join('|');
}

function slice(): void {
  if (!running) return;
  // The clock is read once per burst that moved frames, and every IDLE_POLLS_PER_CLOCK passes
  // that moved none. A read costs as much as an empty poll on this kind of host (spinning on it
  // halved the forwarding rate), and Node 20's performance.now() allocates about 50 bytes: read
  // around every burst and every 64 idle passes, it filled the worker's young generation a few
  // times a second, and each scavenge stopped the worker for 0.3–0.4 ms.
  let clock = performance.now();
  const sliceEnd = clock + SLICE_MS;
  // `clock` is the end of the last burst that moved frames, and no pass since moved none: the
  // next burst starts from it (the polls in between are charged to that burst, a few ns).
  let clockFresh = true;
  for (let iteration = 1; ; iteration++) {
    let moved = 0;
    for (let i = 0; i < list.length; i++) {
      const d = list[i];
      let n = 0;
      try {
        if (!d.hasWork()) continue;
        if (!clockFresh) clock = performance.now();
        n = d.burst();
      } catch (err) {
        failDirection(d, err);
        continue;
      }
      if (n > 0) {
        const end = performance.now();
        const busy = (end - clock) * 1e6;
        clock = end;
        clockFresh = true;
        counters[d.base + Counter.BusyNs] += busy;
        load[loadBase] += busy;
        moved += n;
      }
    }
    if (moved > 0) {
      idlePolls = 0;
      if (stuckStreaks.size > 0) stuckStreaks.clear();
    } else {
      idlePolls++;
      clockFresh = false;
    }
    if (adaptive ? moved === 0 && idlePolls >= IDLE_NAPS_BEFORE_SLEEP : list.length === 0 && idlePolls >= IDLE_POLLS_BEFORE_SLEEP) {
      accountWall(performance.now());
      sleepUntilWork();
      break; // give messages a turn: a wake usually means one is waiting
    }
    if (adaptive && moved < NAP_BELOW_FRAMES) {
      // Nothing ever notifies napWord: this is a timed sleep of the thread. The slice ends with
      // it, so messages (reconfigurations, handovers) wait no longer than a nap.
      Atomics.wait(napWord, 0, 0, NAP_MS);
      break;
    }
    if (clockFresh ? clock >= sliceEnd : (iteration & (IDLE_POLLS_PER_CLOCK - 1)) === 0 && performance.now() >= sliceEnd) break;
  }
  const now = performance.now();
  accountWall(now);
  if (now >= kernelStatsDue) {
    kernelStatsDue = now + KERNEL_STATS_MS;
    load[loadBase + 2] = getHeapStatistics().used_heap_size;
    for (const d of list) if (d instanceof VfToVm) d.foldKernelDrops();
  }
  // The wake eventfd may have been written while we were polling; clear it so poll() can block next time.
  eventfdRead(init.wakeFd);
  setImmediate(slice);
}

port.on('message', (msg: ToWorker) => handle(msg));
setAffinity([init.cpu]);
if (adaptive) setTimerSlack(1000);
send({ type: 'ready', cpu: init.cpu, tid: gettid() });
setImmediate(slice);
