// The device side of a virtqueue as the relay drives it, split or packed: both classes have the
// same methods, so the data path and NetRxWriter work on either without knowing which.
import type { PackedQueue } from './packed-queue.js';
import type { SplitQueue } from './split-queue.js';

export type DeviceQueue = SplitQueue | PackedQueue;
