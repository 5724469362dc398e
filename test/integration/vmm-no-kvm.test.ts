// What vio4wd-vmm refuses before it needs KVM: these run on every machine, with or without
// /dev/kvm (the tests that boot guests live in test/kvm).
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, lstatSync } from 'node:fs';
import { createServer, connect, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { unixListen } from '../../sys/unix-socket.js';
import { close } from '../../sys/fd.js';
import { startProcess, stopAll, waitFor } from '../support/processes.js';
import { ensureTinyGuest, repoRoot } from '../guest/tiny/build.js';

const vmmBin = resolve(repoRoot, 'bin/vio4wd-vmm');
let guest = '';
let dir = '';
beforeAll(() => {
  guest = ensureTinyGuest();
  dir = mkdtempSync(join(tmpdir(), 'vmm-no-kvm-'));
});
afterAll(async () => {
  await stopAll();
  rmSync(dir, { recursive: true, force: true });
});

/** Runs the VMM with the tiny guest as kernel; resolves with its exit status and output. */
async function run(label: string, ...args: string[]): Promise<{ code: number | string; output: string }> {
  const vmm = startProcess('node', [vmmBin, '-kernel', guest, ...args], { label });
  const code = await vmm.exited;
  return { code, output: vmm.output() };
}

/** A file with content that must survive the VMM's start. */
function precious(name: string): string {
  const path = join(dir, name);
  writeFileSync(path, 'keep me');
  return path;
}

function staleSocket(name: string): string {
  const path = join(dir, name);
  close(unixListen(path, 1));
  return path;
}

async function liveSocket(name: string): Promise<{ path: string; server: Server }> {
  const path = join(dir, name);
  const server = createServer((c) => {
    c.on('error', () => undefined);
    c.end('alive');
  });
  await new Promise<void>((r) => server.listen(path, r));
  return { path, server };
}

const NIC_SHARED = ['-machine', 'microvm,mem-share=on', '-netdev', 'vhost-user,id=n0,chardev=c0', '-device', 'virtio-net-device,netdev=n0'];

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

describe('vio4wd-vmm removes only stale sockets', () => {
  it('-serial unix: on a regular file: exit 2 naming the option and path, the file untouched', async () => {
    const path = precious('serial-file');
    const r = await run('vmm-serial-file', '-serial', `unix:${path}`);
    expect(r.code).toBe(2);
    expect(r.output).toContain(`-serial: ${path} exists and is not a socket; it is left alone`);
    expect(readFileSync(path, 'utf8')).toBe('keep me');
  });

  it('a server-mode chardev on a regular file: exit 2, the file untouched', async () => {
    const path = precious('chardev-file');
    const r = await run('vmm-chardev-file', '-chardev', `socket,id=c0,path=${path},server`, ...NIC_SHARED);
    expect(r.code).toBe(2);
    expect(r.output).toContain(`-chardev c0: ${path} exists and is not a socket`);
    expect(readFileSync(path, 'utf8')).toBe('keep me');
  });

  it('a client-mode chardev whose path is a regular file: exit 2', async () => {
    const path = precious('client-file');
    const r = await run('vmm-client-file', '-chardev', `socket,id=c0,path=${path}`, ...NIC_SHARED);
    expect(r.code).toBe(2);
    expect(r.output).toContain(`-chardev c0: ${path} exists and is not a socket`);
    expect(readFileSync(path, 'utf8')).toBe('keep me');
  });

  it('-api-channel on a socket another process serves: exit 2, the listener keeps working', async () => {
    const { path, server } = await liveSocket('live-api.sock');
    try {
      const r = await run('vmm-api-live', '-api-channel', `unix:${path}`);
      expect(r.code).toBe(2);
      expect(r.output).toContain(`-api-channel: ${path} is in use: another process is listening on it`);
      const reply = await new Promise<string>((res, rej) => {
        let text = '';
        connect(path).on('data', (d) => (text += d)).on('end', () => res(text)).on('error', rej);
      });
      expect(reply).toBe('alive');
    } finally {
      await new Promise((r) => server.close(r));
    }
  });

  it('a stale socket is removed, but only once every check has passed', async () => {
    const stale = staleSocket('stale-serial.sock');
    const staleIno = lstatSync(stale).ino;
    const bad = precious('api-file');
    // The api-channel is refused: the stale serial socket, though checked first, stays...
    let r = await run('vmm-stale', '-serial', `unix:${stale}`, '-api-channel', `unix:${bad}`);
    expect(r.code).toBe(2);
    expect(r.output).toContain(`-api-channel: ${bad} exists and is not a socket`);
    expect(lstatSync(stale).isSocket()).toBe(true);
    // ...and goes once nothing else is wrong (the run then stops at KVM or is ended by us).
    const vmm = startProcess('node', [vmmBin, '-kernel', guest, '-serial', `unix:${stale}`, '-D', join(dir, 'stale.log')], { label: 'vmm-stale-ok' });
    await waitFor(() => !existsSync(stale) || lstatSync(stale).ino !== staleIno, 20_000, 'the stale socket to be replaced');
    await vmm.stop();
  });

  it('two options cannot listen on the same path', async () => {
    const path = join(dir, 'same.sock');
    const r = await run('vmm-same', '-serial', `unix:${path}`, '-api-channel', `unix:${path}`);
    expect(r.code).toBe(2);
    expect(r.output).toContain(`-api-channel: ${path} is also the socket of -serial`);
  });

  it('a socket path in a missing directory: exit 2, the directory is not created', async () => {
    const path = join(dir, 'no-such-dir', 'vm.sock');
    const r = await run('vmm-api-nodir', '-api-channel', `unix:${path}`);
    expect(r.code).toBe(2);
    expect(r.output).toContain(`-api-channel: directory ${join(dir, 'no-such-dir')} does not exist`);
    expect(existsSync(join(dir, 'no-such-dir'))).toBe(false);
  });
});

describe('vio4wd-vmm: log and pid file errors are clear', () => {
  it('-D on a directory: exit 2 and one line, no stack trace', async () => {
    const r = await run('vmm-log-dir', '-D', dir);
    expect(r.code).toBe(2);
    expect(r.output.trim()).toBe(`vio4wd-vmm: -D: ${dir} is a directory; give a file name`);
  });

  it('-D in a missing directory: exit 2, nothing created', async () => {
    const path = join(dir, 'logs-missing', 'vm.log');
    const r = await run('vmm-log-nodir', '-D', path);
    expect(r.code).toBe(2);
    expect(r.output).toContain(`-D: directory ${join(dir, 'logs-missing')} does not exist (it is not created)`);
    expect(existsSync(join(dir, 'logs-missing'))).toBe(false);
  });

  it('-pidfile that exists: exit 2 before anything starts, the file untouched', async () => {
    const path = precious('vm.pid');
    const r = await run('vmm-pid-exists', '-daemonize', '-pidfile', path);
    expect(r.code).toBe(2);
    expect(r.output).toContain(`-pidfile: ${path} exists already`);
    expect(readFileSync(path, 'utf8')).toBe('keep me');
  });

  it('-pidfile in a missing directory: exit 2', async () => {
    const path = join(dir, 'run-missing', 'vm.pid');
    const r = await run('vmm-pid-nodir', '-daemonize', '-pidfile', path);
    expect(r.code).toBe(2);
    expect(r.output).toContain(`-pidfile: directory ${join(dir, 'run-missing')} does not exist`);
  });
});

describe('vio4wd-vmm checks host resources before KVM', () => {
  it('a -mem-path that does not exist', async () => {
    const r = await run('vmm-mempath', '-mem-path', join(dir, 'no-hugepages'));
    expect(r.code).toBe(2);
    expect(r.output).toContain(`-mem-path: ${join(dir, 'no-hugepages')} does not exist`);
  });

  it('a memory zone file that does not exist, named by its zone', async () => {
    const r = await run('vmm-zonefile', '--memory', 'size=0', '--memory-zone', `id=z0,size=256M,file=${join(dir, 'nofile')}`);
    expect(r.code).toBe(2);
    expect(r.output).toContain(`--memory-zone z0: ${join(dir, 'nofile')} does not exist`);
  });

  it('a hugepage zone whose size is not a multiple of the huge page size', async () => {
    const r = await run('vmm-zone-huge', '--memory', 'size=0', '--memory-zone', 'id=z0,size=257M,hugepages=on');
    expect(r.code).toBe(2);
    expect(r.output).toMatch(/--memory-zone z0: 257 MiB is not a multiple of the huge page size \d+ (MiB|GiB)/);
  });

  it.skipIf(!existsSync('/dev/hugepages') || !/hugetlbfs/.test(readFileSync('/proc/mounts', 'utf8')))(
    'a -mem-path on hugetlbfs with a size that is not a multiple of its page size',
    async () => {
      const r = await run('vmm-mempath-align', '-mem-path', '/dev/hugepages', '-m', '257M');
      expect(r.code).toBe(2);
      expect(r.output).toMatch(/-mem-path: 257 MiB is not a multiple of the huge page size \d+ (MiB|GiB) of \/dev\/hugepages/);
    },
  );

  it('a host NUMA node the host does not have', async () => {
    const r = await run('vmm-numa', '--memory', 'size=0', '--memory-zone', 'id=z0,size=256M,host_numa_node=1023');
    expect(r.code).toBe(2);
    expect(r.output).toContain('--memory-zone z0: host_numa_node 1023 does not exist on this host');
  });

  it('a pin CPU this process may not use', async () => {
    const r = await run('vmm-pin', '-smp', 'cpus=2,pin=0:4095');
    expect(r.code).toBe(2);
    expect(r.output).toContain('-smp pin: vCPU 1 is pinned to host CPU 4095, which this process may not use');
  });

  it('an image that cannot hold one sector, named by its drive', async () => {
    const image = join(dir, 'tiny.img');
    writeFileSync(image, Buffer.alloc(100));
    const r = await run('vmm-blk-small', '-drive', `id=d9,file=${image}`, '-device', 'virtio-blk-device,drive=d9');
    expect(r.code).toBe(2);
    expect(r.output).toContain(`-drive d9: ${image}: the image is 100 bytes, smaller than one 512-byte block`);
  });

  it('a direct=on image of less than one 4 KiB block', async () => {
    const image = join(dir, 'small-direct.img');
    writeFileSync(image, Buffer.alloc(3072));
    const r = await run('vmm-blk-direct', '-drive', `id=d1,file=${image},direct=on`, '-device', 'virtio-blk-device,drive=d1');
    expect(r.code).toBe(2);
    expect(r.output).toMatch(/-drive d1: .*small-direct\.img: (the image is 3072 bytes, smaller than one 4096-byte block|cannot open \(EINVAL\))/);
  });

  it('JSON: errors name the key (serial.socket_path on a regular file)', async () => {
    const path = precious('json-serial');
    const config = join(dir, 'vm.json');
    writeFileSync(config, JSON.stringify({ 'boot-source': { kernel_image_path: guest }, serial: { socket_path: path } }));
    const vmm = startProcess('node', [vmmBin, '-config', config], { label: 'vmm-json-serial' });
    expect(await vmm.exited).toBe(2);
    expect(vmm.output()).toContain(`serial.socket_path: ${path} exists and is not a socket`);
    expect(readFileSync(path, 'utf8')).toBe('keep me');
  });

  // Only meaningful where /dev/kvm is missing; with KVM this VM would boot.
  it.skipIf(existsSync('/dev/kvm'))('-smp 254 without /dev/kvm fails before any vCPU thread starts', async () => {
    const log = join(dir, 'smp254.log');
    const r = await run('vmm-smp254', '-smp', '254', '-D', log);
    expect(r.code).toBe(1);
    expect(r.output).toContain('/dev/kvm: cannot open (ENOENT); KVM is required');
    const text = readFileSync(log, 'utf8');
    expect(text).toContain('VM creation failed');
    expect(text).not.toContain('starting vCPU threads');
  });
});

