// The examples of StratoVirt's and cloud-hypervisor's documentation, copied verbatim: what this
// VMM implements is accepted as printed, and what it does not is refused with a message that says
// so (never silently dropped).
import { describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseCommandLine } from '../../vmm/config-cli.js';
import { draftFromJson } from '../../vmm/config-json.js';
import { finalizeConfig } from '../../vmm/config-build.js';
import { ConfigError } from '../../vmm/config-types.js';

/** Splits a shell command as printed (backslash-newline continuations, no quoting in these examples). */
function words(command: string): string[] {
  return command.replace(/\\\n/g, ' ').trim().split(/\s+/).filter(Boolean);
}
const GiB = 2 ** 30;
/** The examples have no kernel; this one is never read (files are not checked here). */
const noFiles = { checkFiles: false };
const ch = (text: string) => parseCommandLine(['-kernel', '/boot/vmlinux', ...words(text)], noFiles);

// StratoVirt, "Configuring a VM", Command Line Configuration, Example 2.
const STRATOVIRT_COMMAND = `$ /path/to/stratovirt \\
    -kernel /path/to/vmlinux.bin \\
    -append console=ttyS0 root=/dev/vda rw reboot=k panic=1 \\
    -drive file=/home/rootfs.ext4,id=rootfs,readonly=false \\
    -api-channel unix:/tmp/stratovirt.socket \\
    -serial stdio`;

// StratoVirt, "Configuring a VM", JSON Configuration, Example 1.
const STRATOVIRT_JSON = `{
  "boot-source": {
    "kernel_image_path": "/path/to/vmlinux.bin",
    "boot_args": "console=ttyS0 reboot=k panic=1 pci=off tsc=reliable ipv6.disable=1 root=/dev/vda quiet"
  },
  "machine-config": {
    "type": "MicroVm",
    "vcpu_count": 2,
    "mem_size": 268435456,
    "omit_vm_memory": false
  },
  "drive": [
    {
      "drive_id": "rootfs",
      "path_on_host": "/path/to/rootfs",
      "serial_num": "11111111",
      "direct": true,
      "read_only": false,
      "iops": 200000,
      "iothread": "iothread2"
    }
  ],
  "net": [
    {
      "iface_id": "net0",
      "host_dev_name": "tap0",
      "mac": "0e:90:df:9f:a8:88",
      "iothread": "iothread1"
    }
  ],
  "console": [
   {
    "console_id": "charconsole0",
    "socket_path": "/path/to/console.socket"
   }
  ],
  "serial": {
    "stdio": true
  },
  "vsock": {
    "vsock_id": "vsock-123321132",
    "guest_cid": 4
  },
  "iothread": [
    {"id": "iothread1"},
    {"id": "iothread2"}
  ]
}
`;

describe("StratoVirt's command line example", () => {
  it('is accepted as printed: the -append words are joined, the drive is a virtio-blk disk', () => {
    const argv = words(STRATOVIRT_COMMAND).slice(2); // "$" and the program
    const c = parseCommandLine(argv, noFiles);
    expect(c.kernel).toBe('/path/to/vmlinux.bin');
    expect(c.append).toBe('console=ttyS0 root=/dev/vda rw reboot=k panic=1');
    expect(c.drives).toEqual([{ id: 'rootfs', path: '/home/rootfs.ext4', readOnly: false, direct: false, serial: undefined, iothread: undefined, iops: 0 }]);
    expect(c.apiChannel).toBe('/tmp/stratovirt.socket');
    expect(c.serial).toEqual({ kind: 'stdio' });
  });

  it('a quoted -append and a split one give the same command line; the next option ends it', () => {
    const joined = parseCommandLine(['-kernel', '/k', '-append', 'console=ttyS0 rw', '-smp', '2'], noFiles);
    const split = parseCommandLine(['-kernel', '/k', '-append', 'console=ttyS0', 'rw', '-smp', '2'], noFiles);
    expect(split.append).toBe(joined.append);
    expect(split.vcpus).toBe(2);
  });

  it.each([
    ['-netdev', 'id=iface_id,netdev=tap0', /-netdev iface_id: tap NICs \(netdev=tap0\) are not implemented by this VMM; its NICs are vhost-user/],
    ['-chardev', 'id=console_id,path=/path/to/socket', /-chardev: virtio-console is not implemented by this VMM/],
    ['-device', 'vsock,id=vsock_id,guest-cid=3', /-device: device "vsock" is not supported/],
    ['-balloon', 'deflate-on-oom=true', /-balloon: the balloon device is not supported by this VMM/],
  ])("refuses the table's %s %s, saying it is not implemented", (option, value, message) => {
    expect(() => parseCommandLine(['-kernel', '/k', option, value], noFiles)).toThrow(message);
  });

  it("accepts the table's other forms", () => {
    const c = parseCommandLine(
      ['-kernel', '/k', '-machine', 'type=microvm,dump-guest-core=on,mem-share=off', '-smp', 'cpus=2', '-m', '512', '-iothread', 'id="iothread1"',
        '-drive', 'id=rootfs,file=/path/to/rootfs,readonly=false,direct=true,serial=serial_num,iothread=iothread1,iops=200', '-mem-path', '/dev/hugepages'],
      noFiles,
    );
    expect(c).toMatchObject({ vcpus: 2, dumpGuestCore: true, memory: { size: 512 * 2 ** 20, shared: false, memPath: '/dev/hugepages' }, iothreads: ['iothread1'] });
    expect(c.drives[0]).toMatchObject({ direct: true, serial: 'serial_num', iothread: 'iothread1', iops: 200 });
  });
});

describe("StratoVirt's JSON example", () => {
  it('is refused as printed, naming every part that is not implemented at once', () => {
    const attempt = () => finalizeConfig(draftFromJson(JSON.parse(STRATOVIRT_JSON)), noFiles);
    expect(attempt).toThrow(ConfigError);
    expect(attempt).toThrow(
      'not implemented by this VMM: console (virtio-console; use serial), vsock (vhost-vsock), ' +
        'net[0].host_dev_name (a tap NIC; give socket_path, the vhost-user socket); remove them',
    );
  });

  it('without those parts, the rest is accepted as printed', () => {
    const doc = JSON.parse(STRATOVIRT_JSON);
    delete doc.console;
    delete doc.vsock;
    delete doc.net;
    const c = finalizeConfig(draftFromJson(doc), noFiles);
    expect(c).toMatchObject({
      kernel: '/path/to/vmlinux.bin',
      append: 'console=ttyS0 reboot=k panic=1 pci=off tsc=reliable ipv6.disable=1 root=/dev/vda quiet',
      vcpus: 2,
      memory: { size: 268435456 },
      dumpGuestCore: true,
      serial: { kind: 'stdio' },
      iothreads: ['iothread1', 'iothread2'],
    });
    expect(c.drives).toEqual([{ id: 'rootfs', path: '/path/to/rootfs', serial: '11111111', direct: true, readOnly: false, iops: 200000, iothread: 'iothread2' }]);
  });

  it("a NIC's iothread is refused: the back-end serves a vhost-user NIC's queues", () => {
    const doc = {
      'boot-source': { kernel_image_path: '/k' },
      'machine-config': { 'mem-share': true },
      net: [{ iface_id: 'net0', socket_path: '/tmp/vu.sock', mac: '0e:90:df:9f:a8:88', iothread: 'iothread1' }],
      iothread: [{ id: 'iothread1' }],
    };
    expect(() => finalizeConfig(draftFromJson(doc), noFiles)).toThrow(/net\[0\] net0: iothread "iothread1" cannot serve a vhost-user NIC/);
    delete (doc.net[0] as Record<string, unknown>).iothread;
    expect(finalizeConfig(draftFromJson(doc), noFiles).nets[0]).toMatchObject({ id: 'net0', socketPath: '/tmp/vu.sock', mac: '0e:90:df:9f:a8:88' });
  });
});

describe("cloud-hypervisor's memory and NUMA examples", () => {
  it.each([
    ['--memory size=1G', { size: GiB }],
    ['--memory size=1G,mergeable=on', { size: GiB, mergeable: true }],
    ['--memory size=1G,shared=on', { size: GiB, shared: true }],
    ['--memory size=1G,hugepages=on,hugepage_size=2M', { size: GiB, hugepages: true, hugepageSize: 2 * 2 ** 20 }],
    ['--memory size=0\n--memory-zone id=mem0,size=1G', { size: GiB, zones: [{ id: 'mem0', size: GiB }] }],
    ['--memory size=0\n--memory-zone id=mem0,size=1G,file=/foo/bar', { zones: [{ id: 'mem0', file: '/foo/bar' }] }],
    ['--memory size=0\n--memory-zone id=mem0,size=1G,shared=on', { zones: [{ id: 'mem0', shared: true }] }],
    ['--memory size=0\n--memory-zone id=mem0,size=1G,hugepages=on', { zones: [{ id: 'mem0', hugepages: true }] }],
    ['--memory size=0\n--memory-zone id=mem0,size=1G,host_numa_node=0', { zones: [{ id: 'mem0', hostNumaNode: 0 }] }],
  ])('accepts %j', (text, memory) => {
    expect(ch(text).memory).toMatchObject(memory);
  });

  it.each([
    ['--memory size=1G,hotplug_method=acpi', '--memory: hotplug_method: memory hotplug is not implemented by this VMM'],
    ['--memory size=1G,hotplug_size=1G', '--memory: hotplug_size: memory hotplug is not implemented'],
    ['--memory size=1G,hotplug_method=virtio-mem,hotplug_size=1G,hotplugged_size=512M', '--memory: hotplug_method: memory hotplug'],
    ['--memory size=0,hotplug_method=virtio-mem\n--memory-zone id=mem0,size=1G,hotplug_size=1G', '--memory: hotplug_method: memory hotplug'],
    ['--memory size=0\n--memory-zone id=mem0,size=1G,hotplug_size=1G', '--memory-zone mem0: hotplug_size: memory hotplug is not implemented'],
    ['--numa guest_numa_id=0,sgx_epc_sections=epc1 guest_numa_id=1,sgx_epc_sections=epc0:epc2', '--numa: sgx_epc_sections: SGX EPC sections are not implemented'],
  ])('refuses %j, saying it is not implemented', (text, message) => {
    expect(() => ch(text)).toThrow(message);
  });

  it('--numa guest_numa_id=0', () => {
    expect(ch('--numa guest_numa_id=0').numa).toEqual([{ guestNumaId: 0, cpus: [], distances: [], memoryZones: [] }]);
  });

  it('--cpus boot=8 with two --numa values after one option, nodes without memory zones', () => {
    const c = ch('--cpus boot=8\n--numa guest_numa_id=0,cpus=1-3:7 guest_numa_id=1,cpus=0:4-6');
    expect(c.vcpus).toBe(8);
    expect(c.numa).toEqual([
      { guestNumaId: 0, cpus: [1, 2, 3, 7], distances: [], memoryZones: [] },
      { guestNumaId: 1, cpus: [0, 4, 5, 6], distances: [], memoryZones: [] },
    ]);
  });

  it('three nodes with distances only', () => {
    const c = ch('--numa guest_numa_id=0,distances=1@15:2@25 guest_numa_id=1,distances=0@15:2@20 guest_numa_id=2,distances=0@25:1@20');
    expect(c.numa.map((n) => [n.guestNumaId, n.distances])).toEqual([
      [0, [{ destination: 1, distance: 15 }, { destination: 2, distance: 25 }]],
      [1, [{ destination: 0, distance: 15 }, { destination: 2, distance: 20 }]],
      [2, [{ destination: 0, distance: 25 }, { destination: 1, distance: 20 }]],
    ]);
  });

  it('three zones in one --memory-zone and two nodes in one --numa', () => {
    const c = ch('--memory size=0\n--memory-zone id=mem0,size=1G id=mem1,size=1G id=mem2,size=1G\n--numa guest_numa_id=0,memory_zones=mem0:mem2 guest_numa_id=1,memory_zones=mem1');
    expect(c.memory.size).toBe(3 * GiB);
    expect(c.memory.zones.map((z) => z.id)).toEqual(['mem0', 'mem1', 'mem2']);
    expect(c.numa.map((n) => n.memoryZones)).toEqual([['mem0', 'mem2'], ['mem1']]);
  });

  it('the vCPU count may be given once: --cpus and -smp together are refused', () => {
    expect(() => ch('--cpus boot=2 -smp 2')).toThrow('-smp: the vCPU count is given twice (--cpus and -smp); use one');
    expect(() => ch('-smp 2 --cpus boot=2')).toThrow('--cpus: the vCPU count is given twice (-smp and --cpus); use one');
    expect(() => ch('--cpus max=8')).toThrow(/--cpus: unknown key "max"/);
    expect(() => ch('--cpus boot=300')).toThrow(/--cpus: 300 vCPUs is outside \[1, 254\]/);
  });

  it('a multi-value option ends at the next option, and a stray word elsewhere is still an error', () => {
    const c = ch('--numa guest_numa_id=0 guest_numa_id=1 -smp 2');
    expect(c.numa).toHaveLength(2);
    expect(() => ch('-smp 2 stray')).toThrow('unexpected argument "stray"');
  });

  it('once one node names zones, every zone needs a node', () => {
    expect(() => ch('--memory size=0\n--memory-zone id=mem0,size=1G id=mem1,size=1G\n--numa guest_numa_id=0,memory_zones=mem0 guest_numa_id=1')).toThrow(
      '--numa: memory zone "mem1" belongs to no NUMA node',
    );
  });
});

describe('options that used to be accepted and ignored', () => {
  it('dump-guest-core is on by default; off, -omit_vm_memory and omit_vm_memory: true turn it off', () => {
    expect(ch('').dumpGuestCore).toBe(true);
    expect(ch('-machine microvm,dump-guest-core=off').dumpGuestCore).toBe(false);
    expect(ch('-omit_vm_memory').dumpGuestCore).toBe(false);
    expect(finalizeConfig(draftFromJson({ 'boot-source': { kernel_image_path: '/k' }, 'machine-config': { omit_vm_memory: true } }), noFiles).dumpGuestCore).toBe(false);
    expect(finalizeConfig(draftFromJson({ 'boot-source': { kernel_image_path: '/k' }, 'machine-config': { dump_guest_core: false } }), noFiles).dumpGuestCore).toBe(false);
  });

  it('dump-guest-core=on with -omit_vm_memory contradict each other', () => {
    expect(() => ch('-machine microvm,dump-guest-core=on -omit_vm_memory')).toThrow('-omit_vm_memory: contradicts -machine dump-guest-core=on; give one');
    expect(() => finalizeConfig(draftFromJson({ 'boot-source': { kernel_image_path: '/k' }, 'machine-config': { omit_vm_memory: true, dump_guest_core: true } }), noFiles)).toThrow(
      'machine-config.omit_vm_memory: contradicts machine-config.dump_guest_core=on',
    );
  });

  it('-netdev iothread= is refused', () => {
    expect(() => ch('-machine mem-share=on -iothread id=io1 -chardev socket,id=c0,path=/tmp/x.sock -netdev vhost-user,id=n0,chardev=c0,iothread=io1')).toThrow(
      /-netdev n0: iothread "io1" cannot serve a vhost-user NIC/,
    );
  });

  it('chardev nowait: refused for a vhost-user socket, meaningless without server', () => {
    expect(() => ch('-machine mem-share=on -chardev socket,id=c0,path=/tmp/x.sock,server,nowait -netdev vhost-user,id=n0,chardev=c0')).toThrow(
      /-chardev c0: nowait is not supported for a vhost-user socket/,
    );
    expect(() => ch('-chardev socket,id=c0,path=/tmp/x.sock,nowait')).toThrow('-chardev c0: nowait needs server');
    // The serial port never waits for a client: nowait there is what it does anyway.
    expect(ch('-chardev socket,id=s0,path=/tmp/s.sock,server,nowait -serial chardev:s0').serial).toEqual({ kind: 'socket', path: '/tmp/s.sock' });
    expect(ch('-serial unix:/tmp/s.sock,server,nowait').serial).toEqual({ kind: 'socket', path: '/tmp/s.sock' });
  });
});

describe('duplicate JSON keys', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vmm-dup-'));
  const run = (text: string) => {
    const path = join(dir, 'vm.json');
    writeFileSync(path, text);
    return () => parseCommandLine(['-config', path], noFiles);
  };

  it.each([
    ['{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 2, "vcpu_count": 8}}', 'machine-config.vcpu_count: the key is given twice'],
    ['{"boot-source": {"kernel_image_path": "/k"}, "boot-source": {"kernel_image_path": "/j"}}', 'boot-source: the key is given twice'],
    ['{"boot-source": {"kernel_image_path": "/k"}, "drive": [{"drive_id": "a", "path_on_host": "/a"}, {"drive_id": "b", "path_on_host": "/b", "iops": 1, "iops": 2}]}', 'drive[1].iops: the key is given twice'],
    ['{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 2, "vcpu\\u005fcount": 3}}', 'machine-config.vcpu_count: the key is given twice'],
  ])('%s', (text, message) => {
    expect(run(text)).toThrow(message);
  });

  it('equal keys in different objects, and braces and quotes inside strings, are fine', () => {
    const c = run('{"boot-source": {"kernel_image_path": "/k", "boot_args": "a={\\"x\\": 1, \\"x\\": 2}"}, "drive": [{"drive_id": "a", "path_on_host": "/a"}, {"drive_id": "b", "path_on_host": "/b"}]}')();
    expect(c.append).toBe('a={"x": 1, "x": 2}');
    expect(c.drives.map((d) => d.id)).toEqual(['a', 'b']);
    rmSync(dir, { recursive: true, force: true });
  });
});
