// End to end: the tiny guest behind the relay (bin/virtio-forwarder) answers ping from a veth
// peer in a network namespace. The relay owns the vhost-user socket (server); the VMM connects.
import { resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { startProcess, stopAll } from '../support/processes.js';
import { isRoot, requireOrSkip } from '../support/env.js';
import { kvmTestsCanRun } from '../support/kvm.js';
import { createNetns, createVethPair, deleteLink, deleteNetns, nsExec } from '../support/netns.js';
import { startRelay, type RunningRelay } from '../support/relay.js';
import { ensureTinyGuest, repoRoot } from '../guest/tiny/build.js';

const vmmBin = resolve(repoRoot, 'bin/vio4wd-vmm');
const ready =
  kvmTestsCanRun([resolve(repoRoot, 'dist/vmm/main.js'), resolve(repoRoot, 'dist/daemon/main.js')]) &&
  requireOrSkip(isRoot(), 'needs root (network namespaces, the relay)');

const tag = `${process.pid % 100000}`;
const ns = `vmrns${tag}`;
const hostVeth = `vmrh${tag}`;
const nsVeth = `vmrg${tag}`;
let relay: RunningRelay | null = null;

afterAll(async () => {
  await stopAll();
  await relay?.stop().catch(() => undefined);
  deleteLink(hostVeth);
  deleteNetns(ns);
});

describe.runIf(ready)('tiny guest behind the relay', () => {
  it('answers ping from a veth peer in a netns', { timeout: 180_000 }, async () => {
    const guest = ensureTinyGuest();
    createNetns(ns);
    createVethPair(hostVeth, nsVeth, { nsB: ns });
    nsExec(ns, 'ip', ['addr', 'add', '10.78.0.1/24', 'dev', nsVeth]);
    relay = await startRelay({ staticVfs: { [hostVeth]: 1 }, cpus: [0] });
    const vmm = startProcess(
      'node',
      [
        vmmBin, '-kernel', guest, '-append', 'ip=10.78.0.2', '-serial', 'stdio', '-machine', 'mem-share=on',
        '-chardev', `socket,id=c0,path=${relay.socketPath(1)}`, '-netdev', 'vhost-user,id=net0,chardev=c0',
        '-device', 'virtio-net-device,netdev=net0,mac=52:54:00:12:34:78',
      ],
      { label: 'vmm-relay' },
    );
    await vmm.waitForOutput(/tiny-guest: net ready/, 60_000);
    await vmm.waitForOutput(/rings handed to the vhost-user back-end/, 30_000);
    const ping = nsExec(ns, 'ping', ['-c', '3', '-W', '5', '10.78.0.2'], { timeoutMs: 60_000 });
    expect(ping).toMatch(/3 received/);
    await vmm.waitForOutput(/tiny-guest: icmp echo reply seq 3/, 10_000);
    process.kill(vmm.pid, 'SIGTERM');
    expect(await vmm.exited).toBe(0);
  });
});
