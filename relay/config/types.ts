// The validated daemon configuration. The relay daemon, the control channels (through the relay)
// and the scheduler read these shapes; `relay/config/load.ts` builds them from /etc/default/virtioforwarder
// and the command line. Defaults are documented in etc/default/virtioforwarder.
import type { RelayCpu, VfRef } from '../registry-api.js';
import type { ListenAddress } from '../../vocabulary/listen-address.js';

export const DEFAULT_CONFIG_PATH = '/etc/default/virtioforwarder';

/** Syslog severities: 0 emerg .. 7 debug. */
export type SyslogLevel = 0 | 1 | 2 | 3 | 4 | 5 | 6 | 7;

/** `busy` polls without sleeping (one CPU per worker at 100%); `adaptive` sleeps on kicks and sockets when idle. */
export type PollMode = 'busy' | 'adaptive';

/**
 * Which channel adds and removes VFs at run time. The original allows one at a time and so do we:
 * `zmq` (the default, the only one that handles bonds and sockets), `ipc` (the /tmp/vio_cmd file
 * monitor), `ovsdb` (the Interface table monitor), or `none` (static VFs only).
 */
export type PortControlMode = 'zmq' | 'ipc' | 'ovsdb' | 'none';

export interface StaticVf {
  relay: number;
  /** A PCI address (canonical, resolved to a netdev through sysfs at start) or a plain netdev name. */
  vf: VfRef;
}

/** A user or group for the vhost-user sockets and their directory. */
export interface Account {
  id: number;
  /** The name as written in the configuration (a number when given numerically). */
  name: string;
}

export interface ZmqEndpoints {
  /** null: the service is off. */
  portControl: string | null;
  config: string | null;
  stats: string | null;
  /** On only when core scheduling is enabled (VIO4WD_CORE_SCHED_ENABLE), as in the original. */
  coreSched: string | null;
}

/** VIO4WD_CORE_SCHED_*: read by vio4wd_core_scheduler from the same file. */
export interface CoreSchedulerConfig {
  enabled: boolean;
  /** Hysteresis: a new map is applied only when it lowers the load spread by more than this. */
  sensitivity: number;
  logLevel: SyslogLevel;
  pollIntervalMs: number;
  /** Balance across all NUMA nodes instead of keeping relays on their own node. */
  globalNumaOpt: boolean;
  statsEndpoint: string | null;
  coreSchedEndpoint: string | null;
}

export interface RelayConfig {
  /** Worker CPUs (VIRTIOFWD_CPU_MASK), sorted, each online. One pinned worker thread per CPU. */
  cpus: number[];
  logLevel: SyslogLevel;
  pollMode: PollMode;
  /** Root of sysfs, replaced in tests by a fake tree (VIRTIOFWD_SYSFS_ROOT). */
  sysfsRoot: string;
  /** Directory of virtio-forwarder.pid. */
  pidDir: string;
  /** vhost-user sockets live here, named by socketFilenamePattern (see socketPathFor). */
  socketDir: string;
  /** Contains exactly one `%u`, replaced by the relay id. */
  socketFilenamePattern: string;
  /** null: the sockets keep the daemon's own user / group. */
  socketOwner: Account | null;
  socketGroup: Account | null;
  /** The relay connects to sockets the VMs listen on, instead of listening itself. */
  vhostClient: boolean;
  /** No sockets at start; they are added through port control (add_sock). */
  dynamicSockets: boolean;
  staticVfs: StaticVf[];
  /** Relay → worker CPUs fixed by the operator (VIRTIOFWD_CPU_PINS); each CPU is in `cpus`. */
  cpuPins: RelayCpu[];
  /** VFs at MTU 9000 and VMs offered VIRTIO_NET_F_MTU 9000 (VIRTIOFWD_JUMBO); see docs/internals.md "Jumbo frames". */
  jumbo: boolean;
  /** Offer VIRTIO_NET_F_MRG_RXBUF to guests. */
  mergeableRxBuffers: boolean;
  /** Guest memory whose file can shrink (not sealed, not sealable): refuse it or warn (VIRTIOFWD_UNSEALED_MEMORY). */
  unsealedMemory: 'refuse' | 'warn';
  /** Offer HOST_TSO4/6 to guests and pass large frames to the VF. */
  tso: boolean;
  /** How VFs are opened (VIRTIOFWD_VF_PORT). */
  vfPort: VfPortChoice;
  /** VIRTIOFWD_XDP_UMEM: whether AF_XDP ports put the VM's memory in their UMEM (default guest). */
  xdpUmem: 'guest' | 'relay';
  /** VIRTIOFWD_XDP_RX: where AF_XDP ports receive, the relay's chunks ('copy', default) or the VM's buffers ('guest'). */
  xdpRx: 'copy' | 'guest';
  portControl: {
    mode: PortControlMode;
    /** The OVSDB unix socket the monitor connects to (mode `ovsdb`). */
    ovsdbSocketPath: string;
    /** The command file the IPC monitor watches (mode `ipc`). */
    ipcCommandFile: string;
  };
  zmq: ZmqEndpoints;
  /** Where the Prometheus endpoint listens (VIRTIOFWD_METRICS_LISTEN); null: no endpoint. */
  metricsListen: ListenAddress | null;
  coreScheduler: CoreSchedulerConfig;
  /** The file the settings came from, or null when only defaults and flags were used. */
  sourcePath: string | null;
}

/** What loadConfig returns: the configuration and the warnings the daemon should log once its logger exists. */
export interface LoadedConfig {
  config: RelayConfig;
  warnings: string[];
}

/** A configuration that cannot be used. `problems` has one line per failure, each naming the variable and value. */
export class ConfigError extends Error {
  readonly problems: string[];
  constructor(problems: string[], sourceLabel: string) {
    super(
      problems.length === 1
        ? `${sourceLabel}: ${problems[0]}`
        : `${sourceLabel}: ${problems.length} problems:\n  ${problems.join('\n  ')}`,
    );
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

/** The vhost-user socket path of relay `id` in default (non-dynamic) socket mode. */
export function socketPathFor(config: Pick<RelayConfig, 'socketDir' | 'socketFilenamePattern'>, id: number): string {
  const dir = config.socketDir.endsWith('/') ? config.socketDir.slice(0, -1) : config.socketDir;
  return `${dir}/${config.socketFilenamePattern.replace('%u', String(id))}`;
}

export type { VfPortChoice } from '../registry-api.js';
import type { VfPortChoice } from '../registry-api.js';
