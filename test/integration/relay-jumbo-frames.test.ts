// The VM→VF frame limit at MTU 9000, without a worker thread: a guest TX ring in shared memory, a
// VmToVf direction, and a veth whose peer (in a network namespace) counts what arrives. A 9014-byte
// frame and a 9018-byte VLAN-tagged one leave; a 9018-byte untagged frame and a 9019-byte tagged
// one are dropped and counted as bad frames, never sent cut short.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Counter } from '../../relay/datapath/counters.js';
import { createNetns, createVethPair, deleteLink, deleteNetns, linkCounter, requireRoot, uniqueTag } from '../support/netns.js';
import { sleep } from '../support/processes.js';
import { TX_HDR, openTxRig, txDirection, type TxRig } from '../support/tx-direction.js';

const ready = requireRoot();
const tag = uniqueTag();
const ns = `jfns${tag}`;
const vf = `jf${tag}`;
const peer = `jfp${tag}`;

let rig: TxRig;

/** An Ethernet frame of `length` bytes: broadcast, optionally 802.1Q-tagged, ethertype 0x88b5 inside. */
function frame(length: number, tagged: boolean): Uint8Array {
  const f = new Uint8Array(length);
  f.fill(0xff, 0, 6);
  f.set([0x02, 0, 0, 0, 0x4a, 0x01], 6);
  let at = 12;
  if (tagged) {
    f.set([0x81, 0x00, 0x00, 0x05], at);
    at += 4;
  }
  f.set([0x88, 0xb5], at);
  return f;
}

describe.skipIf(!ready)('VM→VF frames at the VF MTU of 9000', () => {
  beforeAll(() => {
    createNetns(ns);
    createVethPair(vf, peer, { nsB: ns, mtu: 9000, noIpv6: true });
    rig = openTxRig(vf);
  });

  afterAll(() => {
    rig?.close();
    deleteLink(vf);
    deleteNetns(ns);
  });

  it('sends 9014 untagged and 9018 tagged, drops and counts 9018 untagged and 9019 tagged', async () => {
    expect(rig.handle.maxFrameLength).toBe(9014);
    const g = txDirection(rig, 3);
    const frames = [frame(9014, false), frame(9018, true), frame(9018, false), frame(9019, true)];
    // Header and frame in two descriptors, the frame itself split in two, as guests do.
    for (const f of frames) g.post(new Uint8Array(TX_HDR), f, 4000);
    g.publish();
    const packetsBefore = linkCounter(peer, 'rx_packets', ns);
    const bytesBefore = linkCounter(peer, 'rx_bytes', ns);
    expect(g.d.burst()).toBe(4);
    await sleep(200);
    expect(g.counter(Counter.RxPackets)).toBe(4);
    expect(g.counter(Counter.Packets)).toBe(2);
    expect(g.counter(Counter.Bytes)).toBe(9014 + 9018);
    expect(g.counter(Counter.DropsBadFrame)).toBe(2);
    expect(g.counter(Counter.DropsQueueFull)).toBe(0);
    expect(linkCounter(peer, 'rx_packets', ns) - packetsBefore).toBe(2);
    expect(linkCounter(peer, 'rx_bytes', ns) - bytesBefore).toBe(9014 + 9018);
    // Every chain went back to the guest, sent or dropped.
    expect(g.usedIdx()).toBe(4);
    g.d.release();
  });
});
