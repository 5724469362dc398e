// Sending for links whose port carries no offload metadata (AF_XDP, memif): every frame is copied
// into a buffer of the port, a guest's checksum request is completed there, and its super-frames
// are cut into TCP segments, each a frame of its own. A link may first try to send a frame
// without a copy (sendInPlace: AF_XDP over guest memory).
import { VNET_HDR_LEN } from '../../sys/packet-ring.js';
import { VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_F_NEEDS_CSUM } from '../../virtio/net-header.js';
import { completeL4Checksum } from './checksum.js';
import { TcpSegmenter } from './segmentation.js';
import { CopyingLinkTally, QUEUED, NO_ROOM, REFUSED, fitsLink, type GuestFrame } from './vf-link.js';

/** Largest frame a guest may hand us: 64 KiB plus Ethernet and VLAN headers. */
const MAX_GUEST_FRAME = 65562;
/** The smallest segment size Linux's TCP uses (TCP_MIN_MSS). */
const TCP_MIN_MSS = 88;

/** What a copying link needs of its port: a free buffer, a way to queue what was written there, and how many are free. */
export interface CopyTarget {
  /** `length`: the frame to be written (a port may give a larger buffer for one that needs it). */
  txSlot(length?: number): { bytes: Uint8Array; offset: number; capacity: number } | null;
  txCommit(length: number): boolean;
  txFree(): number;
}

export abstract class OffloadSender extends CopyingLinkTally {
  abstract readonly maxFrame: number;
  /** Set by the subclass's constructor. */
  protected abstract readonly target: CopyTarget;
  /** A super-frame is gathered here before it is cut into segments. */
  private superFrame: Uint8Array | null = null;
  private segmenter: TcpSegmenter | null = null;
  private segmentsLost = 0;
  private readonly queueSegment = (bytes: Uint8Array, offset: number, length: number): void => {
    const slot = this.target.txSlot(length);
    if (slot === null || length > slot.capacity) {
      this.segmentsLost++;
      return;
    }
    slot.bytes.set(bytes.subarray(offset, offset + length), slot.offset);
    if (!this.target.txCommit(length)) this.segmentsLost++;
  };

  /**
   * A frame that needs nothing of the relay (no checksum to complete), offered before it is
   * copied: a link that can send it where it is returns QUEUED, HELD or NO_ROOM; REFUSED means
   * "copy it". By default every frame is copied.
   */
  protected sendInPlace(_frame: GuestFrame): number {
    return REFUSED;
  }

  /** Sends the frame in place when the link can, else copies it, completing its checksum or cutting it into segments when the guest's header asks. */
  queueFrame(frame: GuestFrame, header: Uint8Array): number {
    const chain = frame.chain;
    let needsChecksum = false;
    if (frame.hostOffloads) {
      // The header is read where it is when the chain's first buffer holds it whole (it nearly
      // always does); each of its fields is read once, so a guest rewriting it meanwhile changes
      // nothing but its own frame.
      let h = header;
      let at = 0;
      if (chain.readableSegments > 0 && chain.segLength[0]! >= VNET_HDR_LEN) {
        h = chain.segBytes[0]!;
        at = chain.segOffset[0]!;
      } else if (chain.copyOut(0, header, 0, VNET_HDR_LEN) !== VNET_HDR_LEN) return REFUSED;
      if (h[at + 1] !== VIRTIO_NET_HDR_GSO_NONE) return this.queueSegments(frame, h[at + 4]! | (h[at + 5]! << 8));
      needsChecksum = (h[at]! & VIRTIO_NET_HDR_F_NEEDS_CSUM) !== 0;
    }
    if (!fitsLink(frame, this.maxFrame, header, VNET_HDR_LEN)) return REFUSED;
    if (!needsChecksum) {
      const r = this.sendInPlace(frame);
      if (r !== REFUSED) return r;
    }
    const length = frame.frameLength;
    const slot = this.target.txSlot(length);
    if (slot === null) return NO_ROOM;
    // A buffer shorter than the frame (a memif peer's choice): dropped, never cut short.
    if (length > slot.capacity || chain.copyOut(frame.hdrLen, slot.bytes, slot.offset, length) !== length) return REFUSED;
    if (needsChecksum && !completeL4Checksum(slot.bytes, slot.offset, length)) return REFUSED;
    if (!this.target.txCommit(length)) return REFUSED;
    this.counted(length);
    return QUEUED;
  }

  /** A guest super-frame (GSO): its TCP segments, each complete, go into buffers one by one. */
  private queueSegments(frame: GuestFrame, mss: number): number {
    const length = frame.frameLength;
    // Linux sends no segment smaller than TCP_MIN_MSS; a smaller size would only turn one chain
    // into hundreds of frames. All the segments go in this burst or none does.
    if (length > MAX_GUEST_FRAME || mss < TCP_MIN_MSS) return REFUSED;
    if (this.target.txFree() < Math.ceil(length / mss)) return NO_ROOM;
    this.superFrame ??= new Uint8Array(MAX_GUEST_FRAME);
    this.segmenter ??= new TcpSegmenter();
    if (frame.chain.copyOut(frame.hdrLen, this.superFrame, 0, length) !== length) return REFUSED;
    const lostBefore = this.segmentsLost;
    if (this.segmenter.segment(this.superFrame, 0, length, mss, this.queueSegment, this.maxFrame) !== null) return REFUSED;
    if (this.segmentsLost !== lostBefore) return NO_ROOM;
    // Counted as the guest's one frame, as when the kernel segments it behind an AF_PACKET socket.
    this.counted(length);
    return QUEUED;
  }
}
