// A device-side helper for smoke tests and protocol tracing: it completes every chain the driver
// places on one TX vring (returning it with length 0) and counts the frames, using the same
// SplitQueue the relay uses. It polls on a short timer rather than sleeping on the kick fd, so a
// front-end that suppresses kicks while the ring is busy is still served, and nothing spins.
import { DescriptorChain, SplitQueue } from '../virtio/split-queue.js';
import type { VringConfig } from './device.js';
import type { RecordingDevice } from './recording-device.js';

export class TxChainCounter {
  packets = 0;
  badChains = 0;
  lastFrameLength = -1;
  /** The first bytes (up to 64) of the most recent frame, after the virtio-net header. */
  lastFrameHead = new Uint8Array(0);
  /** Frames per Ethernet type (the 16 bits after the MAC addresses). */
  readonly byEthertype = new Map<number, number>();
  private queue: SplitQueue | null = null;
  private timer: NodeJS.Timeout | null = null;
  private readonly chain = new DescriptorChain();
  private readonly head = new Uint8Array(64);

  constructor(device: RecordingDevice, private readonly index: number, private readonly pollMs = 2) {
    device.onStarted = (i, cfg) => {
      if (i === this.index) this.attach(device, cfg);
    };
    device.onStopping = (i) => {
      if (i === this.index) this.detach();
    };
    device.lastAvailOf = (i, cfg) => (i === this.index && this.queue ? this.queue.lastAvail : cfg.lastAvail);
  }

  private attach(device: RecordingDevice, cfg: VringConfig): void {
    const memory = device.memory!.memory;
    const at = (ua: number, len: number) => {
      const loc = memory.userToHost(ua, len);
      if (!loc) throw new Error(`vring ${cfg.index}: ring at 0x${ua.toString(16)} is not translatable`);
      return loc;
    };
    this.queue = new SplitQueue({
      memory,
      size: cfg.size,
      descTable: at(cfg.desc.userAddr, 16 * cfg.size),
      availRing: at(cfg.avail.userAddr, 6 + 2 * cfg.size),
      usedRing: at(cfg.used.userAddr, 6 + 8 * cfg.size),
      eventIdx: cfg.eventIdx,
      indirect: cfg.indirect,
      lastAvail: cfg.lastAvail,
      lastUsed: cfg.lastUsed,
      name: `vring ${cfg.index}`,
    });
    const headerLength = cfg.netHeaderLength;
    this.detach();
    this.timer = setInterval(() => this.drain(headerLength), this.pollMs);
  }

  private drain(headerLength: number): void {
    const q = this.queue;
    if (!q) return;
    for (let burst = 0; burst < 256 && q.popChain(this.chain); burst++) {
      if (this.chain.ok && this.chain.writableLength === 0 && this.chain.readableLength >= headerLength) {
        this.packets++;
        this.lastFrameLength = this.chain.readableLength - headerLength;
        const n = this.chain.copyOut(headerLength, this.head, 0, this.head.length);
        this.lastFrameHead = this.head.slice(0, n);
        if (n >= 14) {
          const type = (this.head[12] << 8) | this.head[13];
          this.byEthertype.set(type, (this.byEthertype.get(type) ?? 0) + 1);
        }
      } else this.badChains++;
      q.pushUsed(this.chain.head, 0);
      if (q.pendingUsedCount >= 32) q.flushUsed();
    }
    q.flushUsed();
  }

  private detach(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  stop(): void {
    this.detach();
  }

  async waitForPackets(n: number, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.packets < n) {
      if (Date.now() > deadline) throw new Error(`only ${this.packets} TX frames completed in ${timeoutMs} ms, wanted ${n}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}
