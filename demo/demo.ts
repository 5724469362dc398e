// The demo: the relay forwarding between a Linux VM and a VF stand-in, with everything real.
//
//   guest (QEMU, Debian kernel)  ──vhost-user──▶  virtio-forwarder  ──AF_PACKET──▶  veth "VF"
//   eth0 10.99.0.2                               (worker on CPU 0)                 │
//                                                                                  ▼
//                                                        network namespace: 10.99.0.1
//
// It boots the guest, pings both ways, sends a burst of traffic from the namespace, prints the
// relay's per-direction counters (through the stats service and virtioforwarder_stats), and tears
// everything down by PID. Run as root: `sudo scripts/demo.sh` (which installs what is missing first).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { ensureGuestImage } from '../test/support/guest-image.js';
import { ensureHugepages, hugepagesFree } from '../test/support/hugepages.js';
import { startGuestVm, type GuestVm } from '../test/support/qemu.js';
import { createNetns, createVethPair, deleteLink, deleteNetns, nsExec } from '../test/support/netns.js';
import { startRelay, repoRoot, type RunningRelay } from '../test/support/relay.js';
import { stopAll } from '../test/support/processes.js';

const NS = 'vio4wd-demo';
const VF = 'vio4wd-vf0';
const PEER = 'vio4wd-host';
const HOST_IP = '10.99.0.1';
const GUEST_IP = '10.99.0.2';

const step = (text: string) => process.stdout.write(`\n\x1b[1m== ${text}\x1b[0m\n`);
const show = (text: string) => process.stdout.write(`${text.trimEnd().replace(/^/gm, '   ')}\n`);

function cleanupNetwork(): void {
  deleteLink(VF);
  deleteNetns(NS);
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('the demo needs root (network namespaces, AF_PACKET, hugepages): run it with sudo');
  let relay: RunningRelay | null = null;
  let vm: GuestVm | null = null;
  const work = mkdtempSync(join(tmpdir(), 'vio4wd-demo-'));
  const statsEp = `ipc://${work}/stats`;
  const stopEverything = async () => {
    await vm?.stop().catch(() => undefined);
    await relay?.stop().catch(() => undefined);
    await stopAll();
    cleanupNetwork();
    rmSync(work, { recursive: true, force: true });
  };
  process.on('SIGINT', () => void stopEverything().then(() => process.exit(130)));
  try {
    step('guest image (Debian 12 kernel + busybox initramfs, built from Debian packages, cached)');
    const image = await ensureGuestImage();
    show(`kernel ${image.release}`);

    step('VF stand-in: a veth pair, the far end in a network namespace');
    cleanupNetwork();
    createNetns(NS);
    createVethPair(VF, PEER, { nsB: NS });
    nsExec(NS, 'ip', ['addr', 'add', `${HOST_IP}/24`, 'dev', PEER]);
    show(`${VF} (root namespace, the relay's "VF")  <->  ${PEER} ${HOST_IP}/24 (namespace ${NS})`);

    step('relay: virtio-forwarder, one adaptive worker pinned to CPU 0, static VF on relay 1');
    ensureHugepages(256);
    relay = await startRelay({
      staticVfs: { [VF]: 1 },
      cpus: [0],
      pollMode: 'adaptive',
      logLevel: 6,
      noZmq: true,
      configLines: [`VIRTIOFWD_ZMQ_STATS_EP=${statsEp}`],
    });
    show(`pid ${relay.pid}, vhost-user socket ${relay.socketPath(1)}`);

    step('VM: QEMU (TCG) with hugepage memory shared with the relay, virtio-net on vhost-user, pinned to CPU 1');
    vm = await startGuestVm({
      image,
      machine: 'pc',
      memoryBackend: hugepagesFree() >= 128 ? 'hugetlbfs' : 'memfd',
      vhostUser: { socketPath: relay.socketPath(1) },
      ip: `${GUEST_IP}/24`,
      mac: '52:54:00:99:00:02',
      cpu: 1,
    });
    await vm.ready(180_000);
    show((await vm.exec('ip -4 addr show dev eth0; cat /sys/class/net/eth0/address')).output);
    for (const line of relay.logs()) {
      const msg = String(line.msg ?? '');
      if (/features negotiated|vring \d+ started|memory table mapped/.test(msg)) show(`relay: ${msg} ${line.features ? JSON.stringify(line.features) : ''}`);
    }

    step(`guest → namespace: ping -c 5 ${HOST_IP}`);
    show((await vm.exec(`ping -c 5 -W 2 ${HOST_IP}`, 30_000)).output);

    step(`namespace → guest: ping -c 5 ${GUEST_IP}`);
    show(nsExec(NS, 'ping', ['-c', '5', '-W', '2', GUEST_IP], { timeoutMs: 30_000 }));

    step('a burst: 2000 pings at 1 ms from the namespace (1 ms is the fastest busybox-free ping allows)');
    show(nsExec(NS, 'ping', ['-c', '2000', '-i', '0.001', '-q', '-W', '1', GUEST_IP], { timeoutMs: 60_000 }));

    step('relay counters, read with virtioforwarder_stats over the ZMQ stats service');
    const stats = execFileSync('node', [join(repoRoot, 'bin/virtioforwarder_stats'), '--stats-ep', statsEp], { encoding: 'utf8' });
    show(stats.split('\n').filter((l) => /relay_1\.(vf_to_vm|vm_to_vf)\.(cpu_\d+\.)?(pkts|bytes)|relay_1\.vf\.|relay_1\.vhost/.test(l)).join('\n'));

    step('teardown: guest powered off, relay stopped with SIGTERM, namespace and veths removed');
    await vm.stop();
    vm = null;
    const status = await relay.stop();
    relay = null;
    show(`relay exited with status ${status}`);
  } finally {
    await stopEverything();
  }
  process.stdout.write('\ndemo finished\n');
}

if (process.argv.includes('--help') || process.argv.includes('-h')) {
  process.stdout.write(
    'usage: sudo scripts/demo.sh   (or, once set up: sudo node dist/demo/demo.js)\n\n' +
      'Starts virtio-forwarder with a veth pair standing in for a VF, boots a Linux guest under QEMU whose\n' +
      'NIC the relay serves over vhost-user, pings both ways, sends a burst, prints the relay counters and\n' +
      'tears everything down. Uses network namespace vio4wd-demo and links vio4wd-vf0/vio4wd-host.\n',
  );
  process.exit(0);
}

main().catch((err) => {
  process.stderr.write(`demo failed: ${(err as Error).message}\n`);
  process.exit(1);
});
