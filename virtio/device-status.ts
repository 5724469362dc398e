// The virtio device status byte (virtio 1.2 §2.1): written by the driver, seen by the VMM's
// transport (vmm/devices/virtio-mmio.ts) and, with PROTOCOL_F_STATUS, by a vhost-user back-end.
export const STATUS_ACKNOWLEDGE = 1;
export const STATUS_DRIVER = 2;
export const STATUS_DRIVER_OK = 4;
export const STATUS_FEATURES_OK = 8;
export const STATUS_NEEDS_RESET = 0x40;
export const STATUS_FAILED = 0x80;

const NAMES: readonly [number, string][] = [
  [STATUS_ACKNOWLEDGE, 'ACKNOWLEDGE'],
  [STATUS_DRIVER, 'DRIVER'],
  [STATUS_DRIVER_OK, 'DRIVER_OK'],
  [STATUS_FEATURES_OK, 'FEATURES_OK'],
  [STATUS_NEEDS_RESET, 'DEVICE_NEEDS_RESET'],
  [STATUS_FAILED, 'FAILED'],
];

/** Names of the bits set in `status`, for logs. */
export function statusNames(status: number): string[] {
  return NAMES.filter(([bit]) => (status & bit) !== 0).map(([, name]) => name);
}
