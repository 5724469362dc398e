// What vio4wd-vmm refuses before it needs KVM: these run on every machine, with or without
// /dev/kvm (the tests that boot guests live in test/kvm).
import { resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startProcess, stopAll } from '../support/processes.js';
import { ensureTinyGuest, repoRoot } from '../guest/tiny/build.js';

const vmmBin = resolve(repoRoot, 'bin/vio4wd-vmm');
let guest = '';
beforeAll(() => {
  guest = ensureTinyGuest();
});
afterAll(async () => {
  await stopAll();
});

describe('vio4wd-vmm refuses bad input before touching KVM', () => {
  it('fails with a message naming the kernel when it is not a kernel', async () => {
    const vmm = startProcess('node', [vmmBin, '-kernel', resolve(repoRoot, 'package.json')], { label: 'vmm-bad' });
    expect(await vmm.exited).toBe(1);
    expect(vmm.output()).toMatch(/package.json: neither an ELF vmlinux nor a bzImage/);
  });

  it('refuses a configuration error with status 2 and the option name', async () => {
    const vmm = startProcess('node', [vmmBin, '-kernel', guest, '-smp', '300'], { label: 'vmm-bad' });
    expect(await vmm.exited).toBe(2);
    expect(vmm.output()).toMatch(/-smp: 300 vCPUs is outside \[1, 254\]/);
  });

  it('refuses a vhost-user NIC on private memory before touching the socket', async () => {
    const vmm = startProcess('node', [vmmBin, '-kernel', guest, '-chardev', 'socket,id=c0,path=/nonexistent.sock', '-netdev', 'vhost-user,id=n0,chardev=c0'], { label: 'vmm-private' });
    expect(await vmm.exited).toBe(2);
    expect(vmm.output()).toMatch(/-netdev n0: a vhost-user NIC needs guest memory shared with the backend; share memory/);
  });
});
