// The VMM's virtio-net control queue on real guest RAM, with commands laid out as Linux lays them
// out: class+command, data and status in three descriptors, directly or through an indirect table.
import { describe, expect, it } from 'vitest';
import { createGuestRam, guestSlice, type GuestRam } from '../../vmm/guest-ram.js';
import { NetCtrlQueue, VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, VIRTIO_NET_ERR, VIRTIO_NET_OK } from '../../vmm/net-ctrl-queue.js';

const SIZE = 8;
const DESC = 0x10000;
const AVAIL = 0x11000;
const USED = 0x12000;
const BUFS = 0x20000;
const F_NEXT = 1;
const F_WRITE = 2;
const F_INDIRECT = 4;

function dv(ram: GuestRam, gpa: number, len: number): DataView {
  const b = guestSlice(ram, gpa, len, 'test');
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}
function desc(ram: GuestRam, table: number, i: number, addr: number, len: number, flags: number, next = 0): void {
  const d = dv(ram, table + 16 * i, 16);
  d.setUint32(0, addr, true);
  d.setUint32(4, 0, true);
  d.setUint32(8, len, true);
  d.setUint16(12, flags, true);
  d.setUint16(14, next, true);
}
function offer(ram: GuestRam, head: number): void {
  const idx = dv(ram, AVAIL + 2, 2);
  const n = idx.getUint16(0, true);
  dv(ram, AVAIL + 4 + 2 * (n % SIZE), 2).setUint16(0, head, true);
  idx.setUint16(0, n + 1, true);
}

describe('virtio-net control queue', () => {
  const ram = createGuestRam({ size: 256 * 2 ** 20, shared: true, hugepages: false, mergeable: false, zones: [] });
  const q = new NetCtrlQueue(ram, { size: SIZE, desc: DESC, driver: AVAIL, device: USED }, 'test cvq');
  const seen: Array<[number, number, number[]]> = [];
  const handler = async (cls: number, cmd: number, data: Uint8Array) => {
    seen.push([cls, cmd, [...data]]);
    return cls === VIRTIO_NET_CTRL_MQ ? VIRTIO_NET_OK : VIRTIO_NET_ERR;
  };

  it('answers a direct chain and an indirect one (Linux with INDIRECT_DESC), in the used ring and the status byte', async () => {
    guestSlice(ram, BUFS, 2, 't').set([VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET]);
    guestSlice(ram, BUFS + 16, 2, 't').set([2, 0]);
    guestSlice(ram, BUFS + 32, 1, 't')[0] = 0xff;
    desc(ram, DESC, 0, BUFS, 2, F_NEXT, 1);
    desc(ram, DESC, 1, BUFS + 16, 2, F_NEXT, 2);
    desc(ram, DESC, 2, BUFS + 32, 1, F_WRITE);
    offer(ram, 0);
    // Indirect: one ring descriptor pointing at a three-entry table.
    const table = BUFS + 0x1000;
    guestSlice(ram, BUFS + 64, 2, 't').set([9, 1]);
    guestSlice(ram, BUFS + 96, 1, 't')[0] = 0xff;
    desc(ram, table, 0, BUFS + 64, 2, F_NEXT, 1);
    desc(ram, table, 1, BUFS + 80, 0, F_NEXT, 2);
    desc(ram, table, 2, BUFS + 96, 1, F_WRITE);
    desc(ram, DESC, 3, table, 48, F_INDIRECT);
    offer(ram, 3);

    expect(await q.serve(handler)).toBe(2);
    expect(seen).toEqual([[VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, [2, 0]], [9, 1, []]]);
    expect(guestSlice(ram, BUFS + 32, 1, 't')[0]).toBe(VIRTIO_NET_OK);
    expect(guestSlice(ram, BUFS + 96, 1, 't')[0]).toBe(VIRTIO_NET_ERR);
    expect(dv(ram, USED + 2, 2).getUint16(0, true)).toBe(2);
    expect([dv(ram, USED + 4, 4).getUint32(0, true), dv(ram, USED + 8, 4).getUint32(0, true)]).toEqual([0, 1]);
    expect([dv(ram, USED + 12, 4).getUint32(0, true), dv(ram, USED + 16, 4).getUint32(0, true)]).toEqual([3, 1]);
    expect(await q.serve(handler)).toBe(0);
    // avail_event (after the used ring) asks for a kick at the next command (EVENT_IDX).
    expect(dv(ram, USED + 4 + 8 * SIZE, 2).getUint16(0, true)).toBe(2);
  });

  it('returns a chain without a status byte with length 0 and does not call the handler', async () => {
    seen.length = 0;
    desc(ram, DESC, 4, BUFS, 2, 0);
    offer(ram, 4);
    expect(await q.serve(handler)).toBe(1);
    expect(seen).toEqual([]);
    expect(dv(ram, USED + 2, 2).getUint16(0, true)).toBe(3);
    expect(dv(ram, USED + 4 + 8 * 2 + 4, 4).getUint32(0, true)).toBe(0);
  });
});
