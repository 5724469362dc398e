// Making room for a listening unix socket without destroying anything. bind() needs the path to be
// free, and a socket file left by a process that died keeps it taken; but the path may equally be
// someone's regular file or a socket another process still serves. Only the first case may be
// cleaned up: a socket file that nobody listens on (connect gets ECONNREFUSED).
import { lstatSync, statSync, unlinkSync } from 'node:fs';
import { dirname } from 'node:path';
import { close } from './fd.js';
import { unixConnect } from './unix-socket.js';

/** The longest path a sockaddr_un holds (108 bytes including the terminating NUL). */
export const SOCKET_PATH_MAX = 107;

export class SocketPathError extends Error {
  override name = 'SocketPathError';
}

export type SocketPathState = 'free' | 'stale';

/**
 * Checks that `path` can be bound by a listening socket and says what is there, without
 * changing anything: 'free' (nothing; its directory exists) or 'stale' (a socket file nobody
 * listens on). Throws SocketPathError when the path is too long, its directory is missing, it is
 * not a socket, or a process is listening on it.
 */
export function probeSocketPath(path: string): SocketPathState {
  if (inspectSocketPath(path) === 'absent') return 'free';
  let fd: number;
  try {
    fd = unixConnect(path);
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === 'ECONNREFUSED') return 'stale';
    // EAGAIN: a listener whose backlog is full is still a listener.
    if (code === 'EAGAIN') throw new SocketPathError(`${path} is in use: another process is listening on it`);
    throw new SocketPathError(`${path} is a socket that cannot be probed (${code ?? (err as Error).message})`);
  }
  close(fd);
  throw new SocketPathError(`${path} is in use: another process is listening on it`);
}

/**
 * What a client may check without connecting (a connection would be seen by the server):
 * 'absent' (its directory exists) or 'socket'. Throws SocketPathError for a path that is too long,
 * in a missing directory, or that is something other than a socket.
 */
export function inspectSocketPath(path: string): 'absent' | 'socket' {
  const bytes = Buffer.byteLength(path);
  if (bytes === 0) throw new SocketPathError('the socket path is empty');
  if (bytes > SOCKET_PATH_MAX) throw new SocketPathError(`${path} is ${bytes} bytes; a unix socket path may have at most ${SOCKET_PATH_MAX}`);
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT') throw new SocketPathError(`${path} cannot be examined (${code ?? String(err)})`);
    requireDirectory(dirname(path));
    return 'absent';
  }
  if (!isSocket) throw new SocketPathError(`${path} exists and is not a socket; it is left alone (remove it or choose another path)`);
  return 'socket';
}

/** probeSocketPath, then removes a stale socket file so that bind() can take the path. */
export function claimSocketPath(path: string): SocketPathState {
  const state = probeSocketPath(path);
  if (state === 'stale') {
    try {
      unlinkSync(path);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT') throw new SocketPathError(`${path}: cannot remove the stale socket (${code ?? String(err)})`);
    }
  }
  return state;
}

function requireDirectory(dir: string): void {
  let isDirectory: boolean;
  try {
    isDirectory = statSync(dir).isDirectory();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new SocketPathError(code === 'ENOENT' ? `directory ${dir} does not exist` : `directory ${dir} cannot be examined (${code ?? String(err)})`);
  }
  if (!isDirectory) throw new SocketPathError(`${dir} is not a directory`);
}
