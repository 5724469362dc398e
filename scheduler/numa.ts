// CPU → NUMA node from sysfs (<root>/devices/system/node/node<N>/cpulist). Counting sockets in
// /proc/cpuinfo, as the original did, is wrong on hosts with several nodes per socket.

import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

/** Parses a kernel CPU list such as `0-3,8,10-11`; throws naming the text when it is malformed. */
export function parseCpuList(text: string, what: string): number[] {
  const cpus: number[] = [];
  const trimmed = text.trim();
  if (trimmed === '') return cpus;
  for (const part of trimmed.split(',')) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part);
    if (!m) throw new Error(`${what}: ${JSON.stringify(part)} is not a CPU or CPU range`);
    const first = Number(m[1]);
    const last = m[2] === undefined ? first : Number(m[2]);
    if (last < first) throw new Error(`${what}: range ${part} runs backwards`);
    if (last - first > 65_536) throw new Error(`${what}: range ${part} is implausibly large`);
    for (let c = first; c <= last; c++) cpus.push(c);
  }
  return cpus;
}

/**
 * Reads the node of every CPU the kernel lists. An empty map means the host exposes no NUMA
 * topology (a kernel without CONFIG_NUMA); callers then fall back to what the relay reports.
 */
export function readCpuNodes(sysfsRoot: string): Map<number, number> {
  const dir = join(sysfsRoot, 'devices/system/node');
  const nodes = new Map<number, number>();
  let entries: string[];
  try {
    entries = readdirSync(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return nodes;
    throw new Error(`NUMA topology: cannot list ${dir}: ${(err as Error).message}`);
  }
  for (const entry of entries) {
    const m = /^node(\d+)$/.exec(entry);
    if (!m) continue;
    const file = join(dir, entry, 'cpulist');
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      throw new Error(`NUMA topology: cannot read ${file}: ${(err as Error).message}`);
    }
    for (const cpu of parseCpuList(text, file)) {
      const previous = nodes.get(cpu);
      if (previous !== undefined && previous !== Number(m[1])) {
        throw new Error(`NUMA topology: CPU ${cpu} is listed under node${previous} and ${entry}`);
      }
      nodes.set(cpu, Number(m[1]));
    }
  }
  return nodes;
}
