// A VM played by the test process: guest memory in a memfd, one RX and one TX split ring driven
// with the project's own driver side (virtio/split-queue-driver.ts), and the project's vhost-user
// front-end (vhost-user/frontend.ts) to hand both to a relay. It sends and receives raw Ethernet
// frames, so a test can check forwarding both ways without a guest kernel or DPDK.
import { close as closeFd } from '../../sys/fd.js';
import { eventfd, eventfdRead, eventfdWrite } from '../../sys/eventfd.js';
import { MAP_SHARED, PROT_READ, PROT_WRITE, ftruncate, memfdCreate, mmap, munmap, type Mapping } from '../../sys/memory.js';
import type { Reactor } from '../../sys/poll.js';
import { GuestMemory } from '../../virtio/guest-memory.js';
import { SplitQueueDriver } from '../../virtio/split-queue-driver.js';
import { VirtioNetFeature } from '../../vhost-user/features.js';
import { ProtocolFeature } from '../../vhost-user/messages.js';
import { Frontend, type FrontendRegion, type VringSetup } from '../../vhost-user/frontend.js';

export const MEM_SIZE = 4 << 20;
export const QSIZE = 256;
/** virtio-net header with VERSION_1 (and no mergeable buffers): 12 bytes. */
export const HDR = 12;
export const RX_RING_AT = 0x0;
export const TX_RING_AT = 0x10000;
export const RX_BUFFERS_AT = 0x100000;
export const TX_BUFFERS_AT = 0x200000;
/** Free guest memory for tests that build their own (broken) descriptors. */
export const SCRATCH_AT = 0x300000;
const BUFFER = 2048;
const RX_POSTED = 128;

export interface TestVmFds {
  /** Replaces the kick or call fd of vring 0 (RX) or 1 (TX); still owned by the caller. */
  kick?: Partial<Record<0 | 1, number>>;
  call?: Partial<Record<0 | 1, number>>;
}

export class TestVm {
  readonly memFd: number;
  readonly mem: Mapping;
  readonly memory: GuestMemory;
  readonly bytes: Uint8Array;
  rx: SplitQueueDriver;
  tx: SplitQueueDriver;
  /** Our own eventfds, used unless a test substitutes its own. */
  readonly kickFds: [number, number];
  readonly callFds: [number, number];
  frontend: Frontend | null = null;
  private txSlot = 0;
  private rxSlot = 0;
  private closed = false;

  constructor(readonly name: string) {
    this.memFd = memfdCreate(`test-vm-${name}`);
    ftruncate(this.memFd, MEM_SIZE);
    this.mem = mmap({ length: MEM_SIZE, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED, fd: this.memFd });
    this.bytes = new Uint8Array(this.mem.buffer);
    this.memory = new GuestMemory([{ guestPhysAddr: 0, size: MEM_SIZE, userAddr: this.mem.address, bytes: this.bytes }]);
    this.rx = this.ring(RX_RING_AT, 'rx');
    this.tx = this.ring(TX_RING_AT, 'tx');
    this.kickFds = [eventfd(), eventfd()];
    this.callFds = [eventfd(), eventfd()];
  }

  /** A fresh driver (all descriptors free, rings zeroed), as a rebooted guest has. */
  private ring(at: number, what: string): SplitQueueDriver {
    const l = SplitQueueDriver.layout(at, QSIZE);
    return new SplitQueueDriver({ memory: this.memory, size: QSIZE, descGpa: l.descGpa, availGpa: l.availGpa, usedGpa: l.usedGpa, name: `${this.name} ${what}` });
  }

  get region(): FrontendRegion {
    return { guestPhysAddr: 0, size: MEM_SIZE, userAddr: this.mem.address, mmapOffset: 0, fd: this.memFd };
  }

  vringSetup(index: 0 | 1, fds: TestVmFds = {}): VringSetup {
    const d = index === 0 ? this.rx : this.tx;
    const ua = (gpa: number) => this.mem.address + gpa;
    return {
      index,
      size: QSIZE,
      descUserAddr: ua(d.layout.descGpa),
      availUserAddr: ua(d.layout.availGpa),
      usedUserAddr: ua(d.layout.usedGpa),
      kickFd: fds.kick?.[index] ?? this.kickFds[index],
      callFd: fds.call?.[index] ?? this.callFds[index],
    };
  }

  /** Connects and starts both rings (QEMU's order), with fresh rings; rejects when the relay refuses a step. */
  /**
   * `migration`: also negotiate LOG_ALL and PROTOCOL_F_LOG_SHMFD, so a live migration's messages
   * (SET_LOG_BASE with its reply, LOG_ALL under running rings) are in play.
   */
  /**
   * `packed`: also negotiate VIRTIO_F_RING_PACKED. This VM's driver still lays out split rings, so
   * the relay reads packed rings full of what a split driver wrote: garbage, as a hostile guest's.
   */
  async connect(path: string, reactor: Reactor, fds: TestVmFds = {}, opts: { postRx?: boolean; migration?: boolean; packed?: boolean } = {}): Promise<void> {
    await this.disconnect();
    this.txSlot = 0;
    this.rxSlot = 0;
    // The relay serves one front-end at a time and refuses (closes) a connection that arrives
    // while it still tears the previous session down: like QEMU, try again shortly.
    let fe: Frontend;
    let negotiated;
    for (let attempt = 0; ; attempt++) {
      fe = await Frontend.connect(path, { reactor, retryMs: 50, timeoutMs: 10_000, label: this.name });
      this.frontend = fe;
      try {
        const packed = opts.packed ? 2 ** VirtioNetFeature.RING_PACKED : 0;
        negotiated = await fe.negotiate(
          opts.migration
            ? { features: 2 ** VirtioNetFeature.VERSION_1 + 2 ** VirtioNetFeature.LOG_ALL + packed, protocolFeatures: (1 << ProtocolFeature.MQ) | (1 << ProtocolFeature.REPLY_ACK) | (1 << ProtocolFeature.LOG_SHMFD) }
            : { features: 2 ** VirtioNetFeature.VERSION_1 + packed },
        );
        break;
      } catch (err) {
        await this.disconnect();
        if (attempt >= 100 || !/closed the connection|ECONNRESET|EPIPE/.test((err as Error).message)) throw err;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    // Fresh rings only now: the relay accepted us, so its previous session (which may publish
    // used entries until it has stopped) is over, as a rebooted guest's device would be.
    this.rx = this.ring(RX_RING_AT, 'rx');
    this.tx = this.ring(TX_RING_AT, 'tx');
    await fe!.startDevice(negotiated.features, [this.region], [this.vringSetup(0, fds), this.vringSetup(1, fds)]);
    if (opts.postRx ?? true) this.postRxBuffers();
  }

  async disconnect(): Promise<void> {
    const fe = this.frontend;
    this.frontend = null;
    if (fe) await fe.close();
  }

  /** Offers receive buffers until RX_POSTED are outstanding, and kicks. */
  postRxBuffers(): void {
    let added = 0;
    while (QSIZE - this.rx.freeDescriptors < RX_POSTED) {
      // 256 buffer slots for at most 128 outstanding: a slot is reused only after it came back.
      this.rx.addBuffers([{ gpa: RX_BUFFERS_AT + (this.rxSlot++ % QSIZE) * BUFFER, len: BUFFER, writable: true }]);
      added++;
    }
    if (added > 0) {
      this.rx.publish();
      eventfdWrite(this.kickFds[0], 1);
    }
  }

  /**
   * Writes descriptors straight into ring `index`'s table and makes `head` available, bypassing
   * the driver's checks: how a test posts loops, out-of-range addresses or wrong directions.
   * The driver's view of that ring is stale afterwards: reconnect before using it again.
   */
  postRawChain(index: 0 | 1, descs: { slot: number; addr: number; len: number; flags: number; next: number }[], head: number): void {
    const d = index === 0 ? this.rx : this.tx;
    this.writeDescriptors(index, descs);
    const avail = new Uint16Array(this.mem.buffer, d.layout.availGpa, 2 + QSIZE);
    const idx = Atomics.load(avail, 1);
    avail[2 + (idx % QSIZE)] = head;
    Atomics.store(avail, 1, (idx + 1) & 0xffff);
    eventfdWrite(this.kickFds[index], 1);
  }

  /**
   * Writes split-layout descriptors (addr, len, flags, next) into ring `index`'s table. A relay
   * that negotiated packed rings reads the same 16 bytes as addr, len, id (our flags) and flags
   * (our next): a test of packed rings puts the packed flags in `next`.
   */
  writeDescriptors(index: 0 | 1, descs: { slot: number; addr: number; len: number; flags: number; next: number }[]): void {
    const d = index === 0 ? this.rx : this.tx;
    const view = new DataView(this.mem.buffer);
    for (const x of descs) {
      const at = d.layout.descGpa + 16 * x.slot;
      view.setBigUint64(at, BigInt(x.addr), true);
      view.setUint32(at + 8, x.len >>> 0, true);
      view.setUint16(at + 12, x.flags, true);
      view.setUint16(at + 14, x.next, true);
    }
  }

  /** used.idx the relay published on ring `index`. */
  usedIndex(index: 0 | 1): number {
    const d = index === 0 ? this.rx : this.tx;
    return Atomics.load(new Uint16Array(this.mem.buffer, d.layout.usedGpa, 2), 1);
  }

  /** Queues one frame (after a zero virtio-net header) on the TX ring and kicks. */
  sendFrame(frame: Uint8Array): void {
    this.reclaimTx();
    const gpa = TX_BUFFERS_AT + (this.txSlot++ % 64) * BUFFER;
    this.bytes.fill(0, gpa, gpa + HDR);
    this.bytes.set(frame, gpa + HDR);
    this.tx.addBuffers([{ gpa, len: HDR + frame.length, writable: false }]);
    this.tx.publish();
    eventfdWrite(this.kickFds[1], 1);
  }

  /** Frames the relay put in our receive buffers since the last call (the buffers are offered again). */
  receiveFrames(): Uint8Array[] {
    const frames: Uint8Array[] = [];
    for (let e = this.rx.popUsed(); e !== null; e = this.rx.popUsed()) {
      if (e.len > HDR) {
        const loc = this.rxBufferOf(e.id);
        frames.push(this.bytes.slice(loc + HDR, loc + e.len));
      }
    }
    eventfdRead(this.callFds[0]);
    this.postRxBuffers();
    return frames;
  }

  /** TX chains the relay has completed. */
  reclaimTx(): number {
    let n = 0;
    while (this.tx.popUsed() !== null) n++;
    return n;
  }

  private rxBufferOf(head: number): number {
    const view = new DataView(this.mem.buffer);
    const d = this.rx.layout.descGpa + head * 16;
    return Number(view.getBigUint64(d, true));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.disconnect();
    for (const fd of [...this.kickFds, ...this.callFds, this.memFd]) closeFd(fd);
    munmap(this.mem);
  }
}

/** An Ethernet frame to `dst` with a marker in the payload, so the receiver can tell it apart. */
export function testFrame(dst: Uint8Array, src: Uint8Array, marker: number, length = 64): Uint8Array {
  const f = new Uint8Array(length);
  f.set(dst, 0);
  f.set(src, 6);
  f.set([0x88, 0xb5], 12); // IEEE local experimental ethertype: nothing on the host answers it
  new DataView(f.buffer).setUint32(14, marker >>> 0);
  return f;
}

