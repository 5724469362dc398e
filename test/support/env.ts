// The rule for tests that need something from the machine (root, a binary, /dev/kvm, hugepages):
// on CI a missing prerequisite is a failure, because .ci/run installs everything; on a developer's
// machine the test is skipped with the reason printed. /dev/kvm is the exception, being hardware:
// without it the KVM tests run inside the nested-KVM rig instead (test/support/kvm.ts).
import { accessSync, constants } from 'node:fs';
import { execFileSync } from 'node:child_process';

export const onCi = (): boolean => Boolean(process.env.CI);

/** Returns true when the test may run; otherwise throws on CI or returns false (caller skips). */
export function requireOrSkip(condition: boolean, message: string): boolean {
  if (condition) return true;
  if (onCi()) throw new Error(`missing test prerequisite on CI: ${message}`);
  console.warn(`skipping: ${message}`);
  return false;
}

export function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

export function findBinary(name: string): string | null {
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(':').concat(['/usr/sbin', '/sbin'])) {
    const candidate = `${dir}/${name}`;
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      /* keep looking */
    }
  }
  return null;
}

export function hasBinary(name: string): boolean {
  return findBinary(name) !== null;
}

/** Runs a command and returns stdout; throws with stderr in the message on failure. */
export function run(cmd: string, args: string[], opts: { input?: string; timeoutMs?: number } = {}): string {
  try {
    return execFileSync(cmd, args, {
      encoding: 'utf8',
      input: opts.input,
      timeout: opts.timeoutMs ?? 30_000,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')} failed: ${e.stderr?.trim() || e.message}`);
  }
}

/**
 * Whether this kernel is at least `major.minor` (uname's release). Where a feature needs a newer
 * kernel than the machine has, a test says so on the console and leaves that part out.
 */
export function kernelAtLeast(major: number, minor: number): boolean {
  const m = /^(\d+)\.(\d+)/.exec(execFileSync('uname', ['-r'], { encoding: 'utf8' }));
  if (!m) return false;
  return Number(m[1]) > major || (Number(m[1]) === major && Number(m[2]) >= minor);
}

/** Multi-buffer AF_XDP (frames over several chunks: jumbo MTUs) needs Linux 6.6. */
export function multiBufferXdp(): boolean {
  const ok = kernelAtLeast(6, 6);
  if (!ok) console.warn('this kernel is older than 6.6: no multi-buffer AF_XDP, so the jumbo AF_XDP cases are left out');
  return ok;
}
