// The data path over in-memory VF links (relay/datapath/memory-link.ts): guest rings in a memfd
// driven from the test, VmToVf and VfToVm as a worker runs them, and VFs that are two frame rings
// in shared memory. No kernel port, no root: forwarding, bonds, backpressure and handover.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Counter } from '../../relay/datapath/counters.js';
import { createMemoryLink, MemoryWire, type MemoryLinkHandle } from '../../relay/datapath/memory-link.js';
import type { PortSpec } from '../../relay/datapath/worker-protocol.js';
import { TX_HDR, openTxRig, txDirection, type TxRig } from '../support/tx-direction.js';
import { rxDirection } from '../support/rx-direction.js';

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

/** A UDP/IPv4 frame of `length` bytes from 10.0.0.`src` port `sport`, carrying `seq`. */
function frame(seq: number, length = 100, src = 1, sport = 1000): Uint8Array {
  const f = new Uint8Array(length);
  f.set([2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00], 0);
  f.set([0x45, 0, (length - 14) >> 8, (length - 14) & 0xff, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, src, 10, 0, 0, 200], 14);
  f.set([sport >> 8, sport & 0xff, 0, 9], 34);
  f[42] = seq >> 8;
  f[43] = seq & 0xff;
  for (let i = 44; i < length; i++) f[i] = (seq + i) & 0xff;
  return f;
}

const noHeader = new Uint8Array(TX_HDR);

function bond(mode: PortSpec['mode'], links: MemoryLinkHandle[], active = 0, up = links.map(() => true)): PortSpec {
  return { mode, active, members: links.map((h, i) => ({ netdev: h.name, handle: h, up: up[i] })) };
}

describe('the data path over in-memory links', () => {
  let rig: TxRig;
  let link: MemoryLinkHandle;

  beforeAll(() => {
    link = createMemoryLink('mem0', { slots: 8 });
    rig = openTxRig('mem0', {}, undefined, undefined, link);
  });

  afterAll(() => rig?.close());

  it('VM→VF: frames leave as written; one past the MTU is a bad frame, a tagged one 4 bytes longer is not', () => {
    const wire = new MemoryWire(link);
    const g = txDirection(rig, 1);
    const good = [frame(1, 60), frame(2, 1514)];
    const tagged = frame(3, 1518);
    tagged.set([0x81, 0x00, 0x00, 0x07], 12);
    tagged.set([0x08, 0x00], 16);
    for (const f of [...good, frame(4, 1515), tagged]) g.post(noHeader, f);
    g.publish();
    expect(g.d.burst()).toBe(4);
    expect(wire.take().map(hex)).toEqual([...good, tagged].map(hex));
    expect(g.counter(Counter.Packets)).toBe(3);
    expect(g.counter(Counter.Bytes)).toBe(60 + 1514 + 1518);
    expect(g.counter(Counter.DropsBadFrame)).toBe(1);
    expect(g.reclaim()).toBe(4);
    g.d.release();
  });

  it('VM→VF: a full link refuses what it cannot take, counted as a full queue, and every chain goes back to the guest', () => {
    const wire = new MemoryWire(link);
    const g = txDirection(rig, 1);
    let seq = 0;
    for (let k = 0; k < 6; k++) g.post(noHeader, frame(seq++));
    g.publish();
    expect(g.d.burst()).toBe(6);
    expect(g.reclaim()).toBe(6);
    for (let k = 0; k < 6; k++) g.post(noHeader, frame(seq++));
    g.publish();
    expect(g.d.burst()).toBe(6);
    expect(g.reclaim()).toBe(6);
    // 8 slots: the first 8 frames are on the wire, the other 4 were refused.
    expect(wire.take().map((f) => f[43])).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(g.counter(Counter.Packets)).toBe(8);
    expect(g.counter(Counter.DropsQueueFull)).toBe(4);
    g.d.release();
  });

  it('VM→VF bonds: round-robin alternates, active-backup follows the active member, broadcast counts each frame once, balance keeps a flow on one member', () => {
    const links = [createMemoryLink('bondA', { slots: 64 }), createMemoryLink('bondB', { slots: 64 })];
    const wires = links.map((l) => new MemoryWire(l));
    const taken = () => wires.map((w) => w.take().map((f) => f[43]));

    // A worker gets its port spec as a message: the mode is a string copied out of it.
    let g = txDirection(rig, 2, {}, structuredClone(bond('round-robin', links)));
    for (let i = 0; i < 6; i++) g.post(noHeader, frame(i));
    g.publish();
    g.d.burst();
    g.reclaim();
    expect(taken()).toEqual([[0, 2, 4], [1, 3, 5]]);
    g.d.release();

    g = txDirection(rig, 2, {}, bond('active-backup', links, 1));
    for (let i = 0; i < 3; i++) g.post(noHeader, frame(i));
    g.publish();
    g.d.burst();
    g.reclaim();
    expect(taken()).toEqual([[], [0, 1, 2]]);
    // Failover: member 0 active, member 1 without carrier.
    g.d.port!.setActive(0, [true, false]);
    for (let i = 3; i < 5; i++) g.post(noHeader, frame(i));
    g.publish();
    g.d.burst();
    g.reclaim();
    expect(taken()).toEqual([[3, 4], []]);
    g.d.release();

    g = txDirection(rig, 2, {}, bond('broadcast', links));
    for (let i = 0; i < 3; i++) g.post(noHeader, frame(i));
    g.publish();
    g.d.burst();
    g.reclaim();
    expect(taken()).toEqual([[0, 1, 2], [0, 1, 2]]);
    expect(g.counter(Counter.Packets)).toBe(3);
    g.d.release();

    g = txDirection(rig, 2, {}, bond('balance', links));
    const flows = [1, 2, 3, 4, 5, 6];
    for (let round = 0; round < 2; round++) {
      for (const src of flows) g.post(noHeader, frame(src, 100, src, 2000 + src));
      g.publish();
      g.d.burst();
      g.reclaim();
    }
    const [a, b] = taken();
    // Each flow's two frames went to the same member, and both members got some flow.
    for (const src of flows) expect(a.filter((s) => s === src).length + b.filter((s) => s === src).length).toBe(2);
    for (const src of flows) expect(a.includes(src) && b.includes(src)).toBe(false);
    expect(a.length * b.length).toBeGreaterThan(0);
    g.d.release();
  });

  it('a port spec with a bonding mode the data path does not know is refused, not run as no mode at all', () => {
    const links = [createMemoryLink('bondX', { slots: 4 })];
    expect(() => txDirection(rig, 2, {}, bond('xor' as PortSpec['mode'], links))).toThrow('unknown bonding mode "xor"');
  });

  it('VM→VF handover: a direction that resumes from the exported state continues the round-robin where it stopped', () => {
    const links = [createMemoryLink('hoA', { slots: 64 }), createMemoryLink('hoB', { slots: 64 })];
    const wires = links.map((l) => new MemoryWire(l));
    const g = txDirection(rig, 3, {}, bond('round-robin', links));
    for (let i = 0; i < 3; i++) g.post(noHeader, frame(i));
    g.publish();
    g.d.burst();
    g.reclaim();
    const state = g.d.exportState();
    g.d.release();
    expect(state.rrMember).toBe(1);
    // The same guest ring, picked up by a new direction (as on another worker).
    const h = txDirection(rig, 3, {}, bond('round-robin', links), state);
    expect(h.d.exportState().rrMember).toBe(1);
    h.d.release();
    expect(wires.map((w) => w.take().map((f) => f[43]))).toEqual([[0, 2], [1]]);
  });

  it('VF→VM: frames reach the guest whole; while it has no buffer they wait in the link; a full link counts its drops', () => {
    const rx = createMemoryLink('rx0', { slots: 16 });
    const wire = new MemoryWire(rx);
    const g = rxDirection(rig, 4, { mergeable: true }, bond('single', [rx]));
    const sent = Array.from({ length: 20 }, (_, i) => frame(i, 60 + i * 50));
    const accepted = sent.filter((f) => wire.deliver(f));
    expect(accepted.length).toBe(16);
    g.postMergeable(10, 2048);
    g.d.burst();
    let got = g.received().map((r) => r.frame);
    expect(got.length).toBe(10);
    expect(wire.waiting).toBe(6);
    expect(g.d.hasWork()).toBe(false); // frames wait, but the guest has no room: not work
    g.postMergeable(10, 2048);
    g.d.burst();
    got = got.concat(g.received().map((r) => r.frame));
    expect(got.map(hex)).toEqual(accepted.map(hex));
    g.d.foldKernelDrops();
    expect(g.counter(Counter.DropsKernelRing)).toBe(4);
    expect(g.counter(Counter.DropsQueueFull)).toBe(0);
    g.d.release();
  });

  it('VF→VM: kernel drops are the relay\'s while the guest had room, the guest\'s once a burst used up its buffers with frames left', () => {
    let seq = 0;
    const sender = (wire: MemoryWire) => (n: number) => Array.from({ length: n }, () => wire.deliver(frame(seq++))).filter((ok) => !ok).length;

    // The relay did not run while 20 frames came: 4 dropped with 64 guest buffers waiting.
    const rx = createMemoryLink('rx2', { slots: 16 });
    const send = sender(new MemoryWire(rx));
    const g = rxDirection(rig, 4, { mergeable: true }, bond('single', [rx]));
    g.postMergeable(64, 2048);
    expect(send(20)).toBe(4);
    g.d.foldKernelDrops();
    expect(g.counter(Counter.DropsKernelRing)).toBe(4);
    expect(g.counter(Counter.DropsKernelRingGuestNoBuffers)).toBe(0);
    g.d.burst();
    expect(g.received().length).toBe(16);
    g.d.release();

    // The guest had room when the burst began (10 buffers) but not for all that waited: the burst
    // used them up and 6 frames stayed; of 14 more, 4 found the link full.
    const rx3 = createMemoryLink('rx3', { slots: 16 });
    const wire3 = new MemoryWire(rx3);
    const send3 = sender(wire3);
    const h = rxDirection(rig, 4, { mergeable: true }, bond('single', [rx3]));
    expect(send3(16)).toBe(0);
    h.postMergeable(10, 2048);
    h.d.burst();
    expect(h.received().length).toBe(10);
    expect(wire3.waiting).toBe(6);
    expect(send3(14)).toBe(4);
    h.d.foldKernelDrops();
    expect(h.counter(Counter.DropsKernelRing)).toBe(4);
    expect(h.counter(Counter.DropsKernelRingGuestNoBuffers)).toBe(4);
    h.d.release();
  });

  it('VF→VM active-backup: frames from the backup member are taken and dropped as not connected, the active member\'s delivered', () => {
    const links = [createMemoryLink('abA', { slots: 16 }), createMemoryLink('abB', { slots: 16 })];
    const wires = links.map((l) => new MemoryWire(l));
    const g = rxDirection(rig, 5, { mergeable: true }, bond('active-backup', links, 0));
    g.postMergeable(10, 2048);
    wires[0].deliver(frame(1));
    wires[1].deliver(frame(2));
    wires[1].deliver(frame(3));
    g.d.burst();
    expect(g.received().map((r) => r.frame[43])).toEqual([1]);
    expect(g.counter(Counter.DropsNotConnected)).toBe(2);
    expect(wires[1].waiting).toBe(0);
    g.d.release();
  });
});
