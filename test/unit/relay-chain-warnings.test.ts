// The rate limit on broken-chain warnings: one per ring per interval, with the count of the ones
// it held back, independent per ring and per relay.
import { describe, expect, it } from 'vitest';
import { ChainWarnings } from '../../relay/datapath/chain-warnings.js';

describe('ChainWarnings', () => {
  it('warns once per ring per interval and says how many it held back', () => {
    let now = 0;
    const seen: [number, number, string, number][] = [];
    const w = new ChainWarnings((...a) => seen.push(a), 10_000, () => now);
    for (let i = 0; i < 1000; i++) w.report(1, 1, `loop ${i}`);
    w.report(1, 3, 'other ring');
    w.report(2, 1, 'other relay');
    expect(seen).toEqual([
      [1, 1, 'loop 0', 0],
      [1, 3, 'other ring', 0],
      [2, 1, 'other relay', 0],
    ]);
    now = 9_999;
    w.report(1, 1, 'still quiet');
    expect(seen).toHaveLength(3);
    now = 10_000;
    w.report(1, 1, 'out of range');
    expect(seen.at(-1)).toEqual([1, 1, 'out of range', 1000]);
  });
});
