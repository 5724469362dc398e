// Which fd is the journal's stream, and the priority of each pino line, against real files.
import { closeSync, fstatSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { isJournalStream, journalLineHook, priorityOfPinoLine } from '../../sys/journal.js';

const scratch = mkdtempSync(join(tmpdir(), `vio4wd-journal-unit-${process.pid}-`));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

function openFile(name: string): number {
  const path = join(scratch, name);
  writeFileSync(path, '');
  return openSync(path, 'r');
}

describe('isJournalStream', () => {
  it('is true only for the fd whose device:inode JOURNAL_STREAM names', () => {
    const a = openFile('a');
    const b = openFile('b');
    try {
      const st = fstatSync(a);
      const env = { JOURNAL_STREAM: `${st.dev}:${st.ino}` };
      expect(isJournalStream(a, env)).toBe(true);
      expect(isJournalStream(b, env)).toBe(false);
      // Same inode on another device, or the other way round, is another file.
      expect(isJournalStream(a, { JOURNAL_STREAM: `${st.dev + 1}:${st.ino}` })).toBe(false);
      expect(isJournalStream(a, { JOURNAL_STREAM: `${st.dev}:${st.ino + 1}` })).toBe(false);
    } finally {
      closeSync(a);
      closeSync(b);
    }
  });

  it.each([undefined, '', '12', '1:2:3', 'a:b', ' 1:2', '-1:2', '1:2\n'])('is false for JOURNAL_STREAM=%j', (value) => {
    const fd = openFile('c');
    try {
      const st = fstatSync(fd);
      const env: NodeJS.ProcessEnv = value === undefined ? {} : { JOURNAL_STREAM: value.replace('1:2', `${st.dev}:${st.ino}`) };
      if (value === '1:2\n' || value === ' 1:2') expect(env.JOURNAL_STREAM).toContain(`${st.dev}:${st.ino}`);
      expect(isJournalStream(fd, env)).toBe(false);
    } finally {
      closeSync(fd);
    }
  });

  it('is false for a closed fd', () => {
    const fd = openFile('d');
    const st = fstatSync(fd);
    closeSync(fd);
    expect(isJournalStream(fd, { JOURNAL_STREAM: `${st.dev}:${st.ino}` })).toBe(false);
  });
});

describe('priorities of pino lines', () => {
  it.each([
    ['fatal', 2], ['error', 3], ['warn', 4], ['info', 6], ['debug', 7], ['trace', 7],
    [60, 2], [50, 3], [40, 4], [30, 6], [20, 7], [10, 7],
  ])('level %j is priority %i', (level, priority) => {
    expect(priorityOfPinoLine(`${JSON.stringify({ level, time: 1, msg: 'm' })}\n`)).toBe(priority);
  });

  it('falls back to info for what is not a pino line, and reads only the leading level key', () => {
    expect(priorityOfPinoLine('plain text\n')).toBe(6);
    expect(priorityOfPinoLine('{"level":"loud","msg":"x"}')).toBe(6);
    expect(priorityOfPinoLine('{"msg":"{\\"level\\":\\"fatal\\"}","level":"info"}')).toBe(6);
  });

  it('prefixes lines only for the journal stream', () => {
    const fd = openFile('e');
    try {
      const st = fstatSync(fd);
      const line = '{"level":"warn","msg":"x"}\n';
      expect(journalLineHook(fd, { JOURNAL_STREAM: `${st.dev}:${st.ino}` })(line)).toBe(`<4>${line}`);
      expect(journalLineHook(fd, {})(line)).toBe(line);
    } finally {
      closeSync(fd);
    }
  });
});
