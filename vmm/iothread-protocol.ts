// What the main thread and an iothread exchange: the worker's start data and the messages both
// ways. Messages to the worker are read synchronously after a write to its control eventfd,
// because the worker sleeps in poll(2), not in its event loop.
import type { QueueSetup } from './devices/virtio-mmio.js';

export interface IothreadDrive {
  id: string;
  fd: number;
  capacityBytes: number;
  readOnly: boolean;
  direct: boolean;
  serial: string;
  /** 0 = unlimited. */
  iops: number;
  /** QueueNotify ioeventfd of the device's one queue. */
  kickFd: number;
  /** The irqfd of the device's GSI. */
  callFd: number;
  /** The virtio-mmio register file (InterruptStatus, Status). */
  transport: SharedArrayBuffer;
}

export interface IothreadWorkerData {
  name: string;
  controlFd: number;
  /** Guest RAM as mapped in this process: the worker views the same pages. */
  ram: Array<{ guestPhysAddr: number; size: number; userAddr: number }>;
  drives: IothreadDrive[];
}

export type IothreadCommand =
  | { type: 'start'; drive: number; queue: QueueSetup; features: [number, number] }
  | { type: 'stop'; drive: number }
  | { type: 'quit' };

export type IothreadMessage =
  | { type: 'ready'; tid: number }
  | { type: 'log'; level: 'info' | 'warn' | 'error'; drive: string; message: string };
