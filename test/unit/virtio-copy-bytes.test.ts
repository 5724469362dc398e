// copyBytes picks a byte loop, 32-bit words through cached DataViews, or set() by size: every
// path must copy exactly the bytes asked, at any alignment, between arrays that change from call
// to call (the DataView cache), and views that do not start at their buffer's beginning.
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

  it('refuses a copy past either end as set() does', () => {
    const a = new Uint8Array(100);
    const b = new Uint8Array(100);
    expect(() => copyBytes(a, 0, b, 60, 64)).toThrow(RangeError);
    expect(() => copyBytes(a, 90, b, 0, 20)).not.toThrow(); // subarray clamps the source, as before
  });
});
