// A memif interface as the relay's host side (sys/memif-rings.ts has the rings, sys/memif-control.ts
// the connection). Frames from the peer are delivered in place from its buffers; frames from the
// guest are copied into memif buffers. memif carries no offload metadata, so a guest's checksum
// request is completed here and its super-frames are cut into segments, as for AF_XDP.
// While no peer is connected the port receives nothing and every frame sent to it is dropped as
// "queue full" (the relay reports no carrier meanwhile).
import type { FrameAdmission, FrameHandler } from '../../sys/packet-ring.js';
import { VNET_HDR_LEN } from '../../sys/packet-ring.js';
import { MemifPort, type MemifPortHandle } from '../../sys/memif-rings.js';
import { VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_F_NEEDS_CSUM } from '../../virtio/net-header.js';
import { completeL4Checksum } from './checksum.js';
import { TcpSegmenter } from './segmentation.js';
import { CopyingLinkTally, QUEUED, NO_ROOM, REFUSED, fitsLink, type GuestFrame, type VfLink } from './vf-link.js';

/** Largest frame a guest may hand us: 64 KiB plus Ethernet and VLAN headers. */
const MAX_GUEST_FRAME = 65562;
/** The smallest segment size Linux's TCP uses (TCP_MIN_MSS). */
const TCP_MIN_MSS = 88;

export function isMemifHandle(h: unknown): h is MemifPortHandle {
  return (h as MemifPortHandle).kind === 'memif';
}

export class MemifLink extends CopyingLinkTally implements VfLink {
  readonly kind = 'memif' as const;
  readonly netdev: string;
  readonly maxFrame: number;
  readonly rxFds: number[];
  readonly rxHeader = null;
  readonly rxTruncated = 0;
  private readonly port: MemifPort;
  private superFrame: Uint8Array | null = null;
  private segmenter: TcpSegmenter | null = null;
  private readonly queueSegment: (bytes: Uint8Array, offset: number, length: number) => void;
  private segmentsLost = 0;

  constructor(netdev: string, handle: MemifPortHandle) {
    super();
    this.netdev = netdev;
    this.port = MemifPort.attach(handle);
    this.maxFrame = handle.maxFrameLength;
    this.rxFds = this.port.rxFds;
    this.queueSegment = (bytes, offset, length) => {
      const slot = this.port.txSlot();
      if (slot === null || length > slot.capacity) {
        this.segmentsLost++;
        return;
      }
      slot.bytes.set(bytes.subarray(offset, offset + length), slot.offset);
      if (!this.port.txCommit(length)) this.segmentsLost++;
    };
  }

  receive(onFrame: FrameHandler, budget: number, admit?: FrameAdmission): number {
    return this.port.receive(onFrame, budget, admit);
  }

  rxReady(): boolean {
    return this.port.rxReady();
  }

  /** memif has no drop count of its own: a full ring makes the peer wait or drop on its side. */
  readKernelDrops(): number {
    return 0;
  }

  readonly kernelDropsSoFar = 0;

  queueFrame(frame: GuestFrame, header: Uint8Array): number {
    const chain = frame.chain;
    let needsChecksum = false;
    if (frame.hostOffloads) {
      if (chain.copyOut(0, header, 0, VNET_HDR_LEN) !== VNET_HDR_LEN) return REFUSED;
      if (header[1] !== VIRTIO_NET_HDR_GSO_NONE) return this.queueSegments(frame, header[4] | (header[5] << 8));
      needsChecksum = (header[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM) !== 0;
    }
    if (!fitsLink(frame, this.maxFrame, header, VNET_HDR_LEN)) return REFUSED;
    const slot = this.port.txSlot();
    if (slot === null) return NO_ROOM;
    const length = frame.frameLength;
    // A buffer shorter than the frame (the peer's choice in the server role): dropped, never cut.
    if (length > slot.capacity || chain.copyOut(frame.hdrLen, slot.bytes, slot.offset, length) !== length) return REFUSED;
    if (needsChecksum && !completeL4Checksum(slot.bytes, slot.offset, length)) return REFUSED;
    if (!this.port.txCommit(length)) return REFUSED;
    this.counted(length);
    return QUEUED;
  }

  private queueSegments(frame: GuestFrame, mss: number): number {
    const length = frame.frameLength;
    if (length > MAX_GUEST_FRAME || mss < TCP_MIN_MSS) return REFUSED;
    if (this.port.txFree() < Math.ceil(length / mss)) return NO_ROOM;
    this.superFrame ??= new Uint8Array(MAX_GUEST_FRAME);
    this.segmenter ??= new TcpSegmenter();
    if (frame.chain.copyOut(frame.hdrLen, this.superFrame, 0, length) !== length) return REFUSED;
    const lostBefore = this.segmentsLost;
    if (this.segmenter.segment(this.superFrame, 0, length, mss, this.queueSegment, this.maxFrame) !== null) return REFUSED;
    if (this.segmentsLost !== lostBefore) return NO_ROOM;
    this.counted(length);
    return QUEUED;
  }

  flush(): number {
    this.port.txFlush();
    return this.endBurst();
  }

  txPending(): boolean {
    return false;
  }
}
