// The forwarding workers as the main thread sees them: one pinned worker thread per CPU of the
// mask, the assignment of relay directions to workers, and the handover that moves a direction
// from one worker to another at a burst boundary with its ring state. The pool also supervises
// the threads: one that ends unexpectedly is started again on its CPU with its directions, which
// resume from the used indexes in guest memory; a worker that crashes in a loop or stops making
// progress ends the daemon with status 1 instead (systemd restarts it), never a silent stall.
import { Worker } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { eventfd, eventfdWrite } from '../../sys/eventfd.js';
import { close } from '../../sys/fd.js';
import { createWorkerLoadBuffer, WORKER_SLOTS } from '../datapath/counters.js';
import { resumeStateFromGuest } from './resume-state.js';
import { CallGuardWatch, createCallGuardBuffer } from '../datapath/call-guard.js';
import { eventfdReadNoWait } from '../../sys/eventfd.js';
import { readFileSync } from 'node:fs';
import { getAffinity, setAffinity, threadIds } from '../../sys/affinity.js';
import type { DirName, DirectionSpec, DirectionState, FromWorker, ToWorker, WorkerInit } from '../datapath/worker-protocol.js';

interface WorkerHandle {
  cpu: number;
  slot: number;
  thread: Worker;
  wakeFd: number;
  pending: Map<number, { resolve: (v: DirectionState | null | undefined) => void; reject: (e: Error) => void }>;
  /** Directions this worker serves, keyed `relay/dir`, with a weight for least-busy placement. */
  directions: Map<string, number>;
  /** The spec each of those directions was attached with, to re-attach them after a restart. */
  specs: Map<string, DirectionSpec>;
  exited: boolean;
  /** Set while the thread is being started again; requests wait for it. */
  restarting: Promise<void> | null;
  /** Times the thread was started again, and when (for the crash-loop limit). */
  restarts: number;
  restartTimes: number[];
  /** The watchdog's last view of the worker's poll-time counter, and when it last moved. */
  lastPollNs: number;
  lastProgress: number;
  /** The worker's call-fd write announcements (relay/call-guard.ts) and our view of them. */
  callGuard: SharedArrayBuffer;
  callWatch: CallGuardWatch;
  /** Kernel thread id, for /proc/self/task/<tid>/syscall. */
  tid: number;
}

export interface WorkerPoolOptions {
  cpus: number[];
  pollMode: 'busy' | 'adaptive';
  counters: SharedArrayBuffer;
  log: Logger;
  /** Called when a worker finds a guest ring broken (the relay then drops that VM's session). */
  onRingError?: (relay: number, dir: DirName, queue: number, message: string) => void;
  /**
   * Called when supervision gives up (a worker cannot be started again, crashes in a loop, or is
   * stuck): the daemon exits non-zero so that systemd restarts it.
   */
  onFatal?: (message: string) => void;
  /** Accept the test-only crash request (VIO4WD_TEST_HOOKS). */
  testHooks?: boolean;
  /** Move the process's other threads off the worker CPUs (the daemon; not a test that embeds a pool). */
  confineHousekeeping?: boolean;
}

/** More restarts than this within RESTART_WINDOW_MS is a crash loop: give up. */
const MAX_RESTARTS = 5;
const RESTART_WINDOW_MS = 60_000;
/**
 * A worker's poll-time counter moves at least every sleep (200 ms) or slice (2 ms). Not moving
 * for this long means the thread is stuck, e.g. blocked in a system call on a guest's fd.
 */
const STUCK_MS = 10_000;
const WATCHDOG_PERIOD_MS = 1000;
/** A call-fd write still in progress after a whole period of this, and blocked in the kernel, is stuck. */
const CALL_WATCH_PERIOD_MS = 200;
/** write(2)'s number, as /proc/<pid>/task/<tid>/syscall shows it. */
const SYS_WRITE = process.arch === 'arm64' ? 64 : 1;

/** Whether thread `tid` of this process sleeps in write(fd, ...) right now. */
function blockedInWrite(tid: number, fd: number): boolean {
  try {
    const fields = readFileSync(`/proc/self/task/${tid}/syscall`, 'utf8').trim().split(' ');
    return Number(fields[0]) === SYS_WRITE && Number(fields[1]) === fd;
  } catch {
    return false;
  }
}

/** VF→VM costs more per packet than VM→VF (header write, mergeable buffers), so it weighs more when placing. */
const WEIGHT: Record<DirName, number> = { vf2vm: 12, vm2vf: 10 };

const key = (relay: number, dir: DirName) => `${relay}/${dir}`;

export class WorkerPool {
  private readonly workers: WorkerHandle[] = [];
  private readonly placement = new Map<string, WorkerHandle>();
  private nextReq = 1;
  readonly workerLoad: SharedArrayBuffer;
  private readonly loadView: Float64Array;
  private stopping = false;
  private watchdog: NodeJS.Timeout | null = null;
  private callWatchdog: NodeJS.Timeout | null = null;

  constructor(private readonly opts: WorkerPoolOptions) {
    if (opts.cpus.length === 0) throw new Error('worker pool: VIRTIOFWD_CPU_MASK names no CPU');
    this.workerLoad = createWorkerLoadBuffer(opts.cpus.length);
    this.loadView = new Float64Array(this.workerLoad);
  }

  async start(): Promise<void> {
    await Promise.all(
      this.opts.cpus.map((cpu, slot) => {
        const handle: WorkerHandle = {
          cpu,
          slot,
          thread: null as unknown as Worker,
          wakeFd: eventfd(0),
          pending: new Map(),
          directions: new Map(),
          specs: new Map(),
          exited: false,
          restarting: null,
          restarts: 0,
          restartTimes: [],
          lastPollNs: -1,
          lastProgress: Date.now(),
          callGuard: createCallGuardBuffer(),
          callWatch: null as unknown as CallGuardWatch,
          tid: -1,
        };
        handle.callWatch = new CallGuardWatch(handle.callGuard);
        this.workers.push(handle);
        return this.spawn(handle);
      }),
    );
    if (this.opts.confineHousekeeping) this.confineHousekeeping();
    this.watchdog = setInterval(() => this.checkProgress(), WATCHDOG_PERIOD_MS);
    this.watchdog.unref();
    this.callWatchdog = setInterval(() => this.checkCallWrites(), CALL_WATCH_PERIOD_MS);
    this.callWatchdog.unref();
  }

  /**
   * Keeps every thread that is not a worker (the main thread, V8's garbage-collection and compiler
   * threads, libuv's pool, ZeroMQ's, the ring opener) off the worker CPUs, on the CPUs the
   * process may use that no worker polls. On a worker's CPU such a thread takes slices of several
   * milliseconds from a busy-polling worker, during which its VF rings fill: DPDK keeps its
   * control threads off the data-plane cores for the same reason. Threads started later inherit
   * the main thread's set; a restarted worker pins itself. When no such CPU is left (every
   * allowed CPU has a worker), the threads stay where they are, and the log says so.
   */
  private confineHousekeeping(): void {
    const allowed = getAffinity();
    const housekeeping = allowed.filter((cpu) => !this.opts.cpus.includes(cpu));
    if (housekeeping.length === 0) {
      this.opts.log.info({ allowed, workers: this.opts.cpus }, 'no CPU without a worker: the daemon\'s other threads share the worker CPUs');
      return;
    }
    const workerTids = new Set(this.workers.map((w) => w.tid));
    let moved = 0;
    for (const tid of threadIds()) {
      if (workerTids.has(tid)) continue;
      try {
        setAffinity(housekeeping, tid);
        moved++;
      } catch {
        // A thread that ended meanwhile.
      }
    }
    this.opts.log.info({ cpus: housekeeping, threads: moved }, `the daemon's other threads run on CPUs ${housekeeping.join(',')}, off the worker CPUs`);
  }

  /** Starts the thread of `w` (again); resolves once it is pinned and ready. */
  private spawn(w: WorkerHandle): Promise<void> {
    const script = fileURLToPath(new URL('../datapath/worker.js', import.meta.url));
    const cpu = w.cpu;
    return new Promise<void>((resolve, reject) => {
      const init: WorkerInit = {
        cpu,
        slot: w.slot,
        pollMode: this.opts.pollMode,
        counters: this.opts.counters,
        workerLoad: this.workerLoad,
        wakeFd: w.wakeFd,
        callGuard: w.callGuard,
        testHooks: this.opts.testHooks,
      };
      const thread = new Worker(script, { workerData: init, name: `vio4wd-worker-cpu${cpu}` });
      w.thread = thread;
      w.exited = false;
      let ready = false;
      thread.on('message', (msg: FromWorker) => {
        if (msg.type === 'ready') {
          ready = true;
          w.lastProgress = Date.now();
          w.tid = msg.tid;
          this.opts.log.info({ cpu, tid: msg.tid }, 'worker started and pinned');
          resolve();
        } else this.onMessage(w, msg);
      });
      thread.on('error', (err) => {
        this.opts.log.error({ cpu, err: err.message, stack: err.stack }, `worker on CPU ${cpu} failed: ${err.message}`);
        if (!ready) reject(new Error(`worker on CPU ${cpu} failed to start: ${err.message}`));
      });
      thread.on('exit', (code) => {
        if (w.thread !== thread) return;
        w.exited = true;
        for (const p of w.pending.values()) p.reject(new Error(`worker on CPU ${cpu} exited (${code})`));
        w.pending.clear();
        if (!ready) reject(new Error(`worker on CPU ${cpu} exited during start (${code})`));
        else if (!this.stopping) {
          const restart = this.restart(w, code);
          restart.catch(() => undefined); // reported through onFatal
          w.restarting = restart;
        }
      });
    });
  }

  /**
   * Supervision: the thread of `w` ended while the daemon runs. Start it again on the same CPU
   * and re-attach its directions from the used indexes in guest memory; give up (onFatal) when
   * that fails or the thread keeps ending.
   */
  private async restart(w: WorkerHandle, code: number): Promise<void> {
    await null; // the caller stores this promise in w.restarting before the finally clears it
    const now = Date.now();
    w.restartTimes = w.restartTimes.filter((t) => now - t < RESTART_WINDOW_MS);
    w.restartTimes.push(now);
    w.restarts++;
    const keys = [...w.specs.keys()];
    this.opts.log.error(
      { cpu: w.cpu, exitCode: code, restarts: w.restarts, directions: keys },
      `worker on CPU ${w.cpu} ended unexpectedly (exit code ${code}); restarting it with its ${keys.length} relay directions`,
    );
    try {
      if (w.restartTimes.length > MAX_RESTARTS) {
        throw new Error(`it ended ${w.restartTimes.length} times within ${RESTART_WINDOW_MS / 1000} s`);
      }
      await this.spawn(w);
      for (const [k, spec] of [...w.specs]) {
        try {
          await this.requestNow(w, { type: 'attach', reqId: this.nextReq++, spec, state: resumeStateFromGuest(spec) });
        } catch (err) {
          this.opts.log.error({ cpu: w.cpu, direction: k, err: (err as Error).message }, `relay direction ${k} could not be re-attached after the worker restart`);
          w.specs.delete(k);
          w.directions.delete(k);
          this.placement.delete(k);
        }
      }
      this.opts.log.warn({ cpu: w.cpu, restarts: w.restarts, directions: [...w.specs.keys()] }, `worker on CPU ${w.cpu} restarted; ${w.specs.size} relay directions resumed`);
    } catch (err) {
      const message = `worker on CPU ${w.cpu} cannot be kept running: ${(err as Error).message}`;
      this.opts.log.fatal({ cpu: w.cpu }, message);
      this.opts.onFatal?.(message);
      throw err;
    } finally {
      w.restarting = null;
    }
  }

  /**
   * A worker whose write to a guest's call fd has been in progress for a whole period, and which
   * the kernel shows blocked in that write, is unblocked: the eventfd is drained here without
   * blocking (which lets the write complete), and the worker then stops that ring.
   */
  private checkCallWrites(): void {
    for (const w of this.workers) {
      const stuck = w.callWatch.stuckWrite();
      if (!stuck || w.exited || w.restarting || w.tid < 0 || !blockedInWrite(w.tid, stuck.fd)) continue;
      w.callWatch.markUnblocked(stuck.seq);
      try {
        eventfdReadNoWait(stuck.fd);
      } catch (err) {
        this.opts.log.warn({ cpu: w.cpu, fd: stuck.fd, err: (err as Error).message }, 'could not drain a call fd that blocks a worker');
        continue;
      }
      this.opts.log.warn({ cpu: w.cpu, fd: stuck.fd }, `worker on CPU ${w.cpu} was blocked writing call fd ${stuck.fd}; drained it, the ring stops`);
    }
  }

  /** Ends the daemon (onFatal) when a worker's poll-time counter has not moved for STUCK_MS. */
  private checkProgress(): void {
    const now = Date.now();
    for (const w of this.workers) {
      const pollNs = this.loadView[w.slot * WORKER_SLOTS + 1];
      if (pollNs !== w.lastPollNs || w.exited || w.restarting) {
        w.lastPollNs = pollNs;
        w.lastProgress = now;
        continue;
      }
      if (now - w.lastProgress >= STUCK_MS && !this.stopping) {
        const message = `worker on CPU ${w.cpu} has made no progress for ${Math.round((now - w.lastProgress) / 1000)} s (blocked in a system call?)`;
        this.opts.log.fatal({ cpu: w.cpu }, message);
        w.lastProgress = now;
        this.opts.onFatal?.(message);
      }
    }
  }

  /** Test hook: makes the first worker end with an uncaught error, or block in the kernel for good. */
  crashWorker(how: 'throw' | 'block' = 'throw'): boolean {
    const w = this.workers[0];
    if (!w || !this.opts.testHooks) return false;
    this.post(w, { type: 'crash', how });
    return true;
  }

  private onMessage(w: WorkerHandle, msg: FromWorker): void {
    switch (msg.type) {
      case 'done': {
        const p = w.pending.get(msg.reqId);
        if (!p) return;
        w.pending.delete(msg.reqId);
        if (msg.error) p.reject(new Error(msg.error));
        else p.resolve(msg.state);
        break;
      }
      case 'direction-failed':
        this.opts.log.error(
          { relay: msg.relay, dir: msg.dir, cpu: w.cpu },
          `relay ${msg.relay} ${msg.dir} stopped after an unexpected error: ${msg.message}; the other directions on CPU ${w.cpu} go on`,
        );
        break;
      case 'ring-error':
        this.opts.log.warn({ relay: msg.relay, dir: msg.dir, queue: msg.queue, cpu: w.cpu }, `guest ring broken: ${msg.message}`);
        this.opts.onRingError?.(msg.relay, msg.dir, msg.queue, msg.message);
        break;
      case 'log':
        this.opts.log[msg.level]({ cpu: w.cpu, ...msg.data }, msg.msg);
        break;
      default:
        break;
    }
  }

  /** Sends a request once any restart of the worker has finished. */
  private async request(w: WorkerHandle, msg: ToWorker & { reqId: number }): Promise<DirectionState | null | undefined> {
    // The restart may itself fail; the request then finds the worker not running.
    if (w.restarting) await w.restarting.catch(() => undefined);
    return this.requestNow(w, msg);
  }

  private requestNow(w: WorkerHandle, msg: ToWorker & { reqId: number }): Promise<DirectionState | null | undefined> {
    if (w.exited) return Promise.reject(new Error(`worker on CPU ${w.cpu} is not running`));
    return new Promise((resolve, reject) => {
      w.pending.set(msg.reqId, { resolve, reject });
      w.thread.postMessage(msg);
      eventfdWrite(w.wakeFd, 1);
    });
  }

  private post(w: WorkerHandle, msg: ToWorker): void {
    if (w.exited) return;
    w.thread.postMessage(msg);
    eventfdWrite(w.wakeFd, 1);
  }

  cpus(): number[] {
    return this.workers.map((w) => w.cpu);
  }

  hasCpu(cpu: number): boolean {
    return this.workers.some((w) => w.cpu === cpu);
  }

  /** The CPU serving a direction, or -1. */
  cpuOf(relay: number, dir: DirName): number {
    return this.placement.get(key(relay, dir))?.cpu ?? -1;
  }

  /** The worker with the least weighted load of directions, among `candidates` CPUs when given. */
  leastBusyCpu(candidates?: number[]): number {
    let best: WorkerHandle | undefined;
    let bestWeight = Infinity;
    for (const w of this.workers) {
      if (candidates && candidates.length > 0 && !candidates.includes(w.cpu)) continue;
      let weight = 0;
      for (const v of w.directions.values()) weight += v;
      if (weight < bestWeight) {
        best = w;
        bestWeight = weight;
      }
    }
    return (best ?? this.workers[0]).cpu;
  }

  private byCpu(cpu: number): WorkerHandle {
    const w = this.workers.find((x) => x.cpu === cpu);
    if (!w) throw new Error(`CPU ${cpu} is not a worker CPU (workers: ${this.cpus().join(',')})`);
    return w;
  }

  /** Starts (or restarts with a new spec) a direction on `cpu`, resuming from `state`. */
  async attach(spec: DirectionSpec, state: DirectionState | null, cpu: number): Promise<void> {
    const k = key(spec.relay, spec.dir);
    if (this.placement.has(k)) throw new Error(`relay ${spec.relay} ${spec.dir} is already running on CPU ${this.placement.get(k)!.cpu}`);
    const w = this.byCpu(cpu);
    await this.request(w, { type: 'attach', reqId: this.nextReq++, spec, state });
    this.placement.set(k, w);
    w.directions.set(k, WEIGHT[spec.dir]);
    w.specs.set(k, spec);
  }

  /** Stops a direction at a burst boundary and returns its ring state (null when it was not running). */
  async detach(relay: number, dir: DirName): Promise<DirectionState | null> {
    const k = key(relay, dir);
    const w = this.placement.get(k);
    if (!w) return null;
    this.placement.delete(k);
    w.directions.delete(k);
    w.specs.delete(k);
    const state = await this.request(w, { type: 'detach', reqId: this.nextReq++, relay, dir });
    return state ?? null;
  }

  /** Tells the worker serving `dir` which bond member is active and which members have carrier. */
  setActiveMember(relay: number, dir: DirName, active: number, up: boolean[]): void {
    const w = this.placement.get(key(relay, dir));
    if (w) this.post(w, { type: 'set-active-member', relay, dir, active, up });
  }

  /** Busy and total poll time of each worker since it started, and its thread's heap in use. */
  load(): { cpu: number; busyNs: number; pollNs: number; restarts: number; heapBytes: number }[] {
    return this.workers.map((w) => ({
      cpu: w.cpu,
      restarts: w.restarts,
      busyNs: this.loadView[w.slot * WORKER_SLOTS],
      pollNs: this.loadView[w.slot * WORKER_SLOTS + 1],
      heapBytes: this.loadView[w.slot * WORKER_SLOTS + 2],
    }));
  }

  async stop(): Promise<void> {
    this.stopping = true;
    if (this.watchdog) clearInterval(this.watchdog);
    if (this.callWatchdog) clearInterval(this.callWatchdog);
    await Promise.all(
      this.workers.map(async (w) => {
        try {
          await Promise.race([
            this.request(w, { type: 'stop', reqId: this.nextReq++ }),
            new Promise((r) => setTimeout(r, 2000)),
          ]);
        } catch {
          /* exited already */
        }
        await w.thread.terminate();
        close(w.wakeFd);
      }),
    );
    this.placement.clear();
  }
}
