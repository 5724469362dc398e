// A test VM for relay tests: one RX and one TX split ring over a shared memory mapping, driven by
// the project's split-queue driver. It sends numbered frames (VM→VF), collects received ones
// (VF→VM), and can tell what the device has consumed on each ring (used.idx as the driver sees it).
import { eventfd, eventfdWrite } from '../../sys/eventfd.js';
import type { Mapping } from '../../sys/memory.js';
import type { VringSetup } from '../../vhost-user/frontend.js';
import { GuestMemory } from '../../virtio/guest-memory.js';
import { SplitQueueDriver } from '../../virtio/split-queue-driver.js';

export interface NetTestVmLayout {
  memSize: number;
  queueSize: number;
  rxRingGpa: number;
  txRingGpa: number;
  rxBuffersGpa: number;
  txBuffersGpa: number;
  bufferSize: number;
  /** virtio-net header length in front of every frame (12 with VERSION_1). */
  netHdr: number;
  /** EtherType of the numbered frames the VM sends. */
  etherTypeOut: number;
  /** EtherType of the numbered frames the VM counts as received. */
  etherTypeIn: number;
  /** VIRTIO_RING_F_EVENT_IDX negotiated. */
  eventIdx?: boolean;
  /**
   * Guest-physical address of the first byte of the VM's mapping (default 0): the VM may be a
   * window into a larger region, and every *Gpa above is absolute.
   */
  gpaBase?: number;
}

export class NetTestVm {
  readonly rx: SplitQueueDriver;
  readonly tx: SplitQueueDriver;
  readonly bytes: Uint8Array;
  private readonly txHeadSlot = new Map<number, number>();
  private readonly freeTxSlots: number[] = [];
  private readonly rxHeadSlot = new Map<number, number>();
  private readonly rxUsed16: Uint16Array;
  private readonly txUsed16: Uint16Array;
  private readonly base: number;
  nextTxSeq = 0;
  readonly received: number[] = [];
  foreignRx = 0;

  constructor(
    mem: Mapping,
    readonly layout: NetTestVmLayout,
    readonly rxSetup: VringSetup,
    readonly txSetup: VringSetup,
  ) {
    this.bytes = new Uint8Array(mem.buffer);
    const base = (this.base = layout.gpaBase ?? 0);
    const memory = new GuestMemory([{ guestPhysAddr: base, size: layout.memSize, userAddr: mem.address, bytes: this.bytes }]);
    const rxl = SplitQueueDriver.layout(layout.rxRingGpa, layout.queueSize);
    const txl = SplitQueueDriver.layout(layout.txRingGpa, layout.queueSize);
    const size = layout.queueSize;
    const eventIdx = layout.eventIdx ?? false;
    this.rx = new SplitQueueDriver({ memory, size, eventIdx, descGpa: rxl.descGpa, availGpa: rxl.availGpa, usedGpa: rxl.usedGpa, name: 'test RX' });
    this.tx = new SplitQueueDriver({ memory, size, eventIdx, descGpa: txl.descGpa, availGpa: txl.availGpa, usedGpa: txl.usedGpa, name: 'test TX' });
    this.rxUsed16 = new Uint16Array(mem.buffer, rxl.usedGpa - base, 2);
    this.txUsed16 = new Uint16Array(mem.buffer, txl.usedGpa - base, 2);
    for (let i = 0; i < size; i++) this.freeTxSlots.push(i);
  }

  /**
   * A VM working in `mem` with fresh kick and call eventfds for both rings (the caller closes
   * `fds`). The rings' user addresses are the front-end's: `frontendBase` is where its mapping of
   * the region starts (default: `mem` itself; a VM that is a window into a larger region differs).
   */
  static withEventfds(mem: Mapping, layout: NetTestVmLayout, frontendBase = mem.address): { vm: NetTestVm; fds: number[] } {
    const fds = [eventfd(), eventfd(), eventfd(), eventfd()];
    const q = layout.queueSize;
    const rxSetup: VringSetup = { index: 0, size: q, ...NetTestVm.rings(layout.rxRingGpa, frontendBase, q), kickFd: fds[0], callFd: fds[1] };
    const txSetup: VringSetup = { index: 1, size: q, ...NetTestVm.rings(layout.txRingGpa, frontendBase, q), kickFd: fds[2], callFd: fds[3] };
    return { vm: new NetTestVm(mem, layout, rxSetup, txSetup), fds };
  }

  /** Ring user addresses for a ring placed at `gpa` in memory mapped at `base`. */
  static rings(gpa: number, base: number, queueSize: number) {
    const l = SplitQueueDriver.layout(gpa, queueSize);
    return { descUserAddr: base + l.descGpa, availUserAddr: base + l.availGpa, usedUserAddr: base + l.usedGpa };
  }

  /** used.idx of vring `index` (0 = RX, 1 = TX) as stored in guest memory: what the device completed. */
  usedIdx(index: number): number {
    return Atomics.load(index === 0 ? this.rxUsed16 : this.txUsed16, 1);
  }

  /** Gives the device every free RX buffer. */
  refillRx(): void {
    let added = false;
    const { rxBuffersGpa, bufferSize } = this.layout;
    while (this.rx.freeDescriptors > 0) {
      const gpa = rxBuffersGpa + this.rxHeadSlot.size * bufferSize;
      this.rxHeadSlot.set(this.rx.addBuffers([{ gpa, len: bufferSize, writable: true }]), gpa);
      added = true;
    }
    if (added && this.rx.publish()) eventfdWrite(this.rxSetup.kickFd, 1);
  }

  /** Collects received frames and hands their buffers back. */
  pollRx(): void {
    const { netHdr, bufferSize, etherTypeIn } = this.layout;
    let returned = false;
    for (let u = this.rx.popUsed(); u !== null; u = this.rx.popUsed()) {
      const gpa = this.rxHeadSlot.get(u.id);
      if (gpa === undefined) throw new Error(`RX head ${u.id} was never posted`);
      const at = gpa - this.base + netHdr;
      const etherType = (this.bytes[at + 12] << 8) | this.bytes[at + 13];
      if (etherType === etherTypeIn && u.len >= netHdr + 18) {
        this.received.push(new DataView(this.bytes.buffer, at + 14, 4).getUint32(0, false));
      } else this.foreignRx++;
      this.rxHeadSlot.set(this.rx.addBuffers([{ gpa, len: bufferSize, writable: true }]), gpa);
      returned = true;
    }
    if (returned && this.rx.publish()) eventfdWrite(this.rxSetup.kickFd, 1);
  }

  /** Reclaims sent buffers and queues up to `count` more numbered frames. */
  send(count: number): void {
    const { netHdr, txBuffersGpa, bufferSize, etherTypeOut } = this.layout;
    for (let u = this.tx.popUsed(); u !== null; u = this.tx.popUsed()) {
      const slot = this.txHeadSlot.get(u.id);
      if (slot === undefined) throw new Error(`TX head ${u.id} was never posted`);
      this.txHeadSlot.delete(u.id);
      this.freeTxSlots.push(slot);
    }
    let queued = 0;
    while (queued < count && this.freeTxSlots.length > 0) {
      const slot = this.freeTxSlots.pop()!;
      const gpa = txBuffersGpa + slot * bufferSize;
      const at = gpa - this.base;
      const frame = this.bytes.subarray(at, at + netHdr + 60);
      frame.fill(0);
      frame.set([0x02, 0, 0, 0, 0xbe, 0xef, 0x02, 0, 0, 0, 0, 0x01], netHdr);
      frame[netHdr + 12] = etherTypeOut >> 8;
      frame[netHdr + 13] = etherTypeOut & 0xff;
      new DataView(this.bytes.buffer, at + netHdr + 14, 4).setUint32(0, this.nextTxSeq++, false);
      this.txHeadSlot.set(this.tx.addBuffers([{ gpa, len: netHdr + 60, writable: false }]), slot);
      queued++;
    }
    if (queued > 0 && this.tx.publish()) eventfdWrite(this.txSetup.kickFd, 1);
  }

  get txOutstanding(): number {
    return this.txHeadSlot.size;
  }
}
