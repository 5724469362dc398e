// The contract between a BackendSession (protocol, fds, memory table) and the device behind it
// (the relay, or a test device). Everything handed to the device is plain data, so the relay can
// post it to a worker thread, which rebuilds its own views with sys/memory.viewAt.
import type { GuestMemory } from '../virtio/guest-memory.js';

/** One mapped region of the front-end's memory table. */
export interface SessionRegion {
  guestPhysAddr: number;
  size: number;
  /** Front-end (QEMU / DPDK process) virtual address of the region start. */
  userAddr: number;
  /** Host address of the region start in this process (mapping base + mmap offset). */
  hostAddress: number;
  /** Base address and length of the whole mapping (the region sits at hostAddress − mappingAddress). */
  mappingAddress: number;
  mmapLength: number;
  mmapOffset: number;
  /** The region's file (an fd the session keeps while the region is mapped); absent for memory without one. */
  fd?: number;
}

export interface SessionMemory {
  regions: readonly SessionRegion[];
  /** The main-thread view of the same regions (bounds-checked translation). */
  memory: GuestMemory;
}

/** A ring part located both as (region index, offset) and as an absolute host address. */
export interface RingLocation {
  userAddr: number;
  region: number;
  offset: number;
  hostAddress: number;
}

/** A mapped dirty-page bitmap: one bit per 4 KiB guest-physical page from address 0. */
export interface DirtyLog {
  hostAddress: number;
  size: number;
}

export interface VringConfig {
  index: number;
  /** Number of descriptors (a power of two for split rings, any of 1..32768 for packed ones). */
  size: number;
  /**
   * VIRTIO_F_RING_PACKED: `desc` is the packed descriptor ring, `avail` the driver's and `used`
   * the device's event suppression area (4 bytes each).
   */
  packed: boolean;
  desc: RingLocation;
  avail: RingLocation;
  used: RingLocation;
  /** Guest-physical address of the used ring for dirty logging; meaningful when logUsed is set. */
  logGuestAddr: number;
  logUsed: boolean;
  /**
   * The live-migration dirty log while one is on (VHOST_F_LOG_ALL negotiated and a log mapped by
   * SET_LOG_BASE), else null: every page the device writes must get its bit set in it. The
   * session keeps it mapped until the vring has stopped.
   */
  dirtyLog: DirtyLog | null;
  /** Negotiated virtio features (u64 as a number; test with messages.hasBit). */
  features: number;
  eventIdx: boolean;
  indirect: boolean;
  mergeableRxBuffers: boolean;
  /** virtio-net header length: 12 with VERSION_1 or MRG_RXBUF, else 10. */
  netHeaderLength: number;
  /**
   * Owned by the session: the device may read/write them but never closes them. They stay valid
   * until vringStopped (or the connection ends) has completed.
   */
  kickFd: number;
  callFd: number;
  lastAvail: number;
  lastUsed: number;
  /** Whether SET_VRING_ENABLE(1) is in effect now (later changes come through vringEnabled). */
  enabled: boolean;
  regions: readonly SessionRegion[];
}

/**
 * Implemented by the relay. Every hook is awaited before the session processes the next message,
 * so a hook can quiesce a worker before the session changes memory or closes fds.
 */
export interface NetDevice {
  /** A new memory table is mapped; the previous one is unmapped after this resolves. */
  memoryChanged(memory: SessionMemory): Promise<void>;
  /** The vring has a kick fd and translatable addresses: start polling it. */
  vringStarted(index: number, vring: VringConfig): Promise<void>;
  /**
   * Stop touching the vring (GET_VRING_BASE, or a restart because memory or the call fd changed).
   * Complete or drop what was popped, publish used entries, and return the next avail index.
   */
  vringStopped(index: number): Promise<{ lastAvail: number }>;
  vringEnabled(index: number, enabled: boolean): Promise<void>;
  /**
   * Optional: the call fd of a started vring changed (QEMU sends SET_VRING_CALL after KICK, and again
   * when the guest masks vectors). Without this hook the session restarts the vring instead.
   * The old fd is closed after this resolves.
   */
  vringCallChanged?(index: number, callFd: number): Promise<void>;
  /** The front-end went away; all vrings are already stopped. */
  disconnected(): Promise<void>;
}
