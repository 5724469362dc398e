// Log priorities for journald. Under systemd, stdout and stderr are usually a stream socket into
// the journal, and systemd says so in JOURNAL_STREAM ("<device>:<inode>" of that socket). journald
// reads a line that starts with "<N>" (N a syslog priority, 0-7) as a message of priority N and
// strips the prefix; every other line gets the unit's default priority (6, info). So a program
// whose fd is that very stream prefixes each line, and a program whose output goes anywhere else
// (a terminal, a pipe, a file, or a stream redirected after systemd set the variable) writes its
// lines unchanged. See systemd.exec(5), "JOURNAL_STREAM", and sd-daemon(3) for the prefixes.
import { fstatSync } from 'node:fs';

/** True when `fd` is the journal stream named by JOURNAL_STREAM in `env`. */
export function isJournalStream(fd: number, env: NodeJS.ProcessEnv = process.env): boolean {
  const m = /^(\d+):(\d+)$/.exec(env.JOURNAL_STREAM ?? '');
  if (!m) return false;
  try {
    const st = fstatSync(fd, { bigint: true });
    return st.dev === BigInt(m[1]) && st.ino === BigInt(m[2]);
  } catch {
    return false;
  }
}

/** Syslog priorities of pino's levels, by name and by number (fatal 2, error 3, warn 4, info 6, debug and trace 7). */
const PRIORITY_BY_LEVEL: Readonly<Record<string, number>> = {
  fatal: 2,
  '60': 2,
  error: 3,
  '50': 3,
  warn: 4,
  '40': 4,
  info: 6,
  '30': 6,
  debug: 7,
  '20': 7,
  trace: 7,
  '10': 7,
};

/** The syslog priority of a serialized pino line (its level is the first key); info when unknown. */
export function priorityOfPinoLine(line: string): number {
  const m = /^\{"level":(?:"([a-z]+)"|(\d+))/.exec(line);
  const level = m?.[1] ?? m?.[2];
  return (level !== undefined ? PRIORITY_BY_LEVEL[level] : undefined) ?? 6;
}

/**
 * For pino's `hooks.streamWrite`: prefixes each line with its priority when `fd` is the journal
 * stream, and is the identity otherwise. Decided once, when the logger is made.
 */
export function journalLineHook(fd: number, env: NodeJS.ProcessEnv = process.env): (line: string) => string {
  if (!isJournalStream(fd, env)) return (line) => line;
  return (line) => `<${priorityOfPinoLine(line)}>${line}`;
}

/**
 * Writes `text` to stderr, each line with priority `priority` when stderr is the journal stream
 * (a message of several lines stays several journal entries of that priority).
 */
export function writeStderr(text: string, priority: number, env: NodeJS.ProcessEnv = process.env): void {
  if (!isJournalStream(2, env)) {
    process.stderr.write(text);
    return;
  }
  const lines = text.endsWith('\n') ? text.slice(0, -1).split('\n') : text.split('\n');
  process.stderr.write(`${lines.map((l) => `<${priority}>${l}`).join('\n')}\n`);
}
