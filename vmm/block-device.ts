// virtio-blk on a raw image file. The main thread opens the image and sets up the transport;
// requests are served by an iothread (see iothread-worker.ts), which gets the queue at the
// guest's DRIVER_OK and gives it up at a reset.
import { constants, fstatSync, openSync } from 'node:fs';
import { eventfd } from '../sys/eventfd.js';
import { close as closeFd } from '../sys/fd.js';
import * as F from '../virtio/features.js';
import { DIRECT_ALIGN, SECTOR_SIZE } from './block-request.js';
import type { DriveConfig } from './config-types.js';
import { DEVICE_ID_BLOCK, type StatusChange } from './devices/virtio-mmio.js';
import { STATUS_DRIVER_OK } from '../virtio/device-status.js';
import type { IoThread } from './iothread.js';
import type { IothreadDrive } from './iothread-protocol.js';
import type { VirtioDevice } from './devices/virtio-device.js';

export const BLK_QUEUE_NUM_MAX = 256;
export const VIRTIO_BLK_F_SIZE_MAX = 1;
export const VIRTIO_BLK_F_SEG_MAX = 2;
export const VIRTIO_BLK_F_RO = 5;
export const VIRTIO_BLK_F_BLK_SIZE = 6;
export const VIRTIO_BLK_F_FLUSH = 9;
/** Largest segment the guest may hand us, as a bound for its request builder. */
const SIZE_MAX = 128 * 1024;

const bit = (n: number) => 2 ** n;

export function blockFeatures(readOnly: boolean): number {
  const bits = [
    F.VIRTIO_F_VERSION_1,
    F.VIRTIO_RING_F_EVENT_IDX,
    F.VIRTIO_RING_F_INDIRECT_DESC,
    VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_BLK_SIZE,
    VIRTIO_BLK_F_FLUSH,
  ];
  if (readOnly) bits.push(VIRTIO_BLK_F_RO);
  return bits.reduce((mask, b) => mask + bit(b), 0);
}

/** virtio_blk_config up to blk_size: capacity (sectors), size_max, seg_max, geometry, blk_size. */
export function blockConfigSpace(capacityBytes: number, queueSize: number): Uint8Array {
  const config = new Uint8Array(24);
  const v = new DataView(config.buffer);
  v.setBigUint64(0, BigInt(capacityBytes / SECTOR_SIZE), true);
  v.setUint32(8, SIZE_MAX, true);
  v.setUint32(12, queueSize - 2, true); // two descriptors carry the header and the status
  v.setUint32(20, SECTOR_SIZE, true);
  return config;
}

/** A virtio-blk disk: a VirtioDevice whose one queue an iothread serves. */
export interface BlockDeviceHandle extends VirtioDevice {
  config: DriveConfig;
  capacityBytes: number;
  readonly iothread: NonNullable<VirtioDevice['iothread']>;
  close(): void;
}

/**
 * Opens the image as the drive will use it (read-only when the drive is, O_DIRECT when asked) and
 * sizes the disk. Errors start with the image path; the caller says which drive it is. Used once
 * before KVM is opened, to refuse a bad image early, and again when the device is built.
 */
export function openImage(config: DriveConfig): { fd: number; capacityBytes: number } {
  const where = config.path;
  let flags = config.readOnly ? constants.O_RDONLY : constants.O_RDWR;
  if (config.direct) flags |= constants.O_DIRECT;
  let fd: number;
  try {
    fd = openSync(config.path, flags);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? String(err);
    const hint = config.direct && code === 'EINVAL' ? '; the file system does not support direct=on' : '';
    throw new Error(`${where}: cannot open (${code})${hint}`);
  }
  const stat = fstatSync(fd);
  if (!stat.isFile() && !stat.isBlockDevice()) {
    closeFd(fd);
    throw new Error(`${where}: not a regular file or block device`);
  }
  // A direct image is served in whole blocks, so its tail beyond the last block is not part of the disk.
  const unit = config.direct ? DIRECT_ALIGN : SECTOR_SIZE;
  const capacityBytes = Math.floor(stat.size / unit) * unit;
  if (stat.isFile() && capacityBytes === 0) {
    closeFd(fd);
    throw new Error(`${where}: the image is ${stat.size} bytes, smaller than one ${unit}-byte block`);
  }
  return { fd, capacityBytes };
}

/** Opens the image and sets up the transport side of the disk. */
export function openBlockDevice(config: DriveConfig): BlockDeviceHandle {
  let image: { fd: number; capacityBytes: number };
  try {
    image = openImage(config);
  } catch (err) {
    throw new Error(`drive ${config.id}: ${(err as Error).message}`);
  }
  const { fd, capacityBytes } = image;
  const features = blockFeatures(config.readOnly);
  const kickFd = eventfd(0, { nonblock: true });
  const callFd = eventfd(0, { nonblock: true });
  let thread: IoThread | null = null;
  let started = false;
  let closed = false;
  return {
    id: config.id,
    config,
    deviceId: DEVICE_ID_BLOCK,
    features: [features % 2 ** 32, Math.floor(features / 2 ** 32)],
    numQueues: 1,
    queueNumMax: BLK_QUEUE_NUM_MAX,
    configSpace: blockConfigSpace(capacityBytes, BLK_QUEUE_NUM_MAX),
    capacityBytes,
    kickFds: [kickFd],
    callFd,
    servedBy: 'iothread',
    iothread: {
      // Drives that name no -iothread get one of their own.
      name: config.iothread ?? `${config.id}-io`,
      drive: (transport) => ({
        id: config.id,
        fd,
        capacityBytes,
        readOnly: config.readOnly,
        direct: config.direct,
        serial: config.serial ?? '',
        iops: config.iops,
        kickFd,
        callFd,
        transport,
      }),
      attach(t) {
        thread = t;
      },
    },
    async onStatus(change) {
      if (!thread) return;
      const index = thread.indexOf(config.id);
      if (change.status & STATUS_DRIVER_OK) {
        const queue = change.queues[0];
        if (!queue?.ready || queue.size === 0) throw new Error(`drive ${config.id}: DRIVER_OK without a ready queue 0`);
        thread.send({ type: 'start', drive: index, queue, features: change.features });
        started = true;
      } else if (change.status === 0 && started) {
        started = false;
        thread.send({ type: 'stop', drive: index });
      }
    },
    close() {
      if (closed) return;
      closed = true;
      closeFd(fd);
      closeFd(kickFd);
      closeFd(callFd);
    },
    describe() {
      return {
        id: config.id,
        type: 'virtio-blk',
        file: config.path,
        readonly: config.readOnly,
        direct: config.direct,
        serial: config.serial ?? '',
        iops: config.iops,
        iothread: thread?.name,
        sectors: capacityBytes / SECTOR_SIZE,
      };
    },
  };
}
