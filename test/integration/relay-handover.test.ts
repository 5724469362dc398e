// Handover of a relay's directions between workers, under traffic, on the real daemon. The test
// process is the VM (our vhost-user front-end and split-queue driver over memfd memory) and sends
// sequence-numbered frames VM→VF; a sender in the namespace sends sequence-numbered frames VF→VM
// on the veth peer. Meanwhile the core-sched service is told a hundred times to swap the relay's
// two directions between CPU 0 and CPU 1. Every frame must arrive exactly once and in order.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { ControlClient } from '../../port-control/client.js';
import { close as closeFd } from '../../sys/fd.js';
import { eventfd, eventfdWrite } from '../../sys/eventfd.js';
import { MAP_SHARED, PROT_READ, PROT_WRITE, ftruncate, memfdCreate, mmap, munmap, type Mapping } from '../../sys/memory.js';
import { Reactor } from '../../sys/poll.js';
import { Frontend, type VringSetup } from '../../vhost-user/frontend.js';
import { VirtioNetFeature } from '../../vhost-user/features.js';
import { GuestMemory } from '../../virtio/guest-memory.js';
import { SplitQueueDriver } from '../../virtio/split-queue-driver.js';
import { run } from '../support/env.js';
import { createNetns, createVethPair, deleteLink, deleteNetns, linkCounter, requireBinary, requireRoot, uniqueTag } from '../support/netns.js';
import { sleep, startProcess, stopAll, waitFor, type StartedProcess } from '../support/processes.js';
import { startRelay, type RunningRelay } from '../support/relay.js';

vi.setConfig({ testTimeout: 180_000, hookTimeout: 60_000 });

const ready = requireRoot() && requireBinary('ip') && requireBinary('python3');
const tag = uniqueTag();
const ns = `hons${tag}`;
const vf = `hv${tag}`;
const peer = `hp${tag}`;
const RELAY = 0;
const SWAPS = 100;

const MEM_SIZE = 4 << 20;
const QSIZE = 256;
const RX_RING_GPA = 0x0;
const TX_RING_GPA = 0x1_0000;
const RX_BUFFERS_GPA = 0x10_0000;
const TX_BUFFERS_GPA = 0x20_0000;
const BUFFER_SIZE = 2048;
/** VERSION_1 without mergeable buffers: a 12-byte virtio-net header in front of every frame. */
const NET_HDR = 12;
const ETH_VM_TO_VF = 0x88b5;
const ETH_VF_TO_VM = 0x88b6;
/** Frames per millisecond tick the test VM sends: a few thousand per second, far below any ring's size per tick. */
const TX_PER_TICK = 4;

let relay: RunningRelay;
let dir: string;
let reactor: Reactor;

/** Receives VM→VF frames on the peer and prints their sequence numbers, one per line. */
const RECEIVER = `
import socket, sys, struct
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(${ETH_VM_TO_VF}))
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

/** Sends VF→VM frames from the peer, numbered from 0, a few per millisecond, until the stop file appears. */
const SENDER = `
import socket, sys, struct, os, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
stop = sys.argv[2]
head = bytes.fromhex('ffffffffffff02000000beef') + struct.pack('>H', ${ETH_VF_TO_VM})
seq = 0
while not os.path.exists(stop):
    for _ in range(4):
        s.send(head + struct.pack('>I', seq) + bytes(42))
        seq += 1
    time.sleep(0.001)
print('sent %d' % seq, flush=True)
`;

class TestVm {
  readonly rx: SplitQueueDriver;
  readonly tx: SplitQueueDriver;
  readonly bytes: Uint8Array;
  private readonly txHeadSlot = new Map<number, number>();
  private readonly freeTxSlots: number[] = [];
  private readonly rxHeadSlot = new Map<number, number>();
  nextTxSeq = 0;
  readonly received: number[] = [];
  foreignRx = 0;

  constructor(
    mem: Mapping,
    readonly rxSetup: VringSetup,
    readonly txSetup: VringSetup,
  ) {
    this.bytes = new Uint8Array(mem.buffer);
    const memory = new GuestMemory([{ guestPhysAddr: 0, size: MEM_SIZE, userAddr: mem.address, bytes: this.bytes }]);
    const layout = (gpa: number) => SplitQueueDriver.layout(gpa, QSIZE);
    const rxl = layout(RX_RING_GPA);
    const txl = layout(TX_RING_GPA);
    this.rx = new SplitQueueDriver({ memory, size: QSIZE, descGpa: rxl.descGpa, availGpa: rxl.availGpa, usedGpa: rxl.usedGpa, name: 'test RX' });
    this.tx = new SplitQueueDriver({ memory, size: QSIZE, descGpa: txl.descGpa, availGpa: txl.availGpa, usedGpa: txl.usedGpa, name: 'test TX' });
    for (let i = 0; i < QSIZE; i++) this.freeTxSlots.push(i);
  }

  static rings(gpa: number, base: number) {
    const l = SplitQueueDriver.layout(gpa, QSIZE);
    return { descUserAddr: base + l.descGpa, availUserAddr: base + l.availGpa, usedUserAddr: base + l.usedGpa };
  }

  /** Gives the device every free RX buffer. */
  refillRx(): void {
    let added = false;
    while (this.rx.freeDescriptors > 0) {
      const slot = this.rxHeadSlot.size;
      const gpa = RX_BUFFERS_GPA + slot * BUFFER_SIZE;
      const head = this.rx.addBuffers([{ gpa, len: BUFFER_SIZE, writable: true }]);
      this.rxHeadSlot.set(head, gpa);
      added = true;
    }
    if (added && this.rx.publish()) eventfdWrite(this.rxSetup.kickFd, 1);
  }

  /** Collects received frames and hands their buffers back. */
  pollRx(): void {
    let returned = false;
    for (let u = this.rx.popUsed(); u !== null; u = this.rx.popUsed()) {
      const gpa = this.rxHeadSlot.get(u.id);
      if (gpa === undefined) throw new Error(`RX head ${u.id} was never posted`);
      const at = gpa + NET_HDR;
      const etherType = (this.bytes[at + 12] << 8) | this.bytes[at + 13];
      if (etherType === ETH_VF_TO_VM && u.len >= NET_HDR + 18) {
        const seq = ((this.bytes[at + 14] << 24) | (this.bytes[at + 15] << 16) | (this.bytes[at + 16] << 8) | this.bytes[at + 17]) >>> 0;
        this.received.push(seq);
      } else this.foreignRx++;
      this.rxHeadSlot.set(this.rx.addBuffers([{ gpa, len: BUFFER_SIZE, writable: true }]), gpa);
      returned = true;
    }
    if (returned && this.rx.publish()) eventfdWrite(this.rxSetup.kickFd, 1);
  }

  /** Reclaims sent buffers and queues up to `count` more numbered frames. */
  send(count: number): void {
    for (let u = this.tx.popUsed(); u !== null; u = this.tx.popUsed()) {
      const slot = this.txHeadSlot.get(u.id);
      if (slot === undefined) throw new Error(`TX head ${u.id} was never posted`);
      this.txHeadSlot.delete(u.id);
      this.freeTxSlots.push(slot);
    }
    let queued = 0;
    while (queued < count && this.freeTxSlots.length > 0) {
      const slot = this.freeTxSlots.pop()!;
      const gpa = TX_BUFFERS_GPA + slot * BUFFER_SIZE;
      const frame = this.bytes.subarray(gpa, gpa + NET_HDR + 60);
      frame.fill(0);
      frame.set([0x02, 0, 0, 0, 0xbe, 0xef, 0x02, 0, 0, 0, 0, 0x01], NET_HDR);
      frame[NET_HDR + 12] = ETH_VM_TO_VF >> 8;
      frame[NET_HDR + 13] = ETH_VM_TO_VF & 0xff;
      new DataView(this.bytes.buffer, gpa + NET_HDR + 14, 4).setUint32(0, this.nextTxSeq++, false);
      const head = this.tx.addBuffers([{ gpa, len: NET_HDR + 60, writable: false }]);
      this.txHeadSlot.set(head, slot);
      queued++;
    }
    if (queued > 0 && this.tx.publish()) eventfdWrite(this.txSetup.kickFd, 1);
  }

  get txOutstanding(): number {
    return this.txHeadSlot.size;
  }
}

/** Frames the kernel dropped because a CPU's input backlog was full (all CPUs, /proc/net/softnet_stat). */
function softnetDrops(): number {
  return readFileSync('/proc/net/softnet_stat', 'utf8')
    .trim()
    .split('\n')
    .reduce((sum, line) => sum + parseInt(line.trim().split(/\s+/)[1], 16), 0);
}

/** Checks that `seqs` is exactly 0..n-1 in order; returns a description of the first problem, or ''. */
function sequenceProblem(seqs: number[], n: number): string {
  const seen = new Set<number>();
  let duplicates = 0;
  let reordered = 0;
  for (let i = 0; i < seqs.length; i++) {
    if (seen.has(seqs[i])) duplicates++;
    seen.add(seqs[i]);
    if (i > 0 && seqs[i] <= seqs[i - 1]) reordered++;
  }
  let lost = 0;
  const ranges: string[] = [];
  for (let s = 0; s < n; s++) {
    if (seen.has(s)) continue;
    lost++;
    if (seen.has(s - 1) || s === 0) ranges.push(String(s));
    else if (!seen.has(s - 1) && (seen.has(s + 1) || s + 1 === n)) ranges[ranges.length - 1] += `-${s}`;
  }

  if (lost + duplicates + reordered === 0 && seqs.length === n) return '';
  return `${n} sent, ${seqs.length} received: ${lost} lost (${ranges.slice(0, 20).join(' ')}), ${duplicates} duplicated, ${reordered} out of order`;
}

describe.skipIf(!ready)('relay directions handed over between workers under traffic', () => {
  beforeAll(async () => {
    createNetns(ns);
    createVethPair(vf, peer, { nsB: ns, noIpv6: true });
    dir = mkdtempSync(join(tmpdir(), `vio4wd-handover-${process.pid}-`));
    reactor = new Reactor();
    relay = await startRelay({
      cpus: [0, 1],
      pollMode: 'adaptive',
      staticVfs: { [vf]: RELAY },
      noZmq: false,
      logLevel: 6,
      configLines: [
        `VIRTIOFWD_CPU_PINS=${RELAY}:0,1`,
        'VIO4WD_CORE_SCHED_ENABLE=true',
        `VIRTIOFWD_ZMQ_CORE_SCHED_EP=ipc://${dir}/core_sched`,
        `VIRTIOFWD_ZMQ_STATS_EP=ipc://${dir}/stats`,
        'VIRTIOFWD_ZMQ_PORT_CONTROL_EP=off',
        'VIRTIOFWD_ZMQ_CONFIG_EP=off',
      ],
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

  it(`loses, repeats and reorders nothing in either direction across ${SWAPS} swaps`, async () => {
    const memFd = memfdCreate('handover-guest-ram');
    ftruncate(memFd, MEM_SIZE);
    const mem = mmap({ length: MEM_SIZE, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED, fd: memFd });
    const fds = [eventfd(), eventfd(), eventfd(), eventfd()];
    const rxSetup: VringSetup = { index: 0, size: QSIZE, ...TestVm.rings(RX_RING_GPA, mem.address), kickFd: fds[0], callFd: fds[1] };
    const txSetup: VringSetup = { index: 1, size: QSIZE, ...TestVm.rings(TX_RING_GPA, mem.address), kickFd: fds[2], callFd: fds[3] };
    const vm = new TestVm(mem, rxSetup, txSetup);
    const coreSched = new ControlClient(`ipc://${dir}/core_sched`, 5000);
    const stopFile = join(dir, 'stop-sending');
    let frontend: Frontend | null = null;
    let receiver: StartedProcess | null = null;
    let sender: StartedProcess | null = null;
    let pumping = true;
    let pumpError: Error | null = null;
    // Not before the rings are enabled: a started but disabled TX ring is drained and discarded (vhost-user spec).
    let sendingFromVm = false;
    const pump = (async () => {
      try {
        while (pumping) {
          vm.pollRx();
          if (sendingFromVm) vm.send(TX_PER_TICK);
          else vm.send(0);
          await sleep(1);
        }
      } catch (err) {
        pumpError = err as Error;
      }
    })();
    try {
      receiver = startProcess('ip', ['netns', 'exec', ns, 'python3', '-c', RECEIVER, peer], { label: 'receiver' });
      await receiver.waitForOutput(/listening/, 10_000);

      frontend = await Frontend.connect(relay.socketPath(RELAY), { reactor, retryMs: 100, timeoutMs: 20_000 });
      const negotiated = await frontend.negotiate({ features: 2 ** VirtioNetFeature.VERSION_1 });
      vm.refillRx();
      await frontend.startDevice(negotiated.features, [{ guestPhysAddr: 0, size: MEM_SIZE, userAddr: mem.address, mmapOffset: 0, fd: memFd }], [rxSetup, txSetup]);
      sendingFromVm = true;
      const before = await coreSched.request('get_worker_cpus');
      expect(before.cpus).toEqual([0, 1]);
      await waitFor(
        async () => (await coreSched.request('get_worker_cpus')).map.some((e) => e.relay === RELAY && e.vfToVmCpu === 0 && e.vmToVfCpu === 1),
        10_000,
        'the pinned placement (VF→VM on CPU 0, VM→VF on CPU 1)',
      );

      const softnetDropsBefore = softnetDrops();
      sender = startProcess('ip', ['netns', 'exec', ns, 'python3', '-c', SENDER, peer, stopFile], { label: 'sender' });
      await waitFor(() => vm.received.length > 100 && vm.nextTxSeq > 100, 10_000, 'traffic in both directions before the first swap');

      // Frames seen by each side at every swap, to show the swaps happened with traffic in flight.
      const progress: { toVm: number; toVf: number }[] = [];
      for (let i = 0; i < SWAPS; i++) {
        progress.push({ toVm: vm.received.length, toVf: vm.nextTxSeq - vm.txOutstanding });
        const even = i % 2 === 0;
        const want = { relay: RELAY, vfToVmCpu: even ? 1 : 0, vmToVfCpu: even ? 0 : 1 };
        await coreSched.request('update', { map: [want] });
        const now = await coreSched.request('get_worker_cpus');
        expect(now.map.find((e) => e.relay === RELAY)).toEqual(want);
        // A few bursts on each side between swaps, at an uneven pace.
        await sleep(5 + (i % 7) * 3);
        if (pumpError) throw pumpError;
      }

      writeFileSync(stopFile, '');
      const sent = Number((await sender.waitForOutput(/sent (\d+)/, 10_000))[1]);
      sendingFromVm = false;
      await waitFor(() => vm.txOutstanding === 0, 10_000, 'the relay to take every frame the test VM queued');
      const vmSent = vm.nextTxSeq;
      const fromPeer = () => [...receiver!.output().matchAll(/seq (\d+)/g)].map((m) => Number(m[1]));
      await waitFor(() => vm.received.length >= sent && fromPeer().length >= vmSent, 10_000, 'every frame to arrive').catch(() => undefined);
      await sleep(500);
      if (pumpError) throw pumpError;

      const moves = relay.logs().filter((l) => l.msg === 'relay moved between workers' && l.relay === RELAY).length;
      expect(moves).toBe(SWAPS);
      const busyIntervals = progress.slice(1).filter((p, i) => p.toVm > progress[i].toVm && p.toVf > progress[i].toVf).length;
      expect(busyIntervals).toBeGreaterThanOrEqual(SWAPS * 0.9);
      expect(sent).toBeGreaterThan(1000);
      expect(vmSent).toBeGreaterThan(1000);
      const statsClient = new ControlClient(`ipc://${dir}/stats`, 5000);
      const counters = (await statsClient.request('stats', { relays: [RELAY] })).relays[0];
      statsClient.close();
      const kernel = {
        softnetDrops: softnetDrops() - softnetDropsBefore,
        peerTxDropped: linkCounter(peer, 'tx_dropped', ns),
        vfRxDropped: linkCounter(vf, 'rx_dropped'),
        vfRxPackets: linkCounter(vf, 'rx_packets'),
        // The relay's packet sockets: d<N> in skmem counts frames the kernel could not put in the ring.
        relaySockets: run('ss', ['-0', '-m', '-p', '-n'])
          .split('\n')
          .map((l, i, all) => (l.includes(`pid=${relay.pid},`) ? `${l.trim()} ${all[i + 1]?.trim() ?? ''}` : ''))
          .filter(Boolean),
      };
      const diagnosis = `relay counters: ${JSON.stringify({ vfToVm: counters?.vfToVm, vmToVf: counters?.vmToVf })}; kernel: ${JSON.stringify(kernel)}`;
      expect(sequenceProblem(fromPeer(), vmSent), `VM→VF; ${diagnosis}`).toBe('');
      expect(sequenceProblem(vm.received, sent), `VF→VM; ${diagnosis}`).toBe('');
    } finally {
      pumping = false;
      await pump;
      writeFileSync(stopFile, '');
      await sender?.stop();
      await receiver?.stop();
      coreSched.close();
      await frontend?.close();
      munmap(mem);
      closeFd(memFd);
      for (const fd of fds) closeFd(fd);
    }
  });
});
