// A memif interface as the relay's host side (sys/memif-rings.ts has the rings, sys/memif-control.ts
// the connection). Frames from the peer are delivered in place from its buffers; frames from the
// guest are copied into memif buffers. memif carries no offload metadata, so a guest's checksum
// request is completed here and its super-frames are cut into segments, as for AF_XDP.
// While no peer is connected the port receives nothing and every frame sent to it is dropped as
// "queue full" (the relay reports no carrier meanwhile). A peer with several receive queues has a
// ring for each: a frame goes on the ring its flow hashes to, as a NIC's RSS would spread it, so
// each flow stays in order on one of the peer's queues.
import type { FrameAdmission, FrameHandler } from '../../sys/packet-ring.js';
import { MemifPort, type MemifPortHandle } from '../../sys/memif-rings.js';
import { OffloadSender } from './offload-sender.js';
import { flowHash } from './flow-hash.js';
import type { GuestFrame, VfLink } from './vf-link.js';

/** Bytes of a frame's headers read for its flow hash (Ethernet, a VLAN tag, IPv6, TCP). */
const FLOW_HEADER_BYTES = 64;

export function isMemifHandle(h: unknown): h is MemifPortHandle {
  return (h as MemifPortHandle).kind === 'memif';
}

export class MemifLink extends OffloadSender implements VfLink {
  readonly kind = 'memif' as const;
  readonly netdev: string;
  readonly maxFrame: number;
  readonly rxFds: number[];
  readonly rxHeader = null;
  readonly rxTruncated = 0;
  private readonly port: MemifPort;
  protected readonly target: MemifPort;
  private readonly flowHeader = new Uint8Array(FLOW_HEADER_BYTES);

  constructor(netdev: string, handle: MemifPortHandle) {
    super();
    this.netdev = netdev;
    this.port = this.target = MemifPort.attach(handle);
    // The peer reads a buffer only once txFlush publishes it (flush, below).
    this.deferCopies = true;
    this.maxFrame = handle.maxFrameLength;
    this.rxFds = this.port.rxFds;
  }

  /** Picks the frame's ring by its flow when the peer has several, then sends it (OffloadSender). */
  override queueFrame(frame: GuestFrame, header: Uint8Array): number {
    const rings = this.port.txRingCount;
    if (rings > 1) {
      const n = frame.chain.copyOut(frame.hdrLen, this.flowHeader, 0, Math.min(frame.frameLength, FLOW_HEADER_BYTES));
      this.port.selectTxRing(flowHash(this.flowHeader, 0, n) % rings);
    }
    return super.queueFrame(frame, header);
  }

  /** `beforeRelease`: see MemifPort.receive (frames stay in the peer's buffers until it returns). */
  receive(onFrame: FrameHandler, budget: number, admit?: FrameAdmission, beforeRelease?: () => void): number {
    return this.port.receive(onFrame, budget, admit, beforeRelease);
  }

  rxReady(): boolean {
    return this.port.rxReady();
  }

  /** memif has no drop count of its own: a full ring makes the peer wait or drop on its side. */
  readKernelDrops(): number {
    return 0;
  }

  readonly kernelDropsSoFar = 0;

  flush(): number {
    this.writeDeferred();
    this.port.txFlush();
    return this.endBurst();
  }

  txPending(): boolean {
    return false;
  }
}
