import { describe, it, expect } from 'vitest';
import { close, readInto, write, setNonBlocking, isNonBlocking, setCloexec, isCloexec, dup } from '../../sys/fd.js';
import { socketPair } from '../../sys/unix-socket.js';
import { eventfd, eventfdRead, eventfdWrite } from '../../sys/eventfd.js';

describe('fd', () => {
  it('writes until the socket is full (null), reads back, and reports EOF as 0', () => {
    const [a, b] = socketPair();
    try {
      const chunk = new Uint8Array(65536).fill(7);
      let total = 0;
      for (let n = write(a, chunk); n !== null; n = write(a, chunk)) total += n;
      expect(total).toBeGreaterThan(0);
      const into = new Uint8Array(65536);
      let read = 0;
      for (let n = readInto(b, into); n !== null && n > 0; n = readInto(b, into)) read += n;
      expect(read).toBe(total);
      expect(readInto(b, into)).toBeNull();
      close(a);
      expect(readInto(b, into)).toBe(0);
    } finally {
      close(b);
    }
  });

  it('toggles O_NONBLOCK and FD_CLOEXEC', () => {
    const [a, b] = socketPair();
    try {
      setNonBlocking(a, false);
      expect(isNonBlocking(a)).toBe(false);
      setNonBlocking(a, true);
      expect(isNonBlocking(a)).toBe(true);
      setCloexec(a);
      expect(isCloexec(a)).toBe(true);
    } finally {
      close(a);
      close(b);
    }
  });

  it('duplicates an fd into a close-on-exec copy of the same object', () => {
    const fd = eventfd();
    const copy = dup(fd);
    try {
      expect(copy).not.toBe(fd);
      expect(isCloexec(copy)).toBe(true);
      eventfdWrite(fd, 3);
      expect(eventfdRead(copy)).toBe(3);
    } finally {
      close(fd);
      close(copy);
    }
  });

  it('names the fd and errno when an operation fails', () => {
    expect(() => close(9999)).toThrow(expect.objectContaining({ syscall: 'close', code: 'EBADF', message: expect.stringContaining('fd 9999') }));
    expect(() => readInto(9999, new Uint8Array(1))).toThrow(expect.objectContaining({ code: 'EBADF' }));
    expect(() => write(9999, new Uint8Array(1))).toThrow(expect.objectContaining({ code: 'EBADF' }));
    expect(() => dup(9999)).toThrow(expect.objectContaining({ syscall: 'fcntl', code: 'EBADF' }));
    expect(() => setNonBlocking(9999, true)).toThrow(expect.objectContaining({ code: 'EBADF' }));
  });
});
