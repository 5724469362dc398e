// virtio-net backed by a vhost-user back-end (the relay). The VMM only runs the control path:
// features are negotiated with the back-end before the guest boots, and at the guest's DRIVER_OK
// the memory table and rings are handed over. Kicks are KVM ioeventfds on QueueNotify and calls
// go straight to a KVM irqfd, so no packet ever passes through this process.
import type { VirtioDevice } from './devices/virtio-device.js';
import type { Logger } from 'pino';
import { eventfd } from '../sys/eventfd.js';
import { close as closeFd } from '../sys/fd.js';
import type { ReadinessSource } from '../vhost-user/connection.js';
import { DEFAULT_REPLY_TIMEOUT_MS, Frontend, type FrontendRegion, type VringSetup } from '../vhost-user/frontend.js';
import { PROTOCOL_FEATURES_BIT, ProtocolFeature, hasBit, maskAnd, maskOr } from '../vhost-user/messages.js';
import * as F from '../virtio/features.js';
import type { NetConfig } from './config-types.js';
import type { GuestRam } from './guest-ram.js';
import { DEVICE_ID_NET, STATUS_DRIVER_OK, type StatusChange } from './devices/virtio-mmio.js';

export const QUEUE_NUM_MAX = 256;
const VIRTIO_NET_S_LINK_UP = 1;

const bit = (n: number) => 2 ** n;

/** What the VMM is willing to offer a guest when the back-end supports it. */
export function wantedNetFeatures(queuePairs: number): number {
  const bits = [
    F.VIRTIO_F_VERSION_1,
    F.VIRTIO_NET_F_MAC,
    F.VIRTIO_NET_F_STATUS,
    F.VIRTIO_NET_F_MRG_RXBUF,
    F.VIRTIO_NET_F_CSUM,
    F.VIRTIO_NET_F_GUEST_CSUM,
    F.VIRTIO_NET_F_HOST_TSO4,
    F.VIRTIO_NET_F_HOST_TSO6,
    F.VIRTIO_NET_F_HOST_ECN,
    F.VIRTIO_NET_F_GUEST_TSO4,
    F.VIRTIO_NET_F_GUEST_TSO6,
    F.VIRTIO_NET_F_GUEST_ECN,
    F.VIRTIO_RING_F_EVENT_IDX,
    F.VIRTIO_RING_F_INDIRECT_DESC,
  ];
  if (queuePairs > 1) bits.push(F.VIRTIO_NET_F_MQ);
  return bits.reduce((mask, b) => mask + bit(b), 0);
}

export function netConfigSpace(mac: string, queuePairs: number): Uint8Array {
  const config = new Uint8Array(12);
  mac.split(':').forEach((h, i) => (config[i] = parseInt(h, 16)));
  const v = new DataView(config.buffer);
  v.setUint16(6, VIRTIO_NET_S_LINK_UP, true);
  v.setUint16(8, queuePairs, true);
  v.setUint16(10, 1500, true);
  return config;
}

/** A virtio-net NIC: a VirtioDevice whose queues a vhost-user back-end serves. */
export interface NetDeviceHandle extends VirtioDevice {
  config: NetConfig;
  close(): Promise<void>;
  /** Resolves when the back-end goes away. */
  closed: Promise<void>;
}

export async function openVhostUserNet(
  config: NetConfig,
  ram: GuestRam,
  reactor: ReadinessSource,
  log: Logger,
  timeoutMs = 30_000,
  replyTimeoutMs = DEFAULT_REPLY_TIMEOUT_MS,
): Promise<NetDeviceHandle> {
  const label = `${config.id} (${config.socketPath})`;
  const frontend = config.server
    ? await Frontend.accept(config.socketPath, { reactor, log, label, timeoutMs, replyTimeoutMs })
    : await Frontend.connect(config.socketPath, { reactor, log, label, timeoutMs, retryMs: 200, replyTimeoutMs });
  let negotiated;
  try {
    negotiated = await frontend.negotiate({
      features: wantedNetFeatures(config.queuePairs) + bit(PROTOCOL_FEATURES_BIT),
      protocolFeatures: bit(ProtocolFeature.MQ) | bit(ProtocolFeature.REPLY_ACK),
    });
  } catch (err) {
    await frontend.close();
    throw new Error(`NIC ${label}: vhost-user negotiation failed: ${(err as Error).message}`);
  }
  if (!hasBit(negotiated.features, F.VIRTIO_F_VERSION_1)) {
    await frontend.close();
    throw new Error(`NIC ${label}: the vhost-user back-end does not offer VIRTIO_F_VERSION_1, which virtio-mmio version 2 requires`);
  }
  const protocolNegotiated = hasBit(negotiated.features, PROTOCOL_FEATURES_BIT);
  let queuePairs = Math.min(config.queuePairs, negotiated.queuePairs);
  if (!hasBit(negotiated.features, F.VIRTIO_NET_F_MQ)) queuePairs = 1;
  if (queuePairs < config.queuePairs) {
    log.warn({ nic: config.id, asked: config.queuePairs, granted: queuePairs }, `NIC ${config.id}: the back-end supports ${queuePairs} queue pairs`);
  }
  // The guest never sees the vhost-user protocol bit.
  const guestFeatures = protocolNegotiated ? negotiated.features - bit(PROTOCOL_FEATURES_BIT) : negotiated.features;
  const numQueues = queuePairs * 2;
  const kickFds = Array.from({ length: numQueues }, () => eventfd(0, { nonblock: true }));
  const callFd = eventfd(0, { nonblock: true });
  let started: number[] = [];
  let failed = false;

  const regions: FrontendRegion[] = ram.regions.map((r) => {
    if (r.fd < 0) throw new Error(`NIC ${label}: guest RAM region at 0x${r.guestPhysAddr.toString(16)} is private memory; vhost-user needs shared memory`);
    return { guestPhysAddr: r.guestPhysAddr, size: r.size, userAddr: r.userAddr, mmapOffset: r.fdOffset, fd: r.fd };
  });
  const toUser = (gpa: number, length: number, what: string): number => {
    for (const r of ram.regions) {
      if (gpa >= r.guestPhysAddr && gpa + length <= r.guestPhysAddr + r.size) return r.userAddr + (gpa - r.guestPhysAddr);
    }
    throw new Error(`NIC ${label}: ${what} at guest address 0x${gpa.toString(16)} is outside guest RAM`);
  };

  return {
    id: config.id,
    servedBy: 'vhost-user',
    config,
    deviceId: DEVICE_ID_NET,
    features: [guestFeatures % 2 ** 32, Math.floor(guestFeatures / 2 ** 32)],
    numQueues,
    queueNumMax: QUEUE_NUM_MAX,
    configSpace: netConfigSpace(config.mac, queuePairs),
    kickFds,
    callFd,
    closed: frontend.closed,
    async onStatus(change) {
      if (change.status & STATUS_DRIVER_OK) {
        const acked = change.features[0] + change.features[1] * 2 ** 32;
        const vrings: VringSetup[] = change.queues
          .filter((q) => q.ready && q.size > 0)
          .map((q) => ({
            index: q.index,
            size: q.size,
            base: 0,
            descUserAddr: toUser(q.desc, 16 * q.size, `vring ${q.index} descriptor table`),
            availUserAddr: toUser(q.driver, 6 + 2 * q.size, `vring ${q.index} avail ring`),
            usedUserAddr: toUser(q.device, 6 + 8 * q.size, `vring ${q.index} used ring`),
            kickFd: kickFds[q.index],
            callFd,
          }));
        const features = protocolNegotiated ? maskOr(maskAnd(acked, guestFeatures), bit(PROTOCOL_FEATURES_BIT)) : maskAnd(acked, guestFeatures);
        await frontend.startDevice(features, regions, vrings);
        started = vrings.map((v) => v.index);
        log.info({ nic: config.id, vrings: started, features }, `NIC ${config.id}: rings handed to the vhost-user back-end`);
      } else if (change.status === 0 && started.length > 0) {
        const indexes = started;
        started = [];
        await frontend.stopDevice(indexes);
        log.info({ nic: config.id }, `NIC ${config.id}: guest reset the device; rings stopped`);
      }
    },
    async close() {
      if (failed) return;
      failed = true;
      await frontend.close();
      for (const fd of kickFds) closeFd(fd);
      closeFd(callFd);
    },
    describe() {
      return {
        id: config.id,
        type: 'virtio-net',
        backend: 'vhost-user',
        socket: config.socketPath,
        mode: config.server ? 'server' : 'client',
        mac: config.mac,
        queuePairs,
        features: guestFeatures,
      };
    },
  };
}
