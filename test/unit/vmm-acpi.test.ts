import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { buildAcpiTables, eisaId } from '../../vmm/acpi.js';
import { hasBinary, requireOrSkip } from '../support/env.js';

const dir = mkdtempSync(join(tmpdir(), 'vmm-acpi-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const tables = buildAcpiTables({
  vcpus: 2,
  mmioDevices: [
    { address: 0xd0000000, size: 0x1000, gsi: 5 },
    { address: 0xd0001000, size: 0x1000, gsi: 6 },
  ],
  numa: [
    { id: 0, cpus: [0], memory: [{ base: 0, size: 256 * 2 ** 20 }], distances: new Map([[1, 20]]) },
    { id: 1, cpus: [1], memory: [{ base: 256 * 2 ** 20, size: 256 * 2 ** 20 }], distances: new Map([[0, 20]]) },
  ],
  tablesAddress: 0xa0000,
  rsdpAddress: 0xe0000,
});
const bySignature = (s: string) => tables.tables.find((t) => t.signature === s)!.bytes;

/** Disassembles one table with iasl and returns the text. */
function disassemble(signature: string): string {
  const file = join(dir, `${signature.toLowerCase()}.dat`);
  writeFileSync(file, bySignature(signature));
  const out = execFileSync('iasl', ['-d', file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  expect(out).not.toMatch(/Error/);
  return readFileSync(file.replace(/\.dat$/, '.dsl'), 'utf8');
}

describe('ACPI tables', () => {
  it('every table checksums to zero and the RSDP points at the XSDT', () => {
    for (const t of tables.tables) {
      const length = t.signature === 'RSDP' ? 36 : t.bytes.length;
      expect(t.bytes.subarray(0, length).reduce((s, b) => (s + b) & 0xff, 0), t.signature).toBe(0);
    }
    const rsdp = Buffer.from(bySignature('RSDP'));
    expect(rsdp.subarray(0, 8).toString()).toBe('RSD PTR ');
    expect(rsdp.subarray(0, 20).reduce((s, b) => (s + b) & 0xff, 0)).toBe(0);
    const xsdt = tables.tables.find((t) => t.signature === 'XSDT')!;
    expect(Number(rsdp.readBigUInt64LE(24))).toBe(xsdt.address);
    const pointers = Buffer.from(xsdt.bytes).subarray(36);
    const pointed = Array.from({ length: pointers.length / 8 }, (_, i) => Number(pointers.readBigUInt64LE(i * 8)));
    expect(pointed.map((a) => tables.tables.find((t) => t.address === a)?.signature)).toEqual(['FACP', 'APIC', 'SRAT', 'SLIT']);
  });

  it('encodes EISA ids as AML does', () => {
    expect(eisaId('PNP0501')).toEqual([0x41, 0xd0, 0x05, 0x01]);
  });

  describe('disassembled with iasl', () => {
    const haveIasl = hasBinary('iasl');
    it.runIf(requireOrSkip(haveIasl, 'iasl (Debian acpica-tools) is not installed'))('DSDT lists COM1 and one LNRO0005 device per virtio-mmio transport', () => {
      const dsl = disassemble('DSDT');
      expect(dsl).toMatch(/Device \(COM1\)/);
      expect(dsl).toMatch(/EisaId \("PNP0501"\)/);
      expect(dsl).toMatch(/Device \(VR00\)[\s\S]*Name \(_HID, "LNRO0005"\)[\s\S]*Memory32Fixed \(ReadWrite,\s*0xD0000000,\s*\/\/ Address Base\s*0x00001000,/);
      expect(dsl).toMatch(/Device \(VR01\)[\s\S]*0xD0001000/);
      expect(dsl).toMatch(/Interrupt \(ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, \)\s*\{\s*0x00000005,?\s*\}/);
      expect(dsl).toMatch(/Interrupt \(ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, \)\s*\{\s*0x00000006,?\s*\}/);
      expect(dsl).toMatch(/Name \(_S5, Package \(0x04\)/);
    });
    it.runIf(haveIasl)('FADT is hardware-reduced with DSDT, sleep and reset registers', () => {
      const dsl = disassemble('FACP');
      expect(dsl).toMatch(/Hardware Reduced \(V5\) : 1/);
      expect(dsl).toMatch(/Revision : 06/);
      const dsdt = tables.tables.find((t) => t.signature === 'DSDT')!.address.toString(16).toUpperCase();
      expect(dsl).toMatch(new RegExp(`DSDT Address : 0{4,}${dsdt}`));
      expect(dsl).toMatch(/Sleep Control Register[\s\S]*Address : 0000000000000600/);
      expect(dsl).toMatch(/Reset Register[\s\S]*Address : 0000000000000602/);
    });
    it.runIf(haveIasl)('MADT has one local APIC per vCPU and the IOAPIC', () => {
      const dsl = disassemble('APIC');
      expect(dsl.match(/Subtable Type : 00 \[Processor Local APIC\]/g)).toHaveLength(2);
      expect(dsl).toMatch(/Subtable Type : 01 \[I\/O APIC\][\s\S]*Address : FEC00000/);
      expect(dsl).toMatch(/Local Apic Address : FEE00000/);
    });
    it.runIf(haveIasl)('SRAT and SLIT describe the guest NUMA nodes', () => {
      const srat = disassemble('SRAT');
      expect(srat.match(/Processor Local APIC\/SAPIC Affinity/g)).toHaveLength(2);
      expect(srat).toMatch(/Memory Affinity[\s\S]*Proximity Domain : 00000001[\s\S]*Base Address : 0000000010000000/);
      const slit = disassemble('SLIT');
      expect(slit).toMatch(/Localities : 0000000000000002/);
      expect(slit).toMatch(/Locality\s+0 : 0A 14/);
      expect(slit).toMatch(/Locality\s+1 : 14 0A/);
    });
  });
});
