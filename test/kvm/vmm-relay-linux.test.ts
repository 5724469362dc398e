// Debian Linux under vio4wd-vmm with its NIC served by the relay (bin/virtio-forwarder), a veth
// peer in a network namespace on the other side:
// - the relay is killed (SIGKILL) and started again on the same socket: the VMM reconnects, hands
//   the rings over again and the guest's ping works again without a guest reboot; a relay that
//   comes back with other features (no mergeable RX buffers) is refused and the NIC stays down.
// - two queue pairs: Linux accepts the NIC (the VMM serves the control queue), uses both pairs,
//   and traffic sent from each vCPU leaves through its own pair; with four offered and two vCPUs
//   it enables two.
import { mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { stopAll, waitFor, type StartedProcess } from '../support/processes.js';
import { ensureGuestImage } from '../support/guest-image.js';
import { isRoot, requireOrSkip, run } from '../support/env.js';
import { kvmTestsCanRun } from '../support/kvm.js';
import { createNetns, createVethPair, deleteLink, deleteNetns, nsExec } from '../support/netns.js';
import { startRelay, type RunningRelay } from '../support/relay.js';
import { repoRoot } from '../guest/tiny/build.js';
import { bootLinux } from '../support/linux-boot.js';

const ready =
  kvmTestsCanRun([resolve(repoRoot, 'dist/vmm/main.js'), resolve(repoRoot, 'dist/daemon/main.js')]) &&
  requireOrSkip(isRoot(), 'needs root (network namespaces, the relay)');

/** The guest's network must answer within this long after the relay is back. */
const RECOVERY_LIMIT_MS = 30_000;

const tag = `${process.pid % 10000}`;
const scratch = mkdtempSync(join(tmpdir(), 'vmm-relay-linux-'));
const relays: RunningRelay[] = [];
const links: string[] = [];
const namespaces: string[] = [];

afterAll(async () => {
  await stopAll();
  for (const r of relays) await r.stop().catch(() => undefined);
  for (const l of links) deleteLink(l);
  for (const n of namespaces) deleteNetns(n);
  rmSync(scratch, { recursive: true, force: true });
});

/** A veth pair: one end for the relay (its VF), the other in a namespace with `address`. */
function peer(name: string, address: string): { ns: string; vf: string } {
  const ns = `${name}n${tag}`;
  const vf = `${name}h${tag}`;
  const nsVeth = `${name}g${tag}`;
  createNetns(ns);
  namespaces.push(ns);
  createVethPair(vf, nsVeth, { nsB: ns });
  links.push(vf);
  run('sysctl', ['-qw', `net.ipv6.conf.${vf}.disable_ipv6=1`]);
  nsExec(ns, 'ip', ['addr', 'add', address, 'dev', nsVeth]);
  return { ns, vf };
}

async function relayOn(vf: string, socketDir: string, configLines: string[] = []): Promise<RunningRelay> {
  const r = await startRelay({ staticVfs: { [vf]: 1 }, cpus: [0], socketDir, configLines, readyTimeoutMs: 90_000 });
  relays.push(r);
  return r;
}

/** Boots Linux with 512 MiB of shared memory (test/support/linux-boot.ts retries what the rig breaks). */
async function bootGuest(args: string[], label: string): Promise<StartedProcess> {
  const image = await ensureGuestImage();
  return bootLinux(
    ['-kernel', image.vmlinux, '-initrd', image.initrd, '-m', '512M', '-serial', 'stdio', '-machine', 'mem-share=on', ...args],
    label,
    { describe: (vmm) => `VMM log:\n${vmmLog(vmm)}` },
  );
}

/** The VMM's own log lines about its NIC (its output also carries the guest's console). */
const vmmLog = (vmm: StartedProcess) => vmm.output().split('\n').filter((l) => l.includes('"NIC ') || l.includes('vhost-user')).join('\n');

let requestId = 0;
/** Runs a shell command in the guest over the serial console (test/guest/init's protocol). */
async function guestRun(vmm: StartedProcess, command: string, limitS = 30): Promise<{ status: number; output: string }> {
  const id = `r${++requestId}`;
  vmm.proc.stdin!.write(`run ${id} ${limitS} ${Buffer.from(command).toString('base64')}\n`);
  const reply = await vmm.waitForOutput(new RegExp(`<<<${id}\\r?\\n([\\s\\S]*?)\\r?\\n>>>${id} (\\d+)`), (limitS + 30) * 1000);
  return { status: Number(reply[2]), output: reply[1] };
}

function pingOnce(ns: string, address: string): boolean {
  try {
    return /1 received/.test(nsExec(ns, 'ping', ['-c', '1', '-W', '1', address], { timeoutMs: 5_000 }));
  } catch {
    return false;
  }
}

/** query-devices over the api-channel. */
async function queryDevices(api: string): Promise<Array<Record<string, unknown>>> {
  const lines: Record<string, unknown>[] = [];
  const socket = connect(api);
  let buffer = '';
  const waiters: Array<() => void> = [];
  socket.setEncoding('utf8');
  socket.on('data', (d: string) => {
    buffer += d;
    let nl;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, nl).trim();
      buffer = buffer.slice(nl + 1);
      if (line) lines.push(JSON.parse(line));
    }
    for (const w of waiters.splice(0)) w();
  });
  const next = async () => {
    const deadline = Date.now() + 10_000;
    while (lines.length === 0) {
      if (Date.now() > deadline) throw new Error('no api-channel reply within 10 s');
      await new Promise<void>((r) => {
        waiters.push(r);
        setTimeout(r, 200);
      });
    }
    return lines.shift()!;
  };
  try {
    await next(); // greeting
    socket.write('{"execute":"qmp_capabilities"}\n');
    await next();
    socket.write('{"execute":"query-devices"}\n');
    return (await next()).return as Array<Record<string, unknown>>;
  } finally {
    socket.destroy();
  }
}

describe.runIf(ready)('Linux behind the relay under vio4wd-vmm', () => {
  it('gets its network back after the relay is killed and restarted, and a relay with other features is refused', { timeout: 600_000 }, async () => {
    const { ns, vf } = peer('rc', '10.79.0.1/24');
    const socketDir = join(scratch, 'sockets-rc');
    let relay = await relayOn(vf, socketDir);
    const vmm = await bootGuest(
      [
        '-append', 'console=ttyS0 reboot=k panic=-1 nokaslr noxsave vio4wd.ip=10.79.0.2/24',
        '-chardev', `socket,id=c0,path=${relay.socketPath(1)}`, '-netdev', 'vhost-user,id=net0,chardev=c0',
        '-device', 'virtio-net-device,netdev=net0,mac=52:54:00:12:34:79',
      ],
      'vmm-relay-reconnect',
    );
    expect(vmm.output()).toMatch(/eth0 up addr=10\.79\.0\.2\/24/);
    await vmm.waitForOutput(/rings handed to the vhost-user back-end/, 30_000);
    expect(nsExec(ns, 'ping', ['-c', '3', '-W', '5', '10.79.0.2'], { timeoutMs: 60_000 })).toMatch(/3 received/);

    // SIGKILL: the relay gets no chance to say goodbye; its socket file stays behind.
    process.kill(relay.pid, 'SIGKILL');
    await relay.proc.exited;
    await vmm.waitForOutput(/NIC net0: the vhost-user back-end closed the connection; reconnecting/, 10_000);
    expect(pingOnce(ns, '10.79.0.2')).toBe(false);
    relay = await relayOn(vf, socketDir);
    const back = Date.now();
    await waitFor(() => pingOnce(ns, '10.79.0.2') || null, RECOVERY_LIMIT_MS, `ping through the restarted relay within ${RECOVERY_LIMIT_MS} ms`, 200);
    console.log(`vmm-relay-reconnect: ping answered ${Date.now() - back} ms after the relay was ready again`);
    // The VMM's log lines may reach its output a little after the guest's network is back.
    await vmm.waitForOutput(/NIC net0: vhost-user back-end reconnected after \d+ attempt/, 10_000);
    await vmm.waitForOutput(/rings handed to the restarted vhost-user back-end/, 10_000);
    expect(nsExec(ns, 'ping', ['-c', '3', '-W', '5', '10.79.0.2'], { timeoutMs: 60_000 })).toMatch(/3 received/);
    // The guest did not reboot: its init is still the one that printed the ready marker once.
    expect(vmm.output().match(/VIO4WD-GUEST-READY/g)).toHaveLength(1);
    const link = await guestRun(vmm, 'cat /sys/class/net/eth0/operstate');
    expect(link.output.trim()).toBe('up');

    // A relay that no longer offers mergeable RX buffers: the guest was given them, so no.
    process.kill(relay.pid, 'SIGKILL');
    await relay.proc.exited;
    relay = await relayOn(vf, socketDir, ['VIRTIOFWD_MRGBUF=false']);
    await vmm.waitForOutput(/the restarted back-end offers features .* that the guest was given; the NIC stays down/, 30_000);
    expect(vmm.output()).toMatch(/"level":50[^\n]*restarted back-end offers features/);
    expect(pingOnce(ns, '10.79.0.2')).toBe(false);
    expect(vmm.proc.exitCode).toBeNull();

    process.kill(vmm.pid, 'SIGTERM');
    expect(await vmm.exited).toBe(0);
  });

  it('accepts two queue pairs: the guest uses both, and each vCPU sends through its own pair', { timeout: 600_000 }, async () => {
    const { ns, vf } = peer('mq', '10.79.1.1/24');
    const relay = await relayOn(vf, join(scratch, 'sockets-mq'), ['VIRTIOFWD_METRICS_LISTEN=127.0.0.1:0']);
    const api = join(scratch, 'mq.api');
    const vmm = await bootGuest(
      [
        '-smp', '2', '-api-channel', `unix:${api}`,
        '-append', 'console=ttyS0 reboot=k panic=-1 nokaslr noxsave vio4wd.ip=10.79.1.2/24',
        '-chardev', `socket,id=c0,path=${relay.socketPath(1)}`, '-netdev', 'vhost-user,id=net0,chardev=c0,queues=2',
        '-device', 'virtio-net-device,netdev=net0,mac=52:54:00:12:34:7a',
      ],
      'vmm-relay-mq',
    );
    expect(vmm.output()).toMatch(/eth0 up addr=10\.79\.1\.2\/24/);
    const queues = await guestRun(vmm, 'ls /sys/class/net/eth0/queues; nproc');
    expect(queues.status).toBe(0);
    expect(queues.output.split(/\s+/).filter(Boolean)).toEqual(['rx-0', 'rx-1', 'tx-0', 'tx-1', '2']);
    // Linux sets as many pairs as it has CPUs through the control queue.
    await vmm.waitForOutput(/NIC net0: guest uses 2 of 2 queue pairs/, 30_000);

    // The relay sees both pairs enabled.
    const metricsUrl = String(relay.logs().find((l) => typeof l.msg === 'string' && l.msg.startsWith('Prometheus metrics at '))?.url);
    const metrics = await (await fetch(metricsUrl)).text();
    expect(metrics).toMatch(/^vio4wd_relay_queue_pairs\{[^}]*relay="1"[^}]*\} 2$/m);

    expect(nsExec(ns, 'ping', ['-c', '3', '-W', '5', '10.79.1.2'], { timeoutMs: 60_000 })).toMatch(/3 received/);
    const before = (await queryDevices(api)).find((d) => d.type === 'virtio-net')!;
    expect(before).toMatchObject({ queuePairs: 2, activeQueuePairs: 2, controlQueue: true, connected: true });
    // Several flows from each vCPU: pings pinned to CPU 0 and to CPU 1, two per CPU with different
    // sizes. XPS maps each CPU to its own TX queue. (The guest's BusyBox nc has no UDP mode.) The
    // four counts come back on one line: lines printed one after another have been seen
    // interleaved on the rig's serial console.
    const flows = await guestRun(
      vmm,
      'for c in 0 1; do for n in 1 2; do taskset -c $c ping -c 10 -i 0.2 -W 2 -s $((56 * n)) 10.79.1.1 > /tmp/ping$c$n & done; done; wait; ' +
        'echo "received: $(sed -n "s/.* \\([0-9]*\\) packets received.*/\\1/p" /tmp/ping* | tr "\\n" " ")"',
      60,
    );
    expect(flows.status).toBe(0);
    const counts = /received: ([\d ]+)/.exec(flows.output)?.[1] ?? '';
    const received = counts.trim().split(/\s+/).filter(Boolean).map(Number);
    expect(received, flows.output).toHaveLength(4);
    for (const n of received) expect(n).toBeGreaterThanOrEqual(8);
    const after = (await queryDevices(api)).find((d) => d.type === 'virtio-net')!;
    const used = (d: Record<string, unknown>) => new Map((d.rings as Array<{ index: number; usedIdx: number }>).map((r) => [r.index, r.usedIdx]));
    const u0 = used(before);
    const u1 = used(after);
    console.log(`vmm-relay-mq: used indexes before ${JSON.stringify([...u0])} after ${JSON.stringify([...u1])}`);
    // TX queue of pair 0 is ring 1, of pair 1 ring 3: both carried the guest's flows.
    const delta = (i: number) => ((u1.get(i)! - u0.get(i)!) & 0xffff);
    expect(delta(1)).toBeGreaterThanOrEqual(10);
    expect(delta(3)).toBeGreaterThanOrEqual(10);
    // The echo replies (at least 8 per ping, as checked above) came in on the RX rings; the
    // relay picks which.
    expect(delta(0) + delta(2)).toBeGreaterThanOrEqual(received.reduce((a, b) => a + b, 0));

    process.kill(vmm.pid, 'SIGTERM');
    expect(await vmm.exited).toBe(0);
  });

  it('offers four queue pairs: a guest with two vCPUs sees four and enables two', { timeout: 600_000 }, async () => {
    const { ns, vf } = peer('q4', '10.79.2.1/24');
    const relay = await relayOn(vf, join(scratch, 'sockets-q4'));
    const vmm = await bootGuest(
      [
        '-smp', '2',
        '-append', 'console=ttyS0 reboot=k panic=-1 nokaslr noxsave vio4wd.ip=10.79.2.2/24',
        '-chardev', `socket,id=c0,path=${relay.socketPath(1)}`, '-netdev', 'vhost-user,id=net0,chardev=c0,queues=4',
        '-device', 'virtio-net-device,netdev=net0,mac=52:54:00:12:34:7b',
      ],
      'vmm-relay-q4',
    );
    await vmm.waitForOutput(/NIC net0: guest uses 2 of 4 queue pairs/, 30_000);
    // sysfs lists the queues in use (real_num_*_queues): the two pairs Linux set for its two CPUs.
    const queues = await guestRun(vmm, 'ls /sys/class/net/eth0/queues');
    expect(queues.output.split(/\s+/).filter(Boolean)).toEqual(['rx-0', 'rx-1', 'tx-0', 'tx-1']);
    expect(vmm.output()).not.toMatch(/Fail to set num of queue pairs/);
    expect(nsExec(ns, 'ping', ['-c', '3', '-W', '5', '10.79.2.2'], { timeoutMs: 60_000 })).toMatch(/3 received/);
    process.kill(vmm.pid, 'SIGTERM');
    expect(await vmm.exited).toBe(0);
  });
});
