// Which guest RAM and vCPUs each guest NUMA node gets, for SRAT. cloud-hypervisor lets a node
// name no memory zones (`--numa guest_numa_id=0,cpus=0-3 guest_numa_id=1,cpus=4-7`, or only
// distances): then all RAM belongs to the node with the lowest id, and every vCPU that no node
// lists belongs to it as well, so that SRAT describes all of the machine and Linux never has to
// guess a node for memory or a CPU.
import type { AcpiNumaNode } from './acpi.js';
import type { NumaNodeConfig } from './config-types.js';

export interface RamPiece {
  guestPhysAddr: number;
  size: number;
  zoneId: string;
}

export function numaLayout(numa: readonly NumaNodeConfig[], regions: readonly RamPiece[], vcpus: number): AcpiNumaNode[] {
  if (numa.length === 0) return [];
  const home = Math.min(...numa.map((n) => n.guestNumaId));
  const zonesNamed = numa.some((n) => n.memoryZones.length > 0);
  const listed = new Set(numa.flatMap((n) => n.cpus));
  const unlisted = Array.from({ length: vcpus }, (_, i) => i).filter((c) => !listed.has(c));
  return numa.map((n) => {
    const isHome = n.guestNumaId === home;
    const memory = regions
      .filter((r) => (zonesNamed ? n.memoryZones.includes(r.zoneId) : isHome))
      .map((r) => ({ base: r.guestPhysAddr, size: r.size }));
    return {
      id: n.guestNumaId,
      cpus: isHome ? [...n.cpus, ...unlisted].sort((a, b) => a - b) : [...n.cpus],
      memory,
      distances: new Map(n.distances.map((d) => [d.destination, d.distance])),
    };
  });
}
