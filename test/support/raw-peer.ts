// A raw-socket peer on the far end of a veth pair, run inside its network namespace: it sends
// frames given as hex, or captures the frames of one ethertype. Tests of the VF ports (AF_PACKET
// and AF_XDP) use it as the traffic on the wire, with nothing of the project's code in it.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { startProcess } from './processes.js';

const koffiEntry = fileURLToPath(new URL('../../node_modules/koffi/index.js', import.meta.url));

// `send <ifname>` sends the hex frames read from stdin as JSON; `stream <ifname>` takes them from
// stdin's first line and sends them all for each further line; `capture <ifname> <ethertype>
// <count> <timeoutMs>` prints every received frame of that ethertype.
const PEER = `
import { readFileSync } from 'node:fs';
const koffi = (await import(process.env.KOFFI_ENTRY)).default;
const libc = koffi.load('libc.so.6');
const socket = libc.func('int socket(int, int, int)');
const bind = libc.func('int bind(int, void *, uint32_t)');
const send = libc.func('intptr_t send(int, void *, size_t, int)');
const recv = libc.func('intptr_t recv(int, void *, size_t, int)');
const poll = libc.func('int poll(void *, unsigned long, int)');
const nametoindex = libc.func('unsigned int if_nametoindex(const char *)');
const [mode, ifname, ...rest] = process.argv.slice(1);
const fd = socket(17, 3, 0x0300);
if (fd < 0) throw new Error('socket failed: errno ' + koffi.errno());
const sll = new Uint8Array(20);
const v = new DataView(sll.buffer);
v.setUint16(0, 17, true); v.setUint16(2, 0x0300, true); v.setInt32(4, nametoindex(ifname), true);
if (bind(fd, sll, 20) < 0) throw new Error('bind failed: errno ' + koffi.errno());
const setsockopt = libc.func('int setsockopt(int, int, int, void *, uint32_t)');
// PACKET_QDISC_BYPASS: the frame goes out on the queue of the sending CPU (cpu % queues)
if (process.env.PEER_QDISC_BYPASS === '1' && setsockopt(fd, 263, 20, new Int32Array([1]), 4) < 0) throw new Error('PACKET_QDISC_BYPASS failed');
if (mode === 'send') {
  const frames = JSON.parse(readFileSync(0, 'utf8'));
  let sent = 0;
  for (const hex of frames) { const b = Buffer.from(hex, 'hex'); if (send(fd, b, b.length, 0) === b.length) sent++; }
  console.log('sent ' + sent);
} else if (mode === 'stream') {
  // The first line of stdin is the frames (JSON, hex); each further line sends them all again.
  let frames = null;
  let round = 0;
  let pending = '';
  process.stdin.on('data', (chunk) => {
    pending += chunk.toString('utf8');
    for (let nl = pending.indexOf('\\n'); nl >= 0; nl = pending.indexOf('\\n')) {
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      if (frames === null) { frames = JSON.parse(line).map((h) => Buffer.from(h, 'hex')); console.log('ready'); continue; }
      let sent = 0;
      for (const b of frames) if (send(fd, b, b.length, 0) === b.length) sent++;
      console.log('sent ' + round++ + ' ' + sent);
    }
  });
} else {
  const [ethertype, count, timeoutMs] = rest.map(Number);
  // SO_RCVBUFFORCE, 16 MiB: under the whole suite this process can be off the CPU for a while, and
  // the default buffer (about a hundred frames of a few hundred bytes) would drop what arrives then.
  if (setsockopt(fd, 1, 33, new Int32Array([16 << 20]), 4) < 0) throw new Error('SO_RCVBUFFORCE failed: errno ' + koffi.errno());
  console.log('ready');
  const buf = Buffer.alloc(65536);
  const pfd = new Int32Array([fd, 1]);
  const deadline = Date.now() + timeoutMs;
  let got = 0;
  while (got < count && Date.now() < deadline) {
    if (poll(pfd, 1, 100) <= 0) continue;
    const n = Number(recv(fd, buf, buf.length, 0x40));
    if (n >= 14 && buf.readUInt16BE(12) === ethertype) { got++; console.log('frame ' + buf.subarray(0, n).toString('hex')); }
  }
  // PACKET_STATISTICS: frames the kernel dropped because this socket's buffer was full.
  const stats = new Uint32Array(2);
  const getsockopt = libc.func('int getsockopt(int, int, int, void *, _Inout_ uint32_t *)');
  const drops = getsockopt(fd, 263, 6, stats, [8]) === 0 ? stats[1] : -1;
  console.log('done ' + got + ' (socket drops ' + drops + ')');
}
`;

export const hex = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');

/** The ethertype of the test frames: IEEE local experimental, which nothing else on a link uses. */
export const TEST_ETHERTYPE = 0x88b5;

/** A broadcast frame of `length` bytes carrying `seq` and a pattern derived from it. */
export function testFrame(seq: number, length: number, ethertype = TEST_ETHERTYPE): Uint8Array {
  const f = new Uint8Array(length);
  f.fill(0xff, 0, 6);
  f.set([0x02, 0x00, 0x00, 0x00, 0x00, 0x0b], 6);
  f[12] = ethertype >> 8;
  f[13] = ethertype & 0xff;
  f[14] = seq >> 8;
  f[15] = seq & 0xff;
  for (let i = 16; i < length; i++) f[i] = (seq * 7 + i) & 0xff;
  return f;
}

/**
 * Sends `frames` from `ifname` in namespace `ns`; returns how many the kernel took. `cpu` pins the
 * sender and bypasses the qdisc, so the frames leave on queue `cpu % queues`: on a multi-queue
 * veth, the queue they arrive on at the other end.
 */
export function peerSend(ns: string, ifname: string, frames: Uint8Array[], opts: { cpu?: number } = {}): number {
  const node = [process.execPath, '--input-type=module', '-e', PEER, '--', 'send', ifname];
  const command = opts.cpu === undefined ? node : ['taskset', '-c', String(opts.cpu), ...node];
  const r = spawnSync('ip', ['netns', 'exec', ns, ...command], {
    input: JSON.stringify(frames.map(hex)),
    env: { ...process.env, KOFFI_ENTRY: koffiEntry, PEER_QDISC_BYPASS: opts.cpu === undefined ? '0' : '1' },
    encoding: 'utf8',
    timeout: 20_000,
  });
  if (r.status !== 0) throw new Error(`peer send failed: ${r.stderr}`);
  const m = /sent (\d+)/.exec(r.stdout);
  return m ? Number(m[1]) : 0;
}

/** Captures up to `count` frames of `ethertype` on `ifname` in `ns` for 15 s; wait for /ready/ before sending. */
export function startCapture(ns: string, ifname: string, ethertype: number, count: number) {
  return startProcess('ip', ['netns', 'exec', ns, process.execPath, '--input-type=module', '-e', PEER, '--', 'capture', ifname, String(ethertype), String(count), '15000'], {
    env: { ...process.env, KOFFI_ENTRY: koffiEntry },
    label: 'peer capture',
  });
}

/** A sender in `ns` that sends `frames` from `ifname` each time `send()` is called. */
export async function startStream(ns: string, ifname: string, frames: Uint8Array[]) {
  const p = startProcess('ip', ['netns', 'exec', ns, process.execPath, '--input-type=module', '-e', PEER, '--', 'stream', ifname], {
    env: { ...process.env, KOFFI_ENTRY: koffiEntry },
    stdio: ['pipe', 'pipe', 'pipe'],
    label: 'peer stream',
  });
  p.proc.stdin!.write(`${JSON.stringify(frames.map(hex))}\n`);
  await p.waitForOutput(/ready/);
  let round = 0;
  return {
    process: p,
    /** Sends the frames once more; resolves with how many the kernel took. */
    async send(): Promise<number> {
      const r = round++;
      p.proc.stdin!.write('go\n');
      const m = await p.waitForOutput(new RegExp(`(^|\\n)sent ${r} (\\d+)`), 10_000);
      return Number(m[2]);
    },
  };
}
