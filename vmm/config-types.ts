// The one shape every front end (command line, -config JSON) produces and the machine consumes.

export const LIMITS = {
  minVcpus: 1,
  maxVcpus: 254,
  minMemory: 256 * 1024 * 1024,
  maxMemory: 512 * 1024 * 1024 * 1024,
  maxDisks: 6,
  maxNics: 2,
  maxMmioDevices: 11,
  maxIothreads: 8,
  maxIops: 1_000_000,
  maxNameLength: 255,
  maxQueuePairs: 8,
} as const;

export interface MemoryZoneConfig {
  id: string;
  size: number;
  file?: string;
  shared: boolean;
  hugepages: boolean;
  hugepageSize?: number;
  hostNumaNode?: number;
}

export interface NumaNodeConfig {
  guestNumaId: number;
  cpus: number[];
  distances: Array<{ destination: number; distance: number }>;
  memoryZones: string[];
}

export interface MemoryConfig {
  /** Total guest RAM in bytes (the sum of the zones when zones are given). */
  size: number;
  shared: boolean;
  hugepages: boolean;
  hugepageSize?: number;
  mergeable: boolean;
  /** StratoVirt -mem-path: a hugetlbfs mount (or any directory / file) backing the RAM. */
  memPath?: string;
  /** cloud-hypervisor memory zones; empty = one zone built from the fields above. */
  zones: MemoryZoneConfig[];
}

export interface DriveConfig {
  id: string;
  path: string;
  readOnly: boolean;
  direct: boolean;
  serial?: string;
  iothread?: string;
  /** 0 = unlimited. */
  iops: number;
}

export interface NetConfig {
  id: string;
  /** The vhost-user unix socket. */
  socketPath: string;
  /** true: we listen on socketPath and the backend connects (vhost-user "server" on our side). */
  server: boolean;
  mac: string;
  queuePairs: number;
  iothread?: string;
  /** The option or key that named the socket (`-chardev char0`, `net[0].socket_path`), for messages. */
  socketLabel: string;
}

export type SerialConfig =
  | { kind: 'none' }
  | { kind: 'stdio' }
  | { kind: 'socket'; path: string };

export interface VmConfig {
  name: string;
  machineType: 'microvm';
  dumpGuestCore: boolean;
  kernel: string;
  append: string;
  initrd?: string;
  vcpus: number;
  /** Host CPU per vCPU index (absent = no pinning). */
  vcpuPin?: number[];
  memory: MemoryConfig;
  numa: NumaNodeConfig[];
  drives: DriveConfig[];
  nets: NetConfig[];
  serial: SerialConfig;
  iothreads: string[];
  apiChannel?: string;
  logFile?: string;
  pidFile?: string;
  daemonize: boolean;
  disableSeccomp: boolean;
  omitVmMemory: boolean;
  /** Where each field came from (`-smp` or `machine-config.vcpu_count`), so that checks made later still name it. */
  labels: Record<string, string>;
}

export class ConfigError extends Error {
  override name = 'ConfigError';
}
