// The StratoVirt-style command line (`-kernel`, `-smp`, `-drive`, ...) plus cloud-hypervisor's
// memory options (`--memory`, `--memory-zone`, `--numa`). Options may be written with one or two
// dashes. `-config FILE` reads the JSON form; then only the process options of StratoVirt's
// "parameters running in JSON" table may accompany it.
import { readFileSync } from 'node:fs';
import { ConfigError, type VmConfig } from './config-types.js';
import { emptyDraft, finalizeConfig, type ConfigDraft, type FinalizeOptions, type NetDraft } from './config-build.js';
import { parseBool, parseCpuList, parseKeyValues, parseMac, parseSize, parseUint } from './config-values.js';
import { draftFromJson } from './config-json.js';
import { findDuplicateKey } from './json-duplicates.js';

const MIB = 1024 * 1024;

export const VALUE_OPTIONS = [
  'name', 'machine', 'kernel', 'append', 'initrd', 'smp', 'm', 'drive', 'netdev', 'chardev', 'device',
  'api-channel', 'serial', 'D', 'pidfile', 'iothread', 'mem-path', 'balloon', 'config', 'memory',
  'memory-zone', 'numa', 'cpus',
] as const;
export const FLAG_OPTIONS = ['daemonize', 'disable-seccomp', 'omit_vm_memory'] as const;
const REPEATABLE = new Set(['drive', 'netdev', 'chardev', 'device', 'iothread', 'memory-zone', 'numa']);
/**
 * cloud-hypervisor takes several values after one option (`--numa A B`, `--memory-zone A B`):
 * each further word that is not an option is one more occurrence.
 */
const MULTI_VALUE = new Set(['memory-zone', 'numa']);
/** The cloud-hypervisor options, written with two dashes in messages. */
const CLOUD_HYPERVISOR = new Set(['memory', 'memory-zone', 'numa', 'cpus']);
const isOption = (arg: string) => /^--?[A-Za-z]/.test(arg);
const ALLOWED_WITH_CONFIG = new Set(['config', 'api-channel', 'D', 'pidfile', 'daemonize', 'disable-seccomp', 'omit_vm_memory']);

interface Chardev {
  id: string;
  path: string;
  server: boolean;
  nowait: boolean;
}

interface NetdevDraft {
  id: string;
  chardev: string;
  queues: number;
  mac?: string;
  iothread?: string;
}

export interface CliResult {
  config: VmConfig;
}

/** What one option contributes to the configuration: the VM description, or the chardevs,
 * netdevs and devices that are put together into NICs once every option has been read. */
interface CliParts {
  chardevs: Map<string, Chardev>;
  netdevs: NetdevDraft[];
  devices: string[];
}
type OptionHandler = (draft: ConfigDraft, value: string, label: string, cli: CliParts) => void;

/** One row per option of the command line (StratoVirt's and cloud-hypervisor's). */
export const OPTION_HANDLERS: Record<string, OptionHandler> = {
  config: () => undefined,
  name: (draft, v, label, cli) => {
    draft.name = v;
    draft.labels.name = label;
  },
  machine: (draft, v, label, cli) => {
    const kv = parseKeyValues(v, label, ['type', 'dump-guest-core', 'mem-share', 'accel'], 'type');
    const type = kv.get('type');
    if (type !== undefined && type.toLowerCase() !== 'microvm') {
      throw new ConfigError(`${label}: machine type "${type}" is not supported (only microvm)`);
    }
    const accel = kv.get('accel');
    if (accel !== undefined && accel !== 'kvm') throw new ConfigError(`${label}: accel=${accel} is not supported (only kvm)`);
    if (kv.has('dump-guest-core')) {
      draft.dumpGuestCore = parseBool(kv.get('dump-guest-core')!, `${label} dump-guest-core`);
      draft.labels.dumpGuestCore = `${label} dump-guest-core`;
    }
    if (kv.has('mem-share')) draft.memShare = parseBool(kv.get('mem-share')!, `${label} mem-share`);
    draft.labels.memShare = label;
  },
  kernel: (draft, v, label, cli) => {
    draft.kernel = v;
    draft.labels.kernel = label;
  },
  append: (draft, v, label, cli) => {
    draft.append = v;
  },
  initrd: (draft, v, label, cli) => {
    draft.initrd = v;
    draft.labels.initrd = label;
  },
  cpus: (draft, v, label, cli) => {
    // cloud-hypervisor's --cpus boot=N: only the boot count; there is no CPU hotplug here.
    const kv = parseKeyValues(v, label, ['boot']);
    if (!kv.has('boot')) throw new ConfigError(`${label}: boot= is required`);
    if (draft.vcpus !== undefined) throw new ConfigError(`${label}: the vCPU count is given twice (${draft.labels.vcpus} and ${label}); use one`);
    draft.vcpus = parseUint(kv.get('boot')!, `${label} boot`);
    draft.labels.vcpus = label;
  },
  smp: (draft, v, label, cli) => {
    if (draft.vcpus !== undefined) throw new ConfigError(`${label}: the vCPU count is given twice (${draft.labels.vcpus} and ${label}); use one`);
    const kv = parseKeyValues(v, label, ['cpus', 'pin'], 'cpus');
    if (!kv.has('cpus')) throw new ConfigError(`${label}: cpus= is required`);
    draft.vcpus = parseUint(kv.get('cpus')!, `${label} cpus`);
    draft.labels.vcpus = label;
    if (kv.has('pin')) {
      // pin=H0:H1:... gives the host CPU of each vCPU in order; host CPUs may repeat.
      draft.vcpuPin = kv.get('pin')!.split(':').map((c) => parseUint(c, `${label} pin`, 0, 4095));
      draft.labels.vcpuPin = `${label} pin`;
    }
  },
  m: (draft, v, label, cli) => {
    draft.memSize = parseSize(v, label, MIB);
    draft.labels.memSize = label;
  },
  'mem-path': (draft, v, label, cli) => {
    if (!v.startsWith('/')) throw new ConfigError(`${label}: "${v}" must be an absolute path`);
    draft.memPath = v;
    draft.labels.memPath = label;
  },
  memory: (draft, v, label, cli) => {
    const kv = parseKeyValues(v, label, ['size', 'shared', 'hugepages', 'hugepage_size', 'mergeable', ...HOTPLUG_KEYS], 'size');
    refuseHotplug(kv, label);
    if (!kv.has('size')) throw new ConfigError(`${label}: size= is required`);
    draft.memory = {
      size: parseSize(kv.get('size')!, `${label} size`),
      shared: kv.has('shared') ? parseBool(kv.get('shared')!, `${label} shared`) : undefined,
      hugepages: kv.has('hugepages') ? parseBool(kv.get('hugepages')!, `${label} hugepages`) : false,
      hugepageSize: kv.has('hugepage_size') ? parseSize(kv.get('hugepage_size')!, `${label} hugepage_size`) : undefined,
      mergeable: kv.has('mergeable') ? parseBool(kv.get('mergeable')!, `${label} mergeable`) : false,
    };
    draft.labels.memory = label;
  },
  'memory-zone': (draft, v, label, cli) => {
    const kv = parseKeyValues(v, label, ['id', 'size', 'file', 'shared', 'hugepages', 'hugepage_size', 'host_numa_node', ...HOTPLUG_KEYS]);
    refuseHotplug(kv, `${label} ${kv.get('id') ?? ''}`.trim());
    if (!kv.get('id')) throw new ConfigError(`${label}: id= is required`);
    if (!kv.has('size')) throw new ConfigError(`${label} ${kv.get('id')}: size= is required`);
    const where = `${label} ${kv.get('id')}`;
    draft.zones.push({
      id: kv.get('id')!,
      size: parseSize(kv.get('size')!, `${where} size`),
      file: kv.get('file'),
      shared: kv.has('shared') ? parseBool(kv.get('shared')!, `${where} shared`) : false,
      hugepages: kv.has('hugepages') ? parseBool(kv.get('hugepages')!, `${where} hugepages`) : false,
      hugepageSize: kv.has('hugepage_size') ? parseSize(kv.get('hugepage_size')!, `${where} hugepage_size`) : undefined,
      hostNumaNode: kv.has('host_numa_node') ? parseUint(kv.get('host_numa_node')!, `${where} host_numa_node`, 0, 1023) : undefined,
    });
    draft.labels.zones = label;
  },
  numa: (draft, v, label, cli) => {
    const kv = parseKeyValues(v, label, ['guest_numa_id', 'cpus', 'distances', 'memory_zones', 'sgx_epc_sections']);
    if (kv.has('sgx_epc_sections')) throw new ConfigError(`${label}: sgx_epc_sections: SGX EPC sections are not implemented by this VMM`);
    if (!kv.has('guest_numa_id')) throw new ConfigError(`${label}: guest_numa_id= is required`);
    const id = parseUint(kv.get('guest_numa_id')!, `${label} guest_numa_id`, 0, 255);
    draft.numa.push({
      guestNumaId: id,
      cpus: kv.has('cpus') ? parseCpuList(kv.get('cpus')!, `${label} cpus`) : [],
      distances: kv.has('distances') ? parseDistances(kv.get('distances')!, `${label} distances`) : [],
      memoryZones: kv.has('memory_zones') ? kv.get('memory_zones')!.replace(/^\[|\]$/g, '').split(':').filter(Boolean) : [],
    });
    draft.labels.numa = label;
  },
  drive: (draft, v, label, cli) => {
    const kv = parseKeyValues(v, label, ['id', 'file', 'readonly', 'direct', 'serial', 'iothread', 'iops', 'if', 'format']);
    if (!kv.get('id')) throw new ConfigError(`${label}: id= is required`);
    const where = `${label} ${kv.get('id')}`;
    if (!kv.get('file')) throw new ConfigError(`${where}: file= is required`);
    if (kv.has('if') && kv.get('if') !== 'none') throw new ConfigError(`${where}: if=${kv.get('if')} is not supported (only none)`);
    if (kv.has('format') && kv.get('format') !== 'raw') throw new ConfigError(`${where}: format=${kv.get('format')} is not supported (only raw)`);
    const serial = kv.get('serial');
    if (serial !== undefined && serial.length > 20) throw new ConfigError(`${where}: serial "${serial}" is longer than 20 characters`);
    draft.drives.push({
      id: kv.get('id')!,
      path: kv.get('file')!,
      readOnly: kv.has('readonly') ? parseBool(kv.get('readonly')!, `${where} readonly`) : false,
      direct: kv.has('direct') ? parseBool(kv.get('direct')!, `${where} direct`) : false,
      serial,
      iothread: kv.get('iothread'),
      iops: kv.has('iops') ? parseUint(kv.get('iops')!, `${where} iops`, 0, 1_000_000) : 0,
    });
    draft.labels.drives = label;
  },
  chardev: (draft, v, label, cli) => {
    const kv = parseKeyValues(v, label, ['backend', 'id', 'path', 'server', 'nowait'], 'backend');
    const backend = kv.get('backend');
    if (backend === undefined) {
      // StratoVirt's `-chardev id=ID,path=PATH` is a virtio-console.
      throw new ConfigError(
        `${label}: virtio-console is not implemented by this VMM; a chardev here is the socket of a vhost-user NIC ` +
          `or of the serial port: -chardev socket,id=ID,path=PATH[,server] (use -serial for a console)`,
      );
    }
    if (backend !== 'socket') throw new ConfigError(`${label}: backend "${backend}" is not supported (only socket)`);
    const id = kv.get('id');
    if (!id) throw new ConfigError(`${label}: id= is required`);
    if (!kv.get('path')) throw new ConfigError(`${label} ${id}: path= is required`);
    if (cli.chardevs.has(id)) throw new ConfigError(`${label}: id "${id}" is used twice`);
    const server = kv.has('server') ? parseBool(kv.get('server')!, `${label} ${id} server`) : false;
    const nowait = kv.has('nowait') ? parseBool(kv.get('nowait')!, `${label} ${id} nowait`) : false;
    if (nowait && !server) throw new ConfigError(`${label} ${id}: nowait needs server (a client always connects first)`);
    cli.chardevs.set(id, { id, path: kv.get('path')!, server, nowait });
  },
  netdev: (draft, v, label, cli) => {
    const kv = parseKeyValues(v, label, ['type', 'id', 'chardev', 'queues', 'mac', 'iothread', 'netdev', 'vhostforce'], 'type');
    const type = kv.get('type');
    const id = kv.get('id');
    if (!id) throw new ConfigError(`${label}: id= is required`);
    if (kv.has('netdev')) {
      // StratoVirt's `-netdev id=ID,netdev=tap0` is a tap NIC.
      throw new ConfigError(
        `${label} ${id}: tap NICs (netdev=${kv.get('netdev')}) are not implemented by this VMM; its NICs are vhost-user: ` +
          `-chardev socket,id=char0,path=SOCKET -netdev vhost-user,id=${id},chardev=char0`,
      );
    }
    if (type !== 'vhost-user') {
      throw new ConfigError(`${label} ${id}: type "${type ?? ''}" is not supported (only vhost-user, e.g. -netdev vhost-user,id=${id},chardev=char0)`);
    }
    if (!kv.get('chardev')) throw new ConfigError(`${label} ${id}: chardev= is required (the -chardev socket that names the vhost-user socket)`);
    cli.netdevs.push({
      id,
      chardev: kv.get('chardev')!,
      queues: kv.has('queues') ? parseUint(kv.get('queues')!, `${label} ${id} queues`) : 1,
      mac: kv.has('mac') ? parseMac(kv.get('mac')!, `${label} ${id} mac`) : undefined,
      iothread: kv.get('iothread'),
    });
  },
  device: (draft, v, label, cli) => {
    cli.devices.push(v);
  },
  'api-channel': (draft, v, label, cli) => {
    const m = /^unix:(.+)$/.exec(v);
    if (!m) throw new ConfigError(`${label}: "${v}" must be unix:/path/to/socket`);
    draft.apiChannel = m[1];
    draft.labels.apiChannel = label;
  },
  serial: (draft, v, label, cli) => {
    draft.serial = parseSerial(v, label, cli.chardevs);
    draft.labels.serial = label;
  },
  D: (draft, v, label, cli) => {
    draft.logFile = v;
    draft.labels.logFile = label;
  },
  pidfile: (draft, v, label, cli) => {
    draft.pidFile = v;
    draft.labels.pidFile = label;
  },
  iothread: (draft, v, label, cli) => {
    const kv = parseKeyValues(v, label, ['id']);
    const id = kv.get('id')?.replace(/^"|"$/g, '');
    if (!id) throw new ConfigError(`${label}: id= is required`);
    draft.iothreads.push(id);
    draft.labels.iothreads = label;
  },
  balloon: (draft, v, label, cli) => {
    throw new ConfigError(`${label}: the balloon device is not supported by this VMM`);
  },
  daemonize: (draft, v, label, cli) => {
    draft.daemonize = true;
  },
  'disable-seccomp': (draft, v, label, cli) => {
    draft.disableSeccomp = true;
  },
  omit_vm_memory: (draft, v, label, cli) => {
    draft.omitVmMemory = true;
    draft.labels.omitVmMemory = label;
  },
};

/** Splits argv into options and their values, and refuses unknown or repeated options. */
function tokenize(argv: readonly string[]): Array<{ option: string; value?: string }> {
  const given: Array<{ option: string; value?: string }> = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const m = /^--?([A-Za-z][\w-]*)$/.exec(arg);
    if (!m) throw new ConfigError(`unexpected argument "${arg}" (options start with -)`);
    const option = m[1];
    if ((FLAG_OPTIONS as readonly string[]).includes(option)) {
      given.push({ option });
      continue;
    }
    if (!(VALUE_OPTIONS as readonly string[]).includes(option)) {
      throw new ConfigError(`unknown option ${arg}`);
    }
    if (i + 1 >= argv.length) throw new ConfigError(`-${option}: a value is required`);
    given.push({ option, value: argv[++i] });
    if (option === 'append') {
      // StratoVirt joins the words of an unquoted command line: `-append console=ttyS0 root=/dev/vda rw`.
      const words = [argv[i]];
      while (i + 1 < argv.length && !isOption(argv[i + 1])) words.push(argv[++i]);
      given[given.length - 1].value = words.join(' ');
    } else if (MULTI_VALUE.has(option)) {
      while (i + 1 < argv.length && !isOption(argv[i + 1])) given.push({ option, value: argv[++i] });
    }
  }
  const seen = new Set<string>();
  for (const { option } of given) {
    if (seen.has(option) && !REPEATABLE.has(option)) throw new ConfigError(`-${option}: given more than once`);
    seen.add(option);
  }
  return given;
}

export function parseCommandLine(argv: readonly string[], options: FinalizeOptions = {}): VmConfig {
  const given = tokenize(argv);
  let draft: ConfigDraft;
  const configOption = given.find((g) => g.option === 'config');
  if (configOption) {
    const extra = given.find((g) => !ALLOWED_WITH_CONFIG.has(g.option));
    if (extra) throw new ConfigError(`-${extra.option}: cannot be combined with -config (put it in the JSON file)`);
    draft = draftFromJson(readJsonFile(configOption.value!));
  } else {
    draft = emptyDraft();
  }

  const cli: CliParts = { chardevs: new Map<string, Chardev>(), netdevs: [], devices: [] };

  for (const { option, value } of given) {
    const label = CLOUD_HYPERVISOR.has(option) ? `--${option}` : `-${option}`;
    const v = value ?? '';
    const handle = OPTION_HANDLERS[option];
    if (!handle) throw new Error(`-${option}: accepted by the tokenizer but has no handler`);
    handle(draft, v, label, cli);
  }

  applyNetdevs(draft, cli.netdevs, cli.chardevs, cli.devices);
  return finalizeConfig(draft, options);
}

function applyNetdevs(draft: ConfigDraft, netdevs: NetdevDraft[], chardevs: Map<string, Chardev>, devices: string[]): void {
  const byId = new Map(netdevs.map((n) => [n.id, n]));
  if (byId.size !== netdevs.length) throw new ConfigError(`-netdev: an id is used twice`);
  const nets = new Map<string, NetDraft>();
  for (const n of netdevs) {
    const chardev = chardevs.get(n.chardev);
    if (!chardev) throw new ConfigError(`-netdev ${n.id}: chardev "${n.chardev}" is not declared (add -chardev socket,id=${n.chardev},path=...)`);
    if (chardev.nowait) {
      throw new ConfigError(
        `-chardev ${chardev.id}: nowait is not supported for a vhost-user socket: the NIC's features are negotiated with ` +
          `the back-end before the guest boots, so the VMM waits (up to 30 s) for the back-end to connect`,
      );
    }
    nets.set(n.id, {
      id: n.id,
      mac: n.mac,
      queuePairs: n.queues,
      iothread: n.iothread,
      socketPath: chardev.path,
      server: chardev.server,
      label: `-netdev ${n.id}`,
      socketLabel: `-chardev ${chardev.id}`,
    });
  }
  const attached = new Set<string>();
  for (const text of devices) {
    const name = text.split(',')[0];
    if (!['virtio-net-device', 'virtio-net-mmio', 'virtio-blk-device', 'virtio-blk-mmio'].includes(name)) {
      throw new ConfigError(`-device: device "${name}" is not supported (virtio-net-device, virtio-blk-device)`);
    }
    const kv = parseKeyValues(text, '-device', ['driver', 'id', 'netdev', 'mac', 'mq', 'drive', 'iothread', 'serial'], 'driver');
    const driver = kv.get('driver');
    if (driver === 'virtio-net-device' || driver === 'virtio-net-mmio') {
      const netdev = kv.get('netdev');
      if (!netdev) throw new ConfigError(`-device ${driver}: netdev= is required`);
      const net = nets.get(netdev);
      if (!net) throw new ConfigError(`-device ${driver}: netdev "${netdev}" is not declared`);
      if (attached.has(netdev)) throw new ConfigError(`-device ${driver}: netdev "${netdev}" is attached twice`);
      attached.add(netdev);
      if (kv.has('mac')) net.mac = parseMac(kv.get('mac')!, `-device ${driver} mac`);
      if (kv.has('mq') && !parseBool(kv.get('mq')!, `-device ${driver} mq`) && net.queuePairs > 1) {
        throw new ConfigError(`-device ${driver}: mq=off but netdev "${netdev}" has ${net.queuePairs} queues`);
      }
      if (kv.has('iothread')) net.iothread = kv.get('iothread');
    } else if (driver === 'virtio-blk-device' || driver === 'virtio-blk-mmio') {
      const driveId = kv.get('drive');
      const drive = draft.drives.find((d) => d.id === driveId);
      if (!drive) throw new ConfigError(`-device ${driver}: drive "${driveId ?? ''}" is not declared`);
      if (kv.has('serial')) drive.serial = kv.get('serial');
      if (kv.has('iothread')) drive.iothread = kv.get('iothread');
    } else {
      throw new ConfigError(`-device: device "${driver ?? ''}" is not supported (virtio-net-device, virtio-blk-device)`);
    }
  }
  draft.nets.push(...nets.values());
  if (nets.size) draft.labels.nets = '-netdev';
}

/** cloud-hypervisor's memory hotplug keys: known, so that the refusal says why. */
const HOTPLUG_KEYS = ['hotplug_method', 'hotplug_size', 'hotplugged_size'];

function refuseHotplug(kv: Map<string, string>, label: string): void {
  const key = HOTPLUG_KEYS.find((k) => kv.has(k));
  if (key) throw new ConfigError(`${label}: ${key}: memory hotplug is not implemented by this VMM (guest RAM is fixed at start)`);
}

function parseSerial(v: string, label: string, chardevs: Map<string, Chardev>): ConfigDraft['serial'] {
  if (v === 'stdio') return { kind: 'stdio' };
  if (v === 'none') return { kind: 'none' };
  const unix = /^unix:([^,]+)(,server(=on)?)?(,nowait)?$/.exec(v);
  if (unix) return { kind: 'socket', path: unix[1] };
  const chardev = /^chardev:(.+)$/.exec(v);
  if (chardev) {
    const c = chardevs.get(chardev[1]);
    if (!c) throw new ConfigError(`${label}: chardev "${chardev[1]}" is not declared before -serial`);
    return { kind: 'socket', path: c.path };
  }
  throw new ConfigError(`${label}: "${v}" is not supported (stdio, none, unix:/path or chardev:<id>)`);
}

function parseDistances(text: string, label: string): Array<{ destination: number; distance: number }> {
  return text
    .replace(/^\[|\]$/g, '')
    .split(':')
    .map((item) => {
      const m = /^(\d+)@(\d+)$/.exec(item);
      if (!m) throw new ConfigError(`${label}: "${item}" is not <node>@<distance>`);
      return { destination: Number(m[1]), distance: parseUint(m[2], label, 0, 255) };
    });
}

function readJsonFile(path: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError(`-config: cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? err})`);
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(`-config: ${path} is not valid JSON (${(err as Error).message})`);
  }
  const duplicate = findDuplicateKey(text);
  if (duplicate) throw new ConfigError(`${duplicate}: the key is given twice in ${path}`);
  return doc;
}
