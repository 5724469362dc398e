// PCI addresses in the one spelling the whole project compares: lower-case `dddd:bb:ss.f`.
// Every way in (the configuration file, port control, the OVSDB and IPC monitors, sysfs) reads
// them with this one grammar: an optional domain of 1-4 hex digits, then bus and slot of 1-2 hex
// digits and a function 0-7, any case, as lspci -s and the original's tools write them. So
// "0000:05:08.1", "05:08.1" and "5:8.1" are the same VF everywhere.

export interface PciAddress {
  domain: number;
  bus: number;
  slot: number;
  fn: number;
}

const PCI_PATTERN = /^(?:([0-9a-fA-F]{1,4}):)?([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\.([0-9a-fA-F])$/;

/** True when `text` has the shape of a PCI address (it may still be out of range). */
export function looksLikePciAddress(text: string): boolean {
  return /^(?:[0-9a-fA-F]+:)?[0-9a-fA-F]+:[0-9a-fA-F]+\.[0-9a-fA-F]+$/.test(text.trim());
}

/** Parses the address; surrounding white space is allowed. Throws an Error that says what is wrong. */
export function parsePciAddress(text: string): PciAddress {
  const m = PCI_PATTERN.exec(text.trim());
  if (!m) {
    throw new Error(
      `"${text}" is not a PCI address: expected dddd:bb:ss.f or bb:ss.f in hexadecimal (for example 0000:05:08.1)`,
    );
  }
  const address: PciAddress = {
    domain: m[1] === undefined ? 0 : parseInt(m[1], 16),
    bus: parseInt(m[2], 16),
    slot: parseInt(m[3], 16),
    fn: parseInt(m[4], 16),
  };
  if (address.slot > 0x1f) throw new Error(`"${text}" is not a PCI address: slot 0x${m[3]} is above 0x1f`);
  if (address.fn > 7) throw new Error(`"${text}" is not a PCI address: function ${m[4]} is above 7`);
  return address;
}

export function formatPciAddress(address: PciAddress): string {
  const hex = (n: number, width: number) => n.toString(16).padStart(width, '0');
  return `${hex(address.domain, 4)}:${hex(address.bus, 2)}:${hex(address.slot, 2)}.${address.fn}`;
}

/** The canonical lower-case `dddd:bb:ss.f` form; throws like parsePciAddress. */
export function canonicalPciAddress(text: string): string {
  return formatPciAddress(parsePciAddress(text));
}

/** The canonical form, or null when `text` is not a valid PCI address. */
export function tryCanonicalPciAddress(text: string): string | null {
  try {
    return canonicalPciAddress(text);
  } catch {
    return null;
  }
}

/** True when both are valid and name the same device. */
export function samePciAddress(a: string, b: string): boolean {
  const x = tryCanonicalPciAddress(a);
  return x !== null && x === tryCanonicalPciAddress(b);
}
