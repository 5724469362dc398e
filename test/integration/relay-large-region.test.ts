// A VM's RAM above 4 GiB is one vhost-user region larger than any typed array can view. The
// relay must map it (GuestMemory holds it as 1 GiB pieces) and forward through rings and buffers
// that live past the 4 GiB mark, including a receive buffer that straddles the 5 GiB piece
// boundary. The front-end is our vhost-user front-end with a 6 GiB sparse memfd as guest RAM;
// the VF is a veth whose peer sits in a network namespace.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { close as closeFd } from '../../sys/fd.js';
import { MAP_SHARED, PROT_READ, PROT_WRITE, ftruncate, memfdCreate, mmap, munmap } from '../../sys/memory.js';
import { Reactor } from '../../sys/poll.js';
import { Frontend } from '../../vhost-user/frontend.js';
import { VirtioNetFeature } from '../../vhost-user/features.js';
import { REGION_VIEW_BYTES } from '../../virtio/guest-memory.js';
import { NetTestVm, type NetTestVmLayout } from '../support/net-test-vm.js';
import { createNetns, createVethPair, deleteLink, deleteNetns, linkCounter, requireBinary, requireRoot, uniqueTag } from '../support/netns.js';
import { startProcess, stopAll, waitFor } from '../support/processes.js';
import { startRelay, type RunningRelay } from '../support/relay.js';

vi.setConfig({ testTimeout: 120_000, hookTimeout: 60_000 });

const ready = requireRoot() && requireBinary('ip') && requireBinary('python3');
const tag = uniqueTag();
const ns = `lrns${tag}`;
const vf = `lr${tag}`;
const peer = `lq${tag}`;
const RELAY = 0;
const GIB = 2 ** 30;
/** The whole region: 6 GiB, one region as QEMU sends RAM above 4 GiB. Sparse: only touched pages cost. */
const REGION = 6 * GIB;
/** The VM's rings and buffers live in a 4 MiB window that starts 1 MiB below 5 GiB. */
const WINDOW = 5 * GIB - (1 << 20);

const LAYOUT: NetTestVmLayout = {
  gpaBase: WINDOW,
  memSize: 4 << 20,
  queueSize: 256,
  rxRingGpa: WINDOW, // below the 5 GiB boundary
  txRingGpa: WINDOW + (1 << 20) + 0x1_0000, // above it
  // The first receive buffer straddles the boundary between the relay's 4th and 5th 1 GiB piece.
  rxBuffersGpa: 5 * GIB - 1024,
  txBuffersGpa: WINDOW + (2 << 20),
  bufferSize: 2048,
  netHdr: 12,
  etherTypeOut: 0x88b5,
  etherTypeIn: 0x88b6,
};

/** Sends `count` numbered frames to the VM, slowly enough that 256 receive buffers hold them. */
const SENDER = `
import socket, sys, struct, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
head = bytes.fromhex('ffffffffffff02000000beef') + struct.pack('>H', ${LAYOUT.etherTypeIn})
n = int(sys.argv[2])
for seq in range(n):
    s.send(head + struct.pack('>I', seq) + bytes(42))
    time.sleep(0.001)
print('sent %d' % n, flush=True)
`;

let relay: RunningRelay;
let dir: string;
let reactor: Reactor;

describe.skipIf(!ready)('a memory region larger than 4 GiB', () => {
  beforeAll(async () => {
    createNetns(ns);
    createVethPair(vf, peer, { nsB: ns, noIpv6: true });
    dir = mkdtempSync(join(tmpdir(), `vio4wd-large-region-${process.pid}-`));
    reactor = new Reactor();
    relay = await startRelay({
      cpus: [1],
      staticVfs: { [vf]: RELAY },
      logLevel: 6,
      configLines: ['VIO4WD_CORE_SCHED_ENABLE=false'],
    });
  });

  afterAll(async () => {
    await relay?.stop();
    await stopAll();
    await reactor?.close();
    deleteLink(vf);
    deleteNetns(ns);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('forwards both ways through rings and buffers past 4 GiB', async () => {
    expect(REGION).toBeGreaterThan(4 * REGION_VIEW_BYTES);
    const memFd = memfdCreate('large-region-guest-ram');
    ftruncate(memFd, REGION);
    // The front-end's own mapping of the whole region (no view: it is larger than one can be) gives
    // the user addresses; the test VM works through a small window of the same file.
    const whole = mmap({ length: REGION, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED, fd: memFd, view: false });
    const window = mmap({ length: LAYOUT.memSize, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED, fd: memFd, offset: WINDOW });
    const { vm, fds } = NetTestVm.withEventfds(window, LAYOUT, whole.address);
    const { rxSetup, txSetup } = vm;
    let frontend: Frontend | null = null;
    try {
      frontend = await Frontend.connect(relay.socketPath(RELAY), { reactor, retryMs: 100, timeoutMs: 20_000 });
      const negotiated = await frontend.negotiate({ features: 2 ** VirtioNetFeature.VERSION_1 });
      vm.refillRx();
      await frontend.startDevice(negotiated.features, [{ guestPhysAddr: 0, size: REGION, userAddr: whole.address, mmapOffset: 0, fd: memFd }], [rxSetup, txSetup]);

      // VM → VF: numbered frames from buffers above 5 GiB leave through the veth.
      const vfTxBefore = linkCounter(vf, 'tx_packets');
      const SEND = 300;
      await waitFor(
        () => {
          if (vm.nextTxSeq < SEND) vm.send(SEND - vm.nextTxSeq);
          else vm.send(0);
          return linkCounter(vf, 'tx_packets') - vfTxBefore >= SEND;
        },
        30_000,
        `${SEND} frames from the VM to leave the VF`,
        20,
      );
      expect(vm.usedIdx(1)).toBe(SEND % 65536);

      // VF → VM: every numbered frame arrives, the first in the buffer that straddles 5 GiB.
      const COUNT = 200;
      const sender = startProcess('ip', ['netns', 'exec', ns, 'python3', '-c', SENDER, peer, String(COUNT)], { label: 'sender' });
      await sender.waitForOutput(/sent \d+/, 60_000);
      await waitFor(
        () => {
          vm.pollRx();
          return new Set(vm.received).size >= COUNT;
        },
        30_000,
        `${COUNT} frames from the VF to reach the VM`,
        20,
      );
      expect([...new Set(vm.received)].sort((a, b) => a - b)).toEqual(Array.from({ length: COUNT }, (_, i) => i));
      expect(vm.foreignRx).toBe(0);
      const faults = relay.logs().filter((l) => /guest ring broken|descriptor chain dropped|not started/.test(String(l.msg)));
      expect(faults).toEqual([]);
    } finally {
      await frontend?.close();
      munmap(window);
      munmap(whole);
      closeFd(memFd);
      for (const fd of fds) closeFd(fd);
    }
  });
});
