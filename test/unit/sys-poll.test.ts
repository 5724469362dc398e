import { describe, it, expect, afterEach } from 'vitest';
import { eventfd, eventfdRead, eventfdWrite } from '../../sys/eventfd.js';
import { Reactor, pollSync, PollSet, POLLIN, POLLOUT, POLLHUP, EPOLLIN, EPOLLOUT } from '../../sys/poll.js';
import { socketPair, sendMessage, receiveMessage } from '../../sys/unix-socket.js';
import { close, isNonBlocking } from '../../sys/fd.js';

const toClose: number[] = [];
const track = (fd: number) => {
  toClose.push(fd);
  return fd;
};
afterEach(() => {
  for (const fd of toClose.splice(0)) {
    try {
      close(fd);
    } catch {
      /* closed by the test */
    }
  }
});

const nextTurn = () => new Promise<void>((r) => setTimeout(r, 20));

describe('eventfd', () => {
  it('adds writes up and resets on read; null when empty', () => {
    const fd = track(eventfd());
    expect(isNonBlocking(fd)).toBe(true);
    expect(eventfdRead(fd)).toBeNull();
    eventfdWrite(fd);
    eventfdWrite(fd, 41);
    expect(eventfdRead(fd)).toBe(42);
    expect(eventfdRead(fd)).toBeNull();
    eventfdWrite(fd, 2 ** 40 + 5); // both 32-bit halves of the counter
    expect(eventfdRead(fd)).toBe(2 ** 40 + 5);
  });

  it('starts from initval and counts down by one in semaphore mode', () => {
    const fd = track(eventfd(3, { semaphore: true }));
    expect([eventfdRead(fd), eventfdRead(fd), eventfdRead(fd), eventfdRead(fd)]).toEqual([1, 1, 1, null]);
  });

  it('reports a saturated counter as false instead of throwing', () => {
    const fd = track(eventfd());
    expect(eventfdWrite(fd, Number.MAX_SAFE_INTEGER)).toBe(true);
    // the counter holds at most 2^64 - 2; one more MAX_SAFE_INTEGER still fits, then it saturates
    let accepted = 0;
    for (let i = 0; i < 3000; i++) if (eventfdWrite(fd, Number.MAX_SAFE_INTEGER)) accepted++;
    expect(accepted).toBeLessThan(3000);
    expect(() => eventfdWrite(fd, 0)).toThrow(RangeError);
    expect(() => eventfdWrite(fd, -1)).toThrow(RangeError);
  });

  it('throws a SysError naming the fd for a bad descriptor', () => {
    expect(() => eventfdRead(9999)).toThrow(expect.objectContaining({ code: 'EBADF', message: expect.stringContaining('eventfd 9999') }));
  });
});

describe('pollSync and PollSet', () => {
  it('times out with no events, then reports readability per entry', () => {
    const quiet = track(eventfd());
    const busy = track(eventfd());
    expect(pollSync([{ fd: quiet, events: POLLIN }, { fd: busy, events: POLLIN }], 10)).toEqual([0, 0]);
    eventfdWrite(busy);
    expect(pollSync([{ fd: quiet, events: POLLIN }, { fd: busy, events: POLLIN }], 1000)).toEqual([0, POLLIN]);
  });

  it('reports hang-up of a socket peer and writability', () => {
    const [a, b] = socketPair();
    track(a);
    expect(pollSync([{ fd: a, events: POLLOUT }], 0)[0] & POLLOUT).toBe(POLLOUT);
    close(b);
    expect(pollSync([{ fd: a, events: POLLIN }], 1000)[0] & POLLHUP).toBe(POLLHUP);
  });

  it('reuses one set across waits and clears old revents', () => {
    const fd = track(eventfd());
    const set = new PollSet([{ fd, events: POLLIN }]);
    eventfdWrite(fd);
    expect(set.wait(100)).toBe(1);
    expect(set.revents(0)).toBe(POLLIN);
    eventfdRead(fd);
    expect(set.wait(0)).toBe(0);
    expect(set.revents(0)).toBe(0);
  });
});

describe('Reactor', () => {
  it('delivers readability of an eventfd and of a socket on the main thread', async () => {
    const reactor = new Reactor();
    try {
      const kick = track(eventfd());
      const [a, b] = socketPair().map(track);
      const seen: string[] = [];
      reactor.watch(kick, () => {
        seen.push(`kick ${eventfdRead(kick)}`);
      });
      reactor.watch(b, () => {
        for (let m = receiveMessage(b, 64); m; m = receiveMessage(b, 64)) seen.push(`socket ${new TextDecoder().decode(m.bytes)}`);
      });
      eventfdWrite(kick, 3);
      await expect.poll(() => seen).toEqual(['kick 3']);
      sendMessage(a, new TextEncoder().encode('hello'));
      await expect.poll(() => seen).toEqual(['kick 3', 'socket hello']);
    } finally {
      await reactor.close();
    }
  });

  it('replaces the callback when an fd is watched again, and stops after unwatch', async () => {
    const reactor = new Reactor();
    try {
      const fd = track(eventfd());
      const calls: string[] = [];
      reactor.watch(fd, () => {
        calls.push('first');
        eventfdRead(fd);
      });
      reactor.watch(fd, () => {
        calls.push('second');
        eventfdRead(fd);
      });
      eventfdWrite(fd);
      await expect.poll(() => calls).toEqual(['second']);
      reactor.unwatch(fd);
      expect(reactor.watching(fd)).toBe(false);
      eventfdWrite(fd);
      await nextTurn();
      await nextTurn();
      expect(calls).toEqual(['second']);
      expect(eventfdRead(fd)).toBe(1);
    } finally {
      await reactor.close();
    }
  });

  it('lets a callback unwatch itself and another ready fd', async () => {
    const reactor = new Reactor();
    try {
      const one = track(eventfd());
      const two = track(eventfd());
      const calls: number[] = [];
      const handler = (fd: number) => () => {
        calls.push(fd);
        reactor.unwatch(one);
        reactor.unwatch(two);
      };
      reactor.watch(one, handler(one));
      reactor.watch(two, handler(two));
      eventfdWrite(one);
      eventfdWrite(two);
      await expect.poll(() => calls.length).toBe(1);
      await nextTurn();
      expect(calls).toHaveLength(1);
    } finally {
      await reactor.close();
    }
  });

  it('watches for writability when asked', async () => {
    const reactor = new Reactor();
    try {
      const [a] = socketPair().map(track);
      let events = 0;
      reactor.watch(a, (e) => {
        events = e;
        reactor.unwatch(a);
      }, EPOLLOUT);
      await expect.poll(() => events & EPOLLOUT).toBe(EPOLLOUT);
    } finally {
      await reactor.close();
    }
  });

  it('reports a throwing callback and keeps serving the others', async () => {
    const errors: unknown[] = [];
    const reactor = new Reactor({ onCallbackError: (err) => errors.push(err) });
    try {
      const bad = track(eventfd());
      const good = track(eventfd());
      let goodCalls = 0;
      reactor.watch(bad, () => {
        eventfdRead(bad);
        throw new Error('handler failed');
      });
      reactor.watch(good, () => {
        eventfdRead(good);
        goodCalls++;
      }, EPOLLIN);
      eventfdWrite(bad);
      await expect.poll(() => errors.length).toBe(1);
      eventfdWrite(good);
      await expect.poll(() => goodCalls).toBe(1);
      expect(String(errors[0])).toMatch(/handler failed/);
    } finally {
      await reactor.close();
    }
  });

  it('close() ends a pending wait promptly and refuses new watches', async () => {
    const reactor = new Reactor();
    const fd = track(eventfd());
    let called = false;
    reactor.watch(fd, () => {
      called = true;
    });
    await nextTurn();
    await reactor.close(); // would hang (test timeout) if the wait were not woken
    eventfdWrite(fd);
    await nextTurn();
    expect(called).toBe(false);
    expect(() => reactor.watch(fd, () => {})).toThrow(/closed/);
    await reactor.close();
  });

  it('watches a reused fd number after the old fd was closed without unwatch', async () => {
    const reactor = new Reactor();
    try {
      const old = eventfd();
      reactor.watch(old, () => {});
      close(old); // epoll forgets it; the reactor still has a callback for the number
      const reused = track(eventfd());
      expect(reused).toBe(old);
      let calls = 0;
      reactor.watch(reused, () => {
        eventfdRead(reused);
        calls++;
      });
      eventfdWrite(reused);
      await expect.poll(() => calls).toBe(1);
    } finally {
      await reactor.close();
    }
  });

  it('rejects a bad fd with the errno', () => {
    const reactor = new Reactor();
    try {
      expect(() => reactor.watch(9999, () => {})).toThrow(expect.objectContaining({ code: 'EBADF', syscall: 'epoll_ctl' }));
      expect(() => reactor.watch(-1, () => {})).toThrow(RangeError);
    } finally {
      void reactor.close();
    }
  });
});
