// What the main thread and a vCPU worker exchange: the worker's start data, the run-state words
// in shared memory, and the messages a vCPU posts.
import type { StatusChange } from './devices/virtio-mmio.js';

export interface VcpuWorkerData {
  index: number;
  vcpuFd: number;
  vmFd: number;
  runSize: number;
  hostCpu?: number;
  serialState: SharedArrayBuffer;
  transports: Array<{ base: number; size: number; state: SharedArrayBuffer }>;
  /** [0] = run state (RUN/PAUSE/QUIT), [1 + i] = 1 while vCPU i is parked. */
  control: SharedArrayBuffer;
}

export const RUN_STATE = { RUN: 0, PAUSE: 1, QUIT: 2 } as const;

export type VcpuMessage =
  | { type: 'ready'; index: number; tid: number; runAddress: number }
  | { type: 'serial' } // transmitted bytes wait in the serial state's ring
  | { type: 'status'; device: number; change: StatusChange }
  /** `registers`: where the vCPU stopped, for exits that deserve a look (a triple fault). */
  | { type: 'exit'; index: number; reason: string; registers?: string }
  | { type: 'fatal'; index: number; message: string };

