// The host side of a relay inside a worker: one VF, or a bond of several, each a VfLink (an
// AF_PACKET or AF_XDP port). The bond decides which member sends a frame and which members'
// traffic is accepted; carrier changes come from the main thread (set-active-member), never from
// sysfs reads on the hot path.
import { PacketLink, isXdpHandle, type VfHandle, type VfLink } from './vf-link.js';
import { XdpLink } from './xdp-link.js';
import { MemoryLink, isMemoryHandle } from './memory-link.js';
import { MemifLink, isMemifHandle } from './memif-link.js';
import { flowHash } from './flow-hash.js';
import type { PortSpec } from './worker-protocol.js';

/** The link for a member's port handle. */
function openLink(netdev: string, handle: VfHandle): VfLink {
  if (isXdpHandle(handle)) return new XdpLink(netdev, handle);
  if (isMemoryHandle(handle)) return new MemoryLink(netdev, handle);
  if (isMemifHandle(handle)) return new MemifLink(netdev, handle);
  return new PacketLink(netdev, handle);
}

/** The bonding modes as literals: a mode that came in a worker message is mapped to one of these. */
const MODES: readonly PortSpec['mode'][] = ['single', 'active-backup', 'round-robin', 'broadcast', 'balance'];

export class VfPort {
  /**
   * One of MODES, never the string from the message: that one is not interned, so every
   * comparison with a literal would be a call, and the data path makes them per frame.
   */
  readonly mode: PortSpec['mode'];
  /** Every member sends each frame. */
  readonly broadcast: boolean;
  /** A flow hash of each frame picks its member. */
  readonly balance: boolean;
  readonly links: VfLink[];
  private up: boolean[];
  private active: number;
  /** Next member for round-robin transmission; carried across handovers. */
  rrMember = 0;

  constructor(spec: PortSpec, rrMember = 0) {
    const mode = MODES.find((m) => m === spec.mode);
    if (mode === undefined) throw new Error(`unknown bonding mode ${JSON.stringify(spec.mode)}`);
    this.mode = mode;
    this.broadcast = mode === 'broadcast';
    this.balance = mode === 'balance';
    this.links = spec.members.map((m) => openLink(m.netdev, m.handle));
    this.up = spec.members.map((m) => m.up);
    this.active = spec.active;
    this.rrMember = rrMember;
  }

  /** Whether frames wait in any member's receive ring (a load or two per member, no system call). */
  rxReady(): boolean {
    const links = this.links;
    for (let m = 0; m < links.length; m++) if (links[m].rxReady()) return true;
    return false;
  }

  /** The direction is gone: each link gives back what it took. */
  release(): void {
    for (const link of this.links) link.release?.();
  }

  setActive(active: number, up: boolean[]): void {
    this.active = active;
    this.up = up.slice(0, this.links.length);
  }


  /** Member to send the next frame on, for modes that do not look at the frame; -1 when none can send. */
  txMember(): number {
    const n = this.links.length;
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
    const n = this.links.length;
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
