// Boots the Linux test guest under QEMU and drives it over its serial console
// (the request/reply framing is described in test/guest/init).
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { ensureGuestImage, type GuestImage } from './guest-image.js';
import { hugepageSize, hugepagesFree, hugetlbfsMounted, HUGEPAGE_MOUNT } from './hugepages.js';
import { startProcess, type StartedProcess } from './processes.js';
import { findBinary } from './env.js';
import { hardwareKvmUsable } from './kvm.js';

export { hardwareKvmUsable };

export const GUEST_READY_MARKER = 'VIO4WD-GUEST-READY';
export const DEFAULT_GUEST_IP = '10.0.2.15/24';
export const DEFAULT_GUEST_MAC = '52:54:00:12:34:56';

export type GuestMachine = 'pc' | 'microvm';
export type GuestMemoryBackend = 'memfd' | 'hugetlbfs';
export type GuestAccel = 'tcg' | 'kvm';

export interface VhostUserNetOptions {
  socketPath: string;
  /**
   * true: QEMU listens (`server=on,wait=off`) and the back-end connects to it.
   * false (default): QEMU connects to a listening back-end and retries every second (`reconnect=1`).
   * Either way QEMU 7.2 does not start the guest until a back-end has connected.
   */
  qemuIsServer?: boolean;
  /** Queue pairs; above 1 the device gets `mq=on`. */
  queues?: number;
  /** `host_mtu=` of the virtio-net device: VIRTIO_NET_F_MTU with this config-space MTU (and NET_SET_MTU). */
  hostMtu?: number;
  /**
   * Let the guest use its checksum and segmentation offloads both ways (csum, host_tso4/6,
   * guest_csum, guest_tso4/6, guest_ecn) where the back-end offers them.
   */
  offloads?: boolean;
  /** `mrg_rxbuf=` of the device (QEMU's default, on, when not given). */
  mergeableRxBuffers?: boolean;
  /** `packed=on`: the device offers packed virtqueues (VIRTIO_F_RING_PACKED) to the guest. */
  packed?: boolean;
}

export interface GuestVmOptions {
  /** Defaults to the cached image from ensureGuestImage(). */
  image?: GuestImage;
  machine?: GuestMachine;
  memoryBackend?: GuestMemoryBackend;
  memoryMiB?: number;
  /** eth0 on a vhost-user back-end. */
  vhostUser?: VhostUserNetOptions;
  /** Without vhostUser: eth0 on QEMU's internal, restricted user network (no outside traffic). */
  userNet?: boolean;
  mac?: string;
  /** Address and prefix eth0 gets from the guest's init. */
  ip?: string;
  /** Host CPU QEMU is pinned to (`taskset -c`), leaving the other CPU to the process under test. */
  cpu?: number;
  /** Default: KVM only where hardware virtualisation is usable, else TCG. */
  accel?: GuestAccel;
  extraKernelArgs?: string[];
  label?: string;
  /** Copy QEMU's console to stderr as it arrives (debugging). */
  echo?: boolean;
  /** Room for memory hot-plug: DIMM slots and the most memory the guest may grow to. */
  hotplug?: { slots: number; maxMiB: number };
  /** A QMP socket QEMU listens on (test/support/qmp.ts talks to it). */
  qmpSocket?: string;
  /** `-incoming` URI: QEMU waits for a migration stream instead of booting (e.g. `unix:/path`). */
  incoming?: string;
  /** Guest RAM in this file (a shared memory-backend-file, e.g. under /dev/shm) instead of a memfd, so a test can read it. */
  memoryFile?: string;
  /** `-S`: the CPUs wait for QMP `cont` (after an incoming migration too). */
  paused?: boolean;
}

export interface GuestExecResult {
  status: number;
  /** stdout and stderr of the command, interleaved as the guest wrote them, with \n line ends. */
  output: string;
}

export interface GuestVm {
  pid: number;
  process: StartedProcess;
  /** The full QEMU command line, for failure messages. */
  commandLine: string[];
  accel: GuestAccel;
  machine: GuestMachine;
  /** Resolves once the guest's init printed its ready marker (eth0 configured). */
  ready(timeoutMs?: number): Promise<void>;
  /** The guest is already up though this QEMU never printed the marker (it arrived by migration). */
  markReady(): void;
  /** Runs `sh -c command` in the guest. Rejects when the guest does not finish it within timeoutMs. */
  exec(command: string, timeoutMs?: number): Promise<GuestExecResult>;
  /** Everything QEMU printed so far (the guest console). */
  output(): string;
  /** Powers the guest off, then ends QEMU by PID (SIGTERM, then SIGKILL) if it is still there. */
  stop(): Promise<number | string>;
}

// microvm has neither HPET nor PM timer: when TCG jitter spoils the PIT calibration the boot hangs,
// unless the TSC rate is given. TCG's rdtsc runs at the host's TSC rate.
function hostTscKhz(): number {
  const mhz = readFileSync('/proc/cpuinfo', 'utf8').match(/^cpu MHz\s*:\s*([\d.]+)/m);
  if (!mhz) throw new Error('qemu: /proc/cpuinfo has no "cpu MHz" line to derive tsc_early_khz from');
  return Math.round(Number(mhz[1]) * 1000);
}

const MAC_PATTERN = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i;
const IP_PATTERN = /^(\d{1,3}\.){3}\d{1,3}\/\d{1,2}$/;

export function qemuArgs(image: GuestImage, opts: GuestVmOptions, accel: GuestAccel): string[] {
  const machine = opts.machine ?? 'pc';
  const memoryMiB = opts.memoryMiB ?? 256;
  const mac = opts.mac ?? DEFAULT_GUEST_MAC;
  const ip = opts.ip ?? DEFAULT_GUEST_IP;
  if (!MAC_PATTERN.test(mac)) throw new Error(`qemu: guest MAC "${mac}" is not of the form 52:54:00:12:34:56`);
  if (!IP_PATTERN.test(ip)) throw new Error(`qemu: guest address "${ip}" is not of the form 10.0.2.15/24`);
  if (!Number.isInteger(memoryMiB) || memoryMiB < 128) {
    throw new Error(`qemu: guest memory ${memoryMiB} MiB is too small: Debian's kernel needs at least 128 MiB`);
  }

  const append = ['console=ttyS0', 'reboot=k', 'panic=-1', 'quiet', `vio4wd.ip=${ip}`, `vio4wd.mac=${mac}`];
  if (machine === 'microvm' && accel === 'tcg') append.push(`tsc_early_khz=${hostTscKhz()}`);
  append.push(...(opts.extraKernelArgs ?? []));

  const args = [
    '-M', `${machine},accel=${accel},memory-backend=mem`,
    '-cpu', accel === 'kvm' ? 'host' : 'max',
    '-m', opts.hotplug ? `${memoryMiB}M,slots=${opts.hotplug.slots},maxmem=${opts.hotplug.maxMiB}M` : `${memoryMiB}M`,
    '-smp', '1',
    '-nodefaults', '-no-user-config', '-nographic', '-serial', 'stdio', '-no-reboot',
    '-kernel', image.kernel,
    '-initrd', image.initrd,
    '-append', append.join(' '),
  ];
  if (opts.qmpSocket) args.push('-qmp', `unix:${opts.qmpSocket},server=on,wait=off`);
  if (opts.incoming) args.push('-incoming', opts.incoming);
  if (opts.paused) args.push('-S');

  // vhost-user back-ends map guest RAM through an fd, so it must be shared file-backed memory.
  if (opts.memoryFile) {
    args.push('-object', `memory-backend-file,id=mem,size=${memoryMiB}M,mem-path=${opts.memoryFile},share=on`);
  } else if ((opts.memoryBackend ?? 'memfd') === 'hugetlbfs') {
    args.push('-object', `memory-backend-file,id=mem,size=${memoryMiB}M,mem-path=${HUGEPAGE_MOUNT},share=on,prealloc=on`);
  } else {
    args.push('-object', `memory-backend-memfd,id=mem,size=${memoryMiB}M,share=on`);
  }

  const deviceModel = machine === 'microvm' ? 'virtio-net-device' : 'virtio-net-pci';
  if (opts.vhostUser) {
    const { socketPath, qemuIsServer = false, queues = 1, hostMtu } = opts.vhostUser;
    if (hostMtu !== undefined && (!Number.isInteger(hostMtu) || hostMtu < 68 || hostMtu > 65535)) throw new Error(`qemu: host_mtu ${hostMtu} must be 68..65535`);
    if (!Number.isInteger(queues) || queues < 1 || queues > 8) throw new Error(`qemu: vhost-user queues ${queues} must be 1..8`);
    const chardev = qemuIsServer ? `server=on,wait=off` : `reconnect=1`;
    args.push('-chardev', `socket,id=chr0,path=${socketPath},${chardev}`);
    args.push('-netdev', `vhost-user,id=net0,chardev=chr0,vhostforce=on${queues > 1 ? `,queues=${queues}` : ''}`);
    const device = [deviceModel, 'netdev=net0', `mac=${mac}`];
    if (queues > 1) device.push('mq=on');
    if (hostMtu !== undefined) device.push(`host_mtu=${hostMtu}`);
    if (machine === 'pc') {
      // With MSI-X, QEMU 7.2 under TCG segfaults when the guest starts a vhost-user device.
      if (accel === 'tcg') device.push('vectors=0');
      else if (queues > 1) device.push(`vectors=${2 * queues + 2}`);
    }
    // The relay offers offloads only with VIRTIOFWD_TSO: keep the guest from negotiating them
    // unless the test asks for them.
    if (opts.vhostUser.offloads) {
      device.push('csum=on', 'gso=on', 'host_tso4=on', 'host_tso6=on', 'guest_csum=on', 'guest_tso4=on', 'guest_tso6=on', 'guest_ecn=on');
    } else {
      device.push('csum=off', 'gso=off', 'guest_csum=off', 'guest_tso4=off', 'guest_tso6=off', 'guest_ecn=off');
    }
    if (opts.vhostUser.mergeableRxBuffers !== undefined) device.push(`mrg_rxbuf=${opts.vhostUser.mergeableRxBuffers ? 'on' : 'off'}`);
    if (opts.vhostUser.packed) device.push('packed=on');
    args.push('-device', device.join(','));
  } else if (opts.userNet) {
    args.push('-netdev', 'user,id=net0,restrict=on');
    args.push('-device', `${deviceModel},netdev=net0,mac=${mac}`);
  }
  return args;
}

// The guest's tty reads requests in canonical mode, whose line buffer holds 4095 bytes.
const MAX_REQUEST_LINE = 4000;
let vmCounter = 0;

export async function startGuestVm(opts: GuestVmOptions = {}): Promise<GuestVm> {
  const qemu = findBinary('qemu-system-x86_64');
  if (!qemu) throw new Error('qemu: qemu-system-x86_64 is not installed (Debian package qemu-system-x86)');
  const image = opts.image ?? (await ensureGuestImage());
  const accel: GuestAccel = opts.accel ?? (hardwareKvmUsable() ? 'kvm' : 'tcg');
  const machine = opts.machine ?? 'pc';
  const memoryMiB = opts.memoryMiB ?? 256;

  if (opts.memoryBackend === 'hugetlbfs') {
    if (!hugetlbfsMounted()) throw new Error(`qemu: hugetlbfs guest memory asked for, but nothing of type hugetlbfs is mounted at ${HUGEPAGE_MOUNT}`);
    const needed = Math.ceil((memoryMiB * 1024 * 1024) / hugepageSize());
    if (hugepagesFree() < needed) {
      throw new Error(`qemu: hugetlbfs guest memory needs ${needed} free hugepages, only ${hugepagesFree()} are free`);
    }
  }

  const args = qemuArgs(image, opts, accel);
  let command = qemu;
  let commandArgs = args;
  if (opts.cpu !== undefined) {
    const taskset = findBinary('taskset');
    if (!taskset) throw new Error('qemu: pinning QEMU to a CPU needs taskset (Debian package util-linux)');
    // taskset execs QEMU, so the PID we hold is QEMU's own.
    command = taskset;
    commandArgs = ['-c', String(opts.cpu), qemu, ...args];
  }

  const label = opts.label ?? `qemu-guest-${++vmCounter}`;
  const proc = startProcess(command, commandArgs, { stdio: ['pipe', 'pipe', 'pipe'], label, echo: opts.echo });
  const commandLine = [command, ...commandArgs];
  const guestConsole = attachGuestConsole(proc, { label, commandLine });

  const stop = async (): Promise<number | string> => {
    const status = await guestConsole.powerOff();
    if (opts.vhostUser?.qemuIsServer && existsSync(opts.vhostUser.socketPath)) rmSync(opts.vhostUser.socketPath, { force: true });
    return status;
  };

  return {
    pid: proc.pid,
    process: proc,
    commandLine,
    accel,
    machine,
    ready: guestConsole.ready,
    markReady: guestConsole.markReady,
    exec: guestConsole.exec,
    output: () => proc.output(),
    stop,
  };
}

export interface GuestConsole {
  ready(timeoutMs?: number): Promise<void>;
  markReady(): void;
  exec(command: string, timeoutMs?: number): Promise<GuestExecResult>;
  /** Asks the guest to power off; ends the process by PID (SIGTERM, then SIGKILL) if it does not exit. */
  powerOff(): Promise<number | string>;
}

/**
 * Drives the test guest's console protocol (test/guest/init) over any process whose stdin and
 * stdout are the guest's serial console: QEMU here, the project's own VMM in other tests.
 * The process must have been started with a piped stdin.
 */
export function attachGuestConsole(proc: StartedProcess, opts: { label: string; commandLine?: string[] }): GuestConsole {
  const { label } = opts;
  if (!proc.proc.stdin) throw new Error(`guest console ${label}: the process was started without a piped stdin`);
  // A guest that powered off closes the pipe; a late write must not crash the test runner.
  proc.proc.stdin.on('error', () => {});

  let readyPromise: Promise<void> | undefined;
  let isReady = false;
  let requestCounter = 0;
  let queue: Promise<unknown> = Promise.resolve();

  const ready = (timeoutMs = 120_000): Promise<void> => {
    readyPromise ??= proc
      .waitForOutput(new RegExp(GUEST_READY_MARKER), timeoutMs)
      .then(() => {
        isReady = true;
      })
      .catch((err: Error) => {
        readyPromise = undefined;
        const command = opts.commandLine ? `\ncommand: ${opts.commandLine.join(' ')}` : '';
        throw new Error(`guest ${label} did not reach ${GUEST_READY_MARKER}: ${err.message}${command}`);
      });
    return readyPromise;
  };

  const markReady = () => {
    isReady = true;
    readyPromise = Promise.resolve();
  };

  const send = (line: string) => {
    if (!proc.proc.stdin || proc.proc.stdin.destroyed) throw new Error(`guest ${label}: console input is closed`);
    proc.proc.stdin.write(`${line}\n`);
  };

  const runOne = async (commandText: string, timeoutMs: number): Promise<GuestExecResult> => {
    await ready();
    const id = `r${++requestCounter}`;
    // Whole seconds on the guest side; the guest kills the command so later requests still run.
    const guestLimit = Math.max(1, Math.ceil(timeoutMs / 1000));
    const line = `run ${id} ${guestLimit} ${Buffer.from(commandText, 'utf8').toString('base64')}`;
    if (line.length > MAX_REQUEST_LINE) {
      throw new Error(`guest ${label}: command of ${commandText.length} bytes is too long for the serial console (request line ${line.length} > ${MAX_REQUEST_LINE})`);
    }
    const reply = new RegExp(`(?:^|\\n)<<<${id}\\r?\\n([\\s\\S]*?)\\r?\\n>>>${id} (\\d+)\\r?\\n`);
    const started = Date.now();
    send(line);
    let match: RegExpMatchArray;
    // Slack over the guest's own limit: the guest kills late (whole seconds, then -k 2) and a TCG
    // guest on a loaded machine runs slower than the wall clock.
    const replyWaitMs = guestLimit * 1000 + 10_000;
    try {
      match = await proc.waitForOutput(reply, replyWaitMs);
    } catch (err) {
      throw new Error(
        `guest ${label}: "${commandText}" timed out after ${timeoutMs} ms (no reply within ${replyWaitMs} ms): ${(err as Error).message}`,
      );
    }
    const status = Number(match[2]);
    const output = match[1].replace(/\r\n/g, '\n');
    if ((status === 143 || status === 137) && Date.now() - started >= guestLimit * 1000) {
      throw new Error(`guest ${label}: "${commandText}" timed out after ${timeoutMs} ms; output so far:\n${output}`);
    }
    return { status, output };
  };

  const exec = (commandText: string, timeoutMs = 20_000): Promise<GuestExecResult> => {
    // One request at a time: the guest serves requests serially, and a queued request must not
    // start its reply timer while an earlier one is still running.
    const result = queue.then(() => runOne(commandText, timeoutMs));
    queue = result.catch(() => {});
    return result;
  };

  const powerOff = async (): Promise<number | string> => {
    if (!isReady || proc.proc.exitCode !== null || proc.proc.signalCode !== null) return proc.stop();
    try {
      send(`run halt${requestCounter} 5 ${Buffer.from('poweroff -f').toString('base64')}`);
    } catch {
      return proc.stop();
    }
    const timer = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 10_000).unref());
    const first = await Promise.race([proc.exited, timer]);
    return first === 'timeout' ? proc.stop() : first;
  };

  return { ready, markReady, exec, powerOff };
}

/**
 * Pings `target` from the guest until one round of `count` replies comes back complete; after
 * `attempts` rounds it throws with the last output and `context()` (e.g. the relay's log tail).
 */
export async function pingFromGuest(
  guest: Pick<GuestConsole, 'exec'>,
  target: string,
  count: number,
  opts: { attempts?: number; context?: () => string } = {},
): Promise<string> {
  let last = '';
  for (let i = 0; i < (opts.attempts ?? 5); i++) {
    const r = await guest.exec(`ping -c ${count} -W 2 ${target}`, 30_000);
    last = r.output;
    if (r.status === 0 && new RegExp(`${count} packets received`).test(r.output)) return r.output;
  }
  throw new Error(`guest could not ping ${target} through the relay:\n${last}${opts.context ? `\n${opts.context()}` : ''}`);
}
