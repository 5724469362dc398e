// Cross-field validation shared by the command line and the JSON file. The front ends fill a
// ConfigDraft and record, for each field, the option or key it came from, so that every limit
// error names what the user wrote.
import { existsSync, statSync } from 'node:fs';
import {
  ConfigError,
  LIMITS,
  type DriveConfig,
  type MemoryZoneConfig,
  type NumaNodeConfig,
  type SerialConfig,
  type VmConfig,
} from './config-types.js';
import { defaultMac, formatSize } from './config-values.js';

export interface NetDraft {
  id: string;
  mac?: string;
  queuePairs: number;
  iothread?: string;
  socketPath?: string;
  server: boolean;
  /** The option that declared the NIC, for messages. */
  label: string;
  /** The option or key that gave the socket path. */
  socketLabel: string;
}

export interface ConfigDraft {
  name?: string;
  /** undefined = on, as in QEMU and StratoVirt. */
  dumpGuestCore?: boolean;
  memShare?: boolean;
  kernel?: string;
  append?: string;
  initrd?: string;
  vcpus?: number;
  vcpuPin?: number[];
  memSize?: number;
  memPath?: string;
  memory?: { size: number; shared?: boolean; hugepages: boolean; hugepageSize?: number; mergeable: boolean };
  zones: MemoryZoneConfig[];
  numa: NumaNodeConfig[];
  drives: DriveConfig[];
  nets: NetDraft[];
  serial?: SerialConfig;
  iothreads: string[];
  apiChannel?: string;
  logFile?: string;
  pidFile?: string;
  daemonize: boolean;
  disableSeccomp: boolean;
  omitVmMemory: boolean;
  /** Where each field came from: `-smp` or `machine-config.vcpu_count`. */
  labels: Record<string, string>;
}

export function emptyDraft(): ConfigDraft {
  return {
    zones: [],
    numa: [],
    drives: [],
    nets: [],
    iothreads: [],
    daemonize: false,
    disableSeccomp: false,
    omitVmMemory: false,
    labels: {},
  };
}

export interface FinalizeOptions {
  /** Check that kernel, initrd and disk files exist (off in unit tests of pure syntax). */
  checkFiles?: boolean;
}

export function finalizeConfig(d: ConfigDraft, options: FinalizeOptions = {}): VmConfig {
  const checkFiles = options.checkFiles ?? true;
  const label = (field: string, fallback: string) => d.labels[field] ?? fallback;

  const name = d.name ?? 'vio4wd-vm';
  if (name.length < 1 || name.length > LIMITS.maxNameLength) {
    throw new ConfigError(`${label('name', '-name')}: the VM name must be 1 to ${LIMITS.maxNameLength} characters`);
  }

  if (!d.kernel) throw new ConfigError(`${label('kernel', '-kernel')}: a kernel image is required (-kernel or boot-source.kernel_image_path)`);
  if (checkFiles) {
    requireFile(d.kernel, label('kernel', '-kernel'));
    if (d.initrd) requireFile(d.initrd, label('initrd', '-initrd'));
  }

  const vcpus = d.vcpus ?? 1;
  if (vcpus < LIMITS.minVcpus || vcpus > LIMITS.maxVcpus) {
    throw new ConfigError(`${label('vcpus', '-smp')}: ${vcpus} vCPUs is outside [${LIMITS.minVcpus}, ${LIMITS.maxVcpus}]`);
  }
  if (d.vcpuPin && d.vcpuPin.length !== vcpus) {
    throw new ConfigError(`${label('vcpuPin', '-smp pin')}: ${d.vcpuPin.length} host CPUs given for ${vcpus} vCPUs (one per vCPU)`);
  }

  const memory = buildMemory(d);

  const iothreads = d.iothreads;
  if (iothreads.length > LIMITS.maxIothreads) {
    throw new ConfigError(`${label('iothreads', '-iothread')}: ${iothreads.length} iothreads, at most ${LIMITS.maxIothreads}`);
  }
  const dupThread = iothreads.find((t, i) => iothreads.indexOf(t) !== i);
  if (dupThread) throw new ConfigError(`${label('iothreads', '-iothread')}: id "${dupThread}" is declared twice`);

  if (d.drives.length > LIMITS.maxDisks) {
    throw new ConfigError(`${label('drives', '-drive')}: ${d.drives.length} disks, at most ${LIMITS.maxDisks}`);
  }
  const ids = new Set<string>();
  for (const drive of d.drives) {
    const where = `${label('drives', '-drive')} ${drive.id}`;
    if (ids.has(drive.id)) throw new ConfigError(`${where}: id "${drive.id}" is used twice`);
    ids.add(drive.id);
    if (drive.iothread && !iothreads.includes(drive.iothread)) {
      throw new ConfigError(`${where}: iothread "${drive.iothread}" is not declared (add -iothread id=${drive.iothread})`);
    }
    if (drive.iops < 0 || drive.iops > LIMITS.maxIops) throw new ConfigError(`${where}: iops ${drive.iops} is outside [0, ${LIMITS.maxIops}]`);
    if (checkFiles) requireFile(drive.path, where);
  }

  if (d.nets.length > LIMITS.maxNics) {
    throw new ConfigError(`${label('nets', '-netdev')}: ${d.nets.length} NICs, at most ${LIMITS.maxNics}`);
  }
  const devices = d.drives.length + d.nets.length;
  if (devices > LIMITS.maxMmioDevices) {
    throw new ConfigError(`${label('nets', '-device')}: ${devices} virtio-mmio devices, at most ${LIMITS.maxMmioDevices}`);
  }
  const nets = d.nets.map((n, index) => {
    if (ids.has(n.id)) throw new ConfigError(`${n.label}: id "${n.id}" is used twice`);
    ids.add(n.id);
    if (!n.socketPath) throw new ConfigError(`${n.label}: no vhost-user socket path (give chardev=<id> with -chardev socket,id=<id>,path=...)`);
    if (n.iothread) {
      throw new ConfigError(
        `${n.label}: iothread "${n.iothread}" cannot serve a vhost-user NIC: its queues are served by the back-end ` +
          `(the relay's worker threads), not by this VMM; remove iothread`,
      );
    }
    if (n.queuePairs < 1 || n.queuePairs > LIMITS.maxQueuePairs) {
      throw new ConfigError(`${n.label}: ${n.queuePairs} queue pairs is outside [1, ${LIMITS.maxQueuePairs}]`);
    }
    if (!memoryIsShared(memory)) {
      throw new ConfigError(
        `${n.label}: a vhost-user NIC needs guest memory shared with the backend; share memory with ` +
          `-machine mem-share=on, --memory shared=on or shared=on on every --memory-zone (JSON: machine-config.mem-share or memory.shared)`,
      );
    }
    return {
      id: n.id,
      socketPath: n.socketPath,
      server: n.server,
      mac: n.mac ?? defaultMac(name, index),
      queuePairs: n.queuePairs,
      iothread: n.iothread,
      socketLabel: n.socketLabel,
    };
  });

  checkNuma(d, vcpus, memory.zones);

  // Both say whether guest RAM goes into a core dump of the VMM; they must not disagree.
  if (d.omitVmMemory && d.dumpGuestCore === true) {
    throw new ConfigError(`${label('omitVmMemory', '-omit_vm_memory')}: contradicts ${label('dumpGuestCore', 'dump-guest-core')}=on; give one`);
  }
  const dumpGuestCore = !d.omitVmMemory && (d.dumpGuestCore ?? true);

  if (d.pidFile && !d.daemonize) {
    throw new ConfigError(`${label('pidFile', '-pidfile')}: must be used together with -daemonize`);
  }

  return {
    name,
    machineType: 'microvm',
    dumpGuestCore,
    kernel: d.kernel,
    append: d.append ?? '',
    initrd: d.initrd,
    vcpus,
    vcpuPin: d.vcpuPin,
    memory,
    numa: d.numa,
    drives: d.drives,
    nets,
    serial: d.serial ?? { kind: 'none' },
    iothreads,
    apiChannel: d.apiChannel,
    logFile: d.logFile,
    pidFile: d.pidFile,
    daemonize: d.daemonize,
    disableSeccomp: d.disableSeccomp,
    omitVmMemory: d.omitVmMemory,
    labels: { ...d.labels },
  };
}

function memoryIsShared(memory: VmConfig['memory']): boolean {
  if (memory.zones.length > 0) return memory.zones.every((z) => z.shared);
  return memory.shared;
}

function buildMemory(d: ConfigDraft): VmConfig['memory'] {
  const memLabel = d.labels.memSize ?? d.labels.memory ?? '-m';
  if (d.memSize !== undefined && d.memory !== undefined) {
    throw new ConfigError(`${d.labels.memory ?? '--memory'}: memory is given twice (${d.labels.memSize ?? '-m'} and ${d.labels.memory ?? '--memory'}); use one`);
  }
  const shared = d.memory?.shared ?? d.memShare ?? false;
  const hugepages = d.memory?.hugepages ?? false;
  const hugepageSize = d.memory?.hugepageSize;
  if (hugepageSize !== undefined && !hugepages) {
    throw new ConfigError(`${d.labels.memory ?? '--memory'}: hugepage_size needs hugepages=on`);
  }
  if (hugepageSize !== undefined && (hugepageSize & (hugepageSize - 1)) !== 0) {
    throw new ConfigError(`${d.labels.memory ?? '--memory'}: hugepage_size ${hugepageSize} is not a power of two`);
  }
  let size = d.memSize ?? d.memory?.size ?? 256 * 1024 * 1024;
  const zones = d.zones;
  if (zones.length > 0) {
    const zoneLabel = d.labels.zones ?? '--memory-zone';
    if (d.memSize !== undefined || (d.memory && d.memory.size !== 0)) {
      throw new ConfigError(`${zoneLabel}: memory zones need --memory size=0 (the zones describe all of the RAM)`);
    }
    if (d.memPath) throw new ConfigError(`${zoneLabel}: -mem-path cannot be combined with memory zones (give file= per zone)`);
    const seen = new Set<string>();
    for (const z of zones) {
      if (seen.has(z.id)) throw new ConfigError(`${zoneLabel}: zone id "${z.id}" is used twice`);
      seen.add(z.id);
      if (z.size <= 0 || z.size % 4096 !== 0) throw new ConfigError(`${zoneLabel} ${z.id}: size ${z.size} must be a positive multiple of 4 KiB`);
    }
    size = zones.reduce((sum, z) => sum + z.size, 0);
  } else if (d.memory && d.memory.size === 0) {
    throw new ConfigError(`${d.labels.memory ?? '--memory'}: size=0 needs at least one --memory-zone`);
  }
  if (size < 256 * 1024 * 1024 || size > 512 * 1024 ** 3) {
    throw new ConfigError(`${zones.length ? (d.labels.zones ?? '--memory-zone') : memLabel}: ${formatSize(size)} of memory is outside [256 MiB, 512 GiB]`);
  }
  if (size % 4096 !== 0) throw new ConfigError(`${memLabel}: ${size} bytes is not a multiple of 4 KiB`);
  if (hugepages && size % (hugepageSize ?? 2 * 1024 * 1024) !== 0) {
    throw new ConfigError(`${memLabel}: ${formatSize(size)} is not a multiple of the huge page size`);
  }
  return { size, shared, hugepages, hugepageSize, mergeable: d.memory?.mergeable ?? false, memPath: d.memPath, zones };
}

function checkNuma(d: ConfigDraft, vcpus: number, zones: MemoryZoneConfig[]): void {
  const numaLabel = d.labels.numa ?? '--numa';
  const nodeIds = new Set<number>();
  const cpuOwner = new Map<number, number>();
  const zoneOwner = new Map<string, number>();
  for (const node of d.numa) {
    if (nodeIds.has(node.guestNumaId)) throw new ConfigError(`${numaLabel}: guest_numa_id ${node.guestNumaId} is used twice`);
    nodeIds.add(node.guestNumaId);
  }
  for (const node of d.numa) {
    const where = `${numaLabel} guest_numa_id=${node.guestNumaId}`;
    for (const cpu of node.cpus) {
      if (cpu >= vcpus) throw new ConfigError(`${where}: vCPU ${cpu} does not exist (${vcpus} vCPUs)`);
      if (cpuOwner.has(cpu)) throw new ConfigError(`${where}: vCPU ${cpu} is already in node ${cpuOwner.get(cpu)}`);
      cpuOwner.set(cpu, node.guestNumaId);
    }
    for (const zone of node.memoryZones) {
      if (!zones.some((z) => z.id === zone)) throw new ConfigError(`${where}: memory zone "${zone}" is not declared`);
      if (zoneOwner.has(zone)) throw new ConfigError(`${where}: memory zone "${zone}" is already in node ${zoneOwner.get(zone)}`);
      zoneOwner.set(zone, node.guestNumaId);
    }
    for (const { destination, distance } of node.distances) {
      if (!nodeIds.has(destination)) throw new ConfigError(`${where}: distance to node ${destination}, which is not declared`);
      if (destination === node.guestNumaId && distance !== 10) {
        throw new ConfigError(`${where}: the distance of a node to itself must be 10`);
      }
      if (distance < 10 || distance > 254) throw new ConfigError(`${where}: distance ${distance} is outside [10, 254]`);
    }
  }
  // Nodes that name no zones at all leave the RAM to the lowest node (numa-layout.ts); once one
  // node names zones, every zone must have a node.
  if (zoneOwner.size > 0) {
    const unplaced = zones.filter((z) => !zoneOwner.has(z.id));
    if (unplaced.length) throw new ConfigError(`${numaLabel}: memory zone "${unplaced[0].id}" belongs to no NUMA node`);
  }
}

function requireFile(path: string, label: string): void {
  if (!existsSync(path)) throw new ConfigError(`${label}: ${path} does not exist`);
  if (!statSync(path).isFile() && !statSync(path).isBlockDevice()) throw new ConfigError(`${label}: ${path} is not a file`);
}
