// Debian's kernel under our VMM: the ELF vmlinux through its PVH entry, with the project's
// initramfs, must print its banner on our 8250. On this project's build machine /dev/kvm is PVM,
// where guest kernel code is emulated at about 1.4 M instructions/s, so this takes tens of seconds
// (and the boot cannot go much further: the kernel's int3 self-test is fatal there).
import { accessSync, constants, existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { startProcess, stopAll } from '../support/processes.js';
import { requireOrSkip } from '../support/env.js';
import { ensureGuestImage } from '../support/guest-image.js';
import { repoRoot } from '../guest/tiny/build.js';

const vmmBin = resolve(repoRoot, 'bin/vio4wd-vmm');
const kvmUsable = (() => {
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
    return existsSync(resolve(repoRoot, 'dist/vmm/main.js'));
  } catch {
    return false;
  }
})();

afterAll(async () => {
  await stopAll();
});

describe.runIf(requireOrSkip(kvmUsable, '/dev/kvm is not usable or dist/ is not built (run npx tsc -p .)'))('Debian Linux under vio4wd-vmm', () => {
  it('boots the vmlinux through PVH and prints "Linux version" on our serial port', { timeout: 420_000 }, async () => {
    const image = await ensureGuestImage();
    const vmm = startProcess(
      'node',
      [
        vmmBin, '-kernel', image.vmlinux, '-initrd', image.initrd, '-m', '512M', '-serial', 'stdio',
        // noxsave: XRSTOR is not emulated on PVM hosts; earlyprintk shows the banner before the console driver.
        '-append', 'console=ttyS0 earlyprintk=serial,ttyS0 reboot=k panic=-1 noxsave nokaslr',
      ],
      { label: 'vmm-linux' },
    );
    try {
      await vmm.waitForOutput(/Linux version \d+\.\d+/, 360_000);
      expect(vmm.output()).toMatch(/"format":"elf-pvh"/);
    } finally {
      await vmm.stop();
    }
  });
});
