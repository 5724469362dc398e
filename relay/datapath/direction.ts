// What both directions of a relay share, as a worker runs them (vm-to-vf.ts, vf-to-vm.ts): the
// guest's memory views, shared by the directions of a worker that use one memory table; the guest
// queues a direction serves (GuestQueue), with their kick and call fds and the state a direction
// hands over to the next worker; and the counters. Each burst moves at most BURST frames per ring,
// publishes used entries once, signals the guest once, and flushes each VF's TX ring once. Nothing
// here allocates per packet.
import { viewAt } from '../../sys/memory.js';
import { eventfdWrite } from '../../sys/eventfd.js';
import { GuestMemory, regionPieces } from '../../virtio/guest-memory.js';
import { DESC_SIZE, PACKED_EVENT_BYTES, availRingBytes, descTableBytes, usedRingBytes } from '../../virtio/ring-layout.js';
import { SplitQueue, RingError } from '../../virtio/split-queue.js';
import { PackedQueue } from '../../virtio/packed-queue.js';
import type { DeviceQueue } from '../../virtio/device-queue.js';
import { Counter, Dir, counterBase } from './counters.js';
import { VfPort } from './vf-port.js';
import { reportBadChain } from './chain-warnings.js';
import { callWriteBegins, callWriteEnds } from './call-guard.js';
import type { DirectionSpec, DirectionState, GuestSpec, QueueSpec, QueueState } from './worker-protocol.js';

/**
 * Frames a burst moves per ring at most. 64 rather than DPDK's usual 32: what a burst costs once
 * (ring index reads and writes, the used ring's publication, the clock around it) is a larger
 * share of a frame's cost here, and vhost-user ⇄ memif moved 10–50 % more frames with 64
 * (docs/benchmarks.md). The AF_PACKET send batch (BATCH_FRAMES) holds a burst.
 */
export const BURST = 64;
/** Largest frame a guest may hand us: 64 KiB plus Ethernet and VLAN headers. */
const MAX_FRAME = 65562;
/** Receive chains may be larger than any frame we write into them; only the segment budget limits them. */
const RX_MAX_CHAIN_BYTES = 1 << 20;

/** Guest memory views of one memory table, shared by the directions of a worker that use it. */
interface MappedGuest {
  /** Its regions keep their host addresses, so descriptor chains carry them (`segHost`). */
  memory: GuestMemory;
  users: number;
}
const memoryCache = new Map<string, MappedGuest>();

/** Views of one table are shared only with the same dirty log (or none): logging is per view. */
const memoryKey = (guest: GuestSpec) => `${guest.memoryId}/${guest.dirtyLog?.hostAddress ?? 0}`;

function acquireMemory(guest: GuestSpec): MappedGuest {
  const key = memoryKey(guest);
  const cached = memoryCache.get(key);
  if (cached) {
    cached.users++;
    return cached;
  }
  const pieces = regionPieces(guest.regions, (address, length) => new Uint8Array(viewAt(address, length)));
  const memory = new GuestMemory(pieces);
  if (guest.dirtyLog) memory.setDirtyLog(new Uint8Array(viewAt(guest.dirtyLog.hostAddress, guest.dirtyLog.size)));
  const mapped = { memory, users: 1 };
  memoryCache.set(key, mapped);
  return mapped;
}

function releaseMemory(guest: GuestSpec): void {
  const key = memoryKey(guest);
  const cached = memoryCache.get(key);
  if (cached && --cached.users === 0) memoryCache.delete(key);
}

/** One guest vring as a worker drives it. */
export class GuestQueue {
  readonly index: number;
  readonly queue: DeviceQueue;
  readonly callFd: number;
  readonly kickFd: number;
  readonly enabled: boolean;

  constructor(spec: QueueSpec, memory: GuestMemory, guest: GuestSpec, state: QueueState | undefined) {
    this.index = spec.index;
    this.callFd = spec.callFd;
    this.kickFd = spec.kickFd;
    this.enabled = spec.enabled;
    // A ring part sits in one front-end region; GuestMemory may hold that region as several
    // pieces, so find the piece, and give a part that crosses into the next piece a view of its own.
    const at = (p: { region: number; offset: number }, length: number) => {
      const region = guest.regions[p.region];
      if (!region) throw new RingError(`vring ${spec.index}`, `ring part in unknown region ${p.region}`);
      const gpa = region.guestPhysAddr + p.offset;
      const piece = memory.regions[memory.regionIndexOf(gpa)];
      if (!piece) throw new RingError(`vring ${spec.index}`, `ring part at offset ${p.offset} is outside region ${p.region}`);
      const offset = gpa - piece.guestPhysAddr;
      if (offset + length <= piece.size) return { bytes: piece.bytes, offset };
      return { bytes: new Uint8Array(viewAt(region.hostAddress + p.offset, length)), offset: 0 };
    };
    // Guests without MRG_RXBUF post "big packet" receive chains of 17+ pages; transmit chains
    // stay bounded by the largest frame.
    const maxChainBytes = spec.index % 2 === 0 ? RX_MAX_CHAIN_BYTES : MAX_FRAME;
    const name = `vring ${spec.index}`;
    if (guest.packed) {
      // A packed ring's state only comes from the relay (resume-state.ts has none to give).
      if (!state) throw new RingError(name, 'a packed ring cannot resume without the state its worker kept (the worker ended without handing it back); the VM must reset the device');
      this.queue = new PackedQueue({
        memory,
        size: spec.size,
        descRing: at(spec.desc, DESC_SIZE * spec.size),
        driverEvent: at(spec.avail, PACKED_EVENT_BYTES),
        deviceEvent: at(spec.used, PACKED_EVENT_BYTES),
        eventIdx: guest.eventIdx,
        indirect: guest.indirect,
        maxChainBytes,
        // Used entries go into the descriptor ring; the queue logs them at the guest address of
        // the region its view lies in (a packed ring has no used ring for log_guest_addr).
        name,
      });
    } else {
      this.queue = new SplitQueue({
        memory,
        size: spec.size,
        descTable: at(spec.desc, descTableBytes(spec.size)),
        availRing: at(spec.avail, availRingBytes(spec.size)),
        usedRing: at(spec.used, usedRingBytes(spec.size)),
        eventIdx: guest.eventIdx,
        indirect: guest.indirect,
        maxChainBytes,
        // Used-ring writes are logged where the front-end said (it reads the log by guest address).
        usedRingGuestAddr: spec.usedLogAddr ?? undefined,
        name,
      });
    }
    if (state) {
      this.queue.importState({
        lastAvail: state.lastAvail,
        lastUsed: state.lastUsed,
        signalledUsed: state.signalledUsed,
        signalledUsedValid: state.signalledValid,
        notificationsDisabled: false,
        broken: false,
      });
    }
  }

  exportState(): QueueState {
    const s = this.queue.exportState();
    return { lastAvail: s.lastAvail, lastUsed: s.lastUsed, signalledUsed: s.signalledUsed, signalledValid: s.signalledUsedValid };
  }

  /**
   * Publishes used entries and signals the guest if it asked to be told. A call fd that fails
   * (any errno, a short write) is a broken ring: RingError, which stops this ring only. A full
   * counter (EAGAIN; the fd is non-blocking) just drops the notification: one is pending.
   */
  publish(): void {
    const q = this.queue;
    if (q.pendingUsedCount === 0) return;
    q.flushUsed();
    if (this.callFd >= 0 && q.needsNotification()) {
      callWriteBegins(this.callFd);
      try {
        eventfdWrite(this.callFd, 1);
      } catch (err) {
        throw new RingError(`vring ${this.index}`, `call fd ${this.callFd} failed: ${(err as Error).message}`);
      } finally {
        if (callWriteEnds()) {
          throw new RingError(`vring ${this.index}`, `call fd ${this.callFd} blocked a write (its front-end made it blocking again and left it full); the relay drained it`);
        }
      }
    }
  }
}

export type RingErrorReport = (queue: number, message: string) => void;

/** Fields shared by both directions. */
export abstract class Direction {
  readonly relay: number;
  readonly guest: GuestSpec | null;
  readonly queues: GuestQueue[] = [];
  readonly port: VfPort | null;
  protected readonly counters: Float64Array;
  /** First slot of this direction's counters (the worker adds its time measurements there). */
  readonly base: number;
  private readonly memoryId: number;
  protected readonly onRingError: RingErrorReport;
  protected memory: GuestMemory | null = null;
  /**
   * Where each queue dropped after a ring error stopped. A dropped queue is no longer polled, but
   * its state still leaves with the direction at detach: GET_VRING_BASE (and so a migration
   * stream) must get the index the ring really reached, not the older one the relay saved at
   * attach, which would make the VM's next start replay chains already completed.
   */
  private readonly droppedStates = new Map<number, QueueState>();

  constructor(spec: DirectionSpec, state: DirectionState | null, counters: Float64Array, dir: Dir, onRingError: RingErrorReport) {
    this.relay = spec.relay;
    this.guest = spec.guest;
    this.counters = counters;
    this.base = counterBase(spec.relay, dir);
    this.onRingError = onRingError;
    this.port = spec.port && spec.port.members.length > 0 ? new VfPort(spec.port, state?.rrMember ?? 0) : null;
    this.memoryId = spec.guest?.memoryId ?? -1;
    if (spec.guest && spec.guest.queues.length > 0) {
      const mapped = acquireMemory(spec.guest);
      const memory = mapped.memory;
      this.memory = memory;
      for (const q of spec.guest.queues) {
        try {
          this.queues.push(new GuestQueue(q, memory, spec.guest, state?.queues[q.index]));
        } catch (err) {
          const resumed = state?.queues[q.index];
          if (resumed) this.droppedStates.set(q.index, resumed);
          onRingError(q.index, (err as Error).message);
        }
      }
    }
  }

  /** Moves up to a burst; returns the number of frames handled (forwarded or dropped). */
  abstract burst(): number;

  /**
   * Whether a burst would find something to do: a few loads from shared memory, no system call
   * and no clock read, so an idle worker can spin through it cheaply.
   */
  abstract hasWork(): boolean;

  /** Re-arms guest notifications before sleeping; true when work arrived meanwhile. */
  abstract armForSleep(): boolean;

  /** Turns guest notifications off again while polling. */
  abstract disarm(): void;

  /** fds that wake this direction when idle. */
  abstract wakeFds(): number[];

  exportState(rrQueue: number): DirectionState {
    const queues: Record<number, QueueState> = {};
    for (const [index, qs] of this.droppedStates) queues[index] = qs;
    for (const q of [...this.queues]) {
      try {
        q.publish();
      } catch (err) {
        // The used entries are in guest memory; only the notification failed. Stop the ring, and
        // hand back where it stopped (dropQueue keeps that state).
        this.dropQueue(q, (err as Error).message);
        const dropped = this.droppedStates.get(q.index);
        if (dropped) queues[q.index] = dropped;
        continue;
      }
      queues[q.index] = q.exportState();
    }
    return { queues, rrQueue, rrMember: this.port?.rrMember ?? 0 };
  }

  release(): void {
    if (this.memoryId >= 0 && this.guest && this.guest.queues.length > 0) releaseMemory(this.guest);
    this.port?.release();
  }

  protected dropQueue(q: GuestQueue, message: string): void {
    const i = this.queues.indexOf(q);
    if (i >= 0) this.queues.splice(i, 1);
    // Completed chains go back to the guest before the queue is left alone.
    try {
      q.publish();
    } catch {
      /* the used ring is the guest's; a failed signal changes nothing here */
    }
    const s = q.queue.exportState();
    this.droppedStates.set(q.index, { lastAvail: s.lastAvail, lastUsed: s.lastUsed, signalledUsed: s.signalledUsed, signalledValid: s.signalledUsedValid });
    this.counters[this.base + Counter.RingsStopped]++;
    this.onRingError(q.index, message);
  }

  /**
   * Asks the guest to kick on every ring (before the worker sleeps); true when one had work added
   * meanwhile. A ring whose indexes are broken stops, the others go on.
   */
  protected enableNotifications(): boolean {
    let added = false;
    for (const q of [...this.queues]) {
      try {
        if (q.queue.enableNotifications()) added = true;
      } catch (err) {
        if (err instanceof RingError) this.dropQueue(q, err.message);
        else throw err;
      }
    }
    return added;
  }

  /** Publishes every ring; a ring whose call fd fails stops, the others go on. */
  protected publishAll(): void {
    const queues = this.queues;
    for (let i = queues.length - 1; i >= 0; i--) {
      const q = queues[i];
      try {
        q.publish();
      } catch (err) {
        if (err instanceof RingError) this.dropQueue(q, err.message);
        else throw err;
      }
    }
  }

  /**
   * The worker found the kick fd `fd` failing (an error or a short read, POLLERR, POLLHUP,
   * POLLNVAL, or readable after every read): the ring it belongs to stops. Returns false when no
   * ring of this direction uses it.
   */
  kickFault(fd: number, reason: string): boolean {
    const q = this.queues.find((x) => x.kickFd === fd);
    if (!q) return false;
    this.dropQueue(q, `vring ${q.index}: kick fd ${fd} ${reason}`);
    return true;
  }

  /** Whether `fd` is the kick fd of one of this direction's rings. */
  isKickFd(fd: number): boolean {
    return this.queues.some((q) => q.kickFd === fd);
  }

  /** Counts a dropped chain and warns (rate-limited per ring) with the reason. */
  protected badChain(q: GuestQueue, reason: string, count = 1): void {
    this.counters[this.base + Counter.BadChains] += count;
    reportBadChain(this.relay, q.index, reason);
  }

  protected add(counter: Counter, value: number): void {
    this.counters[this.base + counter] += value;
  }
}
