// Virtqueue layouts: split (virtio 1.2 §2.7) and packed (§2.8). Byte offsets and flags shared
// by the device side, the driver side and the test ring builders, so all agree on one definition.

export const VRING_DESC_F_NEXT = 1;
export const VRING_DESC_F_WRITE = 2;
export const VRING_DESC_F_INDIRECT = 4;

/** avail.flags: the driver asks not to be interrupted (flag-based suppression). */
export const VRING_AVAIL_F_NO_INTERRUPT = 1;
/** used.flags: the device asks not to be kicked (flag-based suppression). */
export const VRING_USED_F_NO_NOTIFY = 1;

export const DESC_SIZE = 16;
export const DESC_TABLE_ALIGN = 16;
export const AVAIL_RING_ALIGN = 2;
export const USED_RING_ALIGN = 4;
export const MAX_SPLIT_QUEUE_SIZE = 32768;

export const descTableBytes = (size: number): number => DESC_SIZE * size;
/** flags, idx, ring[size], used_event. */
export const availRingBytes = (size: number): number => 6 + 2 * size;
/** flags, idx, ring[size] of {id, len}, avail_event. */
export const usedRingBytes = (size: number): number => 6 + 8 * size;

/** Byte offset of used_event inside the avail ring. */
export const usedEventOffset = (size: number): number => 4 + 2 * size;
/** Byte offset of avail_event inside the used ring. */
export const availEventOffset = (size: number): number => 4 + 8 * size;
/** Byte offset of used.ring[slot] inside the used ring. */
export const usedEntryOffset = (slot: number): number => 4 + 8 * slot;

export function isValidSplitQueueSize(size: number): boolean {
  return Number.isInteger(size) && size > 0 && size <= MAX_SPLIT_QUEUE_SIZE && (size & (size - 1)) === 0;
}

/**
 * `vring_need_event` of the virtio spec: whether moving an index from `oldIdx` to `newIdx`
 * crosses the other side's event index. All arithmetic wraps at 2^16, so garbage event values
 * give a yes/no answer and nothing else.
 */
export function vringNeedEvent(eventIdx: number, newIdx: number, oldIdx: number): boolean {
  return ((newIdx - eventIdx - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
}

/** Packed descriptor flags: the driver's and the device's wrap-counter bits. */
export const VRING_PACKED_DESC_F_AVAIL = 1 << 7;
export const VRING_PACKED_DESC_F_USED = 1 << 15;
/** Event suppression area (driver's and device's): off_wrap u16, flags u16. */
export const PACKED_EVENT_BYTES = 4;
export const VRING_PACKED_EVENT_FLAG_ENABLE = 0;
export const VRING_PACKED_EVENT_FLAG_DISABLE = 1;
/** Only with EVENT_IDX: notify when the ring reaches the slot (and wrap) in off_wrap. */
export const VRING_PACKED_EVENT_FLAG_DESC = 2;

/** A packed ring may have any size up to 32768 (virtio 1.2 §2.8.10.1: no power of two needed). */
export function isValidPackedQueueSize(size: number): boolean {
  return Number.isInteger(size) && size > 0 && size <= MAX_SPLIT_QUEUE_SIZE;
}

export const IS_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
