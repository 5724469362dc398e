// Guest TX vrings → VF (vm2vf), as a worker runs it (direction.ts has what both directions share).
import { RingError, DescriptorChain } from '../../virtio/split-queue.js';
import { Counter, Dir } from './counters.js';
import { QUEUED, NO_ROOM, HELD, type GuestFrame, type VfLink } from './vf-link.js';
import type { DirectionSpec, DirectionState } from './worker-protocol.js';
import { BURST, Direction, GuestQueue, type RingErrorReport } from './direction.js';

/** How long a direction leaving a thread waits for the kernel to complete the frames it sent from guest memory. */
const HELD_SETTLE_MS = 20;
const ETH_HEADER = 14;

/** Guest TX vrings → VF TX ring. */
export class VmToVf extends Direction {
  private readonly chain = new DescriptorChain();
  /** First bytes of a frame, for the balance bond's flow hash; the links' scratch for headers. */
  private readonly scratch = new Uint8Array(64);
  /** The frame being queued, as the links see it (one object, refilled per frame). */
  private readonly frame: GuestFrame;
  private readonly heads = new Uint32Array(BURST);
  /** 1 where the chain taken was held by its link (it goes back to the guest later). */
  private readonly held = new Uint8Array(BURST);
  private readonly hdrLen: number;
  /** The guest negotiated transmit offloads: its headers go to the VF socket as they are. */
  private readonly hostOffloads: boolean;
  /**
   * Links may hold chains until the kernel is done with them (AF_XDP over guest memory): split
   * rings only, whose used entries may come in any order; a packed ring's used slots follow the
   * order chains were taken in.
   */
  private readonly mayHold: boolean;
  /** The links that can hold chains. */
  private readonly holders: VfLink[];
  private readonly returnChain: (key: number) => void;
  private returnedAny = false;
  private rrQueue: number;

  constructor(spec: DirectionSpec, state: DirectionState | null, counters: Float64Array, onRingError: RingErrorReport) {
    super(spec, state, counters, Dir.VmToVf, onRingError);
    this.hdrLen = spec.guest?.hdrLen ?? 12;
    this.hostOffloads = spec.guest?.hostOffloads === true;
    this.rrQueue = state?.rrQueue ?? 0;
    this.frame = { chain: this.chain, hdrLen: this.hdrLen, frameLength: 0, hostOffloads: this.hostOffloads, holdKey: -1 };
    this.mayHold = spec.guest?.packed !== true && this.port !== null && this.port.mode !== 'broadcast';
    this.holders = this.port?.links.filter((l) => l.returnCompleted !== undefined) ?? [];
    // A held chain's key is its vring index and head; a chain of a ring dropped meanwhile has nowhere to go.
    this.returnChain = (key) => {
      const index = key >>> 16;
      const queues = this.queues;
      for (let i = 0; i < queues.length; i++) {
        const q = queues[i];
        if (q.index !== index) continue;
        try {
          q.queue.pushUsed(key & 0xffff, 0);
          this.returnedAny = true;
        } catch (err) {
          if (err instanceof RingError) this.dropQueue(q, err.message);
          else throw err;
        }
        return;
      }
    };
    for (const q of this.queues) q.queue.disableNotifications();
  }

  /** Gives the guest back the chains whose frames the kernel has completed. */
  private returnHeld(): void {
    const holders = this.holders;
    for (let i = 0; i < holders.length; i++) holders[i].returnCompleted!(this.returnChain);
    if (this.returnedAny) {
      this.returnedAny = false;
      this.publishAll();
    }
  }

  private heldFrames(): number {
    let n = 0;
    const holders = this.holders;
    for (let i = 0; i < holders.length; i++) n += holders[i].heldFrames!();
    return n;
  }

  burst(): number {
    // Frames an AF_XDP port could not hand to the kernel in an earlier burst go first. (Index
    // loops: these for-of loops allocated an iterator per burst, measured.)
    const port = this.port;
    if (port !== null) {
      const links = port.links;
      for (let i = 0; i < links.length; i++) if (links[i]!.txPending()) links[i]!.flush();
    }
    const holders = this.holders;
    if (holders.length > 0) {
      // Completions only come back through a reap: an idle burst does one.
      for (let i = 0; i < holders.length; i++) if (holders[i]!.heldFrames!() > 0) holders[i]!.flush();
      this.returnHeld();
    }
    const n = this.queues.length;
    if (n === 0) return 0;
    let handled = 0;
    for (let k = 0; k < n; k++) {
      const q = this.queues[(this.rrQueue + k) % n];
      if (q === undefined) continue;
      try {
        handled += this.drain(q);
      } catch (err) {
        if (err instanceof RingError) this.dropQueue(q, err.message);
        else throw err;
      }
    }
    this.rrQueue = n > 0 ? (this.rrQueue + 1) % n : 0;
    return handled;
  }

  /**
   * Takes up to a burst of chains from one TX vring and hands their frames to the VF with one
   * sendmmsg per member: the kernel gathers each frame straight from guest memory. Chains go back
   * to the guest (used, length 0) only after the kernel has copied them.
   */
  private drain(q: GuestQueue): number {
    const queue = q.queue;
    // No count first: popChain says when the ring is empty (a packed ring would walk its
    // descriptors twice), and a split ring's index check happens inside it.
    const budget = BURST;
    const chain = this.chain;
    const port = this.port;
    const heads = this.heads;
    const hdrLen = this.hdrLen;
    let taken = 0;
    let rxBytes = 0;
    let notConnected = 0;
    let bad = 0;
    let full = 0;
    const held = this.held;
    const hold = this.mayHold;
    for (; taken < budget; ) {
      if (!queue.popChain(chain)) break;
      heads[taken++] = chain.head;
      // A broken chain is counted as such whether or not its frame could have gone anywhere.
      if (chain.error !== null || chain.writableLength !== 0) {
        bad++;
        this.badChain(q, chain.error ?? `chain at head ${chain.head} has device-writable descriptors in a transmit queue`);
        continue;
      }
      if (port === null || !q.enabled) {
        notConnected++;
        continue;
      }
      const frameLength = chain.readableLength - hdrLen;
      if (frameLength < ETH_HEADER) {
        bad++;
        continue;
      }
      rxBytes += frameLength;
      this.frame.frameLength = frameLength;
      this.frame.holdKey = hold ? (q.index << 16) | chain.head : -1;
      if (port.broadcast) {
        let any = false;
        for (let m = 0; m < port.links.length; m++) {
          if (port.memberUp(m) && port.links[m].queueFrame(this.frame, this.scratch) === QUEUED) any = true;
        }
        if (!any) notConnected++;
        continue;
      }
      let m: number;
      if (port.balance) {
        const peek = frameLength < 64 ? frameLength : 64;
        chain.copyOut(hdrLen, this.scratch, 0, peek);
        m = port.balanceMember(this.scratch, 0, peek);
      } else m = port.txMember();
      if (m < 0) notConnected++;
      else {
        const r = port.links[m].queueFrame(this.frame, this.scratch);
        if (r === HELD) held[taken - 1] = 1;
        else if (r === NO_ROOM) full++;
        else if (r !== QUEUED) bad++;
      }
    }
    if (taken === 0) return 0;
    let packets = 0;
    let bytes = 0;
    if (port !== null) {
      const broadcast = port.broadcast;
      let frames = 0;
      for (let m = 0; m < port.links.length; m++) {
        const link = port.links[m];
        const sent = link.flush();
        if (broadcast) {
          // One guest frame went to every member: count it once, as sent when the best member took it.
          frames = Math.max(frames, sent + link.flushDropped);
          if (sent > packets) {
            packets = sent;
            bytes = link.flushedBytes;
          }
        } else {
          packets += sent;
          bytes += link.flushedBytes;
          full += link.flushDropped;
        }
      }
      if (broadcast) full = frames - packets;
    }
    for (let i = 0; i < taken; i++) {
      if (held[i] === 0) queue.pushUsed(heads[i], 0);
      else held[i] = 0;
    }
    q.publish();
    if (this.holders.length > 0) this.returnHeld();
    const c = this.counters;
    const b = this.base;
    c[b + Counter.RxPackets] += taken;
    c[b + Counter.RxBytes] += rxBytes;
    c[b + Counter.Packets] += packets;
    c[b + Counter.Bytes] += bytes;
    c[b + Counter.DropsNotConnected] += notConnected;
    c[b + Counter.DropsBadFrame] += bad;
    c[b + Counter.DropsQueueFull] += full;
    return taken;
  }

  hasWork(): boolean {
    const queues = this.queues;
    for (let i = 0; i < queues.length; i++) {
      if (queues[i].queue.hasAvailable()) return true;
    }
    const port = this.port;
    if (port !== null) for (let m = 0; m < port.links.length; m++) if (port.links[m].txPending()) return true;
    // Held chains come back only when a burst reaps their completions: no sleeping on them.
    return this.holders.length > 0 && this.heldFrames() > 0;
  }

  armForSleep(): boolean {
    const added = this.enableNotifications();
    return added || (this.holders.length > 0 && this.heldFrames() > 0);
  }

  disarm(): void {
    for (const q of this.queues) q.queue.disableNotifications();
  }

  wakeFds(): number[] {
    return this.queues.filter((q) => q.kickFd >= 0).map((q) => q.kickFd);
  }

  /** Held chains go back to the guest before the direction leaves this thread (see XdpPort.settleGuestFrames). */
  override exportState(): DirectionState {
    if (this.holders.length > 0) {
      for (const link of this.holders) link.settleHeld!(HELD_SETTLE_MS);
      this.returnHeld();
    }
    return super.exportState(this.rrQueue);
  }
}
