// eventfd(2): vhost-user kick and call notifications, and the wake-up fd of the Reactor.
import { readFileSync, readlinkSync } from 'node:fs';
import { libc, check, lastErrno, SysError } from './libc.js';
import { nativeBuffer, type NativeBuffer } from './native-buffer.js';

const EFD_SEMAPHORE = 1;
const EFD_CLOEXEC = 0o2000000;
const EFD_NONBLOCK = 0o4000;
const EAGAIN = 11;
const EINTR = 4;

const eventfdNative = libc.func('int eventfd(unsigned int initval, int flags)');
const readNative = libc.func('intptr_t read(int fd, void *buf, size_t count)');
const writeNative = libc.func('intptr_t write(int fd, const void *buf, size_t count)');
const preadv2Native = libc.func('intptr_t preadv2(int fd, intptr_t iov, int iovcnt, int64_t offset, int flags)');
const RWF_NOWAIT = 0x8;
const EOPNOTSUPP = 95;

// One 8-byte counter buffer per thread (each worker loads its own copy of this module), used as two
// u32 halves so the kick/call path never allocates a BigInt.
const counter = new Uint32Array(2);
const TWO_32 = 2 ** 32;
const EVENTFD_LINK = 'anon_inode:[eventfd]';

export function eventfd(initval = 0, opts: { nonblock?: boolean; semaphore?: boolean } = {}): number {
  let flags = EFD_CLOEXEC;
  if (opts.nonblock ?? true) flags |= EFD_NONBLOCK;
  if (opts.semaphore) flags |= EFD_SEMAPHORE;
  return check(eventfdNative(initval >>> 0, flags), 'eventfd');
}

/**
 * Adds `value` to the counter. Returns false when the counter is saturated and the fd is
 * non-blocking (the reader has not drained it; a pending notification is already there).
 * Throws SysError for any other outcome, a short write included (EIO): the fd is not a working
 * eventfd. On a blocking fd a saturated counter blocks: guest-supplied fds are made non-blocking
 * when they are accepted, never written blocking.
 */
export function eventfdWrite(fd: number, value = 1): boolean {
  if (!Number.isSafeInteger(value) || value <= 0) throw new RangeError(`eventfd ${fd}: cannot add ${value}`);
  counter[0] = value >>> 0;
  counter[1] = Math.floor(value / TWO_32);
  for (;;) {
    const n = writeNative(fd, counter, 8) as number;
    if (n === 8) return true;
    const errno = lastErrno();
    if (n < 0 && errno === EAGAIN) return false;
    if (n < 0 && errno === EINTR) continue;
    throw new SysError('write', n < 0 ? errno : 5, `eventfd ${fd}`);
  }
}

/** Reads and resets the counter (or takes 1 in semaphore mode); null when it is zero. */
export function eventfdRead(fd: number): number | null {
  for (;;) {
    const n = readNative(fd, counter, 8) as number;
    if (n === 8) return counter[0] + counter[1] * TWO_32;
    const errno = lastErrno();
    if (n < 0 && errno === EAGAIN) return null;
    if (n < 0 && errno === EINTR) continue;
    throw new SysError('read', n < 0 ? errno : 5, `eventfd ${fd}`);
  }
}

/** One iovec and its 8-byte target per thread, for preadv2 (the kernel follows the pointer). */
let nowaitArea: NativeBuffer | null = null;

/**
 * Like eventfdRead, but never blocks, whatever the fd's O_NONBLOCK: a front-end shares the file
 * description of its kick and call fds with us and can clear that flag at any time, so a read that
 * relies on it could hang a worker (or the main thread). preadv2 with RWF_NOWAIT decides per call.
 * Falls back to a plain read on kernels whose eventfd does not take RWF_NOWAIT.
 */
export function eventfdReadNoWait(fd: number): number | null {
  let area = nowaitArea;
  if (area === null) {
    area = nowaitArea = nativeBuffer(24);
    area.view.setBigUint64(0, BigInt(area.address + 16), true);
    area.view.setBigUint64(8, 8n, true);
  }
  for (;;) {
    const n = preadv2Native(fd, area.address, 1, -1, RWF_NOWAIT) as number;
    if (n === 8) return area.view.getUint32(16, true) + area.view.getUint32(20, true) * TWO_32;
    const errno = lastErrno();
    if (n < 0 && errno === EAGAIN) return null;
    if (n < 0 && errno === EINTR) continue;
    if (n < 0 && errno === EOPNOTSUPP) return eventfdRead(fd);
    throw new SysError('read', n < 0 ? errno : 5, `eventfd ${fd}`);
  }
}

/** What a vhost-user kick or call fd turned out to be, for the check at SET_VRING_KICK/CALL. */
export interface NotifierCheck {
  ok: boolean;
  /** What the fd is, as /proc names it (`anon_inode:[eventfd]`, `pipe:[123]`, `/dev/null`...). */
  kind: string;
  /** Why it is refused; empty when ok. */
  reason: string;
}

/**
 * Whether `fd` is an eventfd that a worker can poll and drain: the only kind of fd a vhost-user
 * front-end may hand over as kick or call. Anything else (pipes, sockets, /dev/null, memfds) reads
 * and writes with other sizes and readiness rules, and one of them must not be able to stall or
 * spin the worker that serves other VMs. A semaphore-mode eventfd is refused too: each read takes
 * only 1 from its counter, so a guest that fills it would keep the worker's poll() returning.
 * (Kernels before 6.4 do not show the mode; the worker's drain catches such an fd at run time.)
 */
export function checkNotifierFd(fd: number): NotifierCheck {
  let kind: string;
  try {
    kind = readlinkSync(`/proc/self/fd/${fd}`);
  } catch (err) {
    return { ok: false, kind: 'unknown', reason: `fd ${fd} cannot be inspected: ${(err as Error).message}` };
  }
  if (kind !== EVENTFD_LINK) return { ok: false, kind, reason: `fd ${fd} is ${kind}, not an eventfd` };
  try {
    if (/^eventfd-semaphore:\s*1\s*$/m.test(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))) {
      return { ok: false, kind, reason: `fd ${fd} is a semaphore-mode eventfd` };
    }
  } catch {
    /* no fdinfo: nothing more to learn */
  }
  return { ok: true, kind, reason: '' };
}

/**
 * Reads a kick eventfd until it is empty, at most a few times. Returns how many reads found a
 * count; NOTIFIER_STUCK when every read found one: a semaphore eventfd, or a writer faster than
 * the reads (a busy guest can be). The caller decides over time which it is. Errors throw SysError (short reads
 * included), like eventfdRead. Never blocks (eventfdReadNoWait).
 */
export function eventfdDrain(fd: number): number {
  for (let i = 0; i < DRAIN_READS; i++) if (eventfdReadNoWait(fd) === null) return i;
  return NOTIFIER_STUCK;
}

/** eventfdDrain's answer for an fd that stays readable after every read. */
export const NOTIFIER_STUCK = -1;
const DRAIN_READS = 4;
