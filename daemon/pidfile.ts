// One daemon per PID directory: `<pidDir>/virtio-forwarder.pid` is held under flock for the life of
// the process and holds its pid. The lock, not the file's existence, decides: a file left by a
// crash is simply taken over, and the kernel drops the lock when the holder dies however it dies.
import { fstatSync, ftruncateSync, readFileSync, statSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { lockFile, type FileLock } from '../sys/file-lock.js';

export const PID_FILE_NAME = 'virtio-forwarder.pid';

export interface PidFile {
  path: string;
  /** Removes the file and drops the lock; safe to call twice. Also done on process exit. */
  release(): void;
}

function isLockedByOther(err: unknown): boolean {
  const code = (err as { code?: string }).code;
  return code === 'EWOULDBLOCK' || code === 'EAGAIN';
}

function runningPid(path: string): string {
  try {
    const text = readFileSync(path, 'utf8').trim();
    return /^\d+$/.test(text) ? text : 'unknown';
  } catch {
    return 'unknown';
  }
}

/** Takes the PID file or throws an Error naming the file and the pid of the instance that holds it. */
export function acquirePidFile(pidDir: string, name = PID_FILE_NAME): PidFile {
  try {
    if (!statSync(pidDir).isDirectory()) throw new Error('not a directory');
  } catch (err) {
    throw new Error(`PID directory ${pidDir} (VIRTIOFWD_PID_DIR) is not usable: ${(err as Error).message}`);
  }
  const path = join(pidDir, name);
  let lock: FileLock;
  // The previous holder unlinks the file before unlocking it; if we locked that unlinked inode,
  // a third instance could lock a new file at the same path, so check and retry.
  for (let attempt = 0; ; attempt++) {
    try {
      lock = lockFile(path);
    } catch (err) {
      if (isLockedByOther(err)) {
        throw new Error(`another virtio-forwarder is running: ${path} is locked by pid ${runningPid(path)}`);
      }
      throw new Error(`cannot lock ${path}: ${(err as Error).message}`);
    }
    let samePath = false;
    try {
      samePath = statSync(path).ino === fstatSync(lock.fd).ino;
    } catch {
      /* the file vanished: retry */
    }
    if (samePath) break;
    lock.release();
    if (attempt >= 10) throw new Error(`cannot lock ${path}: it keeps being replaced by another process`);
  }
  ftruncateSync(lock.fd, 0);
  const text = Buffer.from(`${process.pid}\n`);
  writeSync(lock.fd, text, 0, text.length, 0);

  let released = false;
  const release = (): void => {
    if (released) return;
    released = true;
    process.removeListener('exit', release);
    try {
      unlinkSync(path);
    } catch {
      /* already gone */
    }
    lock.release();
  };
  process.on('exit', release);
  return { path, release };
}
