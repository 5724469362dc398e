// Throughput probe for the AF_PACKET rings (not a test): how many frames per second one thread
// moves through sys/packet-ring.ts, and what CPU that costs. Runs from dist/ as root:
//
//   npx tsc -p . && node dist/bench/sys-packet-ring.js [tx|rx] [--seconds 3] [--size 64] [--burst 32] [--no-bypass]
//
// tx: this process (pinned to CPU 0) sends bursts through the TX ring of vethA; delivery is
//     counted on vethB (in its own network namespace) from rx_packets.
// rx: a copy of this program inside the namespace (pinned to CPU 1) floods vethB through its TX
//     ring; this process receives on vethA with receive() and copies every frame once.
import { readOnlineCpus } from '../sys/topology.js';
import { spawn, execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { openPacketRing, closePacketRing, PacketRing } from '../sys/packet-ring.js';
import { setAffinity } from '../sys/affinity.js';
import { PollSet, POLLIN } from '../sys/poll.js';

interface Args {
  mode: string;
  seconds: number;
  size: number;
  burst: number;
  ifname?: string;
  qdiscBypass: boolean;
}

function parseArgs(argv: string[]): Args {
  const args: Args = { mode: 'tx', seconds: 3, size: 64, burst: 32, qdiscBypass: true };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      const v = Number(argv[++i]);
      if (!Number.isFinite(v) || v <= 0) throw new Error(`${a} needs a positive number`);
      return v;
    };
    if (a === '--help' || a === '-h') {
      process.stdout.write(
        'usage: node dist/bench/sys-packet-ring.js [tx|rx] [--seconds 3] [--size 64] [--burst 32] [--no-bypass]\n\n' +
          'How many frames per second one thread moves through the AF_PACKET rings (sys/packet-ring.ts) over a\n' +
          'veth pair, and the CPU it costs. tx sends through the TX ring; rx receives what a peer floods. Root.\n',
      );
      process.exit(0);
    }
    if (a === '--seconds') args.seconds = value();
    else if (a === '--size') args.size = value();
    else if (a === '--burst') args.burst = value();
    else if (a === '--ifname') args.ifname = argv[++i];
    else if (a === '--no-bypass') args.qdiscBypass = false;
    else if (['tx', 'rx', 'inject'].includes(a)) args.mode = a;
    else throw new Error(`unknown argument ${a} (use tx|rx, --seconds, --size, --burst, --no-bypass)`);
  }
  if (args.size < 60 || args.size > 1514) throw new Error(`--size ${args.size} must be within 60..1514`);
  return args;
}

function frameTemplate(size: number): Uint8Array {
  const f = new Uint8Array(size);
  f.set([0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x88, 0xb5]);
  return f;
}

/** Sends bursts for `seconds`; returns frames committed and how often the ring was full. */
function transmit(ring: PacketRing, size: number, burst: number, seconds: number) {
  const template = frameTemplate(size);
  const end = Date.now() + seconds * 1000;
  let frames = 0;
  let full = 0;
  while (Date.now() < end) {
    for (let i = 0; i < burst; i++) {
      const slot = ring.txSlot();
      if (slot === null) {
        full++;
        break;
      }
      slot.bytes.set(template, slot.offset);
      template[14] = frames & 0xff; // vary the payload a little, like real traffic
      ring.txCommit(size);
      frames++;
    }
    ring.txFlush();
  }
  return { frames, full };
}

function cpuSeconds(start: NodeJS.CpuUsage): { user: number; system: number } {
  const d = process.cpuUsage(start);
  return { user: d.user / 1e6, system: d.system / 1e6 };
}

function run(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const cpus = readOnlineCpus();

  if (args.mode === 'inject') {
    // the flooding side of `rx`, started inside the namespace by the parent
    if (cpus.includes(1)) setAffinity([1]);
    const handle = openPacketRing(args.ifname!, { txFrameCount: 1024 });
    const ring = PacketRing.attach(handle);
    const r = transmit(ring, args.size, args.burst, args.seconds);
    console.log(JSON.stringify(r));
    closePacketRing(handle);
    return;
  }

  const tag = `${process.pid % 100000}`;
  const ns = `sprbench${tag}`;
  const ourEnd = `sprbA${tag}`;
  const peerEnd = `sprbB${tag}`;
  run('ip', ['netns', 'add', ns]);
  try {
    run('ip', ['link', 'add', ourEnd, 'type', 'veth', 'peer', 'name', peerEnd]);
    run('ip', ['link', 'set', peerEnd, 'netns', ns]);
    run('ip', ['-n', ns, 'link', 'set', peerEnd, 'up']);
    run('sysctl', ['-qw', `net.ipv6.conf.${ourEnd}.disable_ipv6=1`]);
    run('ip', ['link', 'set', ourEnd, 'up']);
    if (cpus.includes(0)) setAffinity([0]);
    const handle = openPacketRing(ourEnd, { qdiscBypass: args.qdiscBypass });
    const ring = PacketRing.attach(handle);
    const peerRx = () => Number(run('ip', ['netns', 'exec', ns, 'cat', `/sys/class/net/${peerEnd}/statistics/rx_packets`]));
    try {
      if (args.mode === 'tx') {
        const before = peerRx();
        const cpu0 = process.cpuUsage();
        const t0 = process.hrtime.bigint();
        const r = transmit(ring, args.size, args.burst, args.seconds);
        const elapsed = Number(process.hrtime.bigint() - t0) / 1e9;
        const cpu = cpuSeconds(cpu0);
        const delivered = peerRx() - before;
        report('tx', args, elapsed, r.frames, delivered, cpu, { ringFull: r.full, ...pick(ring.counters, ['txFlushBusy', 'txFlushErrors', 'txRejected']) });
      } else {
        const self = fileURLToPath(import.meta.url);
        const injector = spawn('ip', ['netns', 'exec', ns, process.execPath, self, 'inject', '--ifname', peerEnd,
          '--seconds', String(args.seconds), '--size', String(args.size), '--burst', String(args.burst)], { stdio: ['ignore', 'pipe', 'inherit'] });
        let injected = '';
        injector.stdout.on('data', (d: Buffer) => (injected += d.toString()));
        const exited = new Promise<void>((resolve) => injector.on('exit', () => resolve()));
        const copy = new Uint8Array(2048);
        let received = 0;
        const onFrame = (bytes: Uint8Array, offset: number, length: number) => {
          copy.set(bytes.subarray(offset, offset + length));
        };
        const idle = new PollSet([{ fd: ring.rxFd, events: POLLIN }]);
        let running = true;
        void exited.then(() => (running = false));
        const cpu0 = process.cpuUsage();
        const t0 = process.hrtime.bigint();
        while (running) {
          const n = ring.receive(onFrame, args.burst);
          received += n;
          if (n === 0) {
            idle.wait(5); // adaptive: sleep in poll() while the ring is empty
            await new Promise<void>((r) => setImmediate(r));
          }
        }
        for (let n = ring.receive(onFrame, 1 << 20); n > 0; n = ring.receive(onFrame, 1 << 20)) received += n;
        const elapsed = Number(process.hrtime.bigint() - t0) / 1e9;
        const cpu = cpuSeconds(cpu0);
        const sent = injected ? (JSON.parse(injected) as { frames: number }).frames : 0;
        const k = ring.readKernelStatistics();
        report('rx', args, elapsed, sent, received, cpu, { kernelPackets: k.kernelPackets, kernelDrops: k.kernelDrops, rxBlocks: k.rxBlocks });
      }
    } finally {
      closePacketRing(handle);
    }
  } finally {
    try {
      run('ip', ['link', 'delete', ourEnd]);
    } catch {
      /* went with the namespace */
    }
    run('ip', ['netns', 'delete', ns]);
  }
}

function pick<T extends object>(o: T, keys: (keyof T)[]): Partial<T> {
  const out: Partial<T> = {};
  for (const k of keys) out[k] = o[k];
  return out;
}

function report(mode: string, args: Args, elapsed: number, offered: number, delivered: number, cpu: { user: number; system: number }, extra: object): void {
  const mpps = delivered / elapsed / 1e6;
  console.log(JSON.stringify({
    mode,
    frameBytes: args.size,
    burst: args.burst,
    qdiscBypass: args.qdiscBypass,
    seconds: Number(elapsed.toFixed(3)),
    offered,
    delivered,
    mpps: Number(mpps.toFixed(3)),
    cpuUser: Number(cpu.user.toFixed(2)),
    cpuSystem: Number(cpu.system.toFixed(2)),
    cpuPercent: Number(((100 * (cpu.user + cpu.system)) / elapsed).toFixed(1)),
    nsPerFrame: delivered > 0 ? Math.round(((cpu.user + cpu.system) * 1e9) / delivered) : null,
    ...extra,
  }));
}

main().catch((err) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
