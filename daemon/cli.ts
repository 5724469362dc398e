// virtio-forwarder's command line: --config FILE, --help, --version, and one flag per setting of
// the configuration file. A flag's value replaces the file's and is checked by the same rules,
// so `--jumbo=maybe` fails exactly like `VIRTIOFWD_JUMBO=maybe`. The original daemon's options
// (`-C1 -J --vhost-path=DIR ...`, what its start script passes) are read too, with the
// original's meaning, so scripts and units written for it keep working.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DEFAULT_CONFIG_PATH, VARIABLES, type ConfigOverrides } from '../relay/config/load.js';
import type { FlagKind } from '../relay/config/variables.js';
import { shownValue } from '../relay/config/values.js';
import { DEFAULT_ENDPOINTS, type ZmqService } from '../vocabulary/endpoints.js';

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

/**
 * One option of the original daemon. `arg` follows getopt: `required` takes the rest of the
 * word (-C1) or the next word (-C 1, --cpus 1, --cpus=1); `optional` only an attached value
 * (-Y<ep>, --zmq-config-ep=<ep>); `none` no value. `set` gives the variable and its value.
 */
interface OriginalOption {
  short: string;
  long: string;
  arg: 'none' | 'required' | 'optional';
  /** The variable it sets and the value, from the option's value (undefined: none given). */
  set?: (value: string | undefined) => { variable: string; value: string };
  repeatable?: boolean;
  /** Extra variables the option implies. */
  also?: Record<string, string>;
}

const to = (variable: string) => (value: string | undefined) => ({ variable, value: value ?? '' });
const on = (variable: string) => () => ({ variable, value: 'true' });
/** An endpoint option without a value means the service at its default endpoint, as in the original. */
const endpoint = (variable: string, service: ZmqService) => (value: string | undefined) => ({
  variable,
  value: value === undefined || value === '' ? DEFAULT_ENDPOINTS[service] : value,
});

/** The original's options (its option table; the start script passes them from the same file). */
export const ORIGINAL_OPTIONS: readonly OriginalOption[] = [
  { short: 'C', long: 'cpus', arg: 'required', set: to('VIRTIOFWD_CPU_MASK') },
  { short: 'M', long: 'master-lcore', arg: 'required', set: to('VIRTIOFWD_MASTER_LCORE') },
  // Foreground, optionally logging to syslog: this daemon never forks and always logs to stdout.
  { short: 'n', long: 'nodaemon', arg: 'optional' },
  { short: 'l', long: 'loglevel', arg: 'required', set: to('VIRTIOFWD_LOG_LEVEL') },
  { short: 'p', long: 'pid-path', arg: 'required', set: to('VIRTIOFWD_PID_DIR') },
  { short: 'H', long: 'huge-dir', arg: 'required', set: to('VIRTIOFWD_HUGETLBFS_MOUNT_POINT') },
  { short: 'O', long: 'ovsdb-sock', arg: 'required', set: to('VIRTIOFWD_OVSDB_SOCK_PATH') },
  { short: 'Y', long: 'zmq-config-ep', arg: 'optional', set: endpoint('VIRTIOFWD_ZMQ_CONFIG_EP', 'config') },
  { short: 'Z', long: 'zmq-port-control-ep', arg: 'optional', set: endpoint('VIRTIOFWD_ZMQ_PORT_CONTROL_EP', 'portControl') },
  { short: 'z', long: 'zmq-stats-ep', arg: 'optional', set: endpoint('VIRTIOFWD_ZMQ_STATS_EP', 'stats') },
  // The original bound the core-sched service exactly when this option was given.
  {
    short: 's',
    long: 'zmq-core-sched-ep',
    arg: 'optional',
    set: endpoint('VIRTIOFWD_ZMQ_CORE_SCHED_EP', 'coreSched'),
    also: { VIO4WD_CORE_SCHED_ENABLE: 'true' },
  },
  { short: 'I', long: 'ipc', arg: 'none', set: on('VIRTIOFWD_IPC_PORT_CONTROL') },
  // Without a value: the daemon's own user or group, which is what a blank variable means here.
  { short: 'u', long: 'vhost-username', arg: 'optional', set: to('VIRTIOFWD_SOCKET_OWNER') },
  { short: 'g', long: 'vhost-groupname', arg: 'optional', set: to('VIRTIOFWD_SOCKET_GROUP') },
  { short: 'V', long: 'vhost-path', arg: 'required', set: to('VIRTIOFWD_SOCKET_DIR') },
  { short: 'S', long: 'vhost-socket', arg: 'required', set: to('VIRTIOFWD_SOCKET_FNAME_PATTERN') },
  { short: 'c', long: 'virtio-cpu', arg: 'required', set: to('VIRTIOFWD_CPU_PINS'), repeatable: true },
  { short: 'J', long: 'enable-jumbo', arg: 'none', set: on('VIRTIOFWD_JUMBO') },
  { short: 'R', long: 'enable-mrgbuf', arg: 'none', set: on('VIRTIOFWD_MRGBUF') },
  { short: 'P', long: 'add-pci-vf', arg: 'required', set: to('VIRTIOFWD_STATIC_VFS'), repeatable: true },
  { short: 't', long: 'vfio-vf-token', arg: 'required', set: to('VIRTIOFWD_VFIO_VF_TOKEN') },
  { short: 'i', long: 'vhostuser-client', arg: 'none', set: on('VIRTIOFWD_VHOST_CLIENT') },
  { short: '0', long: 'zero-copy', arg: 'none', set: on('VIRTIOFWD_ZERO_COPY') },
  { short: 'T', long: 'enable-tso', arg: 'none', set: on('VIRTIOFWD_TSO') },
  { short: 'd', long: 'dynamic-sockets', arg: 'none', set: on('VIRTIOFWD_DYNAMIC_SOCKETS') },
  { short: 'a', long: 'same-numa', arg: 'none', set: on('VIRTIOFWD_CPU_NIC_SAME_NUMA') },
];

const ORIGINAL_BY_SHORT = new Map(ORIGINAL_OPTIONS.map((o) => [o.short, o]));
/** Long names of the original that this daemon does not also use for a flag of its own. */
const ORIGINAL_BY_LONG = new Map(ORIGINAL_OPTIONS.filter((o) => !BY_FLAG.has(`--${o.long}`)).map((o) => [`--${o.long}`, o]));
/** This daemon's endpoint flags take an optional value like the original's: bare, the default endpoint. */
const OPTIONAL_VALUE_FLAGS = new Map(
  ORIGINAL_OPTIONS.filter((o) => o.arg === 'optional' && BY_FLAG.has(`--${o.long}`)).map((o) => [`--${o.long}`, o]),
);

/** Parses `argv` (without node and the script). Throws UsageError. */
export function parseArgs(argv: readonly string[]): CliArgs {
  const args: CliArgs = { configPath: null, help: false, version: false, overrides: {} };
  const seen = new Set<string>();
  /** Variable -> the option that set it, so that -C1 --cpu-mask=2 is refused like --cpu-mask twice. */
  const setBy = new Map<string, string>();
  const applyOriginal = (option: OriginalOption, spelled: string, value: string | undefined) => {
    if (!option.set) return;
    const { variable, value: text } = option.set(value);
    if (option.repeatable) {
      const previous = args.overrides[variable];
      args.overrides[variable] = [...(Array.isArray(previous) ? previous : []), text];
      return;
    }
    const first = setBy.get(variable);
    if (first !== undefined) {
      throw new UsageError(first === spelled ? `${spelled} is given more than once` : `${spelled} sets ${variable}, which ${first} already set`);
    }
    setBy.set(variable, spelled);
    args.overrides[variable] = text;
    for (const [extra, extraValue] of Object.entries(option.also ?? {})) args.overrides[extra] ??= extraValue;
  };
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
    if (arg.startsWith('-') && !arg.startsWith('--') && arg.length > 1) {
      // The original's short options, bundled as getopt allows (-JR, -C1, -C 1).
      for (let j = 1; j < arg.length; j++) {
        if (arg[j] === 'v' || arg[j] === 'h') {
          // Bundled with others (-Jv): getopt reads them like any flag.
          if (arg[j] === 'v') args.version = true;
          else args.help = true;
          continue;
        }
        const option = ORIGINAL_BY_SHORT.get(arg[j]);
        if (!option) throw new UsageError(`unknown option -${shownValue(arg[j])} in "${shownValue(arg)}" (see --help)`);
        const spelled = `-${option.short}`;
        const rest = arg.slice(j + 1);
        if (option.arg === 'none') {
          applyOriginal(option, spelled, undefined);
          continue;
        }
        if (option.arg === 'optional') {
          applyOriginal(option, spelled, rest === '' ? undefined : rest);
        } else if (rest !== '') {
          applyOriginal(option, spelled, rest);
        } else {
          if (i + 1 >= argv.length) throw new UsageError(`${spelled} needs a value`);
          applyOriginal(option, spelled, argv[++i]);
        }
        break;
      }
      continue;
    }
    if (!arg.startsWith('--')) {
      throw new UsageError(`unexpected argument "${shownValue(arg)}"; settings are given as --flag=value (see --help)`);
    }
    const eq = arg.indexOf('=');
    const name = eq < 0 ? arg : arg.slice(0, eq);
    const inlineValue = eq < 0 ? undefined : arg.slice(eq + 1);
    const original = ORIGINAL_BY_LONG.get(name);
    if (original) {
      if (original.arg === 'none' && inlineValue !== undefined) throw new UsageError(`${name} takes no value`);
      if (original.arg === 'required' && inlineValue === undefined) {
        if (i + 1 >= argv.length) throw new UsageError(`${name} needs a value`);
        applyOriginal(original, name, argv[++i]);
      } else {
        applyOriginal(original, name, inlineValue);
      }
      continue;
    }
    const optionalValue = OPTIONAL_VALUE_FLAGS.get(name);
    if (optionalValue && inlineValue === undefined && (argv[i + 1] === undefined || argv[i + 1].startsWith('-'))) {
      applyOriginal(optionalValue, name, undefined);
      continue;
    }
    const takeValue = (): string => {
      if (inlineValue !== undefined) return inlineValue;
      const next = argv[i + 1];
      if (next === undefined || next.startsWith('--')) throw new UsageError(`${name} needs a value`);
      i++;
      return next;
    };
    const once = (key: string, variable?: string) => {
      if (seen.has(key)) throw new UsageError(`${key} is given more than once`);
      seen.add(key);
      if (variable === undefined) return;
      const first = setBy.get(variable);
      if (first !== undefined && first !== key) throw new UsageError(`${name} sets ${variable}, which ${first} already set`);
      setBy.set(variable, key);
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
        once(flag.flag, flag.variable);
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
      throw new UsageError(`unknown option ${shownValue(name)} (see --help)`);
    }
    if (flag.kind === 'boolean') {
      once(flag.flag, flag.variable);
      args.overrides[flag.variable] = inlineValue ?? 'true';
    } else if (flag.kind === 'repeatable') {
      const previous = args.overrides[flag.variable];
      args.overrides[flag.variable] = [...(Array.isArray(previous) ? previous : []), takeValue()];
    } else {
      once(flag.flag, flag.variable);
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
  lines.push('', "virtio-forwarder's original options are accepted with their original meaning:");
  for (const o of ORIGINAL_OPTIONS) {
    const value = o.arg === 'required' ? ' VALUE' : o.arg === 'optional' ? '[=VALUE]' : '';
    const usage = `-${o.short}, --${o.long}${value}`;
    const variable = o.set?.('VALUE').variable;
    const also = o.also ? ` (and ${Object.entries(o.also).map(([k, v]) => `${k}=${v}`).join(', ')})` : '';
    const meaning = variable
      ? `${variable}=${o.arg === 'none' ? 'true' : 'VALUE'}${also}`
      : 'accepted; the daemon always runs in the foreground and logs to stdout';
    lines.push(`  ${usage.padEnd(32)}${meaning}`);
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
