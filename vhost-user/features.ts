// The virtio and protocol feature sets this back-end offers. They are a pure function of the
// device options, so a restarted daemon offers exactly what the front-end saw before (QEMU refuses
// a back-end whose features shrank).
import * as F from '../virtio/features.js';
import { ProtocolFeature, PROTOCOL_FEATURES_BIT, bitsToMask, hasBit } from './messages.js';

/** The feature bits this layer names, by their short names (for logs); the numbers are virtio/'s. */
export const VirtioNetFeature = {
  CSUM: F.VIRTIO_NET_F_CSUM,
  GUEST_CSUM: F.VIRTIO_NET_F_GUEST_CSUM,
  HOST_TSO4: F.VIRTIO_NET_F_HOST_TSO4,
  HOST_TSO6: F.VIRTIO_NET_F_HOST_TSO6,
  HOST_ECN: F.VIRTIO_NET_F_HOST_ECN,
  GUEST_TSO4: F.VIRTIO_NET_F_GUEST_TSO4,
  GUEST_TSO6: F.VIRTIO_NET_F_GUEST_TSO6,
  GUEST_ECN: F.VIRTIO_NET_F_GUEST_ECN,
  MTU: F.VIRTIO_NET_F_MTU,
  MAC: F.VIRTIO_NET_F_MAC,
  MRG_RXBUF: F.VIRTIO_NET_F_MRG_RXBUF,
  STATUS: F.VIRTIO_NET_F_STATUS,
  CTRL_VQ: F.VIRTIO_NET_F_CTRL_VQ,
  GUEST_ANNOUNCE: F.VIRTIO_NET_F_GUEST_ANNOUNCE,
  MQ: F.VIRTIO_NET_F_MQ,
  LOG_ALL: F.VHOST_F_LOG_ALL,
  ANY_LAYOUT: F.VIRTIO_F_ANY_LAYOUT,
  RING_INDIRECT_DESC: F.VIRTIO_RING_F_INDIRECT_DESC,
  RING_EVENT_IDX: F.VIRTIO_RING_F_EVENT_IDX,
  PROTOCOL_FEATURES: PROTOCOL_FEATURES_BIT,
  VERSION_1: F.VIRTIO_F_VERSION_1,
  ACCESS_PLATFORM: F.VIRTIO_F_ACCESS_PLATFORM,
  RING_PACKED: F.VIRTIO_F_RING_PACKED,
  IN_ORDER: F.VIRTIO_F_IN_ORDER,
} as const;

/** Virtio-net queue pairs a front-end may use: two vrings each, and the vring index must fit 8 bits. */
export const MAX_QUEUE_PAIRS = 32;

export interface OfferOptions {
  /** Offer VIRTIO_NET_F_MRG_RXBUF (default true). */
  mergeableRxBuffers?: boolean;
  /**
   * The largest MTU the device carries, when it announces one: then VIRTIO_NET_F_MTU is offered
   * (the front-end fills the config space `mtu` field itself, QEMU from `host_mtu=`) and, in the
   * protocol features, NET_MTU, so the front-end tells the back-end the MTU it chose.
   */
  maxMtu?: number;
  /**
   * Offer checksum and segmentation offloads both ways: the guest's transmit offloads (CSUM,
   * HOST_TSO4/6, HOST_ECN), whose requests the relay hands to the VF's kernel socket, and its
   * receive offloads (GUEST_CSUM, GUEST_TSO4/6, GUEST_ECN), through which the relay passes on the
   * kernel's description of each received frame (PACKET_VNET_HDR on both sockets).
   */
  offloads?: boolean;
}

/** The guest's transmit offloads: the bits a VM→VF frame's header may use. */
export const HOST_OFFLOAD_BITS: readonly number[] = [VirtioNetFeature.CSUM, VirtioNetFeature.HOST_TSO4, VirtioNetFeature.HOST_TSO6, VirtioNetFeature.HOST_ECN];
/** The guest's receive offloads: what a VF→VM frame's header may ask of the guest. */
export const GUEST_OFFLOAD_BITS: readonly number[] = [VirtioNetFeature.GUEST_CSUM, VirtioNetFeature.GUEST_TSO4, VirtioNetFeature.GUEST_TSO6, VirtioNetFeature.GUEST_ECN];

export function offeredFeatures(opts: OfferOptions = {}): number {
  const bits: number[] = [
    VirtioNetFeature.VERSION_1,
    VirtioNetFeature.RING_INDIRECT_DESC,
    VirtioNetFeature.RING_EVENT_IDX,
    VirtioNetFeature.ANY_LAYOUT,
    VirtioNetFeature.GUEST_ANNOUNCE,
    VirtioNetFeature.MQ,
    VirtioNetFeature.PROTOCOL_FEATURES,
    // Both directions hand every chain back in the order it was made available (TX after the
    // burst's sendmmsg, RX one used entry per buffer, dropped frames' buffers included), so the
    // promise costs nothing. DPDK's virtio PMD then takes its in-order receive path, which keeps
    // a busy guest's ring refilled where the general mergeable path let it run empty.
    VirtioNetFeature.IN_ORDER,
    // Packed rings (the front-end chooses: QEMU packed=on, DPDK packed_vq=1).
    VirtioNetFeature.RING_PACKED,
    // Live migration: QEMU sets it while migrating, with a dirty log from SET_LOG_BASE (LOG_SHMFD).
    VirtioNetFeature.LOG_ALL,
  ];
  if (opts.mergeableRxBuffers !== false) bits.push(VirtioNetFeature.MRG_RXBUF);
  if (opts.maxMtu !== undefined) bits.push(VirtioNetFeature.MTU);
  if (opts.offloads) bits.push(...HOST_OFFLOAD_BITS, ...GUEST_OFFLOAD_BITS);
  return bitsToMask(bits);
}

export function offeredProtocolFeatures(opts: OfferOptions = {}): number {
  const bits: number[] = [ProtocolFeature.MQ, ProtocolFeature.REPLY_ACK, ProtocolFeature.CONFIGURE_MEM_SLOTS, ProtocolFeature.STATUS, ProtocolFeature.LOG_SHMFD];
  if (opts.maxMtu !== undefined) bits.push(ProtocolFeature.NET_MTU);
  return bitsToMask(bits);
}

/** Names of the set bits, for logs (virtio/features.ts names them). */
export function describeFeatures(features: number): string[] {
  return F.featureNames(BigInt(features));
}

export function netHeaderLength(features: number): number {
  return hasBit(features, VirtioNetFeature.VERSION_1) || hasBit(features, VirtioNetFeature.MRG_RXBUF) ? 12 : 10;
}
