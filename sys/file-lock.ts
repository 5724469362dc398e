// An exclusive advisory lock on a file (flock), held for the life of the process: one daemon per
// pid/lock file.
import { openSync, closeSync, constants } from 'node:fs';
import { libc, check } from './libc.js';

const LOCK_EX = 2;
const LOCK_NB = 4;
const LOCK_UN = 8;

const flockNative = libc.func('int flock(int fd, int operation)');

export interface FileLock {
  fd: number;
  release(): void;
}

/** Takes the lock or throws SysError EWOULDBLOCK (code 'EAGAIN' on Linux) when another holder has it. */
export function lockFile(path: string): FileLock {
  const fd = openSync(path, constants.O_RDWR | constants.O_CREAT, 0o644); // libuv opens with O_CLOEXEC
  try {
    check(flockNative(fd, LOCK_EX | LOCK_NB), 'flock', `${path} (held by another process?)`);
  } catch (err) {
    closeSync(fd);
    throw err;
  }
  let held = true;
  return {
    fd,
    release() {
      if (!held) return;
      held = false;
      flockNative(fd, LOCK_UN);
      closeSync(fd);
    },
  };
}
