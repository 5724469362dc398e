// The relay with DPDK's virtio-user (dpdk-testpmd) as the VM side and a veth as the VF: frames
// counted on the veth peer (VM→VF) and by testpmd (VF→VM), in server mode, in client mode, and with
// four queue pairs.
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';

vi.setConfig({ testTimeout: 90_000 });
import { createNetns, createVethPair, deleteLink, deleteNetns, linkCounter, nsExec, requireBinary, requireRoot, uniqueTag } from '../support/netns.js';
import { LOG_VIRTIO_PATHS, startTestpmd, virtioPaths, virtioUserVdev, type Testpmd } from '../support/testpmd.js';
import { startRelay, statsToolCounters, type RunningRelay } from '../support/relay.js';
import { sleep, stopAll, waitFor, startProcess } from '../support/processes.js';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const ready = requireRoot() && requireBinary('dpdk-testpmd') && requireBinary('ip');
const tag = uniqueTag();
const ns = `vtns${tag}`;
const vf = `vf${tag}`;
const peer = `pr${tag}`;

let relay: RunningRelay | null = null;
let testpmd: Testpmd | null = null;

/** Sends `count` ICMP echo requests from the namespace out of the peer veth (they reach the relay as VF RX). */
async function sendFromPeer(count: number): Promise<void> {
  const p = startProcess('ip', ['netns', 'exec', ns, 'ping', '-c', String(count), '-i', '0.002', '-W', '1', '10.77.0.2'], { label: 'ping' });
  await p.exited;
}

describe.skipIf(!ready)('relay with DPDK virtio-user', () => {
  beforeAll(() => {
    createNetns(ns);
    createVethPair(vf, peer, { nsB: ns });
    nsExec(ns, 'ip', ['addr', 'add', '10.77.0.1/24', 'dev', peer]);
    // A static neighbour, so the pings leave as unicast frames without waiting for ARP.
    nsExec(ns, 'ip', ['neigh', 'add', '10.77.0.2', 'lladdr', '02:00:00:77:00:02', 'dev', peer]);
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

  it('forwards VM→VF in server mode, counts every frame, and stops cleanly on SIGTERM', async () => {
    const statsEp = `ipc:///tmp/vio4wd-stats-${tag}`;
    relay = await startRelay({ staticVfs: { [vf]: 1 }, configLines: [`VIRTIOFWD_ZMQ_STATS_EP=${statsEp}`] });
    const before = linkCounter(peer, 'rx_packets', ns);
    testpmd = startTestpmd({ vdevs: [virtioUserVdev({ path: relay.socketPath(1), queueSize: 1024 })], forwardMode: 'txonly', txpkts: 64, cpu: 1, extraEal: [LOG_VIRTIO_PATHS] });
    await waitFor(() => linkCounter(peer, 'rx_packets', ns) - before > 10_000, 30_000, '10 000 frames on the veth peer');
    // The relay offers IN_ORDER, so virtio-user (in_order=1 by default) takes its in-order paths.
    expect(virtioPaths(testpmd.output()).tx).toBe('inorder');
    const stats = await testpmd.stop();
    testpmd = null;
    await sleep(200);
    const received = linkCounter(peer, 'rx_packets', ns) - before;
    const counters = statsToolCounters(statsEp, 1);
    // Every frame the relay took from the guest reached the peer: the ring backpressures, nothing
    // is lost. The one exception is mandated: frames virtio-user queues on a TX ring that is started
    // but not yet enabled (or already disabled) are consumed and discarded, and counted as "not
    // connected". Frames virtio-user queued but the relay had not taken when it stopped (at most a
    // ring of 1024) are the only difference to testpmd's count.
    expect(stats[0].txPackets).toBeGreaterThan(10_000);
    expect(counters.vmToVf.rxPackets).toBeGreaterThan(10_000);
    expect(counters.vmToVf.packets + counters.vmToVf.dropsNotConnected).toBe(counters.vmToVf.rxPackets);
    expect(counters.vmToVf.packets).toBeGreaterThan(10_000);
    expect(counters.vmToVf.dropsQueueFull + counters.vmToVf.dropsBadFrame).toBe(0);
    expect(received).toBeGreaterThanOrEqual(counters.vmToVf.packets);
    expect(stats[0].txPackets - counters.vmToVf.rxPackets).toBeLessThanOrEqual(1024);
    expect(received).toBeLessThanOrEqual(counters.vmToVf.packets + 64); // nothing else talks on the link
    expect(stats[0].txPackets - counters.vmToVf.rxPackets).toBeGreaterThanOrEqual(0);
    const status = await relay.stop();
    relay = null;
    expect(status).toBe(0);
  });

  it('forwards VF→VM in server mode', async () => {
    relay = await startRelay({ staticVfs: { [vf]: 1 } });
    testpmd = startTestpmd({ vdevs: [virtioUserVdev({ path: relay.socketPath(1), queueSize: 1024 })], forwardMode: 'rxonly', cpu: 1, extraEal: [LOG_VIRTIO_PATHS] });
    await waitFor(() => relay!.logs().some((l) => String(l.msg).includes('vring 0') || l.vring === 0), 20_000, 'vring 0 to start');
    await sleep(500);
    await sendFromPeer(300);
    await sleep(300);
    // DPDK's in-order receive path finds each buffer by its used-ring position: it only works
    // because the relay hands buffers back in the order they were posted.
    expect(virtioPaths(testpmd.output()).rx).toBe('inorder');
    const stats = await testpmd.stop();
    testpmd = null;
    expect(stats[0].rxPackets).toBeGreaterThanOrEqual(300);
  });

  it('forwards both ways in client mode, and reconnects after the frontend restarts', async () => {
    relay = await startRelay({ staticVfs: { [vf]: 2 }, vhostClient: true });
    const path = relay.socketPath(2);
    // First frontend: VM→VF.
    const before = linkCounter(peer, 'rx_packets', ns);
    testpmd = startTestpmd({ vdevs: [virtioUserVdev({ path, queueSize: 1024, server: true })], forwardMode: 'txonly', txpkts: 64, cpu: 1 });
    await waitFor(() => linkCounter(peer, 'rx_packets', ns) - before > 5_000, 30_000, '5 000 frames on the veth peer');
    await testpmd.stop();
    // Second frontend on the same path, after the first went away: the relay reconnects; VF→VM.
    // This front-end turns IN_ORDER off: the general (mergeable) receive path must work as well.
    testpmd = startTestpmd({ vdevs: [virtioUserVdev({ path, queueSize: 1024, server: true, extra: ['in_order=0'] })], forwardMode: 'rxonly', cpu: 1, extraEal: [LOG_VIRTIO_PATHS] });
    await waitFor(
      () => {
        const msgs = relay!.logs().map((l) => String(l.msg));
        const gone = msgs.findIndex((m) => m.includes('went away'));
        return gone >= 0 && msgs.slice(gone).includes('vhost-user: vring 0 started');
      },
      30_000,
      'the relay to reconnect and start vring 0 again',
    );
    await sleep(500);
    await sendFromPeer(300);
    await sleep(300);
    expect(virtioPaths(testpmd.output()).rx).toBe('mergeable buffer');
    const stats = await testpmd.stop();
    testpmd = null;
    expect(stats[0].rxPackets).toBeGreaterThanOrEqual(300);
  });

  it('on SIGTERM unlinks every socket and its PID file, and exits 0', async () => {
    const socketDir = mkdtempSync(join(tmpdir(), 'vio4wd-sock-'));
    try {
      relay = await startRelay({ staticVfs: { [vf]: 4 }, socketDir });
      expect(readdirSync(socketDir).filter((f) => f.endsWith('.sock'))).toHaveLength(64);
      expect(existsSync(join(relay.dir, 'virtio-forwarder.pid'))).toBe(true);
      const pidFile = join(relay.dir, 'virtio-forwarder.pid');
      expect(readFileSync(pidFile, 'utf8').trim()).toBe(String(relay.pid));
      process.kill(relay.pid, 'SIGTERM');
      expect(await relay.proc.exited).toBe(0);
      expect(readdirSync(socketDir)).toEqual([]);
      expect(existsSync(pidFile)).toBe(false);
      await relay.stop();
      relay = null;
    } finally {
      rmSync(socketDir, { recursive: true, force: true });
    }
  });

  it('forwards over four queue pairs both ways (VF→VM flows spread by hash)', async () => {
    relay = await startRelay({ staticVfs: { [vf]: 3 } });
    const before = linkCounter(peer, 'rx_packets', ns);
    testpmd = startTestpmd({
      vdevs: [virtioUserVdev({ path: relay.socketPath(3), queueSize: 1024, queues: 4 })],
      forwardMode: 'txonly',
      txpkts: 64,
      cpu: 1,
      queues: 4,
    });
    await waitFor(() => linkCounter(peer, 'rx_packets', ns) - before > 10_000, 30_000, '10 000 frames from 4 queues');
    const stats = await testpmd.stop();
    testpmd = null;
    expect(stats[0].txPackets).toBeGreaterThan(10_000);
    const started = new Set(relay.logs().filter((l) => typeof l.vring === 'number' && String(l.msg).includes('started')).map((l) => l.vring));
    expect(started.size).toBeGreaterThanOrEqual(8);

    // VF→VM over four RX queues: 400 UDP flows (one source port each) spread by the flow hash,
    // and every frame reaches the guest, whichever queue carried it.
    testpmd = startTestpmd({
      vdevs: [virtioUserVdev({ path: relay.socketPath(3), queueSize: 1024, queues: 4 })],
      forwardMode: 'rxonly',
      cpu: 1,
      queues: 4,
    });
    await waitFor(
      () => {
        const msgs = relay!.logs().map((l) => String(l.msg));
        let gone = -1;
        msgs.forEach((m, i) => {
          if (m.startsWith('vhost-user: front-end disconnected') || m.startsWith('vhost-user: front-end connection ended')) gone = i;
        });
        return gone >= 0 && msgs.slice(gone).includes('vhost-user: vring 6 started');
      },
      30_000,
      'the second frontend to start RX queue 3 (vring 6)',
    );
    await sleep(500);
    const sender = startProcess('ip', [
      'netns', 'exec', ns, 'python3', '-c',
      'import socket\nfor i in range(400):\n  s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b"x"*32, ("10.77.0.2", 9)); s.close()\nprint("sent")',
    ], { label: 'udp-flows' });
    await sender.waitForOutput(/sent/, 20_000);
    await sleep(500);
    const rx = await testpmd.stop();
    testpmd = null;
    expect(rx[0].rxPackets).toBeGreaterThanOrEqual(400);
  });
});
