// The VM→VF frame limit at MTU 9000, without a worker thread: a guest TX ring in shared memory, a
// VmToVf direction, and a veth whose peer (in a network namespace) counts what arrives. A 9014-byte
// frame and a 9018-byte VLAN-tagged one leave; a 9018-byte untagged frame and a 9019-byte tagged
// one are dropped and counted as bad frames, never sent cut short.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAP_SHARED, PROT_READ, PROT_WRITE, ftruncate, memfdCreate, mmap, munmap, type Mapping } from '../../sys/memory.js';
import { close } from '../../sys/fd.js';
import { closePacketRing, openPacketRing, type PacketRingHandle } from '../../sys/packet-ring.js';
import { GuestMemory } from '../../virtio/guest-memory.js';
import { SplitQueueDriver } from '../../virtio/split-queue-driver.js';
import { VmToVf } from '../../relay/datapath/directions.js';
import { Counter, counterBase, createCounterBuffer, Dir } from '../../relay/datapath/counters.js';
import type { DirectionSpec } from '../../relay/datapath/worker-protocol.js';
import { createNetns, createVethPair, deleteLink, deleteNetns, linkCounter, requireRoot, uniqueTag } from '../support/netns.js';
import { sleep } from '../support/processes.js';

const SIZE = 1 << 20;
const QSIZE = 16;
const HDR = 12;
const BUFFERS_AT = 0x10000;
const ready = requireRoot();
const tag = uniqueTag();
const ns = `jfns${tag}`;
const vf = `jf${tag}`;
const peer = `jfp${tag}`;

let memFd: number;
let mem: Mapping;
let handle: PacketRingHandle;

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
    memFd = memfdCreate('jumbo-frames');
    ftruncate(memFd, SIZE);
    mem = mmap({ length: SIZE, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED, fd: memFd });
    handle = openPacketRing(vf, { blockSize: 32 * 1024, blockCount: 8 });
  });

  afterAll(() => {
    if (handle) closePacketRing(handle);
    if (mem) munmap(mem);
    if (memFd) close(memFd);
    deleteLink(vf);
    deleteNetns(ns);
  });

  it('sends 9014 untagged and 9018 tagged, drops and counts 9018 untagged and 9019 tagged', async () => {
    expect(handle.maxFrameLength).toBe(9014);
    const memory = new GuestMemory([{ guestPhysAddr: 0, size: SIZE, userAddr: mem.address, bytes: new Uint8Array(mem.buffer) }]);
    const l = SplitQueueDriver.layout(0, QSIZE);
    const driver = new SplitQueueDriver({ memory, size: QSIZE, descGpa: l.descGpa, availGpa: l.availGpa, usedGpa: l.usedGpa, name: 'tx' });
    const spec: DirectionSpec = {
      relay: 3,
      dir: 'vm2vf',
      vmConnected: true,
      port: { mode: 'single', active: 0, members: [{ netdev: vf, handle, up: true }] },
      guest: {
        memoryId: 5000 + Number(tag),
        regions: [{ guestPhysAddr: 0, userAddr: mem.address, size: SIZE, hostAddress: mem.address }],
        eventIdx: false,
        indirect: false,
        mergeable: false,
        hdrLen: HDR,
        queues: [{ index: 1, size: QSIZE, desc: { region: 0, offset: l.descGpa }, avail: { region: 0, offset: l.availGpa }, used: { region: 0, offset: l.usedGpa }, callFd: -1, kickFd: -1, enabled: true }],
      },
    };
    const counters = new Float64Array(createCounterBuffer());
    const d = new VmToVf(spec, null, counters, (q, m) => {
      throw new Error(`ring ${q} stopped: ${m}`);
    });
    const frames = [frame(9014, false), frame(9018, true), frame(9018, false), frame(9019, true)];
    const bytes = new Uint8Array(mem.buffer);
    frames.forEach((f, i) => {
      // Header and frame in two descriptors, the frame itself split in two, as guests do.
      const at = BUFFERS_AT + i * 0x4000;
      bytes.fill(0, at, at + HDR);
      bytes.set(f, at + HDR);
      driver.addBuffers([
        { gpa: at, len: HDR, writable: false },
        { gpa: at + HDR, len: 4000, writable: false },
        { gpa: at + HDR + 4000, len: f.length - 4000, writable: false },
      ]);
    });
    driver.publish();
    const packetsBefore = linkCounter(peer, 'rx_packets', ns);
    const bytesBefore = linkCounter(peer, 'rx_bytes', ns);
    expect(d.burst()).toBe(4);
    await sleep(200);
    const b = counterBase(3, Dir.VmToVf);
    expect(counters[b + Counter.RxPackets]).toBe(4);
    expect(counters[b + Counter.Packets]).toBe(2);
    expect(counters[b + Counter.Bytes]).toBe(9014 + 9018);
    expect(counters[b + Counter.DropsBadFrame]).toBe(2);
    expect(counters[b + Counter.DropsQueueFull]).toBe(0);
    expect(linkCounter(peer, 'rx_packets', ns) - packetsBefore).toBe(2);
    expect(linkCounter(peer, 'rx_bytes', ns) - bytesBefore).toBe(9014 + 9018);
    // Every chain went back to the guest, sent or dropped.
    expect(Atomics.load(new Uint16Array(mem.buffer, l.usedGpa, 2), 1)).toBe(4);
    d.release();
  });
});
