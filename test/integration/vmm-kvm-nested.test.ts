// The KVM test files (test/kvm) on a machine without a usable /dev/kvm: one boot of the nested-KVM
// rig runs all of them, one vitest run per file inside (where /dev/kvm exists), and each file
// becomes one test here that passes only if every test in it passed there. Where /dev/kvm works,
// vitest runs test/kvm directly and this file has nothing to do (VIO4WD_FORCE_NESTED=1 makes it
// run anyway).
//
// Each file writes its own report, so that when the rig's own kernel dies part way (a kernel
// panic in the rig while a two-vCPU nested guest boots, seen in two CI runs; docs/vmm.md "Known
// problems"), the files that finished keep their results and only the others run again, in up
// to EXTRA_BOOTS more boots of the rig, each announced on the console. A file that ran and
// failed is never run again, with one exception: a file whose every failure is a nested guest's
// triple fault or CPU exception (the rig's emulation of SVM, docs/vmm.md "Known problems") runs
// once more in one more boot, announced with the fault's line; so does a file whose every failure
// is a nested guest that never reached userspace while the rig's own kernel reported soft
// lockups (its vCPUs stalled for tens of seconds: the rig, not the VMM, was stuck).
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

const kvmFiles = readdirSync(resolve(repoRoot, 'test/kvm')).filter((f) => f.endsWith('.test.ts')).sort();
const reportDir = resolve(repoRoot, '.cache/kvm-suite');
const RIG_TIMEOUT_S = 30 * 60;
/** A later boot only runs what the earlier ones did not finish, so it gets less time. */
const RETRY_TIMEOUT_S = 15 * 60;
const EXTRA_BOOTS = 2;
/** What a nested guest's fault looks like in a failure message: the VMM's or the tiny guest's line. */
const GUEST_FAULT = /guest ended: triple fault[^\n"]*|tiny-guest: exception [^\n"]*/;
/** A nested Linux guest that never got to userspace (its boot waits for this line). */
const NO_USERSPACE = /timed out after \d+ ms waiting for \/Run \\\/init as init process\/[^\n"]*/;
/** The rig's own kernel saw a vCPU stuck. */
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

/**
 * The files that failed only because a nested guest faulted (or, with `rigStalled`, never reached
 * userspace), each with the first such line.
 */
function guestFaultFailures(results: Map<string, FileResult>, rigStalled: boolean): Map<string, string> {
  const found = new Map<string, string>();
  for (const [file, r] of results) {
    const failed = r.assertionResults.filter((a) => a.status === 'failed');
    const faults = failed.map((a) => {
      const message = (a.failureMessages ?? []).join('\n');
      return GUEST_FAULT.exec(message)?.[0] ?? (rigStalled ? NO_USERSPACE.exec(message)?.[0] : undefined);
    });
    if (failed.length > 0 && faults.every((f) => f !== undefined)) found.set(file, faults[0]!);
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
    const stall = RIG_STALLED.exec(run.output)?.[0];
    const faulted = guestFaultFailures(results, stall !== undefined);
    if (faulted.size > 0) {
      for (const [file, fault] of faulted) {
        console.warn(`KVM tests: ${file} failed only on a nested guest's fault ("${fault}"${GUEST_FAULT.test(fault) ? '' : `, the rig's kernel: "${stall!.trim()}"`}); it runs once more`);
      }
      const earlier: NestedResult = run;
      const files = [...faulted.keys()];
      const again = await bootRig(files, RETRY_TIMEOUT_S, 'kvm-rig-fault');
      for (const [file, r] of readReports(files)) results.set(file, r);
      run = { status: again.status, output: `${earlier.output}\n--- the rig again for guest faults ---\n${again.output}` };
    }
  }, (RIG_TIMEOUT_S + (EXTRA_BOOTS + 1) * RETRY_TIMEOUT_S + 300) * 1000);

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
