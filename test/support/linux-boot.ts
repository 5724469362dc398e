// Booting Debian's kernel under vio4wd-vmm in tests, with the retries the nested-KVM rig needs.
// Under the rig (QEMU TCG emulating SVM) a boot sometimes ends in a triple fault before
// userspace, or stops before the kernel runs /init (more often with 2 vCPUs); docs/vmm.md,
// "Known problems". Such a boot is started again, at most three boots in all, each reported.
// Any other failure, a boot that reached /init and then failed, or three failed boots in a row,
// fails the test with the VMM's output.
import { resolve } from 'node:path';
import { startProcess, type StartedProcess } from './processes.js';
import { repoRoot } from '../guest/tiny/build.js';

export const vmmBin = resolve(repoRoot, 'bin/vio4wd-vmm');

/** The kernel's line just before it starts the initramfs's init. */
const INIT_STARTS = /Run \/init as init process/;
const GUEST_READY = /VIO4WD-GUEST-READY/;

export interface LinuxBootOptions {
  /** How long a boot may take to reach /init before it counts as stopped (default 150 s). */
  initTimeoutMs?: number;
  /** How long init may then take to print its ready marker (default 150 s). */
  readyTimeoutMs?: number;
  /** Extra lines for the failure report (e.g. the VMM's NIC log), given the failed boot's process. */
  describe?: (vmm: StartedProcess) => string;
}

/** Starts `vio4wd-vmm args` and resolves once the guest's init printed its ready marker. */
export async function bootLinux(args: string[], label: string, opts: LinuxBootOptions = {}): Promise<StartedProcess> {
  for (let attempt = 1; ; attempt++) {
    const vmm = startProcess('node', [vmmBin, ...args], { label, stdio: ['pipe', 'pipe', 'pipe'] });
    try {
      await vmm.waitForOutput(INIT_STARTS, opts.initTimeoutMs ?? 150_000);
      await vmm.waitForOutput(GUEST_READY, opts.readyTimeoutMs ?? 150_000);
      return vmm;
    } catch (err) {
      await vmm.stop();
      const tripleFault = /guest ended: triple fault/.test(vmm.output());
      const beforeInit = !INIT_STARTS.test(vmm.output());
      if (opts.describe) console.warn(`${label}: boot ${attempt} failed; ${opts.describe(vmm)}`);
      if (attempt >= 3 || !(tripleFault || beforeInit)) throw err;
      // The last lines say where it stopped, so that the rig's failure shapes can be told apart.
      const lastLines = vmm.output().trimEnd().split('\n').slice(-4).map((l) => `  | ${l.slice(0, 200)}`).join('\n');
      console.warn(`${label}: boot ${attempt} ${tripleFault ? 'ended in a guest triple fault' : 'stopped'} before userspace; booting again. Its last lines:\n${lastLines}`);
    }
  }
}
