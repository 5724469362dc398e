// Our front-end (frontend.ts, what vmm/ uses) against DPDK's own back-end, the net_vhost PMD of
// dpdk-testpmd: negotiation, memory table, vring setup, DPDK declaring the device ready, a frame we
// place on the TX ring being received by testpmd, and the stop sequence.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { close as closeFd } from '../../sys/fd.js';
import { eventfd, eventfdWrite } from '../../sys/eventfd.js';
import { MAP_SHARED, PROT_READ, PROT_WRITE, ftruncate, memfdCreate, mmap, munmap, type Mapping } from '../../sys/memory.js';
import { Reactor } from '../../sys/poll.js';
import { Frontend, type VringSetup } from '../../vhost-user/frontend.js';
import { ProtocolFeature, hasBit } from '../../vhost-user/messages.js';
import { VirtioNetFeature } from '../../vhost-user/features.js';
import { hasBinary, isRoot, requireOrSkip } from '../support/env.js';
import { stopAll } from '../support/processes.js';
import { startTestpmd, vhostVdev, type Testpmd } from '../support/testpmd.js';

const ready = requireOrSkip(hasBinary('dpdk-testpmd'), 'needs dpdk-testpmd (Debian package dpdk-dev)') && requireOrSkip(isRoot(), 'needs root for dpdk-testpmd');

const MEM_SIZE = 4 << 20;
const GPA_BASE = 0; // like QEMU: guest-physical addresses differ from our user addresses
const QSIZE = 256;
const RING_STRIDE = 0x1_0000;
const DESC_AT = 0x0;
const AVAIL_AT = 0x1000;
const USED_AT = 0x2000;
const BUFFERS_AT = 0x10_0000;

let dir: string;
let reactor: Reactor;
let testpmd: Testpmd | null = null;
let frontend: Frontend | null = null;
const eventFds: number[] = [];

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), `vio4wd-fe-${process.pid}-`));
  reactor = new Reactor();
});

afterEach(async () => {
  await frontend?.close();
  frontend = null;
  await testpmd?.stop();
  testpmd = null;
  for (const fd of eventFds.splice(0)) closeFd(fd);
});

afterAll(async () => {
  await stopAll();
  await reactor.close();
  rmSync(dir, { recursive: true, force: true });
});

function vringSetup(mem: Mapping, index: number): VringSetup {
  const base = mem.address + index * RING_STRIDE;
  const kickFd = eventfd();
  const callFd = eventfd();
  eventFds.push(kickFd, callFd);
  return { index, size: QSIZE, descUserAddr: base + DESC_AT, availUserAddr: base + AVAIL_AT, usedUserAddr: base + USED_AT, kickFd, callFd };
}

/** Places one frame (12-byte virtio-net header + `frame`) on the TX vring as descriptor 0 and publishes it. */
function postTxFrame(mem: Mapping, txIndex: number, frame: Uint8Array, slot: number): void {
  const bytes = new Uint8Array(mem.buffer);
  const view = new DataView(mem.buffer);
  const ring = txIndex * RING_STRIDE;
  const bufferOffset = BUFFERS_AT + slot * 2048;
  bytes.fill(0, bufferOffset, bufferOffset + 12);
  bytes.set(frame, bufferOffset + 12);
  const desc = ring + DESC_AT + 16 * slot;
  view.setBigUint64(desc, BigInt(GPA_BASE + bufferOffset), true);
  view.setUint32(desc + 8, 12 + frame.length, true);
  view.setUint16(desc + 12, 0, true);
  view.setUint16(desc + 14, 0, true);
  const availIdx = view.getUint16(ring + AVAIL_AT + 2, true);
  view.setUint16(ring + AVAIL_AT + 4 + 2 * (availIdx % QSIZE), slot, true);
  Atomics.store(new Uint16Array(mem.buffer, ring + AVAIL_AT, 2), 1, (availIdx + 1) & 0xffff);
}

describe.runIf(ready)('our front-end against the DPDK vhost back-end (net_vhost)', () => {
  it('brings the device up, delivers a TX frame to testpmd, and stops the vrings', async () => {
    const path = join(dir, 'vhost.sock');
    testpmd = startTestpmd({ vdevs: [vhostVdev({ iface: path })], forwardMode: 'rxonly', label: 'testpmd-vhost' });
    const memFd = memfdCreate('frontend-guest-ram');
    ftruncate(memFd, MEM_SIZE);
    const mem = mmap({ length: MEM_SIZE, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED, fd: memFd });
    try {
      frontend = await Frontend.connect(path, { reactor, retryMs: 100, timeoutMs: 20_000 });
      const negotiated = await frontend.negotiate({ features: 2 ** VirtioNetFeature.VERSION_1 });
      expect(hasBit(negotiated.features, VirtioNetFeature.VERSION_1)).toBe(true);
      expect(hasBit(negotiated.features, VirtioNetFeature.PROTOCOL_FEATURES)).toBe(true);
      expect(hasBit(negotiated.protocolFeatures, ProtocolFeature.REPLY_ACK)).toBe(true);
      expect(negotiated.queuePairs).toBeGreaterThanOrEqual(1);

      const rx = vringSetup(mem, 0);
      const tx = vringSetup(mem, 1);
      await frontend.startDevice(negotiated.features, [{ guestPhysAddr: GPA_BASE, size: MEM_SIZE, userAddr: mem.address, mmapOffset: 0, fd: memFd }], [rx, tx]);
      await testpmd.proc.waitForOutput(/virtio is now ready for processing/, 20_000);

      const frame = new Uint8Array(60);
      frame.fill(0xff, 0, 6); // broadcast
      frame.set([0x02, 0, 0, 0, 0, 1], 6);
      frame.set([0x88, 0xb5], 12); // local experimental ethertype
      postTxFrame(mem, 1, frame, 0);
      eventfdWrite(tx.kickFd, 1);
      // The back-end returns the buffer through the used ring once it has dequeued it.
      const used = new Uint16Array(mem.buffer, RING_STRIDE + USED_AT, 2);
      const deadline = Date.now() + 15_000;
      while (Atomics.load(used, 1) !== 1) {
        if (Date.now() > deadline) throw new Error(`net_vhost did not consume the TX frame:\n${testpmd.output().slice(-2000)}`);
        await new Promise((r) => setTimeout(r, 20));
      }

      const bases = await frontend.stopDevice([0, 1]);
      expect(bases).toEqual([0, 1]);
      await frontend.close();
      frontend = null;
      const stats = await testpmd.stop();
      testpmd = null;
      expect(stats[0]?.rxPackets).toBe(1);
    } finally {
      munmap(mem);
      closeFd(memFd);
    }
  });

  it('reports a refused request as an error at that request', async () => {
    const path = join(dir, 'vhost-refuse.sock');
    testpmd = startTestpmd({ vdevs: [vhostVdev({ iface: path })], forwardMode: 'rxonly', label: 'testpmd-vhost-refuse' });
    frontend = await Frontend.connect(path, { reactor, retryMs: 100, timeoutMs: 20_000 });
    await frontend.negotiate({ features: 2 ** VirtioNetFeature.VERSION_1 });
    // A vring size that is not a power of two is refused by DPDK (NACK through REPLY_ACK).
    await expect(frontend.setVringNum(0, 3)).rejects.toThrow(/refused SET_VRING_NUM/);
  });
});
