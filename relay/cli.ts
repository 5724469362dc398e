// virtio-forwarder's command line: --config FILE, --help, --version, and one flag per setting of
// the configuration file. A flag's value replaces the file's and is checked by the same rules,
// so `--jumbo=maybe` fails exactly like `VIRTIOFWD_JUMBO=maybe`.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DEFAULT_CONFIG_PATH, VARIABLES, type ConfigOverrides } from './config.js';

export type FlagKind = 'value' | 'boolean' | 'repeatable';

export interface FlagInfo {
  flag: string;
  variable: string;
  kind: FlagKind;
  /** Placeholder shown in --help. */
  meta?: string;
}

export const FLAGS: readonly FlagInfo[] = [
  { flag: '--cpu-mask', variable: 'VIRTIOFWD_CPU_MASK', kind: 'value', meta: 'CPUS' },
  { flag: '--log-level', variable: 'VIRTIOFWD_LOG_LEVEL', kind: 'value', meta: '0-7' },
  { flag: '--poll-mode', variable: 'VIRTIOFWD_POLL_MODE', kind: 'value', meta: 'busy|adaptive' },
  { flag: '--static-vf', variable: 'VIRTIOFWD_STATIC_VFS', kind: 'repeatable', meta: 'PCI=ID' },
  { flag: '--cpu-pin', variable: 'VIRTIOFWD_CPU_PINS', kind: 'repeatable', meta: 'ID:CPU[,CPU]' },
  { flag: '--socket-dir', variable: 'VIRTIOFWD_SOCKET_DIR', kind: 'value', meta: 'DIR' },
  { flag: '--socket-pattern', variable: 'VIRTIOFWD_SOCKET_FNAME_PATTERN', kind: 'value', meta: 'NAME%u' },
  { flag: '--socket-owner', variable: 'VIRTIOFWD_SOCKET_OWNER', kind: 'value', meta: 'USER' },
  { flag: '--socket-group', variable: 'VIRTIOFWD_SOCKET_GROUP', kind: 'value', meta: 'GROUP' },
  { flag: '--vhost-client', variable: 'VIRTIOFWD_VHOST_CLIENT', kind: 'boolean' },
  { flag: '--dynamic-sockets', variable: 'VIRTIOFWD_DYNAMIC_SOCKETS', kind: 'boolean' },
  { flag: '--jumbo', variable: 'VIRTIOFWD_JUMBO', kind: 'boolean' },
  { flag: '--mrgbuf', variable: 'VIRTIOFWD_MRGBUF', kind: 'boolean' },
  { flag: '--tso', variable: 'VIRTIOFWD_TSO', kind: 'boolean' },
  { flag: '--unsealed-memory', variable: 'VIRTIOFWD_UNSEALED_MEMORY', kind: 'value', meta: 'refuse|warn' },
  { flag: '--pid-dir', variable: 'VIRTIOFWD_PID_DIR', kind: 'value', meta: 'DIR' },
  { flag: '--sysfs-root', variable: 'VIRTIOFWD_SYSFS_ROOT', kind: 'value', meta: 'DIR' },
  { flag: '--ipc-port-control', variable: 'VIRTIOFWD_IPC_PORT_CONTROL', kind: 'boolean' },
  { flag: '--ipc-command-file', variable: 'VIRTIOFWD_IPC_COMMAND_FILE', kind: 'value', meta: 'FILE' },
  { flag: '--ovsdb-sock', variable: 'VIRTIOFWD_OVSDB_SOCK_PATH', kind: 'value', meta: 'PATH' },
  { flag: '--zmq-port-control-ep', variable: 'VIRTIOFWD_ZMQ_PORT_CONTROL_EP', kind: 'value', meta: 'EP|off' },
  { flag: '--zmq-stats-ep', variable: 'VIRTIOFWD_ZMQ_STATS_EP', kind: 'value', meta: 'EP|off' },
  { flag: '--zmq-config-ep', variable: 'VIRTIOFWD_ZMQ_CONFIG_EP', kind: 'value', meta: 'EP|off' },
  { flag: '--zmq-core-sched-ep', variable: 'VIRTIOFWD_ZMQ_CORE_SCHED_EP', kind: 'value', meta: 'EP|off' },
  { flag: '--core-sched', variable: 'VIO4WD_CORE_SCHED_ENABLE', kind: 'boolean' },
  { flag: '--core-sched-sensitivity', variable: 'VIO4WD_CORE_SCHED_SENSITIVITY', kind: 'value', meta: 'N' },
  { flag: '--core-sched-log-level', variable: 'VIO4WD_CORE_SCHED_LOG_LEVEL', kind: 'value', meta: '0-7' },
  { flag: '--core-sched-poll-interval', variable: 'VIO4WD_CORE_SCHED_POLL_INTERVAL', kind: 'value', meta: 'SECONDS' },
  { flag: '--core-sched-global-numa-opt', variable: 'VIO4WD_CORE_SCHED_GLOBAL_NUMA_OPT', kind: 'boolean' },
];

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
    if (!flag) throw new UsageError(`unknown option ${name} (see --help)`);
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
