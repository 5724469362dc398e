import { describe, expect, it } from 'vitest';
import { GuestMemory, type MemoryRegion } from '../../virtio/guest-memory.js';
import { createTestMemory } from '../support/ring-builder.js';

const region = (gpa: number, size: number, userAddr = gpa + 0x1000_0000, bytes = new Uint8Array(size)): MemoryRegion => ({
  guestPhysAddr: gpa,
  size,
  userAddr,
  bytes,
});

describe('GuestMemory construction', () => {
  it('rejects an empty table, empty regions, wrong view sizes, overlaps and overflow', () => {
    expect(() => new GuestMemory([])).toThrow(/empty/);
    expect(() => new GuestMemory([region(0, 0)])).toThrow(/is empty/);
    expect(() => new GuestMemory([{ ...region(0, 4096), bytes: new Uint8Array(100) }])).toThrow(/100 bytes instead of 4096/);
    expect(() => new GuestMemory([region(0, 4096), region(4095, 4096, 0x9000_0000)])).toThrow(/overlap in guest-physical/);
    expect(() => new GuestMemory([region(0, 4096, 0x5000), region(0x10000, 4096, 0x5800)])).toThrow(/overlap in user/);
    expect(() => new GuestMemory([region(Number.MAX_SAFE_INTEGER - 10, 4096, 0)])).toThrow(/overflows/);
    expect(() => new GuestMemory([region(-4096, 4096)])).toThrow(/safe non-negative/);
    expect(() => new GuestMemory([region(0.5, 4096)])).toThrow(/safe non-negative/);
  });

  it('accepts regions given in any order and sorts them', () => {
    const m = new GuestMemory([region(0x20000, 0x1000, 0x100), region(0, 0x1000, 0x5000), region(0x10000, 0x1000, 0x9000)]);
    expect(m.regions.map((r) => r.guestPhysAddr)).toEqual([0, 0x10000, 0x20000]);
    // The table is read once per descriptor: V8 (Node 20) inlines no element load from a frozen
    // array, so a frozen table costs a call into its keyed-load IC each time (half of the relay's
    // samples NF→VM at 64 bytes).
    expect(Object.isFrozen(m.regions)).toBe(false);
  });
});

describe('GuestMemory translation', () => {
  const m = createTestMemory([
    { gpa: 0, size: 0x1000, userAddr: 0x7000_0000 },
    { gpa: 0x1000, size: 0x1000, userAddr: 0x5000_0000 },
    { gpa: 0x10000, size: 0x2000, userAddr: 0x6000_0000 },
  ]);

  it('translates ranges inside one region and refuses holes, straddles and overflow', () => {
    expect(m.translate(0x10, 16)).toEqual({ bytes: m.regions[0]!.bytes, offset: 0x10 });
    expect(m.translate(0x11ff0, 16)).toEqual({ bytes: m.regions[2]!.bytes, offset: 0x1ff0 });
    expect(m.translate(0xff8, 16)).toBeNull(); // straddles regions 0 and 1
    expect(m.translate(0x2000, 1)).toBeNull(); // hole
    expect(m.translate(0x11ff0, 17)).toBeNull(); // runs past the end
    expect(m.translate(Number.MAX_SAFE_INTEGER, 2)).toBeNull();
    expect(m.translate(0x10, -1)).toBeNull();
    expect(m.translate(0xfff, 0)).toEqual({ bytes: m.regions[0]!.bytes, offset: 0xfff });
  });

  it('translates front-end user addresses through their own sorted table', () => {
    expect(m.userToHost(0x5000_0010, 8)).toEqual({ bytes: m.regions[1]!.bytes, offset: 0x10 });
    expect(m.userToHost(0x6000_1ff8, 8)).toEqual({ bytes: m.regions[2]!.bytes, offset: 0x1ff8 });
    expect(m.userToHost(0x6000_1ff8, 9)).toBeNull();
    expect(m.userToHost(0x4fff_ffff, 1)).toBeNull();
    expect(m.userToGuest(0x7000_0004)).toBe(4);
    expect(m.userToGuest(0x1234)).toBeNull();
  });

  it('splits a range across adjacent regions and refuses one that touches a hole', () => {
    const segs = m.segments(0xff0, 0x20);
    expect(segs?.map((s) => [s.guestPhysAddr, s.length, s.offset])).toEqual([
      [0xff0, 0x10, 0xff0],
      [0x1000, 0x10, 0],
    ]);
    expect(segs![0]!.bytes).toBe(m.regions[0]!.bytes);
    expect(segs![1]!.bytes).toBe(m.regions[1]!.bytes);
    expect(m.segments(0x1ff0, 0x20)).toBeNull();
  });

  it('finds regions through the binary search after the cached region misses', () => {
    for (const gpa of [0x11000, 0x5, 0x1800, 0x10000, 0x11fff, 0xfff]) {
      const i = m.regionIndexOf(gpa);
      const r = m.regions[i]!;
      expect(gpa >= r.guestPhysAddr && gpa < r.guestPhysAddr + r.size).toBe(true);
    }
    expect(m.regionIndexOf(0x2000)).toBe(-1);
    expect(m.regionIndexOf(0x12000)).toBe(-1);
  });
});

describe('GuestMemory dirty log', () => {
  it('sets one bit per 4 KiB page with OR, and ignores pages past the bitmap', () => {
    const m = createTestMemory([{ gpa: 0, size: 0x40000 }]);
    const log = new Uint8Array(2); // 16 pages
    log[1] = 0x80; // already dirty: must stay set
    m.setDirtyLog(log);
    expect(m.dirtyLogging).toBe(true);
    m.markDirty(0x1fff, 2); // pages 1 and 2
    expect(log[0]).toBe(0b0000_0110);
    m.markDirty(0x7000, 0x3000); // pages 7..9
    expect(log[0]).toBe(0b1000_0110);
    expect(log[1]).toBe(0b1000_0011);
    m.markDirty(0x20000, 0x1000); // page 32: outside a 16-page bitmap
    m.markDirty(0x5000, 0); // nothing
    expect([...log]).toEqual([0b1000_0110, 0b1000_0011]);
    m.markDirty(0, 0x10000); // every page
    expect([...log]).toEqual([0xff, 0xff]);
    m.setDirtyLog(null);
    expect(m.dirtyLogging).toBe(false);
    m.markDirty(0, 1);
  });
});
