// Used-ring publication, interrupt and kick suppression in both modes (flags and EVENT_IDX, with
// u16 wrap-around), handover of queue state, and dirty logging of every device write.
import { describe, expect, it } from 'vitest';
import { DescriptorChain, RingError } from '../../virtio/split-queue.js';
import { VRING_AVAIL_F_NO_INTERRUPT, VRING_USED_F_NO_NOTIFY, vringNeedEvent } from '../../virtio/ring-layout.js';
import { RingBuilder, createTestMemory } from '../support/ring-builder.js';

function setup(options: { size?: number; eventIdx?: boolean; lastAvail?: number; lastUsed?: number } = {}) {
  const memory = createTestMemory([{ gpa: 0, size: 1 << 20 }]);
  const ring = new RingBuilder(memory, { size: options.size ?? 8, descGpa: 0x1000, availGpa: 0x2000, usedGpa: 0x3000 });
  ring.availIdx = options.lastAvail ?? 0;
  ring.setAvailIdx(ring.availIdx);
  ring.setUsedIdx(options.lastUsed ?? 0);
  const queue = ring.queue({ eventIdx: options.eventIdx ?? false, lastAvail: options.lastAvail, lastUsed: options.lastUsed, name: 'vring 1' });
  for (let i = 0; i < ring.size; i++) ring.writeChain([{ addr: 0x10000 + i * 0x1000, len: 0x800, writable: true }], i);
  return { memory, ring, queue, chain: new DescriptorChain() };
}

describe('vring_need_event', () => {
  it('decides with wrap-safe u16 arithmetic', () => {
    expect(vringNeedEvent(5, 6, 5)).toBe(true); // crossed 5 → 6
    expect(vringNeedEvent(5, 5, 4)).toBe(false); // not past the event yet
    expect(vringNeedEvent(5, 10, 6)).toBe(false); // event already passed before old
    expect(vringNeedEvent(0xffff, 0, 0xfffe)).toBe(true); // crossing the wrap
    expect(vringNeedEvent(0xffff, 3, 0xfff0)).toBe(true);
    expect(vringNeedEvent(2, 1, 0xfffe)).toBe(false);
    expect(vringNeedEvent(0xbeef, 7, 7)).toBe(false); // nothing new: never
  });
});

describe('used ring publication', () => {
  it('writes entries at once and makes them visible with one used.idx store', () => {
    const s = setup();
    s.ring.offer(0, 1, 2);
    for (let i = 0; i < 3; i++) {
      expect(s.queue.popChain(s.chain)).toBe(true);
      s.queue.pushUsed(s.chain.head, 100 + i);
    }
    expect(s.queue.pendingUsedCount).toBe(3);
    expect(s.ring.usedIdx()).toBe(0);
    expect(s.ring.usedEntry(1)).toEqual({ id: 1, len: 101 });
    s.queue.flushUsed();
    expect(s.ring.usedIdx()).toBe(3);
    expect(s.queue.pendingUsedCount).toBe(0);
    expect(s.queue.readUsedIdx()).toBe(3);
  });

  it('wraps the used index at 2^16 and the slot at the ring size', () => {
    const s = setup({ size: 4, lastAvail: 65534, lastUsed: 65534 });
    s.ring.offer(0, 1, 2, 3);
    while (s.queue.popChain(s.chain)) s.queue.pushUsed(s.chain.head, 7);
    s.queue.flushUsed();
    expect(s.ring.usedIdx()).toBe(2);
    expect(s.queue.lastUsed).toBe(2);
    expect([65534, 65535, 0, 1].map((i) => s.ring.usedEntry(i).id)).toEqual([0, 1, 2, 3]);
  });

  it('refuses more unpublished entries than the ring holds', () => {
    const s = setup({ size: 2 });
    s.queue.pushUsed(0, 0);
    s.queue.pushUsed(1, 0);
    expect(() => s.queue.pushUsed(0, 0)).toThrow(/more than 2 used entries/);
  });
});

describe('interrupt suppression without EVENT_IDX', () => {
  it('follows avail.flags NO_INTERRUPT and stays quiet when nothing new was published', () => {
    const s = setup();
    s.queue.pushUsed(0, 1);
    s.queue.flushUsed();
    expect(s.queue.needsNotification()).toBe(true);
    expect(s.queue.needsNotification()).toBe(false); // nothing new since the last decision
    s.ring.setAvailFlags(VRING_AVAIL_F_NO_INTERRUPT);
    s.queue.pushUsed(1, 1);
    s.queue.flushUsed();
    expect(s.queue.needsNotification()).toBe(false);
    s.ring.setAvailFlags(0);
    s.queue.pushUsed(2, 1);
    s.queue.flushUsed();
    expect(s.queue.needsNotification()).toBe(true);
  });

  it('sets and clears used.flags NO_NOTIFY and re-checks the ring when re-enabling', () => {
    const s = setup();
    s.queue.disableNotifications();
    expect(s.ring.usedFlags()).toBe(VRING_USED_F_NO_NOTIFY);
    expect(s.queue.enableNotifications()).toBe(false);
    expect(s.ring.usedFlags()).toBe(0);
    s.queue.disableNotifications();
    s.ring.offer(4); // the driver adds work while kicks are off
    expect(s.queue.enableNotifications()).toBe(true);
    expect(s.queue.popChain(s.chain)).toBe(true);
    expect(s.chain.head).toBe(4);
    expect(s.queue.enableNotifications()).toBe(false);
  });
});

describe('EVENT_IDX', () => {
  it('interrupts only when used.idx crosses used_event, across the u16 wrap', () => {
    const s = setup({ eventIdx: true, lastAvail: 65530, lastUsed: 65530 });
    const publish = (n: number): void => {
      for (let i = 0; i < n; i++) s.queue.pushUsed(i, 1);
      s.queue.flushUsed();
    };
    publish(1); // 65531; the first decision always interrupts
    expect(s.queue.needsNotification()).toBe(true);
    s.ring.setUsedEvent(65532);
    publish(1); // 65532: not past used_event
    expect(s.queue.needsNotification()).toBe(false);
    publish(1); // 65533: crossed
    expect(s.queue.needsNotification()).toBe(true);
    s.ring.setUsedEvent(1);
    publish(3); // 0
    expect(s.ring.usedIdx()).toBe(0);
    expect(s.queue.needsNotification()).toBe(false);
    publish(2); // 2: crossed 1 after the wrap
    expect(s.queue.needsNotification()).toBe(true);
  });

  it('survives garbage used_event values (D13)', () => {
    for (const garbage of [0, 1, 0xffff, 0x8000, 0xbeef, 12345]) {
      const s = setup({ eventIdx: true });
      s.queue.pushUsed(0, 1);
      s.queue.flushUsed();
      s.queue.needsNotification();
      s.ring.setUsedEvent(garbage);
      s.queue.pushUsed(1, 1);
      s.queue.flushUsed();
      expect(s.queue.needsNotification()).toBe(garbage === 1); // only 1 lies between old (1) and new (2)
    }
  });

  it('keeps avail_event current while consuming, freezes it when disabled, and re-checks on enable (P17)', () => {
    const s = setup({ eventIdx: true });
    s.ring.offer(0, 1);
    s.queue.popChain(s.chain);
    s.queue.pushUsed(s.chain.head, 0);
    s.queue.flushUsed();
    expect(s.ring.availEvent()).toBe(1);
    s.queue.disableNotifications();
    expect(s.ring.usedFlags()).toBe(0); // EVENT_IDX does not use the flag
    s.queue.popChain(s.chain);
    s.queue.pushUsed(s.chain.head, 0);
    s.queue.flushUsed();
    expect(s.ring.availEvent()).toBe(1);
    expect(s.queue.enableNotifications()).toBe(false);
    expect(s.ring.availEvent()).toBe(2);
    s.ring.offer(2);
    expect(s.queue.enableNotifications()).toBe(true);
  });

  it('treats an impossible avail.idx seen while re-enabling as a broken ring', () => {
    const s = setup({ eventIdx: true });
    s.ring.setAvailIdx(100);
    expect(() => s.queue.enableNotifications()).toThrow(RingError);
    expect(s.queue.broken).toBe(true);
  });
});

describe('handover state', () => {
  it('lets a second queue object continue exactly where the first stopped', () => {
    const s = setup({ eventIdx: true });
    s.ring.offer(0, 1, 2, 3);
    for (let i = 0; i < 2; i++) {
      s.queue.popChain(s.chain);
      s.queue.pushUsed(s.chain.head, 10 + i);
    }
    s.queue.popChain(s.chain); // popped, not yet completed: the handover keeps it consumed
    const held = s.chain.head;
    expect(() => s.queue.exportState()).toThrow(/not yet flushed/);
    s.queue.flushUsed();
    s.queue.needsNotification();
    const state = s.queue.exportState();
    expect(state).toEqual({ lastAvail: 3, lastUsed: 2, signalledUsed: 2, signalledUsedValid: true, notificationsDisabled: false, broken: false });
    const copy = JSON.parse(JSON.stringify(state));

    const next = s.ring.queue({ eventIdx: true });
    next.importState(copy);
    next.pushUsed(held, 12);
    expect(next.popChain(s.chain)).toBe(true);
    expect(s.chain.head).toBe(3);
    next.pushUsed(3, 13);
    next.flushUsed();
    expect(s.ring.usedIdx()).toBe(4);
    expect([0, 1, 2, 3].map((i) => s.ring.usedEntry(i))).toEqual([
      { id: 0, len: 10 },
      { id: 1, len: 11 },
      { id: 2, len: 12 },
      { id: 3, len: 13 },
    ]);
    s.ring.setUsedEvent(2); // already passed before this burst (old = 2, new = 4): crossed at 3
    expect(next.needsNotification()).toBe(true);
    expect(() => next.importState({ ...state, lastAvail: 70000 })).toThrow(/not u16/);
  });
});

describe('dirty logging', () => {
  const pageBit = (log: Uint8Array, gpa: number): boolean => ((log[Math.floor(gpa / 4096 / 8)]! >> ((gpa / 4096) % 8 | 0)) & 1) === 1;
  const dirtyPages = (log: Uint8Array): number[] => {
    const pages: number[] = [];
    for (let p = 0; p < log.length * 8; p++) if ((log[p >> 3]! >> (p & 7)) & 1) pages.push(p);
    return pages;
  };

  it('marks written data, used entries, used.idx and avail_event, and nothing on reads', () => {
    const s = setup({ eventIdx: true });
    const log = new Uint8Array(32);
    s.memory.setDirtyLog(log);
    s.ring.writeChain([{ addr: 0x20000, len: 0x80 }], 5); // a transmit chain: read only
    s.ring.offer(5, 1);
    s.queue.popChain(s.chain);
    const tx = new Uint8Array(0x80);
    s.chain.copyOut(0, tx, 0, 0x80);
    expect(dirtyPages(log)).toEqual([]);
    s.queue.popChain(s.chain); // head 1: writable 0x800 bytes at 0x11000
    s.chain.copyIn(new Uint8Array(0x10), 0, 0x10, 0x7f8);
    expect(dirtyPages(log)).toEqual([0x11]);
    s.queue.pushUsed(5, 0);
    s.queue.pushUsed(1, 0x10);
    expect(pageBit(log, 0x3000)).toBe(true); // used ring, found from its region
    log.fill(0);
    s.queue.flushUsed(); // used.idx and avail_event
    expect(dirtyPages(log)).toEqual([3]);
  });

  it('logs used-ring writes at the configured log address and direct writes through markWritten', () => {
    const s = setup({ eventIdx: false });
    const log = new Uint8Array(32);
    s.memory.setDirtyLog(log);
    s.queue.setUsedRingGuestAddr(0x80000);
    s.ring.offer(2);
    s.queue.popChain(s.chain);
    // A writer that fills segBytes itself reports what it wrote.
    s.chain.segBytes[0]![s.chain.segOffset[0]!] = 1;
    s.chain.markWritten(0x7ff, 2);
    expect(dirtyPages(log)).toEqual([0x12]);
    log.fill(0);
    s.queue.pushUsed(2, 1);
    s.queue.flushUsed();
    s.queue.disableNotifications();
    expect(dirtyPages(log)).toEqual([0x80]);
    s.queue.setUsedRingGuestAddr(null);
    log.fill(0);
    s.queue.enableNotifications();
    expect(dirtyPages(log)).toEqual([]);
  });
});
