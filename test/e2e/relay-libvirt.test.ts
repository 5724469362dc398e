// libvirt 9.0 (Debian) as the VM manager, with the relay run as the shipped configuration runs it:
// a blank VIRTIOFWD_SOCKET_OWNER/GROUP. libvirt's QEMU runs as libvirt-qemu (group kvm), never
// root, so this is the test that the relay's sockets and socket directory let that user in: in
// server mode QEMU connects to the relay's socket, in client mode QEMU creates its socket in the
// relay's directory. Each mode boots the test guest once (TCG, direct kernel boot, memfd shared
// memory) with the `<interface type='vhostuser'>` users already have, and the guest pings a
// namespace host behind a veth that stands in for the VF.
import { chmodSync, copyFileSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { hasBinary, requireOrSkip } from '../support/env.js';
import { createNetns, createVethPair, deleteLink, deleteNetns, nsExec, requireRoot, uniqueTag } from '../support/netns.js';
import { ensureGuestImage } from '../support/guest-image.js';
import { attachGuestConsole, pingFromGuest, type GuestConsole } from '../support/qemu.js';
import { startRelay, type RunningRelay } from '../support/relay.js';
import { stopAll, type StartedProcess } from '../support/processes.js';
import { libvirtInstalled, startConsoleBridge, startLibvirt, type RunningLibvirt } from '../support/libvirt.js';
import { lookupGroup, lookupUser } from '../../relay/config/accounts.js';

vi.setConfig({ testTimeout: 300_000, hookTimeout: 300_000 });

function accountExists(lookup: () => unknown): boolean {
  try {
    lookup();
    return true;
  } catch {
    return false;
  }
}

const ready =
  requireRoot() &&
  requireOrSkip(hasBinary('qemu-system-x86_64'), 'the libvirt test needs qemu-system-x86_64') &&
  requireOrSkip(libvirtInstalled(), 'the libvirt test needs libvirtd, virtlogd and virsh (Debian packages libvirt-daemon-system, libvirt-clients)') &&
  requireOrSkip(
    accountExists(() => lookupUser('libvirt-qemu')) && accountExists(() => lookupGroup('kvm')),
    'the libvirt test needs the user libvirt-qemu and the group kvm that Debian\'s libvirt-daemon-system creates',
  );

const tag = uniqueTag();
const ns = `lns${tag}`;
const vf = `lvf${tag}`;
const peer = `lpr${tag}`;
const HOST_IP = '10.67.0.1';
const GUEST_IP = '10.67.0.2';
const RELAY_ID = 1;

let dir: string;
let kernel: string;
let initrd: string;
let libvirt: RunningLibvirt | null = null;
let relay: RunningRelay | null = null;
let bridge: StartedProcess | null = null;
let domain: string | null = null;

/**
 * The domain: TCG, direct kernel boot, memfd memory shared with the vhost-user back-end, the
 * serial console on a unix socket the test listens on, and the vhost-user interface in the shape
 * of the original's documentation (`mode` is QEMU's side: client connects to the relay).
 */
function domainXml(name: string, o: { socketPath: string; qemuMode: 'client' | 'server'; mac: string; console: string }): string {
  return `<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>${name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu placement='static' cpuset='1'>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>${kernel}</kernel>
    <initrd>${initrd}</initrd>
    <cmdline>console=ttyS0 reboot=k panic=-1 quiet vio4wd.ip=${GUEST_IP}/24 vio4wd.mac=${o.mac}</cmdline>
  </os>
  <features><acpi/></features>
  <cpu mode='maximum'/>
  <memoryBacking>
    <source type='memfd'/>
    <access mode='shared'/>
  </memoryBacking>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <interface type='vhostuser'>
      <mac address='${o.mac}'/>
      <source type='unix' path='${o.socketPath}' mode='${o.qemuMode}'/>
      <model type='virtio'/>
      <alias name='ua-net1'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x06' function='0x0'/>
    </interface>
    <serial type='unix'>
      <source mode='connect' path='${o.console}'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
  <qemu:override>
    <qemu:device alias='ua-net1'>
      <qemu:frontend>
        <qemu:property name='vectors' type='unsigned' value='0'/>
      </qemu:frontend>
    </qemu:device>
  </qemu:override>
</domain>
`;
}

/** Boots the domain and returns its console once the guest's init is ready (eth0 up). */
async function bootGuest(mode: string, socketPath: string, qemuMode: 'client' | 'server', mac: string): Promise<GuestConsole> {
  const consolePath = join(dir, `console-${mode}.sock`);
  bridge = await startConsoleBridge(consolePath, `console-${mode}`);
  domain = `vio4wd-${mode}-${tag}`;
  const xmlPath = join(dir, `${domain}.xml`);
  writeFileSync(xmlPath, domainXml(domain, { socketPath, qemuMode, mac, console: consolePath }));
  try {
    libvirt!.virsh(['create', xmlPath]);
  } catch (err) {
    throw new Error(`${(err as Error).message}\nQEMU log:\n${libvirt!.domainLog(domain).slice(-3000)}\nrelay log tail:\n${relay?.proc.output().slice(-3000)}`);
  }
  const guestConsole = attachGuestConsole(bridge, { label: domain });
  try {
    await guestConsole.ready(240_000);
  } catch (err) {
    throw new Error(`${(err as Error).message}\nconsole:\n${bridge.output().slice(-3000)}\nQEMU log:\n${libvirt!.domainLog(domain).slice(-3000)}`);
  }
  return guestConsole;
}

/** The PID of the domain's QEMU, from the PID file libvirt keeps. */
function readPid(): number {
  return Number(readFileSync(`/run/libvirt/qemu/${domain}.pid`, 'utf8').trim());
}

const guestPings = (guest: GuestConsole, count: number) =>
  pingFromGuest(guest, HOST_IP, count, { context: () => `relay log tail:\n${relay?.proc.output().slice(-3000)}` });

function logLine(r: RunningRelay, pattern: RegExp): Record<string, unknown> | undefined {
  return r.logs().find((l) => pattern.test(String(l.msg)));
}

describe.runIf(ready)('libvirt with the default socket owner and group', () => {
  const qemuUid = () => lookupUser('libvirt-qemu').id;
  const kvmGid = () => lookupGroup('kvm').id;

  beforeAll(async () => {
    const image = await ensureGuestImage();
    dir = mkdtempSync(join(tmpdir(), 'vio4wd-libvirt-'));
    // libvirt-qemu must reach the kernel, the console socket and the relay's socket directory.
    chmodSync(dir, 0o755);
    // Copies: libvirt hands the files it boots to libvirt-qemu while the domain runs.
    kernel = join(dir, 'vmlinuz');
    initrd = join(dir, 'initramfs.cpio.gz');
    copyFileSync(image.kernel, kernel);
    copyFileSync(image.initrd, initrd);
    createNetns(ns);
    createVethPair(vf, peer, { nsB: ns });
    nsExec(ns, 'ip', ['addr', 'add', `${HOST_IP}/24`, 'dev', peer]);
    libvirt = await startLibvirt(dir);
  });

  afterEach(async () => {
    if (domain && libvirt) {
      try {
        libvirt.virsh(['destroy', domain], 30_000);
      } catch {
        /* already gone: it powered off */
      }
      // Failures already quoted it; leave nothing behind in the system's log directory.
      rmSync(`/var/log/libvirt/qemu/${domain}.log`, { force: true });
    }
    domain = null;
    await bridge?.stop();
    bridge = null;
    await relay?.stop();
    relay = null;
  });

  afterAll(async () => {
    await libvirt?.stop();
    await stopAll();
    deleteLink(vf);
    deleteNetns(ns);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('server mode: the relay gives its socket to libvirt-qemu:kvm, libvirt\'s QEMU connects, and the guest pings through the relay', async () => {
    const socketDir = join(dir, 'server-sockets');
    relay = await startRelay({ staticVfs: { [vf]: RELAY_ID }, cpus: [0], socketDir });
    const access = logLine(relay, /^vhost-user sockets: owner libvirt-qemu/);
    expect(access?.msg).toMatch(/libvirt default for a blank setting.*group kvm/);

    const dirStat = statSync(socketDir);
    expect(dirStat.mode & 0o7777).toBe(0o2770);
    expect(dirStat.gid).toBe(kvmGid());
    const sock = statSync(relay.socketPath(RELAY_ID));
    expect(sock.isSocket()).toBe(true);
    expect(sock.mode & 0o777).toBe(0o660);
    expect({ uid: sock.uid, gid: sock.gid }).toEqual({ uid: qemuUid(), gid: kvmGid() });

    const guest = await bootGuest('server', relay.socketPath(RELAY_ID), 'client', '52:54:00:67:00:02');
    // QEMU really is libvirt-qemu, not root: otherwise the test proves nothing about permissions.
    expect(statSync(`/proc/${readPid()}`).uid).toBe(qemuUid());
    const out = await guestPings(guest, 3);
    expect(out).toMatch(/3 packets transmitted, 3 packets received/);
    const fromHost = nsExec(ns, 'ping', ['-c', '3', '-W', '2', GUEST_IP], { timeoutMs: 30_000 });
    expect(fromHost).toMatch(/3 received/);
  });

  it('client mode: libvirt\'s QEMU creates its socket in the relay\'s directory, the relay connects, and the guest pings through the relay', async () => {
    const socketDir = join(dir, 'client-sockets');
    relay = await startRelay({ staticVfs: { [vf]: RELAY_ID }, cpus: [0], vhostClient: true, socketDir });
    const dirStat = statSync(socketDir);
    expect(dirStat.mode & 0o7777).toBe(0o2770);
    expect(dirStat.gid).toBe(kvmGid());

    const socketPath = relay.socketPath(RELAY_ID);
    const guest = await bootGuest('client', socketPath, 'server', '52:54:00:67:00:03');
    expect(statSync(`/proc/${readPid()}`).uid).toBe(qemuUid());
    // QEMU's socket, in the group of the directory (setgid) whatever QEMU's own group.
    const sock = statSync(socketPath);
    expect(sock.isSocket()).toBe(true);
    expect(sock.gid).toBe(kvmGid());
    const out = await guestPings(guest, 3);
    expect(out).toMatch(/3 packets transmitted, 3 packets received/);
    const fromHost = nsExec(ns, 'ping', ['-c', '3', '-W', '2', GUEST_IP], { timeoutMs: 30_000 });
    expect(fromHost).toMatch(/3 received/);
    expect(logLine(relay, /vring 0 started|front-end connected|connected to/)).toBeDefined();
  });
});
