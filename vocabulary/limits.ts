// The limits every layer shares. One copy each, so the daemon, the control channels, the tools
// and the scheduler refuse the same values with the same bounds.

/** Relay ids are 0..MAX_RELAYS-1: the workers keep 64-bit relay sets, as the original daemon did. */
export const MAX_RELAYS = 64;

/** Far above any real machine; stops a typo such as "1-99999999" from building a huge CPU array. */
export const MAX_CPU_ID = 4095;

/** sun_path holds 108 bytes including the terminating NUL. */
export const MAX_SOCKET_PATH_BYTES = 107;

/**
 * The MTU a jumbo relay (VIRTIOFWD_JUMBO) gives its VFs and offers its VMs (VIRTIO_NET_F_MTU):
 * frames of 9014 bytes, 9018 with a VLAN tag.
 */
export const JUMBO_MTU = 9000;

/** Ring pairs a memif client relay creates at most (`rings`); its memory grows with them. */
export const MEMIF_MAX_CLIENT_RINGS = 16;

/** Whether `v` is a ring count a memif client may ask for: an integer in [1, MEMIF_MAX_CLIENT_RINGS]. */
export function isMemifRingCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 1 && v <= MEMIF_MAX_CLIENT_RINGS;
}

/** Why a ring count goes with the client role only (port control, the registry and the CLI say it alike). */
export const MEMIF_RINGS_CLIENT_ONLY = 'rings is for the client role: a server takes as many rings as its client adds';
