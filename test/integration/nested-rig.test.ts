// The nested-KVM rig itself (scripts/nested-run.sh): /dev/kvm exists inside it, the command runs in
// the working directory with CI and VIO4WD_* passed in, its output and exit status come back, and
// a command that fails makes the run fail.
import { afterAll, describe, expect, it } from 'vitest';
import { findBinary, isRoot, requireOrSkip } from '../support/env.js';
import { repoRoot } from '../support/guest-image.js';
import { runNested, stopNested } from '../support/nested.js';

afterAll(() => stopNested());

const ready = requireOrSkip(isRoot() && findBinary('qemu-system-x86_64') !== null, 'the nested-KVM rig needs root and qemu-system-x86_64');

describe.runIf(ready)('nested-KVM rig', () => {
  it('runs a command where /dev/kvm exists and returns its output and exit status', { timeout: 300_000 }, async () => {
    process.env.VIO4WD_RIG_PROBE = `probe-${process.pid}`;
    const script = [
      'test -c /dev/kvm || { echo "no /dev/kvm"; exit 3; }',
      'echo "nested=$(cat /sys/module/kvm_amd/parameters/nested) probe=$VIO4WD_RIG_PROBE in=$VIO4WD_IN_NESTED cwd=$(pwd)"',
      'node -e "console.log(\'node ok\', process.version)"',
      'exit 7',
    ].join('\n');
    const run = await runNested(['bash', '-c', script], { timeoutS: 240, label: 'rig-self-test' });
    delete process.env.VIO4WD_RIG_PROBE;
    expect(run.status, run.output).toBe(7);
    expect(run.output).toContain(`nested=1 probe=probe-${process.pid} in=1 cwd=${repoRoot}`);
    expect(run.output).toMatch(/node ok v\d+/);
    expect(run.output).toMatch(/nested-run: the command exited with status 7/);
  });

  it('refuses a bad invocation with a message and status 2', async () => {
    const run = await runNested(['true'], { rigArgs: ['--timeout', 'x'], echo: false });
    expect(run.status).toBe(2);
    expect(run.output).toMatch(/--timeout must be a positive number of seconds, not 'x'/);
  });
});
