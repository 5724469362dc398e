// The four ZMQ services for protobuf callers, with the meaning the original daemon gave its
// messages: its status enums and error codes, its validation rules, `conditional` true when
// absent, all 64 relays on an unfiltered stats request. Where the original was defective, the
// defect is not reproduced (docs/switching.md lists each difference and why):
// PCI addresses are compared by value, never as upper-case strings; the number of bond members
// and every relay id and CPU is bounds-checked; a stats request measures rates over its own
// window without resetting anything another client sees; a CPU map is applied whole or refused.
//
// Each handler takes the frames of one request and returns the reply frame; it never throws.
import type { Logger } from 'pino';
import type { BondMode, DeviceRef, RelayCpu, RelayInfo, RelayRegistry } from '../relay/registry-api.js';
import { RegistryError } from '../relay/registry-api.js';
import { MAX_CPU_ID, MAX_RELAYS, MAX_SOCKET_PATH_BYTES } from '../vocabulary/limits.js';
import { formatPciAddress } from '../vocabulary/pci.js';
import { MAX_BOND_MEMBERS } from './protocol.js';
import { PbDecodeError, decodeMessage, encodeMessage, has, type MessageName } from './protobuf.js';

export type ProtobufHandler = (frames: Buffer[]) => Promise<Uint8Array>;

/** Longest stats `delay` accepted: the service answers one request at a time, so a long window holds up every other client. */
export const MAX_STATS_DELAY_MS = 10_000;

/** SOCKET_ID_ANY as the original wrote it into the uint32 socket_id. */
export const UNKNOWN_SOCKET_ID = 0xffffffff;

/** Status values of the replies (the enums of virtioforwarder.proto). */
export const PbStatus = {
  portControl: { ERROR: 0, OK: 1 },
  coreSched: { ERROR: 0, OK: 1 },
  stats: { OK: 0, EBADR: 400, E2BIG: 413 },
  config: { OK: 0, EBADR: 400 },
} as const;

const PortOp = { ADD: 0, REMOVE: 1, ADD_SOCK: 2, REMOVE_SOCK: 3, QUERY_PCI: 4 } as const;
const PORT_OP_NAMES = ['add', 'remove', 'add_sock', 'remove_sock', 'query_pci'];
const SchedOp = { UPDATE: 0, GET_EAL_CORES: 1 } as const;

/** A request refused before it reached the registry: ERROR with no error_code, as the original. */
class Refused extends Error {}

/** The one frame of a request, or a Refused naming why not. */
function singleFrame(frames: Buffer[]): Buffer {
  if (frames.length !== 1) throw new Refused(`request has ${frames.length} frames; send one message per request`);
  return frames[0];
}

function decode<T>(name: MessageName, frames: Buffer[]): T {
  try {
    return decodeMessage<T>(name, singleFrame(frames));
  } catch (err) {
    if (err instanceof PbDecodeError) throw new Refused(err.message);
    throw err;
  }
}

/** Wraps a handler so that whatever goes wrong becomes `fallback(reason)`, logged. */
function guarded(service: string, logger: Logger, fallback: (reason: string) => Uint8Array, run: (frames: Buffer[]) => Promise<Uint8Array>): ProtobufHandler {
  return async (frames) => {
    try {
      return await run(frames);
    } catch (err) {
      if (err instanceof Refused) {
        logger.warn({ service, encoding: 'protobuf' }, `${service} request refused: ${err.message}`);
        return fallback(err.message);
      }
      logger.error({ err, service, encoding: 'protobuf' }, `${service} service: protobuf request handler failed`);
      return fallback(`internal failure, see the daemon log: ${(err as Error)?.message ?? String(err)}`);
    }
  };
}

// ---------------------------------------------------------------------------------------------
// Port control

interface PbPciAddress {
  domain: number;
  bus: number;
  slot: number;
  function: number;
}

interface PbPortControlRequest {
  op: number;
  pci_addrs?: PbPciAddress[];
  virtio_id?: number;
  conditional?: boolean;
  name?: string;
  mode?: number;
  vhost_path?: string;
}

function pciOf(a: PbPciAddress, index: number): string {
  if (a.domain > 0xffff || a.bus > 0xff || a.slot > 0x1f || a.function > 7) {
    throw new Refused(
      `pci_addrs[${index}] = ${a.domain}:${a.bus}:${a.slot}.${a.function} is not a PCI address (domain <= 0xffff, bus <= 0xff, slot <= 0x1f, function <= 7)`,
    );
  }
  return formatPciAddress({ domain: a.domain, bus: a.bus, slot: a.slot, fn: a.function });
}

function checkVhostPath(path: string): void {
  if (!path.startsWith('/')) throw new Refused(`vhost_path ${JSON.stringify(path)} must be an absolute path`);
  if (Buffer.byteLength(path) > MAX_SOCKET_PATH_BYTES) throw new Refused(`vhost_path is longer than the ${MAX_SOCKET_PATH_BYTES} bytes a unix socket path can hold`);
  if (path.includes('\0')) throw new Refused('vhost_path contains a NUL byte');
}

function checkName(name: string): void {
  if (name.length === 0 || name.length > 63 || !/^[A-Za-z0-9_.:-]+$/.test(name)) {
    throw new Refused(`bond name ${JSON.stringify(name.slice(0, 80))} must be 1 to 63 letters, digits and _ . : -`);
  }
}

function portControlReply(fields: Record<string, unknown>): Uint8Array {
  return encodeMessage('PortControlResponse', fields);
}

export function protobufPortControl(registry: RelayRegistry, logger: Logger): ProtobufHandler {
  const refused = (reason: string) => portControlReply({ status: PbStatus.portControl.ERROR, error_code_source: reason });
  return guarded('portControl', logger, refused, async (frames) => {
    const req = decode<PbPortControlRequest>('PortControlRequest', frames);
    const op = req.op;
    if (!(op in PORT_OP_NAMES)) throw new Refused(`op ${op} is not one of ADD, REMOVE, ADD_SOCK, REMOVE_SOCK, QUERY_PCI`);
    const addrs = req.pci_addrs ?? [];
    // The original's rules, in its order, then the bounds it did not check.
    const name = has(req, 'name') ? (req.name as string) : undefined;
    const isAdd = op === PortOp.ADD || op === PortOp.ADD_SOCK;
    if (name !== undefined && isAdd && addrs.length < 2) throw new Refused(`a bond needs at least 2 PCI addresses, got ${addrs.length}`);
    if (name === undefined && addrs.length > 1) throw new Refused(`${addrs.length} PCI addresses need a bond name`);
    if ((op === PortOp.ADD || op === PortOp.REMOVE) && !has(req, 'virtio_id')) throw new Refused(`${PORT_OP_NAMES[op]} needs virtio_id`);
    if (op === PortOp.QUERY_PCI && !has(req, 'vhost_path')) throw new Refused('query_pci needs vhost_path');
    if (addrs.length > MAX_BOND_MEMBERS) throw new Refused(`${addrs.length} PCI addresses; a bond has at most ${MAX_BOND_MEMBERS} members`);
    const pcis = addrs.map(pciOf);
    const dup = pcis.find((p, i) => pcis.indexOf(p) !== i);
    if (dup) throw new Refused(`PCI address ${dup} is given twice`);
    if (name !== undefined) checkName(name);
    const path = has(req, 'vhost_path') ? (req.vhost_path as string) : '';
    if (path !== '') checkVhostPath(path);
    if ((op === PortOp.ADD_SOCK || op === PortOp.REMOVE_SOCK) && has(req, 'virtio_id')) {
      logger.warn({ virtioId: req.virtio_id }, `port control: ${PORT_OP_NAMES[op]} ignores virtio_id`);
    }
    const conditional = has(req, 'conditional') ? Boolean(req.conditional) : true;
    const mode = (has(req, 'mode') ? req.mode : 1) as BondMode;
    const device = (): DeviceRef =>
      name === undefined
        ? { kind: 'vf', vf: { pci: pcis[0] } }
        : { kind: 'bond', bond: { name, mode, members: pcis.map((pci) => ({ pci })) } };
    // With exactly one address a remove names that VF (a name beside it is ignored); otherwise the bond.
    const removeBy = pcis.length === 1 ? { pci: pcis[0] } : { name };

    let query: string | undefined;
    try {
      switch (op) {
        case PortOp.ADD: {
          if (pcis.length === 0) throw new Refused('add needs a PCI address');
          const id = req.virtio_id as number;
          const d = device();
          // Bond adds ignore conditional, as they always did.
          if (d.kind === 'vf') await registry.addVf(id, d.vf, { conditional });
          else if (d.kind === 'bond') await registry.addBond(id, d.bond, { conditional: false });
          logger.info({ relay: id, pci: pcis, name }, `port control (protobuf): added ${name ?? pcis[0]} to relay ${id}`);
          break;
        }
        case PortOp.REMOVE: {
          const id = req.virtio_id as number;
          await registry.removeDevice(id, { ...removeBy, conditional });
          logger.info({ relay: id }, `port control (protobuf): removed the device of relay ${id}`);
          break;
        }
        case PortOp.ADD_SOCK: {
          if (pcis.length === 0) throw new Refused('add_sock needs a PCI address');
          const id = await registry.addSocket(path, device());
          logger.info({ relay: id, path }, `port control (protobuf): socket ${path} with ${name ?? pcis[0]} is relay ${id}`);
          break;
        }
        case PortOp.REMOVE_SOCK: {
          const id = await registry.removeSocket({ path: path || undefined, ...removeBy });
          logger.info({ relay: id, path }, `port control (protobuf): removed socket and device of relay ${id}`);
          break;
        }
        case PortOp.QUERY_PCI:
          query = registry.queryPci(path);
          break;
      }
    } catch (err) {
      if (err instanceof RegistryError) {
        logger.warn({ code: err.code, op: PORT_OP_NAMES[op] }, `port control (protobuf): ${PORT_OP_NAMES[op]} failed: ${err.message}`);
        return portControlReply({ status: PbStatus.portControl.ERROR, error_code: err.code, error_code_source: err.message });
      }
      throw err;
    }
    return portControlReply(query === undefined ? { status: PbStatus.portControl.OK } : { status: PbStatus.portControl.OK, query_string: query });
  });
}

// ---------------------------------------------------------------------------------------------
// Stats

interface PbStatsRequest {
  relay?: number[];
  include_inactive?: boolean;
  delay?: number;
}

/** A counter that went backwards (the relay was torn down and rebuilt) counts from 0. */
const delta = (now: number, before: number | undefined) => (before === undefined ? 0 : now >= before ? now - before : now);

function relayState(info: RelayInfo, before: RelayInfo | undefined, seconds: number): Record<string, unknown> {
  const rate = (now: number, was: number | undefined) => (seconds > 0 ? delta(now, was) / seconds : 0);
  const up = info.vfToVm;
  const down = info.vmToVf;
  // The original's states, from what the relay has: a device (ADDED), and a VM too (READY).
  const upActive = info.device !== undefined;
  const downActive = info.vmConnected;
  const upWas = before?.vfToVm;
  const downWas = before?.vmToVf;
  const vfToVm: Record<string, unknown> = {
    active: upActive,
    internal_state: upActive ? (downActive ? 'DPDK_READY' : 'DPDK_ADDED') : 'DPDK_UNINIT',
    pkt_rate_rx_from_vf: 0,
    byte_rate_rx_from_vf: 0,
    pkt_rate_tx_to_vm: 0,
    byte_rate_tx_to_vm: 0,
  };
  const vmToVf: Record<string, unknown> = {
    active: downActive,
    internal_state: downActive ? 'VIRTIO_READY' : 'VIRTIO_UNINIT',
    pkt_rate_rx_from_vm: 0,
    byte_rate_rx_from_vm: 0,
    pkt_rate_tx_to_vf: 0,
    byte_rate_tx_to_vf: 0,
  };
  const cpu: Record<string, number> = {};
  const state: Record<string, unknown> = {
    id: info.id,
    active: upActive && downActive,
    vhost: { vhost_socket_name: info.socketPath ?? 'NONE' },
    vf_to_vm: vfToVm,
    vm_to_vf: vmToVf,
    socket_id: info.numaNode >= 0 ? info.numaNode : UNKNOWN_SOCKET_ID,
  };
  if (upActive) {
    if (up.cpu >= 0) cpu.vf_to_vm = up.cpu;
    const d = info.device;
    const pci = d === undefined ? undefined : d.kind === 'vf' ? (d.vf.pci ?? d.vf.netdev) : d.kind === 'memif' ? `memif:${d.memif.socket}#${d.memif.id}` : d.bond.name;
    if (pci !== undefined) state.vf = { pci_addr_str: pci };
    Object.assign(vfToVm, {
      pkts_rx_from_vf: up.rxPackets,
      bytes_rx_from_vf: up.rxBytes,
      pkts_tx_to_vm: up.packets,
      bytes_tx_to_vm: up.bytes,
      pkts_dropped_vm_queue_full: up.dropsQueueFull,
      pkts_dropped_vm_not_connected: up.dropsNotConnected,
      pkt_rate_rx_from_vf: rate(up.rxPackets, upWas?.rxPackets),
      byte_rate_rx_from_vf: rate(up.rxBytes, upWas?.rxBytes),
      pkt_rate_tx_to_vm: rate(up.packets, upWas?.packets),
      byte_rate_tx_to_vm: rate(up.bytes, upWas?.bytes),
    });
  }
  if (downActive) {
    if (down.cpu >= 0) cpu.vm_to_vf = down.cpu;
    Object.assign(vmToVf, {
      pkts_rx_from_vm: down.rxPackets,
      bytes_rx_from_vm: down.rxBytes,
      pkts_tx_to_vf: down.packets,
      bytes_tx_to_vf: down.bytes,
      pkts_dropped_vf_queue_full: down.dropsQueueFull,
      pkts_dropped_vf_not_connected: down.dropsNotConnected,
      pkt_rate_rx_from_vm: rate(down.rxPackets, downWas?.rxPackets),
      byte_rate_rx_from_vm: rate(down.rxBytes, downWas?.rxBytes),
      pkt_rate_tx_to_vf: rate(down.packets, downWas?.packets),
      byte_rate_tx_to_vf: rate(down.bytes, downWas?.bytes),
    });
  }
  if (Object.keys(cpu).length > 0) state.cpu = cpu;
  return state;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/**
 * Rates are measured over the request's own `delay`: the counters are read when the request
 * arrives and again when the delay is over, and nothing is reset, so the core scheduler, a
 * monitor and the JSON clients' windows stay undisturbed.
 */
export function protobufStats(
  registry: RelayRegistry,
  logger: Logger,
  clock: () => number = () => performance.now(),
  wait: (ms: number) => Promise<void> = sleep,
): ProtobufHandler {
  const status = (s: number) => encodeMessage('StatsResponse', { status: s });
  return guarded('stats', logger, () => status(PbStatus.stats.EBADR), async (frames) => {
    const req = decode<PbStatsRequest>('StatsRequest', frames);
    const asked = req.relay ?? [];
    if (asked.length > MAX_RELAYS) {
      logger.warn({ service: 'stats', encoding: 'protobuf' }, `stats request names ${asked.length} relays; there are ${MAX_RELAYS}`);
      return status(PbStatus.stats.E2BIG);
    }
    const delay = has(req, 'delay') ? (req.delay as number) : 0;
    if (delay > MAX_STATS_DELAY_MS) throw new Refused(`delay ${delay} ms is above the ${MAX_STATS_DELAY_MS} ms limit`);
    const includeInactive = has(req, 'include_inactive') ? Boolean(req.include_inactive) : true;
    // Out-of-range ids are skipped, as before; a repeated id is reported once.
    const ids = asked.length > 0 ? [...new Set(asked.filter((id) => id < MAX_RELAYS))] : Array.from({ length: MAX_RELAYS }, (_, i) => i);

    const t0 = clock();
    const before = new Map<number, RelayInfo>();
    if (delay > 0) {
      for (const id of ids) {
        const info = registry.get(id);
        if (info) before.set(id, info);
      }
      await wait(delay);
    }
    const seconds = delay > 0 ? (clock() - t0) / 1000 : 0;
    const relay: Record<string, unknown>[] = [];
    for (const id of ids) {
      const info = registry.get(id);
      if (!info) continue;
      const active = info.device !== undefined && info.vmConnected;
      if (!active && !includeInactive) continue;
      relay.push(relayState(info, before.get(id), seconds));
    }
    return encodeMessage('StatsResponse', { status: PbStatus.stats.OK, relay });
  });
}

// ---------------------------------------------------------------------------------------------
// Config

export function protobufConfig(registry: RelayRegistry, logger: Logger): ProtobufHandler {
  return guarded('config', logger, () => encodeMessage('ConfigResponse', { status: PbStatus.config.EBADR }), async (frames) => {
    decode('ConfigRequest', frames);
    const relay_cpu_map = registry
      .configuredPins()
      .map((p) => ({ relay_number: p.relay, vf2virtio_cpu: p.vfToVmCpu, virtio2vf_cpu: p.vmToVfCpu }));
    return encodeMessage('ConfigResponse', { status: PbStatus.config.OK, relay_cpu_map });
  });
}

// ---------------------------------------------------------------------------------------------
// Core scheduling

interface PbRelayCpu {
  relay_number: number;
  vf2virtio_cpu: number;
  virtio2vf_cpu: number;
}

interface PbCoreSchedRequest {
  op: number;
  relay_cpu_map?: PbRelayCpu[];
}

function checkCpuMap(entries: PbRelayCpu[]): RelayCpu[] {
  if (entries.length === 0) throw new Refused('UPDATE with an empty relay_cpu_map');
  if (entries.length > MAX_RELAYS) throw new Refused(`relay_cpu_map has ${entries.length} entries; there are ${MAX_RELAYS} relays`);
  const seen = new Set<number>();
  return entries.map((e, i) => {
    if (e.relay_number < 0 || e.relay_number >= MAX_RELAYS) {
      throw new Refused(`relay_cpu_map[${i}].relay_number ${e.relay_number} is outside 0..${MAX_RELAYS - 1}`);
    }
    if (seen.has(e.relay_number)) throw new Refused(`relay_cpu_map names relay ${e.relay_number} twice`);
    seen.add(e.relay_number);
    for (const [key, cpu] of [['vf2virtio_cpu', e.vf2virtio_cpu], ['virtio2vf_cpu', e.virtio2vf_cpu]] as const) {
      if (cpu < 0 || cpu > MAX_CPU_ID) throw new Refused(`relay_cpu_map[${i}].${key} ${cpu} is outside 0..${MAX_CPU_ID}`);
    }
    return { relay: e.relay_number, vfToVmCpu: e.vf2virtio_cpu, vmToVfCpu: e.virtio2vf_cpu };
  });
}

export function protobufCoreSched(registry: RelayRegistry, logger: Logger): ProtobufHandler {
  const reply = (fields: Record<string, unknown>) => encodeMessage('CoreSchedResponse', fields);
  const refused = (reason: string) => reply({ status: PbStatus.coreSched.ERROR, error_code_source: reason });
  return guarded('coreSched', logger, refused, async (frames) => {
    const req = decode<PbCoreSchedRequest>('CoreSchedRequest', frames);
    if (req.op === SchedOp.GET_EAL_CORES) {
      const cpus = registry
        .workers()
        .map((w) => w.cpu)
        .sort((a, b) => a - b);
      if (cpus.length === 0) return reply({ status: PbStatus.coreSched.ERROR, error_code: 1, error_code_source: 'there are no worker CPUs' });
      return reply({ status: PbStatus.coreSched.OK, eal_cores: cpus });
    }
    if (req.op !== SchedOp.UPDATE) throw new Refused(`op ${req.op} is not one of UPDATE, GET_EAL_CORES`);
    const map = checkCpuMap(req.relay_cpu_map ?? []);
    try {
      await registry.applyCpuMap(map);
    } catch (err) {
      if (err instanceof RegistryError) {
        logger.warn({ code: err.code }, `core sched (protobuf): ${err.message}`);
        return reply({ status: PbStatus.coreSched.ERROR, error_code: err.code, error_code_source: err.message });
      }
      throw err;
    }
    logger.info({ map }, `core sched (protobuf): applied a new CPU map for ${map.length} relay(s)`);
    return reply({ status: PbStatus.coreSched.OK });
  });
}
