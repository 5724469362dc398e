// Readiness: poll(2) for worker threads that may block, and the Reactor for the main thread, which
// runs epoll_wait on libuv's thread pool (koffi async call) so the event loop never blocks.
import { libc, check, lastErrno, SysError } from './libc.js';
import { close } from './fd.js';
import { eventfd, eventfdRead, eventfdWrite } from './eventfd.js';
import { nativeBuffer, type NativeBuffer } from './native-buffer.js';

export const POLLIN = 0x001;
export const POLLPRI = 0x002;
export const POLLOUT = 0x004;
export const POLLERR = 0x008;
export const POLLHUP = 0x010;
export const POLLNVAL = 0x020;

export const EPOLLIN = 0x001;
export const EPOLLOUT = 0x004;
export const EPOLLERR = 0x008;
export const EPOLLHUP = 0x010;
export const EPOLLRDHUP = 0x2000;

const EINTR = 4;
const EPOLL_CLOEXEC = 0o2000000;
const EPOLL_CTL_ADD = 1;
const EPOLL_CTL_DEL = 2;
const EPOLL_CTL_MOD = 3;
const EPOLL_EVENT_SIZE = 12; // packed on x86-64: u32 events, u64 data
const ENOENT = 2;
const EBADF = 9;
const EEXIST = 17;

const pollNative = libc.func('int poll(void *fds, unsigned long nfds, int timeout)');
const epollCreateNative = libc.func('int epoll_create1(int flags)');
const epollCtlNative = libc.func('int epoll_ctl(int epfd, int op, int fd, void *event)');
const epollWaitNative = libc.func('int epoll_wait(int epfd, intptr_t events, int maxevents, int timeout)');

/**
 * A fixed set of fds polled repeatedly without allocating: build it once, call wait() in the
 * idle path of a worker, read revents(i).
 */
export class PollSet {
  private readonly raw: Int32Array;
  private readonly halves: Int16Array;
  readonly size: number;

  constructor(entries: readonly { fd: number; events: number }[]) {
    this.size = entries.length;
    this.raw = new Int32Array(Math.max(1, entries.length) * 2);
    this.halves = new Int16Array(this.raw.buffer);
    entries.forEach((e, i) => {
      this.raw[2 * i] = e.fd;
      this.halves[4 * i + 2] = e.events;
    });
  }

  /** Returns how many entries are ready (0 on timeout or EINTR); timeoutMs < 0 waits forever. */
  wait(timeoutMs: number): number {
    for (let i = 0; i < this.size; i++) this.halves[4 * i + 3] = 0;
    const n = pollNative(this.raw, this.size, timeoutMs);
    if (n >= 0) return n;
    const errno = lastErrno();
    if (errno === EINTR) return 0;
    throw new SysError('poll', errno, `${this.size} fds`);
  }

  revents(index: number): number {
    return this.halves[4 * index + 3] & 0xffff;
  }
}

/** poll(2) once; returns revents per entry, in order. */
export function pollSync(entries: readonly { fd: number; events: number }[], timeoutMs: number): number[] {
  const set = new PollSet(entries);
  set.wait(timeoutMs);
  const out: number[] = new Array(entries.length);
  for (let i = 0; i < entries.length; i++) out[i] = set.revents(i);
  return out;
}

export type ReadinessCallback = (events: number) => void;

export interface ReactorOptions {
  /** Called when a watch callback throws; by default the error is rethrown outside the reactor. */
  onCallbackError?: (err: unknown, fd: number) => void;
  maxEvents?: number;
}

/**
 * An epoll set serviced on the main thread. Level-triggered: a callback must read until EAGAIN
 * (or unwatch), otherwise it is called again at once.
 */
export class Reactor {
  private readonly epfd: number;
  private readonly wakeFd: number;
  private readonly events: NativeBuffer;
  private readonly maxEvents: number;
  private readonly callbacks = new Map<number, ReadinessCallback>();
  private readonly eventBuffer = new Uint8Array(EPOLL_EVENT_SIZE);
  private readonly eventView = new DataView(this.eventBuffer.buffer);
  private readonly onCallbackError: (err: unknown, fd: number) => void;
  private waiting = false;
  private closed = false;
  private closedPromise: Promise<void> | null = null;
  private resolveClosed: (() => void) | null = null;

  constructor(opts: ReactorOptions = {}) {
    this.maxEvents = opts.maxEvents ?? 64;
    this.onCallbackError =
      opts.onCallbackError ??
      ((err) => {
        process.nextTick(() => {
          throw err;
        });
      });
    this.events = nativeBuffer(this.maxEvents * EPOLL_EVENT_SIZE);
    this.epfd = check(epollCreateNative(EPOLL_CLOEXEC), 'epoll_create1');
    try {
      this.wakeFd = eventfd(0, { nonblock: true });
    } catch (err) {
      close(this.epfd);
      throw err;
    }
    this.control(EPOLL_CTL_ADD, this.wakeFd, EPOLLIN);
  }

  /** Calls `onReadable(events)` whenever `fd` is ready; watching a watched fd replaces its callback and events. */
  watch(fd: number, onReadable: ReadinessCallback, events = EPOLLIN): void {
    if (this.closed) throw new Error(`reactor is closed; cannot watch fd ${fd}`);
    if (fd === this.wakeFd || !Number.isInteger(fd) || fd < 0) throw new RangeError(`reactor: cannot watch fd ${fd}`);
    // The map and the epoll set can disagree when a watched fd was closed without unwatch (epoll
    // drops it) and the number was reused, or when another reference keeps the old file in the set.
    const first = this.callbacks.has(fd) ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (!this.tryControl(first, fd, events)) {
      const errno = lastErrno();
      const second = first === EPOLL_CTL_MOD ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
      const recoverable = (first === EPOLL_CTL_MOD && errno === ENOENT) || (first === EPOLL_CTL_ADD && errno === EEXIST);
      if (!recoverable || !this.tryControl(second, fd, events)) {
        throw new SysError('epoll_ctl', recoverable ? lastErrno() : errno, `${first === EPOLL_CTL_ADD ? 'EPOLL_CTL_ADD' : 'EPOLL_CTL_MOD'} fd ${fd}`);
      }
    }
    this.callbacks.set(fd, onReadable);
    this.arm();
  }

  /** Stops watching `fd` (safe inside a callback, and for an fd that was already closed). */
  unwatch(fd: number): void {
    if (!this.callbacks.delete(fd) || this.closed) return;
    this.eventView.setUint32(0, 0, true);
    if (epollCtlNative(this.epfd, EPOLL_CTL_DEL, fd, this.eventBuffer) < 0) {
      const errno = lastErrno();
      if (errno !== EBADF && errno !== ENOENT) throw new SysError('epoll_ctl', errno, `EPOLL_CTL_DEL fd ${fd}`);
    }
    // Nothing left to wait for: end the pending wait so an idle reactor holds no thread.
    if (this.callbacks.size === 0 && this.waiting) eventfdWrite(this.wakeFd, 1);
  }

  watching(fd: number): boolean {
    return this.callbacks.has(fd);
  }

  /** Ends the pending wait and releases the epoll set; resolves once the wait has returned. */
  close(): Promise<void> {
    if (this.closedPromise) return this.closedPromise;
    this.closed = true;
    this.callbacks.clear();
    this.closedPromise = new Promise((resolve) => {
      this.resolveClosed = resolve;
    });
    if (this.waiting) eventfdWrite(this.wakeFd, 1);
    else this.release();
    return this.closedPromise;
  }

  private release(): void {
    close(this.epfd);
    close(this.wakeFd);
    this.resolveClosed?.();
  }

  private tryControl(op: number, fd: number, events: number): boolean {
    this.eventView.setUint32(0, events >>> 0, true);
    this.eventView.setUint32(4, fd, true);
    this.eventView.setUint32(8, 0, true);
    return epollCtlNative(this.epfd, op, fd, this.eventBuffer) === 0;
  }

  private control(op: number, fd: number, events: number): void {
    if (!this.tryControl(op, fd, events)) throw new SysError('epoll_ctl', lastErrno(), `${op === EPOLL_CTL_ADD ? 'EPOLL_CTL_ADD' : 'EPOLL_CTL_MOD'} fd ${fd}`);
  }

  // Only one epoll_wait is ever in flight; it is re-armed after each batch while fds are watched,
  // so an idle reactor holds no thread-pool thread and does not keep the process alive.
  private arm(): void {
    if (this.waiting || this.closed || this.callbacks.size === 0) return;
    this.waiting = true;
    epollWaitNative.async(this.epfd, this.events.address, this.maxEvents, -1, (err: unknown, n: number) => {
      this.waiting = false;
      if (this.closed) {
        this.release();
        return;
      }
      if (err) {
        this.onCallbackError(err, this.epfd);
        return;
      }
      if (n < 0) {
        const errno = lastErrno();
        if (errno !== EINTR) {
          this.onCallbackError(new SysError('epoll_wait', errno, `epoll fd ${this.epfd}`), this.epfd);
          return;
        }
      }
      this.dispatch(Math.max(0, n));
      this.arm();
    });
  }

  private dispatch(count: number): void {
    const view = this.events.view;
    for (let i = 0; i < count; i++) {
      const events = view.getUint32(i * EPOLL_EVENT_SIZE, true);
      const fd = view.getInt32(i * EPOLL_EVENT_SIZE + 4, true);
      if (fd === this.wakeFd) {
        eventfdRead(this.wakeFd);
        continue;
      }
      if (this.closed) return;
      const callback = this.callbacks.get(fd);
      if (!callback) continue;
      try {
        callback(events);
      } catch (err) {
        this.onCallbackError(err, fd);
      }
    }
  }
}
