// Log priorities as journald sees them. systemd connects stdout and stderr to one stream socket and
// names it in JOURNAL_STREAM (device:inode); here a shell joins them into one pipe and sets the
// variable to that pipe's device:inode, so the real daemon and the real scheduler see exactly
// what they would see under systemd. The lines are then read the way journald reads a stream with
// SyslogLevelPrefix=yes: a leading <N> is the priority and is removed, else the priority is 6.
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startProcess, stopAll, type StartedProcess } from '../support/processes.js';
import { relayBin, repoRoot } from '../support/relay.js';
import { readOnlineCpus } from '../../sys/topology.js';

const schedulerBin = join(repoRoot, 'bin', 'vio4wd_core_scheduler');
const scratch = mkdtempSync(join(tmpdir(), `vio4wd-journal-${process.pid}-`));
let count = 0;

beforeAll(() => {
  for (const f of ['dist/daemon/main.js', 'dist/scheduler/main.js']) {
    if (!existsSync(join(repoRoot, f))) throw new Error(`${f} is missing: run \`npx tsc -p .\` before the integration tests`);
  }
});
afterAll(async () => {
  await stopAll();
  rmSync(scratch, { recursive: true, force: true });
});

function freshDir(): string {
  const dir = join(scratch, `run-${++count}`);
  mkdirSync(dir);
  return dir;
}

type Stream = 'journal' | 'plain' | 'other-stream';

/**
 * Runs `argv` with stdout and stderr on one pipe. 'journal': JOURNAL_STREAM names that pipe;
 * 'other-stream': it names some other file (a stream the output was redirected away from);
 * 'plain': no JOURNAL_STREAM at all.
 */
function run(argv: string[], stream: Stream): StartedProcess {
  const env = { ...process.env };
  delete env.JOURNAL_STREAM;
  const setStream =
    stream === 'journal'
      ? 'JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2); export JOURNAL_STREAM;'
      : stream === 'other-stream'
        ? 'JOURNAL_STREAM=$(stat -L -c %d:%i /dev/null); export JOURNAL_STREAM;'
        : '';
  const script = `exec 2>&1; ${setStream} exec "$@"`;
  return startProcess('/bin/sh', ['-c', script, 'sh', process.execPath, ...argv], { env, label: argv[0] });
}

interface JournalEntry {
  priority: number;
  message: string;
}

/** Each line as journald files it. */
function journal(output: string): JournalEntry[] {
  return output
    .split('\n')
    .filter((l) => l !== '')
    .map((line) => {
      const m = /^<([0-7])>(.*)$/s.exec(line);
      return m ? { priority: Number(m[1]), message: m[2] } : { priority: 6, message: line };
    });
}

const PRIORITY: Record<string, number> = { fatal: 2, error: 3, warn: 4, info: 6, debug: 7, '60': 2, '50': 3, '40': 4, '30': 6, '20': 7 };

/** The JSON log entries with their priority; every JSON entry must carry the priority of its level. */
function checkedJsonEntries(entries: JournalEntry[]): { priority: number; level: string; msg: string }[] {
  return entries
    .filter((e) => e.message.startsWith('{'))
    .map((e) => {
      const parsed = JSON.parse(e.message) as { level: string | number; msg: string };
      expect(e.priority, `priority of ${e.message}`).toBe(PRIORITY[String(parsed.level)]);
      return { priority: e.priority, level: String(parsed.level), msg: parsed.msg };
    });
}

function daemonConfig(dir: string, lines: string[]): string {
  const path = join(dir, 'virtioforwarder');
  writeFileSync(
    path,
    [
      `VIRTIOFWD_CPU_MASK=${readOnlineCpus('/sys').at(-1)}`,
      `VIRTIOFWD_PID_DIR=${dir}`,
      `VIRTIOFWD_SOCKET_DIR=${join(dir, 'sockets')}`,
      'VIRTIOFWD_LOG_LEVEL=7',
      'VIO4WD_CORE_SCHED_ENABLE=n',
      'VIRTIOFWD_ZMQ_PORT_CONTROL_EP=off',
      'VIRTIOFWD_ZMQ_STATS_EP=off',
      'VIRTIOFWD_ZMQ_CONFIG_EP=off',
      'VIRTIOFWD_DYNAMIC_SOCKETS=y',
      // Ignored with a warning: one warn line.
      'VIRTIOFWD_HUGETLBFS_MOUNT_POINT=/dev/hugepages',
      ...lines,
      '',
    ].join('\n'),
  );
  return path;
}

describe('virtio-forwarder on the journal stream', () => {
  it('gives each log line the priority of its level: warn 4, info 6', async () => {
    const dir = freshDir();
    const p = run([relayBin, '--config', daemonConfig(dir, [])], 'journal');
    await p.waitForOutput(/virtio-forwarder ready/, 20_000);
    expect(await p.stop(8000)).toBe(0);
    const entries = journal(p.output());
    // Every line was prefixed: nothing fell back to the default priority unmarked.
    expect(p.output().split('\n').filter((l) => l !== '' && !/^<[0-7]>/.test(l))).toEqual([]);
    const logs = checkedJsonEntries(entries);
    expect(logs.find((l) => /VIRTIOFWD_HUGETLBFS_MOUNT_POINT/.test(l.msg))?.priority).toBe(4);
    expect(logs.find((l) => l.msg === 'virtio-forwarder ready')?.priority).toBe(6);
    expect(logs.find((l) => l.msg === 'stopped')?.priority).toBe(6);
    expect(logs.length).toBeGreaterThan(3);
  });

  it('gives a start-up fault priority 2 (fatal, on stdout and on stderr) and a bad file priority 3', async () => {
    const dir = freshDir();
    const file = join(dir, 'file');
    writeFileSync(file, '');
    const fault = run([relayBin, '--config', daemonConfig(dir, [`VIRTIOFWD_PID_DIR=${file}`])], 'journal');
    expect(await fault.exited).toBe(78);
    const entries = journal(fault.output());
    const logs = checkedJsonEntries(entries);
    expect(logs.find((l) => l.level === 'fatal')?.priority).toBe(2);
    expect(entries.find((e) => e.message.startsWith('virtio-forwarder: VIRTIOFWD_PID_DIR='))?.priority).toBe(2);

    const bad = run([relayBin, '--config', daemonConfig(freshDir(), ['VIRTIOFWD_JUMBO=maybe', 'VIRTIOFWD_BIND_VFIO_PCI=0000:05:08.1'])], 'journal');
    expect(await bad.exited).toBe(78);
    const lines = journal(bad.output());
    // Several problems are several lines, each an error.
    expect(lines.length).toBeGreaterThanOrEqual(3);
    expect(lines.every((e) => e.priority === 3)).toBe(true);
    expect(lines.some((e) => /VIRTIOFWD_JUMBO="maybe"/.test(e.message))).toBe(true);
    expect(lines.some((e) => /VIRTIOFWD_BIND_VFIO_PCI=/.test(e.message))).toBe(true);
  });

  it.each<Stream>(['plain', 'other-stream'])('writes plain JSON lines, unchanged, when stdout is not the journal stream (%s)', async (stream) => {
    const dir = freshDir();
    const p = run([relayBin, '--config', daemonConfig(dir, [])], stream);
    await p.waitForOutput(/virtio-forwarder ready/, 20_000);
    expect(await p.stop(8000)).toBe(0);
    const lines = p.output().split('\n').filter((l) => l !== '');
    expect(lines.length).toBeGreaterThan(3);
    for (const line of lines) expect(() => JSON.parse(line), line).not.toThrow();
  });
});

describe('vio4wd_core_scheduler on the journal stream', () => {
  function schedulerConfig(dir: string, lines: string[] = []): string {
    const path = join(dir, 'virtioforwarder');
    // Endpoints where no daemon listens: the scheduler starts (info) and warns that it is unreachable.
    writeFileSync(
      path,
      [`VIRTIOFWD_ZMQ_STATS_EP=ipc://${dir}/stats`, `VIRTIOFWD_ZMQ_CORE_SCHED_EP=ipc://${dir}/core_sched`, 'VIO4WD_CORE_SCHED_POLL_INTERVAL=0.2', ...lines, ''].join('\n'),
    );
    return path;
  }

  it('gives info 6, warn 4, debug 7, and a configuration error 3', async () => {
    const dir = freshDir();
    const p = run([schedulerBin, '--config', schedulerConfig(dir, ['VIO4WD_CORE_SCHED_LOG_LEVEL=7']), '--request-timeout', '100'], 'journal');
    await p.waitForOutput(/still unreachable/, 20_000);
    expect(await p.stop(5000)).toBe(0);
    expect(p.output().split('\n').filter((l) => l !== '' && !/^<[0-7]>/.test(l))).toEqual([]);
    const logs = checkedJsonEntries(journal(p.output()));
    expect(logs.find((l) => /unreachable/.test(l.msg))?.priority).toBe(4);
    expect(logs.some((l) => l.priority === 6)).toBe(true);
    expect(logs.find((l) => /still unreachable/.test(l.msg))?.priority).toBe(7);

    const bad = run([schedulerBin, '--config', schedulerConfig(freshDir(), ['VIO4WD_CORE_SCHED_GLOBAL_NUMA_OPT=maybe'])], 'journal');
    expect(await bad.exited).toBe(78);
    expect(journal(bad.output())).toEqual([
      {
        priority: 3,
        message: 'vio4wd_core_scheduler: VIO4WD_CORE_SCHED_GLOBAL_NUMA_OPT="maybe" is not valid: expected y or n (also yes/no, true/false, 1/0, on/off)',
      },
    ]);
  });

  it('writes plain JSON lines without JOURNAL_STREAM', async () => {
    const dir = freshDir();
    const p = run([schedulerBin, '--config', schedulerConfig(dir), '--request-timeout', '100'], 'plain');
    await p.waitForOutput(/unreachable/, 20_000);
    expect(await p.stop(5000)).toBe(0);
    const lines = p.output().split('\n').filter((l) => l !== '');
    expect(lines.length).toBeGreaterThan(1);
    for (const line of lines) expect(line.startsWith('{'), line).toBe(true);
  });
});
