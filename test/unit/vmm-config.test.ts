import { FLAG_OPTIONS, OPTION_HANDLERS, VALUE_OPTIONS } from '../../vmm/config-cli.js';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseCommandLine } from '../../vmm/config-cli.js';
import { draftFromJson } from '../../vmm/config-json.js';
import { finalizeConfig } from '../../vmm/config-build.js';
import { parseSize, parseKeyValues, parseCpuList } from '../../vmm/config-values.js';

const dir = mkdtempSync(join(tmpdir(), 'vmm-config-'));
const kernel = join(dir, 'vmlinux');
const initrd = join(dir, 'initrd');
const disk = join(dir, 'disk.img');
for (const f of [kernel, initrd, disk]) writeFileSync(f, 'x');
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const base = ['-kernel', kernel];
const cli = (...args: string[]) => parseCommandLine([...base, ...args]);
const json = (doc: unknown) => finalizeConfig(draftFromJson(doc));
const bootSource = { 'boot-source': { kernel_image_path: kernel } };
const vhost = ['-machine', 'mem-share=on', '-chardev', 'socket,id=c0,path=/tmp/x.sock', '-netdev', 'vhost-user,id=net0,chardev=c0'];

describe('the command-line table', () => {
  it('has one handler row for every option the tokenizer accepts, and no other', () => {
    expect(Object.keys(OPTION_HANDLERS).sort()).toEqual([...VALUE_OPTIONS, ...FLAG_OPTIONS].sort());
  });
});

describe('value syntax', () => {
  it('parses sizes with units and rejects garbage', () => {
    expect(parseSize('512M', 'x')).toBe(512 * 2 ** 20);
    expect(parseSize('1G', 'x')).toBe(2 ** 30);
    expect(parseSize('1GiB', 'x')).toBe(2 ** 30);
    expect(parseSize('300', 'x', 2 ** 20)).toBe(300 * 2 ** 20);
    expect(() => parseSize('12Q', '-m')).toThrow(/-m: "12Q" has an unknown unit/);
    expect(() => parseSize('-1', '-m')).toThrow(/-m: "-1" is not a size/);
    expect(() => parseSize('99999999999999999T', '-m')).toThrow(/too large/);
  });
  it('splits key=value lists, doubled commas escape', () => {
    expect([...parseKeyValues('socket,id=a,path=/x,,y', 'o', ['id', 'path'], 'backend')]).toEqual([
      ['backend', 'socket'],
      ['id', 'a'],
      ['path', '/x,y'],
    ]);
    expect(() => parseKeyValues('id=a,id=b', '-drive', ['id'])).toThrow(/-drive: key "id" given twice/);
    expect(() => parseKeyValues('id=a,bogus=1', '-drive', ['id'])).toThrow(/-drive: unknown key "bogus"/);
    expect(() => parseKeyValues('id=a,,', '-drive', ['id'])).not.toThrow();
    expect(() => parseKeyValues('id=a,', '-drive', ['id'])).toThrow(/empty item/);
  });
  it('parses cloud-hypervisor CPU lists', () => {
    expect(parseCpuList('0-3:7', 'c')).toEqual([0, 1, 2, 3, 7]);
    expect(() => parseCpuList('3-1', 'c')).toThrow(/backwards/);
    expect(() => parseCpuList('1:1', 'c')).toThrow(/twice/);
  });
});

describe('command line', () => {
  it('accepts a full StratoVirt command line', () => {
    const c = cli(
      '-name', 'vm1', '-machine', 'microvm,mem-share=on', '-initrd', initrd, '-append', 'console=ttyS0 reboot=k',
      '-smp', 'cpus=2,pin=1:0', '-m', '512M', '-drive', `id=rootfs,file=${disk},readonly=on,direct=off,serial=abc,iothread=io1,iops=200`,
      '-iothread', 'id=io1', '-chardev', 'socket,id=c0,path=/tmp/vu.sock', '-netdev', 'vhost-user,id=net0,chardev=c0,queues=2',
      '-device', 'virtio-net-device,netdev=net0,mac=52:54:00:aa:bb:cc', '-serial', 'stdio', '-api-channel', 'unix:/tmp/api.sock',
      '-D', '/tmp/vmm.log', '-pidfile', '/tmp/vmm.pid', '-daemonize', '-disable-seccomp',
    );
    expect(c).toMatchObject({
      name: 'vm1',
      vcpus: 2,
      vcpuPin: [1, 0],
      initrd,
      append: 'console=ttyS0 reboot=k',
      memory: { size: 512 * 2 ** 20, shared: true },
      drives: [{ id: 'rootfs', path: disk, readOnly: true, direct: false, serial: 'abc', iothread: 'io1', iops: 200 }],
      nets: [{ id: 'net0', socketPath: '/tmp/vu.sock', server: false, mac: '52:54:00:aa:bb:cc', queuePairs: 2 }],
      serial: { kind: 'stdio' },
      apiChannel: '/tmp/api.sock',
      logFile: '/tmp/vmm.log',
      pidFile: '/tmp/vmm.pid',
      daemonize: true,
      iothreads: ['io1'],
    });
  });

  it('defaults: 1 vCPU, 256 MiB private memory, no serial, a generated unicast MAC', () => {
    const c = cli();
    expect(c.vcpus).toBe(1);
    expect(c.memory).toMatchObject({ size: 256 * 2 ** 20, shared: false, zones: [] });
    expect(c.serial).toEqual({ kind: 'none' });
    const n = cli(...vhost).nets[0];
    expect(n.mac).toMatch(/^52:54:00(:[0-9a-f]{2}){3}$/);
    expect(n.server).toBe(false);
  });

  it('takes the vhost-user server mode from the chardev', () => {
    const c = parseCommandLine([...base, '-machine', 'mem-share=on', '-chardev', 'socket,id=c0,path=/tmp/s,server', '-netdev', 'vhost-user,id=n,chardev=c0']);
    expect(c.nets[0].server).toBe(true);
  });

  it.each([
    [['-smp', '0'], /-smp: 0 vCPUs is outside \[1, 254\]/],
    [['-smp', '255'], /-smp: 255 vCPUs is outside \[1, 254\]/],
    [['-smp', 'cpus=2,pin=0'], /-smp pin: 1 host CPUs given for 2 vCPUs/],
    [['-m', '255M'], /-m: 255 MiB of memory is outside \[256 MiB, 512 GiB\]/],
    [['-m', '513G'], /-m: 513 GiB of memory is outside/],
    [['-m', 'lots'], /-m: "lots" is not a size/],
    [['-bogus'], /unknown option -bogus/],
    [['-kernel'], /-kernel: given more than once|a value is required/],
    [['stray'], /unexpected argument "stray"/],
    [['-machine', 'pc'], /machine type "pc" is not supported/],
    [['-netdev', 'tap,id=n0'], /-netdev n0: type "tap" is not supported \(only vhost-user/],
    [['-netdev', 'vhost-user,id=n0'], /chardev= is required/],
    [['-netdev', 'vhost-user,id=n0,chardev=nope'], /chardev "nope" is not declared/],
    [['-chardev', 'socket,id=c0,path=/x', '-netdev', 'vhost-user,id=n0,chardev=c0'], /vhost-user NIC needs guest memory shared.*mem-share=on/],
    [['-device', 'vsock,id=v,guest-cid=3'], /-device: device "vsock" is not supported/],
    [['-balloon', 'deflate-on-oom=true'], /-balloon: the balloon device is not supported/],
    [['-pidfile', '/tmp/p'], /-pidfile: must be used together with -daemonize/],
    [['-api-channel', '/tmp/x'], /-api-channel: "\/tmp\/x" must be unix:/],
    [['-serial', 'pty'], /-serial: "pty" is not supported/],
    [['-drive', `id=d,file=${disk},iops=1000001`], /iops: 1000001 is outside \[0, 1000000\]/],
    [['-drive', `id=d,file=${disk},iothread=nope`], /iothread "nope" is not declared/],
    [['-drive', `id=d,file=/nonexistent/disk`], /\/nonexistent\/disk does not exist/],
    [['-mem-path', 'relative'], /-mem-path: "relative" must be an absolute path/],
    [['-m', '512M', '--memory', 'size=512M'], /memory is given twice/],
    [['--memory', 'size=1G,hugepage_size=2M'], /hugepage_size needs hugepages=on/],
    [['--memory', 'size=0'], /size=0 needs at least one --memory-zone/],
    [['--memory', 'size=1G', '--memory-zone', 'id=z,size=1G'], /memory zones need --memory size=0/],
  ])('rejects %j', (args, message) => {
    expect(() => cli(...(args as string[]))).toThrow(message as RegExp);
  });

  it('requires a kernel', () => {
    expect(() => parseCommandLine(['-m', '512M'])).toThrow(/-kernel: a kernel image is required/);
    expect(() => parseCommandLine(['-kernel', '/nonexistent/k'])).toThrow(/-kernel: \/nonexistent\/k does not exist/);
  });

  it('counts disks, NICs and iothreads against their limits', () => {
    const drives = (n: number) => Array.from({ length: n }, (_, i) => ['-drive', `id=d${i},file=${disk}`]).flat();
    expect(cli(...drives(6)).drives).toHaveLength(6);
    expect(() => cli(...drives(7))).toThrow(/-drive: 7 disks, at most 6/);
    const nics = (n: number) =>
      Array.from({ length: n }, (_, i) => ['-chardev', `socket,id=c${i},path=/tmp/s${i}`, '-netdev', `vhost-user,id=n${i},chardev=c${i}`]).flat();
    expect(cli('-machine', 'mem-share=on', ...nics(2)).nets).toHaveLength(2);
    expect(() => cli('-machine', 'mem-share=on', ...nics(3))).toThrow(/-netdev: 3 NICs, at most 2/);
    const threads = (n: number) => Array.from({ length: n }, (_, i) => ['-iothread', `id=t${i}`]).flat();
    expect(cli(...threads(8)).iothreads).toHaveLength(8);
    expect(() => cli(...threads(9))).toThrow(/-iothread: 9 iothreads, at most 8/);
    expect(() => cli('-iothread', 'id=a', '-iothread', 'id=a')).toThrow(/id "a" is declared twice/);
    expect(cli('-smp', '254').vcpus).toBe(254);
    expect(cli('-m', '256M').memory.size).toBe(256 * 2 ** 20);
    expect(cli('-m', '512G').memory.size).toBe(512 * 2 ** 30);
  });

  it('accepts cloud-hypervisor memory, zones and NUMA', () => {
    const c = cli(
      '-smp', '4', '--memory', 'size=0', '--memory-zone', 'id=mem0,size=256M,shared=on,host_numa_node=0',
      '--memory-zone', `id=mem1,size=256M,shared=on,file=${dir}`, '--numa', 'guest_numa_id=0,cpus=0-1,distances=1@20,memory_zones=mem0',
      '--numa', 'guest_numa_id=1,cpus=2:3,distances=0@20,memory_zones=mem1',
    );
    expect(c.memory.size).toBe(512 * 2 ** 20);
    expect(c.memory.zones.map((z) => [z.id, z.shared, z.hostNumaNode, z.file])).toEqual([
      ['mem0', true, 0, undefined],
      ['mem1', true, undefined, dir],
    ]);
    expect(c.numa[1]).toEqual({ guestNumaId: 1, cpus: [2, 3], distances: [{ destination: 0, distance: 20 }], memoryZones: ['mem1'] });
    const m = cli('--memory', 'size=1G,shared=on,hugepages=on,hugepage_size=2M,mergeable=on').memory;
    expect(m).toMatchObject({ size: 2 ** 30, shared: true, hugepages: true, hugepageSize: 2 * 2 ** 20, mergeable: true });
  });

  it.each([
    [['--numa', 'guest_numa_id=0,cpus=5,memory_zones=z'], /vCPU 5 does not exist/],
    [['--numa', 'guest_numa_id=0,memory_zones=nope'], /memory zone "nope" is not declared/],
    [['--numa', 'guest_numa_id=0,memory_zones=z', '--numa', 'guest_numa_id=0'], /guest_numa_id 0 is used twice/],
    [['--numa', 'guest_numa_id=0,memory_zones=z,distances=7@20'], /distance to node 7, which is not declared/],
    [['--numa', 'guest_numa_id=0,memory_zones=z,distances=0@30'], /distance of a node to itself must be 10/],
    [['--numa', 'guest_numa_id=0,cpus=0,memory_zones=z', '--numa', 'guest_numa_id=1,cpus=0'], /vCPU 0 is already in node 0/],
    [['--memory-zone', 'id=z,size=256M'], /--memory-zone: zone id "z" is used twice/],
  ])('rejects NUMA setup %j', (args, message) => {
    expect(() => cli('--memory', 'size=0', '--memory-zone', 'id=z,size=256M', ...(args as string[]))).toThrow(message as RegExp);
  });

  it('vhost-user with private zones is refused, with shared zones accepted', () => {
    const nic = ['-chardev', 'socket,id=c0,path=/x', '-netdev', 'vhost-user,id=n0,chardev=c0'];
    expect(() => cli('--memory', 'size=0', '--memory-zone', 'id=z,size=256M', ...nic)).toThrow(/share memory/);
    expect(cli('--memory', 'size=0', '--memory-zone', 'id=z,size=256M,shared=on', ...nic).nets).toHaveLength(1);
    expect(cli('--memory', 'size=256M,shared=on', ...nic).nets).toHaveLength(1);
  });

  it('reads -config JSON and allows only process options beside it', () => {
    const file = join(dir, 'vm.json');
    writeFileSync(file, JSON.stringify({ ...bootSource, 'machine-config': { vcpu_count: 2, mem_size: 536870912 } }));
    const c = parseCommandLine(['-config', file, '-api-channel', 'unix:/tmp/a.sock', '-D', '/tmp/l']);
    expect(c).toMatchObject({ vcpus: 2, memory: { size: 512 * 2 ** 20 }, apiChannel: '/tmp/a.sock', logFile: '/tmp/l' });
    expect(() => parseCommandLine(['-config', file, '-smp', '2'])).toThrow(/-smp: cannot be combined with -config/);
    writeFileSync(file, '{ not json');
    expect(() => parseCommandLine(['-config', file])).toThrow(/-config: .* is not valid JSON/);
    expect(() => parseCommandLine(['-config', join(dir, 'missing.json')])).toThrow(/-config: cannot read .*missing.json \(ENOENT\)/);
  });
});

describe('JSON configuration', () => {
  it('accepts StratoVirt keys with the same meaning as the command line', () => {
    const c = json({
      ...bootSource,
      name: 'j1',
      'boot-source': { kernel_image_path: kernel, boot_args: 'console=ttyS0', initrd_fs_path: initrd },
      'machine-config': { type: 'MicroVm', vcpu_count: 2, mem_size: 268435456, 'mem-share': true, vcpu_pin: [0, 1] },
      drive: [{ drive_id: 'rootfs', path_on_host: disk, read_only: true, direct: true, serial_num: '11', iothread: 'io1', iops: 5 }],
      net: [{ iface_id: 'net0', socket_path: '/tmp/vu.sock', server: true, mac: '0e:90:df:9f:a8:88', queues: 2 }],
      serial: { stdio: true },
      iothread: [{ id: 'io1' }],
    });
    expect(c).toMatchObject({
      name: 'j1',
      append: 'console=ttyS0',
      initrd,
      vcpus: 2,
      vcpuPin: [0, 1],
      memory: { size: 268435456, shared: true },
      drives: [{ id: 'rootfs', readOnly: true, direct: true, serial: '11', iothread: 'io1', iops: 5 }],
      nets: [{ id: 'net0', socketPath: '/tmp/vu.sock', server: true, mac: '0e:90:df:9f:a8:88', queuePairs: 2 }],
      serial: { kind: 'stdio' },
    });
    expect(json({ ...bootSource, serial: { socket_path: '/tmp/ser' } }).serial).toEqual({ kind: 'socket', path: '/tmp/ser' });
    expect(json({ ...bootSource, memory: { size: '1G', mergeable: true } }).memory).toMatchObject({ size: 2 ** 30, mergeable: true });
  });

  it.each([
    [{ bogus: 1 }, /config: unknown key "bogus"/],
    [{ 'machine-config': { vcpu_count: 255 } }, /machine-config.vcpu_count: 255 vCPUs is outside \[1, 254\]/],
    [{ 'machine-config': { vcpu_count: '2' } }, /machine-config.vcpu_count: must be an integer/],
    [{ 'machine-config': { mem_size: 1024 } }, /machine-config.mem_size: 1 KiB of memory is outside \[256 MiB, 512 GiB\]/],
    [{ 'machine-config': { extra: true } }, /machine-config: unknown key "extra"/],
    [{ 'machine-config': { type: 'pc' } }, /machine-config.type: "pc" is not supported/],
    [{ drive: [{ drive_id: 'a' }] }, /drive\[0\].path_on_host: is required/],
    [{ drive: Array.from({ length: 7 }, (_, i) => ({ drive_id: `d${i}`, path_on_host: disk })) }, /drive: 7 disks, at most 6/],
    [{ net: [{ iface_id: 'n', host_dev_name: 'tap0' }] }, /not implemented by this VMM: net\[0\].host_dev_name \(a tap NIC; give socket_path/],
    [{ net: [{ iface_id: 'n', socket_path: '/x' }] }, /vhost-user NIC needs guest memory shared/],
    [{ 'machine-config': { 'mem-share': true }, net: [1, 2, 3].map((i) => ({ iface_id: `n${i}`, socket_path: '/x' })) }, /net: 3 NICs, at most 2/],
    [{ net: [{ iface_id: 'n', socket_path: '/x', mac: 'ff:ff:ff:ff:ff:ff' }] }, /is a multicast address/],
    [{ console: [] }, /not implemented by this VMM: console \(virtio-console; use serial\); remove it/],
    [{ balloon: {} }, /not implemented by this VMM: balloon \(virtio-balloon\); remove it/],
    [{ serial: { stdio: 'yes' } }, /serial.stdio: must be true or false/],
    [{ drive: {} }, /drive: must be an array/],
  ])('rejects %j', (doc, message) => {
    expect(() => json({ ...bootSource, ...(doc as object) })).toThrow(message as RegExp);
  });

  it('requires boot-source.kernel_image_path', () => {
    expect(() => json({})).toThrow(/boot-source.kernel_image_path: a kernel image is required/);
  });
});
