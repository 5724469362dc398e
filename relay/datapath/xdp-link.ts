// An AF_XDP port as a VfLink: receives from the sockets' RX rings (the redirect program in front
// of the stack); sends through queue 0's TX ring. When the guest's memory is part of the UMEM, a
// frame that lies in one piece of it (in several, on a multi-buffer port) is sent from there: its
// chain goes back to the guest only when the kernel has completed it (HELD). Other frames are
// copied (OffloadSender). A port that receives into guest buffers (sys/xdp-guest-rx.ts) takes the
// guest's receive chains here.
import type { FrameAdmission, FrameHandler } from '../../sys/packet-ring.js';
import { GUEST_RX_FRAME_ROOM, type XdpPortHandle } from '../../sys/xdp-socket.js';
import { XdpPort, GUEST_QUEUED, GUEST_NO_ROOM, MAX_TX_PIECES, type GuestFrameHandler } from '../../sys/xdp-port.js';
import type { DescriptorChain } from '../../virtio/descriptor-chain.js';
import { guestUmemOffset, type UmemGuestSlot } from '../../sys/xdp-umem.js';
import { OffloadSender } from './offload-sender.js';
import { HELD, NO_ROOM, REFUSED, type GuestFrame, type VfLink } from './vf-link.js';

/** postGuestChain results. */
export const POSTED = 1;
/** The fill ring or the posted table is full: the chain stays for later. */
export const POST_NO_ROOM = 0;
/** The chain cannot take a frame in place (too small, outside the UMEM): the port must copy. */
export const POST_UNFIT = -1;

export class XdpLink extends OffloadSender implements VfLink {
  readonly kind = 'af_xdp' as const;
  readonly netdev: string;
  readonly maxFrame: number;
  readonly rxFds: number[];
  readonly rxHeader = null;
  readonly rxTruncated = 0;
  private readonly port: XdpPort;
  protected readonly target: XdpPort;
  /** Where guest memory is in the UMEM (empty: every frame is copied). */
  private readonly guestSlots: readonly UmemGuestSlot[];
  /** Where the pieces of a frame sent from guest memory are, for txGuestPieces. */
  private readonly pieceAt = new Float64Array(MAX_TX_PIECES);
  private readonly pieceLength = new Uint32Array(MAX_TX_PIECES);

  constructor(netdev: string, handle: XdpPortHandle) {
    super();
    this.netdev = netdev;
    this.port = this.target = XdpPort.attach(handle);
    this.guestSlots = handle.umem.guestSlots;
    this.maxFrame = handle.maxFrameLength;
    this.rxFds = this.port.rxFds;
  }

  receive(onFrame: FrameHandler, budget: number, admit?: FrameAdmission, onGuest?: GuestFrameHandler): number {
    return this.port.receive(onFrame, budget, admit, onGuest);
  }

  /** The port can take guest receive buffers (its posted table exists, whether or not it copies now). */
  get guestReceiveTable(): boolean {
    return this.port.guestTable !== null;
  }

  /** Guest receive buffers go to the kernel (false: the port copies, for good). */
  get receivingInPlace(): boolean {
    const t = this.port.guestTable;
    return t !== null && !t.copying;
  }

  /**
   * Posts a receive chain to the fill ring when a frame can land in it in place: the header in
   * the first descriptor, then (in the same descriptor or the next) room for the largest frame in
   * one piece of guest memory inside the UMEM. The kernel never writes outside that room. With
   * `reserveOnly` the chain is checked the same way but reserved for a frame in a relay chunk.
   */
  postGuestChain(chain: DescriptorChain, hdrLen: number, key: number, availIdx: number, reserveOnly = false): number {
    if (chain.error !== null || chain.readableLength !== 0 || chain.segmentCount === 0 || chain.segLength[0] < hdrLen) return POST_UNFIT;
    const i = chain.segLength[0] === hdrLen ? 1 : 0;
    if (i >= chain.segmentCount) return POST_UNFIT;
    const skip = i === 0 ? hdrLen : 0;
    if (chain.segLength[i] - skip < GUEST_RX_FRAME_ROOM) return POST_UNFIT;
    const host = chain.segHost[i] + skip;
    const at = guestUmemOffset(this.guestSlots, host % 0x1_0000_0000 | 0, Math.floor(host / 0x1_0000_0000), GUEST_RX_FRAME_ROOM);
    if (at < 0) return POST_UNFIT;
    const fillAddress = at - this.port.rxDataOffset;
    if (fillAddress < 0) return POST_UNFIT;
    // A chain fit to post is fit for a copy too: reserved, it waits for a frame in a relay chunk.
    if (reserveOnly) return this.port.reserveCopy(key, availIdx) ? POSTED : POST_NO_ROOM;
    return this.port.postGuest(fillAddress, key, availIdx, chain.segGpa[0], chain.segGpa[i] + skip) ? POSTED : POST_NO_ROOM;
  }

  /** Whether another guest buffer could be posted now (the table and the fill ring have room). */
  get canPostGuest(): boolean {
    return this.port.guestCanPost();
  }

  publishFill(): void {
    this.port.publishFill();
  }

  /**
   * The port copies from now on; its own chunks go back to the fill ring as room allows. The size
   * of the buffer that could not take a frame in place is kept for the log (0: the guest has
   * several receive rings, or a packed one).
   */
  fallBackToCopy(unfitBufferBytes: number): void {
    this.port.guestTable?.fallBackToCopy(unfitBufferBytes);
    this.port.refillRelayChunks();
  }

  refillRelayChunks(): void {
    this.port.refillRelayChunks();
  }

  /** Guest buffers with the kernel (posted, not yet delivered). */
  get guestBuffersOut(): number {
    return this.port.guestTable?.outstanding ?? 0;
  }

  /** Chains reserved for frames in relay chunks (overflow), not yet used. */
  get reservedCopies(): number {
    return this.port.guestTable?.reserved ?? 0;
  }

  /** Relay chunks out: in the fill ring, with the kernel, or holding a frame not yet copied. */
  get relayChunksOut(): number {
    return this.port.guestTable?.relayOut ?? 0;
  }

  reserveCopy(key: number, availIdx: number): boolean {
    return this.port.reserveCopy(key, availIdx);
  }

  /** The oldest reserved chain's key (vring << 16 | head), or -1; finishCopy() once its frame is in. */
  oldestReservedCopy(): number {
    const t = this.port.guestTable;
    return t !== null && t.findCopy() ? t.foundKey : -1;
  }

  finishCopy(): void {
    this.port.guestTable!.complete();
  }

  fillQueued(): number {
    return this.port.fillQueued();
  }

  addOverflowChunks(count: number): number {
    return this.port.addOverflowChunks(count);
  }

  rxHeadIsGuest(): boolean {
    return this.port.rxHeadIsGuest();
  }

  /** See GuestRxTable.nextAvailAfterOutstanding. */
  nextAvailAfterOutstanding(vring: number): number {
    return this.port.guestTable?.nextAvailAfterOutstanding(vring) ?? -1;
  }

  rxReady(): boolean {
    return this.port.rxReady();
  }

  readKernelDrops(): number {
    return this.port.readKernelStatistics().kernelDrops;
  }

  get kernelDropsSoFar(): number {
    return this.port.counters.kernelDrops;
  }

  /**
   * The frame's bytes after the header, when the direction lets the link hold the chain and they
   * lie in guest memory inside the UMEM: handed to the kernel where they are (HELD). A port that
   * sends one descriptor per frame needs them in one buffer of at most a chunk; a multi-buffer
   * port takes them in up to MAX_TX_PIECES pieces, each buffer cut at chunk size.
   */
  protected override sendInPlace(frame: GuestFrame): number {
    if (frame.holdKey < 0 || this.guestSlots.length === 0) return REFUSED;
    const chain = frame.chain;
    const segments = chain.readableSegments;
    let skip = frame.hdrLen;
    for (let i = 0; i < segments; i++) {
      const len = chain.segLength[i];
      if (skip >= len) {
        skip -= len;
        continue;
      }
      // The layout of Linux guests and DPDK: the whole frame in the buffer after the header.
      if (len - skip >= frame.frameLength && frame.frameLength <= this.port.chunkSize) {
        const host = chain.segHost[i] + skip;
        const at = guestUmemOffset(this.guestSlots, host % 0x1_0000_0000 | 0, Math.floor(host / 0x1_0000_0000), frame.frameLength);
        if (at < 0) return REFUSED;
        return this.guestResult(this.port.txGuest(at, frame.frameLength, frame.holdKey), frame.frameLength);
      }
      return this.port.multiBuffer ? this.sendInPieces(frame, i, skip) : REFUSED;
    }
    return REFUSED;
  }

  /** A multi-buffer port: the frame from `skip` bytes into readable segment `first` on, each buffer cut at chunk size. */
  private sendInPieces(frame: GuestFrame, first: number, skip: number): number {
    const chain = frame.chain;
    const segments = chain.readableSegments;
    const chunk = this.port.chunkSize;
    let left = frame.frameLength;
    let pieces = 0;
    for (let i = first; i < segments && left > 0; i++) {
      const take = Math.min(chain.segLength[i] - skip, left);
      const host = chain.segHost[i] + skip;
      const at = guestUmemOffset(this.guestSlots, host % 0x1_0000_0000 | 0, Math.floor(host / 0x1_0000_0000), take);
      if (at < 0) return REFUSED;
      for (let done = 0; done < take; pieces++) {
        if (pieces === MAX_TX_PIECES) return REFUSED;
        const n = Math.min(chunk, take - done);
        this.pieceAt[pieces] = at + done;
        this.pieceLength[pieces] = n;
        done += n;
      }
      skip = 0;
      left -= take;
    }
    if (left > 0) return REFUSED;
    return this.guestResult(this.port.txGuestPieces(this.pieceAt, this.pieceLength, pieces, frame.holdKey), frame.frameLength);
  }

  /** What the direction hears of a frame offered to the kernel from guest memory. */
  private guestResult(r: number, length: number): number {
    if (r === GUEST_QUEUED) {
      this.counted(length);
      return HELD;
    }
    return r === GUEST_NO_ROOM ? NO_ROOM : REFUSED;
  }

  heldFrames(): number {
    return this.port.guestFramesInFlight;
  }

  returnCompleted(onDone: (key: number) => void): void {
    const port = this.port;
    const n = port.completedCount;
    if (n === 0) return;
    const keys = port.completedKeys;
    port.completedCount = 0;
    for (let i = 0; i < n; i++) onDone(keys[i]);
  }

  settleHeld(ms: number): void {
    this.port.settleGuestFrames(ms);
  }

  flush(): number {
    // Frames the kernel did not take now stay in the TX ring for the next flush: not lost.
    this.port.txFlush();
    return this.endBurst();
  }

  txPending(): boolean {
    return this.port.txPending();
  }
}
