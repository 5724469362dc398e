// A healthy VM's rings survive restarts under traffic, on the real daemon. The test process is the
// VM (the project's vhost-user front-end and split-queue driver over sealed memfd memory): it sends
// numbered frames VM→VF while a sender in a network namespace sends frames VF→VM on the veth peer.
// Meanwhile the front-end restarts the rings thousands of times, the way QEMU does: a device reset
// (GET_VRING_BASE, then SET_VRING_ADDR, SET_VRING_BASE with the answer, SET_VRING_KICK,
// SET_VRING_CALL) and a changed memory table (SET_MEM_TABLE with a second region added or removed).
// Every GET_VRING_BASE must answer exactly what the ring consumed (used.idx as the driver sees
// it), no ring may break, and no VM→VF frame may be repeated or reordered.
// Knobs for longer or harsher runs: VIO4WD_RING_RESTARTS (rounds, default 1200: 60-90 s; each round restarts both rings and changes the memory table),
// VIO4WD_RR_CPUS (worker CPUs, default 1), VIO4WD_RR_POLL (busy|adaptive), VIO4WD_RR_VF_PER_MS
// (VF→VM frames per millisecond, default 8), VIO4WD_RR_HUGE=1 (hugetlb memfds instead of sealed
// memfds; needs free 2 MiB hugepages).
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { close as closeFd } from '../../sys/fd.js';
import { F_SEAL_SHRINK, MAP_SHARED, PROT_READ, PROT_WRITE, addSeals, ftruncate, memfdCreate, mmap, munmap } from '../../sys/memory.js';
import { Reactor } from '../../sys/poll.js';
import { Frontend, type FrontendRegion } from '../../vhost-user/frontend.js';
import { VirtioNetFeature } from '../../vhost-user/features.js';
import { NetTestVm, type NetTestVmLayout } from '../support/net-test-vm.js';
import { SplitQueueDriver } from '../../virtio/split-queue-driver.js';
import { createNetns, createVethPair, deleteLink, deleteNetns, linkCounter, requireBinary, requireRoot, uniqueTag } from '../support/netns.js';
import { sleep, startProcess, stopAll, waitFor, type StartedProcess } from '../support/processes.js';
import { startRelay, type RunningRelay } from '../support/relay.js';

const ROUNDS = Number(process.env.VIO4WD_RING_RESTARTS ?? 1200);
vi.setConfig({ testTimeout: Math.max(240_000, ROUNDS * 200), hookTimeout: 60_000 });

const ready = requireRoot() && requireBinary('ip') && requireBinary('python3');
const tag = uniqueTag();
const ns = `rrns${tag}`;
const vf = `rv${tag}`;
const peer = `rp${tag}`;
const RELAY = 0;

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
  // What a Linux guest negotiates: the relay then writes avail_event and the guest used_event.
  eventIdx: true,
};
/** A second, small region the memory table gains and loses, like a device BAR QEMU maps in and out. */
const EXTRA_GPA = 0x4000_0000;
const EXTRA_SIZE = 2 << 20;
/** Frames the test VM queues per millisecond tick. */
const TX_PER_TICK = 16;

let relay: RunningRelay;
let dir: string;
let reactor: Reactor;

/** Receives VM→VF frames on the peer and prints their sequence numbers. */
const RECEIVER = `
import socket, sys, struct
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(${LAYOUT.etherTypeOut}))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
s.bind((sys.argv[1], 0))
s.settimeout(0.2)
print('listening', flush=True)
out = []
while True:
    try:
        f, addr = s.recvfrom(2048)
    except socket.timeout:
        if out:
            sys.stdout.write(''.join(out)); sys.stdout.flush(); out = []
        continue
    if addr[2] == socket.PACKET_OUTGOING or len(f) < 18:
        continue
    out.append('seq %d\\n' % struct.unpack('>I', f[14:18])[0])
    if len(out) >= 256:
        sys.stdout.write(''.join(out)); sys.stdout.flush(); out = []
`;

/** Sends VF→VM frames from the peer, a few per millisecond, until the stop file appears. */
const SENDER = `
import socket, sys, struct, os, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
stop = sys.argv[2]
head = bytes.fromhex('ffffffffffff02000000beef') + struct.pack('>H', ${LAYOUT.etherTypeIn})
seq = 0
while not os.path.exists(stop):
    for _ in range(int(sys.argv[3])):
        s.send(head + struct.pack('>I', seq) + bytes(42))
        seq += 1
    time.sleep(0.001)
print('sent %d' % seq, flush=True)
`;

/** A memfd sealed against shrinking, as QEMU's memory-backend-memfd makes guest RAM. */
function sealedMemfd(name: string, size: number): number {
  if (process.env.VIO4WD_RR_HUGE === '1') {
    const huge = memfdCreate(name, { hugetlb: true });
    ftruncate(huge, size);
    return huge;
  }
  const fd = memfdCreate(name, { allowSealing: true });
  ftruncate(fd, size);
  addSeals(fd, F_SEAL_SHRINK);
  return fd;
}

/** Duplicates and reorderings in a received sequence, and how many numbers below `n` are missing. */
function sequenceReport(seqs: number[], n: number): { duplicated: number; reordered: number; lost: number } {
  const seen = new Set<number>();
  let duplicated = 0;
  let reordered = 0;
  for (let i = 0; i < seqs.length; i++) {
    if (seen.has(seqs[i])) duplicated++;
    seen.add(seqs[i]);
    if (i > 0 && seqs[i] <= seqs[i - 1]) reordered++;
  }
  let lost = 0;
  for (let s = 0; s < n; s++) if (!seen.has(s)) lost++;
  return { duplicated, reordered, lost };
}

describe.skipIf(!ready)('a healthy VM restarting its rings under traffic', () => {
  beforeAll(async () => {
    createNetns(ns);
    createVethPair(vf, peer, { nsB: ns, noIpv6: true });
    dir = mkdtempSync(join(tmpdir(), `vio4wd-ring-restarts-${process.pid}-`));
    reactor = new Reactor();
    relay = await startRelay({ cpus: (process.env.VIO4WD_RR_CPUS ?? '1').split(',').map(Number), pollMode: (process.env.VIO4WD_RR_POLL as 'busy' | undefined) ?? 'adaptive', staticVfs: { [vf]: RELAY }, logLevel: 6 });
  });

  afterAll(async () => {
    await relay?.stop();
    await stopAll();
    await reactor?.close();
    deleteLink(vf);
    deleteNetns(ns);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it(`keeps both rings and their bases exact across ${ROUNDS} rounds of device resets and memory-table changes`, async () => {
    const memFd = sealedMemfd('restarts-guest-ram', LAYOUT.memSize);
    const mem = mmap({ length: LAYOUT.memSize, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED, fd: memFd });
    const extraFd = sealedMemfd('restarts-extra', EXTRA_SIZE);
    const extra = mmap({ length: EXTRA_SIZE, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED, fd: extraFd });
    const { vm, fds } = NetTestVm.withEventfds(mem, LAYOUT);
    const { rxSetup, txSetup } = vm;
    const ram: FrontendRegion = { guestPhysAddr: 0, size: LAYOUT.memSize, userAddr: mem.address, mmapOffset: 0, fd: memFd };
    // The new region comes first, so the index of the region holding the rings changes with every table.
    const withExtra: FrontendRegion[] = [{ guestPhysAddr: EXTRA_GPA, size: EXTRA_SIZE, userAddr: extra.address, mmapOffset: 0, fd: extraFd }, ram];
    const stopFile = join(dir, 'stop-sending');
    let frontend: Frontend | null = null;
    let receiver: StartedProcess | null = null;
    let sender: StartedProcess | null = null;
    let pumping = true;
    let pumpError: Error | null = null;
    const pump = (async () => {
      try {
        while (pumping) {
          vm.pollRx();
          vm.send(TX_PER_TICK);
          await sleep(1);
        }
      } catch (err) {
        pumpError = err as Error;
      }
    })();
    const mismatches: string[] = [];
    /** GET_VRING_BASE must answer what the ring consumed: used.idx as the driver sees it (the ring is stopped). */
    const checkBase = (when: string, index: number, base: number) => {
      const used = vm.usedIdx(index);
      if (base !== used) mismatches.push(`${when}: vring ${index} GET_VRING_BASE ${base}, used.idx ${used}`);
    };
    let resets = 0;
    let tableChanges = 0;
    /** Restarts that found chains the relay had not consumed yet, or frames waiting for the guest. */
    let inFlight = 0;
    try {
      receiver = startProcess('ip', ['netns', 'exec', ns, 'python3', '-c', RECEIVER, peer], { label: 'receiver' });
      await receiver.waitForOutput(/listening/, 10_000);
      frontend = await Frontend.connect(relay.socketPath(RELAY), { reactor, retryMs: 100, timeoutMs: 20_000 });
      const negotiated = await frontend.negotiate({ features: 2 ** VirtioNetFeature.VERSION_1 + 2 ** VirtioNetFeature.RING_EVENT_IDX });
      vm.refillRx();
      await frontend.startDevice(negotiated.features, [ram], [rxSetup, txSetup]);
      sender = startProcess('ip', ['netns', 'exec', ns, 'python3', '-c', SENDER, peer, stopFile, process.env.VIO4WD_RR_VF_PER_MS ?? '8'], { label: 'sender' });
      await waitFor(() => vm.received.length > 100 && vm.nextTxSeq > 100, 10_000, 'traffic in both directions before the first restart');

      let extraMapped = false;
      for (let round = 0; round < ROUNDS; round++) {
        if (round % 2 === 0) {
          // A device reset of each ring in turn, resuming from what GET_VRING_BASE answered.
          for (const setup of [rxSetup, txSetup]) {
            if (setup.index === 1 && vm.txOutstanding > 0) inFlight++;
            const base = await frontend.getVringBase(setup.index);
            checkBase(`round ${round}`, setup.index, base);
            await frontend.setVringAddr(setup.index, setup);
            await frontend.setVringBase(setup.index, base);
            await frontend.setVringKick(setup.index, setup.kickFd);
            await frontend.setVringCall(setup.index, setup.callFd);
          }
        } else {
          // QEMU's vhost_dev_stop and vhost_dev_start: disable and stop every ring, then start
          // every ring (NUM, BASE, ADDR, KICK, CALL) and enable them.
          if (vm.txOutstanding > 0) inFlight++;
          for (const setup of [rxSetup, txSetup]) await frontend.setVringEnable(setup.index, false);
          const bases: number[] = [];
          for (const setup of [rxSetup, txSetup]) {
            bases.push(await frontend.getVringBase(setup.index));
            checkBase(`round ${round}`, setup.index, bases[setup.index]);
          }
          for (const setup of [rxSetup, txSetup]) await frontend.startVring({ ...setup, base: bases[setup.index], enable: false });
          for (const setup of [rxSetup, txSetup]) await frontend.setVringEnable(setup.index, true);
        }
        resets++;
        // The guest's memory map changes: QEMU sends the whole new table; the rings are not re-sent.
        extraMapped = !extraMapped;
        await frontend.setMemTable(extraMapped ? withExtra : [ram]);
        tableChanges++;
        if (round % 4 === 3) await sleep(round % 3);
        if (pumpError) throw pumpError;
      }
      // The bases must still be exact at the end, and traffic must still flow after the last restart.
      const receivedAtEnd = vm.received.length;
      const sentAtEnd = vm.nextTxSeq;
      await waitFor(() => vm.received.length > receivedAtEnd + 100 && vm.nextTxSeq > sentAtEnd + 100, 10_000, 'traffic after the last restart');

      writeFileSync(stopFile, '');
      await sender.waitForOutput(/sent (\d+)/, 10_000);
      pumping = false;
      await pump;
      await waitFor(() => vm.txOutstanding === 0, 10_000, 'the relay to take every frame the test VM queued').catch(() => undefined);
      for (const setup of [rxSetup, txSetup]) checkBase('final', setup.index, await frontend.getVringBase(setup.index));
      if (pumpError) throw pumpError;
      const vmSent = vm.nextTxSeq;
      const fromPeer = () => [...receiver!.output().matchAll(/seq (\d+)/g)].map((m) => Number(m[1]));
      await waitFor(() => fromPeer().length >= vmSent, 5_000, 'the VM→VF frames to reach the peer').catch(() => undefined);

      const broken = relay.logs().filter((l) => /ring broken|must reset|protocol violation/.test(String(l.msg)));
      const report = sequenceReport(fromPeer(), vmSent);
      console.log(
        `ring restarts: ${resets} device resets and ${tableChanges} memory-table changes, ${inFlight} with TX chains in flight; ` +
          `VM→VF ${vmSent} sent, ${JSON.stringify(report)} (lost is not asserted: it includes frames a started but disabled TX ring discards, as the spec requires, and frames the receiving script did not keep up with); VF→VM ${vm.received.length} received`,
      );
      expect(broken.map((l) => l.msg)).toEqual([]);
      expect(mismatches).toEqual([]);
      expect(resets).toBe(ROUNDS);
      // Restarts happened with traffic: most found TX chains the relay had not taken yet.
      expect(inFlight).toBeGreaterThan(ROUNDS / 4);
      expect(report.duplicated).toBe(0);
      expect(report.reordered).toBe(0);
    } finally {
      pumping = false;
      await pump;
      writeFileSync(stopFile, '');
      await sender?.stop();
      await receiver?.stop();
      await frontend?.close();
      munmap(mem);
      munmap(extra);
      closeFd(memFd);
      closeFd(extraFd);
      for (const fd of fds) closeFd(fd);
    }
  });
  it('answers GET_VRING_BASE with what a broken ring consumed, and runs the ring again once the front-end restarts it', async () => {
    const memFd = sealedMemfd('broken-ring-guest-ram', LAYOUT.memSize);
    const mem = mmap({ length: LAYOUT.memSize, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED, fd: memFd });
    const { vm, fds } = NetTestVm.withEventfds(mem, LAYOUT);
    const { rxSetup, txSetup } = vm;
    const txAvailIdx = new Uint16Array(mem.buffer, SplitQueueDriver.layout(LAYOUT.txRingGpa, LAYOUT.queueSize).availGpa, 2);
    let frontend: Frontend | null = null;
    let pumping = true;
    let sending = true;
    const pump = (async () => {
      while (pumping) {
        vm.pollRx();
        if (sending) vm.send(TX_PER_TICK);
        await sleep(1);
      }
    })();
    const brokenBefore = relay.logs().filter((l) => /ring broken/.test(String(l.msg))).length;
    try {
      // The socket takes one front-end at a time: the previous test's must be gone.
      const count = (re: RegExp) => relay.logs().filter((l) => re.test(String(l.msg))).length;
      await waitFor(() => count(/^VM disconnected$/) >= count(/front-end connected on/), 10_000, 'the previous front-end to be gone');
      await sleep(500);
      frontend = await Frontend.connect(relay.socketPath(RELAY), { reactor, retryMs: 100, timeoutMs: 20_000 });
      const negotiated = await frontend.negotiate({ features: 2 ** VirtioNetFeature.VERSION_1 });
      vm.refillRx();
      await frontend.startDevice(negotiated.features, [{ guestPhysAddr: 0, size: LAYOUT.memSize, userAddr: mem.address, mmapOffset: 0, fd: memFd }], [rxSetup, txSetup]);
      await waitFor(() => vm.usedIdx(1) > 500, 10_000, 'the relay to consume TX chains');

      // The guest breaks its TX ring: avail.idx jumps far past anything it posted.
      sending = false;
      await sleep(20);
      const realAvail = Atomics.load(txAvailIdx, 1);
      Atomics.store(txAvailIdx, 1, (realAvail + 30_000) & 0xffff);
      await waitFor(() => relay.logs().filter((l) => /ring broken/.test(String(l.msg))).length > brokenBefore, 10_000, 'the relay to drop the broken TX ring');
      const consumed = vm.usedIdx(1);
      expect(await frontend.getVringBase(1)).toBe(consumed);

      // The front-end resets the ring the usual way and resumes from the answer.
      Atomics.store(txAvailIdx, 1, realAvail);
      await frontend.setVringAddr(1, txSetup);
      await frontend.setVringBase(1, consumed);
      await frontend.setVringKick(1, txSetup.kickFd);
      await frontend.setVringCall(1, txSetup.callFd);
      const peerBefore = linkCounter(peer, 'rx_packets', ns);
      sending = true;
      await waitFor(() => linkCounter(peer, 'rx_packets', ns) - peerBefore >= 500, 10_000, 'VM→VF frames after the restart');
      expect(relay.logs().filter((l) => /ring broken/.test(String(l.msg))).length).toBe(brokenBefore + 1);
    } finally {
      pumping = false;
      await pump;
      await frontend?.close();
      munmap(mem);
      closeFd(memFd);
      for (const fd of fds) closeFd(fd);
    }
  });
});
