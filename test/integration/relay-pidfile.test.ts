// The PID lock against a real second process: the kernel's flock decides, not the file.
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { acquirePidFile, PID_FILE_NAME } from '../../daemon/pidfile.js';
import { startProcess, stopAll, waitFor } from '../support/processes.js';

const distPidfile = new URL('../../dist/daemon/pidfile.js', import.meta.url).pathname;
const scratch = mkdtempSync(join(tmpdir(), `vio4wd-pid-${process.pid}-`));

/** A node process that takes the lock in `dir`, prints the outcome, and keeps the lock until SIGTERM. */
function holder(dir: string) {
  const script = `
    import { acquirePidFile } from ${JSON.stringify(distPidfile)};
    let pidFile;
    try {
      pidFile = acquirePidFile(${JSON.stringify(dir)});
    } catch (err) {
      console.log('REFUSED: ' + err.message);
      process.exit(3);
    }
    // The handler goes first: the test may signal as soon as it reads LOCKED.
    process.on('SIGTERM', () => process.exit(0));
    console.log('LOCKED ' + process.pid);
    setInterval(() => {}, 1000);
  `;
  return startProcess(process.execPath, ['--input-type=module', '-e', script], { label: 'pid holder' });
}

beforeAll(() => {
  if (!existsSync(distPidfile)) {
    throw new Error(`${distPidfile} is missing: run \`npx tsc -p .\` before the integration tests`);
  }
});
afterAll(async () => {
  await stopAll();
  rmSync(scratch, { recursive: true, force: true });
});

describe('PID file', () => {
  it('holds our pid while locked and refuses a second process, naming the file and the pid', async () => {
    const dir = mkdtempSync(join(scratch, 'a-'));
    const pidFile = acquirePidFile(dir);
    try {
      expect(pidFile.path).toBe(join(dir, PID_FILE_NAME));
      expect(readFileSync(pidFile.path, 'utf8')).toBe(`${process.pid}\n`);
      const second = holder(dir);
      expect(await second.exited).toBe(3);
      expect(second.output()).toContain(
        `REFUSED: another virtio-forwarder is running: ${pidFile.path} is locked by pid ${process.pid}`,
      );
    } finally {
      pidFile.release();
    }
    expect(existsSync(join(dir, PID_FILE_NAME))).toBe(false);
    pidFile.release(); // a second release is harmless
  });

  it('is taken by another process after release, and refused to us while that process lives', async () => {
    const dir = mkdtempSync(join(scratch, 'b-'));
    acquirePidFile(dir).release();
    const other = holder(dir);
    const [, pid] = await other.waitForOutput(/LOCKED (\d+)/, 10_000);
    expect(Number(pid)).toBe(other.pid);
    expect(() => acquirePidFile(dir)).toThrow(
      `another virtio-forwarder is running: ${join(dir, PID_FILE_NAME)} is locked by pid ${other.pid}`,
    );
    // A clean exit removes the file through the exit hook.
    expect(await other.stop()).toBe(0);
    expect(existsSync(join(dir, PID_FILE_NAME))).toBe(false);
    const again = acquirePidFile(dir);
    again.release();
  });

  it('takes over a file left by a killed process, whose lock died with it', async () => {
    const dir = mkdtempSync(join(scratch, 'c-'));
    const doomed = holder(dir);
    await doomed.waitForOutput(/LOCKED/, 10_000);
    process.kill(doomed.pid, 'SIGKILL');
    await doomed.exited;
    const path = join(dir, PID_FILE_NAME);
    expect(readFileSync(path, 'utf8')).toBe(`${doomed.pid}\n`);
    const ours = await waitFor(() => acquirePidFile(dir), 5_000, 'the dead holder\'s lock to go');
    try {
      expect(readFileSync(path, 'utf8')).toBe(`${process.pid}\n`);
    } finally {
      ours.release();
    }
  });

  it('overwrites a longer stale pid completely', () => {
    const dir = mkdtempSync(join(scratch, 'd-'));
    writeFileSync(join(dir, PID_FILE_NAME), '123456789012345\n');
    const pidFile = acquirePidFile(dir);
    try {
      expect(readFileSync(pidFile.path, 'utf8')).toBe(`${process.pid}\n`);
    } finally {
      pidFile.release();
    }
  });

  it('says which PID directory is unusable', () => {
    const missing = join(scratch, 'missing');
    expect(() => acquirePidFile(missing)).toThrow(`PID directory ${missing} (VIRTIOFWD_PID_DIR) is not usable:`);
    const file = join(scratch, 'plain-file');
    writeFileSync(file, '');
    expect(() => acquirePidFile(file)).toThrow(`PID directory ${file} (VIRTIOFWD_PID_DIR) is not usable: not a directory`);
  });
});
