import { describe, it, expect, afterEach } from 'vitest';
import { readdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  socketPair, sendMessage, receiveMessage, unixListen, unixAccept, unixConnect, unixDatagramSend, unixDatagramListen,
} from '../../sys/unix-socket.js';
import { close, readInto, write, isCloexec, isNonBlocking } from '../../sys/fd.js';
import { memfdCreate, ftruncate, mmap, munmap, PROT_READ, PROT_WRITE, MAP_SHARED } from '../../sys/memory.js';
import { eventfd, eventfdRead, eventfdWrite } from '../../sys/eventfd.js';
import { SysError } from '../../sys/libc.js';

const openFds = () => readdirSync('/proc/self/fd').length;
const toClose: number[] = [];
const track = <T extends number>(fd: T): T => {
  toClose.push(fd);
  return fd;
};
afterEach(() => {
  for (const fd of toClose.splice(0)) {
    try {
      close(fd);
    } catch {
      /* already closed by the test */
    }
  }
});

describe('unix sockets with fd passing', () => {
  it('creates non-blocking, close-on-exec socket pairs', () => {
    const [a, b] = socketPair().map(track);
    for (const fd of [a, b]) {
      expect(isNonBlocking(fd)).toBe(true);
      expect(isCloexec(fd)).toBe(true);
    }
  });

  it('passes a memfd and an eventfd that work on the receiving side', () => {
    const [a, b] = socketPair().map(track);
    const mem = track(memfdCreate('sys-test'));
    ftruncate(mem, 4096);
    const kick = track(eventfd());
    expect(sendMessage(a, new TextEncoder().encode('memory+kick'), [mem, kick])).toBe(11);

    const got = receiveMessage(b, 64);
    expect(got).not.toBeNull();
    expect(new TextDecoder().decode(got!.bytes)).toBe('memory+kick');
    expect(got!.controlTruncated).toBe(false);
    expect(got!.fds).toHaveLength(2);
    got!.fds.forEach(track);
    const [memCopy, kickCopy] = got!.fds;
    expect(memCopy).not.toBe(mem);
    expect(isCloexec(memCopy)).toBe(true);

    const sender = mmap({ length: 4096, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED, fd: mem });
    const receiver = mmap({ length: 4096, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED, fd: memCopy });
    new Uint8Array(sender.buffer).set([0xde, 0xad, 0xbe, 0xef], 100);
    expect([...new Uint8Array(receiver.buffer, 100, 4)]).toEqual([0xde, 0xad, 0xbe, 0xef]);
    munmap(sender);
    munmap(receiver);

    eventfdWrite(kick, 5);
    expect(eventfdRead(kickCopy)).toBe(5);
  });

  it('keeps the fds with the message when it is read as header then payload', () => {
    const [a, b] = socketPair().map(track);
    const first = track(eventfd());
    const second = track(eventfd());
    const message = (id: number, payloadLength: number) => {
      const m = new Uint8Array(12 + payloadLength);
      new DataView(m.buffer).setUint32(0, id, true);
      new DataView(m.buffer).setUint32(8, payloadLength, true);
      m.fill(id, 12);
      return m;
    };
    sendMessage(a, message(1, 8), [first]);
    sendMessage(a, message(2, 4), [second]);

    const header1 = receiveMessage(b, 12)!;
    expect(header1.bytes.length).toBe(12);
    expect(header1.fds).toHaveLength(1);
    header1.fds.forEach(track);
    const payload1 = receiveMessage(b, new DataView(header1.bytes.buffer).getUint32(8, true))!;
    expect([...payload1.bytes]).toEqual(new Array(8).fill(1));
    expect(payload1.fds).toEqual([]);

    const header2 = receiveMessage(b, 12)!;
    expect(new DataView(header2.bytes.buffer).getUint32(0, true)).toBe(2);
    expect(header2.fds).toHaveLength(1);
    header2.fds.forEach(track);
    eventfdWrite(second, 7);
    expect(eventfdRead(header2.fds[0])).toBe(7);
    expect([...receiveMessage(b, 4)!.bytes]).toEqual([2, 2, 2, 2]);
    expect(receiveMessage(b, 12)).toBeNull();
  });

  it('reports MSG_CTRUNC when more fds arrive than maxFds, and closes the ones that did', () => {
    const [a, b] = socketPair().map(track);
    const fds = Array.from({ length: 6 }, () => track(eventfd()));
    const before = openFds();
    sendMessage(a, new Uint8Array([1, 2, 3]), fds);
    const got = receiveMessage(b, 3, 2)!;
    expect(got.controlTruncated).toBe(true);
    expect(got.fds).toEqual([]);
    expect([...got.bytes]).toEqual([1, 2, 3]);
    expect(openFds()).toBe(before);
  });

  it('returns null on EAGAIN and an empty message when the peer has closed', () => {
    const [a, b] = socketPair();
    track(b);
    expect(receiveMessage(b, 12)).toBeNull();
    close(a);
    const eof = receiveMessage(b, 12)!;
    expect(eof.bytes.length).toBe(0);
    expect(eof.fds).toEqual([]);
  });

  it('refuses bad sizes and closed sockets with errors that say so', () => {
    const [a] = socketPair().map(track);
    expect(() => receiveMessage(a, 0)).toThrow(RangeError);
    expect(() => receiveMessage(a, 12, 1000)).toThrow(RangeError);
    expect(() => sendMessage(a, new Uint8Array(0), [])).toThrow(RangeError);
    const [c, d] = socketPair();
    close(d);
    const err = (() => {
      try {
        sendMessage(c, new Uint8Array([1]));
      } catch (e) {
        return e as SysError;
      } finally {
        close(c);
      }
    })();
    expect(err).toBeInstanceOf(SysError);
    expect(err!.code).toBe('EPIPE');
    expect(() => receiveMessage(9999, 12)).toThrow(/recvmsg \(fd 9999\) failed: EBADF/);
  });

  it('listens, accepts and connects on a path and in the abstract namespace', () => {
    const dir = mkdtempSync(join(tmpdir(), 'sys-sock-'));
    try {
      for (const path of [join(dir, 'vhost.sock'), `@vio4wd-test-${process.pid}`]) {
        const listener = track(unixListen(path, 4));
        expect(unixAccept(listener)).toBeNull();
        const client = track(unixConnect(path));
        const server = track(unixAccept(listener)!);
        expect(isNonBlocking(server)).toBe(true);
        expect(write(client, new Uint8Array([42]))).toBe(1);
        const buf = new Uint8Array(4);
        expect(readInto(server, buf)).toBe(1);
        expect(buf[0]).toBe(42);
        expect(readInto(server, buf)).toBeNull();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('names the reason a connect fails', () => {
    const dir = mkdtempSync(join(tmpdir(), 'sys-sock-'));
    try {
      const missing = join(dir, 'missing.sock');
      expect(() => unixConnect(missing)).toThrow(expect.objectContaining({ code: 'ENOENT', syscall: 'connect' }));
      const path = join(dir, 'stale.sock');
      close(unixListen(path));
      expect(() => unixConnect(path)).toThrow(expect.objectContaining({ code: 'ECONNREFUSED' }));
      expect(() => unixListen(join(dir, 'x'.repeat(120)))).toThrow(/limit is 107/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('sends datagrams for sd_notify, to a path and to an abstract name', () => {
    const dir = mkdtempSync(join(tmpdir(), 'sys-sock-'));
    try {
      for (const path of [join(dir, 'notify'), `@vio4wd-notify-${process.pid}`]) {
        const receiver = track(unixDatagramListen(path));
        expect(unixDatagramSend(path, new TextEncoder().encode('READY=1'))).toBe(7);
        const buf = new Uint8Array(64);
        const n = readInto(receiver, buf)!;
        expect(new TextDecoder().decode(buf.subarray(0, n))).toBe('READY=1');
      }
      expect(() => unixDatagramSend(join(dir, 'nobody'), new Uint8Array([1]))).toThrow(expect.objectContaining({ code: 'ENOENT' }));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
