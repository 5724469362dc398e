// How one value of /etc/default/virtioforwarder is read, for the values more than one program
// reads: the daemon (relay/config/load.ts) and the core scheduler (scheduler/config.ts) both parse
// with these, so one file can never mean two things or pass in one program and fail in the other.
// A leaf module: each parser takes the value's text and returns the value, or throws an Error
// saying what was expected; the caller names the variable or flag.

const TRUE_WORDS = new Set(['true', 'yes', 'y', '1', 'on']);
const FALSE_WORDS = new Set(['false', 'no', 'n', '0', 'off']);

/**
 * A switch, any case: true/yes/y/1/on or false/no/n/0/off. The original's shipped file writes
 * `y`; there any non-blank text (even `n`) switched the feature on, here `n` means off and
 * anything that is not one of these words is refused. Blank values never reach this parser: the
 * callers give the variable's default for them.
 */
export function parseBooleanValue(text: string): boolean {
  const lower = text.trim().toLowerCase();
  if (TRUE_WORDS.has(lower)) return true;
  if (FALSE_WORDS.has(lower)) return false;
  throw new Error('expected y or n (also yes/no, true/false, 1/0, on/off)');
}

/** Longest stretch of a value repeated in a message, in characters. */
export const SHOWN_VALUE_MAX = 80;

/**
 * A value as it may appear inside a log line or an error message: at most `max` characters
 * (then an ellipsis), with backslashes, double quotes, control characters, line and paragraph
 * separators and other invisible characters escaped, so that a hostile file cannot start a new
 * log line, rewrite the terminal or pass a value off as something else.
 */
export function shownValue(text: string, max = SHOWN_VALUE_MAX): string {
  const chars = [...text];
  const cut = chars.length > max;
  const kept = cut ? chars.slice(0, max) : chars;
  const escaped = kept
    .map((c) => {
      if (c === '\\') return '\\\\';
      if (c === '"') return '\\"';
      if (c === '\n') return '\\n';
      if (c === '\r') return '\\r';
      if (c === '\t') return '\\t';
      if (/[\p{C}\p{Zl}\p{Zp}]/u.test(c)) {
        const code = c.codePointAt(0)!;
        return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u{${code.toString(16)}}`;
      }
      return c;
    })
    .join('');
  return cut ? `${escaped}…` : escaped;
}

/**
 * Control and other invisible characters of a message escaped, nothing else changed: for
 * messages that quote a piece of a value or a path without cutting it.
 */
export function escapeInvisible(text: string): string {
  return text.replace(/[\p{C}\p{Zl}\p{Zp}]/gu, (c) => shownValue(c));
}

const DECIMAL = /^(\d+(\.\d*)?|\.\d+)$/;

/** A syslog severity: an integer from 0 to 7. */
export function parseSyslogLevelValue(text: string): number {
  const t = text.trim();
  if (!/^\d+$/.test(t) || Number(t) > 7) throw new Error('expected a log level from 0 (emergencies only) to 7 (debug)');
  return Number(t);
}

/** VIO4WD_CORE_SCHED_SENSITIVITY: a plain decimal number >= 0 (no hex, exponents or signs). */
export function parseSchedSensitivity(text: string): number {
  const t = text.trim();
  if (!DECIMAL.test(t)) throw new Error('expected a decimal number >= 0, such as 0.25');
  return Number(t);
}

/** VIO4WD_CORE_SCHED_POLL_INTERVAL: plain decimal seconds above 0 and at most 3600; returns milliseconds. */
export function parseSchedPollIntervalMs(text: string): number {
  const t = text.trim();
  const seconds = DECIMAL.test(t) ? Number(t) : NaN;
  if (!(seconds > 0 && seconds <= 3600)) throw new Error('expected seconds, more than 0 and at most 3600');
  return Math.max(1, Math.round(seconds * 1000));
}
