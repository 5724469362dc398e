// Virtio and vhost-user feature bits. Constants are bit numbers; masks are BigInt because the
// virtio feature word is 64 bits wide. Masks live on the control path only: the data path takes
// the few booleans it needs (event index, indirect, header length) when a queue is built.

// Device-independent bits (virtio 1.2 §6) and vhost additions.
export const VIRTIO_F_NOTIFY_ON_EMPTY = 24;
export const VHOST_F_LOG_ALL = 26;
export const VIRTIO_F_ANY_LAYOUT = 27;
export const VIRTIO_RING_F_INDIRECT_DESC = 28;
export const VIRTIO_RING_F_EVENT_IDX = 29;
export const VHOST_USER_F_PROTOCOL_FEATURES = 30;
export const VIRTIO_F_VERSION_1 = 32;
export const VIRTIO_F_ACCESS_PLATFORM = 33;
/** Older name of ACCESS_PLATFORM. */
export const VIRTIO_F_IOMMU_PLATFORM = VIRTIO_F_ACCESS_PLATFORM;
export const VIRTIO_F_RING_PACKED = 34;
export const VIRTIO_F_IN_ORDER = 35;
export const VIRTIO_F_ORDER_PLATFORM = 36;
export const VIRTIO_F_SR_IOV = 37;
export const VIRTIO_F_NOTIFICATION_DATA = 38;
export const VIRTIO_F_RING_RESET = 40;

// virtio-net device bits (virtio 1.2 §5.1.3).
export const VIRTIO_NET_F_CSUM = 0;
export const VIRTIO_NET_F_GUEST_CSUM = 1;
export const VIRTIO_NET_F_CTRL_GUEST_OFFLOADS = 2;
export const VIRTIO_NET_F_MTU = 3;
export const VIRTIO_NET_F_MAC = 5;
export const VIRTIO_NET_F_GSO = 6;
export const VIRTIO_NET_F_GUEST_TSO4 = 7;
export const VIRTIO_NET_F_GUEST_TSO6 = 8;
export const VIRTIO_NET_F_GUEST_ECN = 9;
export const VIRTIO_NET_F_GUEST_UFO = 10;
export const VIRTIO_NET_F_HOST_TSO4 = 11;
export const VIRTIO_NET_F_HOST_TSO6 = 12;
export const VIRTIO_NET_F_HOST_ECN = 13;
export const VIRTIO_NET_F_HOST_UFO = 14;
export const VIRTIO_NET_F_MRG_RXBUF = 15;
export const VIRTIO_NET_F_STATUS = 16;
export const VIRTIO_NET_F_CTRL_VQ = 17;
export const VIRTIO_NET_F_CTRL_RX = 18;
export const VIRTIO_NET_F_CTRL_VLAN = 19;
export const VIRTIO_NET_F_CTRL_RX_EXTRA = 20;
export const VIRTIO_NET_F_GUEST_ANNOUNCE = 21;
export const VIRTIO_NET_F_MQ = 22;
export const VIRTIO_NET_F_CTRL_MAC_ADDR = 23;
export const VIRTIO_NET_F_HASH_REPORT = 57;
export const VIRTIO_NET_F_RSS = 60;
export const VIRTIO_NET_F_RSC_EXT = 61;
export const VIRTIO_NET_F_STANDBY = 62;
export const VIRTIO_NET_F_SPEED_DUPLEX = 63;

// vhost-user protocol feature bits (negotiated with GET/SET_PROTOCOL_FEATURES).
export const VHOST_USER_PROTOCOL_F_MQ = 0;
export const VHOST_USER_PROTOCOL_F_LOG_SHMFD = 1;
export const VHOST_USER_PROTOCOL_F_RARP = 2;
export const VHOST_USER_PROTOCOL_F_REPLY_ACK = 3;
export const VHOST_USER_PROTOCOL_F_NET_MTU = 4;
export const VHOST_USER_PROTOCOL_F_SLAVE_REQ = 5;
export const VHOST_USER_PROTOCOL_F_CROSS_ENDIAN = 6;
export const VHOST_USER_PROTOCOL_F_CRYPTO_SESSION = 7;
export const VHOST_USER_PROTOCOL_F_PAGEFAULT = 8;
export const VHOST_USER_PROTOCOL_F_CONFIG = 9;
export const VHOST_USER_PROTOCOL_F_SLAVE_SEND_FD = 10;
export const VHOST_USER_PROTOCOL_F_HOST_NOTIFIER = 11;
export const VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD = 12;
export const VHOST_USER_PROTOCOL_F_RESET_DEVICE = 13;
export const VHOST_USER_PROTOCOL_F_INBAND_NOTIFICATIONS = 14;
export const VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS = 15;
export const VHOST_USER_PROTOCOL_F_STATUS = 16;

const FEATURE_NAMES: ReadonlyMap<number, string> = new Map([
  [VIRTIO_NET_F_CSUM, 'CSUM'],
  [VIRTIO_NET_F_GUEST_CSUM, 'GUEST_CSUM'],
  [VIRTIO_NET_F_CTRL_GUEST_OFFLOADS, 'CTRL_GUEST_OFFLOADS'],
  [VIRTIO_NET_F_MTU, 'MTU'],
  [VIRTIO_NET_F_MAC, 'MAC'],
  [VIRTIO_NET_F_GSO, 'GSO'],
  [VIRTIO_NET_F_GUEST_TSO4, 'GUEST_TSO4'],
  [VIRTIO_NET_F_GUEST_TSO6, 'GUEST_TSO6'],
  [VIRTIO_NET_F_GUEST_ECN, 'GUEST_ECN'],
  [VIRTIO_NET_F_GUEST_UFO, 'GUEST_UFO'],
  [VIRTIO_NET_F_HOST_TSO4, 'HOST_TSO4'],
  [VIRTIO_NET_F_HOST_TSO6, 'HOST_TSO6'],
  [VIRTIO_NET_F_HOST_ECN, 'HOST_ECN'],
  [VIRTIO_NET_F_HOST_UFO, 'HOST_UFO'],
  [VIRTIO_NET_F_MRG_RXBUF, 'MRG_RXBUF'],
  [VIRTIO_NET_F_STATUS, 'STATUS'],
  [VIRTIO_NET_F_CTRL_VQ, 'CTRL_VQ'],
  [VIRTIO_NET_F_CTRL_RX, 'CTRL_RX'],
  [VIRTIO_NET_F_CTRL_VLAN, 'CTRL_VLAN'],
  [VIRTIO_NET_F_CTRL_RX_EXTRA, 'CTRL_RX_EXTRA'],
  [VIRTIO_NET_F_GUEST_ANNOUNCE, 'GUEST_ANNOUNCE'],
  [VIRTIO_NET_F_MQ, 'MQ'],
  [VIRTIO_NET_F_CTRL_MAC_ADDR, 'CTRL_MAC_ADDR'],
  [VIRTIO_F_NOTIFY_ON_EMPTY, 'NOTIFY_ON_EMPTY'],
  [VHOST_F_LOG_ALL, 'LOG_ALL'],
  [VIRTIO_F_ANY_LAYOUT, 'ANY_LAYOUT'],
  [VIRTIO_RING_F_INDIRECT_DESC, 'INDIRECT_DESC'],
  [VIRTIO_RING_F_EVENT_IDX, 'EVENT_IDX'],
  [VHOST_USER_F_PROTOCOL_FEATURES, 'PROTOCOL_FEATURES'],
  [VIRTIO_F_VERSION_1, 'VERSION_1'],
  [VIRTIO_F_ACCESS_PLATFORM, 'ACCESS_PLATFORM'],
  [VIRTIO_F_RING_PACKED, 'RING_PACKED'],
  [VIRTIO_F_IN_ORDER, 'IN_ORDER'],
  [VIRTIO_F_ORDER_PLATFORM, 'ORDER_PLATFORM'],
  [VIRTIO_F_SR_IOV, 'SR_IOV'],
  [VIRTIO_F_NOTIFICATION_DATA, 'NOTIFICATION_DATA'],
  [VIRTIO_F_RING_RESET, 'RING_RESET'],
  [VIRTIO_NET_F_HASH_REPORT, 'HASH_REPORT'],
  [VIRTIO_NET_F_RSS, 'RSS'],
  [VIRTIO_NET_F_RSC_EXT, 'RSC_EXT'],
  [VIRTIO_NET_F_STANDBY, 'STANDBY'],
  [VIRTIO_NET_F_SPEED_DUPLEX, 'SPEED_DUPLEX'],
]);

const PROTOCOL_FEATURE_NAMES: ReadonlyMap<number, string> = new Map([
  [VHOST_USER_PROTOCOL_F_MQ, 'MQ'],
  [VHOST_USER_PROTOCOL_F_LOG_SHMFD, 'LOG_SHMFD'],
  [VHOST_USER_PROTOCOL_F_RARP, 'RARP'],
  [VHOST_USER_PROTOCOL_F_REPLY_ACK, 'REPLY_ACK'],
  [VHOST_USER_PROTOCOL_F_NET_MTU, 'NET_MTU'],
  [VHOST_USER_PROTOCOL_F_SLAVE_REQ, 'SLAVE_REQ'],
  [VHOST_USER_PROTOCOL_F_CROSS_ENDIAN, 'CROSS_ENDIAN'],
  [VHOST_USER_PROTOCOL_F_CRYPTO_SESSION, 'CRYPTO_SESSION'],
  [VHOST_USER_PROTOCOL_F_PAGEFAULT, 'PAGEFAULT'],
  [VHOST_USER_PROTOCOL_F_CONFIG, 'CONFIG'],
  [VHOST_USER_PROTOCOL_F_SLAVE_SEND_FD, 'SLAVE_SEND_FD'],
  [VHOST_USER_PROTOCOL_F_HOST_NOTIFIER, 'HOST_NOTIFIER'],
  [VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD, 'INFLIGHT_SHMFD'],
  [VHOST_USER_PROTOCOL_F_RESET_DEVICE, 'RESET_DEVICE'],
  [VHOST_USER_PROTOCOL_F_INBAND_NOTIFICATIONS, 'INBAND_NOTIFICATIONS'],
  [VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS, 'CONFIGURE_MEM_SLOTS'],
  [VHOST_USER_PROTOCOL_F_STATUS, 'STATUS'],
]);

function checkBit(bit: number): void {
  if (!Number.isInteger(bit) || bit < 0 || bit > 63) throw new Error(`feature bit ${bit} is not in 0..63`);
}

/** The 64-bit mask with the given bits set. */
export function featureMask(...bits: number[]): bigint {
  let mask = 0n;
  for (const bit of bits) {
    checkBit(bit);
    mask |= 1n << BigInt(bit);
  }
  return mask;
}

export function hasFeature(mask: bigint, bit: number): boolean {
  checkBit(bit);
  return ((mask >> BigInt(bit)) & 1n) === 1n;
}

/** Builds a 64-bit mask from the two u32 halves of a wire value. */
export function maskFromWords(low: number, high: number): bigint {
  return (BigInt(high >>> 0) << 32n) | BigInt(low >>> 0);
}

/** Splits a 64-bit mask into u32 halves for a wire encoder. */
export function maskToWords(mask: bigint): { low: number; high: number } {
  if (mask < 0n || mask >= 1n << 64n) throw new Error(`feature mask 0x${mask.toString(16)} is not a u64`);
  return { low: Number(mask & 0xffff_ffffn), high: Number(mask >> 32n) };
}

function names(mask: bigint, table: ReadonlyMap<number, string>): string[] {
  const out: string[] = [];
  for (let bit = 0; bit < 64; bit++) {
    if (((mask >> BigInt(bit)) & 1n) === 1n) out.push(table.get(bit) ?? `bit${bit}`);
  }
  return out;
}

/** Virtio feature names for logs; unknown bits appear as `bitN`. */
export function featureNames(mask: bigint): string[] {
  return names(mask, FEATURE_NAMES);
}

/** vhost-user protocol feature names for logs; unknown bits appear as `bitN`. */
export function protocolFeatureNames(mask: bigint): string[] {
  return names(mask, PROTOCOL_FEATURE_NAMES);
}

/** The negotiated bits the data path cares about, decoded once when a vring starts. */
export interface RingFeatures {
  eventIdx: boolean;
  indirect: boolean;
  version1: boolean;
  mergeableRxBuffers: boolean;
  logAll: boolean;
}

export function ringFeatures(mask: bigint): RingFeatures {
  return {
    eventIdx: hasFeature(mask, VIRTIO_RING_F_EVENT_IDX),
    indirect: hasFeature(mask, VIRTIO_RING_F_INDIRECT_DESC),
    version1: hasFeature(mask, VIRTIO_F_VERSION_1),
    mergeableRxBuffers: hasFeature(mask, VIRTIO_NET_F_MRG_RXBUF),
    logAll: hasFeature(mask, VHOST_F_LOG_ALL),
  };
}
