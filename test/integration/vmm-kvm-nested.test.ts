// The KVM test files (test/kvm) on a machine without a usable /dev/kvm: one boot of the nested-KVM
// rig runs all of them with vitest inside (where /dev/kvm exists), and each file becomes one test
// here that passes only if every test in it passed there. Where /dev/kvm works, vitest runs
// test/kvm directly and this file has nothing to do (VIO4WD_FORCE_NESTED=1 makes it run anyway).
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findBinary, requireOrSkip } from '../support/env.js';
import { repoRoot } from '../support/guest-image.js';
import { kvmRoute, kvmRouteReason } from '../support/kvm.js';
import { runNested, stopNested, type NestedResult } from '../support/nested.js';

interface FileResult {
  name: string;
  status: string;
  message?: string;
  assertionResults: Array<{ fullName: string; status: string; failureMessages?: string[] }>;
}

const kvmFiles = readdirSync(resolve(repoRoot, 'test/kvm')).filter((f) => f.endsWith('.test.ts')).sort();
const report = resolve(repoRoot, '.cache/kvm-suite.json');
const RIG_TIMEOUT_S = 30 * 60;

const nested = kvmRoute() === 'nested';
const rigPossible = nested && requireOrSkip(findBinary('qemu-system-x86_64') !== null, 'the KVM tests need /dev/kvm or QEMU for the nested rig (scripts/setup.sh installs qemu-system-x86)');

let run: NestedResult | undefined;
let results = new Map<string, FileResult>();

afterAll(() => stopNested());

describe.runIf(rigPossible)(`test/kvm inside the nested-KVM rig (${kvmRouteReason()})`, () => {
  beforeAll(async () => {
    rmSync(report, { force: true });
    console.log(`KVM tests: running ${kvmFiles.length} files in the nested-KVM rig (${kvmRouteReason()})`);
    run = await runNested(
      // One file at a time, in 8 GiB: the files boot Linux guests of up to 5 GiB, and two of them
      // side by side in the rig's default 4 GiB (with its hugepages reserved) can take the rig down.
      ['node', 'node_modules/vitest/vitest.mjs', 'run', 'test/kvm', '--testTimeout=120000', '--no-file-parallelism',
        '--reporter=default', '--reporter=json', `--outputFile.json=${report}`],
      { timeoutS: RIG_TIMEOUT_S, label: 'kvm-rig', rigArgs: ['--memory', '8G'] },
    );
    if (existsSync(report)) {
      const parsed = JSON.parse(readFileSync(report, 'utf8')) as { testResults: FileResult[] };
      results = new Map(parsed.testResults.map((r) => [r.name.slice(r.name.lastIndexOf('/') + 1), r]));
    }
  }, (RIG_TIMEOUT_S + 120) * 1000);

  it.each(kvmFiles)('%s passes inside the rig', (file) => {
    const r = results.get(file);
    const tail = run ? run.output.slice(-4000) : '(the rig did not run)';
    expect(r, `no result for ${file}: the rig ended with status ${run?.status} before vitest reported it. Last output:\n${tail}`).toBeDefined();
    const failed = r!.assertionResults.filter((a) => a.status !== 'passed');
    const why = failed.map((a) => `${a.status}: ${a.fullName}\n${(a.failureMessages ?? []).join('\n').slice(0, 2000)}`).join('\n');
    expect(failed, `${file} inside the rig:\n${why || r!.message}`).toEqual([]);
    expect(r!.status).toBe('passed');
    expect(r!.assertionResults.length).toBeGreaterThan(0);
  });

  it('the rig run as a whole exited 0', () => {
    expect(run?.status, run?.output.slice(-4000)).toBe(0);
  });
});
