// The KVM test files (test/kvm) on a machine without a usable /dev/kvm: one boot of the nested-KVM
// rig runs all of them, one vitest run per file inside (where /dev/kvm exists), and each file
// becomes one test here that passes only if every test in it passed there. Where /dev/kvm works,
// vitest runs test/kvm directly and this file has nothing to do (VIO4WD_FORCE_NESTED=1 makes it
// run anyway).
//
// Each file writes its own report, so that when the rig's own kernel dies part way (a kernel
// panic in the rig while a two-vCPU nested guest boots, seen in two CI runs; docs/vmm.md "Known
// problems"), the files that finished keep their results and only the others run again, in up
// to EXTRA_BOOTS more boots of the rig, each announced on the console. A file that ran and failed
// runs once more, in one more fresh boot of the rig, announced with its first failure: the rig
// (TCG's emulation of AMD SVM on a two-CPU host) has failed nested guests in many shapes that
// are not the VMM's (triple faults, soft lockups of the rig's kernel, boots that stop before
// userspace; docs/vmm.md), so one failure is not yet a verdict, while a defect of ours fails
// both runs. Only the second run's result counts.
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
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

/** VIO4WD_KVM_FILES=a.test.ts,b.test.ts runs only those files of test/kvm in the rig. */
const onlyFiles = process.env.VIO4WD_KVM_FILES?.split(',').filter(Boolean);
const kvmFiles = readdirSync(resolve(repoRoot, 'test/kvm'))
  .filter((f) => f.endsWith('.test.ts') && (!onlyFiles || onlyFiles.includes(f))).sort();
const reportDir = resolve(repoRoot, '.cache/kvm-suite');
const RIG_TIMEOUT_S = 30 * 60;
/** A later boot only runs what the earlier ones did not finish, so it gets less time. */
const RETRY_TIMEOUT_S = 15 * 60;
const EXTRA_BOOTS = 2;
/** The rig's own kernel saw a vCPU stuck: named in the announcement of a file's second run. */
const RIG_STALLED = /watchdog: BUG: soft lockup[^\n]*/;

/** Inside the rig: each file in its own vitest run with its own JSON report; the worst status wins. */
const PER_FILE_SCRIPT = `status=0
for f in "$@"; do
  node node_modules/vitest/vitest.mjs run "test/kvm/$f" --testTimeout=120000 \\
    --reporter=default --reporter=json --outputFile.json="${reportDir}/$f.json" || status=1
done
exit $status`;

function readReports(files: string[]): Map<string, FileResult> {
  const found = new Map<string, FileResult>();
  for (const file of files) {
    const path = resolve(reportDir, `${file}.json`);
    if (!existsSync(path)) continue;
    const parsed = JSON.parse(readFileSync(path, 'utf8')) as { testResults: FileResult[] };
    const r = parsed.testResults.find((t) => t.name.endsWith(`/${file}`));
    if (r) found.set(file, r);
  }
  return found;
}

/** The files that ran and failed, each with the first line of its first failure. */
function failedFiles(results: Map<string, FileResult>): Map<string, string> {
  const found = new Map<string, string>();
  for (const [file, r] of results) {
    const failed = r.assertionResults.filter((a) => a.status === 'failed');
    if (failed.length === 0 && r.status !== 'failed') continue;
    const first = failed[0];
    const line = first ? `${first.fullName}: ${(first.failureMessages?.[0] ?? '').split('\n')[0]}` : (r.message ?? 'failed');
    found.set(file, line.slice(0, 300));
  }
  return found;
}

function bootRig(files: string[], timeoutS: number, label: string): Promise<NestedResult> {
  // 8 GiB: the files boot Linux guests of up to 5 GiB, and two of them side by side in the rig's
  // default 4 GiB (with its hugepages reserved) can take the rig down; they run one at a time.
  return runNested(['bash', '-c', PER_FILE_SCRIPT, 'kvm-suite', ...files],
    { timeoutS, label, rigArgs: ['--memory', '8G'] });
}

const nested = kvmRoute() === 'nested';
const rigPossible = nested && requireOrSkip(findBinary('qemu-system-x86_64') !== null, 'the KVM tests need /dev/kvm or QEMU for the nested rig (scripts/setup.sh installs qemu-system-x86)');

let run: NestedResult | undefined;
let results = new Map<string, FileResult>();

afterAll(() => stopNested());

describe.runIf(rigPossible)(`test/kvm inside the nested-KVM rig (${kvmRouteReason()})`, () => {
  beforeAll(async () => {
    rmSync(reportDir, { recursive: true, force: true });
    mkdirSync(reportDir, { recursive: true });
    console.log(`KVM tests: running ${kvmFiles.length} files in the nested-KVM rig (${kvmRouteReason()})`);
    run = await bootRig(kvmFiles, RIG_TIMEOUT_S, 'kvm-rig');
    results = readReports(kvmFiles);
    for (let boot = 2; boot <= 1 + EXTRA_BOOTS; boot++) {
      const unfinished = kvmFiles.filter((f) => !results.has(f));
      if (unfinished.length === 0 || run.status === 0) break;
      const panic = /Kernel panic[^\n]*/.exec(run.output)?.[0];
      console.warn(`KVM tests: the rig ended with status ${run.status}${panic ? ` (its kernel: "${panic.trim()}")` : ''} `
        + `before ${unfinished.join(', ')} finished; boot ${boot} of the rig runs those files only`);
      const earlier: NestedResult = run;
      const again = await bootRig(unfinished, RETRY_TIMEOUT_S, `kvm-rig-${boot}`);
      for (const [file, r] of readReports(unfinished)) results.set(file, r);
      // The earlier boots' output stays in the record; the status is the latest boot's.
      run = { status: again.status, output: `${earlier.output}\n--- boot ${boot} of the rig ---\n${again.output}` };
    }
    const failed = failedFiles(results);
    if (failed.size > 0) {
      const stall = RIG_STALLED.exec(run.output)?.[0]?.trim();
      for (const [file, why] of failed) {
        console.warn(`KVM tests: ${file} failed in the rig ("${why}"${stall ? `; the rig's kernel: "${stall}"` : ''}); `
          + 'it runs once more in a fresh boot of the rig, and that run decides');
      }
      const earlier: NestedResult = run;
      const files = [...failed.keys()];
      // The first run's reports go, so a second boot that dies leaves these files without a result.
      for (const file of files) {
        results.delete(file);
        rmSync(resolve(reportDir, `${file}.json`), { force: true });
      }
      const again = await bootRig(files, RETRY_TIMEOUT_S, 'kvm-rig-again');
      for (const [file, r] of readReports(files)) results.set(file, r);
      run = { status: again.status, output: `${earlier.output}\n--- the rig again for the failed files ---\n${again.output}` };
    }
  }, (RIG_TIMEOUT_S + (EXTRA_BOOTS + 1) * RETRY_TIMEOUT_S + 300) * 1000);

  it.each(kvmFiles)('%s passes inside the rig', (file) => {
    const r = results.get(file);
    const tail = run ? run.output.slice(-4000) : '(the rig did not run)';
    expect(r, `no result for ${file}: the rig ended with status ${run?.status} before vitest reported it. Last output:\n${tail}`).toBeDefined();
    const failed = r!.assertionResults.filter((a) => a.status !== 'passed');
    const why = failed.map((a) => `${a.status}: ${a.fullName}\n${(a.failureMessages ?? []).join('\n').slice(0, 4000)}`).join('\n');
    expect(failed, `${file} inside the rig:\n${why || r!.message}`).toEqual([]);
    expect(r!.status).toBe('passed');
    expect(r!.assertionResults.length).toBeGreaterThan(0);
  });

  it('the rig run as a whole exited 0', () => {
    expect(run?.status, run?.output.slice(-4000)).toBe(0);
  });
});
