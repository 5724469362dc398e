// The shared vocabulary (vocabulary/): one grammar each for PCI addresses, CPU lists and ZMQ
// endpoints, used by the daemon, port control, the tools, the scheduler and the VMM alike.
import { describe, expect, it } from 'vitest';
import { formatCpuList, parseCpuBitmap, parseCpuList, parseCpuMask } from '../../vocabulary/cpu-list.js';
import { DEFAULT_ENDPOINTS, DEFAULT_ZMQ_DIR, ENDPOINT_VARIABLES, ZMQ_SERVICES, zmqEndpointProblem } from '../../vocabulary/endpoints.js';
import { MAX_CPU_ID } from '../../vocabulary/limits.js';
import {
  canonicalPciAddress,
  looksLikePciAddress,
  parsePciAddress,
  samePciAddress,
  tryCanonicalPciAddress,
} from '../../vocabulary/pci.js';
import { canonicalPci, ProtocolError } from '../../port-control/protocol.js';
import { configFromText } from '../../relay/config/load.js';

describe('PCI addresses', () => {
  it.each([
    ['0000:05:08.1', '0000:05:08.1'],
    ['05:08.1', '0000:05:08.1'],
    ['5:8.1', '0000:05:08.1'],
    ['000:05:08.1', '0000:05:08.1'],
    ['0000:5:08.1', '0000:05:08.1'],
    ['1:5:8.1', '0001:05:08.1'],
    ['0000:5E:1F.7', '0000:5e:1f.7'],
    ['ABCD:ff:00.0', 'abcd:ff:00.0'],
    [' 0000:05:08.1 ', '0000:05:08.1'],
  ])('%j is %s', (text, canonical) => {
    expect(canonicalPciAddress(text)).toBe(canonical);
  });

  it('gives the fields and compares spellings', () => {
    expect(parsePciAddress('0001:82:1f.7')).toEqual({ domain: 1, bus: 0x82, slot: 0x1f, fn: 7 });
    expect(samePciAddress('0000:AF:00.1', 'af:0.1')).toBe(true);
    expect(samePciAddress('0000:af:00.1', '0000:af:00.2')).toBe(false);
    expect(samePciAddress('garbage', 'garbage')).toBe(false);
  });

  it.each([
    ['', /expected dddd:bb:ss\.f or bb:ss\.f/],
    ['0000:05:08', /expected dddd:bb:ss\.f/],
    ['05:08', /expected dddd:bb:ss\.f/],
    ['0000:05:08.1.2', /expected dddd:bb:ss\.f/],
    ['00000:05:08.1', /expected dddd:bb:ss\.f/],
    ['0000:005:08.1', /expected dddd:bb:ss\.f/],
    ['0000:05:08.10', /expected dddd:bb:ss\.f/],
    ['0000:0g:08.1', /expected dddd:bb:ss\.f/],
    ['0000-05-08.1', /expected dddd:bb:ss\.f/],
    ['0000:05:20.0', /slot 0x20 is above 0x1f/],
    ['0000:05:08.8', /function 8 is above 7/],
    ['0000:05:08.f', /function f is above 7/],
  ])('refuses %j', (text, message) => {
    expect(() => parsePciAddress(text)).toThrow(message);
    expect(() => parsePciAddress(text)).toThrow(`"${text}" is not a PCI address`);
    expect(tryCanonicalPciAddress(text)).toBeNull();
  });

  it('tells PCI-looking text from interface names', () => {
    expect(looksLikePciAddress('05:08.1')).toBe(true);
    expect(looksLikePciAddress('0000:05:08.1')).toBe(true);
    expect(looksLikePciAddress('eth0')).toBe(false);
    expect(looksLikePciAddress('veth0.1')).toBe(false);
  });

  it('is the same grammar in the configuration file and on the port-control wire', () => {
    // "5:8.1" used to be accepted by port control and refused by the daemon's configuration.
    for (const text of ['5:8.1', '0000:05:08.1', '05:08.1']) {
      expect(canonicalPci(text)).toBe('0000:05:08.1');
      const { config } = configFromText(`VIRTIOFWD_STATIC_VFS=(${text}=3)`, { onlineCpus: [0, 1] });
      expect(config.staticVfs).toEqual([expect.objectContaining({ relay: 3 })]);
      expect(JSON.stringify(config.staticVfs)).toContain('0000:05:08.1');
    }
    for (const text of ['05:08', '0000:05:20.0']) {
      expect(() => canonicalPci(text)).toThrow(ProtocolError);
      expect(() => configFromText(`VIRTIOFWD_STATIC_VFS=(${text}=3)`, { onlineCpus: [0, 1] })).toThrow();
    }
    // A wire field carries no white space around it; the file's parser trims its words.
    expect(() => canonicalPci(' 05:08.1')).toThrow(/white space/);
  });
});

describe('CPU lists', () => {
  it('parses the kernel format into sorted unique ids and formats it back', () => {
    expect(parseCpuList('0-2,5,7-8\n')).toEqual([0, 1, 2, 5, 7, 8]);
    expect(parseCpuList(' 3 , 1 - 2 ')).toEqual([1, 2, 3]);
    expect(parseCpuList('1,1,0-1')).toEqual([0, 1]);
    expect(formatCpuList([8, 7, 5, 0, 1, 2, 2])).toBe('0-2,5,7-8');
    expect(formatCpuList([])).toBe('');
  });

  it.each([
    ['', {}, /the CPU list is empty/],
    ['3-1', {}, /CPU range "3-1" runs backwards/],
    ['a', {}, /"a" is not a CPU number or a range/],
    ['1,,2', {}, /"" is not a CPU number/],
    ['0-', {}, /"0-" is not a CPU number/],
    ['0-9999999', {}, new RegExp(`CPU 9999999 in "0-9999999" is above ${MAX_CPU_ID}`)],
    ['300', { max: 255 }, /CPU 300 in "300" is above 255/],
    ['1:1', { separator: /[:,]/, duplicatesAreErrors: true }, /CPU 1 is listed twice in "1:1"/],
  ])('refuses %j (%j)', (text, opts, message) => {
    expect(() => parseCpuList(text, opts)).toThrow(message);
  });

  it('takes the options of the sysfs files and of cloud-hypervisor syntax', () => {
    expect(parseCpuList('\n', { emptyOk: true })).toEqual([]);
    expect(parseCpuList('0-3:7', { separator: /[:,]/ })).toEqual([0, 1, 2, 3, 7]);
  });

  it('reads bitmaps and masks', () => {
    expect(parseCpuBitmap('0x6')).toEqual([1, 2]);
    expect(parseCpuMask('0X5')).toEqual([0, 2]);
    expect(parseCpuMask('1-2')).toEqual([1, 2]);
    expect(() => parseCpuBitmap('0x0')).toThrow(/selects no CPU/);
    expect(() => parseCpuBitmap('6')).toThrow(/not a hexadecimal CPU bitmap/);
    expect(() => parseCpuBitmap(`0x1${'0'.repeat(1100)}`)).toThrow(/above 4095/);
  });
});

describe('ZMQ endpoints', () => {
  it('has one default and one variable per service', () => {
    expect(ZMQ_SERVICES).toHaveLength(4);
    for (const service of ZMQ_SERVICES) {
      expect(DEFAULT_ENDPOINTS[service].startsWith(`ipc://${DEFAULT_ZMQ_DIR}/`)).toBe(true);
      expect(zmqEndpointProblem(DEFAULT_ENDPOINTS[service])).toBeNull();
      expect(ENDPOINT_VARIABLES[service]).toMatch(/^VIRTIOFWD_ZMQ_\w+_EP$/);
    }
    // The daemon binds the defaults the tools connect to.
    const { config } = configFromText('', { onlineCpus: [0, 1] });
    expect(config.zmq.stats).toBe(DEFAULT_ENDPOINTS.stats);
    expect(config.zmq.portControl).toBe(DEFAULT_ENDPOINTS.portControl);
  });

  it.each([
    ['ipc://relative/path', /absolute path/],
    ['ipc:///dir/', /not a directory/],
    ['tcp://host', /host:port/],
    ['tcp://*:70000', /outside 1..65535/],
    ['inproc://', /needs a name/],
    ['udp://x:1', /udp:\/\/ is not supported/],
    ['stats', /expected a ZMQ endpoint/],
  ])('refuses %j', (endpoint, message) => {
    expect(zmqEndpointProblem(endpoint)).toMatch(message);
  });

  it('accepts tcp, ipc and inproc forms', () => {
    for (const ep of ['tcp://*:5555', 'tcp://127.0.0.1:*', 'tcp://[::1]:1', 'ipc:///run/x', 'inproc://a']) expect(zmqEndpointProblem(ep)).toBeNull();
  });
});
