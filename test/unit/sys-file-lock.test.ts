import { describe, it, expect } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { lockFile } from '../../sys/file-lock.js';
import { requireBinary } from '../support/netns.js';

describe('lockFile', () => {
  it('holds an exclusive lock that another open of the same file cannot take', () => {
    const dir = mkdtempSync(join(tmpdir(), 'sys-lock-'));
    try {
      const path = join(dir, 'daemon.lock');
      const lock = lockFile(path);
      expect(() => lockFile(path)).toThrow(expect.objectContaining({ syscall: 'flock', code: 'EAGAIN' }));
      lock.release();
      lock.release();
      lockFile(path).release();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it.runIf(requireBinary('flock'))('conflicts with a lock held by a child process, in both directions', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sys-lock-'));
    const path = join(dir, 'daemon.lock');
    // the child takes the lock, says so, then holds it until it is killed (no fork: one PID to end)
    const child = spawn('flock', ['-x', '-F', path, 'sh', '-c', 'echo locked; exec sleep 60'], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      await new Promise<void>((resolve, reject) => {
        child.stdout!.on('data', (d: Buffer) => d.toString().includes('locked') && resolve());
        child.on('exit', (code) => reject(new Error(`flock child exited early (${code})`)));
      });
      expect(() => lockFile(path)).toThrow(expect.objectContaining({ code: 'EAGAIN', message: expect.stringContaining(path) }));
    } finally {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await exited;
      }
    }
    const lock = lockFile(path);
    try {
      const attempt = spawnSync('flock', ['-n', '-E', '75', path, 'true']);
      expect(attempt.status).toBe(75);
    } finally {
      lock.release();
    }
    expect(spawnSync('flock', ['-n', '-E', '75', path, 'true']).status).toBe(0);
    rmSync(dir, { recursive: true, force: true });
  });
});
