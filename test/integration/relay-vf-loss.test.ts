// Every frame that enters the VF and does not reach the guest is counted, by cause. A test VM
// (our front-end and split-queue driver) stops giving receive buffers while a sender in a network
// namespace floods the VF: the relay leaves frames in the VF packet ring (backpressure) until the
// kernel has to drop them. Then the VM takes everything that waited. The frames the VF received
// must equal what reached the guest plus the relay's drop counters (kernel ring full, guest ring
// full, bad frame, not connected), and the kernel-ring count must be what the guest missed.
// With an AF_XDP VF port the VM then leaves while frames still wait in the socket's RX ring: the
// relay reopens the port without the VM's memory, and those frames count as not connected.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { ControlClient } from '../../port-control/client.js';
import { close as closeFd } from '../../sys/fd.js';
import { MAP_SHARED, PROT_READ, PROT_WRITE, ftruncate, memfdCreate, mmap, munmap } from '../../sys/memory.js';
import { Reactor } from '../../sys/poll.js';
import { Frontend } from '../../vhost-user/frontend.js';
import { VirtioNetFeature } from '../../vhost-user/features.js';
import { NetTestVm, type NetTestVmLayout } from '../support/net-test-vm.js';
import { createNetns, createVethPair, deleteLink, deleteNetns, linkCounter, requireBinary, requireRoot, uniqueTag } from '../support/netns.js';
import { sleep, startProcess, stopAll, waitFor } from '../support/processes.js';
import { startRelay, type RunningRelay } from '../support/relay.js';

vi.setConfig({ testTimeout: 120_000, hookTimeout: 60_000 });

const ready = requireRoot() && requireBinary('ip') && requireBinary('python3');
const RELAY = 0;
/** Far more than the VF ring holds at a burst's pace (128 blocks of 32 KiB, about 200 frames a block). */
const FLOOD = 60_000;

const LAYOUT: NetTestVmLayout = {
  memSize: 4 << 20,
  queueSize: 256,
  rxRingGpa: 0x0,
  txRingGpa: 0x1_0000,
  rxBuffersGpa: 0x10_0000,
  txBuffersGpa: 0x20_0000,
  bufferSize: 2048,
  netHdr: 12,
  etherTypeOut: 0x88b5,
  etherTypeIn: 0x88b6,
};

/** Sends `count` numbered frames as fast as it can. */
const FLOODER = `
import socket, sys, struct
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
head = bytes.fromhex('ffffffffffff02000000beef') + struct.pack('>H', ${LAYOUT.etherTypeIn})
n = int(sys.argv[2])
for seq in range(n):
    s.send(head + struct.pack('>I', seq) + bytes(42))
print('sent %d' % n, flush=True)
`;

let reactor: Reactor;

interface Rig {
  relay: RunningRelay;
  dir: string;
  vf: string;
  peer: string;
  ns: string;
}

async function startRig(vfPort: 'af_packet' | 'af_xdp'): Promise<Rig> {
  const t = uniqueTag();
  const rig = { ns: `lsns${t}`, vf: `lv${t}`, peer: `lp${t}`, dir: mkdtempSync(join(tmpdir(), `vio4wd-vf-loss-${process.pid}-`)) } as Rig;
  createNetns(rig.ns);
  createVethPair(rig.vf, rig.peer, { nsB: rig.ns, noIpv6: true });
  rig.relay = await startRelay({
    cpus: [1],
    staticVfs: { [rig.vf]: RELAY },
    noZmq: false,
    logLevel: 6,
    configLines: [
      'VIO4WD_CORE_SCHED_ENABLE=false',
      `VIRTIOFWD_VF_PORT=${vfPort}`,
      `VIRTIOFWD_ZMQ_STATS_EP=ipc://${rig.dir}/stats`,
      'VIRTIOFWD_ZMQ_PORT_CONTROL_EP=off',
      'VIRTIOFWD_ZMQ_CONFIG_EP=off',
      'VIRTIOFWD_ZMQ_CORE_SCHED_EP=off',
    ],
  });
  return rig;
}

async function stopRig(rig: Rig | undefined): Promise<void> {
  if (!rig) return;
  await rig.relay?.stop();
  deleteLink(rig.vf);
  deleteNetns(rig.ns);
  rmSync(rig.dir, { recursive: true, force: true });
}

/** A test VM on the relay's socket that posts one ring of receive buffers and then takes nothing. */
async function connectVm(rig: Rig) {
  const memFd = memfdCreate('vf-loss-guest-ram');
  ftruncate(memFd, LAYOUT.memSize);
  const mem = mmap({ length: LAYOUT.memSize, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED, fd: memFd });
  const { vm, fds } = NetTestVm.withEventfds(mem, LAYOUT);
  const { rxSetup, txSetup } = vm;
  const frontend = await Frontend.connect(rig.relay.socketPath(RELAY), { reactor, retryMs: 100, timeoutMs: 20_000 });
  const negotiated = await frontend.negotiate({ features: 2 ** VirtioNetFeature.VERSION_1 });
  vm.refillRx();
  await frontend.startDevice(negotiated.features, [{ guestPhysAddr: 0, size: LAYOUT.memSize, userAddr: mem.address, mmapOffset: 0, fd: memFd }], [rxSetup, txSetup]);
  const release = async () => {
    await frontend.close();
    munmap(mem);
    closeFd(memFd);
    for (const fd of fds) closeFd(fd);
  };
  return { vm, frontend, release };
}

async function flood(rig: Rig): Promise<void> {
  const flooder = startProcess('ip', ['netns', 'exec', rig.ns, 'python3', '-c', FLOODER, rig.peer, String(FLOOD)], { label: 'flooder' });
  await flooder.waitForOutput(/sent \d+/, 60_000);
  await sleep(300); // the last blocks retire after 1 ms; the worker folds kernel counts every 100 ms
}

const relayCounters = async (rig: Rig) => {
  const stats = new ControlClient(`ipc://${rig.dir}/stats`, 5000);
  try {
    return (await stats.request('stats', { relays: [RELAY] })).relays[0].vfToVm;
  } finally {
    stats.close();
  }
};

describe.skipIf(!ready)('frames lost between the VF and the guest are counted by cause', () => {
  let rig: Rig | undefined;
  let xdpRig: Rig | undefined;
  beforeAll(async () => {
    reactor = new Reactor();
  });

  afterAll(async () => {
    await stopRig(rig);
    await stopRig(xdpRig);
    await stopAll();
    await reactor?.close();
  });

  it('counts the frames the kernel dropped from the full VF ring while the guest had no buffers', async () => {
    rig = await startRig('af_packet');
    const { vm, release } = await connectVm(rig);
    try {
      const vfRxBefore = linkCounter(rig.vf, 'rx_packets');
      await flood(rig);
      // Now the VM takes everything that waited in the VF ring.
      let quiet = 0;
      let last = -1;
      await waitFor(
        () => {
          vm.pollRx();
          quiet = vm.received.length === last ? quiet + 1 : 0;
          last = vm.received.length;
          return quiet >= 10;
        },
        30_000,
        'the waiting frames to reach the VM',
        50,
      );
      await sleep(300);
      const entered = linkCounter(rig.vf, 'rx_packets') - vfRxBefore;
      const c = await relayCounters(rig);
      const accounted = c.packets + c.dropsKernelRing + c.dropsQueueFull + c.dropsBadFrame + c.dropsNotConnected;
      const detail = `VF received ${entered}; guest got ${vm.received.length}; relay ${JSON.stringify({ packets: c.packets, kernelRing: c.dropsKernelRing, kernelRingGuestNoBuffers: c.dropsKernelRingGuestNoBuffers, queueFull: c.dropsQueueFull, bad: c.dropsBadFrame, notConnected: c.dropsNotConnected })}`;
      console.log(`VF→VM loss by cause: ${detail}`);
      expect(entered, detail).toBeGreaterThanOrEqual(FLOOD);
      expect(c.packets, detail).toBe(vm.received.length);
      expect(c.dropsKernelRing, detail).toBeGreaterThan(0);
      // The VM posted no buffers while the flood waited in the VF ring: every kernel drop is the
      // guest's, none the relay's.
      expect(c.dropsKernelRingGuestNoBuffers, detail).toBe(c.dropsKernelRing);
      expect(accounted, detail).toBe(entered);
      // The numbered frames the guest missed are exactly the counted drops.
      const missed = FLOOD - new Set(vm.received).size;
      expect(missed, detail).toBe(c.dropsKernelRing + c.dropsQueueFull + c.dropsBadFrame + c.dropsNotConnected);
    } finally {
      await release();
    }
  });

  it('AF_XDP: frames still waiting in the socket when the VM leaves count as not connected', async () => {
    xdpRig = await startRig('af_xdp');
    const r = xdpRig;
    const { vm, release } = await connectVm(r);
    let released = false;
    try {
      // The port is opened again around the VM's memory once the VM has sent its memory table.
      await waitFor(() => r.relay.proc.output().includes("UMEM over the VM's memory"), 10_000, "the relay to reopen the VF's AF_XDP port around the VM's memory");
      const vfRxBefore = linkCounter(r.vf, 'rx_packets');
      await flood(r);
      // The VM takes the frames that fit in its one ring of buffers, and leaves with the rest
      // still waiting in the socket's RX ring.
      vm.pollRx();
      await release();
      released = true;
      await waitFor(() => /frames waiting in its AF_XDP socket were dropped/.test(r.relay.proc.output()), 10_000, 'the relay to reopen the port and count what waited');
      await sleep(300);
      const entered = linkCounter(r.vf, 'rx_packets') - vfRxBefore;
      const c = await relayCounters(r);
      const waited = Number(/"framesWaiting":(\d+)/.exec(r.relay.proc.output())?.[1] ?? -1);
      const detail = `VF received ${entered}; guest got ${vm.received.length}; ${waited} waited in the socket; relay ${JSON.stringify({ packets: c.packets, kernelRing: c.dropsKernelRing, queueFull: c.dropsQueueFull, bad: c.dropsBadFrame, notConnected: c.dropsNotConnected })}`;
      console.log(`VF→VM loss by cause, AF_XDP, VM gone: ${detail}`);
      expect(entered, detail).toBeGreaterThanOrEqual(FLOOD);
      // Far more than the guest had buffers for waited in the socket's ring (4096 entries).
      expect(waited, detail).toBeGreaterThan(LAYOUT.queueSize);
      expect(c.dropsNotConnected, detail).toBeGreaterThanOrEqual(waited);
      expect(c.packets + c.dropsKernelRing + c.dropsQueueFull + c.dropsBadFrame + c.dropsNotConnected, detail).toBe(entered);
    } finally {
      if (!released) await release();
    }
  });
});
