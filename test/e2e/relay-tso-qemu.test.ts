// Checksum and segmentation offloads end to end (VIRTIOFWD_TSO=y), with a QEMU guest and a host
// in a namespace behind a veth standing in for the VF.
// - Transmit: the guest's virtio-net negotiates CSUM and HOST_TSO4 and posts a TCP stream to the
//   host. The relay hands each frame's virtio-net header to the VF's kernel socket
//   (PACKET_VNET_HDR): the guest's large segments cross the relay whole, and the stream arrives.
// - Receive: the guest downloads a stream from the host. The host's TSO makes 64 KiB super-frames
//   on the veth; the relay reads them with the kernel's header and, the guest having negotiated
//   GUEST_CSUM and GUEST_TSO4, passes them on whole.
// Without the setting the guest negotiates no offload: it sends MTU-sized frames, and the relay
// cuts the host's super-frames into TCP segments, here for a guest without MRG_RXBUF, whose
// 1.5 KB receive buffers cannot take anything larger. Both streams are compared byte for byte.
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { hasBinary, requireOrSkip } from '../support/env.js';
import { createNetns, createVethPair, deleteLink, deleteNetns, linkCounter, nsExec, requireRoot, uniqueTag } from '../support/netns.js';
import { ensureGuestImage, type GuestImage } from '../support/guest-image.js';
import { startGuestVm, type GuestVm } from '../support/qemu.js';
import { startRelay, statsToolCounters, type RunningRelay } from '../support/relay.js';
import { startProcess, stopAll, waitFor } from '../support/processes.js';
import { createHash } from 'node:crypto';

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

// The host end: an HTTP server for one request. `sink` takes a POST (busybox wget --post-file
// writes the body in big chunks, where busybox nc writes 1 KiB at a time and TCP then has nothing
// to segment), compares the body with what `seq 1 COUNT` writes and prints OK or BAD. `source`
// answers a GET with `seq 1 COUNT` in one large write, so the host's TCP has full 64 KiB
// super-frames to hand to the veth.
const HTTP_PEER = `
import socket, sys
stream = ''.join(f'{i}\\n' for i in range(1, ${COUNT} + 1)).encode()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('${HOST_IP}', ${PORT})); s.listen(1)
print('listening', flush=True)
c, _ = s.accept(); c.settimeout(120)
data = bytearray()
while b'\\r\\n\\r\\n' not in data:
    b = c.recv(65536)
    if not b: break
    data += b
if sys.argv[1] == 'source':
    c.sendall(b'HTTP/1.0 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n' % len(stream) + stream)
    c.close()
    print('sent', len(stream), flush=True)
    sys.exit(0)
head, _, body = bytes(data).partition(b'\\r\\n\\r\\n')
length = next((int(l.split(b':')[1]) for l in head.split(b'\\r\\n') if l.lower().startswith(b'content-length:')), -1)
body = bytearray(body)
while len(body) < length:
    b = c.recv(1 << 20)
    if not b: break
    body += b
c.sendall(b'HTTP/1.0 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok')
c.close()
print('OK' if bytes(body) == stream else f'BAD {len(body)} of {len(stream)} bytes (announced {length})', flush=True)
`;
const httpPeer = (mode: 'sink' | 'source', label: string) => startProcess('ip', ['netns', 'exec', ns, '/usr/bin/python3', '-c', HTTP_PEER, mode], { label });
const expectedMd5 = createHash('md5').update(Array.from({ length: COUNT }, (_, i) => `${i + 1}\n`).join('')).digest('hex');

const vmToVfCounters = () => statsToolCounters(statsEp, 1).vmToVf;
const vfToVmCounters = () => statsToolCounters(statsEp, 1).vfToVm;

/** The guest's negotiated virtio-net feature bits (sysfs shows them as a string of 0 and 1). */
async function guestNetFeatures(): Promise<string> {
  const r = await vm!.exec('for d in /sys/bus/virtio/devices/*; do [ "$(cat $d/device)" = 0x0001 ] && cat $d/features; done', 30_000);
  expect(r.status, r.output).toBe(0);
  return r.output.trim();
}

/** Posts `seq 1 COUNT` from the guest to the sink; returns the sink's verdict and the frame counts. */
async function transfer(): Promise<{ verdict: string; relayFrames: number; relayBytes: number; wireFrames: number; ms: number }> {
  const sink = httpPeer('sink', 'tcp-sink');
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

/** The guest fetches `seq 1 COUNT` from the host; returns its md5 as the guest computed it and the relay's counts. */
async function download(): Promise<{ md5: string; relayFrames: number; relayBytes: number; segmented: number; received: number; ms: number }> {
  const source = httpPeer('source', 'tcp-source');
  await waitFor(() => /listening/.test(source.output()), 15_000, 'the TCP source to listen');
  const before = vfToVmCounters();
  const started = Date.now();
  const r = await vm!.exec(`wget -q -O /tmp/got http://${HOST_IP}:${PORT}/ && md5sum /tmp/got`, 180_000);
  const ms = Date.now() - started;
  await source.exited;
  const after = vfToVmCounters();
  expect(r.status, r.output).toBe(0);
  return {
    md5: /\b([0-9a-f]{32})\b/.exec(r.output)?.[1] ?? r.output,
    relayFrames: after.packets - before.packets,
    relayBytes: after.bytes - before.bytes,
    segmented: after.rxSegmented - before.rxSegmented,
    received: after.rxPackets - before.rxPackets,
    ms,
  };
}

describe.runIf(ready)('checksum and segmentation offloads (VIRTIOFWD_TSO) with a QEMU guest', () => {
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

  async function boot(tso: boolean, mergeableRxBuffers?: boolean): Promise<void> {
    relay = await startRelay({ staticVfs: { [vf]: 1 }, cpus: [0], configLines: [`VIRTIOFWD_ZMQ_STATS_EP=${statsEp}`, ...(tso ? ['VIRTIOFWD_TSO=y'] : [])] });
    vm = await startGuestVm({
      image,
      machine: 'pc',
      memoryBackend: 'memfd',
      vhostUser: { socketPath: relay.socketPath(1), offloads: true, mergeableRxBuffers },
      ip: `${GUEST_IP}/24`,
      mac: '52:54:00:69:00:02',
      cpu: 1,
    });
    await vm.ready(180_000);
  }

  it('with VIRTIOFWD_TSO=y TCP segments larger than the MTU cross the relay both ways, and both streams arrive intact', async () => {
    await boot(true);
    const features = await guestNetFeatures();
    // Bits 0 CSUM, 1 GUEST_CSUM, 7 GUEST_TSO4 and 11 HOST_TSO4 negotiated (sysfs lists bit 0 first).
    expect([features[0], features[1], features[7], features[11]], features).toEqual(['1', '1', '1', '1']);
    const t = await transfer();
    console.log(`TSO on: ${t.relayFrames} frames through the relay (${Math.round(t.relayBytes / t.relayFrames)} bytes each), ${t.wireFrames} on the veth; seq, write and post in ${t.ms} ms`);
    expect(t.verdict).toBe('OK');
    // The relay forwarded segments far over the MTU. (The veth hands them on whole, as GSO
    // packets its peer's stack takes as they are; a VF's hardware or driver cuts them.)
    expect(t.relayBytes / t.relayFrames).toBeGreaterThan(4 * 1514);

    const d = await download();
    console.log(`GUEST_TSO4 on: ${d.relayFrames} frames into the guest (${Math.round(d.relayBytes / d.relayFrames)} bytes each), ${d.segmented} segmented by the relay; download and md5sum in ${d.ms} ms`);
    expect(d.md5).toBe(expectedMd5);
    // The host's super-frames reached the guest whole.
    expect(d.relayBytes / d.relayFrames).toBeGreaterThan(4 * 1514);
    expect(d.segmented).toBe(0);
    expect(relay!.logs().filter((l) => Number(l.level) >= 50)).toEqual([]);
  });

  it('without it the guest negotiates no offload, sends MTU-sized frames, and gets the host super-frames as segments in its small buffers', async () => {
    await boot(false, false);
    const features = await guestNetFeatures();
    // No CSUM, GUEST_CSUM, GUEST_TSO4, MRG_RXBUF (15) or HOST_TSO4.
    expect([features[0], features[1], features[7], features[11], features[15]], features).toEqual(['0', '0', '0', '0', '0']);
    const t = await transfer();
    console.log(`TSO off: ${t.relayFrames} frames through the relay (${Math.round(t.relayBytes / t.relayFrames)} bytes each), ${t.wireFrames} on the veth; seq, write and post in ${t.ms} ms`);
    expect(t.verdict).toBe('OK');
    expect(t.relayBytes / t.relayFrames).toBeLessThanOrEqual(1514);

    const d = await download();
    console.log(`no offloads: ${d.relayFrames} frames into the guest (${Math.round(d.relayBytes / d.relayFrames)} bytes each), cut from ${d.segmented} super-frames of the ${d.received} the VF received; download and md5sum in ${d.ms} ms`);
    expect(d.md5).toBe(expectedMd5);
    expect(d.segmented).toBeGreaterThan(0);
    expect(d.relayBytes / d.relayFrames).toBeLessThanOrEqual(1514);
  });
});
