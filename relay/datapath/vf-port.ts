// The host side of a relay inside a worker: one VF, or a bond of several, each polled through its
// AF_PACKET rings. The bond decides which member sends a frame and which members' traffic is
// accepted; carrier changes come from the main thread (set-active-member), never from sysfs reads
// on the hot path.
import { PacketRing, VNET_HDR_LEN } from '../../sys/packet-ring.js';
import { PacketBatch } from '../../sys/packet-batch.js';
import { nativeBuffer, type NativeBuffer } from '../../sys/native-buffer.js';
import { flowHash } from './flow-hash.js';
import type { PortSpec } from './worker-protocol.js';

/** Frames per member batch (one sendmmsg). */
export const BATCH_FRAMES = 64;
/** A header slot in a member's header slab. */
const HEADER_SLOT = 16;

export class VfPort {
  readonly mode: PortSpec['mode'];
  readonly rings: PacketRing[];
  /** Per member: the frames of the current burst, sent with one sendmmsg on `sendFds`. */
  readonly batches: PacketBatch[];
  readonly sendFds: number[];
  /** Largest untagged frame each member's link accepts. */
  readonly maxFrame: number[];
  readonly names: string[];
  /**
   * Per member: null, or (its send socket takes a virtio_net_hdr before each frame) one header
   * slot per frame of the batch, in memory the kernel reads while sending: the relay copies each
   * guest header there once, so what the kernel reads is what the relay checked.
   */
  readonly headerSlabs: (NativeBuffer | null)[];
  private up: boolean[];
  private active: number;
  /** Next member for round-robin transmission; carried across handovers. */
  rrMember = 0;

  constructor(spec: PortSpec, rrMember = 0) {
    this.mode = spec.mode;
    this.rings = spec.members.map((m) => PacketRing.attach(m.handle));
    this.batches = spec.members.map(() => new PacketBatch(BATCH_FRAMES, 1024));
    this.headerSlabs = spec.members.map((m) => (m.handle.sendVnetHeader ? nativeBuffer(BATCH_FRAMES * HEADER_SLOT) : null));
    this.sendFds = spec.members.map((m) => m.handle.sendFd);
    this.maxFrame = spec.members.map((m) => m.handle.maxFrameLength);
    this.names = spec.members.map((m) => m.netdev);
    this.up = spec.members.map((m) => m.up);
    this.active = spec.active;
    this.rrMember = rrMember;
  }

  /** Host address of the header slot of frame `frame` in member `m`'s batch. */
  headerSlot(m: number, frame: number): number {
    return this.headerSlabs[m]!.address + frame * HEADER_SLOT;
  }

  setActive(active: number, up: boolean[]): void {
    this.active = active;
    this.up = up.slice(0, this.rings.length);
  }


  /** Member to send the next frame on, for modes that do not look at the frame; -1 when none can send. */
  txMember(): number {
    const n = this.rings.length;
    switch (this.mode) {
      case 'single':
        return 0;
      case 'active-backup':
        return this.up[this.active] ? this.active : -1;
      case 'round-robin':
        for (let tries = 0; tries < n; tries++) {
          const m = this.rrMember;
          this.rrMember = m + 1 === n ? 0 : m + 1;
          if (this.up[m]) return m;
        }
        return -1;
      default:
        return -1;
    }
  }

  /** Member for a frame in balance mode: a flow hash over the members with carrier. */
  balanceMember(frame: Uint8Array, offset: number, length: number): number {
    const n = this.rings.length;
    let upCount = 0;
    for (let i = 0; i < n; i++) if (this.up[i]) upCount++;
    if (upCount === 0) return -1;
    let pick = flowHash(frame, offset, length) % upCount;
    for (let i = 0; i < n; i++) {
      if (!this.up[i]) continue;
      if (pick-- === 0) return i;
    }
    return -1;
  }

  memberUp(i: number): boolean {
    return this.up[i] === true;
  }

  /** Whether frames received on member `i` belong to the relay (active-backup listens to the active one only). */
  acceptsFrom(i: number): boolean {
    return this.mode !== 'active-backup' || i === this.active;
  }
}
