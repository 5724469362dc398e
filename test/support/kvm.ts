// Where the tests that need KVM run. On a machine whose /dev/kvm can boot Linux they run directly;
// otherwise (no /dev/kvm, or PVM's, which cannot) they run inside the nested-KVM rig
// (scripts/nested-run.sh): a QEMU TCG guest with SVM emulated, where /dev/kvm exists. Those test
// files live in test/kvm; the host's run leaves them to test/integration/vmm-kvm-nested.test.ts,
// which boots the rig once for all of them.
import { accessSync, constants, existsSync, readFileSync } from 'node:fs';
import { requireOrSkip } from './env.js';

export type KvmRoute = 'direct' | 'nested';

/**
 * Hardware KVM can run the guest kernel; PVM's KVM cannot, because its instruction emulator dies
 * on int3 during boot, so it counts as unusable.
 */
export function hardwareKvmUsable(): boolean {
  if (existsSync('/sys/module/kvm_pvm')) return false;
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
  } catch {
    return false;
  }
  return /^flags\s*:.*\b(vmx|svm)\b/m.test(readFileSync('/proc/cpuinfo', 'utf8'));
}

/** True in the chroot of the nested rig (its init sets the variable). */
export const insideNestedRig = (): boolean => process.env.VIO4WD_IN_NESTED === '1';

/** VIO4WD_FORCE_NESTED=1 sends the KVM tests through the rig even where /dev/kvm works. */
export function kvmRoute(): KvmRoute {
  if (insideNestedRig()) return 'direct';
  if (process.env.VIO4WD_FORCE_NESTED === '1') return 'nested';
  return hardwareKvmUsable() ? 'direct' : 'nested';
}

export function kvmRouteReason(): string {
  if (insideNestedRig()) return 'inside the nested-KVM rig';
  if (process.env.VIO4WD_FORCE_NESTED === '1') return 'VIO4WD_FORCE_NESTED=1';
  if (!existsSync('/dev/kvm')) return 'this machine has no /dev/kvm';
  if (existsSync('/sys/module/kvm_pvm')) return "this machine's /dev/kvm is PVM, which cannot boot Linux";
  return hardwareKvmUsable() ? 'this machine has a usable /dev/kvm' : 'this machine has no usable /dev/kvm';
}

/**
 * The gate of a test file in test/kvm: true when KVM can boot guests here and the build the file
 * runs is present; otherwise the usual rule (a failure on CI, a loud skip elsewhere).
 */
export function kvmTestsCanRun(builtFiles: string[]): boolean {
  const missing = builtFiles.filter((f) => !existsSync(f));
  return requireOrSkip(
    hardwareKvmUsable() && missing.length === 0,
    hardwareKvmUsable()
      ? `not built: ${missing.join(', ')} (run npx tsc -p .)`
      : `no usable /dev/kvm (${kvmRouteReason()}); scripts/nested-run.sh runs this file where there is one`,
  );
}
