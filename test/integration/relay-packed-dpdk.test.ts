// Packed virtqueues against DPDK's virtio-user (packed_vq=1): VM→VF with every frame accounted
// for, VF→VM on the mergeable and on the plain receive path, four queue pairs both ways, and a
// front-end that comes back with split rings after one with packed rings (and the other way).
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { createNetns, createVethPair, deleteLink, deleteNetns, linkCounter, nsExec, requireBinary, requireRoot, uniqueTag } from '../support/netns.js';
import { LOG_VIRTIO_PATHS, startTestpmd, virtioPaths, virtioUserVdev, type Testpmd } from '../support/testpmd.js';
import { startRelay, statsToolCounters, type RunningRelay } from '../support/relay.js';
import { sleep, stopAll, waitFor, startProcess } from '../support/processes.js';

vi.setConfig({ testTimeout: 90_000 });

const ready = requireRoot() && requireBinary('dpdk-testpmd') && requireBinary('ip');
const tag = uniqueTag();
const ns = `pkns${tag}`;
const vf = `pk${tag}`;
const peer = `pq${tag}`;
const PACKED = 'packed_vq=1';

let relay: RunningRelay | null = null;
let testpmd: Testpmd | null = null;

/** `count` UDP frames from the namespace to the guest's address, one source port (flow) each. */
async function udpFlowsFromPeer(count: number): Promise<void> {
  const sender = startProcess('ip', [
    'netns', 'exec', ns, 'python3', '-c',
    `import socket\nfor i in range(${count}):\n  s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b"x"*32, ("10.78.0.2", 9)); s.close()\nprint("sent")`,
  ], { label: 'udp-flows' });
  await sender.waitForOutput(/sent/, 20_000);
}

/** The relay's log lines for vrings it started, newest last. */
function startedLayouts(r: RunningRelay): string[] {
  return r.logs().filter((l) => String(l.msg).match(/^vhost-user: vring \d+ started$/)).map((l) => String(l.layout));
}

describe.skipIf(!ready)('packed virtqueues with DPDK virtio-user', () => {
  beforeAll(() => {
    createNetns(ns);
    createVethPair(vf, peer, { nsB: ns });
    nsExec(ns, 'ip', ['addr', 'add', '10.78.0.1/24', 'dev', peer]);
    nsExec(ns, 'ip', ['neigh', 'add', '10.78.0.2', 'lladdr', '02:00:00:78:00:02', 'dev', peer]);
  });

  afterEach(async () => {
    await testpmd?.stop().catch(() => undefined);
    testpmd = null;
    await relay?.stop();
    relay = null;
  });

  afterAll(async () => {
    await stopAll();
    deleteLink(vf);
    deleteNetns(ns);
  });

  it('VM→VF: every frame the relay took from the packed ring reached the VF, and testpmd used its packed paths', async () => {
    const statsEp = `ipc:///tmp/vio4wd-stats-${tag}`;
    relay = await startRelay({ staticVfs: { [vf]: 1 }, configLines: [`VIRTIOFWD_ZMQ_STATS_EP=${statsEp}`] });
    const before = linkCounter(peer, 'rx_packets', ns);
    // 1000 descriptors: not a power of two, which only a packed ring allows.
    testpmd = startTestpmd({ vdevs: [virtioUserVdev({ path: relay.socketPath(1), queueSize: 1000, extra: [PACKED] })], forwardMode: 'txonly', txpkts: 64, cpu: 1, extraEal: [LOG_VIRTIO_PATHS] });
    await waitFor(() => linkCounter(peer, 'rx_packets', ns) - before > 20_000, 30_000, '20 000 frames on the veth peer');
    expect(virtioPaths(testpmd.output()).tx).toMatch(/^packed ring/);
    const stats = await testpmd.stop();
    testpmd = null;
    await sleep(200);
    expect(startedLayouts(relay).slice(0, 2)).toEqual(['packed', 'packed']);
    expect(relay.logs().find((l) => String(l.msg).includes('vring 1 started'))?.size).toBe(1000);
    const received = linkCounter(peer, 'rx_packets', ns) - before;
    const counters = statsToolCounters(statsEp, 1);
    expect(counters.vmToVf.packets + counters.vmToVf.dropsNotConnected).toBe(counters.vmToVf.rxPackets);
    expect(counters.vmToVf.dropsQueueFull + counters.vmToVf.dropsBadFrame + counters.vmToVf.badChains).toBe(0);
    expect(counters.vmToVf.packets).toBeGreaterThan(20_000);
    expect(received).toBeGreaterThanOrEqual(counters.vmToVf.packets);
    expect(received).toBeLessThanOrEqual(counters.vmToVf.packets + 64);
    // What testpmd sent and the relay did not take is at most one ring.
    expect(stats[0].txPackets - counters.vmToVf.rxPackets).toBeGreaterThanOrEqual(0);
    expect(stats[0].txPackets - counters.vmToVf.rxPackets).toBeLessThanOrEqual(1000);
    expect(relay.logs().filter((l) => Number(l.level) >= 40 && /vring/.test(String(l.msg)))).toEqual([]);
  });

  for (const [label, extra, path] of [
    ['mergeable buffers', [PACKED], /^packed ring mergeable buffer/],
    ['without mergeable buffers or in-order', [PACKED, 'mrg_rxbuf=0', 'in_order=0'], /^packed ring standard/],
  ] as const) {
    it(`VF→VM into a packed ring, ${label}: every frame arrives`, async () => {
      relay = await startRelay({ staticVfs: { [vf]: 2 } });
      testpmd = startTestpmd({ vdevs: [virtioUserVdev({ path: relay.socketPath(2), queueSize: 256, extra: [...extra] })], forwardMode: 'rxonly', cpu: 1, extraEal: [LOG_VIRTIO_PATHS] });
      await waitFor(() => startedLayouts(relay!).length >= 2, 20_000, 'both vrings to start');
      await sleep(500);
      // More frames than the ring has buffers: the used ring wraps several times.
      await udpFlowsFromPeer(1500);
      await sleep(500);
      expect(virtioPaths(testpmd.output()).rx).toMatch(path);
      const stats = await testpmd.stop();
      testpmd = null;
      expect(stats[0].rxPackets).toBeGreaterThanOrEqual(1500);
      expect(startedLayouts(relay)).toContain('packed');
    });
  }

  it('four packed queue pairs both ways, then split rings on the same socket, then packed again', async () => {
    relay = await startRelay({ staticVfs: { [vf]: 3 } });
    const path = relay.socketPath(3);
    const before = linkCounter(peer, 'rx_packets', ns);
    testpmd = startTestpmd({ vdevs: [virtioUserVdev({ path, queueSize: 512, queues: 4, extra: [PACKED] })], forwardMode: 'txonly', txpkts: 64, cpu: 1, queues: 4 });
    await waitFor(() => linkCounter(peer, 'rx_packets', ns) - before > 10_000, 30_000, '10 000 frames from 4 packed queues');
    await testpmd.stop();
    testpmd = null;
    const layouts = startedLayouts(relay);
    expect(layouts.length).toBeGreaterThanOrEqual(8);
    expect(new Set(layouts)).toEqual(new Set(['packed']));

    for (const extra of [[], [PACKED]]) {
      const startedBefore = startedLayouts(relay).length;
      testpmd = startTestpmd({ vdevs: [virtioUserVdev({ path, queueSize: 512, queues: 4, extra })], forwardMode: 'rxonly', cpu: 1, queues: 4 });
      await waitFor(() => startedLayouts(relay!).length >= startedBefore + 8, 30_000, 'the next front-end to start its 8 vrings');
      expect(new Set(startedLayouts(relay).slice(startedBefore))).toEqual(new Set([extra.length ? 'packed' : 'split']));
      await sleep(500);
      await udpFlowsFromPeer(400);
      await sleep(500);
      const rx = await testpmd.stop();
      testpmd = null;
      expect(rx[0].rxPackets, `frames into ${extra.length ? 'packed' : 'split'} rings`).toBeGreaterThanOrEqual(400);
    }
  });
});
