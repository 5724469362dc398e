// The test guest boots under QEMU and obeys its serial-console command loop.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hasBinary, requireOrSkip } from '../support/env.js';
import { ensureGuestImage, type GuestImage } from '../support/guest-image.js';
import { startGuestVm, type GuestVm } from '../support/qemu.js';

const canRun = requireOrSkip(hasBinary('qemu-system-x86_64'), 'the guest tests need qemu-system-x86_64 (package qemu-system-x86)');

describe.runIf(canRun)('test guest on QEMU (pc, user network)', () => {
  let image: GuestImage;
  let vm: GuestVm | undefined;

  beforeAll(async () => {
    image = await ensureGuestImage();
    vm = await startGuestVm({ image, machine: 'pc', userNet: true, ip: '10.0.2.15/24', mac: '52:54:00:aa:bb:01', cpu: 1 });
    await vm.ready();
  });

  afterAll(async () => {
    await vm?.stop();
  });

  it('prints the ready marker after configuring eth0 from the kernel command line', () => {
    expect(vm!.output()).toMatch(/vio4wd-init: eth0 up addr=10\.0\.2\.15\/24 mac=52:54:00:aa:bb:01 driver=virtio_net/);
    expect(vm!.output()).toContain('VIO4WD-GUEST-READY');
  });

  it('runs a command and returns its output and status', async () => {
    const result = await vm!.exec('uname -r');
    expect(result).toEqual({ status: 0, output: `${image.release}\n` });
  });

  it('reports the exit status of a failing command and its stderr', async () => {
    const result = await vm!.exec('echo to-stderr >&2; exit 7');
    expect(result.status).toBe(7);
    expect(result.output).toBe('to-stderr\n');
    const missing = await vm!.exec('ls /no/such/path');
    expect(missing.status).not.toBe(0);
    expect(missing.output).toMatch(/no\/such\/path/);
  });

  it('passes commands with quotes, control characters and newlines through unchanged', async () => {
    const tricky = `printf '%s|' "a'b" 'c"d' '$HOME' "\x03\x04\x15"; echo\nprintf 'second line\\n'`;
    const result = await vm!.exec(tricky);
    expect(result.status).toBe(0);
    expect(result.output).toBe(`a'b|c"d|$HOME|\x03\x04\x15|\nsecond line\n`);
  });

  it('keeps output without a trailing newline intact and handles empty output', async () => {
    expect(await vm!.exec("printf 'no-newline'")).toEqual({ status: 0, output: 'no-newline' });
    expect(await vm!.exec('true')).toEqual({ status: 0, output: '' });
  });

  it('has eth0 with the requested address and the busybox network tools', async () => {
    const addr = await vm!.exec('ip -4 addr show dev eth0');
    expect(addr.output).toContain('inet 10.0.2.15/24');
    const tools = await vm!.exec('for t in ping ip arping nc; do command -v $t || exit 1; done');
    expect(tools.status).toBe(0);
  });

  it('rejects a command too long for the console and stays usable', async () => {
    await expect(vm!.exec(`echo ${'x'.repeat(5000)}`)).rejects.toThrow(/too long for the serial console/);
    expect((await vm!.exec('echo still-here')).output).toBe('still-here\n');
  });

  it('times out a hanging command, and the guest serves the next one', async () => {
    await expect(vm!.exec('sleep 60', 1500)).rejects.toThrow(/timed out after 1500 ms/);
    expect(await vm!.exec('echo after-timeout')).toEqual({ status: 0, output: 'after-timeout\n' });
  });

  it('ignores malformed console lines', async () => {
    vm!.process.proc.stdin!.write('bogus line\nrun bad!id 5 ZWNobyBubw==\nrun r999 5 !!!notbase64\n');
    expect(await vm!.exec('echo alive')).toEqual({ status: 0, output: 'alive\n' });
    expect(vm!.output()).toMatch(/unknown request 'bogus'/);
    expect(vm!.output()).toMatch(/bad request id or timeout/);
    expect(vm!.output()).toMatch(/request r999 carries no decodable command/);
  });

  it('powers off on stop and QEMU exits by itself', async () => {
    const status = await vm!.stop();
    expect(status).toBe(0);
    vm = undefined;
  });
});

describe.runIf(canRun)('test guest on QEMU (microvm, virtio-mmio found through ACPI)', () => {
  let vm: GuestVm | undefined;

  // Booting belongs in the hook: under TCG on a busy machine it can outlast a test's time limit.
  beforeAll(async () => {
    // QEMU 7.2's microvm under TCG does not always act on the keyboard-controller reset that
    // reboot=k uses (the guest prints "reboot: Restarting system" and QEMU stays up in about two
    // runs of three here); a triple-fault reset (reboot=t) always ends QEMU under -no-reboot.
    vm = await startGuestVm({ machine: 'microvm', userNet: true, ip: '192.168.77.2/24', cpu: 1, extraKernelArgs: ['reboot=t'] });
    await vm.ready();
  });

  afterAll(async () => {
    await vm?.stop();
  });

  it('boots and brings up eth0 on virtio-mmio', async () => {
    expect(vm!.output()).toMatch(/eth0 up addr=192\.168\.77\.2\/24 .*driver=virtio_net/);
    const bus = await vm!.exec('readlink -f /sys/class/net/eth0/device');
    expect(bus.output).toMatch(/LNRO0005/);
  });

  it('ends QEMU when the guest runs reboot -f (QEMU runs with -no-reboot)', async () => {
    // Sent raw: the guest never gets to reply, so exec() cannot be used.
    vm!.process.proc.stdin!.write(`run reboot1 5 ${Buffer.from('reboot -f').toString('base64')}\n`);
    const outcome = await Promise.race([
      vm!.process.exited,
      new Promise((r) => setTimeout(() => r('still running'), 20_000)),
    ]);
    expect(outcome).toBe(0);
    vm = undefined;
  });
});
