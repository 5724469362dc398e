// What is left of a relay's device when one of its members leaves it (an AF_XDP port that could
// not be reopened): the registry finds who holds a VF through the devices, so a member still named
// there could never be attached again.
import { describe, expect, it } from 'vitest';
import { bondMemberName, deviceWithout, type BondMember, type DeviceRef } from '../../relay/registry-api.js';

const vf = (n: number) => ({ pci: `0000:07:00.${n}`, netdev: `vf${n}` });
const memif = { memif: { socket: '/run/nf.sock', role: 'server' as const, id: 3 } };

describe('deviceWithout', () => {
  it('a VF that leaves its single-VF device leaves no device', () => {
    const ref = vf(1);
    expect(deviceWithout({ kind: 'vf', vf: ref }, ref)).toBeUndefined();
  });

  it('a bond keeps the members it has left, in their order, under its name and mode', () => {
    const members: BondMember[] = [vf(1), memif, vf(2)];
    const bond: DeviceRef = { kind: 'bond', bond: { name: 'net_bonding4', mode: 1, members } };
    const left = deviceWithout(bond, members[2]);
    expect(left).toEqual({ kind: 'bond', bond: { name: 'net_bonding4', mode: 1, members: [members[0], memif] } });
    expect(left!.kind === 'bond' && left!.bond.members.map(bondMemberName)).toEqual(['0000:07:00.1', 'memif:/run/nf.sock#3']);
    // The bond the relay had is not changed under its feet.
    expect(members).toHaveLength(3);
    // Down to its last member, then to nothing.
    const one = deviceWithout(deviceWithout(bond, members[0]), memif);
    expect(one).toEqual({ kind: 'bond', bond: { name: 'net_bonding4', mode: 1, members: [members[2]] } });
    expect(deviceWithout(one, members[2])).toBeUndefined();
  });

  it('a member the device does not hold changes nothing, even one with the same address', () => {
    const ref = vf(1);
    const single: DeviceRef = { kind: 'vf', vf: ref };
    expect(deviceWithout(single, vf(1))).toBe(single);
    const bond: DeviceRef = { kind: 'bond', bond: { name: 'net_bonding5', mode: 0, members: [ref, vf(2)] } };
    expect(deviceWithout(bond, vf(3))).toBe(bond);
    const nf: DeviceRef = { kind: 'memif', memif: memif.memif };
    expect(deviceWithout(nf, ref)).toBe(nf);
    expect(deviceWithout(nf, memif)).toBeUndefined();
    expect(deviceWithout(undefined, ref)).toBeUndefined();
  });
});
