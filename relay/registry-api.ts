// The relay registry as the control channels see it. port-control/ (ZMQ, OVSDB, IPC) and the
// operator tools depend on these types only, never on the relay's internals.

/** A VF named by PCI address (canonical lower-case `dddd:bb:ss.f`) or a plain netdev name. */
export interface VfRef {
  /** Canonical PCI address, or undefined when the VF was given as a netdev name. */
  pci?: string;
  /** Kernel netdev the relay polls (resolved through sysfs for PCI addresses). */
  netdev?: string;
  /** How to reach this VF; absent: VIRTIOFWD_VF_PORT. */
  port?: VfPortChoice;
}

/** AF_PACKET rings, AF_XDP sockets, or AF_XDP where it can be opened (VIRTIOFWD_VF_PORT's values). */
export type VfPortChoice = 'af_packet' | 'af_xdp' | 'auto';
export const VF_PORT_CHOICES: readonly VfPortChoice[] = ['af_packet', 'af_xdp', 'auto'];

export type BondMode = 0 | 1 | 2 | 3;
export const BOND_MODE_NAMES: Record<BondMode, string> = {
  0: 'round-robin',
  1: 'active-backup',
  2: 'balance',
  3: 'broadcast',
};
export const MAX_BOND_MEMBERS = 8;

export interface BondRef {
  name: string;
  mode: BondMode;
  members: BondMember[];
}

/**
 * A memif interface (VPP, DPDK net_memif): the relay listens on `socket` (server) or connects to
 * it (client) and serves interface `id`; `secret`, when set, must match the peer's (at most 23 bytes).
 */
export interface MemifRef {
  socket: string;
  role: 'server' | 'client';
  id: number;
  secret?: string;
  /**
   * Client role: ring pairs to create, 1..16 (default 1), one per queue of the server's interface;
   * a server takes as many as its client adds (up to 64 each way).
   */
  rings?: number;
}

/**
 * A member of a bond: a VF, or a memif interface (so a network function on memif can back up a VF,
 * or the other way round). A memif member has carrier while its peer is connected.
 */
export type BondMember = VfRef | { memif: MemifRef };

export function isMemifMember(m: BondMember): m is { memif: MemifRef } {
  return (m as { memif?: MemifRef }).memif !== undefined;
}

/** How a bond member is named in messages and stats: its PCI address or netdev, or memif:socket#id. */
export function bondMemberName(m: BondMember): string {
  return isMemifMember(m) ? `memif:${m.memif.socket}#${m.memif.id}` : (m.pci ?? m.netdev ?? '?');
}

/** What sits on the host side of a relay. */
export type DeviceRef = { kind: 'vf'; vf: VfRef } | { kind: 'bond'; bond: BondRef } | { kind: 'memif'; memif: MemifRef };

/**
 * The device once `member` (the very object the device holds) has left it: a bond keeps the
 * members it has left, and a device with none left is gone (undefined). A member the device does
 * not hold changes nothing.
 */
export function deviceWithout(device: DeviceRef | undefined, member: BondMember): DeviceRef | undefined {
  if (device?.kind === 'bond') {
    const members = device.bond.members.filter((m) => m !== member);
    if (members.length === device.bond.members.length) return device;
    return members.length > 0 ? { kind: 'bond', bond: { ...device.bond, members } } : undefined;
  }
  if (device?.kind === 'vf') return device.vf === member ? undefined : device;
  if (device?.kind === 'memif') return isMemifMember(member) && device.memif === member.memif ? undefined : device;
  return device;
}

export interface DirectionCounters {
  packets: number;
  bytes: number;
  /** Packets taken from the source side (VF for vf_to_vm, guest for vm_to_vf). */
  rxPackets: number;
  rxBytes: number;
  /** Drops, by cause. */
  dropsQueueFull: number;
  dropsNotConnected: number;
  dropsBadFrame: number;
  /**
   * VF→VM: frames the kernel dropped because the VF packet ring was full (the relay or the guest
   * did not keep up); 0 for VM→VF.
   */
  dropsKernelRing: number;
  /**
   * The part of dropsKernelRing counted in 100 ms intervals in which the guest had no receive
   * buffers while frames waited: the guest did not keep up. dropsKernelRing minus this is what
   * fell while the guest had room, when the relay itself did not keep up.
   */
  dropsKernelRingGuestNoBuffers: number;
  /**
   * VF→VM: GSO super-frames the relay cut into TCP segments for a guest without the receive
   * offload to take them whole (each segment delivered counts in `packets`); 0 for VM→VF.
   */
  rxSegmented: number;
  /** Guest descriptor chains dropped because they broke a rule (loop, out-of-range address, wrong direction, length). */
  badChains: number;
  /** Guest rings stopped after a fault: a broken ring, a failing kick or call fd, an unexpected error in the direction. */
  ringsStopped: number;
  /** Busy time measured by the owning worker: nanoseconds spent in polls that moved packets. */
  busyNs: number;
  /** Nanoseconds of all polls of this direction (busy and empty). */
  pollNs: number;
  /** Worker CPU currently serving this direction, or -1. */
  cpu: number;
  active: boolean;
  state: string;
}

export interface RelayInfo {
  id: number;
  /** vhost-user socket path, or undefined when the relay has none (dynamic sockets). */
  socketPath?: string;
  device?: DeviceRef;
  /** True while a frontend (VM) is connected and its rings are running. */
  vmConnected: boolean;
  /** NUMA node of the guest memory (from the first region's backing), -1 when unknown. */
  numaNode: number;
  /** Number of guest queue pairs in use. */
  queuePairs: number;
  /** How each VF (each bond member) is reached. */
  ports: MemberPort[];
  vfToVm: DirectionCounters;
  vmToVf: DirectionCounters;
}

/** The port of one VF: AF_PACKET rings, or AF_XDP sockets with where their program runs; or a memif interface. */
export interface MemberPort {
  netdev: string;
  port: 'af_packet' | 'af_xdp' | 'memif';
  /** memif: 'listening', 'connecting', 'handshake', 'connected' or 'closed'. */
  memifState?: string;
  /** memif: why the last connection ended (empty while connected). */
  memifLastDisconnect?: string;
  /** memif: descriptors and ring words the peer got wrong (its frames dropped). */
  memifPeerErrors?: number;
  /** memif: rings the relay receives on, one per transmit queue of the peer (0 while not connected). */
  memifRings?: number;
  /** AF_XDP: the program runs in the driver ('native') or in the generic hook. */
  attach?: string;
  /** AF_XDP: the program sits in libxdp's dispatcher beside the interface's other XDP programs. */
  dispatcher?: boolean;
  /** AF_XDP: the driver moves frames into the UMEM itself. */
  zeroCopy?: boolean;
  /** AF_XDP: the VM's memory is in the UMEM ('guest': frames sent from where the guest wrote them) or not ('relay': copied). */
  umem?: 'guest' | 'relay';
  /** AF_XDP: received frames land straight in the VM's buffers (false: they are copied there). */
  rxInPlace?: boolean;
  /** AF_XDP: frames received so far straight into the VM's buffers (the others were copied). */
  rxFramesInPlace?: number;
  /** AF_XDP: frames sent so far straight from the VM's memory (the others were copied into TX chunks). */
  txFramesInPlace?: number;
}

/** Which worker CPU serves each direction of a relay. */
export interface RelayCpu {
  relay: number;
  vfToVmCpu: number;
  vmToVfCpu: number;
}

export interface WorkerInfo {
  cpu: number;
  numaNode: number;
  /** Nanoseconds of busy polls and of all polls since the worker started. */
  busyNs: number;
  pollNs: number;
  /** Times the worker thread ended unexpectedly and was started again by the pool. */
  restarts: number;
  /** Bytes the worker thread's JavaScript heap holds (V8's used_heap_size, sampled every 100 ms while it polls). */
  heapBytes: number;
}

/** Error codes follow the original daemon's port-control codes where one exists. */
export class RegistryError extends Error {
  readonly code: number;
  constructor(code: number, message: string) {
    super(message);
    this.name = 'RegistryError';
    this.code = code;
  }
}

export interface RelayRegistry {
  list(): RelayInfo[];
  get(id: number): RelayInfo | undefined;
  /** Attaches a VF to relay `id`. `conditional`: succeed quietly when the same VF is already there. */
  addVf(id: number, vf: VfRef, opts?: { conditional?: boolean }): Promise<void>;
  addBond(id: number, bond: BondRef, opts?: { conditional?: boolean }): Promise<void>;
  /** Attaches a memif interface to relay `id`. `conditional`: succeed quietly when the same one is already there. */
  addMemif(id: number, memif: MemifRef, opts?: { conditional?: boolean }): Promise<void>;
  /** Detaches the relay's device; `pci`/`name` must match it when given. `conditional`: an empty relay is fine. */
  removeDevice(id: number, opts?: { pci?: string; name?: string; conditional?: boolean }): Promise<void>;
  /** Takes the first free relay, attaches `device`, then creates the vhost-user socket at `path`. Rolls back on failure. Returns the relay id. */
  addSocket(path: string, device: DeviceRef): Promise<number>;
  /** Finds the relay by path, or else by PCI address or bond name; removes its socket and device. */
  removeSocket(opts: { path?: string; pci?: string; name?: string }): Promise<number>;
  /** The PCI address (or bond name) of the relay serving `path`. */
  queryPci(path: string): string;
  cpuMap(): RelayCpu[];
  /** Applies a new map as a whole; rejects it whole (RegistryError) when any entry names an unknown relay or a CPU that is not a worker. */
  applyCpuMap(map: RelayCpu[]): Promise<void>;
  workers(): WorkerInfo[];
  /** The pins from the configuration (VIRTIOFWD_CPU_PINS), for the config service. */
  configuredPins(): RelayCpu[];
  /** How the relay would take the interface `netdev` (VF by PCI address, or plain netdev); throws for a bad name. */
  describeNetdev(netdev: string): NetdevInfo;
}

/** An interface named by a control channel, as the relay sees it. */
export interface NetdevInfo {
  ref: VfRef;
  /** For a VF: its index under its PF (the IPC monitor maps it to a relay id). */
  vfIndex?: number;
}

/** How a control channel turns an interface name into what the registry takes. */
export type NetdevResolver = (netdev: string) => VfRef;
