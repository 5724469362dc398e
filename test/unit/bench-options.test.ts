// The relay bench's command line: what it accepts and what it refuses, with a message naming the flag.
import { describe, expect, it } from 'vitest';
import { isJumbo, parseOptions, USAGE } from '../../bench/lib/options.js';

describe('bench/relay.ts options', () => {
  it('runs at full rate unless --rx-rate caps it, and --quick gives way to explicit flags', () => {
    expect(parseOptions([])).toMatchObject({ rxRateMpps: null, runs: 3, sizes: [64, 1500], directions: ['tx', 'rx'] });
    expect(parseOptions(['--rx-rate', '0.4'])).toMatchObject({ rxRateMpps: 0.4 });
    expect(parseOptions(['--runs', '2', '--quick'])).toMatchObject({ runs: 2, windowSeconds: 3, sizes: [64] });
    expect(parseOptions(['--directions', 'rx,rx', '--vf-ports', 'memif'])).toMatchObject({ directions: ['rx'], vfPorts: ['memif'] });
    expect(parseOptions([])).toMatchObject({ xdpUmem: 'guest', xdpRx: 'copy' });
    expect(parseOptions(['--xdp-rx', 'guest'])).toMatchObject({ xdpRx: 'guest' });
  });

  it('refuses numbers that are not, lists with unknown items, and flags without their value', () => {
    expect(() => parseOptions(['--rx-rate', '0'])).toThrow('--rx-rate needs a number > 0, got 0');
    expect(() => parseOptions(['--rx-rate'])).toThrow('--rx-rate needs a number > 0, got nothing');
    expect(() => parseOptions(['--runs', '1.5'])).toThrow('--runs needs a whole number > 0, got 1.5');
    expect(() => parseOptions(['--directions', 'up'])).toThrow('--directions: unknown value "up"');
    expect(() => parseOptions(['--json'])).toThrow('--json needs a file name');
    expect(() => parseOptions(['--xdp-rx', 'zero'])).toThrow('--xdp-rx: expected copy or guest, not "zero"');
  });

  it('takes frame sizes up to a jumbo frame (9014 bytes), not with memif, and refuses any longer', () => {
    expect(parseOptions(['--sizes', '60,1514,1515,9014']).sizes).toEqual([60, 1514, 1515, 9014]);
    expect([1514, 1515, 9014].map(isJumbo)).toEqual([false, true, true]);
    expect(() => parseOptions(['--sizes', '9015'])).toThrow('--sizes: 9015 is outside 60..9014');
    expect(() => parseOptions(['--sizes', '59'])).toThrow('--sizes: 59 is outside 60..9014');
    expect(() => parseOptions(['--sizes', '9014', '--vf-ports', 'memif'])).toThrow(/--vf-ports memif with --sizes above 1514/);
    expect(parseOptions(['--sizes', '1500', '--vf-ports', 'memif']).vfPorts).toEqual(['memif']);
  });

  it('says in --help which environment variables it reads', () => {
    expect(USAGE).toContain('VIO4WD_BENCH_CPU_PROF=DIR');
    expect(USAGE).toContain('VIO4WD_BENCH_NODE_FLAGS=');
  });
});
