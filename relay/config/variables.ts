// Every variable the configuration file knows, with the project's default and what happens to it.
// The table drives the unknown-variable warning, the --help text and the tests; the defaults here
// are the ones written in etc/default/virtioforwarder.

export type VariableTreatment =
  /** Fully implemented. */
  | 'supported'
  /** Read and checked for syntax, but has no effect here; a non-blank value logs why. */
  | 'ignored'
  /** A value that asks for the feature stops the start with the reason. */
  | 'refused';

import { parseBooleanValue, parseSchedPollIntervalMs, parseSchedSensitivity, parseSyslogLevelValue } from './values.js';
import { parseListenAddress } from '../../vocabulary/listen-address.js';

export type FlagKind = 'value' | 'boolean' | 'repeatable';

/**
 * One row per variable: its name, default, what the daemon does with it, its command-line flags
 * and its documentation. virtio-forwarder's flags and --help come from these rows, the tests check
 * etc/default/virtioforwarder and vio4wd_core_scheduler's --help against them, and the values the
 * two programs share are parsed by relay/config/values.ts for both.
 */
export interface VariableInfo {
  name: string;
  /** virtio-forwarder's flag for it: a value replaces the file's and is checked by the same rules. */
  flag?: { name: string; kind: FlagKind; meta?: string };
  /** vio4wd_core_scheduler's flag, for the variables the scheduler reads. */
  schedulerFlag?: string;
  /**
   * How a plain value is read (relay/config/values.ts), for the variables whose value stands
   * alone; the daemon and the scheduler both read them with it. Variables whose meaning depends
   * on others (CPU lists, static VFs, endpoints, paths) are read in load.ts.
   */
  parse?: (text: string) => unknown;
  section: 'general' | 'core-scheduler' | 'specialised';
  /** The value used when the variable is blank or absent, as it would be written in the file. */
  defaultText: string;
  treatment: VariableTreatment;
  /** One line for the --help text and the unknown-name suggestions. */
  summary: string;
  /** For ignored and refused variables: why, as logged or reported. */
  reason?: string;
}

export const DEFAULT_SOCKET_DIR = '/tmp/virtio-forwarder';
export const DEFAULT_SOCKET_PATTERN = 'virtio-forwarder%u.sock';
export const DEFAULT_PID_DIR = '/var/run';
export const DEFAULT_OVSDB_SOCKET = '/var/run/openvswitch/db.sock';
export const DEFAULT_IPC_COMMAND_FILE = '/tmp/vio_cmd';

export const VARIABLES: readonly VariableInfo[] = [
  // Generally useful
  {
    name: 'VIRTIOFWD_CPU_MASK',
    flag: { name: '--cpu-mask', kind: 'value', meta: 'CPUS' },
    section: 'general',
    defaultText: '',
    treatment: 'supported',
    summary: 'worker CPUs: a list such as 1,2 or 1-3, or a 0x bitmap; blank = every online CPU but CPU 0 (CPU 0 alone on a one-CPU machine)',
  },
  {
    name: 'VIRTIOFWD_LOG_LEVEL',
    parse: parseSyslogLevelValue,
    flag: { name: '--log-level', kind: 'value', meta: '0-7' },
    section: 'general',
    defaultText: '6',
    treatment: 'supported',
    summary: 'log threshold 0-7 (syslog severities: 0-2 fatal, 3 error, 4 warn, 5-6 info, 7 debug)',
  },
  {
    name: 'VIRTIOFWD_POLL_MODE',
    flag: { name: '--poll-mode', kind: 'value', meta: 'busy|adaptive' },
    section: 'general',
    defaultText: 'adaptive',
    treatment: 'supported',
    summary: 'busy (poll without pause, one full CPU per worker) or adaptive (sleep on kicks when idle)',
  },
  {
    name: 'VIRTIOFWD_IPC_PORT_CONTROL',
    parse: parseBooleanValue,
    flag: { name: '--ipc-port-control', kind: 'boolean' },
    section: 'general',
    defaultText: 'false',
    treatment: 'supported',
    summary: 'y: add and remove VFs through the command file monitor; a ZMQ port-control endpoint, when also set, wins (with a warning)',
  },
  {
    name: 'VIRTIOFWD_OVSDB_SOCK_PATH',
    flag: { name: '--ovsdb-sock', kind: 'value', meta: 'PATH' },
    section: 'general',
    defaultText: '',
    treatment: 'supported',
    summary: 'non-blank: add and remove VFs from the OVSDB Interface table through this socket, instead of ZMQ port control',
  },
  {
    name: 'VIRTIOFWD_JUMBO',
    parse: parseBooleanValue,
    flag: { name: '--jumbo', kind: 'boolean' },
    section: 'general',
    defaultText: 'false',
    treatment: 'supported',
    summary: 'true: VFs get MTU 9000 and VMs are offered it (VIRTIO_NET_F_MTU): frames of 9000 bytes of payload',
  },
  {
    name: 'VIRTIOFWD_MRGBUF',
    parse: parseBooleanValue,
    flag: { name: '--mrgbuf', kind: 'boolean' },
    section: 'general',
    defaultText: 'true',
    treatment: 'supported',
    summary: 'offer mergeable receive buffers (VIRTIO_NET_F_MRG_RXBUF) to guests',
  },
  {
    name: 'VIRTIOFWD_UNSEALED_MEMORY',
    flag: { name: '--unsealed-memory', kind: 'value', meta: 'refuse|warn' },
    section: 'general',
    defaultText: 'warn',
    treatment: 'supported',
    summary:
      'guest memory files that can shrink (not sealed with F_SEAL_SHRINK and not sealable by the relay: hugetlbfs, DPDK virtio-user memfds): refuse the VM\'s memory table, or warn and accept it (a shrink would then crash the daemon with SIGBUS)',
  },
  {
    name: 'VIRTIOFWD_VF_PORT',
    flag: { name: '--vf-port', kind: 'value', meta: 'af_packet|af_xdp|auto' },
    section: 'general',
    defaultText: 'af_packet',
    treatment: 'supported',
    summary:
      'how the relay reaches each VF: af_packet (packet rings; every driver; the kernel segments and checksums for VIRTIOFWD_TSO), af_xdp (AF_XDP sockets behind an XDP redirect program, driver mode where the driver has it, else generic; MTU up to 9216, above 3826 only on Linux 6.6 and later; offloads done by the relay), or auto (AF_XDP where it can be opened, AF_PACKET otherwise and with VIRTIOFWD_JUMBO)',
  },
  {
    name: 'VIRTIOFWD_XDP_UMEM',
    flag: { name: '--xdp-umem', kind: 'value', meta: 'guest|relay' },
    section: 'general',
    defaultText: 'guest',
    treatment: 'supported',
    summary:
      'what AF_XDP ports register as their UMEM: guest (the VM\'s memory as well as the relay\'s chunks: frames a guest sends in one piece (with multi-buffer AF_XDP, MTU above 3826, in up to 17) go to the kernel from where the guest wrote them, with no copy; the VM\'s memory stays pinned while it is connected), or relay (the relay\'s chunks only: every frame is copied once)',
  },
  {
    name: 'VIRTIOFWD_XDP_RX',
    flag: { name: '--xdp-rx', kind: 'value', meta: 'copy|guest' },
    section: 'general',
    defaultText: 'copy',
    treatment: 'supported',
    summary:
      'where AF_XDP ports receive: copy (into the relay\'s chunks, then copied into the guest\'s buffers; frames wait up to 4096 deep in the port while the guest falls behind), or guest (with VIRTIOFWD_XDP_UMEM=guest, straight into the guest\'s posted receive buffers, with no copy; frames wait only as deep as the guest\'s receive ring, plus relay chunks added while the relay sees the guest fall behind). guest needs one receive queue, copy mode, MTU 1500 and buffers of 1530 bytes or more; elsewhere the port copies, and the log says why',
  },
  {
    name: 'VIRTIOFWD_TSO',
    parse: parseBooleanValue,
    flag: { name: '--tso', kind: 'boolean' },
    section: 'general',
    defaultText: 'false',
    treatment: 'supported',
    summary:
      'true: guests are offered checksum and segmentation offloads both ways (CSUM, HOST_TSO4/6, HOST_ECN, GUEST_CSUM, GUEST_TSO4/6, GUEST_ECN): the VF kernel driver checksums and segments the TCP segments of up to 64 KiB that guests send (PACKET_VNET_HDR), and GSO frames received on the VF reach guests whole; otherwise the relay segments those itself',
  },
  {
    name: 'VIRTIOFWD_SOCKET_OWNER',
    flag: { name: '--socket-owner', kind: 'value', meta: 'USER' },
    section: 'general',
    defaultText: '',
    treatment: 'supported',
    summary: 'user (name or number) owning the vhost-user sockets and their directory; blank = libvirt-qemu where it exists, else the daemon\'s own user',
  },
  {
    name: 'VIRTIOFWD_SOCKET_GROUP',
    flag: { name: '--socket-group', kind: 'value', meta: 'GROUP' },
    section: 'general',
    defaultText: '',
    treatment: 'supported',
    summary: 'group (name or number) of the vhost-user sockets (0660) and their directory (2770); blank = kvm where it exists, else the daemon\'s own group',
  },
  {
    name: 'VIRTIOFWD_HUGETLBFS_MOUNT_POINT',
    section: 'general',
    defaultText: '',
    treatment: 'ignored',
    summary: 'accepted for compatibility; has no effect',
    reason:
      'this implementation keeps packets in AF_PACKET rings and in guest memory, so it reserves no hugepages; guests still choose their own memory backing',
  },
  {
    name: 'VIRTIOFWD_STATIC_VFS',
    flag: { name: '--static-vf', kind: 'repeatable', meta: 'PCI=ID' },
    section: 'general',
    defaultText: '',
    treatment: 'supported',
    summary: 'VFs attached at start: <PCI address or netdev>=<relay id>, one value or a bash array',
  },
  {
    name: 'VIRTIOFWD_DYNAMIC_SOCKETS',
    parse: parseBooleanValue,
    flag: { name: '--dynamic-sockets', kind: 'boolean' },
    section: 'general',
    defaultText: 'false',
    treatment: 'supported',
    summary: 'true: create no sockets at start; sockets are added through ZMQ port control (add_sock)',
  },
  {
    name: 'VIRTIOFWD_CPU_NIC_SAME_NUMA',
    parse: parseBooleanValue,
    section: 'general',
    defaultText: 'false',
    treatment: 'ignored',
    summary: 'accepted for compatibility; has no effect',
    reason:
      'it only trimmed the hugepage reservation on NUMA nodes without workers, and this implementation reserves no hugepages',
  },
  {
    name: 'VIRTIOFWD_VFIO_VF_TOKEN',
    section: 'general',
    defaultText: '',
    treatment: 'ignored',
    summary: 'accepted for compatibility; has no effect',
    reason: 'VFs are used through their kernel netdevs, never through vfio-pci, so no VF token is needed',
  },
  // Core scheduler
  {
    name: 'VIO4WD_CORE_SCHED_ENABLE',
    parse: parseBooleanValue,
    flag: { name: '--core-sched', kind: 'boolean' },
    section: 'core-scheduler',
    defaultText: 'true',
    treatment: 'supported',
    summary: 'expose the CPU migration service vio4wd_core_scheduler needs (also forces the stats service on)',
  },
  {
    name: 'VIO4WD_CORE_SCHED_SENSITIVITY',
    parse: parseSchedSensitivity,
    schedulerFlag: '--sensitivity',
    section: 'core-scheduler',
    defaultText: '0.25',
    treatment: 'supported',
    summary: 'scheduler hysteresis (>= 0): a new CPU map must lower the load spread by more than this',
  },
  {
    name: 'VIO4WD_CORE_SCHED_LOG_LEVEL',
    parse: parseSyslogLevelValue,
    schedulerFlag: '--log-level',
    section: 'core-scheduler',
    defaultText: '6',
    treatment: 'supported',
    summary: 'scheduler log threshold 0-7',
  },
  {
    name: 'VIO4WD_CORE_SCHED_POLL_INTERVAL',
    parse: parseSchedPollIntervalMs,
    schedulerFlag: '--poll-interval',
    section: 'core-scheduler',
    defaultText: '5',
    treatment: 'supported',
    summary: 'seconds between scheduler passes (decimal, > 0, at most 3600)',
  },
  {
    name: 'VIO4WD_CORE_SCHED_GLOBAL_NUMA_OPT',
    parse: parseBooleanValue,
    schedulerFlag: '--global-numa-opt',
    section: 'core-scheduler',
    defaultText: 'false',
    treatment: 'supported',
    summary: 'true: balance across all NUMA nodes instead of keeping relays on their node',
  },
  // Specialised
  {
    name: 'VIRTIOFWD_CPU_PINS',
    flag: { name: '--cpu-pin', kind: 'repeatable', meta: 'ID:CPU[,CPU]' },
    section: 'specialised',
    defaultText: '',
    treatment: 'supported',
    summary: 'relay CPU pins <relay>:<cpu>[,<cpu>] (first VF->VM, second VM->VF); ;-separated or a bash array',
  },
  {
    name: 'VIRTIOFWD_PID_DIR',
    flag: { name: '--pid-dir', kind: 'value', meta: 'DIR' },
    section: 'specialised',
    defaultText: DEFAULT_PID_DIR,
    treatment: 'supported',
    summary: 'existing directory for virtio-forwarder.pid',
  },
  {
    name: 'VIRTIOFWD_ZMQ_CONFIG_EP',
    flag: { name: '--zmq-config-ep', kind: 'value', meta: 'EP|off' },
    schedulerFlag: '--config-ep',
    section: 'specialised',
    defaultText: 'ipc:///var/run/virtio-forwarder/config',
    treatment: 'supported',
    summary: 'ZMQ endpoint of the config service; off disables it',
  },
  {
    name: 'VIRTIOFWD_ZMQ_PORT_CONTROL_EP',
    flag: { name: '--zmq-port-control-ep', kind: 'value', meta: 'EP|off' },
    section: 'specialised',
    defaultText: 'ipc:///var/run/virtio-forwarder/port_control',
    treatment: 'supported',
    summary: 'ZMQ endpoint of port control; off disables it',
  },
  {
    name: 'VIRTIOFWD_ZMQ_STATS_EP',
    flag: { name: '--zmq-stats-ep', kind: 'value', meta: 'EP|off' },
    schedulerFlag: '--stats-ep',
    section: 'specialised',
    defaultText: 'ipc:///var/run/virtio-forwarder/stats',
    treatment: 'supported',
    summary: 'ZMQ endpoint of the stats service; off disables it',
  },
  {
    name: 'VIRTIOFWD_ZMQ_CORE_SCHED_EP',
    flag: { name: '--zmq-core-sched-ep', kind: 'value', meta: 'EP|off' },
    schedulerFlag: '--sched-ep',
    section: 'specialised',
    defaultText: 'ipc:///var/run/virtio-forwarder/core_sched',
    treatment: 'supported',
    summary: 'ZMQ endpoint of the CPU migration service (bound when VIO4WD_CORE_SCHED_ENABLE=true)',
  },
  {
    name: 'VIRTIOFWD_METRICS_LISTEN',
    parse: parseListenAddress,
    flag: { name: '--metrics-listen', kind: 'value', meta: 'HOST:PORT|PORT' },
    section: 'specialised',
    defaultText: '',
    treatment: 'supported',
    summary:
      'serve the stats counters to Prometheus over HTTP (GET /metrics) on HOST:PORT, [IPv6]:PORT, or PORT alone on 127.0.0.1; blank or off = no endpoint',
  },
  {
    name: 'VIRTIOFWD_SOCKET_DIR',
    flag: { name: '--socket-dir', kind: 'value', meta: 'DIR' },
    section: 'specialised',
    defaultText: DEFAULT_SOCKET_DIR,
    treatment: 'supported',
    summary: 'directory of the vhost-user sockets (created when missing)',
  },
  {
    name: 'VIRTIOFWD_SOCKET_FNAME_PATTERN',
    flag: { name: '--socket-pattern', kind: 'value', meta: 'NAME%u' },
    section: 'specialised',
    defaultText: DEFAULT_SOCKET_PATTERN,
    treatment: 'supported',
    summary: 'socket file name with exactly one %u (the relay id), no / and no digit right after %u',
  },
  {
    name: 'VIRTIOFWD_BINARY',
    section: 'specialised',
    defaultText: '',
    treatment: 'ignored',
    summary: 'accepted for compatibility; has no effect',
    reason: 'the systemd unit starts /usr/bin/virtio-forwarder itself; edit the unit (ExecStart=) to run another build',
  },
  {
    name: 'VIRTIOFWD_MASTER_LCORE',
    section: 'specialised',
    defaultText: '',
    treatment: 'ignored',
    summary: 'accepted for compatibility; has no effect',
    reason:
      'there is no DPDK main lcore: the control plane runs on Node\'s event loop thread, which the kernel schedules freely (restrict it with systemd CPUAffinity= if needed)',
  },
  {
    name: 'VIRTIOFWD_VHOST_CLIENT',
    parse: parseBooleanValue,
    flag: { name: '--vhost-client', kind: 'boolean' },
    section: 'specialised',
    defaultText: 'false',
    treatment: 'supported',
    summary: 'true: connect to sockets the VMs listen on (QEMU server mode) and reconnect when they restart',
  },
  {
    name: 'VIRTIOFWD_ZERO_COPY',
    parse: parseBooleanValue,
    section: 'specialised',
    defaultText: 'false',
    treatment: 'refused',
    summary: 'must stay false: zero copy is not supported',
    reason:
      'zero copy is not supported in this implementation: every packet is copied once between guest memory and the AF_PACKET ring',
  },
  {
    name: 'VIRTIOFWD_BIND_VFIO_PCI',
    section: 'specialised',
    defaultText: '',
    treatment: 'refused',
    summary: 'must stay blank: binding devices to vfio-pci is not supported',
    reason:
      'binding to vfio-pci is not supported in this implementation: VFs are relayed through their kernel netdevs, which vfio-pci would remove',
  },
  {
    name: 'VIRTIOFWD_SYSFS_ROOT',
    flag: { name: '--sysfs-root', kind: 'value', meta: 'DIR' },
    section: 'specialised',
    defaultText: '/sys',
    treatment: 'supported',
    summary: 'where sysfs is read (VF netdevs, NUMA nodes, online CPUs); tests point it at a fake tree',
  },
  {
    name: 'VIRTIOFWD_IPC_COMMAND_FILE',
    flag: { name: '--ipc-command-file', kind: 'value', meta: 'FILE' },
    section: 'specialised',
    defaultText: DEFAULT_IPC_COMMAND_FILE,
    treatment: 'supported',
    summary: 'command file watched when VIRTIOFWD_IPC_PORT_CONTROL=true',
  },
];

export const VARIABLE_NAMES: ReadonlySet<string> = new Set(VARIABLES.map((v) => v.name));

export function variableInfo(name: string): VariableInfo | undefined {
  return VARIABLES.find((v) => v.name === name);
}

/** The known name closest to `name` in edit distance, when it is close enough to be a typo. */
export function suggestVariable(name: string): string | undefined {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const known of VARIABLE_NAMES) {
    const d = editDistance(name, known);
    if (d < bestDistance) {
      bestDistance = d;
      best = known;
    }
  }
  return bestDistance <= 3 ? best : undefined;
}

function editDistance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let diagonal = row[0];
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const above = row[j];
      row[j] = Math.min(row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] === b[j - 1] ? 0 : 1));
      diagonal = above;
    }
  }
  return row[b.length];
}

/** The row of `name`; throws for a name the table does not know (a programming error). */
function rowWithParser(name: string): VariableInfo & { parse: (text: string) => unknown } {
  const row = VARIABLES.find((v) => v.name === name);
  if (!row?.parse) throw new Error(`${name} has no value parser in the configuration table`);
  return row as VariableInfo & { parse: (text: string) => unknown };
}

/** Reads `text` as the value of `name` with the row's parser; throws an Error saying what was expected. */
export function parseVariable<T>(name: string, text: string): T {
  return rowWithParser(name).parse(text) as T;
}

/** The value of `name` when it is blank or absent: its row's default, read by its row's parser. */
export function defaultOf<T>(name: string): T {
  const row = rowWithParser(name);
  return row.parse(row.defaultText) as T;
}
