// The main thread's side of an iothread: starts the worker, passes it commands (message plus a
// write to its control eventfd, since the worker sleeps in poll), relays its log lines, and stops
// it deterministically: a worker blocked in poll(2) cannot be terminated, so it is told to quit.
import { Worker } from 'node:worker_threads';
import type { Logger } from 'pino';
import { eventfd, eventfdWrite } from '../sys/eventfd.js';
import { close as closeFd } from '../sys/fd.js';
import type { GuestRam } from './guest-ram.js';
import type { IothreadCommand, IothreadDrive, IothreadMessage, IothreadWorkerData } from './iothread-protocol.js';

export class IoThread {
  private worker: Worker | null = null;
  private readonly controlFd = eventfd(0, { nonblock: true });
  private exited: Promise<void> = Promise.resolve();
  tid = 0;

  constructor(
    readonly name: string,
    private readonly drives: IothreadDrive[],
    private readonly ram: GuestRam,
    private readonly log: Logger,
  ) {}

  /** Resolves once the worker is serving (its poll set is built). */
  start(): Promise<void> {
    const data: IothreadWorkerData = {
      name: this.name,
      controlFd: this.controlFd,
      ram: this.ram.regions.map((r) => ({ guestPhysAddr: r.guestPhysAddr, size: r.size, userAddr: r.userAddr })),
      drives: this.drives,
    };
    const worker = new Worker(new URL('./iothread-worker.js', import.meta.url), { workerData: data, name: `iothread ${this.name}` });
    this.worker = worker;
    this.exited = new Promise((resolve) => worker.once('exit', () => resolve()));
    return new Promise((resolve, reject) => {
      worker.once('error', (err) => {
        this.log.error({ iothread: this.name, err: err.message }, `iothread ${this.name} failed: ${err.message}`);
        reject(new Error(`iothread ${this.name}: ${err.message}`));
      });
      worker.on('message', (m: IothreadMessage) => {
        if (m.type === 'ready') {
          this.tid = m.tid;
          resolve();
        } else if (m.type === 'log') {
          this.log[m.level]({ iothread: this.name, drive: m.drive }, m.message);
        }
      });
    });
  }

  /** Index of a drive in this thread's list. */
  indexOf(id: string): number {
    return this.drives.findIndex((d) => d.id === id);
  }

  send(command: IothreadCommand): void {
    if (!this.worker) return;
    this.worker.postMessage(command);
    eventfdWrite(this.controlFd);
  }

  /** Tells the worker to leave its loop and waits for it; terminates it if it does not go. */
  async stop(timeoutMs = 2000): Promise<void> {
    const worker = this.worker;
    if (worker) {
      this.send({ type: 'quit' });
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), timeoutMs)));
      const how = await Promise.race([this.exited.then(() => 'exited' as const), late]);
      clearTimeout(timer);
      if (how === 'late') {
        this.log.warn({ iothread: this.name }, `iothread ${this.name} did not stop within ${timeoutMs} ms; terminating it`);
        await worker.terminate().catch(() => undefined);
      }
      this.worker = null;
    }
    closeFd(this.controlFd);
  }
}
