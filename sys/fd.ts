// Plain file-descriptor operations for fds Node does not manage itself (sockets from unix-socket.ts,
// eventfds, packet sockets). Non-blocking reads and writes report EAGAIN as null so callers can
// drain until empty without exceptions on the normal path.
import { libc, check, lastErrno, SysError } from './libc.js';

const EAGAIN = 11;
const EINTR = 4;

const F_DUPFD_CLOEXEC = 1030;
const F_GETFD = 1;
const F_SETFD = 2;
const F_GETFL = 3;
const F_SETFL = 4;
const FD_CLOEXEC = 1;
const O_NONBLOCK = 0o4000;

const closeNative = libc.func('int close(int fd)');
const readNative = libc.func('intptr_t read(int fd, void *buf, size_t count)');
const writeNative = libc.func('intptr_t write(int fd, const void *buf, size_t count)');
// fcntl is variadic; every command used here takes an int (or nothing), which this fixed
// prototype passes the same way on x86-64 and aarch64.
const fcntlNative = libc.func('int fcntl(int fd, int cmd, ...)');
const pipe2Native = libc.func('int pipe2(_Out_ int *fds, int flags)');
const O_CLOEXEC = 0o2000000;

function fcntl(fd: number, cmd: number, arg: number, what: string): number {
  return check(fcntlNative(fd, cmd, 'int', arg), 'fcntl', `${what} on fd ${fd}`);
}

export function close(fd: number): void {
  // Linux releases the descriptor even when close reports EINTR, so a retry could close a reused fd.
  const ret = closeNative(fd);
  if (ret < 0) {
    const errno = lastErrno();
    if (errno !== EINTR) throw new SysError('close', errno, `fd ${fd}`);
  }
}

/** Reads into `into`; returns the byte count, 0 at end of file, or null when nothing is available yet. */
export function readInto(fd: number, into: Uint8Array): number | null {
  for (;;) {
    const n = readNative(fd, into, into.byteLength) as number;
    if (n >= 0) return n;
    const errno = lastErrno();
    if (errno === EAGAIN) return null;
    if (errno !== EINTR) throw new SysError('read', errno, `fd ${fd}`);
  }
}

/** Writes `bytes`; returns how many were written, or null when the fd would block. */
export function write(fd: number, bytes: Uint8Array): number | null {
  for (;;) {
    const n = writeNative(fd, bytes, bytes.byteLength) as number;
    if (n >= 0) return n;
    const errno = lastErrno();
    if (errno === EAGAIN) return null;
    if (errno !== EINTR) throw new SysError('write', errno, `fd ${fd}`);
  }
}

export function setNonBlocking(fd: number, on: boolean): void {
  const flags = fcntl(fd, F_GETFL, 0, 'F_GETFL');
  const wanted = on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK;
  if (wanted !== flags) fcntl(fd, F_SETFL, wanted, 'F_SETFL');
}

export function isNonBlocking(fd: number): boolean {
  return (fcntl(fd, F_GETFL, 0, 'F_GETFL') & O_NONBLOCK) !== 0;
}

export function setCloexec(fd: number): void {
  const flags = fcntl(fd, F_GETFD, 0, 'F_GETFD');
  if ((flags & FD_CLOEXEC) === 0) fcntl(fd, F_SETFD, flags | FD_CLOEXEC, 'F_SETFD');
}

export function isCloexec(fd: number): boolean {
  return (fcntl(fd, F_GETFD, 0, 'F_GETFD') & FD_CLOEXEC) !== 0;
}

/** Duplicates `fd`; the copy is close-on-exec so it never leaks into child processes. */
export function dup(fd: number): number {
  return fcntl(fd, F_DUPFD_CLOEXEC, 0, 'F_DUPFD_CLOEXEC');
}

/** A close-on-exec pipe: [read end, write end]; non-blocking on both ends unless `nonblock` is false. */
export function pipe(opts: { nonblock?: boolean } = {}): [number, number] {
  const fds = [0, 0];
  check(pipe2Native(fds, O_CLOEXEC | ((opts.nonblock ?? true) ? O_NONBLOCK : 0)), 'pipe2');
  return [fds[0], fds[1]];
}
