// virtio-mmio version 2 register emulation. The register file lives in a SharedArrayBuffer so that
// whichever vCPU thread takes the MMIO exit serves it; status changes that need the device back
// end (DRIVER_OK: start the rings; 0: reset) are reported through `onStatus`, which the vCPU
// thread forwards to the main thread. QueueNotify never gets here: it is a KVM ioeventfd.
import { lock, unlock } from './shared-lock.js';

export const VIRTIO_MMIO_MAGIC = 0x74726976;
export const VIRTIO_MMIO_VENDOR = 0x4f495634; // "4VIO"
export const DEVICE_ID_NET = 1;
export const DEVICE_ID_BLOCK = 2;

import { STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK, STATUS_NEEDS_RESET, STATUS_FAILED } from '../../virtio/device-status.js';

export const INT_VRING = 1;
export const INT_CONFIG = 2;

export const REG = {
  MAGIC: 0x000,
  VERSION: 0x004,
  DEVICE_ID: 0x008,
  VENDOR_ID: 0x00c,
  DEVICE_FEATURES: 0x010,
  DEVICE_FEATURES_SEL: 0x014,
  DRIVER_FEATURES: 0x020,
  DRIVER_FEATURES_SEL: 0x024,
  QUEUE_SEL: 0x030,
  QUEUE_NUM_MAX: 0x034,
  QUEUE_NUM: 0x038,
  QUEUE_READY: 0x044,
  QUEUE_NOTIFY: 0x050,
  INTERRUPT_STATUS: 0x060,
  INTERRUPT_ACK: 0x064,
  STATUS: 0x070,
  QUEUE_DESC_LOW: 0x080,
  QUEUE_DESC_HIGH: 0x084,
  QUEUE_DRIVER_LOW: 0x090,
  QUEUE_DRIVER_HIGH: 0x094,
  QUEUE_DEVICE_LOW: 0x0a0,
  QUEUE_DEVICE_HIGH: 0x0a4,
  SHM_SEL: 0x0ac,
  SHM_LEN_LOW: 0x0b0,
  SHM_LEN_HIGH: 0x0b4,
  SHM_BASE_LOW: 0x0b8,
  SHM_BASE_HIGH: 0x0bc,
  CONFIG_GENERATION: 0x0fc,
  CONFIG: 0x100,
} as const;

const W = {
  lock: 0,
  status: 1,
  deviceFeaturesSel: 2,
  driverFeaturesSel: 3,
  driverFeaturesLo: 4,
  driverFeaturesHi: 5,
  queueSel: 6,
  interruptStatus: 7,
  configGeneration: 8,
  numQueues: 9,
  deviceFeaturesLo: 10,
  deviceFeaturesHi: 11,
  deviceId: 12,
  queueNumMax: 13,
  /** 1: the back end signals the irqfd directly, so InterruptStatus must always claim a vring event. */
  vhostUser: 14,
  /** 1 while a device reset waits for its back end to stop (see MmioTransport.write). */
  resetPending: 15,
  queues: 16,
} as const;
const QUEUE_WORDS = 8;
const Q = { num: 0, ready: 1, descLo: 2, descHi: 3, drvLo: 4, drvHi: 5, devLo: 6, devHi: 7 } as const;
const MAX_QUEUES = 32;
const CONFIG_BYTES = 256;
const WORDS = W.queues + MAX_QUEUES * QUEUE_WORDS;

export interface TransportOptions {
  deviceId: number;
  /** The 64-bit feature set offered, as [low 32 bits, high 32 bits]. */
  features: [number, number];
  numQueues: number;
  queueNumMax: number;
  vhostUser: boolean;
  config: Uint8Array;
}

export interface QueueSetup {
  index: number;
  size: number;
  ready: boolean;
  desc: number;
  driver: number;
  device: number;
}

export interface StatusChange {
  status: number;
  previous: number;
  /** Driver features as [low, high]. */
  features: [number, number];
  queues: QueueSetup[];
}

export function createTransportState(o: TransportOptions): SharedArrayBuffer {
  if (o.numQueues > MAX_QUEUES) throw new Error(`virtio-mmio: ${o.numQueues} queues, at most ${MAX_QUEUES}`);
  if (o.config.length > CONFIG_BYTES) throw new Error(`virtio-mmio: config space of ${o.config.length} bytes, at most ${CONFIG_BYTES}`);
  const sab = new SharedArrayBuffer(WORDS * 4 + CONFIG_BYTES);
  const w = new Int32Array(sab, 0, WORDS);
  w[W.deviceId] = o.deviceId;
  w[W.deviceFeaturesLo] = o.features[0] | 0;
  w[W.deviceFeaturesHi] = o.features[1] | 0;
  w[W.numQueues] = o.numQueues;
  w[W.queueNumMax] = o.queueNumMax;
  w[W.vhostUser] = o.vhostUser ? 1 : 0;
  new Uint8Array(sab, WORDS * 4, CONFIG_BYTES).set(o.config);
  return sab;
}

/** Longest a vCPU waits for a device's back end to stop after the guest reset the device. */
const RESET_WAIT_MS = 5000;

export class MmioTransport {
  private readonly w: Int32Array;
  private readonly config: Uint8Array;

  /**
   * `waitForReset`: a Status write of 0 (device reset) does not return to the guest until
   * `resetDone()` says the device's back end stopped (vCPU threads only: it blocks the caller).
   */
  constructor(
    state: SharedArrayBuffer,
    private readonly onStatus: (change: StatusChange) => void,
    private readonly opts: { waitForReset?: boolean } = {},
  ) {
    this.w = new Int32Array(state, 0, WORDS);
    this.config = new Uint8Array(state, WORDS * 4, CONFIG_BYTES);
  }

  private queueWord(field: number): number {
    const sel = this.w[W.queueSel];
    if (sel < 0 || sel >= this.w[W.numQueues]) return -1;
    return W.queues + sel * QUEUE_WORDS + field;
  }

  read(offset: number, length: number): number {
    if (offset >= REG.CONFIG) return this.readConfig(offset - REG.CONFIG, length);
    if (length !== 4 || offset & 3) return 0;
    const w = this.w;
    lock(w);
    try {
      switch (offset) {
        case REG.MAGIC:
          return VIRTIO_MMIO_MAGIC;
        case REG.VERSION:
          return 2;
        case REG.DEVICE_ID:
          return w[W.deviceId];
        case REG.VENDOR_ID:
          return VIRTIO_MMIO_VENDOR;
        case REG.DEVICE_FEATURES:
          return w[W.deviceFeaturesSel] === 0 ? w[W.deviceFeaturesLo] >>> 0 : w[W.deviceFeaturesSel] === 1 ? w[W.deviceFeaturesHi] >>> 0 : 0;
        case REG.QUEUE_NUM_MAX:
          return this.queueWord(0) < 0 ? 0 : w[W.queueNumMax];
        case REG.QUEUE_READY: {
          const i = this.queueWord(Q.ready);
          return i < 0 ? 0 : w[i];
        }
        case REG.INTERRUPT_STATUS:
          if (w[W.vhostUser]) return w[W.interruptStatus] & INT_CONFIG ? INT_CONFIG : INT_VRING;
          return Atomics.load(w, W.interruptStatus);
        case REG.STATUS:
          return w[W.status];
        case REG.CONFIG_GENERATION:
          return w[W.configGeneration];
        case REG.SHM_LEN_LOW:
        case REG.SHM_LEN_HIGH:
        case REG.SHM_BASE_LOW:
        case REG.SHM_BASE_HIGH:
          return 0xffffffff; // no shared memory regions
        default:
          return 0;
      }
    } finally {
      unlock(w);
    }
  }

  private readConfig(offset: number, length: number): number {
    if (offset + length > CONFIG_BYTES) return 0;
    let value = 0;
    for (let i = length - 1; i >= 0; i--) value = value * 256 + this.config[offset + i];
    return value;
  }

  write(offset: number, length: number, value: number): void {
    if (offset >= REG.CONFIG || length !== 4 || offset & 3) return; // config space is read-only here
    const w = this.w;
    let change: StatusChange | null = null;
    lock(w);
    try {
      const status = w[W.status];
      // Queue and feature registers may only change before DRIVER_OK, as the spec requires.
      const setupAllowed = (status & STATUS_DRIVER_OK) === 0 && (status & STATUS_FAILED) === 0;
      const queueSetup = (field: number) => {
        const i = this.queueWord(field);
        if (i >= 0 && setupAllowed && w[W.queues + w[W.queueSel] * QUEUE_WORDS + Q.ready] === 0) w[i] = value | 0;
      };
      switch (offset) {
        case REG.DEVICE_FEATURES_SEL:
          w[W.deviceFeaturesSel] = value;
          break;
        case REG.DRIVER_FEATURES_SEL:
          w[W.driverFeaturesSel] = value;
          break;
        case REG.DRIVER_FEATURES:
          if (setupAllowed && (status & STATUS_FEATURES_OK) === 0) {
            const offered = w[W.driverFeaturesSel] === 0 ? w[W.deviceFeaturesLo] : w[W.driverFeaturesSel] === 1 ? w[W.deviceFeaturesHi] : 0;
            // A driver cannot accept what was not offered.
            if (w[W.driverFeaturesSel] === 0) w[W.driverFeaturesLo] = value & offered;
            else if (w[W.driverFeaturesSel] === 1) w[W.driverFeaturesHi] = value & offered;
          }
          break;
        case REG.QUEUE_SEL:
          w[W.queueSel] = value;
          break;
        case REG.QUEUE_NUM: {
          const max = w[W.queueNumMax];
          if (value === 0 || value > max || (value & (value - 1)) !== 0) break; // sizes are powers of two up to the max
          queueSetup(Q.num);
          break;
        }
        case REG.QUEUE_READY: {
          const i = this.queueWord(Q.ready);
          if (i >= 0 && setupAllowed) w[i] = value & 1;
          break;
        }
        case REG.QUEUE_DESC_LOW:
          queueSetup(Q.descLo);
          break;
        case REG.QUEUE_DESC_HIGH:
          queueSetup(Q.descHi);
          break;
        case REG.QUEUE_DRIVER_LOW:
          queueSetup(Q.drvLo);
          break;
        case REG.QUEUE_DRIVER_HIGH:
          queueSetup(Q.drvHi);
          break;
        case REG.QUEUE_DEVICE_LOW:
          queueSetup(Q.devLo);
          break;
        case REG.QUEUE_DEVICE_HIGH:
          queueSetup(Q.devHi);
          break;
        case REG.INTERRUPT_ACK:
          Atomics.and(w, W.interruptStatus, ~value);
          break;
        case REG.STATUS:
          change = this.writeStatus(value);
          break;
        default:
          break;
      }
    } finally {
      unlock(w);
    }
    if (!change) return;
    if (change.status !== 0 || !this.opts.waitForReset) {
      this.onStatus(change);
      return;
    }
    // A reset must complete before the guest sees its write done, as on QEMU, where the vhost-user
    // rings are stopped (GET_VRING_BASE) inside the MMIO write. The guest frees and re-initialises
    // its rings right after the write (Linux's virtio-mmio does not wait for Status to read 0); a
    // back end still running them would then read the zeroed avail.idx of a new ring against the
    // old ring's last_avail and declare the ring broken.
    Atomics.store(w, W.resetPending, 1);
    this.onStatus(change);
    Atomics.wait(w, W.resetPending, 1, RESET_WAIT_MS);
  }

  /** Lets a vCPU blocked in a device reset return to the guest (the back end stopped, or gave up). */
  static resetDone(state: SharedArrayBuffer): void {
    const w = new Int32Array(state, 0, WORDS);
    Atomics.store(w, W.resetPending, 0);
    Atomics.notify(w, W.resetPending);
  }

  /** Applies a Status write; returns the change to report, if any. Lock held. */
  private writeStatus(value: number): StatusChange | null {
    const w = this.w;
    const previous = w[W.status];
    if (value === 0) {
      const snapshot = this.snapshot(0, previous);
      this.reset();
      return previous === 0 ? null : snapshot;
    }
    // Bits are only ever added until reset; FEATURES_OK is refused if VERSION_1 was not accepted.
    if ((value & previous) !== previous) return null;
    if (value & STATUS_FEATURES_OK && !(previous & STATUS_FEATURES_OK) && (w[W.driverFeaturesHi] & 1) === 0) {
      value &= ~STATUS_FEATURES_OK;
    }
    if (value & STATUS_DRIVER_OK && !(value & STATUS_FEATURES_OK)) return null;
    w[W.status] = value;
    if (value & STATUS_DRIVER_OK && !(previous & STATUS_DRIVER_OK)) return this.snapshot(value, previous);
    return null;
  }

  private snapshot(status: number, previous: number): StatusChange {
    const w = this.w;
    const queues: QueueSetup[] = [];
    for (let q = 0; q < w[W.numQueues]; q++) {
      const base = W.queues + q * QUEUE_WORDS;
      const addr = (lo: number, hi: number) => (w[base + lo] >>> 0) + (w[base + hi] >>> 0) * 2 ** 32;
      queues.push({
        index: q,
        size: w[base + Q.num],
        ready: w[base + Q.ready] === 1,
        desc: addr(Q.descLo, Q.descHi),
        driver: addr(Q.drvLo, Q.drvHi),
        device: addr(Q.devLo, Q.devHi),
      });
    }
    return { status, previous, features: [w[W.driverFeaturesLo] >>> 0, w[W.driverFeaturesHi] >>> 0], queues };
  }

  private reset(): void {
    const w = this.w;
    w[W.status] = 0;
    w[W.deviceFeaturesSel] = 0;
    w[W.driverFeaturesSel] = 0;
    w[W.driverFeaturesLo] = 0;
    w[W.driverFeaturesHi] = 0;
    w[W.queueSel] = 0;
    Atomics.store(w, W.interruptStatus, 0);
    w.fill(0, W.queues, W.queues + MAX_QUEUES * QUEUE_WORDS);
  }

  /** Raised by a device served in this process (virtio-blk) before it signals the irqfd. */
  static raiseInterrupt(state: SharedArrayBuffer, bits: number): void {
    Atomics.or(new Int32Array(state, 0, WORDS), W.interruptStatus, bits);
  }

  static status(state: SharedArrayBuffer): number {
    return Atomics.load(new Int32Array(state, 0, WORDS), W.status);
  }

  /** Sets NEEDS_RESET after a back-end failure and reports a config change. */
  static setNeedsReset(state: SharedArrayBuffer): void {
    const w = new Int32Array(state, 0, WORDS);
    Atomics.or(w, W.status, STATUS_NEEDS_RESET);
    Atomics.or(w, W.interruptStatus, INT_CONFIG);
  }
}
