import { samePciAddress } from '../../vocabulary/pci.js';
import { describe, expect, it } from 'vitest';
import {
  ErrorCode,
  MAX_REQUEST_BYTES,
  PROTOCOL_VERSION,
  ProtocolError,
  canonicalPci,
  checkBondMode,
  parseReply,
  parseRequest,
  type ServiceName,
} from '../../port-control/protocol.js';

const V = PROTOCOL_VERSION;
const req = (o: Record<string, unknown>) => JSON.stringify({ version: V, ...o });

function refused(service: ServiceName, frame: string | Buffer): ProtocolError {
  try {
    parseRequest(service, frame);
  } catch (err) {
    expect(err).toBeInstanceOf(ProtocolError);
    return err as ProtocolError;
  }
  throw new Error(`expected ${String(frame).slice(0, 80)} to be refused`);
}

describe('PCI addresses', () => {
  it('canonicalises full and short forms, any case', () => {
    expect(canonicalPci('0000:05:08.1')).toBe('0000:05:08.1');
    expect(canonicalPci('05:08.1')).toBe('0000:05:08.1');
    expect(canonicalPci('0000:AF:1F.7')).toBe('0000:af:1f.7');
    expect(canonicalPci('1:5:8.1')).toBe('0001:05:08.1');
    expect(samePciAddress('0000:AF:00.1', 'af:00.1')).toBe(true);
    expect(samePciAddress('0000:af:00.1', '0000:af:00.2')).toBe(false);
    expect(samePciAddress('garbage', 'garbage')).toBe(false);
  });

  it.each(['', '05:08', '05:08.8', '0000:05:20.0', 'g0:08.1', '00000:05:08.1', '0000:005:08.1', ' 05:08.1', '05:08.1\n', '05-08.1', '0000:05:08.1.2'])(
    'refuses %j naming it',
    (text) => {
      expect(() => canonicalPci(text)).toThrow(ProtocolError);
      try {
        canonicalPci(text);
      } catch (err) {
        expect((err as ProtocolError).code).toBe(ErrorCode.BadField);
        expect((err as Error).message).toContain(text.length ? text.trim().slice(0, 3) : 'PCI address');
      }
    },
  );
});

describe('envelope', () => {
  it('refuses garbage, non-objects and oversized frames as BadMessage', () => {
    expect(refused('portControl', 'not json{').code).toBe(ErrorCode.BadMessage);
    expect(refused('portControl', Buffer.from([0xff, 0x00, 0x13])).code).toBe(ErrorCode.BadMessage);
    expect(refused('portControl', '[1,2]').code).toBe(ErrorCode.BadMessage);
    expect(refused('portControl', 'null').code).toBe(ErrorCode.BadMessage);
    expect(refused('portControl', '42').code).toBe(ErrorCode.BadMessage);
    const big = req({ op: 'query_pci', vhostPath: `/${'a'.repeat(MAX_REQUEST_BYTES)}` });
    expect(refused('portControl', big).code).toBe(ErrorCode.BadMessage);
  });

  it('requires the protocol version', () => {
    expect(refused('portControl', JSON.stringify({ op: 'add' })).code).toBe(ErrorCode.BadVersion);
    const e = refused('portControl', JSON.stringify({ op: 'add', version: 99 }));
    expect(e.code).toBe(ErrorCode.BadVersion);
    expect(e.message).toContain('99');
    expect(refused('stats', JSON.stringify({ op: 'stats', version: '1' })).code).toBe(ErrorCode.BadVersion);
  });

  it('refuses unknown ops and ops of another service', () => {
    expect(refused('portControl', req({ op: 'reboot' })).code).toBe(ErrorCode.UnknownOp);
    expect(refused('portControl', req({})).code).toBe(ErrorCode.UnknownOp);
    expect(refused('portControl', req({ op: 7 })).code).toBe(ErrorCode.UnknownOp);
    expect(refused('stats', req({ op: 'add' })).code).toBe(ErrorCode.UnknownOp);
    expect(refused('coreSched', req({ op: 'stats' })).code).toBe(ErrorCode.UnknownOp);
    expect(refused('config', req({ op: 'update', map: [] })).message).toMatch(/config service/);
    // Inherited object keys are not ops.
    expect(refused('portControl', req({ op: 'toString' })).code).toBe(ErrorCode.UnknownOp);
  });

  it('refuses fields an op does not take', () => {
    const e = refused('portControl', req({ op: 'add', virtioId: 1, pciAddrs: ['05:08.1'], vhost_path: '/x' }));
    expect(e.code).toBe(ErrorCode.BadField);
    expect(e.message).toContain('vhost_path');
    expect(refused('config', req({ op: 'config', extra: 1 })).code).toBe(ErrorCode.BadField);
  });
});

describe('port control requests', () => {
  it('accepts a VF add and canonicalises its PCI address', () => {
    expect(parseRequest('portControl', req({ op: 'add', virtioId: 3, pciAddrs: ['05:08.A'.replace('A', '1')] }))).toEqual({
      version: V,
      op: 'add',
      virtioId: 3,
      pciAddrs: ['0000:05:08.1'],
    });
  });

  it('needs virtioId for add and remove, in range and integral', () => {
    expect(refused('portControl', req({ op: 'add', pciAddrs: ['05:08.1'] })).message).toMatch(/virtioId is required/);
    expect(refused('portControl', req({ op: 'remove' })).message).toMatch(/virtioId is required/);
    expect(refused('portControl', req({ op: 'add', virtioId: 64, pciAddrs: ['05:08.1'] })).message).toMatch(/outside 0\.\.63/);
    expect(refused('portControl', req({ op: 'add', virtioId: -1, pciAddrs: ['05:08.1'] })).message).toMatch(/outside/);
    expect(refused('portControl', req({ op: 'add', virtioId: 1.5, pciAddrs: ['05:08.1'] })).message).toMatch(/integer/);
    expect(refused('portControl', req({ op: 'add', virtioId: '1', pciAddrs: ['05:08.1'] })).message).toMatch(/integer/);
  });

  it('checks field types', () => {
    expect(refused('portControl', req({ op: 'add', virtioId: 1, pciAddrs: '05:08.1' })).message).toMatch(/array/);
    expect(refused('portControl', req({ op: 'add', virtioId: 1, pciAddrs: [5] })).message).toMatch(/not a string/);
    expect(refused('portControl', req({ op: 'add', virtioId: 1, pciAddrs: ['05:08.1'], conditional: 'yes' })).message).toMatch(/true or false/);
    expect(refused('portControl', req({ op: 'add', virtioId: 1, pciAddrs: [] })).message).toMatch(/at least one PCI/);
    expect(refused('portControl', req({ op: 'add', virtioId: 1, pciAddrs: ['05:08.1', '0000:05:08.1'], name: 'net_bonding0' })).message).toMatch(/twice/);
  });

  it('applies the bond rules', () => {
    const bond = (o: Record<string, unknown>) => req({ op: 'add', virtioId: 2, ...o });
    const two = ['05:08.1', '05:08.2'];
    expect(parseRequest('portControl', bond({ name: 'net_bonding0', pciAddrs: two }))).toMatchObject({ name: 'net_bonding0', mode: 1 });
    for (const mode of [0, 1, 2, 3]) {
      expect(parseRequest('portControl', bond({ name: 'net_bonding0', pciAddrs: two, mode }))).toMatchObject({ mode });
    }
    for (const mode of [4, 5, 6]) {
      const e = refused('portControl', bond({ name: 'net_bonding0', pciAddrs: two, mode }));
      expect(e.message).toMatch(/not supported/);
    }
    expect(refused('portControl', bond({ name: 'net_bonding0', pciAddrs: two, mode: 7 })).message).toMatch(/does not exist/);
    expect(refused('portControl', bond({ name: 'net_bonding0', pciAddrs: two, mode: -1 })).message).toMatch(/does not exist/);
    expect(refused('portControl', bond({ name: 'bond0', pciAddrs: two })).message).toMatch(/must start with net_bonding/);
    expect(refused('portControl', bond({ name: 'net_bonding0', pciAddrs: ['05:08.1'] })).message).toMatch(/at least 2/);
    expect(refused('portControl', bond({ pciAddrs: two })).message).toMatch(/need a bond name/);
    expect(refused('portControl', bond({ pciAddrs: ['05:08.1'], mode: 1 })).message).toMatch(/without a bond name/);
    const nine = Array.from({ length: 9 }, (_, i) => `05:08.${i % 8}`).map((p, i) => (i === 8 ? '05:09.0' : p));
    expect(refused('portControl', bond({ name: 'net_bonding0', pciAddrs: nine })).message).toMatch(/at most 8/);
    const eight = nine.slice(0, 8);
    expect(parseRequest('portControl', bond({ name: 'net_bonding0', pciAddrs: eight }))).toMatchObject({ pciAddrs: eight.map(canonicalPci) });
    expect(refused('portControl', bond({ name: 'net_bonding with space', pciAddrs: two })).message).toMatch(/letters, digits/);
  });

  it('add_sock needs an absolute socket path that fits a sockaddr_un', () => {
    expect(refused('portControl', req({ op: 'add_sock', pciAddrs: ['05:08.1'] })).message).toMatch(/vhostPath is required/);
    expect(refused('portControl', req({ op: 'add_sock', pciAddrs: ['05:08.1'], vhostPath: 'rel.sock' })).message).toMatch(/absolute/);
    expect(refused('portControl', req({ op: 'add_sock', pciAddrs: ['05:08.1'], vhostPath: `/${'x'.repeat(107)}` })).message).toMatch(/107 bytes/);
    expect(refused('portControl', req({ op: 'add_sock', pciAddrs: ['05:08.1'], vhostPath: '/a\u0000b' })).message).toMatch(/NUL/);
    expect(parseRequest('portControl', req({ op: 'add_sock', pciAddrs: ['05:08.1'], vhostPath: '/tmp/vm1.sock', virtioId: 9 }))).toMatchObject({
      op: 'add_sock',
      vhostPath: '/tmp/vm1.sock',
    });
  });

  it('remove_sock needs a path, a PCI address or a bond name; query_pci only a path', () => {
    expect(refused('portControl', req({ op: 'remove_sock' })).message).toMatch(/give vhostPath/);
    expect(parseRequest('portControl', req({ op: 'remove_sock', pciAddrs: ['AF:00.1'] }))).toMatchObject({ pciAddrs: ['0000:af:00.1'] });
    expect(parseRequest('portControl', req({ op: 'remove_sock', name: 'net_bonding3' }))).toMatchObject({ name: 'net_bonding3' });
    expect(refused('portControl', req({ op: 'remove_sock', pciAddrs: ['05:08.1', '05:08.2'] })).message).toMatch(/bond name/);
    expect(refused('portControl', req({ op: 'query_pci' })).message).toMatch(/vhostPath is required/);
    expect(refused('portControl', req({ op: 'query_pci', vhostPath: '/x', pciAddrs: ['05:08.1'] })).message).toMatch(/only vhostPath/);
  });

  it('remove accepts a bare relay id, a VF or a bond name', () => {
    expect(parseRequest('portControl', req({ op: 'remove', virtioId: 1 }))).toEqual({ version: V, op: 'remove', virtioId: 1 });
    expect(parseRequest('portControl', req({ op: 'remove', virtioId: 1, name: 'net_bonding1', conditional: true }))).toMatchObject({
      name: 'net_bonding1',
      conditional: true,
    });
  });
});

describe('stats, config and core-sched requests', () => {
  it('validates stats selections and client ids', () => {
    expect(parseRequest('stats', req({ op: 'stats', relays: [0, 63], includeInactive: false, clientId: 'sched' }))).toEqual({
      version: V,
      op: 'stats',
      relays: [0, 63],
      includeInactive: false,
      clientId: 'sched',
    });
    expect(refused('stats', req({ op: 'stats', relays: [64] })).message).toMatch(/0\.\.63/);
    expect(refused('stats', req({ op: 'stats', relays: 'all' })).message).toMatch(/array/);
    expect(refused('stats', req({ op: 'stats', clientId: 'x'.repeat(65) })).message).toMatch(/longer/);
    expect(refused('stats', req({ op: 'stats', clientId: '' })).message).toMatch(/non-empty/);
    expect(refused('stats', req({ op: 'stats', delay: 200 })).message).toMatch(/delay/);
  });

  it('validates CPU maps as a whole', () => {
    const map = [{ relay: 1, vfToVmCpu: 0, vmToVfCpu: 1 }];
    expect(parseRequest('coreSched', req({ op: 'update', map }))).toEqual({ version: V, op: 'update', map });
    expect(parseRequest('coreSched', req({ op: 'get_worker_cpus' }))).toEqual({ version: V, op: 'get_worker_cpus' });
    expect(refused('coreSched', req({ op: 'update', map: [] })).message).toMatch(/empty/);
    expect(refused('coreSched', req({ op: 'update' })).message).toMatch(/array/);
    expect(refused('coreSched', req({ op: 'update', map: [...map, ...map] })).message).toMatch(/twice/);
    expect(refused('coreSched', req({ op: 'update', map: [{ relay: 64, vfToVmCpu: 0, vmToVfCpu: 0 }] })).message).toMatch(/relay/);
    expect(refused('coreSched', req({ op: 'update', map: [{ relay: 1, vfToVmCpu: -1, vmToVfCpu: 0 }] })).message).toMatch(/vfToVmCpu/);
    expect(refused('coreSched', req({ op: 'update', map: [{ relay: 1, vfToVmCpu: 0 }] })).message).toMatch(/vmToVfCpu/);
    expect(refused('coreSched', req({ op: 'update', map: [{ relay: 1, vfToVmCpu: 0, vmToVfCpu: 0, x: 1 }] })).message).toMatch(/unknown field/);
    expect(refused('coreSched', req({ op: 'update', map: [null] })).message).toMatch(/not an object/);
    expect(parseRequest('config', req({ op: 'config' }))).toEqual({ version: V, op: 'config' });
  });

  it('bond mode helper names the unsupported modes', () => {
    expect(() => checkBondMode(4)).toThrow(/802\.3ad/);
    expect(() => checkBondMode(5)).toThrow(/balance-tlb/);
    expect(() => checkBondMode(6)).toThrow(/balance-alb/);
    expect(() => checkBondMode('1')).toThrow(/not an integer/);
  });
});

describe('replies', () => {
  it('checks the reply envelope on the client side', () => {
    expect(parseReply(JSON.stringify({ status: 'ok', version: V, pci: 'x' }), 'q')).toMatchObject({ pci: 'x' });
    expect(parseReply(JSON.stringify({ status: 'error', version: V, code: 3, source: 'registry', message: 'm' }), 'q')).toMatchObject({ code: 3 });
    expect(() => parseReply('nope', 'q')).toThrow(/not JSON/);
    expect(() => parseReply(JSON.stringify({ status: 'ok', version: 2 }), 'q')).toThrow(/version 2/);
    expect(() => parseReply(JSON.stringify({ status: 'maybe', version: V }), 'q')).toThrow(/status/);
    expect(() => parseReply(JSON.stringify({ status: 'error', version: V }), 'q')).toThrow(/malformed/);
  });
});
