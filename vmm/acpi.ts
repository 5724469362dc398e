// ACPI tables for a hardware-reduced microVM: RSDP, XSDT, FADT, MADT, DSDT (COM1 and one
// LNRO0005 device per virtio-mmio transport, which is how Debian's kernel finds them), and SRAT
// and SLIT when guest NUMA nodes are configured. Layouts follow the ACPI 6.x specification.
import {
  ACPI_RESET_PORT,
  ACPI_RESET_VALUE,
  ACPI_SLEEP_CONTROL_PORT,
  ACPI_SLEEP_STATUS_PORT,
  IOAPIC_ADDR,
  LAPIC_ADDR,
  SERIAL_GSI,
  SERIAL_PORT,
} from './layout.js';

export interface AcpiMmioDevice {
  address: number;
  size: number;
  gsi: number;
}

export interface AcpiNumaNode {
  id: number;
  cpus: number[];
  memory: Array<{ base: number; size: number }>;
  distances: Map<number, number>;
}

export interface AcpiInput {
  vcpus: number;
  mmioDevices: AcpiMmioDevice[];
  numa: AcpiNumaNode[];
  /** Where the tables (other than the RSDP) are placed in guest memory. */
  tablesAddress: number;
  rsdpAddress: number;
}

export interface AcpiTables {
  /** Every table with its guest address, RSDP included, in placement order. */
  tables: Array<{ signature: string; address: number; bytes: Uint8Array }>;
  rsdpAddress: number;
}

const OEM_ID = 'VIO4WD';
const OEM_TABLE_ID = 'VIO4WDVM';
const CREATOR_ID = 'VIOW';

function checksum(bytes: Uint8Array, from = 0, to = bytes.length): number {
  let sum = 0;
  for (let i = from; i < to; i++) sum = (sum + bytes[i]) & 0xff;
  return (0x100 - sum) & 0xff;
}

function ascii(view: Uint8Array, offset: number, text: string, length: number): void {
  for (let i = 0; i < length; i++) view[offset + i] = i < text.length ? text.charCodeAt(i) : 0x20;
}

/** A table with the 36-byte system description header filled and its checksum set. */
function sdt(signature: string, revision: number, body: Uint8Array): Uint8Array {
  const t = new Uint8Array(36 + body.length);
  const v = new DataView(t.buffer);
  ascii(t, 0, signature, 4);
  v.setUint32(4, t.length, true);
  t[8] = revision;
  ascii(t, 10, OEM_ID, 6);
  ascii(t, 16, OEM_TABLE_ID, 8);
  v.setUint32(24, 1, true);
  ascii(t, 28, CREATOR_ID, 4);
  v.setUint32(32, 1, true);
  t.set(body, 36);
  t[9] = checksum(t);
  return t;
}

/** Generic Address Structure (12 bytes). */
function gas(v: DataView, offset: number, spaceId: number, bitWidth: number, accessSize: number, address: number): void {
  v.setUint8(offset, spaceId);
  v.setUint8(offset + 1, bitWidth);
  v.setUint8(offset + 2, 0);
  v.setUint8(offset + 3, accessSize);
  v.setBigUint64(offset + 4, BigInt(address), true);
}

const GAS_SYSTEM_IO = 1;

export function buildFadt(dsdtAddress: number): Uint8Array {
  const body = new Uint8Array(276 - 36);
  const v = new DataView(body.buffer);
  const at = (offset: number) => offset - 36;
  v.setUint32(at(40), dsdtAddress, true);
  // IAPC_BOOT_ARCH: no VGA, no CMOS RTC probing surprises; the 8042 flag stays off (reboot=k still works).
  v.setUint16(at(109), 1 << 2, true);
  const HW_REDUCED_ACPI = 1 << 20;
  const RESET_REG_SUP = 1 << 10;
  const PWR_BUTTON = 1 << 4;
  const SLP_BUTTON = 1 << 5;
  v.setUint32(at(112), HW_REDUCED_ACPI | RESET_REG_SUP | PWR_BUTTON | SLP_BUTTON, true);
  gas(v, at(116), GAS_SYSTEM_IO, 8, 1, ACPI_RESET_PORT);
  v.setUint8(at(128), ACPI_RESET_VALUE);
  v.setUint8(at(131), 3); // FADT minor version (ACPI 6.3)
  v.setBigUint64(at(140), BigInt(dsdtAddress), true);
  gas(v, at(244), GAS_SYSTEM_IO, 8, 1, ACPI_SLEEP_CONTROL_PORT);
  gas(v, at(256), GAS_SYSTEM_IO, 8, 1, ACPI_SLEEP_STATUS_PORT);
  ascii(body, at(268), 'VIO4WD', 8);
  return sdt('FACP', 6, body);
}

export function buildMadt(vcpus: number): Uint8Array {
  const entries: number[] = [];
  const u32 = (n: number) => [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff];
  for (let i = 0; i < vcpus; i++) entries.push(0, 8, i, i, ...u32(1));
  entries.push(1, 12, 0, 0, ...u32(IOAPIC_ADDR), ...u32(0));
  // LINT1 of every processor is NMI, as the LAPIC is programmed at boot.
  entries.push(4, 6, 0xff, 0, 0, 1);
  const body = new Uint8Array(8 + entries.length);
  const v = new DataView(body.buffer);
  v.setUint32(0, LAPIC_ADDR, true);
  v.setUint32(4, 1, true); // PCAT_COMPAT: KVM's in-kernel PICs exist
  body.set(entries, 8);
  return sdt('APIC', 5, body);
}

// ---- AML ----

function pkgLength(contentLength: number): number[] {
  for (let extra = 0; extra <= 3; extra++) {
    const total = contentLength + 1 + extra;
    if (extra === 0 && total < 0x40) return [total];
    if (extra > 0 && total < 1 << (4 + 8 * extra)) {
      const out = [(extra << 6) | (total & 0x0f)];
      for (let i = 0; i < extra; i++) out.push((total >> (4 + 8 * i)) & 0xff);
      return out;
    }
  }
  throw new Error(`AML: package of ${contentLength} bytes is too large`);
}

function nameSeg(name: string): number[] {
  if (!/^[A-Z_][A-Z0-9_]{0,3}$/.test(name)) throw new Error(`AML: "${name}" is not a valid name segment`);
  return [...name.padEnd(4, '_')].map((c) => c.charCodeAt(0));
}

function amlInteger(n: number): number[] {
  if (n === 0) return [0x00];
  if (n === 1) return [0x01];
  if (n <= 0xff) return [0x0a, n];
  if (n <= 0xffff) return [0x0b, n & 0xff, n >> 8];
  return [0x0c, n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff];
}

function amlString(s: string): number[] {
  return [0x0d, ...[...s].map((c) => c.charCodeAt(0)), 0x00];
}

function amlName(name: string, value: number[]): number[] {
  return [0x08, ...nameSeg(name), ...value];
}

function amlBuffer(bytes: number[]): number[] {
  const content = [...amlInteger(bytes.length), ...bytes];
  return [0x11, ...pkgLength(content.length), ...content];
}

function amlPackage(elements: number[][]): number[] {
  const content = [elements.length, ...elements.flat()];
  return [0x12, ...pkgLength(content.length), ...content];
}

function amlDevice(name: string, body: number[]): number[] {
  const content = [...nameSeg(name), ...body];
  return [0x5b, 0x82, ...pkgLength(content.length), ...content];
}

function amlScope(path: number[], body: number[]): number[] {
  const content = [...path, ...body];
  return [0x10, ...pkgLength(content.length), ...content];
}

function u32le(n: number): number[] {
  return [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff];
}

function resourceTemplate(items: number[]): number[] {
  return amlBuffer([...items, 0x79, 0x00]);
}

/** Device name for virtio-mmio transport `index`: VR00, VR01, ... */
export function virtioDeviceName(index: number): string {
  return `VR${index.toString(16).toUpperCase().padStart(2, '0')}`;
}

export function buildDsdt(devices: AcpiMmioDevice[]): Uint8Array {
  const body: number[] = [];
  const com1 = amlDevice('COM1', [
    ...amlName('_HID', [0x0c, ...eisaId('PNP0501')]),
    ...amlName('_UID', amlInteger(0)),
    ...amlName(
      '_CRS',
      resourceTemplate([
        0x47, 0x01, SERIAL_PORT & 0xff, SERIAL_PORT >> 8, SERIAL_PORT & 0xff, SERIAL_PORT >> 8, 0x01, 0x08,
        0x22, (1 << SERIAL_GSI) & 0xff, (1 << SERIAL_GSI) >> 8,
      ]),
    ),
  ]);
  body.push(...com1);
  devices.forEach((d, i) => {
    // Extended interrupt: consumer, edge-triggered, active-high, exclusive. KVM irqfds pulse the pin.
    const flags = 0x01 | 0x02;
    body.push(
      ...amlDevice(virtioDeviceName(i), [
        ...amlName('_HID', amlString('LNRO0005')),
        ...amlName('_UID', amlInteger(i)),
        ...amlName('_CCA', [0x01]),
        ...amlName(
          '_CRS',
          resourceTemplate([0x86, 0x09, 0x00, 0x01, ...u32le(d.address), ...u32le(d.size), 0x89, 0x06, 0x00, flags, 0x01, ...u32le(d.gsi)]),
        ),
      ]),
    );
  });
  const root = '\\'.charCodeAt(0);
  const aml = [
    ...amlScope([root, ...nameSeg('_SB_')], body),
    // S5 lets `poweroff` end the VM through the FADT sleep control register.
    ...amlName('_S5_', amlPackage([amlInteger(5), amlInteger(0), amlInteger(0), amlInteger(0)])),
  ];
  return sdt('DSDT', 2, new Uint8Array(aml));
}

/** A compressed EISA id such as PNP0501 as the 32-bit value AML stores. */
export function eisaId(id: string): number[] {
  const c = (i: number) => (id.charCodeAt(i) - 0x40) & 0x1f;
  const hex = (i: number) => parseInt(id[i], 16);
  const b0 = (c(0) << 2) | (c(1) >> 3);
  const b1 = ((c(1) & 7) << 5) | c(2);
  const b2 = (hex(3) << 4) | hex(4);
  const b3 = (hex(5) << 4) | hex(6);
  return [b0, b1, b2, b3];
}

export function buildSrat(nodes: AcpiNumaNode[]): Uint8Array {
  const entries: number[] = [];
  for (const node of nodes) {
    for (const cpu of node.cpus) {
      const e = new Uint8Array(16);
      const v = new DataView(e.buffer);
      e[0] = 0;
      e[1] = 16;
      e[2] = node.id & 0xff;
      e[3] = cpu;
      v.setUint32(4, 1, true);
      e[9] = (node.id >> 8) & 0xff;
      e[10] = (node.id >> 16) & 0xff;
      e[11] = (node.id >> 24) & 0xff;
      entries.push(...e);
    }
    for (const range of node.memory) {
      const e = new Uint8Array(40);
      const v = new DataView(e.buffer);
      e[0] = 1;
      e[1] = 40;
      v.setUint32(2, node.id, true);
      v.setBigUint64(8, BigInt(range.base), true);
      v.setBigUint64(16, BigInt(range.size), true);
      v.setUint32(28, 1, true);
      entries.push(...e);
    }
  }
  const body = new Uint8Array(12 + entries.length);
  new DataView(body.buffer).setUint32(0, 1, true); // reserved, 1 for backward compatibility
  body.set(entries, 12);
  return sdt('SRAT', 3, body);
}

export function buildSlit(nodes: AcpiNumaNode[]): Uint8Array {
  const count = Math.max(...nodes.map((n) => n.id)) + 1;
  const body = new Uint8Array(8 + count * count);
  new DataView(body.buffer).setBigUint64(0, BigInt(count), true);
  for (let from = 0; from < count; from++) {
    for (let to = 0; to < count; to++) {
      const node = nodes.find((n) => n.id === from);
      body[8 + from * count + to] = from === to ? 10 : (node?.distances.get(to) ?? 20);
    }
  }
  return sdt('SLIT', 1, body);
}

export function buildXsdt(entries: number[]): Uint8Array {
  const body = new Uint8Array(entries.length * 8);
  const v = new DataView(body.buffer);
  entries.forEach((address, i) => v.setBigUint64(i * 8, BigInt(address), true));
  return sdt('XSDT', 1, body);
}

export function buildRsdp(xsdtAddress: number): Uint8Array {
  const t = new Uint8Array(36);
  const v = new DataView(t.buffer);
  ascii(t, 0, 'RSD PTR ', 8);
  ascii(t, 9, OEM_ID, 6);
  t[15] = 2;
  v.setUint32(20, 36, true);
  v.setBigUint64(24, BigInt(xsdtAddress), true);
  t[8] = checksum(t, 0, 20);
  t[32] = checksum(t, 0, 36);
  return t;
}

export function buildAcpiTables(input: AcpiInput): AcpiTables {
  const tables: AcpiTables['tables'] = [];
  let next = input.tablesAddress;
  const place = (signature: string, bytes: Uint8Array) => {
    const address = next;
    tables.push({ signature, address, bytes });
    next = (next + bytes.length + 15) & ~15;
    return address;
  };
  const dsdt = place('DSDT', buildDsdt(input.mmioDevices));
  const pointers = [place('FACP', buildFadt(dsdt)), place('APIC', buildMadt(input.vcpus))];
  if (input.numa.length > 0) {
    pointers.push(place('SRAT', buildSrat(input.numa)));
    pointers.push(place('SLIT', buildSlit(input.numa)));
  }
  const xsdt = place('XSDT', buildXsdt(pointers));
  tables.push({ signature: 'RSDP', address: input.rsdpAddress, bytes: buildRsdp(xsdt) });
  return { tables, rsdpAddress: input.rsdpAddress };
}
