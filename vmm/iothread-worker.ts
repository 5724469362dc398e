// An iothread: a worker that owns the queues and image files of its drives. It sleeps in poll(2)
// on the drives' QueueNotify ioeventfds and its control eventfd, serves requests, and signals the
// device's irqfd when the guest wants an interrupt. The main thread never touches a request.
import { parentPort, receiveMessageOnPort, workerData } from 'node:worker_threads';
import { eventfdRead, eventfdWrite } from '../sys/eventfd.js';
import { currentTid } from '../sys/kvm.js';
import { viewAt } from '../sys/memory.js';
import { PollSet, POLLIN } from '../sys/poll.js';
import { GuestMemory, type MemoryRegion } from '../virtio/guest-memory.js';
import { RingError, SplitQueue } from '../virtio/split-queue.js';
import { VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC } from '../virtio/features.js';
import { descTableBytes, availRingBytes, usedRingBytes } from '../virtio/ring-layout.js';
import { BlockRequestHandler, TokenBucket } from './block-request.js';
import { INT_VRING, MmioTransport, type QueueSetup } from './devices/virtio-mmio.js';
import { STATUS_DRIVER_OK } from '../virtio/device-status.js';
import type { IothreadCommand, IothreadDrive, IothreadMessage, IothreadWorkerData } from './iothread-protocol.js';

const data = workerData as IothreadWorkerData;
const port = parentPort!;
const post = (m: IothreadMessage) => port.postMessage(m);
/** Used entries published between interrupts while a long batch is served. */
const INTERRUPT_BATCH = 32;
/** Malformed requests logged per drive; a guest hammering bad requests must not flood the log. */
const MAX_LOGGED_PROBLEMS = 20;

/**
 * Longest sleep in poll(2). Commands arrive through the control eventfd at once; the bound only
 * lets Worker.terminate() (which acts when JavaScript runs) reach a thread whose quit was lost.
 */
const MAX_SLEEP_MS = 1000;

/** The largest piece one view may cover; RAM above 4 GiB can be larger. */
const VIEW_PIECE = 2 ** 31;

function mapGuestMemory(): GuestMemory {
  const regions: MemoryRegion[] = [];
  for (const r of data.ram) {
    for (let off = 0; off < r.size; off += VIEW_PIECE) {
      const size = Math.min(VIEW_PIECE, r.size - off);
      regions.push({ guestPhysAddr: r.guestPhysAddr + off, size, userAddr: r.userAddr + off, bytes: new Uint8Array(viewAt(r.userAddr + off, size)) });
    }
  }
  return new GuestMemory(regions);
}

interface DriveState {
  config: IothreadDrive;
  handler: BlockRequestHandler;
  bucket: TokenBucket | null;
  queue: SplitQueue | null;
  pending: boolean;
  /** performance.now() before which the iops limit holds requests back; 0 = not throttled. */
  throttledUntil: number;
  problems: number;
}

const memory = mapGuestMemory();
const drives: DriveState[] = data.drives.map((config) => ({
  config,
  handler: new BlockRequestHandler({
    fd: config.fd,
    capacityBytes: config.capacityBytes,
    readOnly: config.readOnly,
    direct: config.direct,
    serial: config.serial,
    label: `drive ${config.id}`,
  }),
  bucket: config.iops > 0 ? new TokenBucket(config.iops) : null,
  queue: null,
  pending: false,
  throttledUntil: 0,
  problems: 0,
}));

const bit = (features: [number, number], n: number) => (n < 32 ? (features[0] >>> n) & 1 : (features[1] >>> (n - 32)) & 1) === 1;

function startQueue(d: DriveState, q: QueueSetup, features: [number, number]): void {
  const where = (what: string, gpa: number, len: number) => {
    const loc = memory.translate(gpa, len);
    if (!loc) throw new RingError(`drive ${d.config.id} queue 0`, `${what} at guest address 0x${gpa.toString(16)}+${len} is outside guest RAM`);
    return loc;
  };
  try {
    d.queue = new SplitQueue({
      memory,
      size: q.size,
      descTable: where('descriptor table', q.desc, descTableBytes(q.size)),
      availRing: where('avail ring', q.driver, availRingBytes(q.size)),
      usedRing: where('used ring', q.device, usedRingBytes(q.size)),
      eventIdx: bit(features, VIRTIO_RING_F_EVENT_IDX),
      indirect: bit(features, VIRTIO_RING_F_INDIRECT_DESC),
      // The largest request: a bounce buffer is reused, so this only bounds the chain walk.
      maxChainBytes: 2 ** 32,
      name: `drive ${d.config.id} queue 0`,
    });
    d.pending = true;
    post({ type: 'log', level: 'info', drive: d.config.id, message: `drive ${d.config.id}: queue of ${q.size} started` });
  } catch (err) {
    fail(d, (err as Error).message);
  }
}

/** The guest broke the ring: stop serving it and ask the driver for a reset. */
function fail(d: DriveState, message: string): void {
  d.queue = null;
  post({ type: 'log', level: 'error', drive: d.config.id, message: `drive ${d.config.id}: ${message}; the device needs a reset` });
  MmioTransport.setNeedsReset(d.config.transport);
  eventfdWrite(d.config.callFd);
}

function publish(d: DriveState, q: SplitQueue): void {
  q.flushUsed();
  if (q.needsNotification()) {
    MmioTransport.raiseInterrupt(d.config.transport, INT_VRING);
    eventfdWrite(d.config.callFd);
  }
}

function serve(d: DriveState): void {
  d.pending = false;
  const q = d.queue;
  if (!q) return;
  // A reset the stop message has not reached yet: the rings may already be reused.
  if ((MmioTransport.status(d.config.transport) & STATUS_DRIVER_OK) === 0) {
    d.queue = null;
    return;
  }
  try {
    for (;;) {
      let served = 0;
      while (q.availableCount() > 0) {
        if (d.bucket) {
          const wait = d.bucket.take();
          if (wait > 0) {
            d.throttledUntil = performance.now() + wait;
            publish(d, q);
            return;
          }
        }
        const result = d.handler.serveNext(q);
        if (!result) break;
        if (result.problem && d.problems++ < MAX_LOGGED_PROBLEMS) {
          post({ type: 'log', level: 'warn', drive: d.config.id, message: `drive ${d.config.id}: request refused (status ${result.status}): ${result.problem}` });
        }
        if (++served % INTERRUPT_BATCH === 0) publish(d, q);
      }
      publish(d, q);
      // Re-arm kicks, then look once more so a request added meanwhile is not left waiting.
      if (!q.enableNotifications()) return;
    }
  } catch (err) {
    // A broken ring (RingError) or anything unexpected: this drive stops, the thread and the
    // other drives it serves go on.
    fail(d, err instanceof RingError ? err.message : `internal error: ${(err as Error).stack ?? err}`);
  }
}

function handle(cmd: IothreadCommand): boolean {
  switch (cmd.type) {
    case 'start':
      startQueue(drives[cmd.drive], cmd.queue, cmd.features);
      return true;
    case 'stop':
      drives[cmd.drive].queue = null;
      drives[cmd.drive].throttledUntil = 0;
      post({ type: 'log', level: 'info', drive: drives[cmd.drive].config.id, message: `drive ${drives[cmd.drive].config.id}: queue stopped (device reset)` });
      return true;
    case 'quit':
      return false;
    default:
      return true;
  }
}

function loop(): void {
  const polls = new PollSet([{ fd: data.controlFd, events: POLLIN }, ...drives.map((d) => ({ fd: d.config.kickFd, events: POLLIN }))]);
  post({ type: 'ready', tid: currentTid() });
  for (;;) {
    let timeout = -1;
    const now = performance.now();
    for (const d of drives) {
      if (d.throttledUntil > 0) timeout = timeout < 0 ? d.throttledUntil - now : Math.min(timeout, d.throttledUntil - now);
    }
    polls.wait(timeout < 0 ? MAX_SLEEP_MS : Math.min(MAX_SLEEP_MS, Math.max(1, Math.ceil(timeout))));
    if (polls.revents(0)) {
      eventfdRead(data.controlFd);
      for (let m = receiveMessageOnPort(port); m; m = receiveMessageOnPort(port)) {
        if (!handle(m.message as IothreadCommand)) return;
      }
    }
    const after = performance.now();
    drives.forEach((d, i) => {
      if (polls.revents(i + 1)) {
        eventfdRead(d.config.kickFd);
        d.pending = true;
      }
      if (d.throttledUntil > 0 && after >= d.throttledUntil) {
        d.throttledUntil = 0;
        d.pending = true;
      }
      if (d.pending && d.throttledUntil === 0) serve(d);
    });
  }
}

loop();
