// VF → guest RX vrings (vf2vm), as a worker runs it (direction.ts has what both directions share).
import { SplitQueue, RingError, DescriptorChain } from '../../virtio/split-queue.js';
import { NetRxWriter, RX_NO_BUFFERS, RX_DROPPED } from '../../virtio/net-rx.js';
import { Counter, Dir } from './counters.js';
import { flowHash } from './flow-hash.js';
import { completeL4Checksum } from './checksum.js';
import { TP_STATUS_CSUMNOTREADY } from '../../sys/packet-ring.js';
import { RX_CHECKSUM, RX_PASS, RX_PLAIN, RX_SEGMENT, gsoSize, rxAction } from './rx-offload.js';
import { TcpSegmenter } from './segmentation.js';
import { type VfLink } from './vf-link.js';
import { XdpLink, POSTED, POST_NO_ROOM } from './xdp-link.js';
import { MemifLink } from './memif-link.js';
import { NET_HEADER_LENGTH, NUM_BUFFERS_OFFSET } from '../../virtio/net-header.js';
import type { DirectionSpec, DirectionState } from './worker-protocol.js';
import { BURST, Direction, GuestQueue, type RingErrorReport } from './direction.js';

/** Longest a super-frame waits in the VF ring for enough guest buffers for its segments. */
const SEGMENT_WAIT_MS = 50;
/**
 * Guest receive buffers counted per burst at most. A packed ring must walk its descriptors to
 * count them, so the count stops here: enough for a burst and for the segments of a 64 KiB
 * super-frame at a 1,448-byte MSS (46). A split ring's count is one subtraction and ignores it.
 */
const ROOM_COUNT_LIMIT = 4 * BURST;
/**
 * Entries left in an AF_XDP fill ring below which, the guest having no more buffers to post,
 * relay chunks are added behind its buffers. Far below OVERFLOW_STEP: while relay chunks are ahead
 * in the fill ring the guest's new buffers are reserved for their frames, not posted, so the fill
 * ring holds only chunks and the guest seems to have none even when it keeps pace. Topping it up
 * at the step's level kept such a port copying for good; this low, a guest with buffers to spare
 * gets some posted behind the chunks, and once those drain, frames land in place again.
 * (A depth of the fill ring, not a number of bursts: it stayed at 64 when bursts grew to 64.)
 */
const OVERFLOW_LOW_WATER = 64;
/**
 * Relay chunks added as overflow at a time for a guest that fell behind, again while it stays
 * behind, until the port has as many out as its RX ring holds (the bound that keeps the kernel
 * from reordering, xdp-guest-rx.ts): the same depth a copying port has.
 */
const OVERFLOW_STEP = 256;

/** VF RX ring(s) → guest RX vrings. */
export class VfToVm extends Direction {
  private readonly writers: NetRxWriter[];
  private readonly onFrame: (bytes: Uint8Array, offset: number, length: number, status: number) => boolean;
  private readonly dropFrame: (bytes: Uint8Array, offset: number, length: number) => void;
  // Per-burst tallies, written by the frame callbacks.
  private packets = 0;
  private bytes = 0;
  private rxBytes = 0;
  private full = 0;
  private bad = 0;
  private dropped = 0;
  private segmented = 0;
  /**
   * Guest receive buffers left in this burst, as counted at its start minus those used since. A
   * frame may take several (mergeable buffers, or the segments of a super-frame); once none are
   * left the burst stops taking frames, which then wait in the VF ring instead of being dropped.
   */
  private roomLeft = 0;
  private failed: GuestQueue | null = null;
  private failure = '';
  /** Receive offloads the guest negotiated (rx-offload.ts bits). */
  private readonly rxOffloads: number;
  /** The link being received from, for the kernel's virtio_net_hdr of each frame (null: it writes none). */
  private link: VfLink | null = null;
  /** The header handed to the guest with a frame that keeps its offload state. */
  private readonly guestHeader = new Uint8Array(12);
  /** Built on the first GSO frame a guest without TSO receives. */
  private segmenter: TcpSegmenter | null = null;
  private readonly deliverSegment: (bytes: Uint8Array, offset: number, length: number) => void;
  /** Leaves a super-frame in the VF ring while the guest has too few buffers for its segments. */
  private readonly admit: (length: number) => boolean;
  /** When the frame at the head of the VF ring was first left waiting for buffers (0: none is). */
  private waitingSince = 0;
  /** A VM is connected but has no RX queue right now: leave VF frames in the VF ring. */
  private readonly hold: boolean;
  /**
   * Kernel ring drops of each member as last folded into this relay's counters. The totals live
   * in the packet ring's shared page, so a direction that moves to another worker continues from
   * the same numbers and counts nothing twice.
   */
  private readonly kernelDropsSeen: Float64Array;
  /**
   * Set when frames waited in the VF ring while the guest had no buffers for them, cleared at
   * each fold: kernel drops folded while it is set are the guest's doing, not the relay's.
   */
  private guestOutOfBuffers = false;
  /**
   * The AF_XDP link whose port can receive straight into this guest's buffers (xdp-guest-rx.ts):
   * the only member, with guest memory in its UMEM. A frame the kernel wrote into a posted buffer
   * only needs its header and used entry (onGuestFrame), whatever the direction does now.
   */
  private readonly guestLink: XdpLink | null = null;
  /** The guest's chains go to guestLink's fill ring: one split receive ring. */
  private readonly inPlace: boolean = false;
  private readonly onGuestFrame: (key: number, hdrGpa: number, frameGpa: number, length: number) => boolean;
  private readonly postChain = new DescriptorChain();
  private readonly hdrLen: number;
  /**
   * Every member is a memif link: its frames stay in the peer's buffers until its receive calls
   * back (writePending), so the writers may leave small frames' copies until then
   * (NetRxWriter's deferWrites). Frames reach the writers from memif only as they came: memif has
   * no offload header, so none is cut into segments or has its checksum completed on the way.
   */
  private readonly deferWrites: boolean;
  private readonly writePending: () => void;

  constructor(spec: DirectionSpec, state: DirectionState | null, counters: Float64Array, onRingError: RingErrorReport) {
    super(spec, state, counters, Dir.VfToVm, onRingError);
    const guest = spec.guest;
    this.hdrLen = guest?.hdrLen ?? 12;
    const links = this.port?.links ?? [];
    this.deferWrites = links.length > 0 && links.every((l) => l instanceof MemifLink);
    this.writers = this.queues.map(
      (q) => new NetRxWriter(q.queue, { headerLength: guest?.hdrLen ?? 12, mergeable: guest?.mergeable ?? false, deferWrites: this.deferWrites }),
    );
    // (Index loops here and in guestHasRoom: as for-of loops they allocated an iterator per call,
    // and these run per ring burst and per idle pass.)
    this.writePending = () => {
      const writers = this.writers;
      for (let i = 0; i < writers.length; i++) writers[i]!.writePending();
    };
    for (const q of this.queues) q.queue.disableNotifications();
    this.hold = spec.vmConnected && this.writers.length === 0;
    for (const link of links) {
      if (!(link instanceof XdpLink) || !link.guestReceiveTable) continue;
      if (links.length === 1 && this.writers.length > 0) this.guestLink = link;
      // A bond, several receive rings or a packed one: the port copies, for good.
      if (links.length > 1) link.fallBackToCopy(0);
    }
    if (this.guestLink !== null) {
      if (this.queues.length === 1 && this.queues[0].queue instanceof SplitQueue) this.inPlace = true;
      else this.guestLink.fallBackToCopy(0);
      // A ring resumed from its used index (its worker ended) continues after the chains the
      // kernel still holds: taking them again would hand one buffer to the kernel twice.
      for (const gq of this.queues) {
        if (!(gq.queue instanceof SplitQueue)) continue;
        const q = gq.queue;
        const next = this.guestLink.nextAvailAfterOutstanding(gq.index);
        const ahead = (next - q.lastAvail) & 0xffff;
        if (next >= 0 && ahead > 0 && ahead <= q.size) q.lastAvail = next;
      }
    }
    this.onGuestFrame = (key, hdrGpa, frameGpa, length) => {
      let q: GuestQueue | undefined;
      for (const x of this.queues) if (x.index === key >>> 16) q = x;
      if (q === undefined) {
        // Its ring stopped after an error: the VM must reset the device, which gives the ring
        // fresh buffers, so the frame is dropped.
        this.dropped++;
        return true;
      }
      const memory = this.memory!;
      const hdrLen = this.hdrLen;
      try {
        if (length < 0) {
          // The kernel put the frame elsewhere in the buffer: it goes back empty.
          this.bad++;
          q.queue.pushUsed(key & 0xffff, 0);
          return true;
        }
        const r = memory.regionIndexOfRange(hdrGpa, hdrLen);
        if (r < 0) throw new RingError(`vring ${q.index}`, `receive buffer at head ${key & 0xffff} is no longer in guest memory`);
        const bytes = memory.regions[r]!.bytes;
        const at = hdrGpa - memory.regions[r]!.guestPhysAddr;
        bytes.fill(0, at, at + hdrLen);
        if (hdrLen === NET_HEADER_LENGTH) bytes[at + NUM_BUFFERS_OFFSET] = 1;
        if (memory.dirtyLogging) {
          memory.markDirty(hdrGpa, hdrLen);
          memory.markDirty(frameGpa, length);
        }
        q.queue.pushUsed(key & 0xffff, hdrLen + length);
      } catch (err) {
        if (!(err instanceof RingError)) throw err;
        this.failed = q;
        this.failure = err.message;
        return false;
      }
      this.rxBytes += length;
      this.packets++;
      this.bytes += length;
      return true;
    };
    this.kernelDropsSeen = new Float64Array(this.port?.links.length ?? 0);
    this.port?.links.forEach((l, m) => (this.kernelDropsSeen[m] = l.kernelDropsSoFar));
    this.rxOffloads = guest?.rxOffloads ?? 0;
    this.deliverSegment = (bytes, offset, length) => this.deliver(bytes, offset, length, null);
    this.admit = (length) => {
      // With guest buffers posted, a burst takes frames beyond the guest's free buffers (those
      // in posted buffers need none): a frame to copy waits when none is left, reserved or free.
      if (this.roomLeft <= 0 && (this.guestLink === null || this.guestLink.reservedCopies === 0)) return false;
      const kh = this.link!.rxHeader;
      if (kh === null || kh[1] === 0 || rxAction(kh, this.rxOffloads, this.guestHeader) !== RX_SEGMENT) return true;
      // A segment per buffer at least. A ring never holds more than its size (and a burst counts
      // no more than ROOM_COUNT_LIMIT), so a frame that needs more gets what there is rather than
      // waiting for ever; nor does a frame wait more than SEGMENT_WAIT_MS for a guest that stops
      // refilling: then it goes, and what does not fit is dropped (and counted), as when no
      // frame waits.
      const needed = Math.min(Math.ceil(length / Math.max(1, gsoSize(kh))), this.queues[0]?.queue.size ?? 1, ROOM_COUNT_LIMIT);
      if (needed <= this.roomLeft) {
        this.waitingSince = 0;
        return true;
      }
      const now = performance.now();
      if (this.waitingSince === 0) this.waitingSince = now;
      else if (now - this.waitingSince > SEGMENT_WAIT_MS) {
        this.waitingSince = 0;
        return true;
      }
      return false;
    };
    this.onFrame = (bytes, offset, length, status) => {
      // What came from the VF: a super-frame counts once, not as the segments cut from it.
      this.rxBytes += length;
      const kh = this.link!.rxHeader;
      if (kh === null) {
        // Frames from a local stack (veth peers) carry checksums left for offload; the guest gets none.
        if ((status & TP_STATUS_CSUMNOTREADY) !== 0) completeL4Checksum(bytes, offset, length);
        this.deliver(bytes, offset, length, null);
        return this.roomLeft > 0 || this.guestLink !== null;
      }
      const action = rxAction(kh, this.rxOffloads, this.guestHeader);
      if (action === RX_PASS) this.deliver(bytes, offset, length, this.guestHeader);
      else if (action === RX_PLAIN) this.deliver(bytes, offset, length, null);
      else if (action === RX_CHECKSUM) {
        completeL4Checksum(bytes, offset, length);
        this.deliver(bytes, offset, length, null);
      } else if (action === RX_SEGMENT) this.segment(bytes, offset, length, gsoSize(kh));
      else this.bad++;
      // With guest buffers posted, admission decides per frame (frames in them need no room).
      return this.roomLeft > 0 || this.guestLink !== null;
    };
    this.dropFrame = (_bytes, _offset, length) => {
      this.dropped++;
      this.rxBytes += length;
    };
  }

  /** The writer of a stopped ring goes with it (writers and queues stay index-aligned). */
  protected override dropQueue(q: GuestQueue, message: string): void {
    const i = this.queues.indexOf(q);
    if (i < 0) return;
    this.writers.splice(i, 1);
    super.dropQueue(q, message);
  }

  /**
   * A GSO super-frame for a guest that cannot take it whole: its TCP segments go to the guest one
   * by one (counted as frames delivered); a frame the segmenter refuses is a bad frame.
   */
  private segment(bytes: Uint8Array, offset: number, length: number, mss: number): void {
    this.segmenter ??= new TcpSegmenter();
    if (this.segmenter.segment(bytes, offset, length, mss, this.deliverSegment) !== null) this.bad++;
    else this.segmented++;
  }

  private deliver(bytes: Uint8Array, offset: number, length: number, header: Uint8Array | null): void {
    const g = this.guestLink;
    if (g !== null && g.reservedCopies > 0) {
      this.deliverReserved(g, bytes, offset, length, header);
      return;
    }
    const writers = this.writers;
    const n = writers.length;
    const w = n === 1 ? writers[0] : writers[flowHash(bytes, offset, length) % n];
    let r: number;
    try {
      r = w.deliver(bytes, offset, length, header);
    } catch (err) {
      if (!(err instanceof RingError)) throw err;
      this.failed = this.queues[writers.indexOf(w)] ?? null;
      this.failure = err.message;
      this.full++;
      return;
    }
    if (r === RX_NO_BUFFERS) {
      this.full++;
      this.roomLeft = 0;
    } else if (r === RX_DROPPED) this.bad++;
    else {
      this.packets++;
      this.bytes += length;
      this.roomLeft -= r;
    }
  }

  /**
   * A frame from a relay chunk that overflowed while the guest fell behind: it goes into the
   * oldest chain reserved for such frames, which came from the avail ring before any guest buffer
   * posted behind the chunk (xdp-guest-rx.ts), so used entries keep avail order.
   */
  private deliverReserved(g: XdpLink, bytes: Uint8Array, offset: number, length: number, header: Uint8Array | null): void {
    const key = g.oldestReservedCopy();
    let i = -1;
    for (let k = 0; k < this.queues.length; k++) if (this.queues[k].index === key >>> 16) i = k;
    if (i < 0) {
      // Its ring stopped meanwhile (the chain is rewound over when the port closes).
      g.finishCopy();
      this.dropped++;
      return;
    }
    const q = this.queues[i];
    let r: number;
    try {
      (q.queue as SplitQueue).chainAt(this.postChain, key & 0xffff);
      r = this.writers[i].deliverInto(this.postChain, bytes, offset, length, header);
    } catch (err) {
      if (!(err instanceof RingError)) throw err;
      this.failed = q;
      this.failure = err.message;
      this.full++;
      return;
    }
    g.finishCopy();
    if (r === RX_DROPPED) this.bad++;
    else {
      this.packets++;
      this.bytes += length;
    }
  }

  burst(): number {
    const port = this.port;
    if (port === null || this.hold) return 0;
    this.packets = this.bytes = this.rxBytes = this.full = this.bad = this.dropped = this.segmented = 0;
    let handled = 0;
    const connected = this.writers.length > 0;
    let budget = BURST;
    if (connected) {
      // Take no more frames than the guest has buffers for (one per frame is the common case),
      // so the VF ring holds the rest instead of the relay dropping them.
      let room = 0;
      // (An index loop: a for-of here allocated an iterator per burst.)
      const queues = this.queues;
      for (let i = 0; i < queues.length; i++) {
        const q = queues[i]!;
        try {
          room += q.queue.availableCount(ROOM_COUNT_LIMIT);
        } catch (err) {
          if (err instanceof RingError) this.failed = q, (this.failure = err.message);
          else throw err;
        }
      }
      this.roomLeft = room;
      // Frames in posted guest buffers need no free one: only copies are held to the room left (admit).
      const g = this.guestLink;
      if (g === null || (!g.receivingInPlace && g.guestBuffersOut === 0)) {
        if (room < budget) budget = room;
        if (room === 0 && port.rxReady()) this.guestOutOfBuffers = true;
      }
    }
    for (let m = 0; m < port.links.length; m++) {
      const link = port.links[m];
      // Frames longer than the ring had room for are skipped by the ring, never delivered cut
      // short: each is counted here as a bad frame.
      const truncatedBefore = link.rxTruncated;
      if (connected && port.acceptsFrom(m)) {
        this.link = link;
        // Members of a bond share the guest's buffers: one that used them up leaves none to the next.
        if (link === this.guestLink) handled += this.guestLink.receive(this.onFrame, budget, this.admit, this.onGuestFrame);
        else if (budget > 0 && this.roomLeft > 0) {
          if (this.deferWrites) handled += (link as MemifLink).receive(this.onFrame, budget, this.admit, this.writePending);
          else handled += link.receive(this.onFrame, budget, this.admit);
        }
      } else {
        handled += link.receive(this.dropFrame, BURST);
      }
      const truncated = link.rxTruncated - truncatedBefore;
      if (truncated !== 0) {
        this.bad += truncated;
        handled += truncated;
      }
    }
    if (this.guestLink !== null) this.postGuestBuffers(this.guestLink);
    // The burst took all the buffers the guest had and frames still wait: the guest set the pace.
    else if (connected && this.roomLeft <= 0 && budget > 0 && port.rxReady()) this.guestOutOfBuffers = true;
    for (let i = 0; i < this.writers.length; i++) {
      const w = this.writers[i];
      // (Nothing is left by now: the link called back before its receive returned.)
      w.writePending();
      if (w.badChains !== 0) {
        this.badChain(this.queues[i], w.lastBadChain, w.badChains);
        w.badChains = 0;
      }
    }
    this.publishAll();
    if (this.failed) {
      const q = this.failed;
      this.failed = null;
      this.dropQueue(q, this.failure);
    }
    if (handled === 0) return 0;
    const c = this.counters;
    const b = this.base;
    c[b + Counter.RxPackets] += handled;
    c[b + Counter.RxBytes] += this.rxBytes;
    c[b + Counter.Packets] += this.packets;
    c[b + Counter.Bytes] += this.bytes;
    c[b + Counter.DropsQueueFull] += this.full;
    c[b + Counter.DropsBadFrame] += this.bad;
    c[b + Counter.DropsNotConnected] += this.dropped;
    c[b + Counter.RxSegmented] += this.segmented;
    return handled;
  }

  /**
   * Hands the guest's new receive chains to the kernel's fill ring, in avail order. A broken chain
   * goes back empty (counted); a chain a frame cannot land in (too small, outside the UMEM) makes
   * the port copy from then on, and stays for the copy. While the port copies, its own chunks go
   * back to the fill ring as the guest buffers still out come back.
   */
  private postGuestBuffers(link: XdpLink): void {
    if (!this.inPlace || !link.receivingInPlace) {
      link.refillRelayChunks();
      return;
    }
    const q = this.queues[0];
    if (q === undefined || !q.enabled) return;
    const queue = q.queue as SplitQueue;
    const chain = this.postChain;
    const keyBase = q.index << 16;
    let posted = 0;
    let guestEmpty = false;
    try {
      for (let n = 0; n < queue.size; n++) {
        if (!queue.popChain(chain)) {
          guestEmpty = true;
          break;
        }
        if (chain.error !== null || chain.readableLength !== 0) {
          queue.pushUsed(chain.head, 0);
          this.bad++;
          this.badChain(q, chain.error ?? `chain at head ${chain.head} has device-readable descriptors in a receive queue`);
          continue;
        }
        const key = keyBase | chain.head;
        const availIdx = (queue.lastAvail - 1) & 0xffff;
        // Relay chunks ahead in the fill ring get the older chains (their frames come first).
        const reserve = link.relayChunksOut > link.reservedCopies;
        const r = link.postGuestChain(chain, this.hdrLen, key, availIdx, reserve);
        if (r === POSTED) {
          if (!reserve) posted++;
          continue;
        }
        queue.rewind(1);
        // The main thread logs the change (it reads the port's table).
        if (r !== POST_NO_ROOM) link.fallBackToCopy(chain.writableLength);
        break;
      }
    } catch (err) {
      if (!(err instanceof RingError)) throw err;
      this.failed = q;
      this.failure = err.message;
    }
    if (posted > 0) link.publishFill();
    if (guestEmpty && link.receivingInPlace && link.fillQueued() < OVERFLOW_LOW_WATER) {
      // The guest has given all it has and the kernel is about to run out: the guest sets the
      // pace (kernel drops now are its doing), and frames go to relay chunks behind its buffers
      // to wait there for it, instead of being dropped.
      this.guestOutOfBuffers = true;
      link.addOverflowChunks(OVERFLOW_STEP);
    }
  }

  /**
   * Reads the kernel's PACKET_STATISTICS of each VF ring (one system call per member; it resets
   * on read, so only the owner of the direction reads it) and counts the frames the kernel
   * dropped because the ring was full: frames that reached the VF and never reached the relay.
   */
  foldKernelDrops(): void {
    const port = this.port;
    if (port === null) return;
    for (let m = 0; m < port.links.length; m++) {
      let total: number;
      try {
        total = port.links[m].readKernelDrops();
      } catch {
        // A statistics read that fails (a socket being torn down) must not take the worker, and
        // every relay on it, down with it; the next read catches up.
        continue;
      }
      const fresh = total - this.kernelDropsSeen[m];
      this.kernelDropsSeen[m] = total;
      if (fresh > 0) {
        this.add(Counter.DropsKernelRing, fresh);
        if (this.guestOutOfBuffers) this.add(Counter.DropsKernelRingGuestNoBuffers, fresh);
      }
    }
    this.guestOutOfBuffers = false;
  }

  /**
   * Whether a burst would move frames. Frames waiting while the guest has no buffers are not work;
   * finding them also marks the current stats interval as one the guest fell behind in, which is
   * how kernel drops get attributed (foldKernelDrops), at no extra ring read.
   */
  hasWork(): boolean {
    const port = this.port;
    if (port === null || this.hold) return false;
    const g = this.guestLink;
    if (g !== null) {
      // New guest buffers are work while they can be posted; frames are while some landed in
      // posted buffers (those come before any copy) or the guest has a buffer for a copy.
      if (this.inPlace && g.receivingInPlace && g.canPostGuest && this.guestHasRoom()) return true;
      if (this.framesCanMove(g)) return true;
      if (!port.rxReady()) return false;
      this.guestOutOfBuffers = true;
      return false;
    }
    if (!port.rxReady()) return false;
    // Frames with nowhere to go are not work: they wait in the VF ring for guest buffers.
    if (this.guestHasRoom()) return true;
    this.guestOutOfBuffers = true;
    return false;
  }

  /**
   * Whether received frames wait that a burst can move: the next one is in a guest buffer, or a
   * chain is reserved or free for a copy.
   */
  private framesCanMove(g: XdpLink): boolean {
    return this.port!.rxReady() && (g.rxHeadIsGuest() || g.reservedCopies > 0 || this.guestHasRoom());
  }

  /**
   * Whether frames have somewhere to go: a guest buffer on some receive queue, or no guest at all
   * (frames are then dropped as not connected). One load per queue: an idle poll asks this.
   */
  private guestHasRoom(): boolean {
    if (this.writers.length === 0) return true;
    const queues = this.queues;
    for (let i = 0; i < queues.length; i++) if (queues[i]!.queue.hasAvailable()) return true;
    return false;
  }

  armForSleep(): boolean {
    if (this.port === null || this.hold) return false;
    const g = this.guestLink;
    if (g !== null && this.inPlace && g.receivingInPlace) {
      // Buffers the guest adds while the worker sleeps go to the kernel: it kicks for them.
      const added = this.enableNotifications();
      return this.framesCanMove(g) || ((added || this.guestHasRoom()) && g.canPostGuest);
    }
    if (!this.port.rxReady()) return false;
    // Frames wait in the VF ring because the guest has no buffers: ask the guest to kick when
    // it adds some, and sleep on those kicks rather than on the (ready) packet socket.
    return this.enableNotifications() || this.guestHasRoom();
  }

  disarm(): void {
    for (const q of this.queues) q.queue.disableNotifications();
  }

  wakeFds(): number[] {
    // Holding: the next reconfiguration (a queue starts) wakes the worker through its own eventfd.
    if (this.port === null || this.hold) return [];
    const g = this.guestLink;
    if (g !== null && this.inPlace && g.receivingInPlace) {
      const kicks = this.queues.filter((q) => q.kickFd >= 0).map((q) => q.kickFd);
      // A frame to copy waits for a buffer: the VF's fds would wake the worker at once, for nothing.
      return this.port.rxReady() && !this.framesCanMove(g) ? kicks : [...kicks, ...g.rxFds];
    }
    if (!this.guestHasRoom()) return this.queues.filter((q) => q.kickFd >= 0).map((q) => q.kickFd);
    return this.port.links.flatMap((l) => l.rxFds);
  }

  override exportState(): DirectionState {
    this.foldKernelDrops();
    return super.exportState(0);
  }
}
