// CPU sets as the kernel and the configuration write them: lists with ranges ("0-3,8"), the
// configuration's `0x` bitmaps, and their compact form. One grammar for the daemon, the tools,
// the scheduler, the sysfs readers and the VMM's pinning options.
import { MAX_CPU_ID } from './limits.js';

export interface CpuListOptions {
  /** An empty text is the empty set (sysfs writes an empty cpulist for a memory-only node). Default: an error. */
  emptyOk?: boolean;
  /** The largest CPU id accepted (default MAX_CPU_ID). */
  max?: number;
  /** What separates items (default ","; cloud-hypervisor's syntax also uses ":"). */
  separator?: RegExp;
  /** A CPU named twice is an error instead of being merged (configuration that lists CPUs one by one). */
  duplicatesAreErrors?: boolean;
}

/**
 * Parses "0", "0,2", "1-3", "0-1,4-5" (white space around items allowed) into sorted unique ids.
 * Throws an Error that names the bad item.
 */
export function parseCpuList(text: string, opts: CpuListOptions = {}): number[] {
  const max = opts.max ?? MAX_CPU_ID;
  const trimmed = text.trim();
  if (trimmed === '') {
    if (opts.emptyOk) return [];
    throw new Error('the CPU list is empty');
  }
  const cpus = new Set<number>();
  const add = (cpu: number, item: string) => {
    if (cpu > max) throw new Error(`CPU ${cpu} in "${item}" is above ${max}`);
    if (cpus.has(cpu) && opts.duplicatesAreErrors) throw new Error(`CPU ${cpu} is listed twice in "${trimmed}"`);
    cpus.add(cpu);
  };
  for (const rawItem of trimmed.split(opts.separator ?? /,/)) {
    const item = rawItem.trim();
    const range = /^(\d+)\s*-\s*(\d+)$/.exec(item);
    if (range) {
      const first = Number(range[1]);
      const last = Number(range[2]);
      if (first > last) throw new Error(`CPU range "${item}" runs backwards`);
      if (last > max) throw new Error(`CPU ${last} in "${item}" is above ${max}`);
      for (let cpu = first; cpu <= last; cpu++) add(cpu, item);
    } else if (/^\d+$/.test(item)) {
      add(Number(item), item);
    } else {
      throw new Error(`"${item}" is not a CPU number or a range such as 1-3`);
    }
  }
  return [...cpus].sort((a, b) => a - b);
}

/** Parses a `0x` hexadecimal bitmap (bit n = CPU n). */
export function parseCpuBitmap(text: string): number[] {
  const hex = text.trim();
  if (!/^0[xX][0-9a-fA-F]+$/.test(hex)) throw new Error(`"${text}" is not a hexadecimal CPU bitmap such as 0x6`);
  let bits = BigInt(hex);
  const cpus: number[] = [];
  for (let cpu = 0; bits > 0n; cpu++, bits >>= 1n) {
    if (bits & 1n) {
      if (cpu > MAX_CPU_ID) throw new Error(`bitmap ${hex} names CPU ${cpu}, above ${MAX_CPU_ID}`);
      cpus.push(cpu);
    }
  }
  if (cpus.length === 0) throw new Error(`bitmap ${hex} selects no CPU`);
  return cpus;
}

/** A CPU mask as VIRTIOFWD_CPU_MASK writes it: a `0x` bitmap or a list. */
export function parseCpuMask(text: string): number[] {
  return /^\s*0[xX]/.test(text) ? parseCpuBitmap(text) : parseCpuList(text);
}

/** Formats ids back into the kernel's compact list form ("0-2,5"). */
export function formatCpuList(cpus: readonly number[]): string {
  const sorted = [...new Set(cpus)].sort((a, b) => a - b);
  const parts: string[] = [];
  for (let i = 0; i < sorted.length; ) {
    let j = i;
    while (j + 1 < sorted.length && sorted[j + 1] === sorted[j] + 1) j++;
    parts.push(j === i ? `${sorted[i]}` : `${sorted[i]}-${sorted[j]}`);
    i = j + 1;
  }
  return parts.join(',');
}
