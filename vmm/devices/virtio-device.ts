// What the machine needs of any virtio device behind a virtio-mmio transport, so that
// vmm/machine.ts handles a NIC and a disk (and whatever comes next) the same way: it wires the
// kick eventfds as KVM ioeventfds and the call eventfd as an irqfd, forwards the guest's status
// changes, and describes and closes the device. The device decides who serves its queues.
import type { IoThread } from '../iothread.js';
import type { IothreadDrive } from '../iothread-protocol.js';
import type { StatusChange } from './virtio-mmio.js';

export interface VirtioDevice {
  readonly id: string;
  readonly deviceId: number;
  /** Offered to the guest: [low 32 bits, high 32 bits]. */
  readonly features: [number, number];
  readonly numQueues: number;
  readonly queueNumMax: number;
  readonly configSpace: Uint8Array;
  /** One eventfd per queue; KVM signals queue q's on the guest's QueueNotify write of q. */
  readonly kickFds: number[];
  /** The device's interrupt: an irqfd on its GSI. */
  readonly callFd: number;
  /**
   * Who serves the queues. A vhost-user back-end (another process) signals the irqfd itself and
   * the machine closes it before its reactor; an iothread of ours sets InterruptStatus first and
   * is closed after the iothreads stop.
   */
  readonly servedBy: 'vhost-user' | 'iothread';
  /** For devices served by an iothread: which one, and what it needs. */
  readonly iothread?: {
    name: string;
    drive(transport: SharedArrayBuffer): IothreadDrive;
    attach(thread: IoThread): void;
  };
  /** The guest wrote Status (DRIVER_OK hands the queues over, 0 resets the device). */
  onStatus(change: StatusChange): Promise<void>;
  close(): Promise<void> | void;
  /** For query-devices. */
  describe(): Record<string, unknown>;
}
