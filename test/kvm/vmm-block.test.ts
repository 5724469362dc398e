// virtio-blk under real KVM with the tiny guest: the guest reads sector 0, asks for the serial
// (GET_ID), writes sector 1, reads past the end, sends a short read and an unknown request type;
// the test checks what the guest saw and what happened to the image file. Read-only, O_DIRECT,
// the JSON form, a shared -iothread and the iops limit are covered too.
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startProcess, stopAll, type StartedProcess } from '../support/processes.js';
import { kvmTestsCanRun } from '../support/kvm.js';
import { ensureTinyGuest, repoRoot } from '../guest/tiny/build.js';

const vmmBin = resolve(repoRoot, 'bin/vio4wd-vmm');
const canRun = kvmTestsCanRun([resolve(repoRoot, 'dist/vmm/block-device.js')]);

const MARKER = 'VIO4WD-DISK sector zero marker';
let guest = '';
let dir = '';

beforeAll(() => {
  if (!canRun) return;
  guest = ensureTinyGuest();
  dir = mkdtempSync(join(tmpdir(), `vmm-blk-${process.pid}-`));
});
afterAll(async () => {
  await stopAll();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** A disk image with the marker in sector 0 and a recognisable pattern everywhere else. */
function makeImage(name: string, size: number): string {
  const bytes = Buffer.alloc(size);
  for (let i = 0; i < size; i++) bytes[i] = (i * 7 + 3) & 0xff;
  bytes.fill(0, 0, 512);
  bytes.write(MARKER, 0, 'latin1');
  const path = join(dir, name);
  writeFileSync(path, bytes);
  return path;
}

function sector(image: Buffer, n: number): Buffer {
  return image.subarray(n * 512, (n + 1) * 512);
}

/** Runs the guest to its i8042 reset; the log goes to a file so that it cannot split serial lines. */
async function runGuest(args: string[], label: string, fromJson = false): Promise<{ serial: string; log: string }> {
  const logFile = join(dir, `${label}.log`);
  const vmm = startProcess('node', [vmmBin, ...(fromJson ? [] : ['-kernel', guest, '-serial', 'stdio']), '-D', logFile, ...args], { label });
  await vmm.waitForOutput(/tiny-guest: blk done/, 60_000);
  expect(await vmm.exited, vmm.output()).toBe(0);
  return { serial: vmm.output(), log: readFileSync(logFile, 'utf8') };
}

/**
 * Waits for `pattern` on the VMM's stdout alone (the guest's serial console). Its log lines go to
 * stderr, and in output(), which merges both, one can land in the middle of a serial line.
 * Listens from the call on, so call it right after starting the process.
 */
function waitForSerial(vmm: StartedProcess, pattern: RegExp, timeoutMs: number): Promise<void> {
  const stdout = vmm.proc.stdout!;
  let text = '';
  return new Promise((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      text += chunk.toString('utf8');
      if (!pattern.test(text)) return;
      clearTimeout(timer);
      stdout.off('data', onData);
      resolve();
    };
    const timer = setTimeout(() => {
      stdout.off('data', onData);
      reject(new Error(`timed out after ${timeoutMs} ms waiting for ${pattern} on the serial console of ${vmm.pid}:\n${vmm.output()}`));
    }, timeoutMs);
    stdout.on('data', onData);
  });
}

describe.runIf(canRun)('virtio-blk with the tiny guest', () => {
  it('reads sector 0, answers GET_ID with the serial, writes sector 1 to the file, refuses bad requests and keeps running', async () => {
    const image = makeImage('rw.img', 1024 * 1024);
    const before = readFileSync(image);
    const { serial: out, log } = await runGuest(
      ['-append', 'tiny.blk-exit', '-drive', `id=disk0,file=${image},serial=SN-4242,if=none`, '-device', 'virtio-blk-device,drive=disk0,id=blk0'],
      'vmm-blk-rw',
    );
    expect(out).toMatch(/tiny-guest: blk sectors 2048 ro 0/);
    expect(out).toMatch(/tiny-guest: blk id "SN-4242" status 0/);
    expect(out).toContain(`tiny-guest: blk sector 0 "${MARKER}" status 0`);
    expect(out).toMatch(/tiny-guest: blk write sector 1 status 0/);
    expect(out).toMatch(/tiny-guest: blk sector 1 "written by the tiny guest" status 0/);
    // Beyond the last sector and a length that is not whole sectors: IOERR; an unknown type: UNSUPP.
    expect(out).toMatch(/tiny-guest: blk read past the end status 1/);
    expect(out).toMatch(/tiny-guest: blk short read status 1/);
    expect(out).toMatch(/tiny-guest: blk unknown request status 2/);
    expect(log).toMatch(/sectors 2048\.\.\+1 lie beyond the end of the disk/);
    // The guest went on to reset the VM through the i8042: the VMM survived the bad requests.
    expect(log).toMatch(/guest ended: i8042 reset/);

    const after = readFileSync(image);
    const expected = Buffer.alloc(512);
    expected.write('written by the tiny guest', 0, 'latin1');
    expect(sector(after, 1).equals(expected)).toBe(true);
    expect(sector(after, 0).equals(sector(before, 0))).toBe(true);
    expect(after.subarray(1024).equals(before.subarray(1024))).toBe(true);
  });

  it('read-only: offers VIRTIO_BLK_F_RO, refuses the write with IOERR and leaves the file unchanged', async () => {
    const image = makeImage('ro.img', 512 * 1024);
    const before = readFileSync(image);
    const { serial: out, log } = await runGuest(
      ['-append', 'tiny.blk-exit', '-drive', `id=disk0,file=${image},readonly=on`, '-device', 'virtio-blk-device,drive=disk0,serial=RO-1'],
      'vmm-blk-ro',
    );
    expect(out).toMatch(/tiny-guest: blk sectors 1024 ro 1/);
    expect(out).toMatch(/tiny-guest: blk id "RO-1" status 0/);
    expect(out).toContain(`tiny-guest: blk sector 0 "${MARKER}" status 0`);
    expect(out).toMatch(/tiny-guest: blk write sector 1 status 1/);
    expect(log).toMatch(/write refused: the drive is read-only/);
    expect(readFileSync(image).equals(before)).toBe(true);
  });

  it('direct=on from the JSON form on a shared iothread: whole blocks only, reads and writes go through O_DIRECT', async () => {
    // 1 MiB + 512: the tail beyond the last 4 KiB block is not part of a direct disk.
    const image = makeImage('direct.img', 1024 * 1024 + 512);
    const other = makeImage('other.img', 64 * 1024);
    const config = join(dir, 'vm.json');
    writeFileSync(
      config,
      JSON.stringify({
        'boot-source': { kernel_image_path: guest, boot_args: 'tiny.blk-exit' },
        'machine-config': { vcpu_count: 1, mem_size: '256M' },
        iothread: [{ id: 'io0' }],
        drive: [
          { drive_id: 'd0', path_on_host: image, direct: true, serial_num: 'DIRECT', iothread: 'io0' },
          { drive_id: 'd1', path_on_host: other, read_only: true, iothread: 'io0' },
        ],
        serial: { stdio: true },
      }),
    );
    const before = readFileSync(image);
    const { serial: out, log } = await runGuest(['-config', config], 'vmm-blk-direct', true);
    // The guest uses the first block device it finds: d0.
    expect(out).toMatch(/tiny-guest: blk sectors 2048 ro 0/);
    expect(out).toMatch(/tiny-guest: blk id "DIRECT" status 0/);
    expect(out).toContain(`tiny-guest: blk sector 0 "${MARKER}" status 0`);
    expect(out).toMatch(/tiny-guest: blk sector 1 "written by the tiny guest" status 0/);
    expect(log).toMatch(/"iothread":"io0","drive":"d0","msg":"drive d0: queue of 16 started"/);
    const after = readFileSync(image);
    expect(after.length).toBe(before.length);
    expect(sector(after, 1).toString('latin1', 0, 25)).toBe('written by the tiny guest');
    // The read-modify-write of the 4 KiB block kept its other sectors.
    expect(after.subarray(1024, 4096).equals(before.subarray(1024, 4096))).toBe(true);
    expect(after.subarray(4096).equals(before.subarray(4096))).toBe(true);
  });

  it('iops limit: N one-sector reads take at least (N - 2) / iops seconds', async () => {
    const image = makeImage('iops.img', 256 * 1024);
    const iops = 20;
    const reads = 30;
    const vmm = startProcess(
      'node',
      [vmmBin, '-kernel', guest, '-serial', 'stdio', '-D', join(dir, 'iops.log'), '-append', `tiny.blk-exit tiny.blk-reads=${reads}`, '-iothread', 'id=io1',
        '-drive', `id=disk0,file=${image},iops=${iops}`, '-device', 'virtio-blk-device,drive=disk0,iothread=io1'],
      { label: 'vmm-blk-iops' },
    );
    await vmm.waitForOutput(/tiny-guest: blk reads start/, 60_000);
    const started = performance.now();
    await vmm.waitForOutput(/tiny-guest: blk reads done \d+\r?\n/, 60_000);
    const seconds = (performance.now() - started) / 1000;
    expect(vmm.output()).toMatch(new RegExp(`tiny-guest: blk reads done ${reads}`));
    // The bucket holds one token at this rate, so only the first read can go at once; one more
    // read's worth is left as slack for when the two serial lines reach us.
    expect(seconds).toBeGreaterThanOrEqual((reads - 2) / iops);
    expect(await vmm.exited).toBe(0);
  });

  it('SIGTERM ends a VM whose iothread sleeps in poll, even after the serial reader went away', async () => {
    const image = makeImage('term.img', 64 * 1024);
    const vmm = startProcess(
      'node',
      [vmmBin, '-kernel', guest, '-serial', 'stdio', '-append', 'tiny.blk-reads=50', '-iothread', 'id=io2',
        '-drive', `id=disk0,file=${image},iops=100`, '-device', 'virtio-blk-device,drive=disk0,iothread=io2'],
      { label: 'vmm-blk-term' },
    );
    await waitForSerial(vmm, /tiny-guest: blk reads start/, 60_000);
    // The guest keeps printing: the next serial write fails with EPIPE.
    vmm.proc.stdout!.destroy();
    await vmm.waitForOutput(/serial: stdout is gone; guest output is dropped/, 30_000);
    // Let the guest finish its reads and go idle (no NIC: it halts), then stop the VM.
    await new Promise((r) => setTimeout(r, 1500));
    process.kill(vmm.pid, 'SIGTERM');
    expect(await vmm.exited).toBe(0);
    expect(vmm.output()).toMatch(/"reason":"SIGTERM","msg":"VM ended"/);
  });

  it('query-devices on the api-channel lists the disk with its iothread', async () => {
    const image = makeImage('qmp.img', 64 * 1024);
    const api = join(dir, 'qmp.sock');
    const vmm = startProcess(
      'node',
      [vmmBin, '-kernel', guest, '-serial', 'stdio', '-api-channel', `unix:${api}`, '-iothread', 'id=io3',
        '-drive', `id=disk7,file=${image},readonly=on,serial=Q-7`, '-device', 'virtio-blk-device,drive=disk7,iothread=io3'],
      { label: 'vmm-blk-qmp' },
    );
    await vmm.waitForOutput(/no usable virtio-net device/, 60_000);
    const socket = connect(api);
    socket.setEncoding('utf8');
    let buffer = '';
    socket.on('data', (d: string) => (buffer += d));
    const next = async (): Promise<Record<string, unknown>> => {
      for (let i = 0; i < 200 && !buffer.includes('\n'); i++) await new Promise((r) => setTimeout(r, 25));
      const nl = buffer.indexOf('\n');
      if (nl < 0) throw new Error(`no QMP reply (buffer: ${buffer})`);
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 1);
      return JSON.parse(line);
    };
    try {
      expect(await next()).toHaveProperty('QMP');
      socket.write('{"execute":"qmp_capabilities"}\n');
      expect(await next()).toEqual({ return: {} });
      socket.write('{"execute":"query-devices"}\n');
      const devices = (await next()).return as Array<Record<string, unknown>>;
      expect(devices.find((d) => d.type === 'virtio-blk')).toMatchObject({
        id: 'disk7', readonly: true, serial: 'Q-7', iothread: 'io3', sectors: 128, transport: 'virtio-mmio',
      });
      socket.write('{"execute":"quit"}\n');
      expect(await next()).toEqual({ return: {} });
      expect(await vmm.exited).toBe(0);
    } finally {
      socket.destroy();
      await vmm.stop();
    }
  });
});
