// eventfd helpers over real fds of every kind a hostile front-end could pass as kick or call:
// what the acceptance check says about each, and how reads and writes fail on the wrong kind.
import { closeSync, openSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { NOTIFIER_STUCK, checkNotifierFd, eventfd, eventfdDrain, eventfdRead, eventfdReadNoWait, eventfdWrite } from '../../sys/eventfd.js';
import { close, pipe, setNonBlocking, write } from '../../sys/fd.js';
import { memfdCreate } from '../../sys/memory.js';
import { socketPair } from '../../sys/unix-socket.js';

const opened: number[] = [];
const ours = <T extends number[]>(...fds: T): T => {
  opened.push(...fds);
  return fds;
};

afterEach(() => {
  for (const fd of opened.splice(0)) {
    try {
      close(fd);
    } catch {
      /* closed by the test */
    }
  }
});

describe('checkNotifierFd', () => {
  it('accepts eventfds, blocking or not', () => {
    const [a, b] = ours(eventfd(), eventfd(0, { nonblock: false }));
    expect(checkNotifierFd(a)).toEqual({ ok: true, kind: 'anon_inode:[eventfd]', reason: '' });
    expect(checkNotifierFd(b).ok).toBe(true);
  });

  it('refuses pipes, socketpairs, /dev/null, /dev/full, /dev/zero and memfds, naming what they are', () => {
    const [r, w] = ours(...pipe());
    const [s1, s2] = ours(...socketPair());
    const devNull = openSync('/dev/null', 'r+');
    const devFull = openSync('/dev/full', 'r+');
    const devZero = openSync('/dev/zero', 'r');
    const memfd = ours(memfdCreate('not-a-notifier'))[0];
    try {
      for (const fd of [r, w]) expect(checkNotifierFd(fd)).toMatchObject({ ok: false, kind: expect.stringMatching(/^pipe:/), reason: expect.stringContaining('not an eventfd') });
      for (const fd of [s1, s2]) expect(checkNotifierFd(fd)).toMatchObject({ ok: false, kind: expect.stringMatching(/^socket:/) });
      expect(checkNotifierFd(devNull)).toMatchObject({ ok: false, kind: '/dev/null' });
      expect(checkNotifierFd(devFull)).toMatchObject({ ok: false, kind: '/dev/full' });
      expect(checkNotifierFd(devZero)).toMatchObject({ ok: false, kind: '/dev/zero' });
      expect(checkNotifierFd(memfd)).toMatchObject({ ok: false, kind: expect.stringContaining('memfd:not-a-notifier') });
    } finally {
      closeSync(devNull);
      closeSync(devFull);
      closeSync(devZero);
    }
  });

  it('refuses a semaphore-mode eventfd (a full one would keep a poll() returning)', () => {
    const [fd] = ours(eventfd(5, { semaphore: true }));
    expect(checkNotifierFd(fd)).toMatchObject({ ok: false, reason: expect.stringContaining('semaphore') });
  });

  it('refuses a closed fd number', () => {
    const [fd] = ours(eventfd());
    close(fd);
    expect(checkNotifierFd(fd)).toMatchObject({ ok: false, kind: 'unknown' });
  });
});

describe('eventfd reads and writes on the wrong kind of fd', () => {
  it('a short read (3 bytes in a pipe or a socketpair) throws EIO instead of returning a count', () => {
    const [r, w] = ours(...pipe());
    write(w, new Uint8Array([1, 2, 3]));
    expect(() => eventfdRead(r)).toThrow(expect.objectContaining({ code: 'EIO', syscall: 'read' }));
    const [s1, s2] = ours(...socketPair());
    write(s2, new Uint8Array([1, 2, 3]));
    expect(() => eventfdDrain(s1)).toThrow(expect.objectContaining({ code: 'EIO' }));
  });

  it('end of file (a socket whose peer closed, /dev/null) throws instead of looking like "nothing pending"', () => {
    const [s1, s2] = ours(...socketPair());
    close(s2);
    expect(() => eventfdRead(s1)).toThrow(expect.objectContaining({ code: 'EIO' }));
    const devNull = openSync('/dev/null', 'r+');
    try {
      expect(() => eventfdRead(devNull)).toThrow(expect.objectContaining({ code: 'EIO' }));
    } finally {
      closeSync(devNull);
    }
  });

  it('writes to /dev/full and to a pipe without reader throw with their errno', () => {
    const devFull = openSync('/dev/full', 'r+');
    try {
      expect(() => eventfdWrite(devFull, 1)).toThrow(expect.objectContaining({ code: 'ENOSPC', syscall: 'write' }));
    } finally {
      closeSync(devFull);
    }
    const [r, w] = ours(...pipe());
    close(r);
    expect(() => eventfdWrite(w, 1)).toThrow(expect.objectContaining({ code: 'EPIPE' }));
  });

  it('a saturated eventfd made non-blocking drops the write (false) instead of blocking', () => {
    const [fd] = ours(eventfd(0, { nonblock: false }));
    setNonBlocking(fd, true);
    // 0xfffffffffffffffe, the largest count an eventfd holds, is above 2^53: fill it in halving steps.
    let writes = 0;
    for (let step = 2 ** 53 - 1; step >= 1; step = Math.floor(step / 2)) while (eventfdWrite(fd, step)) writes++;
    expect(writes).toBeGreaterThan(2000);
    expect(eventfdWrite(fd, 1)).toBe(false);
  });
});

describe('eventfdReadNoWait', () => {
  it('never blocks, even on an empty eventfd whose description is blocking', () => {
    const [fd] = ours(eventfd(0, { nonblock: false }));
    expect(eventfdReadNoWait(fd)).toBeNull();
    eventfdWrite(fd, 9);
    expect(eventfdReadNoWait(fd)).toBe(9);
    expect(eventfdReadNoWait(fd)).toBeNull();
  });

  it('drains a full blocking eventfd, which lets a blocked writer go on', () => {
    const [fd] = ours(eventfd(0, { nonblock: false }));
    setNonBlocking(fd, true);
    for (let step = 2 ** 53 - 1; step >= 1; step = Math.floor(step / 2)) while (eventfdWrite(fd, step));
    setNonBlocking(fd, false);
    expect(eventfdReadNoWait(fd)).toBeGreaterThan(2 ** 53);
    expect(eventfdWrite(fd, 1)).toBe(true);
  });
});

describe('eventfdDrain', () => {
  it('reads an eventfd empty and reports how many reads found a count', () => {
    const [fd] = ours(eventfd());
    expect(eventfdDrain(fd)).toBe(0);
    eventfdWrite(fd, 7);
    expect(eventfdDrain(fd)).toBe(1);
    expect(eventfdRead(fd)).toBeNull();
  });

  it('calls an fd that stays readable after every read stuck', () => {
    const [fd] = ours(eventfd(1000, { semaphore: true }));
    expect(eventfdDrain(fd)).toBe(NOTIFIER_STUCK);
  });

  it('an empty non-blocking pipe reads as nothing pending', () => {
    const [r] = ours(...pipe());
    expect(eventfdDrain(r)).toBe(0);
  });
});
