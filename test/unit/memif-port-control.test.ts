// The memif fields of port control's add and add_sock (a lone memif, or memif members of a bond):
// accepted in their one shape, refused with a message naming what is wrong otherwise.
import { describe, it, expect } from 'vitest';
import { parseRequest, PROTOCOL_VERSION } from '../../port-control/protocol.js';

const req = (fields: Record<string, unknown>) => JSON.stringify({ version: PROTOCOL_VERSION, ...fields });
const memif = { socket: '/run/nf/memif.sock', role: 'server', id: 3 };

describe('port control: memif devices', () => {
  it('accepts add and add_sock with a memif instead of PCI addresses', () => {
    expect(parseRequest('portControl', req({ op: 'add', virtioId: 2, memif }))).toMatchObject({ op: 'add', virtioId: 2, memif });
    expect(parseRequest('portControl', req({ op: 'add_sock', vhostPath: '/tmp/vm.sock', memif: { ...memif, role: 'client', secret: 's3' } }))).toMatchObject({
      memif: { socket: '/run/nf/memif.sock', role: 'client', id: 3, secret: 's3' },
    });
    expect(parseRequest('portControl', req({ op: 'add', virtioId: 2, memif: { ...memif, role: 'client', rings: 16 } }))).toMatchObject({
      memif: { socket: '/run/nf/memif.sock', role: 'client', id: 3, rings: 16 },
    });
  });

  it.each([
    [{ op: 'add', virtioId: 1, memif: 'x' }, /field memif must be an object/],
    [{ op: 'add', virtioId: 1, memif: [] }, /field memif must be an object/],
    [{ op: 'add', virtioId: 1, memif: { ...memif, mtu: 9000 } }, /unknown field mtu/],
    [{ op: 'add', virtioId: 1, memif: { ...memif, socket: 'relative.sock' } }, /absolute path/],
    [{ op: 'add', virtioId: 1, memif: { ...memif, socket: `/${'a'.repeat(120)}` } }, /at most 107/],
    [{ op: 'add', virtioId: 1, memif: { ...memif, role: 'master' } }, /"server" or "client", not "master"/],
    [{ op: 'add', virtioId: 1, memif: { ...memif, id: -1 } }, /memif\.id must be an integer/],
    [{ op: 'add', virtioId: 1, memif: { ...memif, id: 2 ** 32 } }, /memif\.id must be an integer/],
    [{ op: 'add', virtioId: 1, memif: { ...memif, id: 1.5 } }, /memif\.id must be an integer/],
    [{ op: 'add', virtioId: 1, memif: { ...memif, secret: 'x'.repeat(24) } }, /1 to 23 bytes/],
    [{ op: 'add', virtioId: 1, memif: { ...memif, secret: '' } }, /1 to 23 bytes/],
    [{ op: 'add', virtioId: 1, memif: { ...memif, role: 'client', rings: 0 } }, /memif\.rings must be an integer in \[1, 16\], not 0/],
    [{ op: 'add', virtioId: 1, memif: { ...memif, role: 'client', rings: 17 } }, /memif\.rings must be an integer in \[1, 16\], not 17/],
    [{ op: 'add', virtioId: 1, memif: { ...memif, role: 'client', rings: 1.5 } }, /memif\.rings must be an integer/],
    [{ op: 'add', virtioId: 1, memif: { ...memif, role: 'client', rings: '2' } }, /memif\.rings must be an integer/],
    [{ op: 'add', virtioId: 1, memif: { ...memif, rings: 2 } }, /rings is for the client role/],
    [{ op: 'add', virtioId: 1, memif, pciAddrs: ['05:08.1'] }, /cannot go with it/],
    [{ op: 'add', virtioId: 1, memif, vfPort: 'af_xdp' }, /cannot go with it/],
    [{ op: 'remove', virtioId: 1, memif }, /field memif is for add and add_sock only/],
    [{ op: 'add', virtioId: 1, name: 'net_bonding0', pciAddrs: ['05:08.1'], memifMembers: memif }, /non-empty array/],
    [{ op: 'add', virtioId: 1, name: 'net_bonding0', pciAddrs: ['05:08.1'], memifMembers: [] }, /non-empty array/],
    [{ op: 'add', virtioId: 1, name: 'net_bonding0', pciAddrs: ['05:08.1'], memifMembers: [{ ...memif, role: 'peer' }] }, /memifMembers\[0\]: .*"server" or "client"/],
    [{ op: 'add', virtioId: 1, name: 'net_bonding0', memifMembers: [memif, memif] }, /given twice/],
    [{ op: 'add', virtioId: 1, name: 'net_bonding0', memifMembers: [memif] }, /at least 2 members/],
    [{ op: 'add', virtioId: 1, name: 'net_bonding0', pciAddrs: ['05:08.1', '05:08.2', '05:08.3', '05:08.4', '05:08.5', '05:08.6', '05:08.7', '05:09.0'], memifMembers: [memif] }, /9 members; at most 8/],
    [{ op: 'add', virtioId: 1, pciAddrs: ['05:08.1'], memifMembers: [memif] }, /give its name/],
    [{ op: 'add', virtioId: 1, name: 'net_bonding0', pciAddrs: ['05:08.1'], memif, memifMembers: [{ ...memif, id: 4 }] }, /cannot go with it/],
    [{ op: 'remove', virtioId: 1, name: 'net_bonding0', memifMembers: [memif] }, /for add and add_sock only/],
  ])('refuses %o', (fields, message) => {
    expect(() => parseRequest('portControl', req(fields))).toThrow(message);
  });

  it('accepts a bond of VFs and memif members, two memifs without a VF too', () => {
    const second = { ...memif, id: 4 };
    expect(parseRequest('portControl', req({ op: 'add', virtioId: 2, name: 'net_bonding0', mode: 1, pciAddrs: ['05:08.1'], memifMembers: [memif] }))).toMatchObject({
      name: 'net_bonding0', mode: 1, pciAddrs: ['0000:05:08.1'], memifMembers: [memif],
    });
    expect(parseRequest('portControl', req({ op: 'add_sock', vhostPath: '/tmp/vm.sock', name: 'net_bonding1', memifMembers: [memif, second] }))).toMatchObject({
      name: 'net_bonding1', mode: 1, memifMembers: [memif, second],
    });
  });
});
