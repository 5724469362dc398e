// Request handlers of the four ZMQ services, over the relay registry API only. Requests reach
// them validated and canonicalised (protocol.ts); registry failures propagate as RegistryError
// and become error replies carrying the registry's code.
import type { Logger } from 'pino';
import type { BondMember, BondMode, DeviceRef, RelayRegistry } from '../relay/registry-api.js';
import {
  PROTOCOL_VERSION,
  type ConfigReply,
  type ConfigRequest,
  type CoreSchedRequest,
  type OkBase,
  type PortControlReply,
  type PortControlRequest,
  type WorkerCpusReply,
} from './protocol.js';

function deviceOf(req: PortControlRequest): DeviceRef {
  if (req.memif !== undefined) return { kind: 'memif', memif: req.memif };
  const pcis = req.pciAddrs ?? [];
  const port = req.vfPort !== undefined ? { port: req.vfPort } : {};
  if (req.name === undefined) return { kind: 'vf', vf: { pci: pcis[0], ...port } };
  // VFs first, then memif members, in the order given.
  const members: BondMember[] = [...pcis.map((pci) => ({ pci, ...port })), ...(req.memifMembers ?? []).map((memif) => ({ memif }))];
  return { kind: 'bond', bond: { name: req.name, mode: (req.mode ?? 1) as BondMode, members } };
}

/** The single PCI address of a non-bond request, used to check that it matches the relay's VF. */
function singlePci(req: PortControlRequest): string | undefined {
  return req.name === undefined ? req.pciAddrs?.[0] : undefined;
}

export function portControlHandler(registry: RelayRegistry, logger: Logger) {
  return async (req: PortControlRequest): Promise<PortControlReply> => {
    const ok = (extra: Partial<PortControlReply> = {}): PortControlReply => ({ status: 'ok', version: PROTOCOL_VERSION, ...extra });
    const conditional = req.conditional ?? false;
    switch (req.op) {
      case 'add': {
        const id = req.virtioId as number;
        const device = deviceOf(req);
        if (device.kind === 'vf') await registry.addVf(id, device.vf, { conditional });
        else if (device.kind === 'memif') await registry.addMemif(id, device.memif, { conditional });
        else await registry.addBond(id, device.bond, { conditional });
        logger.info({ relay: id, pci: req.pciAddrs, name: req.name }, `port control: added ${describe(req)} to relay ${id}`);
        return ok({ virtioId: id });
      }
      case 'remove': {
        const id = req.virtioId as number;
        await registry.removeDevice(id, { pci: singlePci(req), name: req.name, conditional });
        logger.info({ relay: id }, `port control: removed ${describe(req)} from relay ${id}`);
        return ok({ virtioId: id });
      }
      case 'add_sock': {
        if (req.virtioId !== undefined) {
          logger.warn({ virtioId: req.virtioId }, 'port control: add_sock ignores virtioId; the first free relay is used');
        }
        const id = await registry.addSocket(req.vhostPath as string, deviceOf(req));
        logger.info({ relay: id, path: req.vhostPath }, `port control: socket ${req.vhostPath} with ${describe(req)} is relay ${id}`);
        return ok({ virtioId: id });
      }
      case 'remove_sock': {
        const id = await registry.removeSocket({ path: req.vhostPath, pci: singlePci(req), name: req.name });
        logger.info({ relay: id, path: req.vhostPath }, `port control: removed socket and device of relay ${id}`);
        return ok({ virtioId: id });
      }
      case 'query_pci':
        return ok({ pci: registry.queryPci(req.vhostPath as string) });
    }
  };
}

function describe(req: PortControlRequest): string {
  if (req.name !== undefined) return `bond ${req.name}`;
  if (req.pciAddrs?.length) return `VF ${req.pciAddrs[0]}`;
  if (req.memif) return `memif ${req.memif.role} ${req.memif.socket}#${req.memif.id}`;
  return 'its device';
}

export function configHandler(registry: RelayRegistry) {
  return (_req: ConfigRequest): ConfigReply => ({
    status: 'ok',
    version: PROTOCOL_VERSION,
    pins: registry.configuredPins(),
    map: registry.cpuMap(),
  });
}

export function coreSchedHandler(registry: RelayRegistry, logger: Logger) {
  return async (req: CoreSchedRequest): Promise<WorkerCpusReply | OkBase> => {
    if (req.op === 'get_worker_cpus') {
      const workers = registry.workers();
      return {
        status: 'ok',
        version: PROTOCOL_VERSION,
        cpus: workers.map((w) => w.cpu).sort((a, b) => a - b),
        workers,
        map: registry.cpuMap(),
      };
    }
    await registry.applyCpuMap(req.map);
    logger.info({ map: req.map }, `core sched: applied a new CPU map for ${req.map.length} relay(s)`);
    return { status: 'ok', version: PROTOCOL_VERSION };
  };
}
