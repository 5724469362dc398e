// Everything the VM needs from the host, checked before /dev/kvm is opened and before any vCPU
// thread starts: a mistake in a path, a CPU number or a NUMA node is then reported at once, by the
// option that named it, instead of after seconds of building a machine that cannot run. Stale
// sockets at the paths we will listen on are removed here; anything else there is refused.
import { accessSync, closeSync, constants, existsSync, statSync, statfsSync } from 'node:fs';
import { dirname } from 'node:path';
import { getAffinity } from '../sys/affinity.js';
import { claimSocketPath, inspectSocketPath, probeSocketPath, SocketPathError } from '../sys/socket-path.js';
import { openImage } from './block-device.js';
import { ConfigError, type MemoryZoneConfig, type VmConfig } from './config-types.js';
import { formatSize } from './config-values.js';
import { defaultHugepageSize } from './guest-ram.js';

const HUGETLBFS_MAGIC = 0x958458f6;

export interface HostCheckOptions {
  /** The host CPUs this process may run on (sched_getaffinity); tests pass their own. */
  allowedCpus?: readonly number[];
  /** Where the host's NUMA nodes are listed. */
  nodeRoot?: string;
}

/** Throws ConfigError naming the option or key of the first resource the host cannot provide. */
export function checkHostResources(config: VmConfig, options: HostCheckOptions = {}): void {
  const label = (field: string, fallback: string) => config.labels[field] ?? fallback;
  if (config.logFile) checkWritableFile(config.logFile, label('logFile', '-D'));
  if (config.pidFile) checkNewFile(config.pidFile, label('pidFile', '-pidfile'));
  checkPinning(config, options.allowedCpus ?? getAffinity(), label('vcpuPin', '-smp pin'));
  checkMemory(config, options.nodeRoot ?? '/sys/devices/system/node');
  for (const drive of config.drives) {
    const where = `${label('drives', '-drive')} ${drive.id}`;
    try {
      closeSync(openImage(drive).fd);
    } catch (err) {
      throw new ConfigError(`${where}: ${(err as Error).message}`);
    }
  }
  const listens: Array<{ path: string; label: string }> = [];
  for (const net of config.nets) {
    // A client waits for the back-end to create its socket; a server takes the path itself.
    if (net.server) listens.push({ path: net.socketPath, label: net.socketLabel });
    else checkClientSocketPath(net.socketPath, net.socketLabel);
  }
  if (config.serial.kind === 'socket') listens.push({ path: config.serial.path, label: label('serial', '-serial') });
  if (config.apiChannel) listens.push({ path: config.apiChannel, label: label('apiChannel', '-api-channel') });
  const seen = new Map<string, string>();
  for (const l of listens) {
    const other = seen.get(l.path);
    if (other) throw new ConfigError(`${l.label}: ${l.path} is also the socket of ${other}`);
    seen.set(l.path, l.label);
  }
  // Probe every path before removing any stale socket: a refused start changes nothing on the host.
  for (const l of listens) withLabel(l.label, () => probeSocketPath(l.path));
  for (const l of listens) listenPath(l.path, l.label);
}

function withLabel<T>(label: string, f: () => T): T {
  try {
    return f();
  } catch (err) {
    if (err instanceof SocketPathError) throw new ConfigError(`${label}: ${err.message}`);
    throw err;
  }
}

/** Frees a path we are going to bind: a stale socket is removed, anything else is refused. */
export function listenPath(path: string, label: string): void {
  withLabel(label, () => claimSocketPath(path));
}

/** A client's socket: not probed by connecting (the back-end would see a connection come and go). */
function checkClientSocketPath(path: string, label: string): void {
  withLabel(label, () => inspectSocketPath(path));
}

/** A file we append to (the log): an existing regular file we may write, or a new one in an existing directory. */
function checkWritableFile(path: string, label: string): void {
  if (existsSync(path)) {
    const st = statSync(path);
    if (st.isDirectory()) throw new ConfigError(`${label}: ${path} is a directory; give a file name`);
    if (!st.isFile()) throw new ConfigError(`${label}: ${path} is not a regular file`);
    try {
      accessSync(path, constants.W_OK);
    } catch (err) {
      throw new ConfigError(`${label}: ${path} is not writable (${(err as NodeJS.ErrnoException).code})`);
    }
    return;
  }
  checkDirectory(dirname(path), label);
}

/** A file we create and that must not exist yet (the pid file: an existing one may be another VM's). */
function checkNewFile(path: string, label: string): void {
  if (existsSync(path)) throw new ConfigError(`${label}: ${path} exists already; is another VM using it? (remove it if it is stale)`);
  checkDirectory(dirname(path), label);
}

function checkDirectory(dir: string, label: string): void {
  let st;
  try {
    st = statSync(dir);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new ConfigError(code === 'ENOENT' ? `${label}: directory ${dir} does not exist (it is not created)` : `${label}: ${dir}: ${code}`);
  }
  if (!st.isDirectory()) throw new ConfigError(`${label}: ${dir} is not a directory`);
  try {
    accessSync(dir, constants.W_OK);
  } catch (err) {
    throw new ConfigError(`${label}: directory ${dir} is not writable (${(err as NodeJS.ErrnoException).code})`);
  }
}

function checkPinning(config: VmConfig, allowed: readonly number[], label: string): void {
  if (!config.vcpuPin) return;
  const set = new Set(allowed);
  config.vcpuPin.forEach((cpu, vcpu) => {
    if (!set.has(cpu)) {
      throw new ConfigError(`${label}: vCPU ${vcpu} is pinned to host CPU ${cpu}, which this process may not use (allowed: ${[...allowed].join(',')})`);
    }
  });
}

/** The zones as guest-ram.ts will map them, each with the option that described it. */
function zonesWithLabels(config: VmConfig): Array<{ zone: MemoryZoneConfig; label: string }> {
  const m = config.memory;
  if (m.zones.length > 0) {
    const base = config.labels.zones ?? '--memory-zone';
    return m.zones.map((zone) => ({ zone, label: `${base} ${zone.id}` }));
  }
  const label = m.memPath ? (config.labels.memPath ?? '-mem-path') : (config.labels.memory ?? config.labels.memSize ?? '-m');
  return [{ zone: { id: 'ram', size: m.size, file: m.memPath, shared: m.shared, hugepages: m.hugepages, hugepageSize: m.hugepageSize }, label }];
}

function checkMemory(config: VmConfig, nodeRoot: string): void {
  for (const { zone, label } of zonesWithLabels(config)) {
    if (zone.file) checkBackingFile(zone, label);
    else if (zone.hugepages) {
      const host = defaultHugepageSize();
      const size = zone.hugepageSize ?? host;
      if (size !== host) {
        throw new ConfigError(`${label}: hugepage_size ${formatSize(size)} differs from the host's default ${formatSize(host)}; use a hugetlbfs mount of that size with file=`);
      }
      if (zone.size % size !== 0) throw new ConfigError(`${label}: ${formatSize(zone.size)} is not a multiple of the huge page size ${formatSize(size)}`);
    }
    if (zone.hostNumaNode !== undefined && !existsSync(`${nodeRoot}/node${zone.hostNumaNode}`)) {
      throw new ConfigError(`${label}: host_numa_node ${zone.hostNumaNode} does not exist on this host (no ${nodeRoot}/node${zone.hostNumaNode})`);
    }
  }
}

/** -mem-path or a zone's file=: a directory we create an unlinked file in, or a file we resize and map. */
function checkBackingFile(zone: MemoryZoneConfig, label: string): void {
  const path = zone.file!;
  let st;
  try {
    st = statSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new ConfigError(code === 'ENOENT' ? `${label}: ${path} does not exist` : `${label}: ${path}: ${code}`);
  }
  if (!st.isDirectory() && !st.isFile()) throw new ConfigError(`${label}: ${path} is neither a directory nor a regular file`);
  try {
    accessSync(path, constants.R_OK | constants.W_OK);
  } catch (err) {
    throw new ConfigError(`${label}: ${path} is not readable and writable (${(err as NodeJS.ErrnoException).code})`);
  }
  const fs = statfsSync(path);
  if (fs.type === HUGETLBFS_MAGIC && zone.size % fs.bsize !== 0) {
    throw new ConfigError(`${label}: ${formatSize(zone.size)} is not a multiple of the huge page size ${formatSize(fs.bsize)} of ${path}`);
  }
}
