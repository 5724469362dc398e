// The relay registry: the 64 relays of the daemon, their sockets and devices, and the operations
// the control channels call. Error codes follow the original daemon's port-control codes.
import { existsSync } from 'node:fs';
import { dirname } from 'node:path';
import type { Logger } from 'pino';
import type { Reactor } from '../../sys/poll.js';
import { listenBackend } from '../../vhost-user/server.js';
import { connectBackend } from '../../vhost-user/client.js';
import { Dir, readCounts } from '../datapath/counters.js';
import { JUMBO_MTU, MAX_RELAYS, MEMIF_MAX_CLIENT_RINGS, MEMIF_RINGS_CLIENT_ONLY, isMemifRingCount } from '../../vocabulary/limits.js';
import { canonicalPciAddress } from '../../vocabulary/pci.js';
import { numaNodeOfCpu } from '../../sys/topology.js';
import { describeNetdev } from './vf.js';
import { Relay } from './relay.js';
import { RingOpener } from './ring-opener.js';
import type { WorkerPool } from './worker-pool.js';
import type { RelayConfig } from '../config/types.js';
import type { SocketAccess } from '../config/accounts.js';
import { prepareSocketDir } from './socket-dir.js';
import {
  MAX_BOND_MEMBERS,
  RegistryError,
  bondMemberName,
  isMemifMember,
  type BondMember,
  type BondRef,
  type DeviceRef,
  type DirectionCounters,
  type MemifRef,
  type NetdevInfo,
  type RelayCpu,
  type RelayInfo,
  type RelayRegistry,
  type VfRef,
  type WorkerInfo,
} from '../registry-api.js';

const EEXIST = 17;
const ENOENT = 2;
const EINVAL = 22;
/** The guest side of one relay is served by up to this many queue pairs. */
export const MAX_QUEUE_PAIRS = 32;

export interface RegistryOptions {
  config: RelayConfig;
  pool: WorkerPool;
  reactor: Reactor;
  counters: SharedArrayBuffer;
  log: Logger;
  /**
   * Owner and group of the sockets and their directories. Default: exactly the configured ones
   * (config.socketOwner / socketGroup); the daemon passes socketAccessFor(config), which fills
   * blank settings with libvirt's accounts.
   */
  socketAccess?: SocketAccess;
  /** Test hook: negotiate dirty logging but mark nothing (RelayContext.ignoreDirtyLog). */
  ignoreDirtyLog?: boolean;
}

function sameVf(a: VfRef, b: VfRef): boolean {
  if (a.pci && b.pci) return a.pci === b.pci;
  return a.netdev !== undefined && a.netdev === b.netdev;
}

/** The same memif interface: one socket, role and interface id. */
function sameMemif(a: MemifRef, b: MemifRef): boolean {
  return a.socket === b.socket && a.id === b.id && a.role === b.role;
}

function sameMember(a: BondMember, b: BondMember): boolean {
  if (isMemifMember(a)) return isMemifMember(b) && sameMemif(a.memif, b.memif);
  return !isMemifMember(b) && sameVf(a, b);
}

/** The parts of a device another relay must not hold: its VF, its memif, or its bond's members. */
function partsOf(d: DeviceRef): BondMember[] {
  if (d.kind === 'vf') return [d.vf];
  if (d.kind === 'memif') return [{ memif: d.memif }];
  return d.bond.members;
}

function describeDevice(d: DeviceRef | undefined): string {
  if (!d) return 'nothing';
  if (d.kind === 'vf') return d.vf.pci ?? d.vf.netdev ?? '?';
  if (d.kind === 'memif') return memifName(d.memif);
  return d.bond.name;
}

function memifName(m: MemifRef): string {
  return bondMemberName({ memif: m });
}

/** What a memif device may be: checked here too, since the registry API has callers besides port control. */
function validateMemif(m: MemifRef): void {
  if (typeof m.socket !== 'string' || m.socket.length === 0) throw new RegistryError(EINVAL, 'memif: a socket path is required');
  if (m.role !== 'server' && m.role !== 'client') throw new RegistryError(EINVAL, `memif ${m.socket}: role ${JSON.stringify(m.role)} is not server or client`);
  if (!Number.isInteger(m.id) || m.id < 0 || m.id > 0xffffffff) throw new RegistryError(EINVAL, `memif ${m.socket}: id ${m.id} is not an integer in [0, 4294967295]`);
  if (m.secret !== undefined && Buffer.byteLength(m.secret) > 23) throw new RegistryError(EINVAL, `memif ${m.socket}: the secret is longer than 23 bytes`);
  if (m.rings !== undefined) {
    if (!isMemifRingCount(m.rings)) throw new RegistryError(EINVAL, `memif ${m.socket}: rings ${m.rings} is not an integer in [1, ${MEMIF_MAX_CLIENT_RINGS}]`);
    if (m.role !== 'client') throw new RegistryError(EINVAL, `memif ${m.socket}: ${MEMIF_RINGS_CLIENT_ONLY}`);
  }
}

/** A bond member as the registry keeps it: a VF's canonical PCI address, a memif checked. */
function canonicalMember(m: BondMember): BondMember {
  if (!isMemifMember(m)) return canonicalRef(m);
  validateMemif(m.memif);
  return { memif: { ...m.memif } };
}

function canonicalRef(ref: VfRef): VfRef {
  const out: VfRef = ref.pci ? { pci: canonicalPciAddress(ref.pci), netdev: ref.netdev } : { netdev: ref.netdev };
  if (ref.port !== undefined) out.port = ref.port;
  return out;
}

export class RelayRegistryImpl implements RelayRegistry {
  private readonly relays: Relay[];
  private readonly counters: Float64Array;
  private readonly log: Logger;
  private carrierTimer: NodeJS.Timeout | null = null;
  private readonly rings: RingOpener;
  private readonly socketAccess: SocketAccess;
  /** Socket directories already prepared (prepareSocketDir), so each is checked once. */
  private readonly socketDirs = new Set<string>();

  constructor(private readonly opts: RegistryOptions) {
    this.counters = new Float64Array(opts.counters);
    this.log = opts.log;
    const { socketOwner, socketGroup } = opts.config;
    this.socketAccess = opts.socketAccess ?? {
      owner: socketOwner,
      group: socketGroup,
      ownerOrigin: socketOwner ? 'configured' : 'daemon',
      groupOrigin: socketGroup ? 'configured' : 'daemon',
    };
    const pins = new Map(opts.config.cpuPins.map((p) => [p.relay, { vf2vm: p.vfToVmCpu, vm2vf: p.vmToVfCpu }]));
    this.rings = new RingOpener();
    const ctx = {
      rings: this.rings,
      pool: opts.pool,
      log: opts.log,
      sysfsRoot: opts.config.sysfsRoot,
      jumbo: opts.config.jumbo,
      tso: opts.config.tso,
      vfPort: opts.config.vfPort,
      xdpUmem: opts.config.xdpUmem,
      xdpRx: opts.config.xdpRx,
      pinnedCpus: (relay: number) => pins.get(relay),
      ignoreDirtyLog: opts.ignoreDirtyLog === true,
      reactor: opts.reactor,
      pollMode: opts.config.pollMode,
      counters: this.counters,
    };
    if (ctx.ignoreDirtyLog) this.log.warn('VIO4WD_TEST_HOOKS=no-dirty-log: dirty logging is negotiated but nothing is marked; a live migration will damage its guest (test hook)');
    this.relays = Array.from({ length: MAX_RELAYS }, (_, id) => new Relay(id, ctx));
    this.carrierTimer = setInterval(() => {
      for (const r of this.relays) {
        try {
          r.checkCarrier();
        } catch (err) {
          this.log.warn({ relay: r.id, err: (err as Error).message }, 'carrier check failed');
        }
      }
    }, 100);
    this.carrierTimer.unref();
  }

  private relay(id: number): Relay {
    if (!Number.isInteger(id) || id < 0 || id >= MAX_RELAYS) {
      throw new RegistryError(1, `relay id ${id} is outside 0..${MAX_RELAYS - 1}`);
    }
    return this.relays[id];
  }

  /** Creates the vhost-user socket of relay `id` at `path` (server or reconnecting client). */
  openSocket(id: number, path: string): void {
    const relay = this.relay(id);
    if (relay.endpoint) throw new RegistryError(1, `relay ${id} already has the socket ${relay.socketPath}`);
    const { config, reactor } = this.opts;
    const log = this.log.child({ relay: id });
    const common = {
      path,
      reactor,
      log,
      device: relay,
      maxQueuePairs: MAX_QUEUE_PAIRS,
      mergeableRxBuffers: config.mergeableRxBuffers,
      offloads: config.tso,
      maxMtu: config.jumbo ? JUMBO_MTU : undefined,
      unsealedMemory: config.unsealedMemory,
    };
    // In client mode the VM's QEMU creates the socket, so the directory must exist for it too,
    // and let the socket group create files in it.
    this.ensureSocketDir(dirname(path));
    if (config.vhostClient) {
      relay.endpoint = connectBackend({ ...common, retryMs: 1000 });
    } else {
      relay.endpoint = listenBackend({
        ...common,
        mode: 0o660,
        uid: this.socketAccess.owner?.id,
        gid: this.socketAccess.group?.id,
      });
    }
    relay.socketPath = path;
    log.info({ socket: path, mode: config.vhostClient ? 'client' : 'server' }, 'vhost-user socket ready');
  }

  private ensureSocketDir(dir: string): void {
    if (this.socketDirs.has(dir) && existsSync(dir)) return;
    const st = prepareSocketDir(dir, this.socketAccess);
    this.socketDirs.add(dir);
    const fields = { dir, mode: st.mode.toString(8), uid: st.uid, gid: st.gid };
    if (st.action === 'left') {
      this.log.warn(
        { ...fields, reason: st.reason },
        `vhost-user socket directory ${dir} left as it is (${st.reason}): VMs reach its sockets only if its mode and group let them`,
      );
    } else {
      this.log.info(fields, `vhost-user socket directory ${dir} ${st.action}`);
    }
  }

  async closeSocket(id: number): Promise<void> {
    const relay = this.relay(id);
    const endpoint = relay.endpoint;
    relay.endpoint = undefined;
    const path = relay.socketPath;
    relay.socketPath = undefined;
    if (endpoint) await endpoint.close();
    if (path) this.log.info({ relay: id, socket: path }, 'vhost-user socket closed');
  }

  // ---- RelayRegistry --------------------------------------------------------------------------------

  private directionCounters(relay: Relay, dir: Dir): DirectionCounters {
    const c = readCounts(this.counters, relay.id, dir);
    const name = dir === Dir.VfToVm ? 'vf2vm' : 'vm2vf';
    const cpu = relay.cpuOf(name);
    const active = dir === Dir.VfToVm ? !!relay.device : relay.vmConnected;
    return {
      ...c,
      cpu,
      active,
      state: dir === Dir.VfToVm ? (relay.device ? (relay.vmConnected ? 'READY' : 'ADDED') : 'UNINIT') : relay.vmConnected ? 'READY' : 'UNINIT',
    };
  }

  private info(relay: Relay): RelayInfo {
    return {
      id: relay.id,
      socketPath: relay.socketPath,
      device: relay.device,
      vmConnected: relay.vmConnected,
      numaNode: relay.numaNode,
      queuePairs: relay.queuePairs,
      ports: relay.memberPorts,
      vfToVm: this.directionCounters(relay, Dir.VfToVm),
      vmToVf: this.directionCounters(relay, Dir.VmToVf),
    };
  }

  list(): RelayInfo[] {
    return this.relays.filter((r) => r.device || r.socketPath || r.vmConnected).map((r) => this.info(r));
  }

  get(id: number): RelayInfo | undefined {
    if (!Number.isInteger(id) || id < 0 || id >= MAX_RELAYS) return undefined;
    return this.info(this.relays[id]);
  }

  /** The relay that already holds `part` (a VF or memif, alone or as a bond member), if any. */
  private holderOf(part: BondMember): Relay | undefined {
    return this.relays.find((r) => r.device !== undefined && partsOf(r.device).some((m) => sameMember(m, part)));
  }

  async addVf(id: number, vf: VfRef, opts: { conditional?: boolean } = {}): Promise<void> {
    const relay = this.relay(id);
    const ref = canonicalRef(vf);
    if (relay.device) {
      if (opts.conditional && relay.device.kind === 'vf' && sameVf(relay.device.vf, ref)) return;
      throw new RegistryError(8, `relay ${id} already has ${describeDevice(relay.device)}`);
    }
    const holder = this.holderOf(ref);
    if (holder) throw new RegistryError(-EEXIST, `VF ${ref.pci ?? ref.netdev} is already attached to relay ${holder.id}`);
    try {
      await relay.attachDevice({ kind: 'vf', vf: ref });
    } catch (err) {
      throw new RegistryError(2, `relay ${id}: cannot attach VF ${ref.pci ?? ref.netdev}: ${(err as Error).message}`);
    }
  }

  async addBond(id: number, bond: BondRef, opts: { conditional?: boolean } = {}): Promise<void> {
    const relay = this.relay(id);
    validateBond(bond);
    const members = bond.members.map(canonicalMember);
    const twice = members.find((m, i) => members.findIndex((o) => sameMember(o, m)) !== i);
    if (twice) throw new RegistryError(2, `bond ${bond.name}: member ${bondMemberName(twice)} is given twice`);
    if (relay.device) {
      if (opts.conditional && relay.device.kind === 'bond' && relay.device.bond.name === bond.name) return;
      throw new RegistryError(8, `relay ${id} already has ${describeDevice(relay.device)}`);
    }
    for (const m of members) {
      const holder = this.holderOf(m);
      if (holder) throw new RegistryError(3, `bond ${bond.name}: member ${bondMemberName(m)} is already attached to relay ${holder.id}`);
    }
    try {
      await relay.attachDevice({ kind: 'bond', bond: { ...bond, members } });
    } catch (err) {
      throw new RegistryError(5, `relay ${id}: cannot attach bond ${bond.name}: ${(err as Error).message}`);
    }
  }

  async addMemif(id: number, memif: MemifRef, opts: { conditional?: boolean } = {}): Promise<void> {
    const relay = this.relay(id);
    validateMemif(memif);
    if (relay.device) {
      if (opts.conditional && relay.device.kind === 'memif' && sameMemif(relay.device.memif, memif)) return;
      throw new RegistryError(8, `relay ${id} already has ${describeDevice(relay.device)}`);
    }
    const holder = this.holderOf({ memif });
    if (holder) throw new RegistryError(-EEXIST, `${memifName(memif)} (${memif.role}) is already attached to relay ${holder.id}`);
    try {
      await relay.attachDevice({ kind: 'memif', memif });
    } catch (err) {
      throw new RegistryError(2, `relay ${id}: cannot attach ${memifName(memif)}: ${(err as Error).message}`);
    }
  }

  async removeDevice(id: number, opts: { pci?: string; name?: string; conditional?: boolean } = {}): Promise<void> {
    const relay = this.relay(id);
    const d = relay.device;
    if (!d) {
      if (opts.conditional) return;
      throw new RegistryError(4, `relay ${id} has no device to remove`);
    }
    if (opts.pci !== undefined) {
      const pci = canonicalPciAddress(opts.pci);
      if (d.kind !== 'vf' || d.vf.pci !== pci) throw new RegistryError(3, `relay ${id} has ${describeDevice(d)}, not VF ${pci}`);
    }
    if (opts.name !== undefined && (d.kind !== 'bond' || d.bond.name !== opts.name)) {
      throw new RegistryError(3, `relay ${id} has ${describeDevice(d)}, not bond ${opts.name}`);
    }
    await relay.detachDevice();
  }

  async addSocket(path: string, device: DeviceRef): Promise<number> {
    if (!path) throw new RegistryError(-1, 'add_sock needs a vhost-user socket path');
    if (this.relays.some((r) => r.socketPath === path)) throw new RegistryError(1, `socket ${path} is already registered`);
    for (const part of partsOf(device)) {
      const holder = this.holderOf(isMemifMember(part) ? part : canonicalRef(part));
      if (holder) throw new RegistryError(-EEXIST, `${bondMemberName(part)} is already attached to relay ${holder.id}`);
    }
    const relay = this.relays.find((r) => r.free);
    if (!relay) throw new RegistryError(2, `no free relay among ${MAX_RELAYS}`);
    try {
      if (device.kind === 'vf') await this.addVf(relay.id, device.vf);
      else if (device.kind === 'memif') await this.addMemif(relay.id, device.memif);
      else await this.addBond(relay.id, device.bond);
    } catch (err) {
      const e = err as RegistryError;
      throw new RegistryError(device.kind === 'bond' ? 4 : 3, e.message);
    }
    try {
      this.openSocket(relay.id, path);
    } catch (err) {
      await relay.detachDevice().catch(() => undefined);
      throw new RegistryError(5, `socket ${path}: ${(err as Error).message}`);
    }
    return relay.id;
  }

  async removeSocket(opts: { path?: string; pci?: string; name?: string }): Promise<number> {
    if (!opts.path && !opts.pci && !opts.name) throw new RegistryError(-1, 'remove_sock needs a socket path, a PCI address or a bond name');
    let relay: Relay | undefined;
    if (opts.path) relay = this.relays.find((r) => r.socketPath === opts.path);
    else if (opts.pci) {
      const pci = canonicalPciAddress(opts.pci);
      relay = this.relays.find((r) => r.device?.kind === 'vf' && r.device.vf.pci === pci);
    } else relay = this.relays.find((r) => r.device?.kind === 'bond' && r.device.bond.name === opts.name);
    if (!relay) throw new RegistryError(1, `no relay for ${opts.path ?? opts.pci ?? opts.name}`);
    const d = relay.device;
    if (opts.path && opts.pci && d && !(d.kind === 'vf' && d.vf.pci === canonicalPciAddress(opts.pci))) {
      throw new RegistryError(2, `relay ${relay.id} (${opts.path}) has ${describeDevice(d)}, not ${opts.pci}`);
    }
    if (opts.path && opts.name && d && !(d.kind === 'bond' && d.bond.name === opts.name)) {
      throw new RegistryError(2, `relay ${relay.id} (${opts.path}) has ${describeDevice(d)}, not bond ${opts.name}`);
    }
    try {
      await this.closeSocket(relay.id);
    } catch (err) {
      throw new RegistryError(3, `relay ${relay.id}: cannot close its socket: ${(err as Error).message}`);
    }
    try {
      await relay.detachDevice();
    } catch (err) {
      throw new RegistryError(4, `relay ${relay.id}: cannot detach its device: ${(err as Error).message}`);
    }
    return relay.id;
  }

  queryPci(path: string): string {
    if (!path) throw new RegistryError(EINVAL, 'query_pci needs a vhost-user socket path');
    const relay = this.relays.find((r) => r.socketPath === path);
    if (!relay) throw new RegistryError(ENOENT, `no relay serves ${path}`);
    return relay.device ? describeDevice(relay.device) : '';
  }

  cpuMap(): RelayCpu[] {
    return this.relays
      .filter((r) => r.cpuOf('vf2vm') >= 0 || r.cpuOf('vm2vf') >= 0)
      .map((r) => ({ relay: r.id, vfToVmCpu: r.cpuOf('vf2vm'), vmToVfCpu: r.cpuOf('vm2vf') }));
  }

  async applyCpuMap(map: RelayCpu[]): Promise<void> {
    if (!Array.isArray(map) || map.length === 0) throw new RegistryError(1, 'the CPU map is empty');
    const problems: string[] = [];
    const seen = new Set<number>();
    for (const e of map) {
      if (!Number.isInteger(e.relay) || e.relay < 0 || e.relay >= MAX_RELAYS) problems.push(`relay ${e.relay} is outside 0..${MAX_RELAYS - 1}`);
      else if (seen.has(e.relay)) problems.push(`relay ${e.relay} appears twice`);
      else {
        seen.add(e.relay);
        const r = this.relays[e.relay];
        if (!r.device && !r.hasGuest) problems.push(`relay ${e.relay} does not exist (no device and no VM)`);
      }
      for (const cpu of [e.vfToVmCpu, e.vmToVfCpu]) {
        if (!this.opts.pool.hasCpu(cpu)) problems.push(`CPU ${cpu} of relay ${e.relay} is not a worker CPU (${this.opts.pool.cpus().join(',')})`);
      }
    }
    if (problems.length > 0) throw new RegistryError(1, `CPU map rejected: ${problems.join('; ')}`);
    for (const e of map) {
      const r = this.relays[e.relay];
      const before = { vf2vm: r.cpuOf('vf2vm'), vm2vf: r.cpuOf('vm2vf') };
      await r.moveDirection('vf2vm', e.vfToVmCpu);
      await r.moveDirection('vm2vf', e.vmToVfCpu);
      if (before.vf2vm !== e.vfToVmCpu || before.vm2vf !== e.vmToVfCpu) {
        this.log.info({ relay: e.relay, before, after: { vf2vm: e.vfToVmCpu, vm2vf: e.vmToVfCpu } }, 'relay moved between workers');
      }
    }
  }

  workers(): WorkerInfo[] {
    return this.opts.pool.load().map((w) => ({ ...w, numaNode: numaNodeOfCpu(w.cpu, this.opts.config.sysfsRoot) }));
  }

  configuredPins(): RelayCpu[] {
    return this.opts.config.cpuPins;
  }

  describeNetdev(netdev: string): NetdevInfo {
    return describeNetdev(netdev, this.opts.config.sysfsRoot);
  }

  async shutdown(): Promise<void> {
    if (this.carrierTimer) clearInterval(this.carrierTimer);
    for (const r of this.relays) {
      try {
        await r.shutdown();
      } catch (err) {
        this.log.warn({ relay: r.id, err: (err as Error).message }, 'relay shutdown failed');
      }
    }
    await this.rings.stop();
  }
}

export function validateBond(bond: BondRef): void {
  if (!bond.name || !bond.name.startsWith('net_bonding')) {
    throw new RegistryError(2, `bond name "${bond.name ?? ''}" must start with net_bonding`);
  }
  if (!Array.isArray(bond.members) || bond.members.length < 2) throw new RegistryError(2, `bond ${bond.name} needs at least 2 members`);
  if (bond.members.length > MAX_BOND_MEMBERS) {
    throw new RegistryError(2, `bond ${bond.name} has ${bond.members.length} members; at most ${MAX_BOND_MEMBERS} are supported`);
  }
  if (![0, 1, 2, 3].includes(bond.mode)) {
    throw new RegistryError(
      2,
      `bond mode ${bond.mode} is not supported: use 0 (round-robin), 1 (active-backup), 2 (balance) or 3 (broadcast); 802.3ad, TLB and ALB (4-6) need a switch-side or MAC-learning partner this relay does not have`,
    );
  }
}
