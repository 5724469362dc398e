// Driver side and device side talking through the same guest memory: buffers offered by the
// driver come out of the device's walker intact, used entries come back, and both directions of
// notification suppression agree, across many wraps of the u16 indexes.
import { describe, expect, it } from 'vitest';
import { DescriptorChain } from '../../virtio/split-queue.js';
import { SplitQueueDriver } from '../../virtio/split-queue-driver.js';
import { RingBuilder, createTestMemory, readBytes } from '../support/ring-builder.js';

function pair(options: { size?: number; eventIdx?: boolean; shared?: boolean } = {}) {
  const memory = createTestMemory([{ gpa: 0, size: 0x10000 }, { gpa: 0x10000, size: 0x30000 }], { shared: options.shared });
  const ring = new RingBuilder(memory, { size: options.size ?? 4, base: 0x100 });
  const driver = ring.driver({ eventIdx: options.eventIdx ?? false });
  const device = ring.queue({ eventIdx: options.eventIdx ?? false, indirect: true });
  return { memory, ring, driver, device, chain: new DescriptorChain() };
}

describe('SplitQueueDriver layout', () => {
  it('aligns each ring part and refuses rings it cannot place', () => {
    expect(SplitQueueDriver.layout(0x101, 4)).toEqual({ descGpa: 0x110, availGpa: 0x150, usedGpa: 0x160, end: 0x160 + 38 });
    const memory = createTestMemory([{ gpa: 0, size: 0x1000 }]);
    expect(() => new SplitQueueDriver({ memory, size: 4, descGpa: 8, availGpa: 0x100, usedGpa: 0x200 })).toThrow(/not 16-byte aligned/);
    expect(() => new SplitQueueDriver({ memory, size: 4, descGpa: 0, availGpa: 0x100, usedGpa: 0xff0 })).toThrow(/not inside one memory region/);
    expect(() => new SplitQueueDriver({ memory, size: 3, descGpa: 0, availGpa: 0x100, usedGpa: 0x200 })).toThrow(/power of two/);
  });
});

describe('driver ↔ device round trip', () => {
  for (const eventIdx of [false, true]) {
    it(`moves 2 x 34000 transmit and receive chains through a ring of 4 (EVENT_IDX ${eventIdx})`, () => {
      const s = pair({ eventIdx });
      const rounds = 34000; // 68000 chains: both u16 indexes wrap
      const txData = new Uint8Array(64);
      const rxData = new Uint8Array(64);
      const low = s.memory.regions[0]!.bytes;
      const high = s.memory.regions[1]!.bytes;
      for (let n = 0; n < rounds; n++) {
        const indirect = n % 3 === 0;
        for (let i = 0; i < txData.length; i++) txData[i] = (n + i) & 0xff;
        // Transmit: a buffer straddling the two regions, plus a second one.
        low.set(txData.subarray(0, 32), 0xffe0);
        high.set(txData.subarray(32), 0);
        high.set(txData.subarray(48), 0x10000);
        const tx = s.driver.addBuffers(
          [
            { gpa: 0xffe0, len: 48, writable: false },
            { gpa: 0x20000, len: 16, writable: false },
          ],
          indirect ? { indirectTableGpa: 0x30000 } : {},
        );
        const rx = s.driver.addBuffers([{ gpa: 0x21000, len: 64, writable: true }], indirect ? { indirectTableGpa: 0x30100 } : {});
        s.driver.publish();

        const fail = (what: string): never => {
          throw new Error(`round ${n}: ${what}`);
        };
        if (!s.device.popChain(s.chain)) fail('no transmit chain');
        if (!s.chain.ok || s.chain.head !== tx || s.chain.readableLength !== 64 || s.chain.segmentCount !== 3) fail(`bad transmit chain ${s.chain.error}`);
        s.chain.copyOut(0, rxData, 0, 64);
        for (let i = 0; i < 64; i++) if (rxData[i] !== txData[i]) fail(`transmit byte ${i}`);
        s.device.pushUsed(s.chain.head, 0);
        if (!s.device.popChain(s.chain)) fail('no receive chain');
        if (s.chain.head !== rx || s.chain.writableLength !== 64 || s.chain.indirect !== indirect) fail('bad receive chain');
        for (let i = 0; i < 64; i++) rxData[i] = rxData[i]! ^ 0xff;
        s.chain.copyIn(rxData, 0, 64, 0);
        s.device.pushUsed(s.chain.head, 64);
        s.device.flushUsed();

        const first = s.driver.popUsed();
        const second = s.driver.popUsed();
        if (first?.id !== tx || first.len !== 0 || second?.id !== rx || second.len !== 64) fail('used entries');
        if (s.driver.popUsed() !== null) fail('extra used entry');
        if (n % 9999 === 0) {
          const back = readBytes(s.memory, 0x21000, 64);
          expect(back.every((b, i) => b === ((txData[i]! ^ 0xff) & 0xff))).toBe(true);
        }
      }
      expect(s.driver.freeDescriptors).toBe(4);
      expect(s.device.lastAvail).toBe((rounds * 2) & 0xffff);
      expect(s.ring.usedIdx()).toBe((rounds * 2) & 0xffff);
    });
  }

  it('works the same over SharedArrayBuffer-backed memory', () => {
    const s = pair({ shared: true, eventIdx: true });
    expect(s.memory.regions[0]!.bytes.buffer).toBeInstanceOf(SharedArrayBuffer);
    const head = s.driver.addBuffers([
      { gpa: 0x20000, len: 8, writable: false },
      { gpa: 0xffc0, len: 200, writable: true },
    ]);
    s.driver.publish();
    expect(s.device.popChain(s.chain)).toBe(true);
    expect(s.chain.head).toBe(head);
    expect(s.chain.segmentCount).toBe(3);
    const payload = Uint8Array.from({ length: 200 }, (_, i) => 255 - i);
    expect(s.chain.copyIn(payload, 0, 200, 0)).toBe(200);
    s.device.pushUsed(head, 200);
    s.device.flushUsed();
    expect(s.driver.popUsed()).toEqual({ id: head, len: 200 });
    expect(readBytes(s.memory, 0xffc0, 200)).toEqual(payload);
  });

  it('kicks follow used.flags NO_NOTIFY without EVENT_IDX', () => {
    const s = pair();
    s.driver.addBuffers([{ gpa: 0x20000, len: 8, writable: false }]);
    expect(s.driver.publish()).toBe(true);
    s.device.disableNotifications();
    s.driver.addBuffers([{ gpa: 0x20000, len: 8, writable: false }]);
    expect(s.driver.publish()).toBe(false);
    expect(s.device.enableNotifications()).toBe(true); // work is waiting: drain before sleeping
    s.driver.addBuffers([{ gpa: 0x20000, len: 8, writable: false }]);
    expect(s.driver.publish()).toBe(true);
    expect(s.driver.needsKick()).toBe(false); // nothing new since the last decision
  });

  it('kicks follow avail_event with EVENT_IDX', () => {
    const s = pair({ eventIdx: true });
    expect(s.device.enableNotifications()).toBe(false); // avail_event = 0
    s.driver.addBuffers([{ gpa: 0x20000, len: 8, writable: false }]);
    expect(s.driver.publish()).toBe(true); // 0 → 1 crosses avail_event 0
    s.driver.addBuffers([{ gpa: 0x20000, len: 8, writable: false }]);
    expect(s.driver.publish()).toBe(false); // the device has not asked again
    while (s.device.popChain(s.chain)) s.device.pushUsed(s.chain.head, 0);
    s.device.flushUsed(); // the device consumed up to 2 and says so in avail_event
    expect(s.ring.availEvent()).toBe(2);
    s.driver.addBuffers([{ gpa: 0x20000, len: 8, writable: false }]);
    expect(s.driver.publish()).toBe(true);
  });

  for (const eventIdx of [false, true]) {
    it(`interrupts follow the driver's suppression (EVENT_IDX ${eventIdx})`, () => {
      const s = pair({ eventIdx });
      const complete = (): boolean => {
        s.driver.addBuffers([{ gpa: 0x20000, len: 8, writable: true }]);
        s.driver.publish();
        s.device.popChain(s.chain);
        s.device.pushUsed(s.chain.head, 8);
        s.device.flushUsed();
        return s.device.needsNotification();
      };
      expect(s.driver.enableInterrupts()).toBe(false);
      expect(complete()).toBe(true);
      s.driver.popUsed();
      s.driver.disableInterrupts();
      expect(complete()).toBe(false);
      expect(s.driver.enableInterrupts()).toBe(true); // an entry arrived while suppressed
      s.driver.popUsed();
      expect(s.driver.enableInterrupts()).toBe(false); // re-armed after draining
      expect(complete()).toBe(true);
    });
  }

  it('refuses bad chains and a device returning a head it does not hold', () => {
    const s = pair();
    expect(() => s.driver.addBuffers([])).toThrow(/at least one buffer/);
    expect(() =>
      s.driver.addBuffers([
        { gpa: 0x20000, len: 8, writable: true },
        { gpa: 0x20000, len: 8, writable: false },
      ]),
    ).toThrow(/follows a device-writable/);
    expect(() => s.driver.addBuffers([1, 2, 3, 4, 5].map(() => ({ gpa: 0x20000, len: 8, writable: false })))).toThrow(/5 descriptors needed, 4 free/);
    s.driver.addBuffers([{ gpa: 0x20000, len: 8, writable: false }]);
    s.driver.publish();
    s.device.pushUsed(3, 0);
    s.device.flushUsed();
    expect(() => s.driver.popUsed()).toThrow(/head 3, which is not outstanding/);
  });
});
