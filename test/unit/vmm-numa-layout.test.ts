// SRAT contents for guest NUMA nodes, in particular nodes that name no memory zones.
import { describe, expect, it } from 'vitest';
import { numaLayout } from '../../vmm/numa-layout.js';
import type { NumaNodeConfig } from '../../vmm/config-types.js';

const node = (guestNumaId: number, cpus: number[] = [], memoryZones: string[] = [], distances: NumaNodeConfig['distances'] = []): NumaNodeConfig => ({
  guestNumaId, cpus, memoryZones, distances,
});
const GiB = 2 ** 30;
const oneZone = [
  { guestPhysAddr: 0, size: 3 * GiB, zoneId: 'ram' },
  { guestPhysAddr: 4 * GiB, size: GiB, zoneId: 'ram' },
];

describe('numaLayout', () => {
  it('no nodes: no SRAT entries', () => {
    expect(numaLayout([], oneZone, 2)).toEqual([]);
  });

  it('nodes without zones: all RAM (both pieces around the MMIO hole) goes to the lowest node', () => {
    const nodes = numaLayout([node(1, [0, 4, 5, 6]), node(0, [1, 2, 3, 7])], oneZone, 8);
    expect(nodes.map((n) => [n.id, n.cpus, n.memory])).toEqual([
      [1, [0, 4, 5, 6], []],
      [0, [1, 2, 3, 7], [{ base: 0, size: 3 * GiB }, { base: 4 * GiB, size: GiB }]],
    ]);
  });

  it('vCPUs that no node lists belong to the lowest node', () => {
    const nodes = numaLayout([node(0, [1]), node(1, [3])], oneZone, 4);
    expect(nodes.map((n) => n.cpus)).toEqual([[0, 1, 2], [3]]);
  });

  it('distances only: every vCPU and all RAM on node 0, distances kept', () => {
    const nodes = numaLayout([node(0, [], [], [{ destination: 1, distance: 15 }]), node(1, [], [], [{ destination: 0, distance: 15 }])], oneZone, 2);
    expect(nodes[0].cpus).toEqual([0, 1]);
    expect(nodes[0].memory).toHaveLength(2);
    expect(nodes[1]).toMatchObject({ cpus: [], memory: [] });
    expect(nodes[1].distances.get(0)).toBe(15);
  });

  it('named zones go to their node only', () => {
    const regions = [
      { guestPhysAddr: 0, size: GiB, zoneId: 'mem0' },
      { guestPhysAddr: GiB, size: GiB, zoneId: 'mem1' },
      { guestPhysAddr: 2 * GiB, size: GiB, zoneId: 'mem2' },
    ];
    const nodes = numaLayout([node(0, [0], ['mem0', 'mem2']), node(1, [1], ['mem1'])], regions, 2);
    expect(nodes.map((n) => n.memory.map((m) => m.base))).toEqual([[0, 2 * GiB], [GiB]]);
  });
});
