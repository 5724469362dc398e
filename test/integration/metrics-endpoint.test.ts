// The Prometheus endpoint of the real daemon: a relay whose VF is a veth (its peer in a network
// namespace), no VM. The endpoint is scraped with node's HTTP client and a raw TCP socket, the
// exposition text is parsed, and frames sent into the VF from the namespace must show in the
// relay's vf_to_vm counters (received from the VF, and dropped because no VM is connected), and a
// worker thread ended by the test hook must show in the worker's restart counter.
// Bind failures and bad values of VIRTIOFWD_METRICS_LISTEN must stop the start with status 78
// and a line naming the variable. Needs root and `npx tsc -p .` first.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request, type IncomingHttpHeaders } from 'node:http';
import { connect, createServer, type AddressInfo, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createNetns, createVethPair, deleteLink, deleteNetns, requireBinary, requireRoot, uniqueTag } from '../support/netns.js';
import { startProcess, stopAll, waitFor } from '../support/processes.js';
import { relayBin, startRelay, type RunningRelay } from '../support/relay.js';

vi.setConfig({ testTimeout: 60_000, hookTimeout: 60_000 });

const ready = requireRoot() && requireBinary('ip') && requireBinary('python3');
const tag = uniqueTag();
const ns = `mens${tag}`;
const vf = `mev${tag}`;
const peer = `mep${tag}`;
const RELAY = 3;

let relay: RunningRelay;
let base: string;
let scratch: string;

interface HttpReply {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

function http(method: string, path: string, headers: Record<string, string> = {}): Promise<HttpReply> {
  return new Promise((resolve, reject) => {
    const req = request(`${base}${path}`, { method, headers, agent: false, timeout: 10_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${path} timed out`)));
    req.on('error', reject);
    req.end();
  });
}

/** Writes `bytes` on a plain TCP connection to the endpoint and returns everything it answers. */
function raw(bytes: Buffer | string): Promise<string> {
  const url = new URL(base);
  return new Promise((resolve, reject) => {
    const socket = connect({ host: url.hostname, port: Number(url.port) }, () => socket.write(bytes));
    let text = '';
    socket.setEncoding('latin1');
    socket.setTimeout(10_000, () => socket.destroy(new Error('no answer within 10 s')));
    socket.on('data', (chunk: string) => (text += chunk));
    socket.on('end', () => resolve(text));
    socket.on('close', () => resolve(text));
    socket.on('error', reject);
  });
}

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** The samples of an exposition (Prometheus text or OpenMetrics); throws on a line it cannot read. */
function parseExposition(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`not an exposition line: ${JSON.stringify(line)}`);
    const labels: Record<string, string> = {};
    const labelText = m[2] ?? '';
    const pair = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)/y;
    let consumed = 0;
    while (consumed < labelText.length) {
      pair.lastIndex = consumed;
      const l = pair.exec(labelText);
      if (!l) throw new Error(`bad labels in ${JSON.stringify(line)}`);
      labels[l[1]] = l[2].replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
      consumed = pair.lastIndex;
    }
    samples.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return samples;
}

/** The one sample named `name` whose labels are exactly `labels`. */
function only(samples: Sample[], name: string, labels: Record<string, string>): Sample {
  const found = samples.filter((s) => s.name === name && JSON.stringify(Object.entries(s.labels).sort()) === JSON.stringify(Object.entries(labels).sort()));
  expect(found, `${name}${JSON.stringify(labels)}`).toHaveLength(1);
  return found[0];
}

async function scrape(accept?: string): Promise<{ reply: HttpReply; samples: Sample[] }> {
  const reply = await http('GET', '/metrics', accept ? { Accept: accept } : {});
  expect(reply.status, reply.body).toBe(200);
  return { reply, samples: parseExposition(reply.body) };
}

const rl = String(RELAY);
const counterOf = (samples: Sample[], name: string, direction: string, extra: Record<string, string> = {}) =>
  only(samples, name, { relay: rl, direction, ...extra }).value;

/** Sends `count` broadcast frames of an experimental ethertype from the namespace into the VF. */
function sendFrames(count: number): void {
  const script = [
    'import socket,sys',
    's=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)',
    's.bind((sys.argv[1],0))',
    "f=bytes.fromhex('ffffffffffff020000000001'+'88b5')+bytes(50)",
    'for i in range(int(sys.argv[2])): s.send(f)',
  ].join('\n');
  const r = spawnSync('ip', ['netns', 'exec', ns, 'python3', '-c', script, peer, String(count)], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`sending frames on ${peer} failed: ${r.stderr}`);
}

/** A daemon that must refuse to start: its exit status and output. */
async function failingStart(configLines: string[], args: string[]): Promise<{ status: number | string; output: string; dir: string }> {
  const dir = mkdtempSync(join(scratch, 'fail-'));
  const config = join(dir, 'virtioforwarder');
  writeFileSync(
    config,
    [
      'VIRTIOFWD_CPU_MASK=0',
      `VIRTIOFWD_PID_DIR=${dir}`,
      `VIRTIOFWD_SOCKET_DIR=${join(dir, 'sockets')}`,
      'VIRTIOFWD_DYNAMIC_SOCKETS=true',
      'VIO4WD_CORE_SCHED_ENABLE=false',
      'VIRTIOFWD_ZMQ_PORT_CONTROL_EP=off',
      'VIRTIOFWD_ZMQ_STATS_EP=off',
      'VIRTIOFWD_ZMQ_CONFIG_EP=off',
      'VIRTIOFWD_ZMQ_CORE_SCHED_EP=off',
      ...configLines,
      '',
    ].join('\n'),
  );
  const proc = startProcess('node', [relayBin, '--config', config, ...args], { label: 'failing relay' });
  const timer = setTimeout(() => void proc.stop(), 20_000);
  const status = await proc.exited;
  clearTimeout(timer);
  return { status, output: proc.output(), dir };
}

describe.skipIf(!ready)('the Prometheus endpoint of the running daemon', () => {
  beforeAll(async () => {
    scratch = mkdtempSync(join(tmpdir(), `vio4wd-metrics-${process.pid}-`));
    createNetns(ns);
    createVethPair(vf, peer, { nsB: ns, noIpv6: true });
    relay = await startRelay({
      cpus: [0],
      staticVfs: { [vf]: RELAY },
      // Port 0: the kernel picks a free port, and the daemon logs the URL it got.
      configLines: ['VIRTIOFWD_METRICS_LISTEN=127.0.0.1:0'],
      // SIGUSR2 ends the worker thread, for the restart counter.
      env: { VIO4WD_TEST_HOOKS: '1' },
    });
    const line = relay.logs().find((l) => typeof l.msg === 'string' && l.msg.startsWith('Prometheus metrics at '));
    expect(line, 'the log line with the metrics URL').toBeDefined();
    const url = String(line!.url);
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    expect(url).not.toMatch(/:0\/metrics$/);
    expect(line!.msg).toBe(`Prometheus metrics at ${url} (VIRTIOFWD_METRICS_LISTEN)`);
    base = url.replace(/\/metrics$/, '');
    const readyLine = relay.logs().find((l) => l.msg === 'virtio-forwarder ready');
    expect(readyLine?.metrics).toBe(url);
  });

  afterAll(async () => {
    await relay?.stop();
    await stopAll();
    deleteLink(vf);
    deleteNetns(ns);
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  });

  it('serves every counter of the relay per direction, its state and the workers, in the Prometheus text format', async () => {
    const { reply, samples } = await scrape();
    expect(reply.headers['content-type']).toBe('text/plain; version=0.0.4; charset=utf-8');
    expect(reply.body).toMatch(/^# TYPE vio4wd_relay_received_packets_total counter$/m);
    expect(reply.body).toMatch(/^# HELP vio4wd_relay_received_packets_total \S/m);
    expect(reply.body).toMatch(/^# TYPE vio4wd_relay_direction_state gauge$/m);
    expect(reply.body).toMatch(/^# TYPE vio4wd_worker_restarts_total counter$/m);
    // Every metric of this daemon has the prefix.
    expect(samples.filter((s) => !s.name.startsWith('vio4wd_'))).toEqual([]);

    for (const direction of ['vf_to_vm', 'vm_to_vf']) {
      for (const name of [
        'vio4wd_relay_received_packets_total',
        'vio4wd_relay_received_bytes_total',
        'vio4wd_relay_sent_packets_total',
        'vio4wd_relay_sent_bytes_total',
        'vio4wd_relay_bad_chains_total',
        'vio4wd_relay_rings_stopped_total',
        'vio4wd_relay_busy_seconds_total',
        'vio4wd_relay_poll_seconds_total',
      ]) {
        expect(counterOf(samples, name, direction), `${name} ${direction}`).toBeGreaterThanOrEqual(0);
      }
      for (const cause of ['queue_full', 'not_connected', 'bad_frame']) {
        expect(counterOf(samples, 'vio4wd_relay_dropped_packets_total', direction, { cause })).toBeGreaterThanOrEqual(0);
      }
    }
    // The VF side is polled by the only worker, CPU 0.
    expect(counterOf(samples, 'vio4wd_relay_direction_cpu', 'vf_to_vm')).toBe(0);
    expect(counterOf(samples, 'vio4wd_relay_direction_cpu', 'vm_to_vf')).toBeGreaterThanOrEqual(-1);
    // The kernel's VF ring drops exist for the direction that reads the VF ring only.
    expect(counterOf(samples, 'vio4wd_relay_dropped_packets_total', 'vf_to_vm', { cause: 'vf_ring_full' })).toBe(0);
    expect(samples.some((s) => s.labels.direction === 'vm_to_vf' && s.labels.cause === 'vf_ring_full')).toBe(false);
    // So does the part of them that fell while the guest had no receive buffers.
    expect(counterOf(samples, 'vio4wd_relay_vf_ring_full_guest_no_buffers_packets_total', 'vf_to_vm')).toBe(0);
    expect(samples.some((s) => s.name === 'vio4wd_relay_vf_ring_full_guest_no_buffers_packets_total' && s.labels.direction === 'vm_to_vf')).toBe(false);
    // No other direction label value.
    expect(new Set(samples.filter((s) => s.labels.direction).map((s) => s.labels.direction))).toEqual(new Set(['vf_to_vm', 'vm_to_vf']));

    // The relay holds the VF and has no VM: vf_to_vm is ADDED, vm_to_vf UNINIT.
    only(samples, 'vio4wd_relay_info', { relay: rl, device: vf, device_kind: 'vf', socket: relay.socketPath(RELAY) });
    expect(only(samples, 'vio4wd_relay_info', { relay: rl, device: vf, device_kind: 'vf', socket: relay.socketPath(RELAY) }).value).toBe(1);
    expect(only(samples, 'vio4wd_relay_active', { relay: rl }).value).toBe(0);
    expect(only(samples, 'vio4wd_relay_vm_connected', { relay: rl }).value).toBe(0);
    expect(counterOf(samples, 'vio4wd_relay_direction_active', 'vf_to_vm')).toBe(1);
    expect(counterOf(samples, 'vio4wd_relay_direction_active', 'vm_to_vf')).toBe(0);
    const state = (direction: string, s: string) => counterOf(samples, 'vio4wd_relay_direction_state', direction, { state: s });
    expect([state('vf_to_vm', 'UNINIT'), state('vf_to_vm', 'ADDED'), state('vf_to_vm', 'READY')]).toEqual([0, 1, 0]);
    expect([state('vm_to_vf', 'UNINIT'), state('vm_to_vf', 'ADDED'), state('vm_to_vf', 'READY')]).toEqual([1, 0, 0]);

    // Relays with only a socket are listed too, with no device.
    expect(only(samples, 'vio4wd_relay_info', { relay: '0', device: '', device_kind: '', socket: relay.socketPath(0) }).value).toBe(1);
    expect(new Set(samples.filter((s) => s.name === 'vio4wd_relay_info').map((s) => s.labels.relay)).size).toBe(64);

    // One worker, on CPU 0, never restarted.
    expect(only(samples, 'vio4wd_worker_restarts_total', { cpu: '0' }).value).toBe(0);
    expect(samples.filter((s) => s.name === 'vio4wd_worker_restarts_total')).toHaveLength(1);
    expect(only(samples, 'vio4wd_worker_poll_seconds_total', { cpu: '0' }).value).toBeGreaterThan(0);
    // A worker thread's heap holds at least its code's objects: some hundreds of KiB, never GiB.
    expect(only(samples, 'vio4wd_worker_heap_bytes', { cpu: '0' }).value).toBeGreaterThan(100_000);
    expect(only(samples, 'vio4wd_worker_heap_bytes', { cpu: '0' }).value).toBeLessThan(1e9);
    // The daemon's RSS holds its main heap, which holds what it uses.
    const memory = (kind: string) => only(samples, 'vio4wd_daemon_memory_bytes', { kind }).value;
    expect(memory('heap_used')).toBeGreaterThan(1e6);
    expect(memory('heap_used')).toBeLessThanOrEqual(memory('heap_total'));
    expect(memory('heap_total')).toBeLessThan(memory('rss'));
  });

  it('counts frames sent into the VF as received from it and, with no VM, dropped as not connected', async () => {
    const before = (await scrape()).samples;
    const received0 = counterOf(before, 'vio4wd_relay_received_packets_total', 'vf_to_vm');
    const bytes0 = counterOf(before, 'vio4wd_relay_received_bytes_total', 'vf_to_vm');
    const dropped0 = counterOf(before, 'vio4wd_relay_dropped_packets_total', 'vf_to_vm', { cause: 'not_connected' });
    const SENT = 300;
    sendFrames(SENT);
    const after = (await waitFor(
      async (): Promise<Sample[] | false> => {
        const { samples } = await scrape();
        return counterOf(samples, 'vio4wd_relay_received_packets_total', 'vf_to_vm') - received0 >= SENT && samples;
      },
      15_000,
      'the scraped vf_to_vm received counter to count the frames sent into the VF',
      200,
    )) as Sample[];
    const received = counterOf(after, 'vio4wd_relay_received_packets_total', 'vf_to_vm') - received0;
    // Only our frames cross the veth (IPv6 is off), each 64 bytes.
    expect(received).toBe(SENT);
    expect(counterOf(after, 'vio4wd_relay_received_bytes_total', 'vf_to_vm') - bytes0).toBe(SENT * 64);
    expect(counterOf(after, 'vio4wd_relay_dropped_packets_total', 'vf_to_vm', { cause: 'not_connected' }) - dropped0).toBe(SENT);
    expect(counterOf(after, 'vio4wd_relay_sent_packets_total', 'vf_to_vm')).toBe(counterOf(before, 'vio4wd_relay_sent_packets_total', 'vf_to_vm'));
    expect(counterOf(after, 'vio4wd_relay_received_packets_total', 'vm_to_vf')).toBe(0);
    expect(counterOf(after, 'vio4wd_relay_busy_seconds_total', 'vf_to_vm')).toBeGreaterThan(0);
  });

  it('answers in OpenMetrics when the Accept header asks for it, with the same series', async () => {
    // What Prometheus sends.
    const accept =
      'application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1';
    const { reply, samples } = await scrape(accept);
    expect(reply.headers['content-type']).toBe('application/openmetrics-text; version=1.0.0; charset=utf-8');
    expect(reply.headers.vary).toBe('Accept');
    expect(reply.body.endsWith('# EOF\n')).toBe(true);
    // OpenMetrics names the counter family without _total and the sample with it.
    expect(reply.body).toMatch(/^# TYPE vio4wd_relay_received_packets counter$/m);
    expect(counterOf(samples, 'vio4wd_relay_received_packets_total', 'vf_to_vm')).toBeGreaterThanOrEqual(300);
    expect(only(samples, 'vio4wd_worker_restarts_total', { cpu: '0' }).value).toBe(0);

    // A scraper that prefers the text format, or asks for nothing, gets the text format.
    for (const prefersText of ['text/plain', 'text/plain;q=1,application/openmetrics-text;q=0.5', 'application/openmetrics-text;q=0', '*/*']) {
      const text = await scrape(prefersText);
      expect(text.reply.headers['content-type'], prefersText).toBe('text/plain; version=0.0.4; charset=utf-8');
      // The text format keeps the counters' _total in TYPE lines, after OpenMetrics scrapes too.
      expect(text.reply.body).toMatch(/^# TYPE vio4wd_relay_received_packets_total counter$/m);
      expect(text.reply.body.endsWith('# EOF\n')).toBe(false);
      expect(only(text.samples, 'vio4wd_worker_restarts_total', { cpu: '0' }).value).toBe(0);
    }
  });

  it('answers 404 for other paths, 405 for other methods, and HEAD without a body', async () => {
    for (const path of ['/', '/metric', '/metrics/', '/metrics/x', '/favicon.ico', '/..%2fmetrics']) {
      const r = await http('GET', path);
      expect(r.status, path).toBe(404);
      expect(r.body).toMatch(/metrics are at \/metrics/);
    }
    // A query string does not change the path.
    expect((await http('GET', '/metrics?x=1')).status).toBe(200);
    for (const method of ['POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS']) {
      const r = await http(method, '/metrics');
      expect(r.status, method).toBe(405);
      expect(r.headers.allow).toBe('GET, HEAD');
      expect(r.body).not.toMatch(/vio4wd_/);
    }
    const head = await http('HEAD', '/metrics');
    expect(head.status).toBe(200);
    expect(head.body).toBe('');
    expect(head.headers['content-type']).toBe('text/plain; version=0.0.4; charset=utf-8');
  });

  it('answers garbage with 400 and keeps serving', async () => {
    expect(await raw(Buffer.from([0x00, 0xff, 0x13, 0x37, 0x0d, 0x0a, 0x0d, 0x0a]))).toMatch(/^HTTP\/1\.1 400 /);
    expect(await raw('GET /metrics HTTP/9.9 extra\r\n\r\n')).toMatch(/^HTTP\/1\.1 400 /);
    expect(await raw(`GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`)).toMatch(/^HTTP\/1\.1 431 /);
    // A well-formed raw request still works after all that.
    const ok = await raw('GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    expect(ok).toMatch(/^HTTP\/1\.1 200 /);
    expect(ok).toContain('vio4wd_relay_received_packets_total{');
    expect(relay.proc.output()).not.toMatch(/"level":"(fatal|error)"/);
    await scrape();
  });

  it('counts a restart of the worker thread, and the relay keeps counting after it', async () => {
    const before = (await scrape()).samples;
    expect(only(before, 'vio4wd_worker_restarts_total', { cpu: '0' }).value).toBe(0);
    const received0 = counterOf(before, 'vio4wd_relay_received_packets_total', 'vf_to_vm');
    process.kill(relay.pid, 'SIGUSR2');
    await waitFor(
      async () => only((await scrape()).samples, 'vio4wd_worker_restarts_total', { cpu: '0' }).value === 1,
      15_000,
      'vio4wd_worker_restarts_total{cpu="0"} to become 1',
      200,
    );
    sendFrames(100);
    await waitFor(
      async () => counterOf((await scrape()).samples, 'vio4wd_relay_received_packets_total', 'vf_to_vm') - received0 >= 100,
      15_000,
      'the restarted worker to count frames sent into the VF',
      200,
    );
    const after = (await scrape()).samples;
    expect(counterOf(after, 'vio4wd_relay_received_packets_total', 'vf_to_vm') - received0).toBe(100);
    expect(only(after, 'vio4wd_worker_restarts_total', { cpu: '0' }).value).toBe(1);
    expect(counterOf(after, 'vio4wd_relay_direction_state', 'vf_to_vm', { state: 'ADDED' })).toBe(1);
  });

  it('refuses to start, status 78, naming the variable, when the address cannot be bound', async () => {
    const holder: Server = createServer();
    await new Promise<void>((resolve) => holder.listen({ host: '127.0.0.1', port: 0 }, resolve));
    const port = (holder.address() as AddressInfo).port;
    try {
      const inUse = await failingStart([], [`--metrics-listen=127.0.0.1:${port}`]);
      expect(inUse.status).toBe(78);
      expect(inUse.output).toMatch(/^virtio-forwarder: VIRTIOFWD_METRICS_LISTEN=/m);
      expect(inUse.output).toContain(
        `VIRTIOFWD_METRICS_LISTEN=127.0.0.1:${port}: cannot listen on 127.0.0.1:${port}: the port is in use (EADDRINUSE)\n`,
      );
      // The address is checked before anything else starts, and the PID file is released.
      expect(inUse.output).not.toContain('worker started and pinned');
      expect(inUse.output).not.toContain('virtio-forwarder ready');
      expect(existsSync(join(inUse.dir, 'virtio-forwarder.pid'))).toBe(false);

      // The port alone means loopback: the same port is taken there too.
      const loopback = await failingStart([`VIRTIOFWD_METRICS_LISTEN=${port}`], []);
      expect(loopback.status).toBe(78);
      expect(loopback.output).toContain(`VIRTIOFWD_METRICS_LISTEN=127.0.0.1:${port}: cannot listen on 127.0.0.1:${port}: the port is in use (EADDRINUSE)`);
    } finally {
      await new Promise<void>((resolve) => holder.close(() => resolve()));
    }
    // An address this host does not have (TEST-NET-1).
    const foreign = await failingStart(['VIRTIOFWD_METRICS_LISTEN=192.0.2.1:9477'], []);
    expect(foreign.status).toBe(78);
    expect(foreign.output).toContain('VIRTIOFWD_METRICS_LISTEN=192.0.2.1:9477: cannot listen on 192.0.2.1:9477: not an address of this host (EADDRNOTAVAIL)');
  });

  it('refuses values that are not listen addresses before starting anything, status 78', async () => {
    for (const [value, message] of [
      [':9477', 'the host is missing'],
      ['127.0.0.1:65536', 'port "65536" is not a number from 0 to 65535'],
      ['127.0.0.1', 'expected HOST:PORT'],
      ['::1:9477', 'an IPv6 address is written in brackets'],
      ['300.1.1.1:80', '"300.1.1.1" is not an IPv4 address'],
      ['host_name:80', 'neither an IP address nor a host name'],
    ]) {
      const r = await failingStart([`VIRTIOFWD_METRICS_LISTEN=${value}`], []);
      expect(r.status, value).toBe(78);
      expect(r.output).toMatch(new RegExp(`VIRTIOFWD_METRICS_LISTEN="${value.replace(/[.]/g, '\\.')}" \\(line \\d+\\): `));
      expect(r.output).toContain(message);
      // Nothing was started: no worker, no PID file.
      expect(r.output).not.toContain('worker started and pinned');
      expect(existsSync(join(r.dir, 'virtio-forwarder.pid'))).toBe(false);
    }
    // Reported together with the relay's own problems, in one message.
    const both = await failingStart(['VIRTIOFWD_METRICS_LISTEN=nope', 'VIRTIOFWD_POLL_MODE=sometimes'], []);
    expect(both.status).toBe(78);
    expect(both.output).toMatch(/2 problems:/);
    expect(both.output).toMatch(/VIRTIOFWD_POLL_MODE="sometimes"/);
    expect(both.output).toMatch(/VIRTIOFWD_METRICS_LISTEN="nope"/);
  });
});
