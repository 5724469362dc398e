// Child processes started by tests: output captured, waited on by pattern, and always ended by PID.
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';

export interface StartedProcess {
  pid: number;
  proc: ChildProcess;
  /** Everything written to stdout and stderr so far. */
  output(): string;
  /** Resolves with the match once `pattern` appears in the output; rejects on timeout or exit. */
  waitForOutput(pattern: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  /** Resolves with the exit code (or signal name) once the process has ended. */
  exited: Promise<number | string>;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves once the process is gone. */
  stop(graceMs?: number): Promise<number | string>;
}

const running = new Set<StartedProcess>();

export function startProcess(
  cmd: string,
  args: string[],
  opts: SpawnOptions & { label?: string; echo?: boolean } = {},
): StartedProcess {
  const proc = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
  if (proc.pid === undefined) throw new Error(`could not start ${cmd}`);
  let text = '';
  const listeners = new Set<() => void>();
  const onData = (chunk: Buffer) => {
    text += chunk.toString('utf8');
    if (text.length > 4_000_000) text = text.slice(-2_000_000);
    if (opts.echo) process.stderr.write(`[${opts.label ?? cmd}] ${chunk.toString('utf8')}`);
    for (const l of listeners) l();
  };
  proc.stdout?.on('data', onData);
  proc.stderr?.on('data', onData);
  let exitStatus: number | string | undefined;
  const exited = new Promise<number | string>((resolve) => {
    proc.on('exit', (code, signal) => {
      exitStatus = code ?? signal ?? -1;
      running.delete(started);
      for (const l of listeners) l();
      resolve(exitStatus);
    });
  });
  const started: StartedProcess = {
    pid: proc.pid,
    proc,
    output: () => text,
    exited,
    waitForOutput(pattern, timeoutMs = 30_000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const m = text.match(pattern);
          if (m) {
            done();
            resolve(m);
          } else if (exitStatus !== undefined) {
            done();
            reject(new Error(`${opts.label ?? cmd} exited (${exitStatus}) before printing ${pattern}:\n${text.slice(-3000)}`));
          }
        };
        const timer = setTimeout(() => {
          done();
          reject(new Error(`timed out after ${timeoutMs} ms waiting for ${pattern} from ${opts.label ?? cmd}:\n${text.slice(-3000)}`));
        }, timeoutMs);
        const done = () => {
          clearTimeout(timer);
          listeners.delete(check);
        };
        listeners.add(check);
        check();
      });
    },
    async stop(graceMs = 3000) {
      if (exitStatus !== undefined) return exitStatus;
      try {
        process.kill(started.pid, 'SIGTERM');
      } catch {
        /* already gone */
      }
      const timer = setTimeout(() => {
        try {
          process.kill(started.pid, 'SIGKILL');
        } catch {
          /* already gone */
        }
      }, graceMs);
      const status = await exited;
      clearTimeout(timer);
      return status;
    },
  };
  running.add(started);
  return started;
}

/** Stops every process started through startProcess that is still running. */
export async function stopAll(): Promise<void> {
  await Promise.all([...running].map((p) => p.stop()));
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls `probe` until it returns a truthy value or the timeout passes. */
export async function waitFor<T>(probe: () => T | Promise<T>, timeoutMs: number, what: string, everyMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await sleep(everyMs);
  }
}
