// Transmit offloads end to end (VIRTIOFWD_TSO=y): a QEMU guest whose virtio-net negotiates CSUM
// and HOST_TSO4 sends a TCP stream to a host in a namespace. The relay hands each frame's
// virtio-net header to the VF's kernel socket (PACKET_VNET_HDR): the guest's large TCP segments
// cross the relay whole with their checksums left to the kernel, and the host receives the
// stream intact. Without the setting the same guest negotiates no
// offload and every frame it sends fits the MTU.
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { hasBinary, requireOrSkip } from '../support/env.js';
import { createNetns, createVethPair, deleteLink, deleteNetns, linkCounter, nsExec, requireRoot, uniqueTag } from '../support/netns.js';
import { ensureGuestImage, type GuestImage } from '../support/guest-image.js';
import { startGuestVm, type GuestVm } from '../support/qemu.js';
import { startRelay, statsToolCounters, type RunningRelay } from '../support/relay.js';
import { startProcess, stopAll, waitFor } from '../support/processes.js';

vi.setConfig({ testTimeout: 300_000, hookTimeout: 300_000 });

const ready = requireRoot() && requireOrSkip(hasBinary('qemu-system-x86_64'), 'the e2e tests need qemu-system-x86_64');
const tag = uniqueTag();
const ns = `tsns${tag}`;
const vf = `tsvf${tag}`;
const peer = `tspr${tag}`;
const HOST_IP = '10.69.0.1';
const GUEST_IP = '10.69.0.2';
const PORT = 5001;
/** `seq 1 COUNT` from the guest: about 6.9 MB, every line different, so a lost or moved byte shows. */
const COUNT = 1_000_000;
const statsEp = `ipc:///tmp/vio4wd-tso-stats-${tag}`;

let image: GuestImage;
let relay: RunningRelay | null = null;
let vm: GuestVm | null = null;

// The host end: an HTTP server for one POST (busybox wget --post-file writes the body in big
// chunks, where busybox nc writes 1 KiB at a time and TCP then has nothing to segment). It reads
// the body, compares it with what \`seq 1 COUNT\` writes, answers and closes.
const SINK = `
import socket
expected = ''.join(f'{i}\\n' for i in range(1, ${COUNT} + 1)).encode()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('${HOST_IP}', ${PORT})); s.listen(1)
print('listening', flush=True)
c, _ = s.accept(); c.settimeout(120)
data = bytearray()
while b'\\r\\n\\r\\n' not in data:
    b = c.recv(65536)
    if not b: break
    data += b
head, _, body = bytes(data).partition(b'\\r\\n\\r\\n')
length = next((int(l.split(b':')[1]) for l in head.split(b'\\r\\n') if l.lower().startswith(b'content-length:')), -1)
body = bytearray(body)
while len(body) < length:
    b = c.recv(1 << 20)
    if not b: break
    body += b
c.sendall(b'HTTP/1.0 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok')
c.close()
print('OK' if bytes(body) == expected else f'BAD {len(body)} of {len(expected)} bytes (announced {length})', flush=True)
`;

const vmToVfCounters = () => statsToolCounters(statsEp, 1).vmToVf;

/** The guest's negotiated virtio-net feature bits (sysfs shows them as a string of 0 and 1). */
async function guestNetFeatures(): Promise<string> {
  const r = await vm!.exec('for d in /sys/bus/virtio/devices/*; do [ "$(cat $d/device)" = 0x0001 ] && cat $d/features; done', 30_000);
  expect(r.status, r.output).toBe(0);
  return r.output.trim();
}

/** Posts `seq 1 COUNT` from the guest to the sink; returns the sink's verdict and the frame counts. */
async function transfer(): Promise<{ verdict: string; relayFrames: number; relayBytes: number; wireFrames: number; ms: number }> {
  const sink = startProcess('ip', ['netns', 'exec', ns, '/usr/bin/python3', '-c', SINK], { label: 'tcp-sink' });
  await waitFor(() => /listening/.test(sink.output()), 15_000, 'the TCP sink to listen');
  const before = vmToVfCounters();
  const wireBefore = linkCounter(peer, 'rx_packets', ns);
  const started = Date.now();
  const send = await vm!.exec(`seq 1 ${COUNT} > /tmp/stream && wget -q -O /dev/null --post-file /tmp/stream http://${HOST_IP}:${PORT}/`, 180_000);
  await sink.exited;
  const ms = Date.now() - started;
  await new Promise((r) => setTimeout(r, 300));
  const after = vmToVfCounters();
  const verdict = sink.output().trim().split('\n').at(-1) ?? '';
  expect(send.status, send.output).toBe(0);
  return {
    verdict,
    relayFrames: after.packets - before.packets,
    relayBytes: after.bytes - before.bytes,
    wireFrames: linkCounter(peer, 'rx_packets', ns) - wireBefore,
    ms,
  };
}

describe.runIf(ready)('transmit offloads (VIRTIOFWD_TSO) with a QEMU guest', () => {
  beforeAll(async () => {
    image = await ensureGuestImage();
    createNetns(ns);
    createVethPair(vf, peer, { nsB: ns, noIpv6: true });
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

  async function boot(tso: boolean): Promise<void> {
    relay = await startRelay({ staticVfs: { [vf]: 1 }, cpus: [0], configLines: [`VIRTIOFWD_ZMQ_STATS_EP=${statsEp}`, ...(tso ? ['VIRTIOFWD_TSO=y'] : [])] });
    vm = await startGuestVm({
      image,
      machine: 'pc',
      memoryBackend: 'memfd',
      vhostUser: { socketPath: relay.socketPath(1), hostOffloads: true },
      ip: `${GUEST_IP}/24`,
      mac: '52:54:00:69:00:02',
      cpu: 1,
    });
    await vm.ready(180_000);
  }

  it('with VIRTIOFWD_TSO=y the guest sends TCP segments larger than the MTU, and the stream arrives intact', async () => {
    await boot(true);
    const features = await guestNetFeatures();
    // Bit 0 CSUM and bit 11 HOST_TSO4 negotiated (sysfs lists bit 0 first).
    expect(features[0], features).toBe('1');
    expect(features[11], features).toBe('1');
    const t = await transfer();
    console.log(`TSO on: ${t.relayFrames} frames through the relay (${Math.round(t.relayBytes / t.relayFrames)} bytes each), ${t.wireFrames} on the veth; seq, write and post in ${t.ms} ms`);
    expect(t.verdict).toBe('OK');
    // The relay forwarded segments far over the MTU. (The veth hands them on whole, as GSO
    // packets its peer's stack takes as they are; a VF's hardware or driver cuts them.)
    expect(t.relayBytes / t.relayFrames).toBeGreaterThan(4 * 1514);
    expect(relay!.logs().filter((l) => Number(l.level) >= 50)).toEqual([]);
  });

  it('without it the guest negotiates no offload and sends MTU-sized frames', async () => {
    await boot(false);
    const features = await guestNetFeatures();
    expect(features[0], features).toBe('0');
    expect(features[11], features).toBe('0');
    const t = await transfer();
    console.log(`TSO off: ${t.relayFrames} frames through the relay (${Math.round(t.relayBytes / t.relayFrames)} bytes each), ${t.wireFrames} on the veth; seq, write and post in ${t.ms} ms`);
    expect(t.verdict).toBe('OK');
    expect(t.relayBytes / t.relayFrames).toBeLessThanOrEqual(1514);
  });
});
