// copyBytes picks a byte loop, 32-bit words through cached DataViews, or set() by size: every
// path must copy exactly the bytes asked, at any alignment (words through Uint32Arrays where both
// sides share one, DataViews where not), between arrays that change from call to call (the views
// are cached), and views that do not start at their buffer's beginning.
import { describe, expect, it } from 'vitest';
import { copyBytes } from '../../virtio/descriptor-chain.js';
import { rng } from '../support/hostile-frontend.js';

describe('copyBytes', () => {
  it('copies every length from 0 to 300 at every alignment, touching nothing else', () => {
    const r = rng(7);
    const a = new Uint8Array(4096).map(() => Math.floor(r() * 256));
    const b = new Uint8Array(new ArrayBuffer(8192), 3, 4000); // a view at an odd byte offset
    const c = new Uint8Array(new SharedArrayBuffer(4096));
    for (let length = 0; length <= 300; length++) {
      for (const [src, dst] of [[a, b], [b, c], [c, a], [a, c]] as const) {
        const so = Math.floor(r() * 64);
        const d0 = Math.floor(r() * 64);
        const before = dst.slice();
        copyBytes(src, so, dst, d0, length);
        const expected = before.slice();
        expected.set(src.subarray(so, so + length), d0);
        expect(Buffer.from(dst).equals(Buffer.from(expected)), `length ${length}`).toBe(true);
      }
    }
  });

  it('copies by whole words where source and destination share an alignment, from every lead', () => {
    const r = rng(11);
    const source = new Uint8Array(new ArrayBuffer(4096)).map(() => Math.floor(r() * 256));
    for (let lead = 0; lead < 4; lead++) {
      // A destination view starting `lead` bytes past a word boundary, as a region piece can.
      const dst = new Uint8Array(new SharedArrayBuffer(4096), lead, 4000);
      for (let length = 0; length <= 140; length++) {
        for (let align = 0; align < 4; align++) {
          const so = 64 + align;
          const d0 = 128 + ((align - lead + 4) & 3); // lead + d0 ≡ so (mod 4)
          dst.fill(0xee);
          copyBytes(source, so, dst, d0, length);
          expect(Buffer.from(dst.subarray(d0, d0 + length)).equals(Buffer.from(source.subarray(so, so + length))), `lead ${lead} length ${length} align ${align}`).toBe(true);
          expect(dst[d0 - 1], 'byte before').toBe(0xee);
          expect(dst[d0 + length], 'byte after').toBe(0xee);
        }
      }
    }
  });

  it('refuses a copy past either end as set() does', () => {
    const a = new Uint8Array(100);
    const b = new Uint8Array(100);
    expect(() => copyBytes(a, 0, b, 60, 64)).toThrow(RangeError);
    expect(() => copyBytes(a, 90, b, 0, 20)).not.toThrow(); // subarray clamps the source, as before
  });
});
