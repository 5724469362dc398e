// The scheduler's settings: /etc/default/virtioforwarder (the file the daemon reads too), then
// command-line flags on top.
//
// The file is read with the daemon's parser (relay/config/file.ts); the scheduler validates only
// its own variables.

import { readFileSync } from 'node:fs';
import { parseConfigText, ConfigSyntaxError } from '../relay/config/file.js';
import { DEFAULT_ENDPOINTS, zmqEndpointProblem } from '../vocabulary/endpoints.js';
import { defaultOf, parseVariable } from '../relay/config/variables.js';
import { shownValue } from '../relay/config/values.js';
import pino, { type Logger } from 'pino';
import { journalLineHook } from '../sys/journal.js';

export const DEFAULT_CONFIG_PATH = '/etc/default/virtioforwarder';

export interface SchedulerSettings {
  configPath: string;
  statsEndpoint: string;
  coreSchedEndpoint: string;
  /** Config service endpoint for the configured pins; null when the service is off. */
  configEndpoint: string | null;
  pollIntervalMs: number;
  sensitivity: number;
  /** Syslog severity 0..7. */
  logLevel: number;
  globalNuma: boolean;
  sysfsRoot: string;
  /** How long one request may take before its socket is recreated. */
  requestTimeoutMs: number;
}

export const DEFAULTS: Omit<SchedulerSettings, 'configPath'> = {
  statsEndpoint: DEFAULT_ENDPOINTS.stats,
  coreSchedEndpoint: DEFAULT_ENDPOINTS.coreSched,
  configEndpoint: null,
  pollIntervalMs: defaultOf<number>('VIO4WD_CORE_SCHED_POLL_INTERVAL'),
  sensitivity: defaultOf<number>('VIO4WD_CORE_SCHED_SENSITIVITY'),
  logLevel: defaultOf<number>('VIO4WD_CORE_SCHED_LOG_LEVEL'),
  globalNuma: defaultOf<boolean>('VIO4WD_CORE_SCHED_GLOBAL_NUMA_OPT'),
  sysfsRoot: '/sys',
  requestTimeoutMs: 2000,
};

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

/**
 * Parses the file with the daemon's own parser (relay/config/file.ts, a leaf module with no
 * relay internals), so both programs read the same file the same way. Arrays become their
 * space-joined elements.
 */
export function parseKeyValueText(text: string, source: string): Map<string, string> {
  try {
    const parsed = parseConfigText(text, source);
    return new Map([...parsed.assignments].map(([k, a]) => [k, a.value]));
  } catch (err) {
    if (err instanceof ConfigSyntaxError) throw new ConfigError(err.message);
    throw err;
  }
}

/** Reads `value` with one of the daemon's own value parsers; a refusal names the variable or flag. */
function parseWith<T>(parse: (text: string) => T, value: string, name: string): T {
  try {
    return parse(value);
  } catch (err) {
    throw new ConfigError(`${name}="${shownValue(value)}" is not valid: ${(err as Error).message}`);
  }
}

/** Reads a variable's value (from the file, or its flag) with its row's parser in the daemon's table. */
const parseAs = (variable: string) => (value: string, name: string) => parseWith((text) => parseVariable(variable, text), value, name);

const parseSensitivity = parseAs('VIO4WD_CORE_SCHED_SENSITIVITY') as (v: string, name: string) => number;
const parsePollSeconds = parseAs('VIO4WD_CORE_SCHED_POLL_INTERVAL') as (v: string, name: string) => number;
const parseLogLevel = parseAs('VIO4WD_CORE_SCHED_LOG_LEVEL') as (v: string, name: string) => number;
const parseGlobalNuma = parseAs('VIO4WD_CORE_SCHED_GLOBAL_NUMA_OPT') as (v: string, name: string) => boolean;

function parseNumber(value: string, name: string, check: (n: number) => boolean, expected: string): number {
  const n = Number(value.trim());
  if (value.trim() === '' || !Number.isFinite(n) || !check(n)) {
    throw new ConfigError(`${name}="${shownValue(value)}" is not valid: expected ${expected}`);
  }
  return n;
}

function parseEndpoint(value: string, name: string): string {
  if (value.toLowerCase() === 'off') {
    throw new ConfigError(`${name}=off: the scheduler cannot work without this service; give its endpoint`);
  }
  // The daemon's endpoint rules (vocabulary/endpoints.ts), so the scheduler connects only where
  // the daemon could have bound.
  const problem = zmqEndpointProblem(value);
  if (problem) throw new ConfigError(`${name}="${shownValue(value)}" is not a ZeroMQ endpoint: ${problem}`);
  return value;
}

const KNOWN_SCHEDULER_KEYS = new Set([
  'VIO4WD_CORE_SCHED_ENABLE',
  'VIO4WD_CORE_SCHED_SENSITIVITY',
  'VIO4WD_CORE_SCHED_LOG_LEVEL',
  'VIO4WD_CORE_SCHED_POLL_INTERVAL',
  'VIO4WD_CORE_SCHED_GLOBAL_NUMA_OPT',
]);

/** Applies the file's variables to `settings`; returns warnings for variables it does not know. */
export function applyFileVariables(settings: SchedulerSettings, vars: Map<string, string>): string[] {
  const warnings: string[] = [];
  const get = (key: string) => {
    const v = vars.get(key);
    return v === undefined || v.trim() === '' ? undefined : v;
  };
  let v: string | undefined;
  if ((v = get('VIO4WD_CORE_SCHED_SENSITIVITY')) !== undefined) settings.sensitivity = parseSensitivity(v, 'VIO4WD_CORE_SCHED_SENSITIVITY');
  if ((v = get('VIO4WD_CORE_SCHED_POLL_INTERVAL')) !== undefined) settings.pollIntervalMs = parsePollSeconds(v, 'VIO4WD_CORE_SCHED_POLL_INTERVAL');
  if ((v = get('VIO4WD_CORE_SCHED_LOG_LEVEL')) !== undefined) settings.logLevel = parseLogLevel(v, 'VIO4WD_CORE_SCHED_LOG_LEVEL');
  if ((v = get('VIO4WD_CORE_SCHED_GLOBAL_NUMA_OPT')) !== undefined) settings.globalNuma = parseGlobalNuma(v, 'VIO4WD_CORE_SCHED_GLOBAL_NUMA_OPT');
  if ((v = get('VIRTIOFWD_ZMQ_STATS_EP')) !== undefined) settings.statsEndpoint = parseEndpoint(v, 'VIRTIOFWD_ZMQ_STATS_EP');
  if ((v = get('VIRTIOFWD_ZMQ_CORE_SCHED_EP')) !== undefined) settings.coreSchedEndpoint = parseEndpoint(v, 'VIRTIOFWD_ZMQ_CORE_SCHED_EP');
  if ((v = get('VIRTIOFWD_ZMQ_CONFIG_EP')) !== undefined) {
    // The config service only adds the pins to the logs, so the scheduler runs without it.
    settings.configEndpoint = v.toLowerCase() === 'off' ? null : parseEndpoint(v, 'VIRTIOFWD_ZMQ_CONFIG_EP');
  }
  if ((v = get('VIO4WD_CORE_SCHED_ENABLE')) !== undefined && !(parseAs('VIO4WD_CORE_SCHED_ENABLE')(v, 'VIO4WD_CORE_SCHED_ENABLE') as boolean)) {
    warnings.push('VIO4WD_CORE_SCHED_ENABLE is false, so virtio-forwarder does not offer the core-sched service; the scheduler will keep retrying');
  }
  for (const key of vars.keys()) {
    if (key.startsWith('VIO4WD_') && !KNOWN_SCHEDULER_KEYS.has(key)) warnings.push(`unknown variable ${key} ignored`);
  }
  return warnings;
}

export const USAGE = `Usage: vio4wd_core_scheduler [options]

Balances the relay directions of virtio-forwarder over its worker CPUs by measured load.
Settings come from /etc/default/virtioforwarder; options override them.

  --config PATH            configuration file (default ${DEFAULT_CONFIG_PATH})
  --stats-ep EP            stats service endpoint (VIRTIOFWD_ZMQ_STATS_EP)
  --sched-ep EP            core-sched service endpoint (VIRTIOFWD_ZMQ_CORE_SCHED_EP)
  --config-ep EP           config service endpoint, for the configured pins (VIRTIOFWD_ZMQ_CONFIG_EP)
  --poll-interval SECONDS  time between load measurements (VIO4WD_CORE_SCHED_POLL_INTERVAL, default 5)
  --sensitivity X          minimum drop of the load spread (coefficient of variation) that
                           justifies a migration (VIO4WD_CORE_SCHED_SENSITIVITY, default 0.25)
  --log-level 0..7         syslog severity threshold (VIO4WD_CORE_SCHED_LOG_LEVEL, default 6)
  --global-numa-opt[=BOOL] balance across all NUMA nodes (VIO4WD_CORE_SCHED_GLOBAL_NUMA_OPT)
  --sysfs-root DIR         where sysfs is mounted, for the CPUs of each NUMA node (default /sys)
  --request-timeout MS     how long one request may take before it is retried (default 2000)
  --help                   show this text
`;

export type ParsedArgs = { help: true } | { help: false; settings: SchedulerSettings; warnings: string[] };

/** Reads the file named by --config (or the default, which may be absent) and applies the flags. */
export function resolveSettings(argv: readonly string[], readFile: (path: string) => string = (p) => readFileSync(p, 'utf8')): ParsedArgs {
  const flags = new Map<string, string>();
  const takesValue = new Set([
    'config', 'stats-ep', 'sched-ep', 'config-ep', 'poll-interval', 'sensitivity', 'log-level', 'loglevel', 'sysfs-root', 'request-timeout',
  ]);
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--help' || arg === '-h') return { help: true };
    const m = /^--([a-z-]+)(?:=(.*))?$/s.exec(arg);
    if (!m) throw new ConfigError(`unexpected argument "${shownValue(arg)}"; see --help`);
    const name = m[1];
    if (name === 'global-numa-opt') {
      flags.set(name, m[2] ?? 'true');
      continue;
    }
    if (!takesValue.has(name)) throw new ConfigError(`unknown option --${name}; see --help`);
    let value = m[2];
    if (value === undefined) {
      if (i + 1 >= argv.length) throw new ConfigError(`option --${name} needs a value`);
      value = argv[++i];
    }
    flags.set(name === 'loglevel' ? 'log-level' : name, value);
  }

  const explicitPath = flags.get('config');
  const settings: SchedulerSettings = { ...DEFAULTS, configPath: explicitPath ?? DEFAULT_CONFIG_PATH };
  const warnings: string[] = [];
  let text: string | undefined;
  try {
    text = readFile(settings.configPath);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (explicitPath !== undefined || code !== 'ENOENT') {
      throw new ConfigError(`configuration file ${settings.configPath} cannot be read: ${(err as Error).message}`);
    }
    warnings.push(`configuration file ${settings.configPath} does not exist; using defaults and options`);
  }
  if (text !== undefined) warnings.push(...applyFileVariables(settings, parseKeyValueText(text, settings.configPath)));

  let v: string | undefined;
  if ((v = flags.get('stats-ep')) !== undefined) settings.statsEndpoint = parseEndpoint(v, '--stats-ep');
  if ((v = flags.get('sched-ep')) !== undefined) settings.coreSchedEndpoint = parseEndpoint(v, '--sched-ep');
  if ((v = flags.get('config-ep')) !== undefined) settings.configEndpoint = parseEndpoint(v, '--config-ep');
  if ((v = flags.get('poll-interval')) !== undefined) settings.pollIntervalMs = parsePollSeconds(v, '--poll-interval');
  if ((v = flags.get('sensitivity')) !== undefined) settings.sensitivity = parseSensitivity(v, '--sensitivity');
  if ((v = flags.get('log-level')) !== undefined) settings.logLevel = parseLogLevel(v, '--log-level');
  if ((v = flags.get('global-numa-opt')) !== undefined) settings.globalNuma = parseGlobalNuma(v, '--global-numa-opt');
  if ((v = flags.get('sysfs-root')) !== undefined) {
    if (v === '') throw new ConfigError('--sysfs-root needs a directory');
    settings.sysfsRoot = v;
  }
  if ((v = flags.get('request-timeout')) !== undefined) {
    settings.requestTimeoutMs = parseNumber(v, '--request-timeout', (n) => Number.isInteger(n) && n >= 10 && n <= 600_000, 'milliseconds, 10..600000');
  }
  return { help: false, settings, warnings };
}

/**
 * The scheduler's logger: JSON lines on stdout, each starting with its syslog priority (<4> for a
 * warning...) when stdout is the journal's stream (sys/journal.ts), so journald files it right.
 */
export function schedulerLogger(syslogLevel: number): Logger {
  return pino({
    name: 'vio4wd_core_scheduler',
    level: pinoLevel(syslogLevel),
    base: { pid: process.pid },
    hooks: { streamWrite: journalLineHook(1) },
  });
}

/** Syslog severities onto pino levels: emerg..crit are fatal, notice shares info. */
export function pinoLevel(syslogLevel: number): 'fatal' | 'error' | 'warn' | 'info' | 'debug' {
  if (syslogLevel <= 2) return 'fatal';
  if (syslogLevel === 3) return 'error';
  if (syslogLevel === 4) return 'warn';
  if (syslogLevel <= 6) return 'info';
  return 'debug';
}
