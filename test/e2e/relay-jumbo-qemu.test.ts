// End to end with VIRTIOFWD_JUMBO: a Debian guest under QEMU (TCG) whose virtio-net device has
// `host_mtu=9000` is served by the relay, and exchanges 9000-byte IP packets, unfragmented, with a
// host in a network namespace behind a veth that stands in for the VF. One guest boot.
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { hasBinary, requireOrSkip } from '../support/env.js';
import { createNetns, createVethPair, deleteLink, deleteNetns, nsExec, requireRoot, uniqueTag } from '../support/netns.js';
import { ensureGuestImage, type GuestImage } from '../support/guest-image.js';
import { startGuestVm, type GuestVm } from '../support/qemu.js';
import { startRelay, type RunningRelay } from '../support/relay.js';
import { stopAll } from '../support/processes.js';

vi.setConfig({ testTimeout: 300_000, hookTimeout: 300_000 });

const ready = requireRoot() && requireOrSkip(hasBinary('qemu-system-x86_64'), 'the e2e tests need qemu-system-x86_64');
const tag = uniqueTag();
const ns = `jqn${tag}`;
const vf = `jqv${tag}`;
const peer = `jqp${tag}`;
const HOST_IP = '10.67.0.1';
const GUEST_IP = '10.67.0.2';

let image: GuestImage;
let relay: RunningRelay | null = null;
let vm: GuestVm | null = null;

/** IP reassembly requests in the namespace: any fragment that arrived there counts one or more. */
function reassemblies(): number {
  const snmp = nsExec(ns, 'cat', ['/proc/net/snmp']).split('\n').filter((l) => l.startsWith('Ip:'));
  const names = snmp[0].split(/\s+/);
  const values = snmp[1].split(/\s+/);
  return Number(values[names.indexOf('ReasmReqds')]);
}

describe.runIf(ready)('relay with VIRTIOFWD_JUMBO and a Linux guest with host_mtu=9000', () => {
  beforeAll(async () => {
    image = await ensureGuestImage();
    createNetns(ns);
    createVethPair(vf, peer, { nsB: ns });
    nsExec(ns, 'ip', ['link', 'set', peer, 'mtu', '9000']);
    nsExec(ns, 'ip', ['addr', 'add', `${HOST_IP}/24`, 'dev', peer]);
  });

  afterAll(async () => {
    await vm?.stop();
    vm = null;
    await relay?.stop();
    relay = null;
    await stopAll();
    deleteLink(vf);
    deleteNetns(ns);
  });

  it('the guest gets MTU 9000 from the device, and 9000-byte packets cross the relay both ways unfragmented', async () => {
    relay = await startRelay({ staticVfs: { [vf]: 1 }, cpus: [0], configLines: ['VIRTIOFWD_JUMBO=y'] });
    expect(Number(readFileSync(`/sys/class/net/${vf}/mtu`, 'utf8'))).toBe(9000);
    vm = await startGuestVm({
      image,
      machine: 'pc',
      memoryBackend: 'memfd',
      vhostUser: { socketPath: relay.socketPath(1), hostMtu: 9000 },
      ip: `${GUEST_IP}/24`,
      mac: '52:54:00:67:00:02',
      cpu: 1,
    });
    await vm.ready(180_000);

    // QEMU offered VIRTIO_NET_F_MTU only because the relay did, told the relay the MTU, and the
    // guest's driver took 9000 from the config space (nobody set it in the guest).
    const mtu = await vm.exec('cat /sys/class/net/eth0/mtu', 20_000);
    expect(mtu.output.trim()).toBe('9000');
    const logs = relay.logs();
    expect(logs.some((l) => l.msg === 'vhost-user: features negotiated' && (l.features as string[]).includes('MTU'))).toBe(true);
    expect(logs.some((l) => l.msg === 'vhost-user: front-end MTU 9000')).toBe(true);

    const reasmBefore = reassemblies();
    // Guest → namespace: 8972 bytes of ICMP data, 9000 bytes of IP. Busybox's ping has no -M, so
    // that nothing was fragmented is checked where it arrives.
    let guestOut = '';
    for (let i = 0; i < 5; i++) {
      const r = await vm.exec(`ping -c 3 -W 3 -s 8972 ${HOST_IP}`, 60_000);
      guestOut = r.output;
      if (r.status === 0 && /3 packets received/.test(r.output)) break;
    }
    expect(guestOut).toMatch(/3 packets transmitted, 3 packets received/);
    expect(guestOut).toMatch(/8980 bytes from/);
    // Namespace → guest, with fragmentation forbidden.
    const fromHost = nsExec(ns, 'ping', ['-c', '3', '-W', '3', '-s', '8972', '-M', 'do', GUEST_IP], { timeoutMs: 60_000 });
    expect(fromHost).toMatch(/3 received/);
    expect(fromHost).toMatch(/8980 bytes from/);
    expect(reassemblies()).toBe(reasmBefore);
    // One byte more does not fit the 9000-byte path, and -M do refuses to fragment it.
    expect(() => nsExec(ns, 'ping', ['-c', '1', '-W', '1', '-s', '8973', '-M', 'do', GUEST_IP], { timeoutMs: 30_000 })).toThrow(/message too long|mtu=9000/i);
  });
});
