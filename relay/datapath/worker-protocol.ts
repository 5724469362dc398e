// Messages between the main thread and the forwarding workers. Everything here is plain data
// (structured-cloneable): a worker rebuilds its own views of guest memory and packet rings from
// addresses and fds, which are process-wide.
import type { VfHandle } from './vf-link.js';

export type DirName = 'vf2vm' | 'vm2vf';

/** One mapped guest memory region as a worker sees it. */
export interface RegionSpec {
  guestPhysAddr: number;
  userAddr: number;
  size: number;
  /** Host address of the region's first byte (mapping address + mmap offset). */
  hostAddress: number;
}

export interface QueueSpec {
  /** vring index: 2q for the guest's RX queue q, 2q+1 for its TX queue q. */
  index: number;
  size: number;
  /** The ring parts as (region index, byte offset in the region), already translated. */
  desc: RingPlace;
  avail: RingPlace;
  used: RingPlace;
  callFd: number;
  kickFd: number;
  /** TX queues that are started but disabled are drained and their frames discarded. */
  enabled: boolean;
  /** Guest-physical address used-ring writes are logged at while dirty logging is on (SET_VRING_ADDR's log_guest_addr), or null to derive it from the ring's place. */
  usedLogAddr?: number | null;
}

export interface RingPlace {
  region: number;
  offset: number;
}

export interface QueueState {
  lastAvail: number;
  lastUsed: number;
  signalledUsed: number;
  signalledValid: boolean;
}

export interface GuestSpec {
  /** Changes whenever the memory table changes, so workers can cache views per table. */
  memoryId: number;
  regions: RegionSpec[];
  /**
   * The guest negotiated a transmit offload (CSUM, HOST_TSO4/6, HOST_ECN): its frames' virtio-net
   * headers carry checksum and segmentation requests for the VF's kernel socket.
   */
  hostOffloads?: boolean;
  /**
   * The receive offloads the guest negotiated (rx-offload.ts bits: GUEST_CSUM, GUEST_TSO4/6,
   * GUEST_ECN): which VF frames it takes with the kernel's offload header, and which the relay
   * must checksum or segment first.
   */
  rxOffloads?: number;
  /** The live-migration dirty log while logging is on: every page the worker writes gets its bit. */
  dirtyLog?: { hostAddress: number; size: number } | null;
  eventIdx: boolean;
  indirect: boolean;
  /** VIRTIO_F_RING_PACKED: each queue's desc/avail/used are the packed ring and its event areas. */
  packed?: boolean;
  mergeable: boolean;
  hdrLen: number;
  /** Started and enabled queues this direction serves (RX vrings for vf2vm, TX vrings for vm2vf). */
  queues: QueueSpec[];
}

export interface PortMember {
  netdev: string;
  /** The VF's open port: AF_PACKET rings or AF_XDP sockets. */
  handle: VfHandle;
  /** Carrier state as last seen by the main thread (active-backup fails over on it). */
  up: boolean;
}

export interface PortSpec {
  /** 'single' for one VF, otherwise the bond mode. */
  mode: 'single' | 'round-robin' | 'active-backup' | 'balance' | 'broadcast';
  members: PortMember[];
  /** Index of the active member in active-backup mode. */
  active: number;
}

export interface DirectionSpec {
  relay: number;
  dir: DirName;
  /**
   * A VM session is up. When it has no usable RX queue at the moment (rings being restarted,
   * not enabled yet), VF frames wait in the VF ring instead of being dropped.
   */
  vmConnected: boolean;
  guest: GuestSpec | null;
  port: PortSpec | null;
}

export interface DirectionState {
  queues: Record<number, QueueState>;
  /** Round-robin positions (guest TX queue, bond member) carried across handovers. */
  rrQueue: number;
  rrMember: number;
}

export type ToWorker =
  | { type: 'attach'; reqId: number; spec: DirectionSpec; state: DirectionState | null }
  | { type: 'detach'; reqId: number; relay: number; dir: DirName }
  | { type: 'set-active-member'; relay: number; dir: DirName; active: number; up: boolean[] }
  | { type: 'stop'; reqId: number }
  /**
   * Test hook (honoured only when WorkerInit.testHooks): the worker ends with an uncaught error
   * ('throw') or blocks forever in a system call ('block').
   */
  | { type: 'crash'; how: 'throw' | 'block' };

export type FromWorker =
  | { type: 'ready'; cpu: number; tid: number }
  | { type: 'done'; reqId: number; state?: DirectionState | null; error?: string }
  | { type: 'ring-error'; relay: number; dir: DirName; queue: number; message: string }
  /** An unexpected error stopped this direction (its rings); the worker's other directions go on. */
  | { type: 'direction-failed'; relay: number; dir: DirName; message: string }
  | { type: 'log'; level: 'debug' | 'info' | 'warn' | 'error'; msg: string; data?: Record<string, unknown> };

export interface WorkerInit {
  cpu: number;
  slot: number;
  pollMode: 'busy' | 'adaptive';
  counters: SharedArrayBuffer;
  workerLoad: SharedArrayBuffer;
  /** eventfd the main thread writes after posting a message, so a sleeping worker wakes. */
  wakeFd: number;
  /** Where the worker announces its writes to guests' call fds (relay/call-guard.ts). */
  callGuard: SharedArrayBuffer;
  /** Accept the test-only 'crash' message (VIO4WD_TEST_HOOKS). */
  testHooks?: boolean;
}
