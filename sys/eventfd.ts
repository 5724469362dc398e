// eventfd(2): vhost-user kick and call notifications, and the wake-up fd of the Reactor.
import { libc, check, lastErrno, SysError } from './libc.js';

const EFD_SEMAPHORE = 1;
const EFD_CLOEXEC = 0o2000000;
const EFD_NONBLOCK = 0o4000;
const EAGAIN = 11;
const EINTR = 4;

const eventfdNative = libc.func('int eventfd(unsigned int initval, int flags)');
const readNative = libc.func('intptr_t read(int fd, void *buf, size_t count)');
const writeNative = libc.func('intptr_t write(int fd, const void *buf, size_t count)');

// One 8-byte counter buffer per thread (each worker loads its own copy of this module), used as two
// u32 halves so the kick/call path never allocates a BigInt.
const counter = new Uint32Array(2);
const TWO_32 = 2 ** 32;

export function eventfd(initval = 0, opts: { nonblock?: boolean; semaphore?: boolean } = {}): number {
  let flags = EFD_CLOEXEC;
  if (opts.nonblock ?? true) flags |= EFD_NONBLOCK;
  if (opts.semaphore) flags |= EFD_SEMAPHORE;
  return check(eventfdNative(initval >>> 0, flags), 'eventfd');
}

/**
 * Adds `value` to the counter. Returns false when the counter is saturated and the fd is
 * non-blocking (the reader has not drained it; a pending notification is already there).
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
