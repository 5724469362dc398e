// Per-relay, per-direction counters in one SharedArrayBuffer. The worker that owns a direction
// writes its slots; the main thread reads them for stats without a message round trip. Slots are
// indexed by relay and direction, not by worker, so a handover keeps the counts where they are.
import { MAX_RELAYS } from '../../vocabulary/limits.js';

export const enum Dir {
  VfToVm = 0,
  VmToVf = 1,
}

export const enum Counter {
  RxPackets = 0,
  RxBytes,
  Packets,
  Bytes,
  DropsQueueFull,
  DropsNotConnected,
  DropsBadFrame,
  BusyNs,
  PollNs,
  /**
   * VF→VM: frames the kernel could not put in the VF packet ring because it was full
   * (PACKET_STATISTICS tp_drops), folded in by the worker that owns the direction.
   */
  DropsKernelRing,
  /** Descriptor chains dropped because they broke a rule (loop, bounds, direction, length). */
  BadChains,
  /** Guest rings stopped after a fault: a broken ring, a failing kick or call fd, an unexpected error. */
  RingsStopped,
  /**
   * VF→VM: the part of DropsKernelRing that fell in a fold interval (100 ms) in which the guest
   * had run out of receive buffers while frames waited in the VF ring. The rest fell while the
   * guest had room, so the relay did not keep up.
   */
  DropsKernelRingGuestNoBuffers,
  /**
   * VF→VM: GSO super-frames from the VF that the relay cut into TCP segments, because the guest
   * did not negotiate the receive offload that takes them whole. Each segment delivered counts in
   * Packets, so Packets can exceed RxPackets.
   */
  RxSegmented,
  Count,
}

const SLOTS_PER_RELAY = 2 * Counter.Count;

export function createCounterBuffer(): SharedArrayBuffer {
  return new SharedArrayBuffer(MAX_RELAYS * SLOTS_PER_RELAY * 8);
}

/** The index of the first slot of one relay direction in the Float64Array over the buffer. */
export function counterBase(relay: number, dir: Dir): number {
  return relay * SLOTS_PER_RELAY + dir * Counter.Count;
}

/**
 * Adds to a slot from the main thread. Only for a direction no worker owns at the moment (detached
 * around a port's reopening): slots are plain doubles, written by their owner without atomics.
 */
export function addToDetached(view: Float64Array, relay: number, dir: Dir, counter: Counter, n: number): void {
  view[counterBase(relay, dir) + counter] += n;
}

export interface DirectionCounts {
  rxPackets: number;
  rxBytes: number;
  packets: number;
  bytes: number;
  dropsQueueFull: number;
  dropsNotConnected: number;
  dropsBadFrame: number;
  busyNs: number;
  pollNs: number;
  dropsKernelRing: number;
  badChains: number;
  ringsStopped: number;
  dropsKernelRingGuestNoBuffers: number;
  rxSegmented: number;
}

export function readCounts(view: Float64Array, relay: number, dir: Dir): DirectionCounts {
  const b = counterBase(relay, dir);
  return {
    rxPackets: view[b + Counter.RxPackets],
    rxBytes: view[b + Counter.RxBytes],
    packets: view[b + Counter.Packets],
    bytes: view[b + Counter.Bytes],
    dropsQueueFull: view[b + Counter.DropsQueueFull],
    dropsNotConnected: view[b + Counter.DropsNotConnected],
    dropsBadFrame: view[b + Counter.DropsBadFrame],
    busyNs: view[b + Counter.BusyNs],
    pollNs: view[b + Counter.PollNs],
    dropsKernelRing: view[b + Counter.DropsKernelRing],
    badChains: view[b + Counter.BadChains],
    ringsStopped: view[b + Counter.RingsStopped],
    dropsKernelRingGuestNoBuffers: view[b + Counter.DropsKernelRingGuestNoBuffers],
    rxSegmented: view[b + Counter.RxSegmented],
  };
}

/**
 * Per worker slot: busy and poll time, for the load monitor, and the bytes its thread's JavaScript
 * heap holds (sampled with the kernel statistics, every 100 ms): [busyNs, pollNs, heapBytes].
 */
export const WORKER_SLOTS = 3;
export function createWorkerLoadBuffer(workers: number): SharedArrayBuffer {
  return new SharedArrayBuffer(Math.max(1, workers) * WORKER_SLOTS * 8);
}
