// pino JSON on stdout (journald keeps it), with the threshold given as a syslog severity like the
// original's VIRTIOFWD_LOG_LEVEL. The mapping, one pino level per severity:
//   0 emerg, 1 alert, 2 crit -> fatal    3 err -> error    4 warning -> warn
//   5 notice, 6 info         -> info     7 debug -> debug
// pino has no notice level, so 5 and 6 show the same messages; pino's trace is reached only by
// setting the level in code (tests).
// When stdout is the journal's stream (JOURNAL_STREAM, sys/journal.ts), each line starts with its
// syslog priority, <2> fatal, <3> error, <4> warn, <6> info, <7> debug, which journald takes as
// the entry's priority and strips; anywhere else the lines are plain JSON.
import pino, { type DestinationStream, type Level, type Logger } from 'pino';
import { journalLineHook } from '../sys/journal.js';

export type { Logger } from 'pino';

const PINO_LEVEL_BY_SYSLOG: readonly Level[] = ['fatal', 'fatal', 'fatal', 'error', 'warn', 'info', 'info', 'debug'];

/** The pino level shown at syslog severity `level` (0..7); throws for anything else. */
export function pinoLevelForSyslog(level: number): Level {
  if (!Number.isInteger(level) || level < 0 || level > 7) {
    throw new Error(`log level ${level} is not a syslog severity 0..7`);
  }
  return PINO_LEVEL_BY_SYSLOG[level];
}

export interface LoggerOptions {
  /** Syslog severity 0..7 (default 6). */
  syslogLevel?: number;
  /** Program name, logged as `name` on every line. */
  name?: string;
  /** Where the JSON lines go; stdout (synchronously, so nothing is lost at exit) by default. */
  destination?: DestinationStream;
}

export function createLogger(options: LoggerOptions = {}): Logger {
  const destination = options.destination ?? pino.destination({ dest: 1, sync: true });
  return pino(
    {
      // Only for our own stdout: a destination given by the caller is not the journal's stream.
      ...(options.destination ? {} : { hooks: { streamWrite: journalLineHook(1) } }),
      name: options.name ?? 'virtio-forwarder',
      level: pinoLevelForSyslog(options.syslogLevel ?? 6),
      base: { pid: process.pid },
      // Level names instead of numbers: readable in journalctl and stable for tests that grep output.
      formatters: { level: (label) => ({ level: label }) },
    },
    destination,
  );
}

/** A logger for one part of the daemon; its lines carry `component`. */
export function componentLogger(parent: Logger, component: string, bindings: Record<string, unknown> = {}): Logger {
  return parent.child({ component, ...bindings });
}
