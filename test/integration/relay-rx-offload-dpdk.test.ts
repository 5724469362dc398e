// Receive offloads with DPDK's virtio-user as the guest: a peer behind the VF sends GSO
// super-frames (the kernel builds them from a packet socket with PACKET_VNET_HDR), and testpmd,
// in rxonly mode with verbose output, shows each frame it receives with its length and offload
// flags. With VIRTIOFWD_TSO=y and testpmd asking for LRO and receive checksums (so virtio-user
// negotiates GUEST_TSO4/6 and GUEST_CSUM), each super-frame arrives whole, flagged as LRO with its
// segment size. When virtio-user asks for none, the same super-frame arrives as TCP segments of
// the MSS (their checksums are checked in relay-rx-offload.test.ts).
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createNetns, createVethPair, deleteLink, deleteNetns, requireBinary, requireRoot, uniqueTag } from '../support/netns.js';
import { startTestpmd, virtioUserVdev, type Testpmd } from '../support/testpmd.js';
import { startRelay, statsToolCounters, type RunningRelay } from '../support/relay.js';
import { stopAll, waitFor } from '../support/processes.js';
import { sendSuperFrames, superFrame } from '../support/tcp-frames.js';

vi.setConfig({ testTimeout: 90_000 });

const ready = requireRoot() && requireBinary('dpdk-testpmd') && requireBinary('python3');
const tag = uniqueTag();
const ns = `rdns${tag}`;
const vf = `rdv${tag}`;
const peer = `rdp${tag}`;
const MSS = 1448;
const PAYLOAD = 20_000;
const statsEp = `ipc:///tmp/vio4wd-rx-offload-dpdk-${tag}`;

let relay: RunningRelay | null = null;
let testpmd: Testpmd | null = null;
let dir: string;

interface Seen {
  length: number;
  flags: string;
}

/** The frames testpmd's verbose rxonly output reports: length and offload flags of each. */
function framesSeen(output: string): Seen[] {
  const seen: Seen[] = [];
  const re = /length=(\d+) [^\n]*\n\s*ol_flags: ([^\n]*)/g;
  for (let m = re.exec(output); m; m = re.exec(output)) seen.push({ length: Number(m[1]), flags: m[2] });
  return seen;
}

/** Sends one 20,000-byte super-frame through a relay (with or without VIRTIOFWD_TSO) to testpmd; returns what testpmd saw. */
async function run(tso: boolean, rxOffloads: boolean, expected: number): Promise<Seen[]> {
  relay = await startRelay({ staticVfs: { [vf]: 1 }, configLines: [`VIRTIOFWD_ZMQ_STATS_EP=${statsEp}`, ...(tso ? ['VIRTIOFWD_TSO=y'] : [])] });
  const commands = join(dir, `commands-${tso}`);
  writeFileSync(commands, 'set verbose 1\nstart\n');
  testpmd = startTestpmd({
    vdevs: [virtioUserVdev({ path: relay.socketPath(1), queueSize: 256 })],
    forwardMode: 'rxonly',
    cpu: 1,
    autoStart: false,
    extraApp: [`--cmdline-file=${commands}`, ...(rxOffloads ? ['--rx-offloads=0x201c'] : [])],
  });
  // The relay's RX side is ready once the guest's receive ring runs (state READY).
  await waitFor(() => String((statsToolCounters(statsEp, 1).vfToVm as Record<string, unknown>).state) === 'READY' && /rxonly packet forwarding/i.test(testpmd!.output()), 30_000, 'testpmd to forward');
  sendSuperFrames(ns, peer, [{ frame: superFrame({ payload: Uint8Array.from({ length: PAYLOAD }, (_, i) => i & 0xff) }), mss: MSS }]);
  await waitFor(() => framesSeen(testpmd!.output()).length >= expected, 15_000, `${expected} frames to reach testpmd`)
    .catch((err) => {
      throw new Error(`${(err as Error).message}; relay counters ${JSON.stringify(statsToolCounters(statsEp, 1).vfToVm)}; testpmd:\n${testpmd!.output().slice(-3000)}`);
    });
  await new Promise((r) => setTimeout(r, 500));
  return framesSeen(testpmd!.output());
}

describe.skipIf(!ready)('receive offloads with DPDK virtio-user', () => {
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'vio4wd-rx-dpdk-'));
    createNetns(ns);
    createVethPair(vf, peer, { nsB: ns, noIpv6: true });
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
    rmSync(dir, { recursive: true, force: true });
  });

  it('with VIRTIOFWD_TSO=y and LRO asked for, a super-frame arrives whole, flagged LRO with its checksum left open', async () => {
    const seen = await run(true, true, 1);
    expect(seen.map((f) => f.length)).toEqual([14 + 20 + 20 + PAYLOAD]);
    // virtio-user negotiated GUEST_TSO4 and GUEST_CSUM: the relay passed the kernel's header on.
    expect(seen[0].flags).toMatch(/RTE_MBUF_F_RX_LRO/);
    expect(seen[0].flags).toMatch(/RTE_MBUF_F_RX_L4_CKSUM_NONE/);
    const c = statsToolCounters(statsEp, 1).vfToVm;
    expect([c.rxPackets, c.packets, c.rxSegmented]).toEqual([1, 1, 0]);
  });

  it('when virtio-user asks for no receive offload, the same super-frame arrives as TCP segments of the MSS', async () => {
    const segments = Math.ceil(PAYLOAD / MSS);
    const seen = await run(true, false, segments);
    const last = PAYLOAD - (segments - 1) * MSS;
    expect(seen.map((f) => f.length)).toEqual([...Array(segments - 1).fill(54 + MSS), 54 + last]);
    for (const f of seen) expect(f.flags).not.toMatch(/LRO/);
    const c = statsToolCounters(statsEp, 1).vfToVm;
    expect([c.rxPackets, c.packets, c.rxSegmented]).toEqual([1, segments, 1]);
  });
});
