// Runs a command inside the nested-KVM rig (scripts/nested-run.sh) from a test, streaming the
// rig's output line by line to this process's stderr so that a long run shows its progress.
import { spawn } from 'node:child_process';
import { resolve } from 'node:path';
import { repoRoot } from './guest-image.js';

export const nestedRunScript = resolve(repoRoot, 'scripts/nested-run.sh');

export interface NestedResult {
  /** The command's exit status (124: timed out, 125: the rig failed; 130 when stopped early). */
  status: number;
  output: string;
  /** Why the rig was stopped before its command ended (`stopWhen`'s reason), if it was. */
  stoppedFor?: string;
}

const children = new Set<number>();

/**
 * A vCPU of the rig stuck this long has never come back in these runs (the longest seen went past
 * 400 s): the rig is stopped then (`rigStalled` as `stopWhen`), rather than at its timeout.
 */
export const RIG_STALL_LIMIT_S = 120;

/** The rig kernel's report of a stuck vCPU, to the end of its line; group 1 is the seconds. */
export const SOFT_LOCKUP = /watchdog: BUG: soft lockup - CPU#\d+ stuck for (\d+)s[^\n]*/;

/** A line of the rig's console that says it will not get anywhere: the reason to stop it now. */
export function rigStalled(line: string): string | null {
  const m = SOFT_LOCKUP.exec(line);
  return m && Number(m[1]) >= RIG_STALL_LIMIT_S ? `its kernel: "${m[0].trim()}" (a vCPU stuck ${RIG_STALL_LIMIT_S} s or more has not come back)` : null;
}

/** Ends every rig a test started and has not seen end (by PID; the script stops its QEMU). */
export function stopNested(): void {
  for (const pid of children) {
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      /* already gone */
    }
  }
}

export function runNested(
  command: string[],
  opts: {
    timeoutS?: number;
    label?: string;
    echo?: boolean;
    rigArgs?: string[];
    /** Looks at each line of the rig's output; a reason returned stops the rig at once (SIGTERM). */
    stopWhen?: (line: string) => string | null;
    /**
     * Stops the rig when it has printed nothing for this long: for a command that prints at
     * least that often while it works, a rig frozen whole (no soft lockup report either).
     */
    silenceLimitS?: number;
    /** The script that boots the rig (tests of this module give a stand-in). */
    script?: string;
  } = {},
): Promise<NestedResult> {
  const label = opts.label ?? 'nested';
  const args = ['--timeout', String(opts.timeoutS ?? 1800), ...(opts.rigArgs ?? []), '--', ...command];
  return new Promise((resolveRun, reject) => {
    const child = spawn(opts.script ?? nestedRunScript, args, { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
    if (child.pid !== undefined) children.add(child.pid);
    let output = '';
    let partial = '';
    let stoppedFor: string | undefined;
    const stop = (reason: string) => {
      if (stoppedFor !== undefined || child.pid === undefined) return;
      stoppedFor = reason;
      process.stderr.write(`[${label}] stopping the rig: ${reason}\n`);
      try {
        process.kill(child.pid, 'SIGTERM');
      } catch {
        /* it ended meanwhile */
      }
    };
    let lastOutput = Date.now();
    const silenceLimitS = opts.silenceLimitS;
    const watchdog = silenceLimitS === undefined ? null : setInterval(() => {
      const silentS = Math.floor((Date.now() - lastOutput) / 1000);
      if (silentS >= silenceLimitS) stop(`it printed nothing for ${silentS} s (the limit is ${silenceLimitS} s): frozen`);
    }, Math.min(5000, silenceLimitS * 250));
    const onData = (chunk: Buffer) => {
      lastOutput = Date.now();
      const text = chunk.toString('utf8');
      output += text;
      if (output.length > 8_000_000) output = output.slice(-4_000_000);
      partial += text;
      const lines = partial.split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) {
        if (opts.echo !== false) process.stderr.write(`[${label}] ${line}\n`);
        const reason = stoppedFor === undefined ? opts.stopWhen?.(line) ?? null : null;
        if (reason !== null) stop(reason);
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      if (watchdog !== null) clearInterval(watchdog);
      if (child.pid !== undefined) children.delete(child.pid);
      if (partial && opts.echo !== false) process.stderr.write(`[${label}] ${partial}\n`);
      resolveRun({ status: code ?? (signal ? 128 : -1), output, stoppedFor });
    });
  });
}
