// An AF_XDP port as a VfLink: receives from the sockets' RX rings (the redirect program in front
// of the stack); sends through queue 0's TX ring. When the guest's memory is part of the UMEM, a
// frame that lies in one piece of it is sent from there: its chain goes back to the guest only
// when the kernel has completed it (HELD). Other frames are copied (OffloadSender).
import type { FrameAdmission, FrameHandler } from '../../sys/packet-ring.js';
import { XdpPort, GUEST_QUEUED, GUEST_NO_ROOM, type XdpPortHandle } from '../../sys/xdp-socket.js';
import { guestUmemOffset, type UmemGuestSlot } from '../../sys/xdp-umem.js';
import { OffloadSender } from './offload-sender.js';
import { HELD, NO_ROOM, REFUSED, type GuestFrame, type VfLink } from './vf-link.js';

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

  constructor(netdev: string, handle: XdpPortHandle) {
    super();
    this.netdev = netdev;
    this.port = this.target = XdpPort.attach(handle);
    this.guestSlots = handle.umem.guestSlots;
    this.maxFrame = handle.maxFrameLength;
    this.rxFds = this.port.rxFds;
  }

  receive(onFrame: FrameHandler, budget: number, admit?: FrameAdmission): number {
    return this.port.receive(onFrame, budget, admit);
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
   * The frame's bytes after the header, when they are one piece of guest memory inside the UMEM
   * and the direction lets the link hold the chain: handed to the kernel where they are (HELD).
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
      if (len - skip < frame.frameLength) return REFUSED;
      const at = guestUmemOffset(this.guestSlots, chain.segHost[i] + skip, frame.frameLength);
      if (at < 0) return REFUSED;
      const r = this.port.txGuest(at, frame.frameLength, frame.holdKey);
      if (r === GUEST_QUEUED) {
        this.counted(frame.frameLength);
        return HELD;
      }
      return r === GUEST_NO_ROOM ? NO_ROOM : REFUSED;
    }
    return REFUSED;
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
