// Value syntax shared by the command line and the JSON file: sizes, booleans, key=value lists,
// CPU lists. Every error names the option (or JSON key) it came from.
import { parseCpuList as parseCpuListText } from '../vocabulary/cpu-list.js';
import { ConfigError } from './config-types.js';

const UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1024,
  kib: 1024,
  kb: 1024,
  m: 1024 ** 2,
  mib: 1024 ** 2,
  mb: 1024 ** 2,
  g: 1024 ** 3,
  gib: 1024 ** 3,
  gb: 1024 ** 3,
  t: 1024 ** 4,
  tib: 1024 ** 4,
  tb: 1024 ** 4,
};

/**
 * A size such as `512M`, `1G`, `268435456`. A bare number is in `bareUnit` bytes (StratoVirt's
 * `-m 512` means MiB; cloud-hypervisor and JSON sizes are bytes).
 */
export function parseSize(text: string, label: string, bareUnit = 1): number {
  const m = /^\s*(\d+)\s*([a-zA-Z]*)\s*$/.exec(text);
  if (!m) throw new ConfigError(`${label}: "${text}" is not a size (use a number with an optional K, M, G or T suffix)`);
  const unitName = m[2].toLowerCase();
  const unit = unitName === '' ? bareUnit : UNITS[unitName];
  if (unit === undefined) throw new ConfigError(`${label}: "${text}" has an unknown unit "${m[2]}" (use K, M, G or T)`);
  const value = Number(m[1]) * unit;
  if (!Number.isSafeInteger(value)) throw new ConfigError(`${label}: "${text}" is too large`);
  return value;
}

export function parseBool(text: string, label: string): boolean {
  switch (text.toLowerCase()) {
    case 'on':
    case 'true':
    case 'yes':
    case '1':
      return true;
    case 'off':
    case 'false':
    case 'no':
    case '0':
      return false;
    default:
      throw new ConfigError(`${label}: "${text}" is not a boolean (use on/off or true/false)`);
  }
}

export function parseUint(text: string, label: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  if (!/^\d+$/.test(text.trim())) throw new ConfigError(`${label}: "${text}" is not a non-negative integer`);
  const value = Number(text.trim());
  if (value < min || value > max) throw new ConfigError(`${label}: ${value} is outside [${min}, ${max}]`);
  return value;
}

export function formatSize(bytes: number): string {
  for (const [unit, size] of [['GiB', 1024 ** 3], ['MiB', 1024 ** 2], ['KiB', 1024]] as const) {
    if (bytes >= size && bytes % size === 0) return `${bytes / size} ${unit}`;
  }
  return `${bytes} bytes`;
}

/**
 * Splits `a=1,b=2` into a map. `positional` names the key a leading value without `=` stands for
 * (`-smp 4` = `cpus=4`, `-netdev vhost-user,id=x` = `type=vhost-user`). Keys outside `allowed`
 * and repeated keys are errors. A value may contain commas when they are doubled (`,,`), as in QEMU.
 */
export function parseKeyValues(
  text: string,
  label: string,
  allowed: readonly string[],
  positional?: string,
): Map<string, string> {
  const out = new Map<string, string>();
  const parts: string[] = [];
  let current = '';
  for (let i = 0; i < text.length; i++) {
    if (text[i] === ',') {
      if (text[i + 1] === ',') {
        current += ',';
        i++;
        continue;
      }
      parts.push(current);
      current = '';
    } else current += text[i];
  }
  parts.push(current);
  parts.forEach((part, index) => {
    if (part === '') throw new ConfigError(`${label}: empty item in "${text}"`);
    const eq = part.indexOf('=');
    let key: string;
    let value: string;
    if (eq < 0) {
      if (index === 0 && positional) {
        key = positional;
        value = part;
      } else if (allowed.includes(part)) {
        // A bare flag such as `server` or `nowait` means on.
        key = part;
        value = 'on';
      } else {
        throw new ConfigError(`${label}: "${part}" is not key=value (known keys: ${allowed.join(', ')})`);
      }
    } else {
      key = part.slice(0, eq);
      value = part.slice(eq + 1);
    }
    if (!allowed.includes(key) && key !== positional) {
      throw new ConfigError(`${label}: unknown key "${key}" (known keys: ${allowed.join(', ')})`);
    }
    if (out.has(key)) throw new ConfigError(`${label}: key "${key}" given twice`);
    out.set(key, value);
  });
  return out;
}

/**
 * A CPU list in cloud-hypervisor syntax: items separated by `:` (or `,` inside brackets), each a
 * CPU or a range, as in `0-3:7` or `[0-3,7]`; the grammar of vocabulary/cpu-list.ts otherwise.
 * A CPU named twice is an error here: a pinning or NUMA list that repeats one is a typo.
 */
export function parseCpuList(text: string, label: string, max = 255): number[] {
  try {
    return parseCpuListText(text.replace(/^\[|\]$/g, ''), { separator: /[:,]/, max, duplicatesAreErrors: true });
  } catch (err) {
    throw new ConfigError(`${label}: ${(err as Error).message}`);
  }
}

const MAC = /^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/;

export function parseMac(text: string, label: string): string {
  if (!MAC.test(text)) throw new ConfigError(`${label}: "${text}" is not a MAC address (xx:xx:xx:xx:xx:xx)`);
  if (parseInt(text.slice(0, 2), 16) & 1) throw new ConfigError(`${label}: ${text} is a multicast address; a NIC needs a unicast MAC`);
  return text.toLowerCase();
}

/** A stable locally administered MAC for NIC number `index` of a VM named `name`. */
export function defaultMac(name: string, index: number): string {
  let h = 2166136261;
  for (const ch of `${name}/${index}`) h = Math.imul(h ^ ch.charCodeAt(0), 16777619) >>> 0;
  const bytes = [0x52, 0x54, 0x00, (h >>> 16) & 0xff, (h >>> 8) & 0xff, (h & 0xf0) | index];
  return bytes.map((b) => b.toString(16).padStart(2, '0')).join(':');
}
