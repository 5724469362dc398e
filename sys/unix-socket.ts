// Unix domain sockets with fd passing (SCM_RIGHTS): the vhost-user control channel and sd_notify.
// Every socket is non-blocking and close-on-exec. receiveMessage never reads past `maxBytes`, so a
// caller reading a fixed header and then its payload keeps each fd with the message it came with.
import { libc, check, lastErrno, SysError } from './libc.js';
import { close } from './fd.js';
import { nativeBuffer, type NativeBuffer } from './native-buffer.js';

const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_DGRAM = 2;
const SOCK_SEQPACKET = 5;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const MSG_CTRUNC = 0x8;
const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000;
const MSG_CMSG_CLOEXEC = 0x40000000;
const EAGAIN = 11;
const EINTR = 4;

const SUN_PATH_MAX = 108;
const SOCKADDR_UN_SIZE = 110;
const MSGHDR_SIZE = 56;
const IOVEC_SIZE = 16;
const CMSG_HEADER = 16;
/** The most fds one message may carry (SCM_MAX_FD in the kernel is 253). */
export const MAX_FDS_PER_MESSAGE = 253;

const socketNative = libc.func('int socket(int domain, int type, int protocol)');
const socketpairNative = libc.func('int socketpair(int domain, int type, int protocol, int *sv)');
const bindNative = libc.func('int bind(int fd, const void *addr, uint32_t addrlen)');
const listenNative = libc.func('int listen(int fd, int backlog)');
const connectNative = libc.func('int connect(int fd, const void *addr, uint32_t addrlen)');
const accept4Native = libc.func('int accept4(int fd, void *addr, void *addrlen, int flags)');
const sendmsgNative = libc.func('intptr_t sendmsg(int fd, intptr_t msg, int flags)');
const recvmsgNative = libc.func('intptr_t recvmsg(int fd, intptr_t msg, int flags)');
const sendtoNative = libc.func('intptr_t sendto(int fd, const void *buf, size_t len, int flags, const void *addr, uint32_t addrlen)');

const align8 = (n: number) => (n + 7) & ~7;
const cmsgSpace = (dataBytes: number) => CMSG_HEADER + align8(dataBytes);

/** Encodes a socket path; a leading '@' names the abstract namespace. Returns the address length. */
function encodeAddress(path: string, into: Uint8Array): number {
  if (path.length === 0) throw new SysError('sockaddr_un', 22, 'empty socket path');
  const abstract = path.startsWith('@');
  const name = Buffer.from(abstract ? path.slice(1) : path, 'utf8');
  const room = SUN_PATH_MAX - 1; // an abstract name starts with a NUL, a path ends with one
  if (name.length > room) throw new SysError('sockaddr_un', 36, `socket path ${path} is ${name.length} bytes, the limit is ${room}`);
  into.fill(0, 0, SOCKADDR_UN_SIZE);
  into[0] = AF_UNIX & 0xff;
  into[1] = AF_UNIX >> 8;
  into.set(name, abstract ? 3 : 2);
  return abstract ? 2 + 1 + name.length : 2 + name.length + 1;
}

const addressBuffer = new Uint8Array(SOCKADDR_UN_SIZE);

function newSocket(type: number): number {
  return check(socketNative(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), 'socket', 'AF_UNIX');
}

/** Stream sockets by default; `seqpacket` keeps message boundaries (memif's control channel). */
export interface UnixSocketOptions {
  seqpacket?: boolean;
}

/** A listening socket at `path` (the caller removes a stale file first and applies mode/owner). */
export function unixListen(path: string, backlog = 1, opts: UnixSocketOptions = {}): number {
  const fd = newSocket(opts.seqpacket ? SOCK_SEQPACKET : SOCK_STREAM);
  try {
    const len = encodeAddress(path, addressBuffer);
    check(bindNative(fd, addressBuffer, len), 'bind', path);
    check(listenNative(fd, backlog), 'listen', path);
    return fd;
  } catch (err) {
    close(fd);
    throw err;
  }
}

/** Accepts one pending connection (non-blocking, cloexec), or null when none is waiting. */
export function unixAccept(fd: number): number | null {
  for (;;) {
    const conn = accept4Native(fd, null, null, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (conn >= 0) return conn;
    const errno = lastErrno();
    if (errno === EAGAIN) return null;
    if (errno !== EINTR) throw new SysError('accept4', errno, `listening fd ${fd}`);
  }
}

/**
 * Connects to `path`. Throws SysError ENOENT (no socket file), ECONNREFUSED (nobody listening)
 * or EAGAIN (the listener's backlog is full); callers retry on a timer.
 */
export function unixConnect(path: string, opts: UnixSocketOptions = {}): number {
  const fd = newSocket(opts.seqpacket ? SOCK_SEQPACKET : SOCK_STREAM);
  try {
    const len = encodeAddress(path, addressBuffer);
    for (;;) {
      if (connectNative(fd, addressBuffer, len) === 0) return fd;
      const errno = lastErrno();
      if (errno !== EINTR) throw new SysError('connect', errno, path);
    }
  } catch (err) {
    close(fd);
    throw err;
  }
}

export function socketPair(opts: UnixSocketOptions = {}): [number, number] {
  const fds = new Int32Array(2);
  const type = opts.seqpacket ? SOCK_SEQPACKET : SOCK_STREAM;
  check(socketpairNative(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds), 'socketpair', `AF_UNIX ${opts.seqpacket ? 'seqpacket' : 'stream'}`);
  return [fds[0], fds[1]];
}

/** Sends one datagram to `path` (sd_notify's NOTIFY_SOCKET; '@' = abstract namespace). */
export function unixDatagramSend(path: string, bytes: Uint8Array): number {
  const fd = newSocket(SOCK_DGRAM);
  try {
    const address = new Uint8Array(SOCKADDR_UN_SIZE);
    const len = encodeAddress(path, address);
    for (;;) {
      const n = sendtoNative(fd, bytes, bytes.byteLength, MSG_NOSIGNAL, address, len) as number;
      if (n >= 0) return n;
      const errno = lastErrno();
      if (errno !== EINTR) throw new SysError('sendto', errno, path);
    }
  } finally {
    close(fd);
  }
}

/** A bound datagram socket at `path`, read with fd.readInto (one datagram per read). */
export function unixDatagramListen(path: string): number {
  const fd = newSocket(SOCK_DGRAM);
  try {
    const len = encodeAddress(path, addressBuffer);
    check(bindNative(fd, addressBuffer, len), 'bind', path);
    return fd;
  } catch (err) {
    close(fd);
    throw err;
  }
}

// msghdr, iovec, control area and data live in one native buffer per thread, grown on demand:
// [0, 56) msghdr, [56, 72) iovec, [72, 72 + control) control, then the data.
const MSGHDR_AT = 0;
const IOVEC_AT = MSGHDR_SIZE;
const CONTROL_AT = IOVEC_AT + IOVEC_SIZE;
let scratch: NativeBuffer | null = null;

function scratchFor(controlBytes: number, dataBytes: number): { buf: NativeBuffer; dataAt: number } {
  const dataAt = align8(CONTROL_AT + controlBytes);
  const needed = dataAt + dataBytes;
  if (!scratch || scratch.length < needed) scratch = nativeBuffer(Math.max(needed, 64 * 1024));
  return { buf: scratch, dataAt };
}

function writeMsghdr(buf: NativeBuffer, dataAt: number, dataBytes: number, controlBytes: number): void {
  const v = buf.view;
  const base = buf.address;
  v.setBigUint64(MSGHDR_AT + 0, 0n, true); // msg_name
  v.setUint32(MSGHDR_AT + 8, 0, true); // msg_namelen
  v.setUint32(MSGHDR_AT + 12, 0, true);
  v.setBigUint64(MSGHDR_AT + 16, BigInt(base + IOVEC_AT), true); // msg_iov
  v.setBigUint64(MSGHDR_AT + 24, 1n, true); // msg_iovlen
  v.setBigUint64(MSGHDR_AT + 32, controlBytes > 0 ? BigInt(base + CONTROL_AT) : 0n, true); // msg_control
  v.setBigUint64(MSGHDR_AT + 40, BigInt(controlBytes), true); // msg_controllen
  v.setUint32(MSGHDR_AT + 48, 0, true); // msg_flags
  v.setBigUint64(IOVEC_AT + 0, BigInt(base + dataAt), true);
  v.setBigUint64(IOVEC_AT + 8, BigInt(dataBytes), true);
}

/**
 * Sends `bytes` with `fds` attached (SCM_RIGHTS). Returns the number of bytes sent (the fds go
 * with the first byte), or null when the socket buffer is full and nothing was sent.
 */
export function sendMessage(fd: number, bytes: Uint8Array, fds: readonly number[] = []): number | null {
  if (bytes.byteLength === 0) throw new RangeError(`sendMessage on fd ${fd}: a message needs at least one byte to carry fds`);
  if (fds.length > MAX_FDS_PER_MESSAGE) throw new RangeError(`sendMessage on fd ${fd}: ${fds.length} fds, the limit is ${MAX_FDS_PER_MESSAGE}`);
  const controlBytes = fds.length > 0 ? cmsgSpace(4 * fds.length) : 0;
  const { buf, dataAt } = scratchFor(controlBytes, bytes.byteLength);
  writeMsghdr(buf, dataAt, bytes.byteLength, controlBytes);
  if (fds.length > 0) {
    const v = buf.view;
    v.setBigUint64(CONTROL_AT + 0, BigInt(CMSG_HEADER + 4 * fds.length), true); // cmsg_len
    v.setInt32(CONTROL_AT + 8, SOL_SOCKET, true);
    v.setInt32(CONTROL_AT + 12, SCM_RIGHTS, true);
    fds.forEach((f, i) => v.setInt32(CONTROL_AT + CMSG_HEADER + 4 * i, f, true));
  }
  buf.bytes.set(bytes, dataAt);
  for (;;) {
    const n = sendmsgNative(fd, buf.address + MSGHDR_AT, MSG_NOSIGNAL | MSG_DONTWAIT) as number;
    if (n >= 0) return n;
    const errno = lastErrno();
    if (errno === EAGAIN) return null;
    if (errno !== EINTR) throw new SysError('sendmsg', errno, `fd ${fd}, ${bytes.byteLength} bytes, ${fds.length} fds`);
  }
}

export interface ReceivedMessage {
  /** At most maxBytes; empty when the peer closed the connection. */
  bytes: Uint8Array;
  /** Received fds, close-on-exec, owned by the caller. */
  fds: number[];
  /** The peer attached more fds than maxFds: the message is unusable and the fds that did arrive were closed. */
  controlTruncated: boolean;
}

/** Receives at most `maxBytes` and the fds that came with them; null when nothing is available. */
export function receiveMessage(fd: number, maxBytes: number, maxFds = 32): ReceivedMessage | null {
  if (!Number.isSafeInteger(maxBytes) || maxBytes <= 0) throw new RangeError(`receiveMessage on fd ${fd}: bad maxBytes ${maxBytes}`);
  if (!Number.isInteger(maxFds) || maxFds < 0 || maxFds > MAX_FDS_PER_MESSAGE) throw new RangeError(`receiveMessage on fd ${fd}: bad maxFds ${maxFds}`);
  const controlBytes = maxFds > 0 ? cmsgSpace(4 * maxFds) : 0;
  const { buf, dataAt } = scratchFor(controlBytes, maxBytes);
  writeMsghdr(buf, dataAt, maxBytes, controlBytes);
  let n: number;
  for (;;) {
    n = recvmsgNative(fd, buf.address + MSGHDR_AT, MSG_CMSG_CLOEXEC | MSG_DONTWAIT) as number;
    if (n >= 0) break;
    const errno = lastErrno();
    if (errno === EAGAIN) return null;
    if (errno !== EINTR) throw new SysError('recvmsg', errno, `fd ${fd}`);
  }
  const v = buf.view;
  const flags = v.getInt32(MSGHDR_AT + 48, true);
  const controlLength = Number(v.getBigUint64(MSGHDR_AT + 40, true));
  const fds: number[] = [];
  let at = 0;
  while (at + CMSG_HEADER <= controlLength) {
    const cmsgLen = Number(v.getBigUint64(CONTROL_AT + at, true));
    if (cmsgLen < CMSG_HEADER || at + cmsgLen > controlLength) break;
    const level = v.getInt32(CONTROL_AT + at + 8, true);
    const type = v.getInt32(CONTROL_AT + at + 12, true);
    if (level === SOL_SOCKET && type === SCM_RIGHTS) {
      const count = (cmsgLen - CMSG_HEADER) >> 2;
      for (let i = 0; i < count; i++) fds.push(v.getInt32(CONTROL_AT + at + CMSG_HEADER + 4 * i, true));
    }
    at += align8(cmsgLen);
  }
  const bytes = buf.bytes.slice(dataAt, dataAt + n);
  if (flags & MSG_CTRUNC) {
    for (const f of fds) close(f);
    return { bytes, fds: [], controlTruncated: true };
  }
  return { bytes, fds, controlTruncated: false };
}
