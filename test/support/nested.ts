// Runs a command inside the nested-KVM rig (scripts/nested-run.sh) from a test, streaming the
// rig's output line by line to this process's stderr so that a long run shows its progress.
import { spawn } from 'node:child_process';
import { resolve } from 'node:path';
import { repoRoot } from './guest-image.js';

export const nestedRunScript = resolve(repoRoot, 'scripts/nested-run.sh');

export interface NestedResult {
  /** The command's exit status (124: timed out, 125: the rig failed). */
  status: number;
  output: string;
}

const children = new Set<number>();

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
  opts: { timeoutS?: number; label?: string; echo?: boolean; rigArgs?: string[] } = {},
): Promise<NestedResult> {
  const label = opts.label ?? 'nested';
  const args = ['--timeout', String(opts.timeoutS ?? 1800), ...(opts.rigArgs ?? []), '--', ...command];
  return new Promise((resolveRun, reject) => {
    const child = spawn(nestedRunScript, args, { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
    if (child.pid !== undefined) children.add(child.pid);
    let output = '';
    let partial = '';
    const onData = (chunk: Buffer) => {
      const text = chunk.toString('utf8');
      output += text;
      if (output.length > 8_000_000) output = output.slice(-4_000_000);
      if (opts.echo === false) return;
      partial += text;
      const lines = partial.split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) process.stderr.write(`[${label}] ${line}\n`);
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      if (child.pid !== undefined) children.delete(child.pid);
      if (partial && opts.echo !== false) process.stderr.write(`[${label}] ${partial}\n`);
      resolveRun({ status: code ?? (signal ? 128 : -1), output });
    });
  });
}
