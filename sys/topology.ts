// The machine's CPU topology from sysfs: the online CPUs and the CPUs of each NUMA node. The one
// reader for the daemon, the scheduler and the tools. Counting sockets in /proc/cpuinfo, as the
// original did, is wrong on hosts with several nodes per socket. `sysfsRoot` lets tests build a
// fake tree.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseCpuList } from '../vocabulary/cpu-list.js';

function readCpuListFile(path: string, what: string, emptyOk: boolean): number[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new Error(`cannot read ${what} from ${path}: ${(err as Error).message}`);
  }
  try {
    return parseCpuList(text, { emptyOk });
  } catch (err) {
    throw new Error(`${path} holds "${text.trim()}": ${(err as Error).message}`);
  }
}

/** The online CPUs from `<sysfsRoot>/devices/system/cpu/online`. */
export function readOnlineCpus(sysfsRoot = '/sys'): number[] {
  return readCpuListFile(join(sysfsRoot, 'devices/system/cpu/online'), 'the online CPUs', false);
}

/**
 * NUMA node → its CPUs (ascending node ids), from `<sysfsRoot>/devices/system/node/node<N>/cpulist`.
 * Empty when the machine exposes no nodes (a kernel without CONFIG_NUMA); a memory-only node has
 * no CPUs. A CPU listed under two nodes is an error.
 */
export function readNumaNodeCpus(sysfsRoot = '/sys'): Map<number, number[]> {
  const dir = join(sysfsRoot, 'devices/system/node');
  let entries: string[];
  try {
    entries = readdirSync(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return new Map();
    throw new Error(`NUMA topology: cannot list ${dir}: ${(err as Error).message}`);
  }
  const nodes = new Map<number, number[]>();
  const nodeOf = new Map<number, number>();
  for (const entry of entries) {
    const m = /^node(\d+)$/.exec(entry);
    if (!m) continue;
    const node = Number(m[1]);
    const cpus = readCpuListFile(join(dir, entry, 'cpulist'), `the CPUs of NUMA node ${node}`, true);
    for (const cpu of cpus) {
      const previous = nodeOf.get(cpu);
      if (previous !== undefined) throw new Error(`NUMA topology: CPU ${cpu} is listed under node${previous} and ${entry}`);
      nodeOf.set(cpu, node);
    }
    nodes.set(node, cpus);
  }
  return new Map([...nodes.entries()].sort((a, b) => a[0] - b[0]));
}

/** CPU → NUMA node, for every CPU some node lists. */
export function readCpuNodes(sysfsRoot = '/sys'): Map<number, number> {
  const map = new Map<number, number>();
  for (const [node, cpus] of readNumaNodeCpus(sysfsRoot)) for (const cpu of cpus) map.set(cpu, node);
  return map;
}

/** The NUMA node of `cpu`, or -1 when sysfs does not say. */
export function numaNodeOfCpu(cpu: number, sysfsRoot = '/sys'): number {
  return readCpuNodes(sysfsRoot).get(cpu) ?? -1;
}
