// The daemon with AF_XDP VF ports (VIRTIOFWD_VF_PORT) against DPDK's virtio-user: VM→VF with every
// frame accounted for, VF→VM from the peer namespace's stack, the program on the VF while the
// relay runs and gone after it stops or is killed, and `auto` falling back to AF_PACKET, with
// the reason in the log, where the VF cannot have an AF_XDP port.
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { execFileSync } from 'node:child_process';
import { createNetns, createVethPair, deleteLink, deleteNetns, linkCounter, nsExec, requireBinary, requireRoot, uniqueTag } from '../support/netns.js';
import { startTestpmd, virtioUserVdev, type Testpmd } from '../support/testpmd.js';
import { startRelay, statsToolCounters, type RunningRelay } from '../support/relay.js';
import { sleep, stopAll, waitFor, startProcess } from '../support/processes.js';
import { createXskMap, loadRedirectProgram, attachXdp, closeBpfFd, programId, XDP_FLAGS_DRV_MODE } from '../../sys/bpf.js';
import { ifNameToIndex } from '../../sys/netdev.js';

vi.setConfig({ testTimeout: 90_000 });

const ready = requireRoot() && requireBinary('dpdk-testpmd') && requireBinary('ip');
const tag = uniqueTag();
const ns = `xdns${tag}`;
const vf = `xd${tag}`;
const peer = `xe${tag}`;

let relay: RunningRelay | null = null;
let testpmd: Testpmd | null = null;

/** The XDP program `ip` reports on the VF: 'xdp' (driver), 'xdpgeneric', or null. */
function attachedXdp(): string | null {
  const out = execFileSync('ip', ['-d', 'link', 'show', 'dev', vf], { encoding: 'utf8' });
  const m = /\b(xdpgeneric|xdp)\b/.exec(out.split('\n')[0] ?? '');
  return m ? m[1] : null;
}

async function udpFromPeer(count: number): Promise<void> {
  const sender = startProcess('ip', [
    'netns', 'exec', ns, 'python3', '-c',
    `import socket\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nfor i in range(${count}):\n  s.sendto(b"x"*64, ("10.79.0.2", 9))\nprint("sent")`,
  ], { label: 'udp' });
  await sender.waitForOutput(/sent/, 20_000);
}

const portLog = (r: RunningRelay) => r.logs().filter((l) => /^VF \S+: (AF_XDP|AF_PACKET|no AF_XDP)/.test(String(l.msg))).map((l) => String(l.msg));

describe.skipIf(!ready)('AF_XDP VF ports with DPDK virtio-user', () => {
  beforeAll(() => {
    createNetns(ns);
    createVethPair(vf, peer, { nsB: ns, noIpv6: true });
    nsExec(ns, 'ip', ['addr', 'add', '10.79.0.1/24', 'dev', peer]);
    nsExec(ns, 'ip', ['neigh', 'add', '10.79.0.2', 'lladdr', '02:00:00:79:00:02', 'dev', peer]);
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

  it('VM→VF: every frame the relay took reached the VF; the stats name the port; the program goes when the relay stops', async () => {
    const statsEp = `ipc:///tmp/vio4wd-stats-${tag}`;
    relay = await startRelay({ staticVfs: { [vf]: 1 }, configLines: [`VIRTIOFWD_ZMQ_STATS_EP=${statsEp}`, 'VIRTIOFWD_VF_PORT=af_xdp'] });
    await waitFor(() => portLog(relay!).length > 0, 10_000, 'the port to be opened');
    expect(portLog(relay)).toHaveLength(1);
    expect(portLog(relay)[0]).toMatch(new RegExp(`^VF ${vf}: AF_XDP port, program \\d+ in the driver, copy mode, 1 queue, relay's UMEM \\(frames copied\\)$`));
    expect(attachedXdp()).toBe('xdp');
    const before = linkCounter(peer, 'rx_packets', ns);
    testpmd = startTestpmd({ vdevs: [virtioUserVdev({ path: relay.socketPath(1), queueSize: 1024 })], forwardMode: 'txonly', txpkts: 64, cpu: 1 });
    await waitFor(() => linkCounter(peer, 'rx_packets', ns) - before > 20_000, 30_000, '20 000 frames on the veth peer');
    // The VM's memory arrived: the port was opened again around it (DPDK's one hugepage file).
    expect(portLog(relay)[1]).toMatch(new RegExp(`^VF ${vf}: AF_XDP port, program \\d+ in the driver, copy mode, 1 queue, UMEM over the VM's memory \\(1 region, \\d+ MiB pinned\\)$`));
    const running = statsToolCounters(statsEp, 1) as unknown as { ports: Array<{ txFramesInPlace: number }>; vmToVf: { packets: number } };
    expect(running.ports).toEqual([{ netdev: vf, port: 'af_xdp', attach: 'native', dispatcher: false, zeroCopy: false, umem: 'guest', rxInPlace: false, rxFramesInPlace: 0, txFramesInPlace: expect.any(Number) }]);
    // virtio-user writes header and frame in one buffer: after the port was opened around the
    // VM's memory, every frame left from there.
    expect(running.ports[0].txFramesInPlace).toBeGreaterThan(0);
    expect(running.ports[0].txFramesInPlace).toBeLessThanOrEqual(running.vmToVf.packets);
    const stats = await testpmd.stop();
    testpmd = null;
    await sleep(300);
    const received = linkCounter(peer, 'rx_packets', ns) - before;
    const counters = statsToolCounters(statsEp, 1);
    expect(counters.vmToVf.packets + counters.vmToVf.dropsNotConnected + counters.vmToVf.dropsQueueFull).toBe(counters.vmToVf.rxPackets);
    expect(counters.vmToVf.dropsBadFrame + counters.vmToVf.badChains).toBe(0);
    expect(counters.vmToVf.packets).toBeGreaterThan(20_000);
    // Every frame the relay handed to the AF_XDP socket reached the peer.
    expect(received).toBeGreaterThanOrEqual(counters.vmToVf.packets);
    expect(received).toBeLessThanOrEqual(counters.vmToVf.packets + 64);
    expect(stats[0].txPackets - counters.vmToVf.rxPackets).toBeGreaterThanOrEqual(0);
    expect(stats[0].txPackets - counters.vmToVf.rxPackets).toBeLessThanOrEqual(1024);
    const whole = counters as unknown as { ports: unknown[] };
    // The VM gone, its memory left the UMEM (and is no longer pinned).
    expect(whole.ports).toEqual([{ netdev: vf, port: 'af_xdp', attach: 'native', dispatcher: false, zeroCopy: false, umem: 'relay', rxInPlace: false, rxFramesInPlace: 0, txFramesInPlace: 0 }]);
    expect(portLog(relay).length).toBe(3);
    await relay.stop();
    relay = null;
    expect(attachedXdp()).toBeNull();
  });

  it('VF→VM: frames from the peer reach the guest; after the relay is killed the program is gone and a new relay takes the VF again', async () => {
    const statsEp = `ipc:///tmp/vio4wd-stats2-${tag}`;
    relay = await startRelay({ staticVfs: { [vf]: 2 }, configLines: ['VIRTIOFWD_VF_PORT=af_xdp', `VIRTIOFWD_ZMQ_STATS_EP=${statsEp}`] });
    testpmd = startTestpmd({ vdevs: [virtioUserVdev({ path: relay.socketPath(2), queueSize: 256 })], forwardMode: 'rxonly', cpu: 1 });
    await waitFor(() => relay!.logs().filter((l) => /vring \d+ started$/.test(String(l.msg))).length >= 2, 20_000, 'both vrings to start');
    await sleep(500);
    await udpFromPeer(3000);
    await sleep(500);
    const rx = await testpmd.stop();
    testpmd = null;
    const counters = statsToolCounters(statsEp, 2).vfToVm;
    const veth = execFileSync('ethtool', ['-S', vf], { encoding: 'utf8' }).replace(/\s+/g, ' ');
    expect(rx[0].rxPackets, `relay ${JSON.stringify(counters)}; veth ${veth}`).toBeGreaterThanOrEqual(3000);
    process.kill(relay.pid, 'SIGKILL');
    await relay.stop().catch(() => undefined);
    relay = null;
    await waitFor(() => attachedXdp() === null, 5000, 'the kernel to detach the program of the killed relay');
    relay = await startRelay({ staticVfs: { [vf]: 2 }, configLines: ['VIRTIOFWD_VF_PORT=af_xdp'] });
    await waitFor(() => portLog(relay!).length > 0, 10_000, 'the port to be opened again');
    expect(portLog(relay)[0]).toMatch(/AF_XDP port/);
  });

  it('VIRTIOFWD_XDP_RX=guest: frames land in the VM\'s buffers, every one counted; a stopped VM gets back the buffers the port held, and the next VM receives', async () => {
    const statsEp = `ipc:///tmp/vio4wd-stats4-${tag}`;
    relay = await startRelay({ staticVfs: { [vf]: 2 }, configLines: ['VIRTIOFWD_VF_PORT=af_xdp', 'VIRTIOFWD_XDP_RX=guest', `VIRTIOFWD_ZMQ_STATS_EP=${statsEp}`] });
    for (let round = 0; round < 2; round++) {
      testpmd = startTestpmd({ vdevs: [virtioUserVdev({ path: relay.socketPath(2), queueSize: 1024 })], forwardMode: 'rxonly', cpu: 1 });
      await waitFor(() => portLog(relay!).filter((m) => m.endsWith(", receiving into the VM's buffers")).length > round, 20_000, "the port over the VM's memory");
      await sleep(500);
      const before = statsToolCounters(statsEp, 2).vfToVm;
      const running = statsToolCounters(statsEp, 2) as unknown as { ports: unknown[] };
      expect(running.ports).toEqual([{ netdev: vf, port: 'af_xdp', attach: 'native', dispatcher: false, zeroCopy: false, umem: 'guest', rxInPlace: true, rxFramesInPlace: expect.any(Number), txFramesInPlace: 0 }]);
      const inPlaceBefore = (running.ports[0] as { rxFramesInPlace: number }).rxFramesInPlace;
      await udpFromPeer(3000);
      await sleep(500);
      const inPlace = (statsToolCounters(statsEp, 2) as unknown as { ports: Array<{ rxFramesInPlace: number }> }).ports[0].rxFramesInPlace - inPlaceBefore;
      const rx = await testpmd.stop();
      testpmd = null;
      await waitFor(() => relay!.logs().filter((l) => /receive buffers the AF_XDP port held went back to vring 0$/.test(String(l.msg))).length > round, 10_000, 'the held buffers to go back');
      const c = statsToolCounters(statsEp, 2).vfToVm;
      // Every frame the VF took reached the guest or is counted where it was lost.
      expect(rx[0].rxPackets).toBe(c.packets - before.packets);
      expect(c.packets - before.packets + (c.dropsKernelRing - before.dropsKernelRing)).toBe(3000);
      expect(c.packets - before.packets).toBeGreaterThan(0);
      expect(c.dropsQueueFull + c.dropsBadFrame + c.badChains).toBe(0);
      // The port counts what landed in place; frames of the blast that waited in relay chunks
      // while the guest was behind were copied (the e2e test checks a guest that keeps up).
      expect(inPlace).toBeGreaterThan(0);
      expect(inPlace).toBeLessThanOrEqual(c.packets - before.packets);
    }
  });

  it('a VF whose AF_XDP port cannot be opened again leaves the relay and its device, so nothing holds it any more', async () => {
    // Its own pair: this VF is deleted while the VM is connected, so the port cannot be reopened
    // around the relay's own UMEM when the VM leaves.
    const gone = `xg${tag}`;
    const gonePeer = `xh${tag}`;
    createVethPair(gone, gonePeer, { nsB: ns, noIpv6: true });
    const statsEp = `ipc:///tmp/vio4wd-stats3-${tag}`;
    try {
      relay = await startRelay({ staticVfs: { [gone]: 3 }, configLines: ['VIRTIOFWD_VF_PORT=af_xdp', `VIRTIOFWD_ZMQ_STATS_EP=${statsEp}`] });
      testpmd = startTestpmd({ vdevs: [virtioUserVdev({ path: relay.socketPath(3), queueSize: 256 })], forwardMode: 'rxonly', cpu: 1 });
      await waitFor(() => portLog(relay!).length >= 2, 20_000, "the port to be opened again over the VM's memory");
      expect(portLog(relay)[1]).toMatch(/UMEM over the VM's memory/);
      const attached = statsToolCounters(statsEp, 3) as unknown as { device: string | null; deviceKind: string | null };
      expect(attached).toMatchObject({ device: gone, deviceKind: 'vf' });
      deleteLink(gone);
      await testpmd.stop();
      testpmd = null;
      const gaveUp = (l: Record<string, unknown>) => String(l.msg).startsWith(`VF ${gone}: its AF_XDP port could not be opened again after the VM disconnected: `);
      await waitFor(() => relay!.logs().some(gaveUp), 10_000, 'the relay to give the VF up');
      expect(String(relay.logs().find(gaveUp)!.msg)).toMatch(/; the VF leaves the relay and may be attached again$/);
      // The daemon is up and no longer names the VF: not in the device the registry checks before
      // it lets a VF be attached, not among the ports.
      const after = statsToolCounters(statsEp, 3) as unknown as { device: string | null; ports: unknown[]; vfToVm: { state: string } };
      expect(after).toMatchObject({ device: null, deviceKind: null, ports: [], vfToVm: { state: 'UNINIT' } });
    } finally {
      deleteLink(gone);
    }
  });

  it('auto: AF_PACKET with the reason where another XDP program holds the VF, or with jumbo frames; AF_XDP otherwise', async () => {
    const map = createXskMap(1, 'foreign');
    const prog = loadRedirectProgram(map, 'foreign');
    const link = attachXdp(prog, ifNameToIndex(vf), XDP_FLAGS_DRV_MODE, 'a foreign program');
    try {
      relay = await startRelay({ staticVfs: { [vf]: 3 }, configLines: ['VIRTIOFWD_VF_PORT=auto'] });
      await waitFor(() => portLog(relay!).length > 0, 10_000, 'the port to be opened');
      expect(portLog(relay)[0]).toBe(`VF ${vf}: AF_XDP not possible (bpf (attaching XDP to ${vf}: another XDP program (foreign, id ${programId(prog)}) `
        + "is attached to it, not through libxdp's dispatcher (xdp-loader would load it that way and let the port share the interface)) failed: EBUSY); using AF_PACKET");
      await relay.stop();
      relay = null;
    } finally {
      for (const fd of [link, prog, map]) closeBpfFd(fd);
    }
    relay = await startRelay({ staticVfs: { [vf]: 3 }, configLines: ['VIRTIOFWD_VF_PORT=auto', 'VIRTIOFWD_JUMBO=true'] });
    await sleep(1000);
    expect(portLog(relay)).toEqual([]);
    expect(attachedXdp()).toBeNull();
    await relay.stop();
    relay = await startRelay({ staticVfs: { [vf]: 3 }, configLines: ['VIRTIOFWD_VF_PORT=auto'] });
    await waitFor(() => portLog(relay!).length > 0, 10_000, 'the port to be opened');
    expect(portLog(relay)[0]).toMatch(/AF_XDP port, program \d+ in the driver/);
  });
});
