// The virtio and protocol feature sets this back-end offers. They are a pure function of the
// device options, so a restarted daemon offers exactly what the front-end saw before (QEMU refuses
// a back-end whose features shrank).
import { ProtocolFeature, PROTOCOL_FEATURES_BIT, bitsToMask, hasBit } from './messages.js';

export const VirtioNetFeature = {
  CSUM: 0,
  GUEST_CSUM: 1,
  MTU: 3,
  MAC: 5,
  MRG_RXBUF: 15,
  STATUS: 16,
  CTRL_VQ: 17,
  GUEST_ANNOUNCE: 21,
  MQ: 22,
  LOG_ALL: 26,
  ANY_LAYOUT: 27,
  RING_INDIRECT_DESC: 28,
  RING_EVENT_IDX: 29,
  PROTOCOL_FEATURES: PROTOCOL_FEATURES_BIT,
  VERSION_1: 32,
  ACCESS_PLATFORM: 33,
  RING_PACKED: 34,
  IN_ORDER: 35,
} as const;

/** Virtio-net queue pairs a front-end may use: two vrings each, and the vring index must fit 8 bits. */
export const MAX_QUEUE_PAIRS = 32;

export interface OfferOptions {
  /** Offer VIRTIO_NET_F_MRG_RXBUF (default true). */
  mergeableRxBuffers?: boolean;
}

export function offeredFeatures(opts: OfferOptions = {}): number {
  const bits: number[] = [
    VirtioNetFeature.VERSION_1,
    VirtioNetFeature.RING_INDIRECT_DESC,
    VirtioNetFeature.RING_EVENT_IDX,
    VirtioNetFeature.ANY_LAYOUT,
    VirtioNetFeature.GUEST_ANNOUNCE,
    VirtioNetFeature.MQ,
    VirtioNetFeature.PROTOCOL_FEATURES,
  ];
  if (opts.mergeableRxBuffers !== false) bits.push(VirtioNetFeature.MRG_RXBUF);
  return bitsToMask(bits);
}

export function offeredProtocolFeatures(): number {
  return bitsToMask([ProtocolFeature.MQ, ProtocolFeature.REPLY_ACK]);
}

const featureNames = new Map<number, string>(Object.entries(VirtioNetFeature).map(([n, b]) => [b, n]));

/** Names of the set bits, for logs. */
export function describeFeatures(features: number): string[] {
  const names: string[] = [];
  for (let bit = 0; bit < 53; bit++) if (hasBit(features, bit)) names.push(featureNames.get(bit) ?? `bit${bit}`);
  return names;
}

export function netHeaderLength(features: number): number {
  return hasBit(features, VirtioNetFeature.VERSION_1) || hasBit(features, VirtioNetFeature.MRG_RXBUF) ? 12 : 10;
}
