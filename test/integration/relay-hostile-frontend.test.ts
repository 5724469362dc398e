// Fault isolation against a hostile front-end: two VMs (our own front-end and driver, test-vm.ts)
// on two relays served by ONE worker CPU, each relay's VF a veth whose peer sits in a network
// namespace. The hostile VM hands the relay every kind of bad kick and call fd, a full blocking
// eventfd, always-readable kicks, broken descriptor chains and a seeded random stream of requests.
// After every case: the daemon is alive, the healthy VM still forwards a frame each way, and the
// hostile VM can reconnect and forward too. Around the campaign, the daemon's fds and RSS. All of
// it four times: with AF_PACKET VF ports, with AF_XDP ones (VIRTIOFWD_VF_PORT), with AF_XDP ones
// that receive straight into the guest's buffers (VIRTIOFWD_XDP_RX=guest: the hostile guest's
// receive chains go to the kernel's fill ring), and with AF_XDP ones at MTU 9000
// (VIRTIOFWD_JUMBO: multi-buffer ports). The random chains here seldom make a valid frame of
// several buffers; relay-xdp-datapath's seeded fuzzer is what sends such frames in pieces.
//
// VIO4WD_HOSTILE_CASES=N (default 50) random cases, VIO4WD_HOSTILE_SEED=S to replay a run.
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { isNonBlocking, setNonBlocking } from '../../sys/fd.js';
import { eventfdRead, eventfdWrite } from '../../sys/eventfd.js';
import { Reactor } from '../../sys/poll.js';
import { ControlClient } from '../../port-control/client.js';
import { requireBinary, requireRoot, uniqueTag } from '../support/netns.js';
import { multiBufferXdp } from '../support/env.js';
import { checkBothWays, fdGrowth, makeSite, processStats, sendFromPeer, settledStats, setUpSite, startSender, tearDownSite } from '../support/vm-site.js';
import { startRelay, type RunningRelay } from '../support/relay.js';
import { sleep, stopAll, waitFor } from '../support/processes.js';
import { QSIZE, SCRATCH_AT, TestVm } from '../support/test-vm.js';
import { CHAIN_CASES, FD_CASES, HOSTILE_FDS, fillEventfd, pick, randomMessages, rng } from '../support/hostile-frontend.js';

vi.setConfig({ testTimeout: 150_000, hookTimeout: 60_000 });

const ready = requireRoot() && requireBinary('ip') && requireBinary('python3');
const tag = uniqueTag();
const sites = [makeSite('h', 1, tag, 81), makeSite('h', 2, tag, 82)];
type RelayCounters = { vfToVm: Record<string, number>; vmToVf: Record<string, number> };

async function relayCounters(client: ControlClient, id: number): Promise<RelayCounters> {
  const reply = await client.request('stats', { includeInactive: true, relays: [id] });
  const r = reply.relays.find((x) => x.id === id);
  if (!r) throw new Error(`relay ${id} missing from stats`);
  return r as unknown as RelayCounters;
}

const kinds: [vfPort: string, xdpRx: string, mtu: string][] = [
  ['af_packet', 'copy', 'standard'],
  ['af_xdp', 'copy', 'standard'],
  ['af_xdp', 'guest', 'standard'],
  // Multi-buffer AF_XDP needs Linux 6.6 (multiBufferXdp says so when it is older).
  ...(multiBufferXdp() ? [['af_xdp', 'copy', 'jumbo'] as [string, string, string]] : []),
];

describe.skipIf(!ready).each(kinds)('relay (%s VF ports, receiving by %s, %s MTU) against a hostile front-end on the same worker as a healthy one', (vfPort, xdpRx, mtu) => {
  let relay: RunningRelay;
  let reactor: Reactor;
  let healthy: TestVm;
  let hostile: TestVm;
  let stats: ControlClient;
  const [siteA, siteB] = sites;
  const statsEp = `ipc:///tmp/vio4wd-hostile-stats-${vfPort}-${xdpRx}-${mtu}-${tag}`;

  beforeAll(async () => {
    for (const s of sites) setUpSite(s);
    for (const s of sites) await startSender(s);
    relay = await startRelay({
      cpus: [0],
      logLevel: 6,
      staticVfs: { [siteA.vf]: siteA.relayId, [siteB.vf]: siteB.relayId },
      configLines: [`VIRTIOFWD_ZMQ_STATS_EP=${statsEp}`, `VIRTIOFWD_VF_PORT=${vfPort}`, `VIRTIOFWD_XDP_RX=${xdpRx}`, `VIRTIOFWD_JUMBO=${mtu === 'jumbo'}`],
    });
    stats = new ControlClient(statsEp, 3000);
    reactor = new Reactor();
    healthy = new TestVm('healthy');
    hostile = new TestVm('hostile');
    await healthy.connect(relay.socketPath(siteA.relayId), reactor);
    if (mtu === 'jumbo') {
      await waitFor(() => relay.logs().some((l) => String(l.msg).startsWith(`VF ${siteA.vf}: AF_XDP port`) && String(l.msg).includes('frames over several chunks')), 10_000, 'the healthy VM\'s port to take frames over several chunks');
    }
    if (xdpRx === 'guest') {
      // The campaign must meet a port that takes the guest's receive chains into its fill ring.
      await waitFor(() => relay.logs().some((l) => String(l.msg).startsWith(`VF ${siteA.vf}: AF_XDP port`) && String(l.msg).endsWith(", receiving into the VM's buffers")), 10_000, 'the healthy VM\'s port to receive in place');
    }
  });

  afterAll(async () => {
    await healthy?.close();
    await hostile?.close();
    stats?.close();
    await reactor?.close();
    const status = await relay?.stop();
    for (const s of sites) await tearDownSite(s);
    await stopAll();
    expect(status).toBe(0);
  });

  /** The checks after every case: alive, the healthy VM forwards, the hostile VM reconnects and forwards. */
  async function afterCase(what: string): Promise<void> {
    expect(relay.proc.proc.exitCode, `${what}: the daemon exited`).toBeNull();
    process.kill(relay.pid, 0);
    try {
      await checkBothWays(healthy, siteA, `${what} (healthy VM)`);
      await hostile.connect(relay.socketPath(siteB.relayId), reactor);
      await checkBothWays(hostile, siteB, `${what} (hostile VM reconnected)`);
      await hostile.disconnect();
    } catch (err) {
      const tail = relay.proc.output().split('\n').slice(-12).join('\n');
      const counters = JSON.stringify(await relayCounters(stats, siteB.relayId).catch((e) => String(e)));
      throw new Error(`${(err as Error).message}\nrelay ${siteB.relayId} counters: ${counters}\nrelay log:\n${tail}`);
    }
  }

  /** One of the campaign's fd findings; returns a description for failure messages. */
  async function fdCase(c: (typeof FD_CASES)[number]): Promise<string> {
    const what = `${c.role} fd of vring ${c.ring}: ${c.fd}`;
    const f = HOSTILE_FDS[c.fd]();
    try {
      const attempt = hostile.connect(relay.socketPath(siteB.relayId), reactor, { [c.role]: { [c.ring]: f.fd } });
      if (f.acceptable) {
        await attempt;
        // Accepted, but never written blocking: the relay made the shared description non-blocking.
        expect(isNonBlocking(f.fd), `${what}: made non-blocking`).toBe(true);
        await checkBothWays(hostile, siteB, `${what} (the hostile VM itself)`);
      } else {
        await expect(attempt, what).rejects.toThrow(new RegExp(`refused SET_VRING_${c.role.toUpperCase()}`));
        await waitFor(
          () => relay.logs().some((l) => l.relay === siteB.relayId && l.vring === c.ring && String(l.msg).includes(`${c.role} fd refused`)),
          2000,
          `${what}: the refusal logged with relay and vring`,
        );
      }
    } finally {
      await hostile.disconnect();
      f.cleanup();
    }
    return what;
  }

  /**
   * The attack the non-blocking call fd leaves open: after the relay accepted (and made
   * non-blocking) an eventfd, the front-end makes it blocking again and fills it. The relay's next
   * interrupt write blocks; the pool must notice, drain the fd, and stop that ring only.
   */
  async function reblockedCallCase(ring: 0 | 1): Promise<string> {
    const what = `call fd of vring ${ring} made blocking again and filled after it was accepted`;
    await hostile.connect(relay.socketPath(siteB.relayId), reactor);
    try {
      const call = hostile.callFds[ring];
      expect(isNonBlocking(call)).toBe(true);
      fillEventfd(call); // leaves the shared description blocking
      const stopped = () =>
        relay.logs().some((l) => l.relay === siteB.relayId && String(l.msg).includes(`vring ${ring}: call fd`) && String(l.msg).includes('blocked a write'));
      // Make the relay signal that ring: a frame to receive, or a frame sent. A port that receives
      // into the guest's buffers drops what arrives before it has posted the first of them (as a
      // NIC does before its driver posts buffers), so frames to receive go on until one lands.
      if (ring === 1) hostile.sendFrame(new Uint8Array(60).fill(0xff, 0, 6));
      let nextFrame = 0;
      const signalled = () => {
        if (ring === 0 && !stopped() && Date.now() >= nextFrame) {
          sendFromPeer(siteB, 1);
          nextFrame = Date.now() + 250;
        }
        return stopped();
      };
      try {
        await waitFor(signalled, 5000, `${what}: the ring stopped with a log line`, 20);
      } catch (err) {
        const tail = relay.proc.output().split('\n').slice(-12).join('\n');
        const counters = JSON.stringify(await relayCounters(stats, siteB.relayId).catch((e) => String(e)));
        throw new Error(`${(err as Error).message}\nrelay ${siteB.relayId} counters: ${counters}\nrelay log:\n${tail}`);
      }
      // The worker is free again: the healthy VM forwards at once.
      await checkBothWays(healthy, siteA, `${what} (healthy VM right after)`);
    } finally {
      await hostile.disconnect();
      setNonBlocking(hostile.callFds[ring], true);
      eventfdRead(hostile.callFds[ring]);
    }
    return what;
  }

  /** A broken descriptor chain on the hostile VM's ring: returned to the guest, counted, warned about. */
  async function chainCase(c: (typeof CHAIN_CASES)[number]): Promise<string> {
    const what = `broken chain (${c.name}) on vring ${c.ring}`;
    const dir = c.ring === 0 ? 'vfToVm' : 'vmToVf';
    const before = (await relayCounters(stats, siteB.relayId))[dir];
    await hostile.connect(relay.socketPath(siteB.relayId), reactor, {}, { postRx: c.ring !== 0 });
    try {
      const used = hostile.usedIndex(c.ring);
      hostile.postRawChain(c.ring, c.descs, c.head);
      if (c.ring === 0) sendFromPeer(siteB, 1);
      await waitFor(() => hostile.usedIndex(c.ring) === ((used + 1) & 0xffff), 3000, `${what}: the chain given back to the guest`, 10);
      const after = (await relayCounters(stats, siteB.relayId))[dir];
      expect(after.badChains - before.badChains, `${what}: counted`).toBe(1);
      const problems = relay.logs().filter((l) => ['warn', 'error', 'fatal'].includes(String(l.level)) && l.relay === siteB.relayId).map((l) => l.msg);
      expect(after.ringsStopped - before.ringsStopped, `${what}: a bad chain does not stop the ring; ${JSON.stringify(problems.slice(-4))}`).toBe(0);
    } finally {
      await hostile.disconnect();
    }
    return what;
  }

  /**
   * A packed ring that is one endless chain: every descriptor available (wrap 0, as a base of 0
   * says) and with NEXT. No pop can ever finish it, so the ring must stop, with a log line, and
   * not leave the worker polling work it cannot take.
   */
  async function packedEndlessChainCase(ring: 0 | 1): Promise<string> {
    const what = `packed vring ${ring} that is one endless chain`;
    const dir = ring === 0 ? 'vfToVm' : 'vmToVf';
    const before = (await relayCounters(stats, siteB.relayId))[dir];
    await hostile.connect(relay.socketPath(siteB.relayId), reactor, {}, { postRx: false, packed: true });
    try {
      // Split layout: `flags` lands on the packed id, `next` on the packed flags (USED set, AVAIL clear: available in round 0; NEXT).
      const descs = Array.from({ length: QSIZE }, (_, slot) => ({ slot, addr: SCRATCH_AT, len: 100, flags: slot, next: 0x8000 | 1 }));
      // The head (slot 0) last, as a driver publishes: a relay polling meanwhile must not see slot 0
      // available while the rest still holds what earlier cases left there.
      hostile.writeDescriptors(ring, [...descs].reverse());
      if (ring === 0) sendFromPeer(siteB, 1);
      else eventfdWrite(hostile.kickFds[1], 1);
      await waitFor(
        () => relay.logs().some((l) => l.relay === siteB.relayId && String(l.msg).includes(`vring ${ring}: `) && String(l.msg).includes(`chain from slot 0 is longer than the ring of ${QSIZE}`)),
        3000,
        `${what}: the ring stopped with a log line`,
        10,
      ).catch((err: Error) => {
        const tail = relay.logs().filter((l) => l.relay === siteB.relayId).slice(-8).map((l) => String(l.msg));
        throw new Error(`${err.message}; relay ${siteB.relayId}'s last log lines: ${JSON.stringify(tail)}`);
      });
      const after = (await relayCounters(stats, siteB.relayId))[dir];
      expect(after.ringsStopped - before.ringsStopped, `${what}: that ring stopped`).toBe(1);
    } finally {
      await hostile.disconnect();
    }
    return what;
  }

  it('refuses every non-eventfd kick and call fd with a log line, survives a full blocking eventfd, and isolates broken chains', async () => {
    await checkBothWays(healthy, siteA, 'before the campaign');
    // Warm-up: one hostile connection, so lazily opened fds are there before the first count.
    await afterCase('warm-up');
    await relayCounters(stats, siteB.relayId);
    const start = await settledStats(relay.pid);

    for (const c of FD_CASES) await afterCase(await fdCase(c));
    for (const ring of [0, 1] as const) await afterCase(await reblockedCallCase(ring));
    for (const c of CHAIN_CASES) await afterCase(await chainCase(c));
    for (const ring of [0, 1] as const) await afterCase(await packedEndlessChainCase(ring));

    // Broken chains are visible: one warning per ring (rate-limited), naming relay, vring and reason.
    const warnings = relay.logs().filter((l) => l.relay === siteB.relayId && String(l.msg).includes('descriptor chain dropped'));
    expect(warnings.map((l) => l.vring).sort()).toEqual(expect.arrayContaining([0, 1]));
    expect(warnings.find((l) => l.vring === 1)?.msg).toMatch(/loop|TTL|cycle|more than/i);
    // The healthy relay saw none of it.
    const healthyCounters = await relayCounters(stats, siteA.relayId);
    expect(healthyCounters.vmToVf.badChains + healthyCounters.vfToVm.badChains).toBe(0);
    expect(healthyCounters.vmToVf.ringsStopped + healthyCounters.vfToVm.ringsStopped).toBe(0);
    // Nothing ended a worker.
    expect(relay.logs().some((l) => String(l.msg).includes('ended unexpectedly'))).toBe(false);

    const end = await settledStats(relay.pid);
    console.log(`hostile fixed cases: fds ${start.fds} → ${end.fds}, RSS ${start.rssKiB} → ${end.rssKiB} KiB`);
    expect(end.fds, `fd growth: ${fdGrowth(start, end)}`).toBe(start.fds);
    expect(end.rssKiB - start.rssKiB).toBeLessThan(64 * 1024);
  });

  const cases = Number(process.env.VIO4WD_HOSTILE_CASES ?? 50);
  const seed = Number(process.env.VIO4WD_HOSTILE_SEED ?? Math.floor(Math.random() * 2 ** 31));
  // About 0.3 s a case here; the limit grows with the count asked for.
  it('survives a seeded random campaign over messages, fds and rings', { timeout: 60_000 + cases * 2000 }, async () => {
    console.log(`hostile random campaign: VIO4WD_HOSTILE_SEED=${seed} VIO4WD_HOSTILE_CASES=${cases}`);
    const r = rng(seed);
    // Its own warm-up, so the fd count is comparable when this test runs alone (-t random).
    await afterCase('warm-up');
    await relayCounters(stats, siteB.relayId);
    const start = await settledStats(relay.pid);
    for (let i = 0; i < cases; i++) {
      const kind = r();
      let what: string;
      try {
        if (kind < 0.5) {
          const log = await randomMessages(hostile, relay.socketPath(siteB.relayId), reactor, r);
          what = `messages: ${log.steps.join('; ')}`;
        } else if (kind < 0.75) {
          what = await fdCase({ role: r() < 0.5 ? 'kick' : 'call', ring: r() < 0.5 ? 0 : 1, fd: pick(r, Object.keys(HOSTILE_FDS)) });
        } else {
          // A random chain: random flags, next, length and address (inside or outside memory).
          const ring: 0 | 1 = r() < 0.5 ? 0 : 1;
          const n = 1 + Math.floor(r() * 4);
          const slots = Array.from({ length: n }, (_, k) => 200 + k);
          const descs = slots.map((slot) => ({
            slot,
            addr: r() < 0.7 ? SCRATCH_AT + Math.floor(r() * 0x10000) : Math.floor(r() * 2 ** 40),
            len: pick(r, [0, 1, 12, 100, 2048, 0x7fffffff, 0xffffffff]),
            flags: Math.floor(r() * 8),
            next: r() < 0.7 ? 200 + Math.floor(r() * n) : Math.floor(r() * 0x10000),
          }));
          what = `random chain on vring ${ring}: ${JSON.stringify(descs)}`;
          await hostile.connect(relay.socketPath(siteB.relayId), reactor, {}, { postRx: ring !== 0 });
          hostile.postRawChain(ring, descs, 200);
          if (ring === 0) sendFromPeer(siteB, 1);
          await sleep(50);
          await hostile.disconnect();
        }
        await afterCase(what);
        if ((i + 1) % 100 === 0) {
          // RSS along the way tells a steady leak (growing each hundred) from a heap settling; the
          // workers' heaps say whether the JavaScript of the data path holds on to anything.
          const now = processStats(relay.pid);
          const reply = await stats.request('stats', { relays: [] });
          const kib = (n: number) => Math.round(n / 1024);
          const workers = reply.workers.map((w) => kib(w.heapBytes)).join('/');
          const d = reply.daemon;
          console.log(
            `hostile random campaign: ${i + 1} of ${cases} cases passed, fds ${now.fds}, RSS ${now.rssKiB} KiB, ` +
              `main heap ${kib(d.heapUsedBytes)} of ${kib(d.heapTotalBytes)} KiB, external ${kib(d.externalBytes)} KiB, worker heaps ${workers} KiB`,
          );
        }
      } catch (err) {
        throw new Error(`random case ${i} of seed ${seed} failed: ${(err as Error).message}`);
      }
    }
    const end = await settledStats(relay.pid);
    console.log(`hostile random campaign (${cases} cases, seed ${seed}): fds ${start.fds} → ${end.fds}, RSS ${start.rssKiB} → ${end.rssKiB} KiB`);
    expect(end.fds, `fd growth: ${fdGrowth(start, end)}`).toBe(start.fds);
    expect(end.rssKiB - start.rssKiB).toBeLessThan(64 * 1024);
    expect(relay.logs().some((l) => String(l.msg).includes('ended unexpectedly'))).toBe(false);
  });
});
