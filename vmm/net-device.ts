// virtio-net backed by a vhost-user back-end (the relay). The VMM only runs the control path:
// features are negotiated with the back-end before the guest boots, and at the guest's DRIVER_OK
// the memory table and rings are handed over. Kicks are KVM ioeventfds on QueueNotify and calls
// go straight to a KVM irqfd, so no packet ever passes through this process.
//
// When the back-end goes away (the relay restarts) the NIC reconnects with backoff, checks that the
// new back-end offers exactly the features negotiated before the guest booted, and hands over the
// memory table and every started ring again, each from the used index in guest memory (as QEMU and
// cloud-hypervisor do), so the guest's network comes back without a reboot. With more than one
// queue pair the VMM serves the control queue itself (vmm/net-ctrl-queue.ts).
import type { VirtioDevice } from './devices/virtio-device.js';
import type { Logger } from 'pino';
import { eventfd, eventfdDrain, eventfdWrite } from '../sys/eventfd.js';
import { close as closeFd } from '../sys/fd.js';
import type { ReadinessSource } from '../vhost-user/connection.js';
import { DEFAULT_REPLY_TIMEOUT_MS, Frontend, type FrontendRegion, type Negotiated, type VringSetup } from '../vhost-user/frontend.js';
import { PROTOCOL_FEATURES_BIT, ProtocolFeature, hasBit, maskAnd, maskOr } from '../vhost-user/messages.js';
import * as F from '../virtio/features.js';
import type { NetConfig } from './config-types.js';
import { guestSlice, type GuestRam } from './guest-ram.js';
import { NetCtrlQueue, VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, VIRTIO_NET_ERR, VIRTIO_NET_OK } from './net-ctrl-queue.js';
import { DEVICE_ID_NET } from './devices/virtio-mmio.js';
import { STATUS_DRIVER_OK } from '../virtio/device-status.js';

export const QUEUE_NUM_MAX = 256;
const VIRTIO_NET_S_LINK_UP = 1;

const bit = (n: number) => 2 ** n;

/** Backoff between reconnection attempts: from the first delay, doubling up to the last. */
export const RECONNECT_FIRST_DELAY_MS = 100;
export const RECONNECT_MAX_DELAY_MS = 2_000;

/** What the VMM asks of the back-end (the control queue is the VMM's own, never the back-end's). */
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
  /** Resolves when the NIC is closed for good (a back-end that goes away is reconnected). */
  closed: Promise<void>;
  /** How many times the back-end was reconnected and the rings handed over again. */
  reconnections(): number;
}

const names = (features: number) => `[${F.featureNames(BigInt(features)).join(' ')}]`;

/** The new back-end's offer differs from what the guest was given: the NIC must stay down. */
class FeatureMismatch extends Error {}

interface StartedRing {
  index: number;
  size: number;
  desc: number;
  driver: number;
  device: number;
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
  const frontendOptions = { reactor, log, label, replyTimeoutMs };
  const wanted = {
    features: wantedNetFeatures(config.queuePairs) + bit(PROTOCOL_FEATURES_BIT),
    protocolFeatures: bit(ProtocolFeature.MQ) | bit(ProtocolFeature.REPLY_ACK),
  };
  const first = config.server
    ? await Frontend.accept(config.socketPath, { ...frontendOptions, timeoutMs })
    : await Frontend.connect(config.socketPath, { ...frontendOptions, timeoutMs, retryMs: 200 });
  let negotiated: Negotiated;
  try {
    negotiated = await first.negotiate(wanted);
  } catch (err) {
    await first.close();
    throw new Error(`NIC ${label}: vhost-user negotiation failed: ${(err as Error).message}`);
  }
  if (!hasBit(negotiated.features, F.VIRTIO_F_VERSION_1)) {
    await first.close();
    throw new Error(`NIC ${label}: the vhost-user back-end does not offer VIRTIO_F_VERSION_1, which virtio-mmio version 2 requires`);
  }
  const protocolNegotiated = hasBit(negotiated.features, PROTOCOL_FEATURES_BIT);
  let queuePairs = Math.min(config.queuePairs, negotiated.queuePairs);
  if (!hasBit(negotiated.features, F.VIRTIO_NET_F_MQ)) queuePairs = 1;
  if (queuePairs < config.queuePairs) {
    log.warn({ nic: config.id, asked: config.queuePairs, granted: queuePairs }, `NIC ${config.id}: the back-end supports ${queuePairs} queue pairs`);
  }
  // The guest never sees the vhost-user protocol bit. Multiqueue needs the control queue, which
  // the VMM serves: the guest gets CTRL_VQ, the back-end never does.
  const backendFeatures = protocolNegotiated ? negotiated.features - bit(PROTOCOL_FEATURES_BIT) : negotiated.features;
  const withCtrl = queuePairs > 1;
  const guestFeatures = withCtrl ? maskOr(backendFeatures, bit(F.VIRTIO_NET_F_CTRL_VQ)) : hasBit(backendFeatures, F.VIRTIO_NET_F_MQ) ? backendFeatures - bit(F.VIRTIO_NET_F_MQ) : backendFeatures;
  const dataQueues = queuePairs * 2;
  const ctrlIndex = withCtrl ? dataQueues : -1;
  const numQueues = dataQueues + (withCtrl ? 1 : 0);
  const kickFds = Array.from({ length: numQueues }, () => eventfd(0, { nonblock: true }));
  const callFd = eventfd(0, { nonblock: true });

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

  // State that outlives one connection: what the guest started, and how many pairs it uses.
  let frontend: Frontend | null = first;
  let closing = false;
  let reconnected = 0;
  let started: StartedRing[] = [];
  let startedFeatures = 0;
  let activePairs = 1;
  let ctrl: NetCtrlQueue | null = null;
  let resolveClosed!: () => void;
  const closed = new Promise<void>((r) => (resolveClosed = r));
  // Guest status changes, control commands and reconnections run one at a time.
  let chain: Promise<unknown> = Promise.resolve();
  const serialize = <T>(fn: () => Promise<T>): Promise<T> => {
    const p = chain.then(fn, fn);
    chain = p.catch(() => undefined);
    return p;
  };

  const pairEnabled = (index: number) => Math.floor(index / 2) < activePairs;
  const vringsOf = (rings: StartedRing[], base: (r: StartedRing) => number): VringSetup[] =>
    rings.map((q) => ({
      index: q.index,
      size: q.size,
      base: base(q),
      descUserAddr: toUser(q.desc, 16 * q.size, `vring ${q.index} descriptor table`),
      availUserAddr: toUser(q.driver, 6 + 2 * q.size, `vring ${q.index} avail ring`),
      usedUserAddr: toUser(q.device, 6 + 8 * q.size, `vring ${q.index} used ring`),
      kickFd: kickFds[q.index],
      callFd,
      enable: pairEnabled(q.index),
    }));
  /** used->idx in guest memory: what the back-end has completed, where a new one resumes. */
  const usedIdx = (q: StartedRing) => {
    const b = guestSlice(ram, q.device + 2, 2, `NIC ${config.id} vring ${q.index} used.idx`);
    return b[0] | (b[1] << 8);
  };

  const watch = (fe: Frontend) => {
    void fe.closed.then(() => {
      if (closing || frontend !== fe) return;
      frontend = null;
      log.warn({ nic: config.id, socket: config.socketPath }, `NIC ${config.id}: the vhost-user back-end closed the connection; reconnecting`);
      void reconnect();
    });
  };

  /** Negotiates on a new connection and, when the guest had started the NIC, hands everything over again. */
  const restore = async (fe: Frontend): Promise<void> => {
    const again = await fe.negotiate(wanted);
    const pairsAgain = hasBit(again.features, F.VIRTIO_NET_F_MQ) ? again.queuePairs : 1;
    if (again.features !== negotiated.features || again.protocolFeatures !== negotiated.protocolFeatures || pairsAgain < queuePairs) {
      throw new FeatureMismatch(
        `NIC ${config.id}: the restarted back-end offers features ${names(again.features)} ` +
          `(protocol 0x${again.protocolFeatures.toString(16)}, ${pairsAgain} queue pairs) instead of ${names(negotiated.features)} ` +
          `(protocol 0x${negotiated.protocolFeatures.toString(16)}, ${queuePairs} queue pairs) that the guest was given; the NIC stays down until a back-end with the same features comes back`,
      );
    }
    if (started.length > 0) {
      const vrings = vringsOf(started, usedIdx);
      await fe.startDevice(startedFeatures, regions, vrings);
      // Whatever the old back-end completed but did not signal: let the guest look.
      eventfdWrite(callFd);
      log.info({ nic: config.id, vrings: vrings.map((v) => ({ index: v.index, base: v.base, enabled: v.enable })) }, `NIC ${config.id}: rings handed to the restarted vhost-user back-end`);
    }
  };

  const reconnect = async (): Promise<void> => {
    let delay = RECONNECT_FIRST_DELAY_MS;
    let mismatchReported = '';
    for (let attempt = 1; !closing; attempt++) {
      let fe: Frontend;
      try {
        fe = config.server
          ? await Frontend.accept(config.socketPath, { ...frontendOptions, timeoutMs: RECONNECT_MAX_DELAY_MS * 5 })
          : await Frontend.connect(config.socketPath, { ...frontendOptions, timeoutMs: 0 });
      } catch (err) {
        // Log the first attempts and then every power of two: a back-end may be down for long.
        if ((attempt & (attempt - 1)) === 0) {
          log.info({ nic: config.id, attempt, retryInMs: delay, err: (err as Error).message }, `NIC ${config.id}: vhost-user back-end not back yet (attempt ${attempt}); retrying in ${delay} ms`);
        }
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, RECONNECT_MAX_DELAY_MS);
        continue;
      }
      if (closing) {
        await fe.close();
        return;
      }
      try {
        await serialize(() => restore(fe));
      } catch (err) {
        await fe.close();
        const message = (err as Error).message;
        if (err instanceof FeatureMismatch) {
          if (message !== mismatchReported) log.error({ nic: config.id, socket: config.socketPath }, message);
          mismatchReported = message;
          delay = RECONNECT_MAX_DELAY_MS;
        } else {
          log.warn({ nic: config.id, attempt, err: message }, `NIC ${config.id}: handing the rings to the reconnected back-end failed; retrying in ${delay} ms`);
        }
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, RECONNECT_MAX_DELAY_MS);
        continue;
      }
      frontend = fe;
      reconnected++;
      watch(fe);
      log.info({ nic: config.id, attempt, reconnections: reconnected }, `NIC ${config.id}: vhost-user back-end reconnected after ${attempt} attempt(s)`);
      return;
    }
  };
  watch(first);

  /** VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET: enable the first `pairs` pairs on the back-end, disable the rest. */
  const setActivePairs = async (pairs: number): Promise<void> => {
    activePairs = pairs;
    const fe = frontend;
    if (!fe || !protocolNegotiated) return;
    for (const q of started) await fe.setVringEnable(q.index, pairEnabled(q.index));
    log.info({ nic: config.id, pairs }, `NIC ${config.id}: guest uses ${pairs} of ${queuePairs} queue pairs`);
  };
  const onCtrlCommand = async (cls: number, cmd: number, data: Uint8Array): Promise<number> => {
    if (cls === VIRTIO_NET_CTRL_MQ && cmd === VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET && data.length >= 2) {
      const pairs = data[0] | (data[1] << 8);
      if (pairs < VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN || pairs > queuePairs) {
        log.warn({ nic: config.id, pairs, max: queuePairs }, `NIC ${config.id}: guest asked for ${pairs} queue pairs; refused`);
        return VIRTIO_NET_ERR;
      }
      try {
        await setActivePairs(pairs);
        return VIRTIO_NET_OK;
      } catch (err) {
        log.warn({ nic: config.id, pairs, err: (err as Error).message }, `NIC ${config.id}: enabling ${pairs} queue pairs on the back-end failed`);
        return VIRTIO_NET_ERR;
      }
    }
    log.info({ nic: config.id, class: cls, command: cmd }, `NIC ${config.id}: control command class ${cls} command ${cmd} is not supported`);
    return VIRTIO_NET_ERR;
  };
  /** Answers every command waiting in the control queue (call only from a serialized step). */
  const serveCtrl = async (): Promise<void> => {
    const q = ctrl;
    if (!q) return;
    try {
      if ((await q.serve(onCtrlCommand)) > 0) eventfdWrite(callFd);
    } catch (err) {
      log.warn({ nic: config.id, err: (err as Error).message }, `NIC ${config.id}: control queue: ${(err as Error).message}`);
    }
  };
  if (withCtrl) {
    const ctrlKick = kickFds[ctrlIndex];
    // A kick is never dropped: one that comes while DRIVER_OK is still being handed to the
    // back-end (the guest's Status write returns after at most 5 s) waits for that step, which
    // serves the queue again when it is done.
    reactor.watch(ctrlKick, () => {
      eventfdDrain(ctrlKick);
      void serialize(serveCtrl);
    });
  }

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
    closed,
    reconnections: () => reconnected,
    onStatus(change) {
      return serialize(async () => {
        if (change.status & STATUS_DRIVER_OK) {
          const acked = change.features[0] + change.features[1] * 2 ** 32;
          const ready = change.queues.filter((q) => q.ready && q.size > 0);
          const c = ready.find((q) => q.index === ctrlIndex);
          ctrl = c ? new NetCtrlQueue(ram, c, `NIC ${config.id} control queue`) : null;
          started = ready.filter((q) => q.index !== ctrlIndex).map((q) => ({ index: q.index, size: q.size, desc: q.desc, driver: q.driver, device: q.device }));
          // Until the guest sets the number of pairs, only the first is in use (virtio 1.2 §5.1.6.5.5).
          activePairs = 1;
          const features = maskAnd(acked, backendFeatures);
          startedFeatures = protocolNegotiated ? maskOr(features, bit(PROTOCOL_FEATURES_BIT)) : features;
          const vrings = vringsOf(started, () => 0);
          if (!frontend) {
            log.warn({ nic: config.id }, `NIC ${config.id}: guest started the NIC while the back-end is away; rings are handed over when it is back`);
            await serveCtrl();
            return;
          }
          await frontend.startDevice(startedFeatures, regions, vrings);
          log.info({ nic: config.id, vrings: started.map((v) => v.index), features: startedFeatures }, `NIC ${config.id}: rings handed to the vhost-user back-end`);
          await serveCtrl();
        } else if (change.status === 0 && (started.length > 0 || ctrl)) {
          const indexes = started.map((q) => q.index);
          started = [];
          ctrl = null;
          activePairs = 1;
          if (frontend && indexes.length > 0) await frontend.stopDevice(indexes);
          log.info({ nic: config.id }, `NIC ${config.id}: guest reset the device; rings stopped`);
        }
      });
    },
    async close() {
      if (closing) return;
      closing = true;
      if (withCtrl) reactor.unwatch(kickFds[ctrlIndex]);
      await frontend?.close();
      frontend = null;
      for (const fd of kickFds) closeFd(fd);
      closeFd(callFd);
      resolveClosed();
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
        activeQueuePairs: activePairs,
        controlQueue: withCtrl,
        connected: frontend !== null,
        reconnections: reconnected,
        features: guestFeatures,
        // Each started data ring's used index, read from guest memory: how far the back-end got.
        rings: started.map((q) => ({ index: q.index, enabled: pairEnabled(q.index), usedIdx: usedIdx(q) })),
      };
    },
  };
}
