// An in-process RelayRegistry with the semantics (and error codes) the real one follows, for
// testing the control channels without a data path. Every call is recorded. Run as a program
// (`node dist/test/support/memory-registry.js serve '<json>'`) it starts the control services
// over itself, so the CLIs can be exercised as real processes against a real service process
// (startRegistryService and runCli below).
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import pino from 'pino';
import {
  RegistryError,
  isMemifMember,
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
} from '../../relay/registry-api.js';
import { MAX_RELAYS, MAX_BOND_MEMBERS } from '../../port-control/protocol.js';
import { describeNetdev } from '../../relay/control/vf.js';
import { startControlServices, type ControlServiceOptions } from '../../port-control/services.js';
import { startProcess, type StartedProcess } from './processes.js';

export interface RegistryCall {
  method: string;
  args: unknown[];
}

interface Relay {
  id: number;
  device?: DeviceRef;
  socketPath?: string;
  vmConnected: boolean;
  vfToVmCpu: number;
  vmToVfCpu: number;
  /** When traffic counting started for this relay (ms, monotonic). */
  since: number;
}

export interface MemoryRegistryOptions {
  workerCpus?: number[];
  pins?: RelayCpu[];
  /** PCI addresses on this bus fail to "probe" (registry code 2), to exercise error paths. */
  failingBus?: string;
  /** Where describeNetdev looks interfaces up, as the real registry does (default /sys). */
  sysfsRoot?: string;
}

/** Packets per millisecond each active relay "forwards"; only used to make rates non-zero. */
const PACKETS_PER_MS = 10;
const FRAME_BYTES = 100;

const sameVf = (a: VfRef, b: VfRef) => (a.pci !== undefined ? a.pci === b.pci : a.netdev === b.netdev && b.pci === undefined);

export class MemoryRegistry implements RelayRegistry {
  readonly calls: RegistryCall[] = [];
  private readonly relays = new Map<number, Relay>();
  private readonly workerCpus: number[];
  private readonly pins: RelayCpu[];
  private readonly failingBus: string;
  private readonly sysfsRoot: string;
  private readonly started = performance.now();
  /** Called after every recorded call (the service program prints them). */
  onCall: ((call: RegistryCall) => void) | undefined;

  constructor(opts: MemoryRegistryOptions = {}) {
    this.workerCpus = opts.workerCpus ?? [0, 1];
    this.pins = opts.pins ?? [];
    this.failingBus = opts.failingBus ?? 'ee';
    this.sysfsRoot = opts.sysfsRoot ?? '/sys';
  }

  private record(method: string, ...args: unknown[]): void {
    const call = { method, args: JSON.parse(JSON.stringify(args)) as unknown[] };
    this.calls.push(call);
    this.onCall?.(call);
  }

  /** Calls that change something (add/remove), in order, for assertions. */
  mutations(): RegistryCall[] {
    return this.calls.filter((c) => /^(add|remove|apply)/.test(c.method));
  }

  private relay(id: number): Relay {
    if (!Number.isInteger(id) || id < 0 || id >= MAX_RELAYS) throw new RegistryError(1, `relay ${id} does not exist (ids are 0..${MAX_RELAYS - 1})`);
    let r = this.relays.get(id);
    if (!r) {
      const cpu = this.workerCpus[id % this.workerCpus.length];
      r = { id, vmConnected: false, vfToVmCpu: cpu, vmToVfCpu: cpu, since: performance.now() };
      this.relays.set(id, r);
    }
    return r;
  }

  private holderOf(vf: VfRef): Relay | undefined {
    for (const r of this.relays.values()) {
      const d = r.device;
      if (d?.kind === 'vf' && sameVf(vf, d.vf)) return r;
      if (d?.kind === 'bond' && d.bond.members.some((m) => !isMemifMember(m) && sameVf(vf, m))) return r;
    }
    return undefined;
  }

  private probe(vf: VfRef, relay: number): void {
    if (vf.pci && vf.pci.split(':')[1] === this.failingBus) {
      throw new RegistryError(2, `relay ${relay}: VF ${vf.pci} has no netdev under /sys/bus/pci/devices/${vf.pci}/net`);
    }
  }

  /** Marks a VM as connected (or not) to a relay, as a vhost-user session would. */
  setVmConnected(id: number, connected: boolean): void {
    this.relay(id).vmConnected = connected;
  }

  /** Puts a device (and optionally a socket) on a relay without recording a call: a test's starting state. */
  seed(id: number, device: DeviceRef | undefined, socketPath?: string, vmConnected = false): void {
    const r = this.relay(id);
    r.device = device;
    r.socketPath = socketPath;
    r.vmConnected = vmConnected;
  }

  list(): RelayInfo[] {
    return [...this.relays.values()]
      .filter((r) => r.device || r.socketPath || r.vmConnected)
      .sort((a, b) => a.id - b.id)
      .map((r) => this.info(r));
  }

  get(id: number): RelayInfo | undefined {
    const r = this.relays.get(id);
    return r && (r.device || r.socketPath || r.vmConnected) ? this.info(r) : undefined;
  }

  private info(r: Relay): RelayInfo {
    const active = r.vmConnected && r.device !== undefined;
    const ms = active ? performance.now() - r.since : 0;
    const counters = (cpu: number, factor: number): DirectionCounters => {
      const packets = Math.floor(ms * PACKETS_PER_MS * factor);
      return {
        packets,
        bytes: packets * FRAME_BYTES,
        rxPackets: packets,
        rxBytes: packets * FRAME_BYTES,
        dropsQueueFull: 0,
        dropsNotConnected: r.device && !r.vmConnected ? 1 : 0,
        dropsBadFrame: 0,
        dropsKernelRing: 0,
        dropsKernelRingGuestNoBuffers: 0, rxSegmented: 0,
        badChains: 0,
        ringsStopped: 0,
        busyNs: Math.floor(ms * 1e6 * 0.1),
        pollNs: Math.floor(ms * 1e6),
        cpu: r.device || r.vmConnected ? cpu : -1,
        active,
        state: active ? 'running' : r.device ? 'waiting-for-vm' : 'idle',
      };
    };
    return {
      id: r.id,
      socketPath: r.socketPath,
      device: r.device,
      vmConnected: r.vmConnected,
      numaNode: 0,
      queuePairs: 1,
      ports: [],
      vfToVm: counters(r.vfToVmCpu, 1),
      vmToVf: counters(r.vmToVfCpu, 2),
    };
  }

  async addVf(id: number, vf: VfRef, opts: { conditional?: boolean } = {}): Promise<void> {
    this.record('addVf', id, vf, opts);
    const r = this.relay(id);
    if (r.device) {
      if (opts.conditional && r.device.kind === 'vf' && sameVf(vf, r.device.vf)) return;
      throw new RegistryError(8, `relay ${id} already has ${describe(r.device)}`);
    }
    const holder = this.holderOf(vf);
    if (holder) throw new RegistryError(-17, `relay ${id}: ${vf.pci ?? vf.netdev} is already attached to relay ${holder.id}`);
    this.probe(vf, id);
    r.device = { kind: 'vf', vf: { ...vf } };
    r.since = performance.now();
  }

  async addMemif(id: number, memif: MemifRef, opts: { conditional?: boolean } = {}): Promise<void> {
    this.record('addMemif', id, memif, opts);
    const r = this.relay(id);
    if (r.device) throw new RegistryError(8, `relay ${id} already has ${describe(r.device)}`);
    r.device = { kind: 'memif', memif: { ...memif } };
    r.since = performance.now();
  }

  async addBond(id: number, bond: BondRef, opts: { conditional?: boolean } = {}): Promise<void> {
    this.record('addBond', id, bond, opts);
    const r = this.relay(id);
    if (r.device) throw new RegistryError(8, `relay ${id} already has ${describe(r.device)}`);
    if (bond.members.length < 2 || bond.members.length > MAX_BOND_MEMBERS) {
      throw new RegistryError(2, `bond ${bond.name}: ${bond.members.length} members, needs 2..${MAX_BOND_MEMBERS}`);
    }
    for (const m of bond.members) {
      if (isMemifMember(m)) continue;
      const holder = this.holderOf(m);
      if (holder) throw new RegistryError(3, `bond ${bond.name}: ${m.pci ?? m.netdev} is already attached to relay ${holder.id}`);
      this.probe(m, id);
    }
    r.device = { kind: 'bond', bond: JSON.parse(JSON.stringify(bond)) as BondRef };
    r.since = performance.now();
  }

  async removeDevice(id: number, opts: { pci?: string; name?: string; conditional?: boolean } = {}): Promise<void> {
    this.record('removeDevice', id, opts);
    const r = this.relay(id);
    if (!r.device) {
      if (opts.conditional) return;
      throw new RegistryError(4, `relay ${id} has no device to remove`);
    }
    this.checkMatches(r, opts, 3);
    r.device = undefined;
  }

  private checkMatches(r: Relay, opts: { pci?: string; name?: string }, code: number): void {
    const d = r.device;
    if (!d) return;
    if (opts.name !== undefined && (d.kind !== 'bond' || d.bond.name !== opts.name)) {
      throw new RegistryError(code, `relay ${r.id} holds ${describe(d)}, not bond ${opts.name}`);
    }
    if (opts.pci !== undefined && opts.name === undefined && (d.kind !== 'vf' || d.vf.pci !== opts.pci)) {
      throw new RegistryError(code, `relay ${r.id} holds ${describe(d)}, not VF ${opts.pci}`);
    }
  }

  async addSocket(path: string, device: DeviceRef): Promise<number> {
    this.record('addSocket', path, device);
    for (const r of this.relays.values()) {
      if (r.socketPath === path) throw new RegistryError(1, `vhost-user socket ${path} is already registered for relay ${r.id}`);
    }
    const members = device.kind === 'vf' ? [device.vf] : device.kind === 'bond' ? device.bond.members.filter((m) => !isMemifMember(m)) as VfRef[] : [];
    for (const m of members) {
      const holder = this.holderOf(m);
      if (holder) throw new RegistryError(-17, `${m.pci ?? m.netdev} is already attached to relay ${holder.id}`);
    }
    let free: Relay | undefined;
    for (let id = 0; id < MAX_RELAYS && !free; id++) {
      const r = this.relay(id);
      if (!r.device && !r.socketPath && !r.vmConnected) free = r;
    }
    if (!free) throw new RegistryError(2, `no free relay for ${path}: all ${MAX_RELAYS} are in use`);
    for (const m of members) {
      try {
        this.probe(m, free.id);
      } catch (err) {
        throw new RegistryError(device.kind === 'vf' ? 3 : 4, (err as Error).message);
      }
    }
    free.device = JSON.parse(JSON.stringify(device)) as DeviceRef;
    free.socketPath = path;
    free.since = performance.now();
    return free.id;
  }

  async removeSocket(opts: { path?: string; pci?: string; name?: string }): Promise<number> {
    this.record('removeSocket', opts);
    if (opts.path === undefined && opts.pci === undefined && opts.name === undefined) {
      throw new RegistryError(-1, 'remove_sock needs a socket path, a PCI address or a bond name');
    }
    let r: Relay | undefined;
    if (opts.path !== undefined) r = [...this.relays.values()].find((x) => x.socketPath === opts.path);
    else {
      r = [...this.relays.values()].find((x) => {
        const d = x.device;
        return opts.name !== undefined ? d?.kind === 'bond' && d.bond.name === opts.name : d?.kind === 'vf' && d.vf.pci === opts.pci;
      });
    }
    if (!r) throw new RegistryError(1, `no relay has ${opts.path ? `socket ${opts.path}` : (opts.name ?? opts.pci)}`);
    this.checkMatches(r, opts, 2);
    r.socketPath = undefined;
    r.device = undefined;
    r.vmConnected = false;
    return r.id;
  }

  queryPci(path: string): string {
    this.record('queryPci', path);
    const r = [...this.relays.values()].find((x) => x.socketPath === path);
    if (!r) throw new RegistryError(2, `no relay serves vhost-user socket ${path}`);
    const d = r.device;
    if (!d) return '';
    return d.kind === 'vf' ? (d.vf.pci ?? d.vf.netdev ?? '') : d.kind === 'memif' ? `memif:${d.memif.socket}#${d.memif.id}` : d.bond.name;
  }

  cpuMap(): RelayCpu[] {
    return this.list().map((r) => {
      const x = this.relays.get(r.id) as Relay;
      return { relay: r.id, vfToVmCpu: x.vfToVmCpu, vmToVfCpu: x.vmToVfCpu };
    });
  }

  async applyCpuMap(map: RelayCpu[]): Promise<void> {
    this.record('applyCpuMap', map);
    for (const m of map) {
      if (!this.get(m.relay)) throw new RegistryError(1, `CPU map names relay ${m.relay}, which has no device or socket`);
      for (const cpu of [m.vfToVmCpu, m.vmToVfCpu]) {
        if (!this.workerCpus.includes(cpu)) throw new RegistryError(1, `CPU map puts relay ${m.relay} on CPU ${cpu}, which is not a worker (workers: ${this.workerCpus.join(',')})`);
      }
    }
    for (const m of map) {
      const r = this.relays.get(m.relay) as Relay;
      r.vfToVmCpu = m.vfToVmCpu;
      r.vmToVfCpu = m.vmToVfCpu;
    }
  }

  /** Worker N reports a busy share of (N+1)/4 of its polls, exactly, so load output is predictable. */
  workers(): WorkerInfo[] {
    const pollNs = Math.floor((performance.now() - this.started) * 1e6 / 4) * 4;
    return this.workerCpus.map((cpu, i) => ({ cpu, numaNode: 0, pollNs, busyNs: (pollNs / 4) * ((i % 4) + 1), restarts: 0, heapBytes: 1_000_000 * (i + 1) }));
  }

  configuredPins(): RelayCpu[] {
    return this.pins;
  }

  describeNetdev(netdev: string): NetdevInfo {
    return describeNetdev(netdev, this.sysfsRoot);
  }
}

function describe(d: DeviceRef): string {
  return d.kind === 'vf' ? `VF ${d.vf.pci ?? d.vf.netdev}` : d.kind === 'memif' ? `memif ${d.memif.socket}#${d.memif.id}` : `bond ${d.bond.name}`;
}

interface ServeOptions extends MemoryRegistryOptions {
  services: ControlServiceOptions;
  seed?: { id: number; device?: DeviceRef; socketPath?: string; vmConnected?: boolean }[];
}

/** The service program: control services over a MemoryRegistry, calls printed as JSON lines. */
async function serve(json: string): Promise<void> {
  const opts = JSON.parse(json) as ServeOptions;
  const registry = new MemoryRegistry(opts);
  for (const s of opts.seed ?? []) registry.seed(s.id, s.device, s.socketPath, s.vmConnected);
  registry.onCall = (call) => process.stdout.write(`${JSON.stringify({ registryCall: call })}\n`);
  const logger = pino({ level: 'info' }, pino.destination({ fd: 2, sync: true }));
  const services = await startControlServices(registry, opts.services, logger);
  const stop = () => {
    services.close().then(() => process.exit(0), () => process.exit(1));
  };
  // Handlers before the ready line: a test may signal as soon as it reads it.
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.stdout.write(`${JSON.stringify({ ready: services.endpoints })}\n`);
}

// ---------------------------------------------------------------------------------------------
// For tests: the operator CLIs as real processes, and this file as the service process they talk to.

/** The checkout root (the directory holding package.json), from the source or the compiled file. */
export const repoRoot = (() => {
  let dir = import.meta.dirname;
  while (!existsSync(join(dir, 'package.json')) && dir !== '/') dir = join(dir, '..');
  return dir;
})();

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Fails with the fix when the compiled tree the programs run is missing. */
export function requireBuilt(): void {
  for (const f of ['dist/port-control/cli/virtioforwarder_port_control.js', 'dist/test/support/memory-registry.js']) {
    if (!existsSync(join(repoRoot, f))) throw new Error(`${f} is missing: run \`npx tsc -p .\` before this test`);
  }
}

export function runCli(name: string, args: string[], timeoutMs = 20_000): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [join(repoRoot, 'bin', name), ...args],
      { timeout: timeoutMs, encoding: 'utf8' },
      (err, stdout, stderr) => {
        const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : -1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

export interface ServiceProcess {
  proc: StartedProcess;
  /** Registry calls the service made so far, in order. */
  calls(): RegistryCall[];
  /** Calls made after `mark` (a value returned by calls().length). */
  callsSince(mark: number): RegistryCall[];
  stop(): Promise<void>;
}

/** Starts `memory-registry.js serve` with `options` and waits until its services listen. */
export async function startRegistryService(options: unknown): Promise<ServiceProcess> {
  const proc = startProcess(process.execPath, [join(repoRoot, 'dist/test/support/memory-registry.js'), 'serve', JSON.stringify(options)], {
    label: 'registry-service',
  });
  await proc.waitForOutput(/\{"ready":/, 15_000);
  const calls = () =>
    proc
      .output()
      .split('\n')
      .filter((l) => l.startsWith('{"registryCall"'))
      .map((l) => (JSON.parse(l) as { registryCall: RegistryCall }).registryCall);
  return {
    proc,
    calls,
    callsSince: (mark) => calls().slice(mark),
    stop: async () => {
      await proc.stop();
    },
  };
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href && process.argv[2] === 'serve') {
  serve(process.argv[3] ?? '{}').catch((err) => {
    process.stderr.write(`memory-registry: ${(err as Error).message}\n`);
    process.exit(1);
  });
}
