// From /etc/default/virtioforwarder and command-line overrides to a checked RelayConfig.
// Unlike the original, where any non-empty string switched a feature on and a blank socket owner
// meant libvirt-qemu, every value here is checked and every failure names the variable, the value
// and where it came from. All problems are reported together so one edit fixes the file.
import { readFileSync, statSync } from 'node:fs';
import { isAbsolute } from 'node:path';
import { lookupGroup, lookupUser, SYSTEM_ACCOUNT_FILES, type AccountFiles } from './accounts.js';
import { formatCpuList, parseCpuMask } from '../../vocabulary/cpu-list.js';
import { DEFAULT_ENDPOINTS, ENDPOINT_VARIABLES, ZMQ_SERVICES, zmqEndpointProblem } from '../../vocabulary/endpoints.js';
import { MAX_RELAYS } from '../../vocabulary/limits.js';
import { canonicalPciAddress, looksLikePciAddress } from '../../vocabulary/pci.js';
import { readOnlineCpus } from '../../sys/topology.js';
import { parseConfigText, type ConfigAssignment } from './file.js';
import {
  ConfigError,
  type Account,
  type CoreSchedulerConfig,
  type LoadedConfig,
  type PollMode,
  type VfPortChoice,
  type PortControlMode,
  type RelayConfig,
  type StaticVf,
  type SyslogLevel,
  type ZmqEndpoints,
} from './types.js';
import {
  DEFAULT_IPC_COMMAND_FILE,
  DEFAULT_OVSDB_SOCKET,
  DEFAULT_PID_DIR,
  DEFAULT_SOCKET_DIR,
  DEFAULT_SOCKET_PATTERN,
  VARIABLE_NAMES,
  defaultOf,
  parseVariable,
  VARIABLES,
  suggestVariable,
} from './variables.js';
import { isValidInterfaceName } from '../../vocabulary/netdev-name.js';
import { escapeInvisible, shownValue } from './values.js';
import type { RelayCpu } from '../registry-api.js';
import type { ListenAddress } from '../../vocabulary/listen-address.js';

export * from './types.js';
export { parseConfigText, ConfigSyntaxError, type ConfigAssignment, type ParsedConfigText } from './file.js';
export { VARIABLES, type VariableInfo } from './variables.js';

/** Values that replace the file's, keyed by variable name. Arrays stand for bash arrays (repeated flags). */
export type ConfigOverrides = Record<string, string | string[]>;

export interface LoadConfigOptions {
  /** The file to read; null to use defaults and overrides only. A missing file is an error. */
  path: string | null;
  overrides?: ConfigOverrides;
  /** Replaces `<sysfsRoot>/devices/system/cpu/online` (tests). */
  onlineCpus?: number[];
  /** Replaces /etc/passwd and /etc/group (tests). */
  accountFiles?: AccountFiles;
}

/** Reads, parses and validates. Throws ConfigSyntaxError for an unreadable line and ConfigError for bad values. */
export function loadConfig(options: LoadConfigOptions): LoadedConfig {
  let assignments = new Map<string, ConfigAssignment>();
  const warnings: string[] = [];
  if (options.path !== null) {
    let text: string;
    try {
      text = readFileSync(options.path, 'utf8');
    } catch (err) {
      throw new ConfigError([`cannot read the configuration file: ${(err as Error).message}`], options.path);
    }
    const parsed = parseConfigText(text, options.path);
    assignments = parsed.assignments;
    warnings.push(...parsed.warnings);
  }
  const result = configFromAssignments(assignments, { ...options, sourcePath: options.path });
  return { config: result.config, warnings: [...warnings, ...result.warnings] };
}

/** Validates text that is already in memory (the same rules as loadConfig). */
export function configFromText(text: string, options: Omit<LoadConfigOptions, 'path'> = {}): LoadedConfig {
  const parsed = parseConfigText(text);
  const result = configFromAssignments(parsed.assignments, { ...options, sourcePath: null });
  return { config: result.config, warnings: [...parsed.warnings, ...result.warnings] };
}

/** One variable as the validators see it: its text and a label for messages. */
interface Setting {
  name: string;
  kind: 'scalar' | 'array';
  value: string;
  values: string[];
  /** `NAME="value" (line 3)` / `NAME=(a b) (command line)`. */
  label: string;
}

class Settings {
  readonly problems: string[] = [];
  readonly warnings: string[] = [];
  private readonly byName = new Map<string, Setting>();

  constructor(assignments: Map<string, ConfigAssignment>, overrides: ConfigOverrides) {
    for (const a of assignments.values()) {
      this.byName.set(a.name, { ...a, label: `${a.name}=${showAssigned(a.kind, a.values)} (line ${a.line})` });
      if (/^(VIRTIOFWD|VIO4WD)_/.test(a.name) && !VARIABLE_NAMES.has(a.name)) {
        const suggestion = suggestVariable(a.name);
        this.warnings.push(
          `unknown variable ${shownValue(a.name)} on line ${a.line} is ignored${suggestion ? ` (did you mean ${suggestion}?)` : ''}`,
        );
      }
    }
    for (const [name, value] of Object.entries(overrides)) {
      if (!VARIABLE_NAMES.has(name)) {
        this.problems.push(`override of unknown variable ${shownValue(name)}`);
        continue;
      }
      const values = Array.isArray(value) ? value : [value];
      const kind = Array.isArray(value) ? 'array' : 'scalar';
      this.byName.set(name, {
        name,
        kind,
        value: values.join(' '),
        values,
        label: `${name}=${showAssigned(kind, values)} (command line)`,
      });
    }
  }

  /** `reason` may quote parts of the value; those are escaped too (see escapeInvisible). */
  fail(setting: Setting, reason: string): void {
    this.problems.push(`${setting.label}: ${escapeInvisible(reason)}`);
  }

  /** A single value; '' when absent or blank. An array is refused for a variable that takes one value. */
  scalar(name: string): { text: string; setting?: Setting } {
    const setting = this.byName.get(name);
    if (!setting) return { text: '' };
    if (setting.kind === 'array') {
      this.fail(setting, 'this variable takes one value, not a bash array');
      return { text: '' };
    }
    return { text: setting.value.trim(), setting };
  }

  /** The elements of a list variable: array elements, each also split on whitespace (and `splitOn`). */
  list(name: string, splitOn?: RegExp): { items: string[]; setting?: Setting } {
    const setting = this.byName.get(name);
    if (!setting) return { items: [] };
    const items: string[] = [];
    for (const element of setting.values) {
      for (const word of element.split(/\s+/)) {
        for (const item of splitOn ? word.split(splitOn) : [word]) if (item !== '') items.push(item);
      }
    }
    return { items, setting };
  }

  /** A scalar read with one of relay/config/values.ts's parsers; blank or absent gives `fallback`. */
  parsed<T>(name: string, parse: (text: string) => T, fallback: T): T {
    const { text, setting } = this.scalar(name);
    if (text === '' || !setting) return fallback;
    try {
      return parse(text);
    } catch (err) {
      this.fail(setting, (err as Error).message);
      return fallback;
    }
  }

  /** A variable whose row has a value parser: the row's parser, and its default when blank or absent. */
  value<T>(name: string): T {
    return this.parsed(name, (text) => parseVariable<T>(name, text), defaultOf<T>(name));
  }

  absolutePath(name: string, fallback: string): string {
    const { text, setting } = this.scalar(name);
    if (text === '' || !setting) return fallback;
    if (!isAbsolute(text)) {
      this.fail(setting, 'expected an absolute path');
      return fallback;
    }
    return text;
  }

  /** For ignored variables: a non-blank value is logged with the reason. */
  ignored(name: string, reason: string): void {
    const { text, setting } = this.scalar(name);
    if (text !== '' && setting) this.warnings.push(`${setting.label} is ignored: ${reason}`);
  }

  has(name: string): boolean {
    return this.byName.has(name) && this.byName.get(name)!.value.trim() !== '';
  }
}

/** How an assignment is shown in messages: `"value"` or `(a b)`, each value cut and escaped. */
function showAssigned(kind: 'scalar' | 'array', values: string[]): string {
  if (kind === 'array') {
    const shown = values.slice(0, 8).map((v) => shownValue(v, 40));
    return `(${shown.join(' ')}${values.length > 8 ? ' …' : ''})`;
  }
  return `"${shownValue(values[0])}"`;
}

function reasonOf(name: string): string {
  return VARIABLES.find((v) => v.name === name)?.reason ?? 'not supported in this implementation';
}

interface BuildOptions extends Omit<LoadConfigOptions, 'path'> {
  sourcePath: string | null;
}

/** Validates parsed assignments plus overrides into a RelayConfig. */
export function configFromAssignments(assignments: Map<string, ConfigAssignment>, options: BuildOptions): LoadedConfig {
  const s = new Settings(assignments, options.overrides ?? {});

  const logLevel = s.value<SyslogLevel>('VIRTIOFWD_LOG_LEVEL');
  const pollMode = readPollMode(s);
  const sysfsRoot = readSysfsRoot(s);
  const cpus = readCpuMask(s, options.onlineCpus ?? null, sysfsRoot);
  const cpuPins = readCpuPins(s, cpus);
  const dynamicSockets = s.value<boolean>('VIRTIOFWD_DYNAMIC_SOCKETS');
  const staticVfs = readStaticVfs(s);
  if (dynamicSockets && staticVfs.length > 0) {
    s.problems.push(
      'VIRTIOFWD_STATIC_VFS cannot be used with VIRTIOFWD_DYNAMIC_SOCKETS=true: with dynamic sockets a relay only gets a socket through add_sock, which brings its own device, so the static VFs could never reach a VM',
    );
  }
  const accountFiles = options.accountFiles ?? SYSTEM_ACCOUNT_FILES;
  const socketOwner = readAccount(s, 'VIRTIOFWD_SOCKET_OWNER', (v) => lookupUser(v, accountFiles));
  const socketGroup = readAccount(s, 'VIRTIOFWD_SOCKET_GROUP', (v) => lookupGroup(v, accountFiles));

  const jumbo = s.value<boolean>('VIRTIOFWD_JUMBO');
  const mergeableRxBuffers = s.value<boolean>('VIRTIOFWD_MRGBUF');
  const unsealedMemory = readUnsealedMemory(s);
  const tso = s.value<boolean>('VIRTIOFWD_TSO') === true;
  const vfPort = readVfPort(s);
  const xdpUmem = readXdpUmem(s);
  const xdpRx = readXdpRx(s);
  const vhostClient = s.value<boolean>('VIRTIOFWD_VHOST_CLIENT');

  if (s.value<boolean>('VIRTIOFWD_ZERO_COPY')) {
    s.problems.push(`VIRTIOFWD_ZERO_COPY=true: ${reasonOf('VIRTIOFWD_ZERO_COPY')}; set it to false or leave it blank`);
  }
  const bind = s.scalar('VIRTIOFWD_BIND_VFIO_PCI');
  if (bind.text !== '' && bind.setting) {
    s.fail(bind.setting, `${reasonOf('VIRTIOFWD_BIND_VFIO_PCI')}; leave it blank`);
  }
  if (s.value<boolean>('VIRTIOFWD_CPU_NIC_SAME_NUMA')) {
    s.warnings.push(`VIRTIOFWD_CPU_NIC_SAME_NUMA=true is ignored: ${reasonOf('VIRTIOFWD_CPU_NIC_SAME_NUMA')}`);
  }
  for (const name of ['VIRTIOFWD_HUGETLBFS_MOUNT_POINT', 'VIRTIOFWD_VFIO_VF_TOKEN', 'VIRTIOFWD_BINARY', 'VIRTIOFWD_MASTER_LCORE']) {
    s.ignored(name, reasonOf(name));
  }

  const pidDir = s.absolutePath('VIRTIOFWD_PID_DIR', DEFAULT_PID_DIR);
  const socketDir = s.absolutePath('VIRTIOFWD_SOCKET_DIR', DEFAULT_SOCKET_DIR);
  const socketFilenamePattern = readSocketPattern(s);

  const coreSchedEnabled = s.value<boolean>('VIO4WD_CORE_SCHED_ENABLE');
  const { zmq, portControlMode } = readControlChannels(s, coreSchedEnabled);
  const ovsdbSocketPath = s.absolutePath('VIRTIOFWD_OVSDB_SOCK_PATH', DEFAULT_OVSDB_SOCKET);
  const ipcCommandFile = s.absolutePath('VIRTIOFWD_IPC_COMMAND_FILE', DEFAULT_IPC_COMMAND_FILE);
  const coreScheduler = readCoreScheduler(s, coreSchedEnabled, zmq);
  const metricsListen = s.value<ListenAddress | null>('VIRTIOFWD_METRICS_LISTEN');

  if (s.problems.length > 0) throw new ConfigError(s.problems, options.sourcePath ?? 'configuration');
  const config: RelayConfig = {
    cpus: cpus ?? [],
    logLevel,
    pollMode,
    sysfsRoot,
    pidDir,
    socketDir,
    socketFilenamePattern,
    socketOwner,
    socketGroup,
    vhostClient,
    dynamicSockets,
    staticVfs,
    cpuPins,
    jumbo,
    mergeableRxBuffers,
    unsealedMemory,
    tso,
    vfPort,
    xdpUmem,
    xdpRx,
    portControl: { mode: portControlMode, ovsdbSocketPath, ipcCommandFile },
    zmq,
    metricsListen,
    coreScheduler,
    sourcePath: options.sourcePath,
  };
  return { config, warnings: s.warnings };
}

function readUnsealedMemory(s: Settings): 'refuse' | 'warn' {
  const { text, setting } = s.scalar('VIRTIOFWD_UNSEALED_MEMORY');
  if (text === '' || !setting) return 'warn';
  const lower = text.toLowerCase();
  if (lower === 'refuse' || lower === 'warn') return lower;
  s.fail(setting, 'expected refuse or warn');
  return 'warn';
}

function readXdpUmem(s: Settings): 'guest' | 'relay' {
  const { text, setting } = s.scalar('VIRTIOFWD_XDP_UMEM');
  if (text === '' || !setting) return 'guest';
  const lower = text.toLowerCase();
  if (lower === 'guest' || lower === 'relay') return lower;
  s.fail(setting, 'expected guest or relay');
  return 'guest';
}

function readXdpRx(s: Settings): 'copy' | 'guest' {
  const { text, setting } = s.scalar('VIRTIOFWD_XDP_RX');
  if (text === '' || !setting) return 'copy';
  const lower = text.toLowerCase();
  if (lower === 'copy' || lower === 'guest') return lower;
  s.fail(setting, 'expected copy or guest');
  return 'copy';
}

function readVfPort(s: Settings): VfPortChoice {
  const { text, setting } = s.scalar('VIRTIOFWD_VF_PORT');
  if (text === '' || !setting) return 'af_packet';
  const lower = text.toLowerCase();
  if (lower === 'af_packet' || lower === 'af_xdp' || lower === 'auto') return lower;
  s.fail(setting, 'expected af_packet, af_xdp or auto');
  return 'af_packet';
}

function readPollMode(s: Settings): PollMode {
  const { text, setting } = s.scalar('VIRTIOFWD_POLL_MODE');
  if (text === '' || !setting) return 'adaptive';
  const lower = text.toLowerCase();
  if (lower === 'busy' || lower === 'adaptive') return lower;
  s.fail(setting, 'expected busy or adaptive');
  return 'adaptive';
}

function readSysfsRoot(s: Settings): string {
  const { text, setting } = s.scalar('VIRTIOFWD_SYSFS_ROOT');
  if (text === '' || !setting) return '/sys';
  let isDirectory = false;
  try {
    isDirectory = statSync(text).isDirectory();
  } catch {
    /* reported below */
  }
  if (!isAbsolute(text)) s.fail(setting, 'expected an absolute path');
  else if (!isDirectory) s.fail(setting, 'not an existing directory');
  return text;
}

/** The worker CPUs, or null when the mask is unusable (pins are then checked for syntax only). */
function readCpuMask(s: Settings, injectedOnline: number[] | null, sysfsRoot: string): number[] | null {
  const { text, setting } = s.scalar('VIRTIOFWD_CPU_MASK');
  let online: number[];
  try {
    online = injectedOnline ?? readOnlineCpus(sysfsRoot);
  } catch (err) {
    s.problems.push(`VIRTIOFWD_CPU_MASK cannot be checked: ${(err as Error).message}`);
    return null;
  }
  if (text === '' || !setting) {
    // CPU 0 takes most interrupts and the control plane; leave it out when there is a choice.
    const workers = online.length > 1 ? online.filter((cpu) => cpu !== 0) : online;
    return [...workers];
  }
  let cpus: number[];
  try {
    cpus = parseCpuMask(text);
  } catch (err) {
    s.fail(setting, (err as Error).message);
    return null;
  }
  const offline = cpus.filter((cpu) => !online.includes(cpu));
  if (offline.length > 0) {
    s.fail(
      setting,
      `CPU${offline.length > 1 ? 's' : ''} ${formatCpuList(offline)} ${offline.length > 1 ? 'are' : 'is'} not online (online: ${formatCpuList(online)})`,
    );
    return null;
  }
  return cpus;
}

function parseRelayId(text: string): number | null {
  if (!/^\d+$/.test(text)) return null;
  const id = Number(text);
  return id < MAX_RELAYS ? id : null;
}

function readCpuPins(s: Settings, cpus: number[] | null): RelayCpu[] {
  const { items, setting } = s.list('VIRTIOFWD_CPU_PINS', /;/);
  if (!setting) return [];
  const pins: RelayCpu[] = [];
  const seen = new Set<number>();
  for (const item of items) {
    const m = /^(\d+):(\d+)(?:,(\d+))?$/.exec(item);
    if (!m) {
      s.fail(setting, `"${shownValue(item)}" is not <relay>:<cpu> or <relay>:<vf-to-vm cpu>,<vm-to-vf cpu>`);
      continue;
    }
    const relay = parseRelayId(m[1]);
    if (relay === null) {
      s.fail(setting, `"${shownValue(item)}": relay id ${m[1]} is outside 0..${MAX_RELAYS - 1}`);
      continue;
    }
    if (seen.has(relay)) {
      s.fail(setting, `"${shownValue(item)}": relay ${relay} is pinned more than once`);
      continue;
    }
    seen.add(relay);
    const vfToVmCpu = Number(m[2]);
    const vmToVfCpu = m[3] === undefined ? vfToVmCpu : Number(m[3]);
    const outside = cpus === null ? [] : [vfToVmCpu, vmToVfCpu].filter((cpu) => !cpus.includes(cpu));
    if (outside.length > 0) {
      s.fail(
        setting,
        `"${shownValue(item)}": CPU ${outside[0]} is not a worker CPU (VIRTIOFWD_CPU_MASK gives ${formatCpuList(cpus ?? [])})`,
      );
      continue;
    }
    pins.push({ relay, vfToVmCpu, vmToVfCpu });
  }
  return pins;
}

function readStaticVfs(s: Settings): StaticVf[] {
  const { items, setting } = s.list('VIRTIOFWD_STATIC_VFS');
  if (!setting) return [];
  const vfs: StaticVf[] = [];
  const relays = new Set<number>();
  const devices = new Map<string, number>();
  for (const item of items) {
    const eq = item.lastIndexOf('=');
    if (eq <= 0) {
      s.fail(setting, `"${shownValue(item)}" is not <PCI address>=<relay id> (for example 0000:05:08.1=1)`);
      continue;
    }
    const device = item.slice(0, eq);
    const idText = item.slice(eq + 1);
    const relay = parseRelayId(idText);
    if (relay === null) {
      s.fail(setting, `"${shownValue(item)}": relay id "${shownValue(idText)}" is not an integer in 0..${MAX_RELAYS - 1}`);
      continue;
    }
    let vf: StaticVf['vf'];
    let key: string;
    if (looksLikePciAddress(device) || device.includes(':')) {
      try {
        key = canonicalPciAddress(device);
      } catch (err) {
        s.fail(setting, (err as Error).message);
        continue;
      }
      vf = { pci: key };
    } else if (isValidInterfaceName(device)) {
      key = device;
      vf = { netdev: device };
    } else {
      s.fail(setting, `"${shownValue(device)}" is neither a PCI address nor a network interface name`);
      continue;
    }
    if (relays.has(relay)) {
      s.fail(setting, `"${shownValue(item)}": relay ${relay} is given more than one VF`);
      continue;
    }
    if (devices.has(key)) {
      s.fail(setting, `"${shownValue(item)}": ${key} is already attached to relay ${devices.get(key)}`);
      continue;
    }
    relays.add(relay);
    devices.set(key, relay);
    vfs.push({ relay, vf });
  }
  return vfs;
}

function readAccount(s: Settings, name: string, lookup: (value: string) => Account): Account | null {
  const { text, setting } = s.scalar(name);
  if (text === '' || !setting) return null;
  try {
    return lookup(text);
  } catch (err) {
    s.fail(setting, (err as Error).message);
    return null;
  }
}

function readSocketPattern(s: Settings): string {
  const { text, setting } = s.scalar('VIRTIOFWD_SOCKET_FNAME_PATTERN');
  if (text === '' || !setting) return DEFAULT_SOCKET_PATTERN;
  const directives: string[] = [...(text.match(/%./g) ?? [])];
  if (text.endsWith('%') && !text.endsWith('%%')) directives.push('%');
  if (directives.length !== 1 || directives[0] !== '%u') {
    s.fail(setting, 'expected exactly one %u (the relay id) and no other % sequence');
  } else if (text.includes('/')) {
    s.fail(setting, 'a file name cannot contain /; set the directory with VIRTIOFWD_SOCKET_DIR');
  } else if (/%u\d/.test(text)) {
    // "x%u1" makes relay 1's name "x11", which relay 11 would also get with "x%u" + "1".
    s.fail(setting, 'a digit right after %u makes socket names of different relays ambiguous');
  } else {
    return text;
  }
  return DEFAULT_SOCKET_PATTERN;
}


function readControlChannels(
  s: Settings,
  coreSchedEnabled: boolean,
): { zmq: ZmqEndpoints; portControlMode: PortControlMode } {
  const zmq: ZmqEndpoints = { portControl: null, config: null, stats: null, coreSched: null };
  const explicitlyOn = new Set<keyof ZmqEndpoints>();
  const explicitlyOff = new Set<keyof ZmqEndpoints>();
  for (const service of ZMQ_SERVICES) {
    const { text, setting } = s.scalar(ENDPOINT_VARIABLES[service]);
    if (service === 'config' && text === '' && setting?.kind === 'scalar') {
      // Written but blank: the original bound its config service only when given an endpoint,
      // and its shipped file leaves this blank, so a blank line keeps the service off here too.
      explicitlyOff.add(service);
      s.warnings.push(
        `${setting.label} is blank: the config service stays off, as virtio-forwarder left it; to say so, write VIRTIOFWD_ZMQ_CONFIG_EP=off, or give an endpoint such as ${DEFAULT_ENDPOINTS.config} to turn it on`,
      );
    } else if (text === '' || !setting) {
      zmq[service] = DEFAULT_ENDPOINTS[service];
    } else if (text.toLowerCase() === 'off') {
      explicitlyOff.add(service);
    } else {
      const problem = zmqEndpointProblem(text);
      if (problem) s.fail(setting, problem);
      else {
        zmq[service] = text;
        explicitlyOn.add(service);
      }
    }
  }

  // One port-control channel at a time. When more than one is asked for, the original's order
  // decides (a ZMQ endpoint, then the command file, then OVSDB), as its shipped file relies on:
  // it sets both a ZMQ endpoint and VIRTIOFWD_IPC_PORT_CONTROL=y. Each channel left out is
  // logged with the way to say the choice explicitly.
  const ipc = s.value<boolean>('VIRTIOFWD_IPC_PORT_CONTROL');
  const ovsdb = s.has('VIRTIOFWD_OVSDB_SOCK_PATH');
  const zmqChosen = explicitlyOn.has('portControl');
  const ipcText = ipc ? `VIRTIOFWD_IPC_PORT_CONTROL=${showAssigned('scalar', [s.scalar('VIRTIOFWD_IPC_PORT_CONTROL').text])}` : '';
  if (zmqChosen && ipc) {
    s.warnings.push(
      `${ipcText} is not used because VIRTIOFWD_ZMQ_PORT_CONTROL_EP is set too: ZMQ port control is used, as virtio-forwarder did; to say so, set VIRTIOFWD_IPC_PORT_CONTROL=n, or set VIRTIOFWD_ZMQ_PORT_CONTROL_EP=off to use the command file`,
    );
  }
  if (ovsdb && (zmqChosen || ipc)) {
    const winner = zmqChosen ? 'VIRTIOFWD_ZMQ_PORT_CONTROL_EP is set too: ZMQ port control' : `${ipcText} too: the command file`;
    s.warnings.push(
      `VIRTIOFWD_OVSDB_SOCK_PATH is not used because ${winner} is used, as virtio-forwarder did; to say so, leave VIRTIOFWD_OVSDB_SOCK_PATH blank, or turn the other channel off to follow OVSDB`,
    );
  }
  let portControlMode: PortControlMode;
  if (zmqChosen) portControlMode = 'zmq';
  else if (ipc) portControlMode = 'ipc';
  else if (ovsdb) portControlMode = 'ovsdb';
  else portControlMode = zmq.portControl === null ? 'none' : 'zmq';
  if (portControlMode !== 'zmq') zmq.portControl = null;

  if (!coreSchedEnabled) {
    if (explicitlyOn.has('coreSched') && zmq.coreSched !== DEFAULT_ENDPOINTS.coreSched) {
      s.warnings.push(
        `VIRTIOFWD_ZMQ_CORE_SCHED_EP="${shownValue(zmq.coreSched ?? '')}" is not bound because VIO4WD_CORE_SCHED_ENABLE is false`,
      );
    }
    zmq.coreSched = null;
  } else {
    if (explicitlyOff.has('coreSched')) {
      s.problems.push('VIRTIOFWD_ZMQ_CORE_SCHED_EP="off" contradicts VIO4WD_CORE_SCHED_ENABLE=true, which needs that service');
    }
    if (explicitlyOff.has('stats')) {
      s.problems.push('VIRTIOFWD_ZMQ_STATS_EP="off" contradicts VIO4WD_CORE_SCHED_ENABLE=true: the scheduler reads the stats service');
    }
  }

  const used = new Map<string, string>();
  for (const service of ZMQ_SERVICES) {
    const endpoint = zmq[service];
    if (endpoint === null || endpoint.startsWith('tcp://') && endpoint.endsWith(':*')) continue;
    const other = used.get(endpoint);
    if (other) s.problems.push(`${ENDPOINT_VARIABLES[service]} and ${other} are both "${shownValue(endpoint)}"; each service needs its own endpoint`);
    else used.set(endpoint, ENDPOINT_VARIABLES[service]);
  }
  return { zmq, portControlMode };
}

function readCoreScheduler(s: Settings, enabled: boolean, zmq: ZmqEndpoints): CoreSchedulerConfig {
  const sensitivity = s.value<number>('VIO4WD_CORE_SCHED_SENSITIVITY');
  const pollIntervalMs = s.value<number>('VIO4WD_CORE_SCHED_POLL_INTERVAL');
  return {
    enabled,
    sensitivity,
    logLevel: s.value<SyslogLevel>('VIO4WD_CORE_SCHED_LOG_LEVEL'),
    pollIntervalMs,
    globalNumaOpt: s.value<boolean>('VIO4WD_CORE_SCHED_GLOBAL_NUMA_OPT'),
    statsEndpoint: zmq.stats,
    coreSchedEndpoint: zmq.coreSched,
  };
}
