// One relay: a vhost-user socket (with the VM's session behind it) joined to a VF or a bond. This
// object is the NetDevice the vhost-user session drives; it turns ring and memory events into
// direction specs for the workers, and it owns the VF packet rings. Every change to what the
// workers run goes through `reconfigure`, one at a time, so a direction is always detached (and its
// ring state saved) before it is attached again.
import type { Logger } from 'pino';
import { isXdpHandle, type VfHandle } from '../datapath/vf-link.js';
import { isMemifHandle } from '../datapath/memif-link.js';
import { GUEST_RX_FRAME_ROOM, xdpUmemKind, xdpZeroCopy, type XdpPortHandle } from '../../sys/xdp-socket.js';
import { xdpFramesInPlace, xdpLeftovers } from '../../sys/xdp-port.js';
import { guestRxFallback, postedGuestBuffers, releaseGuestRxTable, type PostedGuestBuffer } from '../../sys/xdp-guest-rx.js';
import { addToDetached, Counter, Dir } from '../datapath/counters.js';
import type { XdpGuestRegion } from '../../sys/xdp-umem.js';
import type { VfPortChoice } from '../config/types.js';
import type { RingOpener } from './ring-opener.js';
import { linkHasCarrier, linkMaxMtu, linkMtu, setLinkMtu } from '../../sys/netdev.js';
import { JUMBO_MTU } from '../../vocabulary/limits.js';
import { numaNodeOfAddress } from '../../sys/memory.js';
import type { NetDevice, SessionMemory, VringConfig } from '../../vhost-user/device.js';
import type { VhostUserServer } from '../../vhost-user/server.js';
import type { VhostUserClient } from '../../vhost-user/client.js';
import { HOST_OFFLOAD_BITS } from '../../vhost-user/features.js';
import { guestRxOffloads } from '../datapath/rx-offload.js';
import { hasBit } from '../../vhost-user/messages.js';
import { resolveVf } from './vf.js';
import type { WorkerPool } from './worker-pool.js';
import type { DirName, DirectionSpec, DirectionState, GuestSpec, PortSpec, QueueSpec, QueueState } from '../datapath/worker-protocol.js';
import { BOND_MODE_NAMES, deviceWithout, isMemifMember, type BondMember, type BondMode, type DeviceRef, type MemberPort, type MemifRef, type VfRef } from '../registry-api.js';
import { MemifEndpoint } from '../../sys/memif-control.js';
import { readMemifCounters } from '../../sys/memif-rings.js';
import type { Reactor } from '../../sys/poll.js';
import type { PollMode } from '../config/types.js';

export interface RelayContext {
  pool: WorkerPool;
  log: Logger;
  sysfsRoot: string;
  jumbo: boolean;
  /**
   * VIRTIOFWD_TSO: guests are offered offloads both ways, so VF send sockets take a virtio_net_hdr
   * per frame (VF RX sockets always deliver one).
   */
  tso?: boolean;
  /** Opens and closes VF ports off the main thread. */
  rings: RingOpener;
  /** VIRTIOFWD_VF_PORT (default af_packet). */
  vfPort?: VfPortChoice;
  /** VIRTIOFWD_XDP_UMEM (default guest): AF_XDP ports put the VM's memory in their UMEM. */
  xdpUmem?: 'guest' | 'relay';
  /** VIRTIOFWD_XDP_RX (default copy): 'guest' receives straight into the VM's buffers where the UMEM holds its memory. */
  xdpRx?: 'copy' | 'guest';
  /** CPUs fixed for this relay by VIRTIOFWD_CPU_PINS, if any. */
  pinnedCpus(relay: number): { vf2vm: number; vm2vf: number } | undefined;
  /**
   * Test hook (VIO4WD_TEST_HOOKS=no-dirty-log): dirty logging is negotiated but no page is ever
   * marked, so a test can show what a live migration without it does to the guest.
   */
  ignoreDirtyLog?: boolean;
  /** The main thread's reactor: memif control channels are served on it. */
  reactor?: Reactor;
  /** The workers' poll mode: adaptive workers sleep, so their memif rings ask the peer for interrupts. */
  pollMode?: PollMode;
  /** The relays' counters (counters.ts), for drops the main thread sees while a direction is detached. */
  counters: Float64Array;
}

interface Member {
  ref: BondMember;
  netdev: string;
  handle: VfHandle;
  up: boolean;
  /** The MTU the netdev had before the relay raised it to JUMBO_MTU (restored at detach). */
  mtuBefore?: number;
  /** A memif interface: its control channel (the handle changes with each connection). */
  memif?: MemifEndpoint;
  /** Set once the member leaves the relay: its memif endpoint's callbacks are ignored from then on. */
  retired?: boolean;
  /** AF_XDP: the port's fall back from receiving in place to copying has been logged. */
  copyLogged?: boolean;
}

interface VringEntry {
  config: VringConfig;
  enabled: boolean;
}

const BOND_PORT_MODE: Record<BondMode, PortSpec['mode']> = {
  0: 'round-robin',
  1: 'active-backup',
  2: 'balance',
  3: 'broadcast',
};

/**
 * VF ring sizes. A block must hold the largest frame the VF's kernel can hand over: a GSO
 * super-frame of 64 KiB (GRO on the VF, TSO of a veth peer) plus the ring's headers; in smaller
 * blocks the kernel cuts such frames short and the relay can only drop them. At low rates the
 * kernel hands over a block after the retire timeout (1 ms) with only a few frames in it, and
 * drops frames once every block waits for the relay, so the block count sets how long a delayed
 * worker can be: 32 blocks of 128 KiB (4 MiB). Larger blocks take longer to empty, which costs
 * frames where a standing queue forms (docs/benchmarks.md, 2026-12-04 15:12).
 */
const RING_GEOMETRY = {
  standard: { blockSize: 128 * 1024, blockCount: 32 },
  jumbo: { blockSize: 128 * 1024, blockCount: 64 },
} as const;

let memoryIds = 0;

export class Relay implements NetDevice {
  readonly id: number;
  socketPath: string | undefined;
  endpoint: VhostUserServer | VhostUserClient | undefined;
  device: DeviceRef | undefined;
  private members: Member[] = [];
  private activeMember = 0;
  private memory: SessionMemory | null = null;
  private memoryId = -1;
  private readonly vrings = new Map<number, VringEntry>();
  /** Ring state saved when a direction was detached, keyed by vring index. */
  private readonly saved = new Map<number, QueueState>();
  private rr: Record<DirName, { rrQueue: number; rrMember: number }> = {
    vf2vm: { rrQueue: 0, rrMember: 0 },
    vm2vf: { rrQueue: 0, rrMember: 0 },
  };
  /** CPU chosen for each direction (kept across reconfigurations so a relay does not wander). */
  private readonly cpus: Partial<Record<DirName, number>> = {};
  private chain: Promise<void> = Promise.resolve();
  private readonly log: Logger;
  vmConnected = false;
  queuePairs = 0;
  /** NUMA node of the VM's memory (its first region), -1 when unknown or no VM. */
  numaNode = -1;

  constructor(id: number, private readonly ctx: RelayContext) {
    this.id = id;
    this.log = ctx.log.child({ relay: id });
  }

  /** Free for add_sock: no device, no VM, no socket. */
  get free(): boolean {
    return !this.device && !this.vmConnected && !this.socketPath;
  }

  get hasGuest(): boolean {
    return this.vrings.size > 0;
  }

  /** Runs `fn` after every earlier change to this relay has finished. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(fn, fn);
    this.chain = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  // ---- the host side ----------------------------------------------------------------------------

  /** Resolves and opens every member, then starts forwarding. Nothing is kept when a member fails. */
  attachDevice(device: DeviceRef): Promise<void> {
    return this.serial(async () => {
      const parts: BondMember[] = device.kind === 'vf' ? [device.vf] : device.kind === 'memif' ? [{ memif: device.memif }] : device.bond.members;
      const slots: (Member | undefined)[] = parts.map(() => undefined);
      try {
        // VFs first: their ports open asynchronously. memif endpoints are made last, with no await
        // between their start and this.members, so none of their callbacks can wait for this
        // attach while a failure closes them (the endpoint's close waits for its callbacks).
        for (const [i, part] of parts.entries()) if (!isMemifMember(part)) slots[i] = await this.openVfMember(part);
        for (const [i, part] of parts.entries()) if (isMemifMember(part)) slots[i] = this.openMemifMember(part.memif, device.kind === 'bond' ? i : -1);
      } catch (err) {
        await this.closeMembers(slots.filter((m): m is Member => m !== undefined));
        throw err;
      }
      const opened = slots as Member[];
      this.members = opened;
      this.device =
        device.kind === 'vf'
          ? { kind: 'vf', vf: opened[0].ref as VfRef }
          : device.kind === 'memif'
          ? { kind: 'memif', memif: { ...device.memif } }
          : { kind: 'bond', bond: { ...device.bond, members: opened.map((m) => m.ref) } };
      this.activeMember = Math.max(0, opened.findIndex((m) => m.up));
      if (device.kind === 'memif') {
        const m = device.memif;
        this.log.info({ memif: m.socket, id: m.id, role: m.role }, `memif ${m.role} on ${m.socket} (id ${m.id}) attached; forwarding once a peer connects`);
      } else {
        this.log.info(
          { netdevs: opened.map((m) => m.netdev), bond: device.kind === 'bond' ? `${device.bond.name} (${BOND_MODE_NAMES[device.bond.mode]})` : undefined },
          'device attached',
        );
      }
      await this.reconfigure();
    });
  }

  /** A VF member: resolved through sysfs, its MTU raised for jumbo, its port opened. */
  private async openVfMember(ref: VfRef): Promise<Member> {
    const resolved = resolveVf(ref, this.ctx.sysfsRoot);
    // The MTU first: the ring reads it when it opens, and drops longer frames from then on.
    const mtuBefore = this.ctx.jumbo ? this.raiseMtu(resolved.netdev, resolved.pci) : undefined;
    let handle: VfHandle;
    try {
      handle = await this.openPort(resolved.netdev, resolved.pci, ref.port);
    } catch (err) {
      this.restoreMtu(resolved.netdev, mtuBefore);
      throw err;
    }
    const kept: VfRef = { pci: resolved.pci, netdev: resolved.netdev, ...(ref.port ? { port: ref.port } : {}) };
    return { ref: kept, netdev: resolved.netdev, handle, up: linkHasCarrier(resolved.netdev), mtuBefore };
  }

  /** Closes what members opened: memif endpoints, VF ports (their MTU given back). */
  private async closeMembers(members: Member[]): Promise<void> {
    for (const m of members) m.retired = true;
    for (const m of members) {
      if (m.memif) {
        await m.memif.close();
        continue;
      }
      await this.closePort(m.netdev, m.handle);
      this.restoreMtu(m.netdev, m.mtuBefore);
    }
  }

  /**
   * Closes a VF's port. Guest receive buffers an AF_XDP port still had with the kernel go back to
   * their rings once the socket is closed (no write can reach them after): the ring's saved avail
   * index moves back over them, so the guest's next start, or a migration's destination, finds
   * them unused in its avail ring. They are always the newest chains taken (xdp-guest-rx.ts); a
   * ring where they are not is left as it is, with a warning.
   */
  private async closePort(netdev: string, handle: VfHandle): Promise<void> {
    let posted: PostedGuestBuffer[] = [];
    const table = isXdpHandle(handle) ? handle.guestRx : null;
    if (isXdpHandle(handle) && table) {
      posted = postedGuestBuffers(table);
      // Nothing may read the table through this handle once it is unmapped below (stats and the
      // fallback check run while the port is being opened again).
      handle.guestRx = null;
    }
    // Stats may run while the port closes in the opener's thread: they must not read its pages.
    if (isXdpHandle(handle)) handle.closing = true;
    await this.ctx.rings.close(handle);
    if (table) releaseGuestRxTable(table);
    const byRing = new Map<number, PostedGuestBuffer[]>();
    for (const p of posted) byRing.set(p.vring, [...(byRing.get(p.vring) ?? []), p]);
    for (const [vring, list] of byRing) {
      const state = this.saved.get(vring);
      if (!state) continue; // the ring is gone with its VM
      const first = list[0].availIdx;
      const inOrder = list.every((p, i) => p.availIdx === ((first + i) & 0xffff)) && ((first + list.length) & 0xffff) === state.lastAvail;
      if (inOrder) {
        state.lastAvail = first;
        this.log.debug({ netdev, vring, buffers: list.length }, `VF ${netdev}: ${list.length} receive buffers the AF_XDP port held went back to vring ${vring}`);
      } else {
        this.log.warn(
          { netdev, vring, buffers: list.length, lastAvail: state.lastAvail, first },
          `VF ${netdev}: ${list.length} receive buffers the AF_XDP port held are not the newest of vring ${vring}, so they cannot be given back; the ring is short of them until the VM resets the device`,
        );
      }
    }
  }

  /**
   * A memif interface (alone, or member `bondIndex` of a bond): the control channel lives here in
   * the main thread; workers get a handle per connection. Carrier is the connection: while no peer
   * is connected the member is down and receives nothing; each connection or disconnection
   * reconfigures the directions, so no worker polls a region after it is unmapped. In a bond, a
   * member going down makes an active-backup bond fail over, as a VF losing carrier does.
   */
  private openMemifMember(ref: MemifRef, bondIndex: number): Member {
    const reactor = this.ctx.reactor;
    if (!reactor) throw new Error(`memif ${ref.socket}: this relay has no reactor for control channels`);
    const maxFrameLength = (this.ctx.jumbo ? JUMBO_MTU : 1500) + 14;
    // A member that left the relay ignores its endpoint's news, and is not waited for: the
    // endpoint's close (inside serial()) waits for these callbacks. One still being attached (a
    // bond opens its members one by one) has its news applied once the attach is done.
    let member: Member | undefined;
    const carrier = async (up: boolean, handle: VfHandle) => {
      if (!member || member.retired) return;
      await this.serial(async () => {
        if (!member || member.retired || !this.members.includes(member)) return;
        member.handle = handle;
        member.up = up;
        if (this.device?.kind === 'bond') this.log.info({ memif: ref.socket, id: ref.id, carrier: up }, up ? 'bond member has carrier' : 'bond member lost carrier');
        this.chooseActiveMember();
        await this.reconfigure();
      });
    };
    const endpoint: MemifEndpoint = new MemifEndpoint({
      role: ref.role,
      socketPath: ref.socket,
      id: ref.id,
      secret: ref.secret,
      rings: ref.rings,
      // Client members of one bond may connect to one server socket (with other ids): their names
      // tell them apart at the peer. (Two server members cannot bind one path: the second fails.)
      name: bondIndex < 0 ? `vio4wd-relay-${this.id}` : `vio4wd-relay-${this.id}-${bondIndex}`,
      // Jumbo frames need buffers they fit in: the relay's own (client role) are sized for them.
      bufferSize: this.ctx.jumbo ? 10240 : 2048,
      maxFrameLength,
      rxInterrupts: (this.ctx.pollMode ?? 'adaptive') === 'adaptive',
      reactor,
      onUp: (handle) => carrier(true, handle),
      onDown: () => carrier(false, endpoint.downHandle()),
      onEvent: (level, message, data) => this.log[level]({ memif: ref.socket, id: ref.id, role: ref.role, ...data }, message),
    });
    endpoint.start();
    member = { ref: { memif: { ...ref } }, netdev: endpoint.name, handle: endpoint.downHandle(), up: false, memif: endpoint };
    return member;
  }

  /**
   * Opens the VF's port as VIRTIOFWD_VF_PORT says: AF_XDP sockets, or (af_packet, and auto where
   * AF_XDP cannot be opened or the MTU is jumbo) packet rings. The choice and its reason are logged.
   */
  private async openPort(netdev: string, pci: string | undefined, asked: VfPortChoice | undefined): Promise<VfHandle> {
    const choice = asked ?? this.ctx.vfPort ?? 'af_packet';
    const why = asked !== undefined ? `port ${asked} asked for this VF` : `VIRTIOFWD_VF_PORT=${choice}`;
    if (choice === 'af_xdp' || (choice === 'auto' && !this.ctx.jumbo)) {
      try {
        return await this.openXdp(netdev, pci);
      } catch (err) {
        const reason = (err as Error).message;
        if (choice === 'af_xdp') throw new Error(`VF ${netdev}: no AF_XDP port (${why}): ${reason}`);
        this.log.info({ netdev, pci, port: 'af_packet', err: reason }, `VF ${netdev}: AF_XDP not possible (${reason}); using AF_PACKET`);
      }
    }
    // The RX socket always gets the kernel's offload header: without it a GSO super-frame (GRO on
    // the VF, a veth peer's TSO) looks like one frame of up to 64 KiB, and a guest without
    // GUEST_TSO would get it whole. With it the relay knows the segment size.
    return this.ctx.rings.open(netdev, {
      ...RING_GEOMETRY[this.ctx.jumbo ? 'jumbo' : 'standard'], txRing: false, sendVnetHeader: this.ctx.tso === true, receiveVnetHeader: true,
    });
  }

  /**
   * An AF_XDP port with the VM's memory in its UMEM when there is a VM and VIRTIOFWD_XDP_UMEM
   * allows it, else with the relay's chunks only (also when the first cannot be had; the reason
   * is logged).
   */
  private async openXdp(netdev: string, pci: string | undefined): Promise<XdpPortHandle> {
    const guest = this.umemRegions();
    let h: XdpPortHandle | undefined;
    if (guest !== undefined) {
      try {
        h = await this.ctx.rings.openXdp(netdev, { guestMemory: guest, guestReceive: this.ctx.xdpRx === 'guest' });
      } catch (err) {
        const reason = (err as Error).message;
        this.log.warn({ netdev, pci, err: reason }, `VF ${netdev}: the VM's memory cannot be the AF_XDP UMEM (${reason}); frames will be copied`);
      }
    }
    h ??= await this.ctx.rings.openXdp(netdev, {});
    const zeroCopy = xdpZeroCopy(h);
    const umem = xdpUmemKind(h);
    const d = h.dispatcher;
    for (const gone of d?.leftovers.removed ?? []) {
      this.log.info({ netdev, pci, program: gone.id, pid: gone.pid }, `VF ${netdev}: removed AF_XDP program ${gone.id} that pid ${gone.pid}, now gone, had left in libxdp's dispatcher`);
    }
    for (const failed of d?.leftovers.failed ?? []) this.log.warn({ netdev, pci, err: failed }, `VF ${netdev}: could not remove a program a gone daemon left in libxdp's dispatcher: ${failed}`);
    const where = d ? `${h.programId} in libxdp's dispatcher (priority ${d.priority}, ${h.attachMode} mode), beside the interface's other XDP programs`
      : `${h.programId} in ${h.attachMode === 'native' ? 'the driver' : 'generic mode'}`;
    const receive = h.guestRx ? ", receiving into the VM's buffers" : '';
    this.log.info(
      { netdev, pci, port: 'af_xdp', attach: h.attachMode, dispatcher: d !== null, zeroCopy, multiBuffer: h.multiBuffer, queues: h.queues.length, umem, rxInPlace: h.guestRx !== null },
      `VF ${netdev}: AF_XDP port, program ${where}, ${zeroCopy ? 'zero copy' : 'copy mode'}${h.multiBuffer ? ', frames over several chunks' : ''}, ${h.queues.length} queue${h.queues.length === 1 ? '' : 's'}, ${umem === 'guest' ? `UMEM over the VM's memory (${h.umem.guestSlots.length} region${h.umem.guestSlots.length === 1 ? '' : 's'}, ${Math.round((h.umem.length - h.umem.relay.length) / 2 ** 20)} MiB pinned)${receive}` : "relay's UMEM (frames copied)"}`,
    );
    return h;
  }

  /** The VM's memory files as an AF_XDP UMEM takes them, or undefined when it is not to (no VM, VIRTIOFWD_XDP_UMEM=relay, memory without files). */
  private umemRegions(): XdpGuestRegion[] | undefined {
    if (this.ctx.xdpUmem === 'relay' || this.memory === null || this.memory.regions.length === 0) return undefined;
    const byMapping = new Map<number, XdpGuestRegion>();
    for (const r of this.memory.regions) {
      if (r.fd === undefined) return undefined;
      byMapping.set(r.mappingAddress, { fd: r.fd, hostAddress: r.mappingAddress, length: r.mmapLength });
    }
    return [...byMapping.values()];
  }

  /**
   * The UMEM of an AF_XDP port is fixed when its sockets are made: when the VM's memory changes
   * (a new table, the VM gone), its ports are opened again around the new memory, with both
   * directions detached meanwhile. A port that cannot be opened again leaves the relay (logged).
   * Returns whether it detached the directions: the caller then reconfigures.
   */
  private async rebuildXdpPorts(why: string): Promise<boolean> {
    const wanted = this.umemRegions() !== undefined;
    const stale = this.members.filter((m) => isXdpHandle(m.handle) && (wanted || xdpUmemKind(m.handle) === 'guest'));
    if (stale.length === 0) return false;
    await this.detachDirection('vf2vm');
    await this.detachDirection('vm2vf');
    for (const m of stale) {
      this.countXdpLeftovers(m.netdev, m.handle as XdpPortHandle, why);
      await this.closePort(m.netdev, m.handle);
      try {
        m.handle = await this.openXdp(m.netdev, (m.ref as VfRef).pci);
      } catch (err) {
        this.log.error(
          { netdev: m.netdev, err: (err as Error).message },
          `VF ${m.netdev}: its AF_XDP port could not be opened again after ${why}: ${(err as Error).message}; the VF leaves the relay and may be attached again`,
        );
        m.retired = true;
        this.restoreMtu(m.netdev, m.mtuBefore);
        this.members = this.members.filter((x) => x !== m);
        // The registry finds who holds a VF through the devices: out of the device, it may be
        // attached again, and list and stats stop naming it.
        this.device = deviceWithout(this.device, m.ref);
      }
    }
    this.activeMember = Math.min(this.activeMember, Math.max(0, this.members.length - 1));
    return true;
  }

  /**
   * Frames a port being reopened takes with it, counted before it goes so that every frame that
   * entered the VF stays accounted for: those waiting in its RX rings with the frames that found no
   * guest, and kernel drops no worker has folded yet with the VF ring's drops.
   */
  private countXdpLeftovers(netdev: string, handle: XdpPortHandle, why: string): void {
    let left;
    try {
      left = xdpLeftovers(handle);
    } catch (err) {
      this.log.warn({ netdev, err: (err as Error).message }, `VF ${netdev}: the frames left in its AF_XDP socket could not be counted before it closed: ${(err as Error).message}`);
      return;
    }
    if (left.framesWaiting + left.kernelDropsUnread === 0) return;
    addToDetached(this.ctx.counters, this.id, Dir.VfToVm, Counter.DropsNotConnected, left.framesWaiting);
    addToDetached(this.ctx.counters, this.id, Dir.VfToVm, Counter.DropsKernelRing, left.kernelDropsUnread);
    this.log.info(
      { netdev, framesWaiting: left.framesWaiting, kernelDrops: left.kernelDropsUnread },
      `VF ${netdev}: ${left.framesWaiting} frames waiting in its AF_XDP socket were dropped when it was reopened after ${why} (counted as not connected)`
        + (left.kernelDropsUnread > 0 ? `, and ${left.kernelDropsUnread} kernel drops not yet counted were added to the VF ring's` : ''),
    );
  }

  /** The kind of port each member has, for stats and logs. */
  get memberPorts(): MemberPort[] {
    return this.members.map((m) =>
      m.memif
        ? {
            netdev: m.netdev, port: 'memif' as const, memifState: m.memif.state, memifLastDisconnect: m.memif.lastDisconnectReason,
            memifPeerErrors: ((c) => c.rxBadDescriptors + c.txBadDescriptors + c.ringErrors)(readMemifCounters(m.memif.counters)),
            memifRings: isMemifHandle(m.handle) ? m.handle.rx.length : 0,
          }
        : isXdpHandle(m.handle)
        ? {
            netdev: m.netdev, port: 'af_xdp' as const, attach: m.handle.attachMode, dispatcher: m.handle.dispatcher !== null, zeroCopy: xdpZeroCopy(m.handle), umem: xdpUmemKind(m.handle),
            rxInPlace: m.handle.guestRx !== null && guestRxFallback(m.handle.guestRx) === null,
            ...xdpFramesInPlace(m.handle),
          }
        : { netdev: m.netdev, port: 'af_packet' as const },
    );
  }

  /** Stops forwarding and closes the VF rings and memif endpoints. */
  detachDevice(): Promise<void> {
    return this.serial(async () => {
      const members = this.members;
      this.members = [];
      for (const m of members) m.retired = true;
      this.device = undefined;
      // No worker polls them once both directions are detached: memif endpoints may unmap now,
      // and receive buffers an AF_XDP port held go back to the saved ring state before the
      // directions are attached again with it.
      await this.detachDirection('vf2vm');
      await this.detachDirection('vm2vf');
      await this.closeMembers(members);
      await this.reconfigure();
      if (members.length > 0) this.log.info({ netdevs: members.map((m) => m.netdev) }, 'device detached');
    });
  }

  /**
   * Jumbo: raises the netdev's MTU to JUMBO_MTU when it is lower, and returns the MTU it had (for
   * restoreMtu), or undefined when nothing was changed. A device that refuses (its max_mtu is
   * lower, a VLAN above its real device's MTU) keeps its MTU, and the relay forwards with it:
   * longer frames from the guest are dropped and counted as bad frames.
   */
  private raiseMtu(netdev: string, pci: string | undefined): number | undefined {
    // The kernel's own sysfs, not VIRTIOFWD_SYSFS_ROOT: that root maps PCI addresses to netdevs,
    // while the MTU belongs to the netdev in this network namespace (the packet ring reads it there).
    const before = linkMtu(netdev);
    if (before >= JUMBO_MTU) return undefined;
    try {
      setLinkMtu(netdev, JUMBO_MTU);
    } catch (err) {
      // The driver's max_mtu names the limit when it is the reason; other refusals (a macvlan above
      // its lower device, a VF above its PF) report a larger one, so it is left out then.
      let maxMtu: number | null = null;
      try {
        maxMtu = linkMaxMtu(netdev);
      } catch {
        /* the errno is reason enough */
      }
      const reason = (err as { code?: string }).code ?? (err as Error).message;
      const limit = maxMtu !== null && maxMtu > 0 && maxMtu < JUMBO_MTU ? `: its max_mtu is ${maxMtu}` : '';
      this.log.warn(
        { netdev, pci, mtu: before, wanted: JUMBO_MTU, maxMtu, err: (err as Error).message },
        `VF ${netdev} refused MTU ${JUMBO_MTU} (${reason}${limit}): forwarding with its MTU ${before}, ` +
          `frames above ${before + 14} bytes (${before + 18} with a VLAN tag) are dropped`,
      );
      return undefined;
    }
    this.log.info({ netdev, pci, from: before, mtu: JUMBO_MTU }, `VF ${netdev} MTU raised from ${before} to ${JUMBO_MTU}`);
    return before;
  }

  /**
   * Gives a VF back the MTU it had before the relay raised it, so a VF handed back to the host is
   * as it was found. An MTU someone changed since (it is no longer JUMBO_MTU) is left alone.
   */
  private restoreMtu(netdev: string, before: number | undefined): void {
    if (before === undefined) return;
    try {
      if (linkMtu(netdev) !== JUMBO_MTU) return;
      setLinkMtu(netdev, before);
      this.log.info({ netdev, mtu: before }, `VF ${netdev} MTU restored to ${before}`);
    } catch (err) {
      // A VF that went away (its netdev removed) has no MTU left to restore.
      this.log.warn({ netdev, mtu: before, err: (err as Error).message }, `VF ${netdev}: MTU not restored to ${before}`);
    }
  }

  /**
   * Re-reads carrier of a bond's VF members; fails over in active-backup mode. Cheap: called on a
   * timer. (memif members report their connection themselves.)
   */
  checkCarrier(): void {
    this.noteReceiveFallback();
    if (this.device?.kind !== 'bond' || this.members.length === 0) return;
    let changed = false;
    for (const m of this.members) {
      if (m.memif) continue;
      const up = linkHasCarrier(m.netdev);
      if (up !== m.up) {
        m.up = up;
        changed = true;
        this.log.info({ netdev: m.netdev, carrier: up }, up ? 'bond member has carrier' : 'bond member lost carrier');
      }
    }
    if (!changed) return;
    this.chooseActiveMember();
    const up = this.members.map((m) => m.up);
    for (const dir of ['vf2vm', 'vm2vf'] as const) this.ctx.pool.setActiveMember(this.id, dir, this.activeMember, up);
  }

  /** Logs, once per port, that an AF_XDP port stopped receiving into the VM's buffers and copies. */
  private noteReceiveFallback(): void {
    for (const m of this.members) {
      if (m.copyLogged || !isXdpHandle(m.handle) || !m.handle.guestRx) continue;
      const fallback = guestRxFallback(m.handle.guestRx);
      if (!fallback) continue;
      m.copyLogged = true;
      const why = fallback.unfitBufferBytes > 0
        ? `the VM posted a receive buffer of ${fallback.unfitBufferBytes} bytes, where a frame in place needs its header and ${GUEST_RX_FRAME_ROOM} bytes in one piece of its memory`
        : 'the VM has several receive rings, or a packed one';
      this.log.info({ netdev: m.netdev, unfitBufferBytes: fallback.unfitBufferBytes }, `VF ${m.netdev}: frames are copied into the VM's buffers from now on: ${why}`);
    }
  }

  /** Active-backup: when the active member has no carrier, the first member that has it takes over. */
  private chooseActiveMember(): void {
    if (this.members[this.activeMember]?.up) return;
    const next = this.members.findIndex((m) => m.up);
    if (next < 0 || next === this.activeMember) return;
    if (this.device?.kind === 'bond') this.log.warn({ from: this.members[this.activeMember]?.netdev, to: this.members[next].netdev }, 'active-backup failover');
    this.activeMember = next;
  }

  // ---- NetDevice: the guest side -----------------------------------------------------------------

  memoryChanged(memory: SessionMemory): Promise<void> {
    return this.serial(async () => {
      // The session stopped every vring before this, so no worker still uses the old table.
      this.memory = memory;
      this.memoryId = ++memoryIds;
      const first = memory.regions[0];
      this.numaNode = first ? numaNodeOfAddress(first.hostAddress) : -1;
      if (await this.rebuildXdpPorts("the VM's memory table changed")) await this.reconfigure();
    });
  }

  vringStarted(index: number, vring: VringConfig): Promise<void> {
    return this.serial(async () => {
      this.vrings.set(index, { config: vring, enabled: vring.enabled });
      this.saved.set(index, { lastAvail: vring.lastAvail, lastUsed: vring.lastUsed, signalledUsed: 0, signalledValid: false });
      this.vmConnected = true;
      await this.reconfigure();
    });
  }

  vringStopped(index: number): Promise<{ lastAvail: number }> {
    return this.serial(async () => {
      const entry = this.vrings.get(index);
      this.vrings.delete(index);
      await this.reconfigure();
      // Receive buffers of this ring still with an AF_XDP port's kernel: only closing the socket
      // takes them back, so the port is opened again and the ring's index moves back over them.
      const held = this.members.some((m) => isXdpHandle(m.handle) && m.handle.guestRx && postedGuestBuffers(m.handle.guestRx).some((p) => p.vring === index));
      if (held && (await this.rebuildXdpPorts(`vring ${index} stopped with receive buffers in the AF_XDP fill ring`))) await this.reconfigure();
      const state = this.saved.get(index);
      this.saved.delete(index);
      return { lastAvail: state?.lastAvail ?? entry?.config.lastAvail ?? 0 };
    });
  }

  vringEnabled(index: number, enabled: boolean): Promise<void> {
    return this.serial(async () => {
      const entry = this.vrings.get(index);
      if (!entry || entry.enabled === enabled) return;
      entry.enabled = enabled;
      this.log.debug({ vring: index, enabled }, 'vring enable changed');
      await this.reconfigure();
    });
  }

  vringCallChanged(index: number, callFd: number): Promise<void> {
    return this.serial(async () => {
      const entry = this.vrings.get(index);
      if (!entry) return;
      entry.config = { ...entry.config, callFd };
      await this.reconfigure();
    });
  }

  disconnected(): Promise<void> {
    return this.serial(async () => {
      this.vrings.clear();
      this.saved.clear();
      this.memory = null;
      this.numaNode = -1;
      this.vmConnected = false;
      this.queuePairs = 0;
      // The gone VM's memory leaves the UMEM (and stops being pinned).
      await this.rebuildXdpPorts('the VM disconnected');
      await this.reconfigure();
      this.log.info('VM disconnected');
    });
  }


  // ---- workers ----------------------------------------------------------------------------------

  private guestSpec(dir: DirName): GuestSpec | null {
    if (!this.memory || this.vrings.size === 0) return null;
    const wantRx = dir === 'vf2vm';
    const queues: QueueSpec[] = [];
    let sample: VringConfig | undefined;
    for (const [index, entry] of [...this.vrings.entries()].sort((a, b) => a[0] - b[0])) {
      const isRx = index % 2 === 0;
      if (isRx !== wantRx) continue;
      // RX queues deliver only when enabled; started TX queues are drained even when disabled.
      if (isRx && !entry.enabled) continue;
      const c = entry.config;
      sample = c;
      queues.push({
        index,
        size: c.size,
        desc: { region: c.desc.region, offset: c.desc.offset },
        avail: { region: c.avail.region, offset: c.avail.offset },
        used: { region: c.used.region, offset: c.used.offset },
        callFd: c.callFd,
        kickFd: c.kickFd,
        enabled: entry.enabled,
        usedLogAddr: c.logUsed ? c.logGuestAddr : null,
      });
    }
    if (!sample) {
      const any = this.vrings.values().next().value as VringEntry;
      sample = any.config;
    }
    return {
      memoryId: this.memoryId,
      regions: this.memory.regions.map((r) => ({ guestPhysAddr: r.guestPhysAddr, userAddr: r.userAddr, size: r.size, hostAddress: r.hostAddress })),
      dirtyLog: this.ctx.ignoreDirtyLog ? null : (sample.dirtyLog ?? null),
      hostOffloads: HOST_OFFLOAD_BITS.some((bit) => hasBit(sample.features, bit)),
      rxOffloads: guestRxOffloads(sample.features),
      eventIdx: sample.eventIdx,
      indirect: sample.indirect,
      packed: sample.packed,
      mergeable: sample.mergeableRxBuffers,
      hdrLen: sample.netHeaderLength,
      queues,
    };
  }

  private portSpec(): PortSpec | null {
    if (this.members.length === 0) return null;
    const mode = this.device?.kind === 'bond' ? BOND_PORT_MODE[this.device.bond.mode] : 'single';
    return {
      mode,
      active: this.activeMember,
      members: this.members.map((m) => ({ netdev: m.netdev, handle: m.handle, up: m.up })),
    };
  }

  /** The CPU a direction runs on: the pin, else where it ran before, else the least busy worker. */
  private cpuFor(dir: DirName): number {
    const pinned = this.ctx.pinnedCpus(this.id);
    if (this.cpus[dir] === undefined) this.cpus[dir] = pinned ? pinned[dir] : this.ctx.pool.leastBusyCpu();
    return this.cpus[dir]!;
  }

  cpuOf(dir: DirName): number {
    return this.ctx.pool.cpuOf(this.id, dir);
  }

  /** Moves a direction to another worker (scheduler, pinner): detach at a burst boundary, attach there. */
  moveDirection(dir: DirName, cpu: number): Promise<void> {
    return this.serial(async () => {
      if (this.cpus[dir] === cpu && this.ctx.pool.cpuOf(this.id, dir) === cpu) return;
      this.cpus[dir] = cpu;
      await this.reconfigureDirection(dir);
    });
  }

  private async reconfigure(): Promise<void> {
    this.queuePairs = [...this.vrings.keys()].filter((i) => i % 2 === 0 && this.vrings.get(i)!.enabled).length;
    await this.reconfigureDirection('vf2vm');
    await this.reconfigureDirection('vm2vf');
  }

  /** Detaches a direction from its worker, keeping its ring state for the next attach. */
  private async detachDirection(dir: DirName): Promise<void> {
    const state = await this.ctx.pool.detach(this.id, dir);
    if (state) {
      for (const [index, qs] of Object.entries(state.queues)) this.saved.set(Number(index), qs);
      this.rr[dir] = { rrQueue: state.rrQueue, rrMember: state.rrMember };
    }
  }

  private async reconfigureDirection(dir: DirName): Promise<void> {
    await this.detachDirection(dir);
    const guest = this.guestSpec(dir);
    const port = this.portSpec();
    if (!port && (!guest || guest.queues.length === 0)) return;
    const spec: DirectionSpec = { relay: this.id, dir, guest, port, vmConnected: this.vmConnected };
    const queues: Record<number, QueueState> = {};
    for (const q of guest?.queues ?? []) {
      const s = this.saved.get(q.index);
      if (s) queues[q.index] = s;
    }
    const resume: DirectionState = { queues, ...this.rr[dir] };
    await this.ctx.pool.attach(spec, resume, this.cpuFor(dir));
    // A carrier change seen while the attach was in flight could not reach the worker (the pool
    // places a direction only once the worker has it), so the worker may run with the spec's
    // stale bond state: hand it the current one.
    if (port && (port.active !== this.activeMember || port.members.some((m, i) => m.up !== this.members[i]?.up))) {
      this.ctx.pool.setActiveMember(this.id, dir, this.activeMember, this.members.map((m) => m.up));
    }
  }

  /** Closes the socket (and the VM session), stops forwarding and closes the VF rings. */
  async shutdown(): Promise<void> {
    const endpoint = this.endpoint;
    this.endpoint = undefined;
    this.socketPath = undefined;
    if (endpoint) await endpoint.close();
    await this.detachDevice();
    await this.serial(async () => {
      await this.ctx.pool.detach(this.id, 'vf2vm');
      await this.ctx.pool.detach(this.id, 'vm2vf');
    });
  }
}
