// Sending for links whose port carries no offload metadata (AF_XDP, memif): every frame is copied
// into a buffer of the port, a guest's checksum request is completed there, and its super-frames
// are cut into TCP segments, each a frame of its own. A link may first try to send a frame
// without a copy (sendInPlace: AF_XDP over guest memory).
import { VNET_HDR_LEN } from '../../sys/packet-ring.js';
import { copyBytes } from '../../virtio/descriptor-chain.js';
import { VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_F_NEEDS_CSUM } from '../../virtio/net-header.js';
import { completeL4Checksum } from './checksum.js';
import { TcpSegmenter } from './segmentation.js';
import { CopyingLinkTally, QUEUED, NO_ROOM, REFUSED, fitsLink, type GuestFrame } from './vf-link.js';

/** Largest frame a guest may hand us: 64 KiB plus Ethernet and VLAN headers. */
const MAX_GUEST_FRAME = 65562;
/** The smallest segment size Linux's TCP uses (TCP_MIN_MSS). */
const TCP_MIN_MSS = 88;
/** Copies kept for writeDeferred at most (a burst has fewer); one more writes them all first. */
const DEFERRED_COPIES = 256;
/** Longest frame whose copy may wait: the waits matter for small frames, bandwidth for big ones. */
const DEFERRED_FRAME_BYTES = 256;
const NO_BYTES = new Uint8Array(0);

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
  /**
   * Copy small frames when the burst is sent (writeDeferred), not as they are queued: set by a
   * link whose buffers nobody reads before its flush publishes them, and which calls
   * writeDeferred there. The guest's buffers stay the relay's until after the flush (its used
   * entries go back then). Why: NetRxWriter's DEFERRED_WRITES; the lines a frame goes into were
   * last read by the peer's CPU, and stores to them overlap only in a row.
   */
  protected deferCopies = false;
  private readonly copyFrom: Uint8Array[] = [];
  private readonly copyFromAt = new Float64Array(DEFERRED_COPIES);
  private readonly copyLength = new Float64Array(DEFERRED_COPIES);
  private readonly copyTo: Uint8Array[] = [];
  private readonly copyToAt = new Float64Array(DEFERRED_COPIES);
  private copies = 0;
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
    if (length > slot.capacity) return REFUSED;
    // (Within the untagged maximum: the port then reads nothing of the frame before the copy.)
    if (this.deferCopies && !needsChecksum && length <= DEFERRED_FRAME_BYTES && length <= this.maxFrame && this.deferCopy(frame, slot.bytes, slot.offset, length)) {
      if (!this.target.txCommit(length)) {
        this.copies--;
        return REFUSED;
      }
      this.counted(length);
      return QUEUED;
    }
    if (chain.copyOut(frame.hdrLen, slot.bytes, slot.offset, length) !== length) return REFUSED;
    if (needsChecksum && !completeL4Checksum(slot.bytes, slot.offset, length)) return REFUSED;
    if (!this.target.txCommit(length)) return REFUSED;
    this.counted(length);
    return QUEUED;
  }

  /**
   * Keeps the copy of a frame that lies in one guest buffer (after its header, in the same
   * buffer or the next) for writeDeferred; false when it does not, for a copy now.
   */
  private deferCopy(frame: GuestFrame, to: Uint8Array, toAt: number, length: number): boolean {
    const chain = frame.chain;
    const hdrLen = frame.hdrLen;
    let s = 0;
    let skip = hdrLen;
    if (chain.readableSegments > 1 && chain.segLength[0]! === hdrLen) {
      s = 1;
      skip = 0;
    }
    if (s >= chain.readableSegments || chain.segLength[s]! < skip + length) return false;
    if (this.copies === DEFERRED_COPIES) this.writeDeferred();
    if (this.copyFrom.length === 0) {
      for (let k = 0; k < DEFERRED_COPIES; k++) this.copyFrom.push(NO_BYTES), this.copyTo.push(NO_BYTES);
    }
    const k = this.copies++;
    this.copyFrom[k] = chain.segBytes[s]!;
    this.copyFromAt[k] = chain.segOffset[s]! + skip;
    this.copyLength[k] = length;
    this.copyTo[k] = to;
    this.copyToAt[k] = toAt;
    return true;
  }

  /** Does the copies queueFrame left (deferCopies): call it before the port publishes the burst. */
  protected writeDeferred(): void {
    const n = this.copies;
    const from = this.copyFrom;
    const fromAt = this.copyFromAt;
    const length = this.copyLength;
    const to = this.copyTo;
    const toAt = this.copyToAt;
    for (let k = 0; k < n; k++) copyBytes(from[k]!, fromAt[k]!, to[k]!, toAt[k]!, length[k]!);
    this.copies = 0;
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
