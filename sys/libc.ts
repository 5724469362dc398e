// The one place libc is loaded. Every binding in sys/ declares its functions against `libc`
// and turns a -1 return into a SysError carrying the errno name, so callers can test `err.code`.
import koffi from 'koffi';
import { constants } from 'node:os';

export const libc = koffi.load('libc.so.6');

const errnoNames = new Map<number, string>();
// Aliases share a number (EWOULDBLOCK = EAGAIN, ENOTSUP = EOPNOTSUPP); the first, canonical name wins.
for (const [name, value] of Object.entries(constants.errno)) if (!errnoNames.has(value as number)) errnoNames.set(value as number, name);

export function errnoName(errno: number): string {
  return errnoNames.get(errno) ?? `E${errno}`;
}

export class SysError extends Error {
  readonly errno: number;
  readonly code: string;
  readonly syscall: string;

  constructor(syscall: string, errno: number, detail?: string) {
    const code = errnoName(errno);
    super(`${syscall}${detail ? ` (${detail})` : ''} failed: ${code}`);
    this.name = 'SysError';
    this.errno = errno;
    this.code = code;
    this.syscall = syscall;
  }
}

/** The errno of the last failed call made through koffi on this thread. */
export function lastErrno(): number {
  return koffi.errno();
}

/** Throws a SysError when a libc call returned a negative value. */
export function check(ret: number, syscall: string, detail?: string): number {
  if (ret < 0) throw new SysError(syscall, koffi.errno(), detail);
  return ret;
}

export { koffi };
