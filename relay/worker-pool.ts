// The forwarding workers as the main thread sees them: one pinned worker thread per CPU of the
// mask, the assignment of relay directions to workers, and the handover that moves a direction
// from one worker to another at a burst boundary with its ring state.
import { Worker } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { eventfd, eventfdWrite } from '../sys/eventfd.js';
import { close } from '../sys/fd.js';
import { createWorkerLoadBuffer, WORKER_SLOTS } from './counters.js';
import type { DirName, DirectionSpec, DirectionState, FromWorker, ToWorker, WorkerInit } from './worker-protocol.js';

interface WorkerHandle {
  cpu: number;
  slot: number;
  thread: Worker;
  wakeFd: number;
  pending: Map<number, { resolve: (v: DirectionState | null | undefined) => void; reject: (e: Error) => void }>;
  /** Directions this worker serves, keyed `relay/dir`, with a weight for least-busy placement. */
  directions: Map<string, number>;
  exited: boolean;
}

export interface WorkerPoolOptions {
  cpus: number[];
  pollMode: 'busy' | 'adaptive';
  counters: SharedArrayBuffer;
  log: Logger;
  /** Called when a worker finds a guest ring broken (the relay then drops that VM's session). */
  onRingError?: (relay: number, dir: DirName, queue: number, message: string) => void;
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

  constructor(private readonly opts: WorkerPoolOptions) {
    if (opts.cpus.length === 0) throw new Error('worker pool: VIRTIOFWD_CPU_MASK names no CPU');
    this.workerLoad = createWorkerLoadBuffer(opts.cpus.length);
    this.loadView = new Float64Array(this.workerLoad);
  }

  async start(): Promise<void> {
    const script = fileURLToPath(new URL('./worker.js', import.meta.url));
    await Promise.all(
      this.opts.cpus.map(
        (cpu, slot) =>
          new Promise<void>((resolve, reject) => {
            const wakeFd = eventfd(0);
            const init: WorkerInit = {
              cpu,
              slot,
              pollMode: this.opts.pollMode,
              counters: this.opts.counters,
              workerLoad: this.workerLoad,
              wakeFd,
            };
            const thread = new Worker(script, { workerData: init, name: `vio4wd-worker-cpu${cpu}` });
            const handle: WorkerHandle = { cpu, slot, thread, wakeFd, pending: new Map(), directions: new Map(), exited: false };
            this.workers.push(handle);
            let ready = false;
            thread.on('message', (msg: FromWorker) => {
              if (msg.type === 'ready') {
                ready = true;
                this.opts.log.info({ cpu, tid: msg.tid }, 'worker started and pinned');
                resolve();
              } else this.onMessage(handle, msg);
            });
            thread.on('error', (err) => {
              this.opts.log.error({ cpu, err: err.message }, 'worker failed');
              if (!ready) reject(new Error(`worker on CPU ${cpu} failed to start: ${err.message}`));
            });
            thread.on('exit', (code) => {
              handle.exited = true;
              for (const p of handle.pending.values()) p.reject(new Error(`worker on CPU ${cpu} exited (${code})`));
              handle.pending.clear();
              if (!ready) reject(new Error(`worker on CPU ${cpu} exited during start (${code})`));
            });
          }),
      ),
    );
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

  private request(w: WorkerHandle, msg: ToWorker & { reqId: number }): Promise<DirectionState | null | undefined> {
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
  }

  /** Stops a direction at a burst boundary and returns its ring state (null when it was not running). */
  async detach(relay: number, dir: DirName): Promise<DirectionState | null> {
    const k = key(relay, dir);
    const w = this.placement.get(k);
    if (!w) return null;
    this.placement.delete(k);
    w.directions.delete(k);
    const state = await this.request(w, { type: 'detach', reqId: this.nextReq++, relay, dir });
    return state ?? null;
  }

  /** Tells the worker serving `dir` which bond member is active and which members have carrier. */
  setActiveMember(relay: number, dir: DirName, active: number, up: boolean[]): void {
    const w = this.placement.get(key(relay, dir));
    if (w) this.post(w, { type: 'set-active-member', relay, dir, active, up });
  }

  /** Busy and total poll time of each worker since it started. */
  load(): { cpu: number; busyNs: number; pollNs: number }[] {
    return this.workers.map((w) => ({
      cpu: w.cpu,
      busyNs: this.loadView[w.slot * WORKER_SLOTS],
      pollNs: this.loadView[w.slot * WORKER_SLOTS + 1],
    }));
  }

  async stop(): Promise<void> {
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
