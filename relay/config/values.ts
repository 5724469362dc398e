// How one value of /etc/default/virtioforwarder is read, for the values more than one program
// reads: the daemon (relay/config/load.ts) and the core scheduler (scheduler/config.ts) both parse
// with these, so one file can never mean two things or pass in one program and fail in the other.
// A leaf module: each parser takes the value's text and returns the value, or throws an Error
// saying what was expected; the caller names the variable or flag.

/** true/yes/1 and false/no/0, any case. */
export function parseBooleanValue(text: string): boolean {
  const lower = text.trim().toLowerCase();
  if (lower === 'true' || lower === 'yes' || lower === '1') return true;
  if (lower === 'false' || lower === 'no' || lower === '0') return false;
  throw new Error('expected true or false (also yes/no/1/0)');
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
