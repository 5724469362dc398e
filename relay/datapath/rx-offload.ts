// Receive offloads: what the relay does with the virtio_net_hdr the VF's kernel wrote before a
// received frame (PACKET_VNET_HDR on the RX socket), given the receive offloads the guest
// negotiated. The kernel's header and the guest's are the same structure, so a frame the guest
// can take as it is keeps its header; otherwise the relay does in software what the guest cannot:
// completes a checksum, or cuts a GSO super-frame into TCP segments (segmentation.ts).
import {
  VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
} from '../../virtio/features.js';
import {
  VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE,
  VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
} from '../../virtio/net-header.js';
import { VNET_HDR_LEN } from '../../sys/packet-ring.js';
import { hasBit } from '../../vhost-user/messages.js';

/** Receive offloads a guest negotiated, as a small bit set (GuestSpec.rxOffloads). */
export const RX_CSUM = 1;
export const RX_TSO4 = 2;
export const RX_TSO6 = 4;
export const RX_ECN = 8;

/** The receive offload bits of a negotiated feature set. */
export function guestRxOffloads(features: number): number {
  return (hasBit(features, VIRTIO_NET_F_GUEST_CSUM) ? RX_CSUM : 0)
    | (hasBit(features, VIRTIO_NET_F_GUEST_TSO4) ? RX_TSO4 : 0)
    | (hasBit(features, VIRTIO_NET_F_GUEST_TSO6) ? RX_TSO6 : 0)
    | (hasBit(features, VIRTIO_NET_F_GUEST_ECN) ? RX_ECN : 0);
}

/** The frame has no offload state: deliver it with a plain header. */
export const RX_PLAIN = 0;
/** Deliver the frame whole with the header left in `out`. */
export const RX_PASS = 1;
/** Complete the frame's TCP/UDP checksum, then deliver it with a plain header. */
export const RX_CHECKSUM = 2;
/** Cut the frame into TCP segments of `gsoSize(kernelHeader)` payload bytes. */
export const RX_SEGMENT = 3;
/** A GSO type no guest takes and the relay cannot segment: drop the frame. */
export const RX_REFUSE = 4;

/**
 * Decides from the kernel's 10-byte header `kh` what a guest with offloads `offloads` gets, and
 * for RX_PASS writes the guest's header (VNET_HDR_LEN bytes) into `out`. The guest is never given a flag
 * or GSO type it did not negotiate.
 */
export function rxAction(kh: Uint8Array, offloads: number, out: Uint8Array): number {
  const flags = kh[0];
  const gso = kh[1];
  const type = gso & ~VIRTIO_NET_HDR_GSO_ECN;
  if (type === VIRTIO_NET_HDR_GSO_NONE) {
    if ((flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) !== 0) {
      if ((offloads & RX_CSUM) === 0) return RX_CHECKSUM;
      for (let i = 0; i < VNET_HDR_LEN; i++) out[i] = kh[i];
      return RX_PASS;
    }
    if ((flags & VIRTIO_NET_HDR_F_DATA_VALID) !== 0 && (offloads & RX_CSUM) !== 0) {
      out.fill(0, 0, VNET_HDR_LEN);
      out[0] = VIRTIO_NET_HDR_F_DATA_VALID;
      return RX_PASS;
    }
    return RX_PLAIN;
  }
  if (type !== VIRTIO_NET_HDR_GSO_TCPV4 && type !== VIRTIO_NET_HDR_GSO_TCPV6) return RX_REFUSE;
  const tso = type === VIRTIO_NET_HDR_GSO_TCPV4 ? RX_TSO4 : RX_TSO6;
  const ecnOk = (gso & VIRTIO_NET_HDR_GSO_ECN) === 0 || (offloads & RX_ECN) !== 0;
  // GUEST_TSO4/6 require GUEST_CSUM (virtio 1.2 §5.1.3.1); a guest without it gets segments.
  // The flags stay the kernel's: NEEDS_CSUM for a local sender's frame (CHECKSUM_PARTIAL),
  // DATA_VALID for one GRO merged from segments whose checksums the VF verified.
  if ((offloads & tso) !== 0 && (offloads & RX_CSUM) !== 0 && ecnOk) {
    for (let i = 0; i < VNET_HDR_LEN; i++) out[i] = kh[i];
    return RX_PASS;
  }
  return RX_SEGMENT;
}

/** The header's gso_size (little-endian, as PACKET_VNET_HDR writes it on x86 and every LE host). */
export function gsoSize(kh: Uint8Array): number {
  return kh[4] | (kh[5] << 8);
}
