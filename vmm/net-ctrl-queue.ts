// The virtio-net control virtqueue (virtio 1.2 §5.1.6.5), served by the VMM itself: a vhost-user
// back-end (the relay) serves only the data queues. Linux needs it before it accepts
// VIRTIO_NET_F_MQ, and it is how the guest says how many queue pairs it uses
// (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET); the NIC turns that into SET_VRING_ENABLE on the back-end.
// Every command is a chain of readable bytes (class, command, data) followed by one writable
// status byte, directly in the ring or through one indirect table. Everything read from the ring
// is guest-controlled and bounds-checked.
import type { GuestRam } from './guest-ram.js';
import { guestSlice } from './guest-ram.js';

export const VIRTIO_NET_OK = 0;
export const VIRTIO_NET_ERR = 1;
export const VIRTIO_NET_CTRL_MQ = 4;
export const VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET = 0;
export const VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN = 1;

const VRING_DESC_F_NEXT = 1;
const VRING_DESC_F_WRITE = 2;
const VRING_DESC_F_INDIRECT = 4;
/** A control command is a few bytes; more is a broken or hostile chain. */
const MAX_COMMAND_BYTES = 4096;
/** Entries of an indirect table; a command needs three. */
const MAX_INDIRECT = 64;

export interface CtrlQueueRing {
  size: number;
  desc: number;
  driver: number;
  device: number;
}

/** What a command does; its answer is the status byte (VIRTIO_NET_OK or VIRTIO_NET_ERR). */
export type CtrlHandler = (cls: number, cmd: number, data: Uint8Array) => Promise<number>;

export class NetCtrlQueue {
  private lastAvail = 0;

  constructor(
    private readonly ram: GuestRam,
    private readonly ring: CtrlQueueRing,
    private readonly what: string,
  ) {}

  private view(gpa: number, length: number, part: string): DataView {
    const bytes = guestSlice(this.ram, gpa, length, `${this.what} ${part}`);
    return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  /**
   * Serves every command the guest has made available, in order. Returns how many were answered.
   * A chain that breaks the rules gets length 0 in the used ring and no status.
   */
  async serve(handle: CtrlHandler): Promise<number> {
    const { size } = this.ring;
    const availIdx = this.view(this.ring.driver + 2, 2, 'avail.idx').getUint16(0, true);
    let served = 0;
    while (this.lastAvail !== availIdx) {
      if (((availIdx - this.lastAvail) & 0xffff) > size) throw new Error(`${this.what}: avail.idx ${availIdx} is more than ${size} ahead of ${this.lastAvail}`);
      const slot = this.lastAvail % size;
      const head = this.view(this.ring.driver + 4 + 2 * slot, 2, 'avail ring').getUint16(0, true);
      if (head >= size) throw new Error(`${this.what}: avail entry names descriptor ${head} of a ${size}-entry table`);
      let written = 0;
      const out: number[] = [];
      let status: { gpa: number } | null = null;
      let ok = true;
      // Linux puts a command of several buffers in an indirect table when INDIRECT_DESC is on.
      let table = this.ring.desc;
      let tableSize = size;
      let indirect = false;
      for (let i = head, n = 0; ; n++) {
        if (n >= tableSize) {
          ok = false;
          break;
        }
        const d = this.view(table + 16 * i, 16, 'descriptor');
        const addr = d.getUint32(0, true) + d.getUint32(4, true) * 2 ** 32;
        const len = d.getUint32(8, true);
        const flags = d.getUint16(12, true);
        const next = d.getUint16(14, true);
        if (flags & VRING_DESC_F_INDIRECT) {
          // Only the head may point at a table, and the table must hold whole descriptors.
          if (indirect || n > 0 || flags & VRING_DESC_F_NEXT || len === 0 || len % 16 !== 0 || len / 16 > MAX_INDIRECT) {
            ok = false;
            break;
          }
          indirect = true;
          table = addr;
          tableSize = len / 16;
          i = 0;
          n = -1;
          continue;
        }
        if (flags & VRING_DESC_F_WRITE) {
          if (len > 0 && status === null) status = { gpa: addr };
        } else {
          if (status !== null || out.length + len > MAX_COMMAND_BYTES) {
            ok = false;
            break;
          }
          if (len > 0) out.push(...guestSlice(this.ram, addr, len, `${this.what} command`));
        }
        if (!(flags & VRING_DESC_F_NEXT)) break;
        if (next >= tableSize) {
          ok = false;
          break;
        }
        i = next;
      }
      if (ok && status !== null && out.length >= 2) {
        const answer = await handle(out[0], out[1], Uint8Array.from(out.slice(2)));
        guestSlice(this.ram, status.gpa, 1, `${this.what} status`)[0] = answer;
        written = 1;
      }
      const usedIdx = this.view(this.ring.device + 2, 2, 'used.idx');
      const usedSlot = usedIdx.getUint16(0, true) % size;
      const entry = this.view(this.ring.device + 4 + 8 * usedSlot, 8, 'used ring');
      entry.setUint32(0, head, true);
      entry.setUint32(4, written, true);
      usedIdx.setUint16(0, (usedIdx.getUint16(0, true) + 1) & 0xffff, true);
      this.lastAvail = (this.lastAvail + 1) & 0xffff;
      served++;
    }
    // With VIRTIO_RING_F_EVENT_IDX the driver kicks only when avail.idx passes avail_event (after
    // the used ring): keep it at the next entry we expect, or every command after the first would
    // wait for a kick that never comes. Harmless without EVENT_IDX.
    this.view(this.ring.device + 4 + 8 * size, 2, 'avail_event').setUint16(0, this.lastAvail, true);
    return served;
  }
}
