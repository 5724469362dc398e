// Debian's stock kernel under our VMM: the ELF vmlinux through its PVH entry, with the project's
// busybox initramfs. The kernel must print its banner on our 8250, reach userspace (the init prints
// its ready marker) and answer a command sent over the serial console, both ways through our UART.
// Under the nested-KVM rig this takes about half a minute; on hardware KVM about a second.
import { resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { stopAll } from '../support/processes.js';
import { bootLinux } from '../support/linux-boot.js';
import { ensureGuestImage } from '../support/guest-image.js';
import { kvmTestsCanRun } from '../support/kvm.js';
import { repoRoot } from '../guest/tiny/build.js';


afterAll(async () => {
  await stopAll();
});

describe.runIf(kvmTestsCanRun([resolve(repoRoot, 'dist/vmm/main.js')]))('Debian Linux under vio4wd-vmm', () => {
  it('boots the vmlinux through PVH to userspace and runs a command sent over the serial port', { timeout: 420_000 }, async () => {
    const image = await ensureGuestImage();
    const vmm = await bootLinux(
      [
        '-kernel', image.vmlinux, '-initrd', image.initrd, '-m', '512M', '-smp', '2', '-serial', 'stdio',
        '-append', 'console=ttyS0 earlyprintk=serial,ttyS0 reboot=k panic=-1 nokaslr noxsave',
      ],
      'vmm-linux',
    );
    try {
      expect(vmm.output()).toMatch(/Linux version \d+\.\d+/);
      expect(vmm.output()).toMatch(/"format":"elf-pvh"/);
      // The init's console protocol (test/guest/init): run <id> <timeout> <base64 command>.
      const command = 'uname -r; grep -c ^processor /proc/cpuinfo; cat /proc/cmdline';
      vmm.proc.stdin!.write(`run 1 30 ${Buffer.from(command).toString('base64')}\n`);
      const reply = await vmm.waitForOutput(/<<<1\r?\n([\s\S]*?)\r?\n>>>1 (\d+)/, 60_000);
      expect(reply[2]).toBe('0');
      const lines = reply[1].split(/\r?\n/);
      expect(lines[0]).toBe(image.release);
      expect(lines[1]).toBe('2');
      expect(lines[2]).toMatch(/console=ttyS0/);
    } finally {
      await vmm.stop();
    }
  });

  // One zone of 5 GiB: 3 GiB below the 32-bit MMIO hole and 2 GiB from 4 GiB up. Guest RAM is
  // sparse (only what the guest touches is allocated), so this runs in the rig's 4 GiB L1 too.
  it('boots with 5 GiB of RAM: the e820 map puts 2 GiB above 4 GiB and Linux counts all of it', { timeout: 420_000 }, async () => {
    const image = await ensureGuestImage();
    const vmm = await bootLinux(
      ['-kernel', image.vmlinux, '-initrd', image.initrd, '-m', '5G', '-serial', 'stdio', '-append', 'console=ttyS0 reboot=k panic=-1 nokaslr noxsave'],
      'vmm-linux-5g',
    );
    try {
      const out = vmm.output();
      expect(out).toMatch(/BIOS-e820: \[mem 0x0000000000100000-0x00000000bfffffff\] usable/);
      expect(out).toMatch(/BIOS-e820: \[mem 0x0000000100000000-0x000000017fffffff\] usable/);
      vmm.proc.stdin!.write(`run 1 30 ${Buffer.from('grep MemTotal /proc/meminfo').toString('base64')}\n`);
      const reply = await vmm.waitForOutput(/<<<1\r?\n([\s\S]*?)\r?\n>>>1 (\d+)/, 60_000);
      expect(reply[2]).toBe('0');
      const kib = Number(/MemTotal:\s+(\d+) kB/.exec(reply[1])?.[1]);
      // The kernel keeps some for itself; more than 4 GiB must be left.
      expect(kib).toBeGreaterThan(4 * 1024 * 1024);
      expect(kib).toBeLessThanOrEqual(5 * 1024 * 1024);
    } finally {
      await vmm.stop();
    }
  });

  // cloud-hypervisor's form: the vCPU count as --cpus boot=N and two nodes in one --numa, neither
  // naming memory zones. All RAM belongs to node 0, node 1 has a CPU and no memory.
  it('--cpus boot=2 --numa A B without memory zones: Linux sees two nodes, all RAM on node 0', { timeout: 420_000 }, async () => {
    const image = await ensureGuestImage();
    const vmm = await bootLinux(
      [
        '-kernel', image.vmlinux, '-initrd', image.initrd, '-m', '512M', '--cpus', 'boot=2',
        '--numa', 'guest_numa_id=0,cpus=0', 'guest_numa_id=1,cpus=1,distances=0@20', '-serial', 'stdio',
        '-append', 'console=ttyS0', 'reboot=k', 'panic=-1', 'nokaslr', 'noxsave',
      ],
      'vmm-linux-numa',
    );
    try {
      const command = 'cat /proc/cmdline; cat /sys/devices/system/node/possible; cat /sys/devices/system/node/node0/cpulist; ' +
        'cat /sys/devices/system/node/node1/cpulist; grep MemTotal /sys/devices/system/node/node0/meminfo /proc/meminfo; cat /sys/devices/system/node/node0/distance';
      vmm.proc.stdin!.write(`run 1 30 ${Buffer.from(command).toString('base64')}\n`);
      const reply = await vmm.waitForOutput(/<<<1\r?\n([\s\S]*?)\r?\n>>>1 (\d+)/, 60_000);
      expect(reply[2]).toBe('0');
      const lines = reply[1].split(/\r?\n/);
      expect(lines[0]).toMatch(/^console=ttyS0 reboot=k panic=-1 nokaslr/); // -append's words joined
      expect(lines.slice(1, 4)).toEqual(['0-1', '0', '1']);
      const node0 = Number(/Node 0 MemTotal:\s+(\d+) kB/.exec(reply[1])?.[1]);
      const total = Number(/^MemTotal:\s+(\d+) kB/m.exec(reply[1].replace(/^\/proc\/meminfo:/gm, ''))?.[1]);
      expect(node0).toBeGreaterThan(0);
      expect(node0).toBe(total);
      // node0/distance, the SLIT row of node 0 (the reply may end with an empty line).
      expect(lines.filter((l) => l.trim() !== '').pop()!.trim()).toBe('10 20');
    } finally {
      await vmm.stop();
    }
  });
});
