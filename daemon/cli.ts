// virtio-forwarder's command line: --config FILE, --help, --version, and one flag per setting of
// the configuration file. A flag's value replaces the file's and is checked by the same rules,
// so `--jumbo=maybe` fails exactly like `VIRTIOFWD_JUMBO=maybe`.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DEFAULT_CONFIG_PATH, VARIABLES, type ConfigOverrides } from '../relay/config/load.js';
import type { FlagKind } from '../relay/config/variables.js';

export interface FlagInfo {
  flag: string;
  variable: string;
  kind: FlagKind;
  /** Placeholder shown in --help. */
  meta?: string;
}

/** The daemon's flags, from the configuration table's rows (relay/config/variables.ts). */
export const FLAGS: readonly FlagInfo[] = VARIABLES.flatMap((v) =>
  v.flag ? [{ flag: v.flag.name, variable: v.name, kind: v.flag.kind, meta: v.flag.meta }] : [],
);

/** Variables only the core scheduler reads: a daemon flag for them would be checked and then unused. */
const SCHEDULER_ONLY = new Map(
  VARIABLES.filter((v) => v.section === 'core-scheduler' && !v.flag && v.schedulerFlag).map((v) => [v.name, v.schedulerFlag!]),
);

export interface CliArgs {
  /** The file named with --config, or null when none was given (see resolveConfigPath). */
  configPath: string | null;
  help: boolean;
  version: boolean;
  /** Flag values keyed by configuration variable, for loadConfig({ overrides }). */
  overrides: ConfigOverrides;
}

/** Exit codes the systemd units treat as "do not restart" (RestartPreventExitStatus=64 78). */
export const EXIT_USAGE = 64;
export const EXIT_CONFIG = 78;

/** A command line that cannot be understood; the daemon prints it with a pointer to --help and exits EXIT_USAGE. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

const BY_FLAG = new Map(FLAGS.map((f) => [f.flag, f]));

/** Parses `argv` (without node and the script). Throws UsageError. */
export function parseArgs(argv: readonly string[]): CliArgs {
  const args: CliArgs = { configPath: null, help: false, version: false, overrides: {} };
  const seen = new Set<string>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--help' || arg === '-h') {
      args.help = true;
      continue;
    }
    if (arg === '--version' || arg === '-v') {
      args.version = true;
      continue;
    }
    if (!arg.startsWith('--')) {
      throw new UsageError(`unexpected argument "${arg}"; settings are given as --flag=value (see --help)`);
    }
    const eq = arg.indexOf('=');
    const name = eq < 0 ? arg : arg.slice(0, eq);
    const inlineValue = eq < 0 ? undefined : arg.slice(eq + 1);
    const takeValue = (): string => {
      if (inlineValue !== undefined) return inlineValue;
      const next = argv[i + 1];
      if (next === undefined || next.startsWith('--')) throw new UsageError(`${name} needs a value`);
      i++;
      return next;
    };
    const once = (key: string) => {
      if (seen.has(key)) throw new UsageError(`${key} is given more than once`);
      seen.add(key);
    };

    if (name === '--config') {
      once(name);
      const value = takeValue();
      if (value === '') throw new UsageError('--config needs a file name');
      args.configPath = value;
      continue;
    }
    if (name.startsWith('--no-') && eq < 0) {
      const flag = BY_FLAG.get(`--${name.slice(5)}`);
      if (flag?.kind === 'boolean') {
        once(flag.flag);
        args.overrides[flag.variable] = 'false';
        continue;
      }
    }
    const flag = BY_FLAG.get(name);
    if (!flag) {
      const variable = /^--core-sched-(.+)$/.exec(name)?.[1].replace(/-/g, '_').toUpperCase();
      const schedulerFlag = variable && SCHEDULER_ONLY.get(`VIO4WD_CORE_SCHED_${variable}`);
      if (schedulerFlag) {
        throw new UsageError(
          `${name}: VIO4WD_CORE_SCHED_${variable} is read by vio4wd_core_scheduler, not by this daemon; set it in the configuration file or give ${schedulerFlag} to vio4wd_core_scheduler`,
        );
      }
      throw new UsageError(`unknown option ${name} (see --help)`);
    }
    if (flag.kind === 'boolean') {
      once(flag.flag);
      args.overrides[flag.variable] = inlineValue ?? 'true';
    } else if (flag.kind === 'repeatable') {
      const previous = args.overrides[flag.variable];
      args.overrides[flag.variable] = [...(Array.isArray(previous) ? previous : []), takeValue()];
    } else {
      once(flag.flag);
      args.overrides[flag.variable] = takeValue();
    }
  }
  return args;
}

/** The file to read: the --config file, else the default file when it exists, else none. */
export function resolveConfigPath(args: Pick<CliArgs, 'configPath'>, defaultPath = DEFAULT_CONFIG_PATH): string | null {
  if (args.configPath !== null) return args.configPath;
  return existsSync(defaultPath) ? defaultPath : null;
}

export function helpText(program = 'virtio-forwarder'): string {
  const lines = [
    `Usage: ${program} [--config FILE] [options]`,
    '',
    'Relays traffic between SR-IOV VFs (or any netdev) and virtio-net devices of VMs over vhost-user.',
    `Settings come from FILE (default ${DEFAULT_CONFIG_PATH} when it exists); each option below`,
    'replaces the variable it names. Boolean options take no value (--jumbo), =false, or --no-<name>.',
    '',
    '  --config FILE                   read settings from FILE (shell KEY=VALUE syntax, bash arrays)',
    '  -h, --help                      print this text and exit',
    '  -v, --version                   print the version and exit',
  ];
  for (const flag of FLAGS) {
    const usage = `${flag.flag}${flag.kind === 'boolean' ? '[=BOOL]' : ` ${flag.meta}`}`;
    const info = VARIABLES.find((v) => v.name === flag.variable);
    lines.push(`  ${usage.padEnd(32)}${flag.variable}${flag.kind === 'repeatable' ? ' (repeatable)' : ''}`);
    if (info) lines.push(`  ${''.padEnd(32)}${info.summary}`);
  }
  return `${lines.join('\n')}\n`;
}

/** "virtio-forwarder <version>" from the package.json above this module (works from the sources and from dist/). */
export function versionText(program = 'virtio-forwarder'): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let depth = 0; depth < 4; depth++, dir = dirname(dir)) {
    const candidate = join(dir, 'package.json');
    if (!existsSync(candidate)) continue;
    const pkg = JSON.parse(readFileSync(candidate, 'utf8')) as { name?: string; version?: string };
    if (pkg.name === 'vio4wd' && pkg.version) return `${program} ${pkg.version}`;
  }
  return `${program} (version unknown)`;
}
