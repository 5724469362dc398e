// One VF as the data path sees it, whatever kind of port it is: a burst of received frames handed
// over in place, frames queued from guest memory and sent together, a wait handle, and the
// kernel's drop count. This file has the interface and PacketLink (AF_PACKET: receives from a
// TPACKET_V3 ring; sends with one sendmmsg per burst, the kernel gathering each frame straight
// from guest memory, with a virtio_net_hdr before each frame when VIRTIOFWD_TSO lets the kernel
// segment and checksum). The others: xdp-link.ts (AF_XDP), memif-link.ts, memory-link.ts (tests);
// offload-sender.ts is the sending side the AF_XDP and memif links share.
import { PacketRing, VNET_HDR_LEN, type PacketRingHandle, type FrameHandler, type FrameAdmission } from '../../sys/packet-ring.js';
import { PacketBatch } from '../../sys/packet-batch.js';
import { nativeBuffer, releaseNativeBuffer, type NativeBuffer } from '../../sys/native-buffer.js';
import type { XdpPortHandle } from '../../sys/xdp-socket.js';
import type { DescriptorChain } from '../../virtio/descriptor-chain.js';
import { VIRTIO_NET_HDR_GSO_NONE } from '../../virtio/net-header.js';
import type { MemoryLinkHandle } from './memory-link.js';
import type { MemifPortHandle } from '../../sys/memif-rings.js';

/** Frames per member batch (one sendmmsg). */
export const BATCH_FRAMES = 64;
/** A header slot in a member's header slab. */
const HEADER_SLOT = 16;
/** queueFrame results. */
export const QUEUED = 1;
/** No room left in this burst (the frame is dropped and counted as a full queue). */
export const NO_ROOM = 0;
/** The frame cannot be sent as it is (too long, malformed offload request): a bad frame. */
export const REFUSED = -1;
/**
 * Queued to be sent from guest memory: the chain must not go back to the guest yet. The link
 * returns the frame's holdKey once the kernel has completed it (returnCompleted).
 */
export const HELD = 2;

export type PortKind = 'af_packet' | 'af_xdp' | 'memory' | 'memif';

/** A VF's open port as the main thread hands it to workers: plain data (memory links: for unit tests). */
export type VfHandle = PacketRingHandle | XdpPortHandle | MemoryLinkHandle | MemifPortHandle;

export function isXdpHandle(handle: VfHandle): handle is XdpPortHandle {
  return (handle as XdpPortHandle).kind === 'af_xdp';
}

export function isPacketRingHandle(handle: VfHandle): handle is PacketRingHandle {
  return (handle as { kind?: string }).kind === undefined;
}

/** Where a frame to send is: the chain, and how to reach its bytes. */
export interface GuestFrame {
  chain: DescriptorChain;
  /** Bytes of virtio-net header before the frame in the chain. */
  hdrLen: number;
  frameLength: number;
  /** The guest negotiated transmit offloads: its header may ask for a checksum or segmentation. */
  hostOffloads: boolean;
  /** ≥ 0: the link may keep the chain until the kernel is done with it, and hand this back then; −1: it may not. */
  holdKey: number;
}

export interface VfLink {
  readonly kind: PortKind;
  readonly netdev: string;
  /** Largest untagged frame the link accepts (tagged frames get 4 bytes more). */
  readonly maxFrame: number;
  /** With a kernel virtio_net_hdr per received frame: the delivered frame's, during onFrame. */
  readonly rxHeader: Uint8Array | null;
  /** Frames skipped because they were longer than the ring had room for (cumulative). */
  readonly rxTruncated: number;
  /** fds that become readable when frames arrive. */
  readonly rxFds: number[];
  receive(onFrame: FrameHandler, budget: number, admit?: FrameAdmission): number;
  rxReady(): boolean;
  /** Frames the kernel dropped for want of room in the receive ring, cumulative (a system call). */
  readKernelDrops(): number;
  /** The same count as of the last read (no system call). */
  readonly kernelDropsSoFar: number;
  /** Queues one frame for this burst's send. */
  queueFrame(frame: GuestFrame, scratch: Uint8Array): number;
  /** Sends what was queued; `flushedBytes` and `flushDropped` then tell the bytes sent and the frames lost. */
  flush(): number;
  readonly flushedBytes: number;
  readonly flushDropped: number;
  /** Frames queued in an earlier burst that the kernel has not taken yet (a later flush sends them). */
  txPending(): boolean;
  /** Links that can hold frames (HELD): how many are held now. */
  heldFrames?(): number;
  /** Hands the holdKey of each held frame the kernel has completed to `onDone`. */
  returnCompleted?(onDone: (key: number) => void): void;
  /** Waits up to `ms` for held frames, then hands back every one still held (see XdpPort.settleGuestFrames). */
  settleHeld?(ms: number): void;
  /** The direction that used the link is gone: native memory it took goes back for reuse. */
  release?(): void;
}

/**
 * The send-side tally of links that copy each frame into a ring of their own (AF_XDP, memory):
 * what they queued in this burst is what their flush() reports as sent.
 */
export abstract class CopyingLinkTally {
  flushedBytes = 0;
  flushDropped = 0;
  private queued = 0;
  private queuedBytes = 0;

  protected counted(length: number): void {
    this.queued++;
    this.queuedBytes += length;
  }

  /** Ends the burst's tally: its bytes go to flushedBytes, its frame count is returned. */
  protected endBurst(): number {
    const sent = this.queued;
    this.flushedBytes = this.queuedBytes;
    this.flushDropped = 0;
    this.queued = this.queuedBytes = 0;
    return sent;
  }
}


/** Whether a frame `frameLength` long fits a link whose untagged maximum is `maxFrame` (VLAN tag: 4 more). */
export function fitsLink(frame: GuestFrame, maxFrame: number, scratch: Uint8Array, at: number): boolean {
  if (frame.frameLength <= maxFrame) return true;
  if (frame.frameLength > maxFrame + 4) return false;
  frame.chain.copyOut(frame.hdrLen + 12, scratch, at, 2);
  const type = (scratch[at] << 8) | scratch[at + 1];
  return type === 0x8100 || type === 0x88a8;
}

export class PacketLink implements VfLink {
  readonly kind = 'af_packet' as const;
  readonly netdev: string;
  readonly maxFrame: number;
  readonly rxFds: number[];
  private readonly ring: PacketRing;
  private readonly batch = new PacketBatch(BATCH_FRAMES, 1024);
  private readonly sendFd: number;
  /**
   * null, or (the send socket takes a virtio_net_hdr before each frame) one header slot per frame
   * of the batch, in memory the kernel reads while sending: each guest header is copied there once,
   * so what the kernel reads is what the relay checked.
   */
  private readonly headerSlab: NativeBuffer | null;
  flushedBytes = 0;
  flushDropped = 0;

  constructor(netdev: string, handle: PacketRingHandle) {
    this.netdev = netdev;
    this.ring = PacketRing.attach(handle);
    this.sendFd = handle.sendFd;
    this.headerSlab = handle.sendVnetHeader ? nativeBuffer(BATCH_FRAMES * HEADER_SLOT) : null;
    this.maxFrame = handle.maxFrameLength;
    this.rxFds = [handle.rxFd];
  }

  release(): void {
    this.batch.release();
    if (this.headerSlab) releaseNativeBuffer(this.headerSlab);
  }

  get rxHeader(): Uint8Array | null {
    return this.ring.rxHeader;
  }

  get rxTruncated(): number {
    return this.ring.rxTruncated;
  }

  receive(onFrame: FrameHandler, budget: number, admit?: FrameAdmission): number {
    return this.ring.receive(onFrame, budget, admit);
  }

  rxReady(): boolean {
    return this.ring.rxReady();
  }

  readKernelDrops(): number {
    return this.ring.readKernelStatistics().kernelDrops;
  }

  get kernelDropsSoFar(): number {
    return this.ring.counters.kernelDrops;
  }

  /**
   * Adds the frame (everything after the virtio-net header) to the batch as pieces of guest
   * memory. When the socket takes a virtio_net_hdr per frame (VIRTIOFWD_TSO), the frame is
   * preceded by the guest's header if it negotiated transmit offloads (the kernel then checksums
   * and segments it, and validates the header as it does a tap device's), else by an empty one.
   */
  queueFrame(frame: GuestFrame, header: Uint8Array): number {
    const slab = this.headerSlab;
    const chain = frame.chain;
    let segmented = false;
    if (slab !== null) {
      if (frame.hostOffloads) {
        if (chain.copyOut(0, header, 0, VNET_HDR_LEN) !== VNET_HDR_LEN) return REFUSED;
        segmented = header[1] !== VIRTIO_NET_HDR_GSO_NONE;
      } else header.fill(0, 0, VNET_HDR_LEN);
    }
    // Longer than the VF's MTU allows: dropped, never cut short. A frame the kernel is asked to
    // segment may be as long as a chain is allowed to be.
    if (!segmented && !fitsLink(frame, this.maxFrame, header, VNET_HDR_LEN)) return REFUSED;
    const batch = this.batch;
    const pieces = chain.readableSegments + (slab !== null ? 1 : 0);
    if (!batch.hasRoom(pieces)) {
      // Unusually fragmented chains can fill the batch before the burst ends: send what we have.
      if (batch.count === 0) return REFUSED;
      this.sendBatch();
      if (!batch.hasRoom(pieces)) return REFUSED;
    }
    if (slab !== null) {
      // The frame's own slot: the kernel reads it during this burst's sendmmsg.
      const slot = slab.address + batch.count * HEADER_SLOT;
      const bytes = slab.bytes;
      // Byte by byte: no subarray per frame on the send path.
      for (let i = 0, at = slot - slab.address; i < VNET_HDR_LEN; i++) bytes[at + i] = header[i];
      batch.addPieceWords(slot % 0x1_0000_0000 | 0, Math.floor(slot / 0x1_0000_0000), VNET_HDR_LEN);
    }
    // The chain's segments carry their host addresses (virtio/ translated them once, with its
    // bounds checks): the kernel reads the frame from there.
    const segments = chain.readableSegments;
    let skip = frame.hdrLen;
    for (let i = 0; i < segments; i++) {
      const len = chain.segLength[i];
      if (skip >= len) {
        skip -= len;
        continue;
      }
      const at = chain.segHost[i] + skip;
      batch.addPieceWords(at % 0x1_0000_0000 | 0, Math.floor(at / 0x1_0000_0000), len - skip);
      skip = 0;
    }
    batch.endFrame();
    return QUEUED;
  }

  /** A mid-burst send: what it sent is added to this burst's figures. */
  private sentEarly = 0;
  private bytesEarly = 0;
  private droppedEarly = 0;

  private sendBatch(): number {
    const batch = this.batch;
    const queued = batch.count;
    const sent = batch.send(this.sendFd);
    this.sentEarly += sent;
    this.bytesEarly += batch.takenBytes - (this.headerSlab !== null ? VNET_HDR_LEN * sent : 0);
    this.droppedEarly += queued - sent;
    return sent;
  }

  flush(): number {
    if (this.batch.count > 0) this.sendBatch();
    const sent = this.sentEarly;
    this.flushedBytes = this.bytesEarly;
    this.flushDropped = this.droppedEarly;
    this.sentEarly = this.bytesEarly = this.droppedEarly = 0;
    return sent;
  }

  txPending(): boolean {
    return false;
  }
}
