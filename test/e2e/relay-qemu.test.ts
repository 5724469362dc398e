// End to end: a Debian guest under QEMU (TCG) whose virtio-net is served by the relay, pinging a
// host in a network namespace behind a veth that stands in for the VF. Server mode with hugepage
// memory, packed rings, an AF_XDP VF port, client mode with memfd memory, and a relay restart in
// client mode that the guest rides out without rebooting.
import { mkdtempSync, rmSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { createHash } from 'node:crypto';
import { hasBinary, requireOrSkip } from '../support/env.js';
import { createNetns, createVethPair, deleteLink, deleteNetns, nsExec, requireRoot, uniqueTag } from '../support/netns.js';
import { ensureGuestImage, type GuestImage } from '../support/guest-image.js';
import { ensureHugepages } from '../support/hugepages.js';
import { pingFromGuest, startGuestVm, type GuestVm } from '../support/qemu.js';
import { startRelay, statsToolCounters, type RunningRelay } from '../support/relay.js';
import { startProcess, stopAll } from '../support/processes.js';

vi.setConfig({ testTimeout: 240_000, hookTimeout: 300_000 });

const ready = requireRoot() && requireOrSkip(hasBinary('qemu-system-x86_64'), 'the e2e tests need qemu-system-x86_64');
const tag = uniqueTag();
const ns = `qns${tag}`;
const vf = `qvf${tag}`;
const peer = `qpr${tag}`;
const HOST_IP = '10.66.0.1';
const GUEST_IP = '10.66.0.2';

let image: GuestImage;
let relay: RunningRelay | null = null;
let vm: GuestVm | null = null;

const guestPings = (count: number, attempts = 5) => pingFromGuest(vm!, HOST_IP, count, { attempts, context: () => `relay log tail:\n${relay?.proc.output().slice(-3000)}` });

describe.runIf(ready)('relay with a Linux guest under QEMU', () => {
  beforeAll(async () => {
    image = await ensureGuestImage();
    createNetns(ns);
    createVethPair(vf, peer, { nsB: ns });
    nsExec(ns, 'ip', ['addr', 'add', `${HOST_IP}/24`, 'dev', peer]);
  });

  afterEach(async () => {
    await vm?.stop();
    vm = null;
    await relay?.stop();
    relay = null;
  });

  afterAll(async () => {
    await stopAll();
    deleteLink(vf);
    deleteNetns(ns);
  });

  it('relay as server, guest memory on hugetlbfs: the guest and the namespace ping each other', async () => {
    ensureHugepages(256);
    relay = await startRelay({ staticVfs: { [vf]: 1 }, cpus: [0] });
    vm = await startGuestVm({
      image,
      machine: 'pc',
      memoryBackend: 'hugetlbfs',
      vhostUser: { socketPath: relay.socketPath(1) },
      ip: `${GUEST_IP}/24`,
      mac: '52:54:00:66:00:02',
      cpu: 1,
    });
    await vm.ready(180_000);
    const out = await guestPings(3);
    expect(out).toMatch(/3 packets transmitted, 3 packets received/);
    // And the other way: the namespace reaches the guest (ARP and ICMP both cross the relay).
    const fromHost = nsExec(ns, 'ping', ['-c', '3', '-W', '2', GUEST_IP], { timeoutMs: 30_000 });
    expect(fromHost).toMatch(/3 received/);
    // TCP both ways: the namespace's stack leaves checksums to offload; the guest only accepts
    // what the relay completed.
    const server = startProcess('ip', [
      'netns', 'exec', ns, 'python3', '-c',
      'import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", 5001)); s.listen(1); print("listening", flush=True)\nc,_=s.accept(); d=b""\nwhile not d.endswith(b"\\n"):\n  x=c.recv(4096)\n  if not x: break\n  d+=x\nc.sendall(d.upper()*200); c.close()',
    ], { label: 'tcp-server' });
    await server.waitForOutput(/listening/, 10_000);
    const tcp = await vm.exec(`echo hello-through-the-relay | nc -w 5 ${HOST_IP} 5001 | tail -c 25`, 30_000);
    await server.stop();
    expect(tcp.output).toContain('HELLO-THROUGH-THE-RELAY');
  });

  it('packed=on: the guest drives packed virtqueues through the relay, ping both ways and a TCP exchange', async () => {
    relay = await startRelay({ staticVfs: { [vf]: 3 }, cpus: [0] });
    vm = await startGuestVm({
      image,
      machine: 'pc',
      vhostUser: { socketPath: relay.socketPath(3), packed: true },
      ip: `${GUEST_IP}/24`,
      mac: '52:54:00:66:00:03',
      cpu: 1,
    });
    await vm.ready(180_000);
    // The guest's driver negotiated VIRTIO_F_RING_PACKED (bit 34 of its features string).
    const features = await vm.exec('for d in /sys/bus/virtio/devices/*; do [ "$(cat $d/device)" = 0x0001 ] && cat $d/features; done', 20_000);
    expect(features.output.trim()[34], features.output).toBe('1');
    expect(relay.logs().filter((l) => /^vhost-user: vring [01] started$/.test(String(l.msg))).map((l) => l.layout)).toEqual(['packed', 'packed']);
    expect(await guestPings(5)).toMatch(/5 packets transmitted, 5 packets received/);
    expect(nsExec(ns, 'ping', ['-c', '3', '-W', '2', GUEST_IP], { timeoutMs: 30_000 })).toMatch(/3 received/);
    // 200 replies of the request: more frames than the ring has descriptors, so it wraps.
    const server = startProcess('ip', [
      'netns', 'exec', ns, 'python3', '-c',
      'import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", 5002)); s.listen(1); print("listening", flush=True)\nc,_=s.accept(); d=b""\nwhile not d.endswith(b"\\n"):\n  x=c.recv(4096)\n  if not x: break\n  d+=x\nc.sendall(d.upper()*20000); c.close()',
    ], { label: 'tcp-server-packed' });
    await server.waitForOutput(/listening/, 10_000);
    const tcp = await vm.exec(`echo packed-ring-through-the-relay | nc -w 5 ${HOST_IP} 5002 | wc -c`, 60_000);
    await server.stop();
    expect(tcp.output.trim()).toBe(String(30 * 20000));
  });

  it('VIRTIOFWD_VF_PORT=af_xdp with VIRTIOFWD_XDP_RX=guest: ping both ways and a TCP stream received straight into the guest\'s buffers, intact, and the program gone with the relay', async () => {
    const statsEp = `ipc:///tmp/vio4wd-e2e-xdp-stats-${process.pid}`;
    relay = await startRelay({ staticVfs: { [vf]: 4 }, cpus: [0], configLines: ['VIRTIOFWD_VF_PORT=af_xdp', 'VIRTIOFWD_XDP_RX=guest', `VIRTIOFWD_ZMQ_STATS_EP=${statsEp}`] });
    // AF_XDP hands over frames as they are on the wire: the namespace's stack must checksum them.
    nsExec(ns, 'ethtool', ['-K', peer, 'tx', 'off']);
    try {
      vm = await startGuestVm({
        image,
        machine: 'pc',
        vhostUser: { socketPath: relay.socketPath(4) },
        ip: `${GUEST_IP}/24`,
        mac: '52:54:00:66:00:04',
        cpu: 1,
      });
      await vm.ready(180_000);
      // Opened without a VM, then again around the VM's memory (its hugetlbfs file) once it came.
      const portLines = relay.logs().map((l) => String(l.msg)).filter((m) => m.startsWith(`VF ${vf}: AF_XDP port`));
      expect(portLines[0]).toMatch(new RegExp(`^VF ${vf}: AF_XDP port, program \\d+ in the driver, copy mode, 1 queue, relay's UMEM \\(frames copied\\)$`));
      expect(portLines.at(-1)).toMatch(/, UMEM over the VM's memory \(\d regions?, \d+ MiB pinned\), receiving into the VM's buffers$/);
      expect(await guestPings(5)).toMatch(/5 packets transmitted, 5 packets received/);
      expect(nsExec(ns, 'ping', ['-c', '3', '-W', '2', GUEST_IP], { timeoutMs: 30_000 })).toMatch(/3 received/);
      const server = startProcess('ip', [
        'netns', 'exec', ns, 'python3', '-c',
        'import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", 5003)); s.listen(1); print("listening", flush=True)\nc,_=s.accept(); d=b""\nwhile not d.endswith(b"\\n"):\n  x=c.recv(4096)\n  if not x: break\n  d+=x\nc.sendall(d.upper()*20000); c.close()',
      ], { label: 'tcp-server-xdp' });
      await server.waitForOutput(/listening/, 10_000);
      // The reply crosses into the guest in its own receive buffers: its checksum says it is whole.
      const tcp = await vm.exec(`echo through-an-af-xdp-port | nc -w 5 ${HOST_IP} 5003 | md5sum`, 60_000);
      await server.stop();
      expect(tcp.output.trim().split(/\s+/)[0]).toBe(createHash('md5').update('THROUGH-AN-AF-XDP-PORT\n'.repeat(20000)).digest('hex'));
      // Linux's mergeable buffers (1,536 bytes and up) take frames in place: the port never fell back.
      expect(relay.logs().some((l) => /frames are copied into the VM's buffers from now on/.test(String(l.msg)))).toBe(false);
      // And a guest with a 256-entry ring that keeps up gets nearly all of them in place, not
      // copied through relay chunks (the stream alone is over 300 full-size frames).
      const stats = statsToolCounters(statsEp, 4) as unknown as { ports: Array<{ rxFramesInPlace: number }>; vfToVm: { packets: number } };
      expect(stats.ports[0].rxFramesInPlace).toBeGreaterThan(300);
      expect(stats.ports[0].rxFramesInPlace).toBeGreaterThanOrEqual(0.9 * stats.vfToVm.packets);
      await vm.stop();
      vm = null;
      await relay.stop();
      relay = null;
      expect(execFileSync('ip', ['link', 'show', 'dev', vf], { encoding: 'utf8' })).not.toMatch(/\bxdp\b/);
    } finally {
      nsExec(ns, 'ethtool', ['-K', peer, 'tx', 'on']);
    }
  });

  it('relay as client, memfd memory: ping survives a relay restart without a guest reboot', async () => {
    const socketDir = mkdtempSync(join(tmpdir(), 'vio4wd-e2e-sock-'));
    try {
      relay = await startRelay({ staticVfs: { [vf]: 1 }, cpus: [0], vhostClient: true, socketDir });
      vm = await startGuestVm({
        image,
        machine: 'pc',
        memoryBackend: 'memfd',
        vhostUser: { socketPath: relay.socketPath(1), qemuIsServer: true },
        ip: `${GUEST_IP}/24`,
        mac: '52:54:00:66:00:03',
        cpu: 1,
      });
      await vm.ready(180_000);
      await guestPings(3);
      const bootsBefore = (vm.output().match(/VIO4WD-GUEST-READY/g) ?? []).length;

      expect(await relay.stop()).toBe(0);
      relay = await startRelay({ staticVfs: { [vf]: 1 }, cpus: [0], vhostClient: true, socketDir });
      const out = await guestPings(3, 10);
      expect(out).toMatch(/3 packets received/);
      // Same guest: no second boot happened.
      expect((vm.output().match(/VIO4WD-GUEST-READY/g) ?? []).length).toBe(bootsBefore);
      expect(relay.logs().some((l) => String(l.msg).includes('resumes from used index') || String(l.msg).includes('vring 0 started'))).toBe(true);
    } finally {
      rmSync(socketDir, { recursive: true, force: true });
    }
  });
});
