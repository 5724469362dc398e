// systemd readiness (Type=notify): the daemon says READY=1 once its sockets and services are up,
// so units ordered after it (the core scheduler) start against a working daemon. Outside systemd
// NOTIFY_SOCKET is unset and every call is a no-op.
import { unixDatagramSend } from '../sys/unix-socket.js';

/**
 * Sends `state` (e.g. "READY=1", "STOPPING=1", "STATUS=...", several separated by newlines) to
 * $NOTIFY_SOCKET. Returns false when there is no socket to tell; throws when the send fails.
 */
export function notify(state: string, env: NodeJS.ProcessEnv = process.env): boolean {
  const socketPath = env.NOTIFY_SOCKET;
  if (!socketPath) return false;
  if (!socketPath.startsWith('/') && !socketPath.startsWith('@')) {
    throw new Error(`NOTIFY_SOCKET="${socketPath}" is neither an absolute path nor an abstract socket (@name)`);
  }
  try {
    unixDatagramSend(socketPath, Buffer.from(state, 'utf8'));
  } catch (err) {
    throw new Error(`cannot notify systemd through ${socketPath}: ${(err as Error).message}`);
  }
  return true;
}

export const notifyReady = (status?: string, env?: NodeJS.ProcessEnv): boolean =>
  notify(status ? `READY=1\nSTATUS=${status}` : 'READY=1', env);

export const notifyStopping = (env?: NodeJS.ProcessEnv): boolean => notify('STOPPING=1', env);

export const notifyStatus = (status: string, env?: NodeJS.ProcessEnv): boolean => notify(`STATUS=${status}`, env);
