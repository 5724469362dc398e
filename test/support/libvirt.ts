// libvirt as a peer: a private libvirtd (and virtlogd, which libvirt's QEMU driver logs through)
// started by the test without systemd, its QEMU driver running QEMU as Debian's default user
// libvirt-qemu (group kvm), and the test guest's serial console bridged to a process whose stdin
// and stdout the console helpers of qemu.ts drive.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { findBinary, run } from './env.js';
import { sleep, startProcess, waitFor, type StartedProcess } from './processes.js';

export const LIBVIRT_BINARIES = ['libvirtd', 'virtlogd', 'virsh'];

export function libvirtInstalled(): boolean {
  return LIBVIRT_BINARIES.every((b) => findBinary(b) !== null);
}

export interface RunningLibvirt {
  uri: string;
  libvirtd: StartedProcess;
  /** Ours, or null when a virtlogd was already running (it is then left alone). */
  virtlogd: StartedProcess | null;
  virsh(args: string[], timeoutMs?: number): string;
  /** The QEMU log libvirt keeps for a domain (its command line and QEMU's own errors). */
  domainLog(name: string): string;
  stop(): Promise<void>;
}

/**
 * Starts libvirtd in the foreground with its sockets in `dir` (so it is reached only by this
 * test), no authentication on them, and the QEMU driver's defaults (/etc/libvirt/qemu.conf as
 * Debian ships it: QEMU runs as libvirt-qemu:kvm). Both daemons are ended by PID in stop().
 */
export async function startLibvirt(dir: string): Promise<RunningLibvirt> {
  const libvirtd = findBinary('libvirtd');
  const virtlogdBin = findBinary('virtlogd');
  if (!libvirtd || !virtlogdBin) throw new Error('libvirt: libvirtd and virtlogd are needed (Debian package libvirt-daemon-system)');

  // Without virtlogd, starting a domain fails with "Failed to connect socket to '/run/libvirt/virtlogd-sock'".
  let virtlogd: StartedProcess | null = startProcess(virtlogdBin, ['--pid-file', join(dir, 'virtlogd.pid')], { label: 'virtlogd' });
  const early = await Promise.race([virtlogd.exited, sleep(1000).then(() => null)]);
  if (early !== null) {
    // One is running already (the socket /run/libvirt/virtlogd-sock is a fixed path): use it.
    if (!existsSync('/run/libvirt/virtlogd-sock')) {
      throw new Error(`libvirt: virtlogd exited (${early}) and none is running:\n${virtlogd.output()}`);
    }
    virtlogd = null;
  }

  const sockDir = join(dir, 'libvirt-run');
  mkdirSync(sockDir, { recursive: true, mode: 0o755 });
  const conf = join(dir, 'libvirtd.conf');
  writeFileSync(
    conf,
    [`unix_sock_dir = "${sockDir}"`, 'auth_unix_ro = "none"', 'auth_unix_rw = "none"', 'log_outputs = "3:stderr"', ''].join('\n'),
  );
  const daemon = startProcess(libvirtd, ['--config', conf, '--pid-file', join(dir, 'libvirtd.pid')], { label: 'libvirtd' });
  const uri = `qemu:///system?socket=${sockDir}/libvirt-sock`;
  const virsh = (args: string[], timeoutMs = 120_000) => run('virsh', ['-c', uri, ...args], { timeoutMs });
  const stop = async () => {
    await daemon.stop(10_000);
    await virtlogd?.stop(5000);
  };
  try {
    const answered = await waitFor(
      () => (daemon.proc.exitCode !== null ? 'exited' : virsh(['version'], 10_000).includes('QEMU') && 'answered'),
      30_000,
      'libvirtd to answer with its QEMU driver',
      250,
    );
    if (answered === 'exited') throw new Error(`libvirtd exited (${daemon.proc.exitCode})`);
  } catch (err) {
    await stop();
    throw new Error(`${(err as Error).message}\nlibvirtd output:\n${daemon.output().slice(-3000)}`);
  }
  return {
    uri,
    libvirtd: daemon,
    virtlogd,
    virsh,
    domainLog: (name) => {
      const path = `/var/log/libvirt/qemu/${name}.log`;
      return existsSync(path) ? readFileSync(path, 'utf8') : `(no ${path})`;
    },
    stop,
  };
}

/**
 * A process that listens on the unix socket `path` (mode 0666: libvirt-qemu connects to it) for
 * QEMU's serial chardev (`<serial type='unix'><source mode='connect'/>`) and copies the
 * connection to its stdout and its stdin to the connection. It exits when QEMU hangs up, so its
 * end is the guest's end. Resolves once the socket is there.
 */
export async function startConsoleBridge(path: string, label: string): Promise<StartedProcess> {
  const script = `
const net = require('node:net');
const fs = require('node:fs');
const server = net.createServer((c) => {
  server.close();
  c.pipe(process.stdout);
  process.stdin.pipe(c);
  c.on('close', () => process.exit(0));
  c.on('error', () => process.exit(0));
});
server.listen(process.argv[1], () => fs.chmodSync(process.argv[1], 0o666));
`;
  const bridge = startProcess(process.execPath, ['-e', script, path], { stdio: ['pipe', 'pipe', 'pipe'], label });
  await waitFor(() => existsSync(path) || bridge.proc.exitCode !== null, 10_000, `console socket ${path}`, 50);
  if (bridge.proc.exitCode !== null) throw new Error(`console bridge exited:\n${bridge.output()}`);
  return bridge;
}
