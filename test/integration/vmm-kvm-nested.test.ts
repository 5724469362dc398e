// The KVM test files (test/kvm) on a machine without a usable /dev/kvm: one boot of the nested-KVM
// rig runs all of them, one vitest run per file inside (where /dev/kvm exists), and each file
// becomes one test here that passes only if every test in it passed there. Where /dev/kvm works,
// vitest runs test/kvm directly and this file has nothing to do (VIO4WD_FORCE_NESTED=1 makes it
// run anyway).
//
// Each file writes its own report, and the rig is booted again for the files that did not pass:
// the rig (TCG's emulation of AMD SVM on a two-CPU host) fails nested guests, and sometimes its
// own kernel, in shapes that are not the VMM's (triple faults, soft lockups, a kernel panic in the
// rig while a nested guest boots; docs/vmm.md "Known problems"). A file counts as run when it
// reported, or when it was the one running when the rig died; a file that has run RUNS_PER_FILE
// times without passing fails, with its last run's report. Every later boot is announced on the
// console with the reason (the file's failure, the rig's panic or soft lockup), so the rate stays
// visible, and a defect of the VMM fails every run. The boots share one time budget.
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findBinary, requireOrSkip } from '../support/env.js';
import { repoRoot } from '../support/guest-image.js';
import { kvmRoute, kvmRouteReason } from '../support/kvm.js';
import { SOFT_LOCKUP, rigStalled, runNested, stopNested, type NestedResult } from '../support/nested.js';

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
/** A later boot only runs what the earlier ones did not pass, so it gets less time. */
const RETRY_TIMEOUT_S = 15 * 60;
/** All boots together, so that a rig that keeps failing cannot hold CI past its limit. */
const RIG_BUDGET_S = 40 * 60;
const RUNS_PER_FILE = 3;
/**
 * Longest one file may run inside the rig (the slowest takes about 3 minutes, nested guests booted
 * again included). A file whose nested guests hang would otherwise hold the whole boot: its tests
 * wait 10 minutes each. A file stopped here counts as a failed run, and the next files still run.
 */
const FILE_TIMEOUT_S = 600;
/**
 * Longest the rig may print nothing: each file's vitest prints as it starts and as it ends, and a
 * file stopped at FILE_TIMEOUT_S is announced. Silence past that means the rig froze whole (seen
 * once: no output, no soft lockup report, until the boot's 30-minute timeout).
 */
const SILENCE_LIMIT_S = FILE_TIMEOUT_S + 120;

/** Inside the rig: each file in its own vitest run with its own JSON report; the worst status wins. */
const PER_FILE_SCRIPT = `status=0
for f in "$@"; do
  timeout -k 10 ${FILE_TIMEOUT_S} node node_modules/vitest/vitest.mjs run "test/kvm/$f" --testTimeout=120000 \\
    --reporter=default --reporter=json --outputFile.json="${reportDir}/$f.json"
  s=$?
  [ $s = 124 ] && echo "kvm-suite: $f did not finish within ${FILE_TIMEOUT_S} s and was stopped"
  [ $s = 0 ] || status=1
done
exit $status`;
const FILE_TIMED_OUT = /kvm-suite: (\S+) did not finish within/g;

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
    { timeoutS, label, rigArgs: ['--memory', '8G'], stopWhen: rigStalled, silenceLimitS: SILENCE_LIMIT_S });
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
    const started = Date.now();
    const runs = new Map<string, number>(kvmFiles.map((f) => [f, 0]));
    let pending = [...kvmFiles];
    for (let boot = 1; pending.length > 0; boot++) {
      const left = RIG_BUDGET_S - Math.floor((Date.now() - started) / 1000);
      if (boot > 1 && left < 120) {
        console.warn(`KVM tests: the rig's time budget is spent; ${pending.join(', ')} did not pass`);
        break;
      }
      // The earlier run's reports go, so a boot that dies leaves these files without a result.
      for (const file of pending) rmSync(resolve(reportDir, `${file}.json`), { force: true });
      const thisRun = await bootRig(pending, Math.min(boot === 1 ? RIG_TIMEOUT_S : RETRY_TIMEOUT_S, left), boot === 1 ? 'kvm-rig' : `kvm-rig-${boot}`);
      const reports = readReports(pending);
      const failed = failedFiles(reports);
      const timedOut = new Set([...thisRun.output.matchAll(FILE_TIMED_OUT)].map((m) => m[1]));
      // Files run in order: the first one without a report that was not stopped is the one the rig died in.
      const diedIn = pending.find((f) => !reports.has(f) && !timedOut.has(f));
      for (const [file, r] of reports) results.set(file, r);
      run = run ? { status: thisRun.status, output: `${run.output}\n--- boot ${boot} of the rig ---\n${thisRun.output}` } : thisRun;
      const panic = /Kernel panic[^\n]*/.exec(thisRun.output)?.[0]?.trim();
      const stall = SOFT_LOCKUP.exec(thisRun.output)?.[0]?.trim();
      const rigSaid = [...[panic, stall].filter(Boolean).map((line) => `its kernel: "${line}"`), ...(thisRun.stoppedFor ? [`stopped early: ${thisRun.stoppedFor}`] : [])].join('; ');
      const next: string[] = [];
      for (const file of pending) {
        if (reports.has(file) && !failed.has(file)) continue; // passed
        // A failed file says why; of those without a report, only the one the rig died in ran.
        const why = failed.get(file)
          ?? (timedOut.has(file) ? `did not finish within ${FILE_TIMEOUT_S} s` : file === diedIn ? `the rig ended with status ${thisRun.status} while it ran` : undefined);
        if (why) runs.set(file, runs.get(file)! + 1);
        if (runs.get(file)! >= RUNS_PER_FILE) continue; // failed for good, with its last report
        next.push(file);
        const count = why ? `run ${runs.get(file)} of ${RUNS_PER_FILE} failed ("${why}")` : `did not run (the rig ended with status ${thisRun.status} before it)`;
        console.warn(`KVM tests: ${file} ${count}${rigSaid ? `; ${rigSaid}` : ''}; boot ${boot + 1} of the rig runs it again`);
      }
      pending = next;
    }
  }, (RIG_BUDGET_S + 300) * 1000);

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

  // The rig's own status matters only where a file has no passing report: a boot whose kernel died
  // after its files reported (while powering off) has nothing left to decide.
  it('the rig ended its last boot cleanly, or every file passed before it ended', () => {
    const allPassed = kvmFiles.every((f) => results.get(f)?.status === 'passed');
    if (!allPassed) expect(run?.status, run?.output.slice(-4000)).toBe(0);
    expect(run).toBeDefined();
  });
});
