import { MAX_RELAYS } from '../../vocabulary/limits.js';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  ConfigError,
  ConfigSyntaxError,
  VARIABLES,
  configFromText,
  loadConfig,
  socketPathFor,
  type ConfigOverrides,
  type LoadedConfig,
} from '../../relay/config/load.js';
import { createFakeSysfs } from '../support/fake-sysfs.js';

const scratch = mkdtempSync(join(tmpdir(), `vio4wd-config-${process.pid}-`));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

const accountFiles = { passwd: join(scratch, 'passwd'), group: join(scratch, 'group') };
writeFileSync(accountFiles.passwd, 'root:x:0:0:root:/root:/bin/bash\nlibvirt-qemu:x:64055:108::/var/lib/libvirt:/usr/sbin/nologin\n');
writeFileSync(accountFiles.group, 'root:x:0:\nkvm:x:108:libvirt-qemu\n');

const ONLINE = [0, 1, 2, 3];

function load(text: string, overrides: ConfigOverrides = {}, onlineCpus = ONLINE): LoadedConfig {
  return configFromText(text, { onlineCpus, accountFiles, overrides });
}

function problemsOf(text: string, overrides: ConfigOverrides = {}, onlineCpus = ONLINE): string[] {
  try {
    load(text, overrides, onlineCpus);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).problems;
  }
  throw new Error(`configuration was accepted: ${text}`);
}

function problemOf(text: string, overrides: ConfigOverrides = {}, onlineCpus = ONLINE): string {
  const problems = problemsOf(text, overrides, onlineCpus);
  expect(problems).toHaveLength(1);
  return problems[0];
}

describe('defaults', () => {
  it('gives this project\'s defaults for an empty file', () => {
    const { config, warnings } = load('');
    expect(warnings).toEqual([]);
    expect(config).toEqual({
      cpus: [1, 2, 3],
      logLevel: 6,
      pollMode: 'adaptive',
      sysfsRoot: '/sys',
      pidDir: '/var/run',
      socketDir: '/tmp/virtio-forwarder',
      socketFilenamePattern: 'virtio-forwarder%u.sock',
      socketOwner: null,
      socketGroup: null,
      vhostClient: false,
      dynamicSockets: false,
      staticVfs: [],
      cpuPins: [],
      jumbo: false,
      mergeableRxBuffers: true,
      unsealedMemory: 'warn',
      tso: false,
      vfPort: 'af_packet',
      xdpUmem: 'guest',
      xdpRx: 'copy',
      portControl: { mode: 'zmq', ovsdbSocketPath: '/var/run/openvswitch/db.sock', ipcCommandFile: '/tmp/vio_cmd' },
      zmq: {
        portControl: 'ipc:///var/run/virtio-forwarder/port_control',
        config: 'ipc:///var/run/virtio-forwarder/config',
        stats: 'ipc:///var/run/virtio-forwarder/stats',
        coreSched: 'ipc:///var/run/virtio-forwarder/core_sched',
      },
      coreScheduler: {
        enabled: true,
        sensitivity: 0.25,
        logLevel: 6,
        pollIntervalMs: 5000,
        globalNumaOpt: false,
        statsEndpoint: 'ipc:///var/run/virtio-forwarder/stats',
        coreSchedEndpoint: 'ipc:///var/run/virtio-forwarder/core_sched',
      },
      metricsListen: null,
      sourcePath: null,
    });
  });

  it('uses CPU 0 as the only worker on a one-CPU machine', () => {
    expect(load('', {}, [0]).config.cpus).toEqual([0]);
  });

  it('treats blank values like absent ones, but for the config endpoint, which blank turns off as the original did', () => {
    const blanks = VARIABLES.map((v) => `${v.name}=`).join('\n');
    const { config, warnings } = load(blanks);
    const line = VARIABLES.findIndex((v) => v.name === 'VIRTIOFWD_ZMQ_CONFIG_EP') + 1;
    expect(warnings).toEqual([
      `VIRTIOFWD_ZMQ_CONFIG_EP="" (line ${line}) is blank: the config service stays off, as virtio-forwarder left it; to say so, write VIRTIOFWD_ZMQ_CONFIG_EP=off, or give an endpoint such as ipc:///var/run/virtio-forwarder/config to turn it on`,
    ]);
    const absent = load('').config;
    expect(config).toEqual({ ...absent, zmq: { ...absent.zmq, config: null } });
  });

  it('ships etc/default/virtioforwarder with exactly these defaults, every variable documented, and no warning', () => {
    const path = new URL('../../etc/default/virtioforwarder', import.meta.url).pathname;
    const { config, warnings } = loadConfig({ path, onlineCpus: ONLINE, accountFiles });
    expect(warnings).toEqual([]);
    expect({ ...config, sourcePath: null }).toEqual(load('').config);
    expect(config.sourcePath).toBe(path);
    const text = readFileSync(path, 'utf8');
    for (const v of VARIABLES) expect(text).toMatch(new RegExp(`^${v.name}=`, 'm'));
  });

  it('turns the guests\' transmit offloads on with VIRTIOFWD_TSO true, off with blank or false', () => {
    for (const spelling of ['true', 'y', 'YES', '1', 'on']) {
      const { config, warnings } = load(`VIRTIOFWD_TSO=${spelling}`);
      expect(config.tso).toBe(true);
      expect(warnings).toEqual([]);
    }
    for (const spelling of ['', 'n', 'false', 'No', '0', 'off']) {
      const { config, warnings } = load(`VIRTIOFWD_TSO=${spelling}`);
      expect(config.tso).toBe(false);
      expect(warnings).toEqual([]);
    }
  });

  it("documents every supported variable in the README's configuration table", () => {
    const readme = readFileSync(new URL('../../README.md', import.meta.url).pathname, 'utf8');
    const tableCells = readme.split('\n').filter((l) => /^\| `(VIRTIOFWD|VIO4WD)_/.test(l)).map((l) => l.split('|')[1]);
    const patterns = tableCells.flatMap((cell) => [...cell.matchAll(/`([A-Z0-9_*]+)`/g)].map((m) => new RegExp(`^${m[1].replace(/\*/g, '[A-Z0-9_]+')}$`)));
    const missing = VARIABLES.filter((v) => v.treatment === 'supported' && !patterns.some((p) => p.test(v.name))).map((v) => v.name);
    expect(missing).toEqual([]);
  });
});

describe('booleans', () => {
  const booleans = VARIABLES.filter((v) => v.defaultText === 'true' || v.defaultText === 'false')
    .map((v) => v.name)
    .filter((name) => name !== 'VIRTIOFWD_ZERO_COPY');

  it.each(['true', 'TRUE', 'Yes', 'yes', '1', 'y', 'Y', 'on', 'ON'])('accepts %s as true', (spelling) => {
    for (const name of booleans) {
      const text = `${name}=${spelling}${name === 'VIRTIOFWD_IPC_PORT_CONTROL' ? '\nVIRTIOFWD_ZMQ_PORT_CONTROL_EP=off' : ''}`;
      const { config } = load(text);
      const value = {
        VIRTIOFWD_IPC_PORT_CONTROL: config.portControl.mode === 'ipc',
        VIRTIOFWD_JUMBO: config.jumbo,
        VIRTIOFWD_MRGBUF: config.mergeableRxBuffers,
        VIRTIOFWD_DYNAMIC_SOCKETS: config.dynamicSockets,
        VIRTIOFWD_CPU_NIC_SAME_NUMA: true,
        VIO4WD_CORE_SCHED_ENABLE: config.coreScheduler.enabled,
        VIO4WD_CORE_SCHED_GLOBAL_NUMA_OPT: config.coreScheduler.globalNumaOpt,
        VIRTIOFWD_VHOST_CLIENT: config.vhostClient,
        VIRTIOFWD_TSO: config.tso,
      }[name];
      expect(value, name).toBe(true);
    }
  });

  it.each(['false', 'False', 'NO', 'no', '0', 'n', 'N', 'off', 'Off'])('accepts %s as false', (spelling) => {
    const { config } = load(`VIRTIOFWD_MRGBUF=${spelling}\nVIO4WD_CORE_SCHED_ENABLE=${spelling}\nVIRTIOFWD_ZERO_COPY=${spelling}`);
    expect(config.mergeableRxBuffers).toBe(false);
    expect(config.coreScheduler.enabled).toBe(false);
  });

  it.each(['maybe', '2', 'truee', 'ye', 'nope', 'enabled', '-1', 'o', 'y y'])('refuses %s, naming the variable and the value', (spelling) => {
    for (const name of [...booleans, 'VIRTIOFWD_ZERO_COPY']) {
      const problem = problemOf(`${name}='${spelling}'`);
      expect(problem).toBe(`${name}="${spelling}" (line 1): expected y or n (also yes/no, true/false, 1/0, on/off)`);
    }
  });
});

describe('VIRTIOFWD_CPU_MASK', () => {
  it.each([
    ['1,2', [1, 2]],
    ['1-3', [1, 2, 3]],
    ['3,0-1', [0, 1, 3]],
    ["' 2 , 1 '", [1, 2]],
    ['0x6', [1, 2]],
    ['0XF', [0, 1, 2, 3]],
    ['"1,2"', [1, 2]],
  ])('%s selects %j', (text, cpus) => {
    expect(load(`VIRTIOFWD_CPU_MASK=${text}`).config.cpus).toEqual(cpus);
  });

  it.each([
    ['1,4', 'CPU 4 is not online (online: 0-3)'],
    ['0x30', 'CPUs 4-5 are not online (online: 0-3)'],
    ['x', '"x" is not a CPU number or a range such as 1-3'],
    ['1,,2', '"" is not a CPU number or a range such as 1-3'],
    ['3-1', 'CPU range "3-1" runs backwards'],
    ['0x0', 'bitmap 0x0 selects no CPU'],
    ['0xZZ', '"0xZZ" is not a hexadecimal CPU bitmap such as 0x6'],
    ['-1', '"-1" is not a CPU number or a range such as 1-3'],
    ['1-99999', 'CPU 99999 in "1-99999" is above 4095'],
  ])('refuses %s', (text, reason) => {
    expect(problemOf(`VIRTIOFWD_CPU_MASK=${text}`)).toBe(`VIRTIOFWD_CPU_MASK="${text}" (line 1): ${reason}`);
  });

  it('refuses a bash array', () => {
    expect(problemOf('VIRTIOFWD_CPU_MASK=(1 2)')).toBe(
      'VIRTIOFWD_CPU_MASK=(1 2) (line 1): this variable takes one value, not a bash array',
    );
  });

  it('reads the online CPUs from the sysfs root when they are not injected', () => {
    const sysfs = createFakeSysfs({ onlineCpus: '0-2,5' });
    try {
      const text = `VIRTIOFWD_SYSFS_ROOT=${sysfs.root}\nVIRTIOFWD_CPU_MASK=5`;
      expect(configFromText(text, { accountFiles }).config.cpus).toEqual([5]);
      expect(configFromText(`VIRTIOFWD_SYSFS_ROOT=${sysfs.root}`, { accountFiles }).config.cpus).toEqual([1, 2, 5]);
      expect(() => configFromText(`VIRTIOFWD_SYSFS_ROOT=${sysfs.root}\nVIRTIOFWD_CPU_MASK=3`, { accountFiles })).toThrow(
        'CPU 3 is not online (online: 0-2,5)',
      );
    } finally {
      sysfs.remove();
    }
  });

  it('says which file it could not read the online CPUs from', () => {
    const empty = mkdtempSync(join(scratch, 'emptysys-'));
    expect(() => configFromText(`VIRTIOFWD_SYSFS_ROOT=${empty}`, { accountFiles })).toThrow(
      `VIRTIOFWD_CPU_MASK cannot be checked: cannot read the online CPUs from ${empty}/devices/system/cpu/online`,
    );
  });
});

describe('VIRTIOFWD_CPU_PINS', () => {
  it.each([
    ['1:1', [{ relay: 1, vfToVmCpu: 1, vmToVfCpu: 1 }]],
    ['1:1,2', [{ relay: 1, vfToVmCpu: 1, vmToVfCpu: 2 }]],
    ['"1:1;2:2,3"', [{ relay: 1, vfToVmCpu: 1, vmToVfCpu: 1 }, { relay: 2, vfToVmCpu: 2, vmToVfCpu: 3 }]],
    ['(1:1 63:3,2)', [{ relay: 1, vfToVmCpu: 1, vmToVfCpu: 1 }, { relay: 63, vfToVmCpu: 3, vmToVfCpu: 2 }]],
    ['("0:1;1:2" \'2:3;\')', [
      { relay: 0, vfToVmCpu: 1, vmToVfCpu: 1 },
      { relay: 1, vfToVmCpu: 2, vmToVfCpu: 2 },
      { relay: 2, vfToVmCpu: 3, vmToVfCpu: 3 },
    ]],
  ])('%s pins %j', (text, pins) => {
    expect(load(`VIRTIOFWD_CPU_PINS=${text}\nVIRTIOFWD_CPU_MASK=1-3`).config.cpuPins).toEqual(pins);
  });

  it.each([
    ['1', '"1" is not <relay>:<cpu> or <relay>:<vf-to-vm cpu>,<vm-to-vf cpu>'],
    ['1:', '"1:" is not <relay>:<cpu> or <relay>:<vf-to-vm cpu>,<vm-to-vf cpu>'],
    ['1:1,2,3', '"1:1,2,3" is not <relay>:<cpu> or <relay>:<vf-to-vm cpu>,<vm-to-vf cpu>'],
    ['a:1', '"a:1" is not <relay>:<cpu> or <relay>:<vf-to-vm cpu>,<vm-to-vf cpu>'],
    ['64:1', `"64:1": relay id 64 is outside 0..${MAX_RELAYS - 1}`],
    ['1:0', '"1:0": CPU 0 is not a worker CPU (VIRTIOFWD_CPU_MASK gives 1-3)'],
    ['1:1,0', '"1:1,0": CPU 0 is not a worker CPU (VIRTIOFWD_CPU_MASK gives 1-3)'],
    ['"1:1;1:2"', '"1:2": relay 1 is pinned more than once'],
  ])('refuses %s', (text, reason) => {
    const shown = text.startsWith('"') ? text : `"${text}"`;
    expect(problemOf(`VIRTIOFWD_CPU_PINS=${text}\nVIRTIOFWD_CPU_MASK=1-3`)).toBe(
      `VIRTIOFWD_CPU_PINS=${shown} (line 1): ${reason}`,
    );
  });

  it('refuses a duplicate relay across array elements', () => {
    expect(problemOf('VIRTIOFWD_CPU_PINS=(1:1 1:2)')).toBe(
      'VIRTIOFWD_CPU_PINS=(1:1 1:2) (line 1): "1:2": relay 1 is pinned more than once',
    );
  });
});

describe('VIRTIOFWD_STATIC_VFS', () => {
  it('reads the three forms, short and upper-case addresses and interface names', () => {
    expect(load('VIRTIOFWD_STATIC_VFS=0000:05:08.1=1').config.staticVfs).toEqual([{ relay: 1, vf: { pci: '0000:05:08.1' } }]);
    expect(load('VIRTIOFWD_STATIC_VFS=(0000:05:08.1=1)').config.staticVfs).toEqual([{ relay: 1, vf: { pci: '0000:05:08.1' } }]);
    expect(
      load('VIRTIOFWD_STATIC_VFS=(0000:05:08.1=1 05:0A.2=0\n  0000:5E:1F.7=63 veth0=7)').config.staticVfs,
    ).toEqual([
      { relay: 1, vf: { pci: '0000:05:08.1' } },
      { relay: 0, vf: { pci: '0000:05:0a.2' } },
      { relay: 63, vf: { pci: '0000:5e:1f.7' } },
      { relay: 7, vf: { netdev: 'veth0' } },
    ]);
  });

  it('splits a quoted scalar on whitespace like an array', () => {
    expect(load('VIRTIOFWD_STATIC_VFS="0000:05:08.1=1 0000:05:08.2=2"').config.staticVfs.map((v) => v.relay)).toEqual([1, 2]);
  });

  it.each([
    ['0000:05:08.1', '"0000:05:08.1" is not <PCI address>=<relay id> (for example 0000:05:08.1=1)'],
    ['=1', '"=1" is not <PCI address>=<relay id> (for example 0000:05:08.1=1)'],
    ['0000:05:08.1=64', `"0000:05:08.1=64": relay id "64" is not an integer in 0..${MAX_RELAYS - 1}`],
    ['0000:05:08.1=-1', `"0000:05:08.1=-1": relay id "-1" is not an integer in 0..${MAX_RELAYS - 1}`],
    ['0000:05:08.1=', `"0000:05:08.1=": relay id "" is not an integer in 0..${MAX_RELAYS - 1}`],
    ['0000:05:20.1=1', '"0000:05:20.1" is not a PCI address: slot 0x20 is above 0x1f'],
    ['0000:05:08.8=1', '"0000:05:08.8" is not a PCI address: function 8 is above 7'],
    ['0000:005:08.1=1', '"0000:005:08.1" is not a PCI address: expected dddd:bb:ss.f or bb:ss.f in hexadecimal (for example 0000:05:08.1)'],
    ['averyveryverylongname=1', '"averyveryverylongname" is neither a PCI address nor a network interface name'],
  ])('refuses %s', (element, reason) => {
    expect(problemOf(`VIRTIOFWD_STATIC_VFS=(${element})`)).toBe(`VIRTIOFWD_STATIC_VFS=(${element}) (line 1): ${reason}`);
  });

  it('refuses two VFs on one relay and one VF on two relays, even when spelled differently', () => {
    expect(problemOf('VIRTIOFWD_STATIC_VFS=(0000:05:08.1=1 0000:05:08.2=1)')).toBe(
      'VIRTIOFWD_STATIC_VFS=(0000:05:08.1=1 0000:05:08.2=1) (line 1): "0000:05:08.2=1": relay 1 is given more than one VF',
    );
    expect(problemOf('VIRTIOFWD_STATIC_VFS=(0000:05:08.1=1 05:08.1=2)')).toBe(
      'VIRTIOFWD_STATIC_VFS=(0000:05:08.1=1 05:08.1=2) (line 1): "05:08.1=2": 0000:05:08.1 is already attached to relay 1',
    );
  });

  it('refuses static VFs together with dynamic sockets', () => {
    expect(problemOf('VIRTIOFWD_STATIC_VFS=0000:05:08.1=1\nVIRTIOFWD_DYNAMIC_SOCKETS=true')).toMatch(
      /^VIRTIOFWD_STATIC_VFS cannot be used with VIRTIOFWD_DYNAMIC_SOCKETS=true/,
    );
  });
});

describe('sockets', () => {
  it('accepts a pattern with one %u and builds socket paths from it', () => {
    const { config } = load('VIRTIOFWD_SOCKET_DIR=/run/vio/\nVIRTIOFWD_SOCKET_FNAME_PATTERN=relay-%u.sock');
    expect(socketPathFor(config, 12)).toBe('/run/vio/relay-12.sock');
    expect(socketPathFor(load('').config, 1)).toBe('/tmp/virtio-forwarder/virtio-forwarder1.sock');
  });

  it.each([
    ['relay.sock', 'expected exactly one %u (the relay id) and no other % sequence'],
    ['relay%u-%u.sock', 'expected exactly one %u (the relay id) and no other % sequence'],
    ['relay%d.sock', 'expected exactly one %u (the relay id) and no other % sequence'],
    ['relay%u%', 'expected exactly one %u (the relay id) and no other % sequence'],
    ['relay%u%%', 'expected exactly one %u (the relay id) and no other % sequence'],
    ['dir/relay%u', 'a file name cannot contain /; set the directory with VIRTIOFWD_SOCKET_DIR'],
    ['relay%u1.sock', 'a digit right after %u makes socket names of different relays ambiguous'],
  ])('refuses the pattern %s', (pattern, reason) => {
    expect(problemOf(`VIRTIOFWD_SOCKET_FNAME_PATTERN='${pattern}'`)).toBe(
      `VIRTIOFWD_SOCKET_FNAME_PATTERN="${pattern}" (line 1): ${reason}`,
    );
  });

  it('looks up owner and group by name or number', () => {
    const { config } = load('VIRTIOFWD_SOCKET_OWNER=libvirt-qemu\nVIRTIOFWD_SOCKET_GROUP=kvm');
    expect(config.socketOwner).toEqual({ id: 64055, name: 'libvirt-qemu' });
    expect(config.socketGroup).toEqual({ id: 108, name: 'kvm' });
    const numeric = load('VIRTIOFWD_SOCKET_OWNER=1234\nVIRTIOFWD_SOCKET_GROUP=0').config;
    expect(numeric.socketOwner).toEqual({ id: 1234, name: '1234' });
    expect(numeric.socketGroup).toEqual({ id: 0, name: '0' });
  });

  it('refuses an owner or group that does not exist, naming it', () => {
    expect(problemsOf('VIRTIOFWD_SOCKET_OWNER=qemu\nVIRTIOFWD_SOCKET_GROUP=libvirt')).toEqual([
      `VIRTIOFWD_SOCKET_OWNER="qemu" (line 1): no user named "qemu" in ${accountFiles.passwd}`,
      `VIRTIOFWD_SOCKET_GROUP="libvirt" (line 2): no group named "libvirt" in ${accountFiles.group}`,
    ]);
    expect(problemOf('VIRTIOFWD_SOCKET_OWNER=4294967295')).toBe(
      'VIRTIOFWD_SOCKET_OWNER="4294967295" (line 1): user id 4294967295 is above 4294967294',
    );
  });

  it('finds root in the real /etc/passwd by default', () => {
    const { config } = configFromText('VIRTIOFWD_SOCKET_OWNER=root\nVIRTIOFWD_SOCKET_GROUP=root', { onlineCpus: ONLINE });
    expect(config.socketOwner?.id).toBe(0);
    expect(config.socketGroup?.id).toBe(0);
  });

  it.each(['VIRTIOFWD_SOCKET_DIR', 'VIRTIOFWD_PID_DIR', 'VIRTIOFWD_OVSDB_SOCK_PATH', 'VIRTIOFWD_IPC_COMMAND_FILE'])(
    '%s must be an absolute path',
    (name) => {
      expect(problemsOf(`${name}=relative/dir\nVIRTIOFWD_ZMQ_PORT_CONTROL_EP=off`)).toContain(
        `${name}="relative/dir" (line 1): expected an absolute path`,
      );
    },
  );
});

describe('log level, poll mode, sysfs root', () => {
  it.each([0, 3, 7])('accepts log level %i', (level) => {
    expect(load(`VIRTIOFWD_LOG_LEVEL=${level}`).config.logLevel).toBe(level);
    expect(load(`VIO4WD_CORE_SCHED_LOG_LEVEL=${level}`).config.coreScheduler.logLevel).toBe(level);
  });

  it.each(['8', '-1', 'debug', '6.5'])('refuses log level %s', (text) => {
    expect(problemOf(`VIRTIOFWD_LOG_LEVEL=${text}`)).toBe(
      `VIRTIOFWD_LOG_LEVEL="${text}" (line 1): expected a log level from 0 (emergencies only) to 7 (debug)`,
    );
    expect(problemOf(`VIO4WD_CORE_SCHED_LOG_LEVEL=${text}`)).toMatch(/^VIO4WD_CORE_SCHED_LOG_LEVEL=/);
  });

  it('accepts busy and adaptive in any case and refuses the rest', () => {
    expect(load('VIRTIOFWD_POLL_MODE=BUSY').config.pollMode).toBe('busy');
    expect(load('VIRTIOFWD_POLL_MODE=adaptive').config.pollMode).toBe('adaptive');
    expect(problemOf('VIRTIOFWD_POLL_MODE=spin')).toBe('VIRTIOFWD_POLL_MODE="spin" (line 1): expected busy or adaptive');
    expect(load('VIRTIOFWD_UNSEALED_MEMORY=Refuse').config.unsealedMemory).toBe('refuse');
    expect(load('VIRTIOFWD_UNSEALED_MEMORY=').config.unsealedMemory).toBe('warn');
    expect(problemOf('VIRTIOFWD_UNSEALED_MEMORY=ignore')).toBe('VIRTIOFWD_UNSEALED_MEMORY="ignore" (line 1): expected refuse or warn');
    expect(load('VIRTIOFWD_VF_PORT=AF_XDP').config.vfPort).toBe('af_xdp');
    expect(load('VIRTIOFWD_VF_PORT=auto').config.vfPort).toBe('auto');
    expect(load('VIRTIOFWD_VF_PORT=').config.vfPort).toBe('af_packet');
    expect(problemOf('VIRTIOFWD_VF_PORT=xdp')).toBe('VIRTIOFWD_VF_PORT="xdp" (line 1): expected af_packet, af_xdp or auto');
    expect(load('VIRTIOFWD_XDP_UMEM=Relay').config.xdpUmem).toBe('relay');
    expect(load('VIRTIOFWD_XDP_UMEM=').config.xdpUmem).toBe('guest');
    expect(load('VIRTIOFWD_XDP_RX=Guest').config.xdpRx).toBe('guest');
    expect(load('VIRTIOFWD_XDP_RX=').config.xdpRx).toBe('copy');
    expect(problemOf('VIRTIOFWD_XDP_RX=zerocopy')).toBe('VIRTIOFWD_XDP_RX="zerocopy" (line 1): expected copy or guest');
    expect(problemOf('VIRTIOFWD_XDP_UMEM=vm')).toBe('VIRTIOFWD_XDP_UMEM="vm" (line 1): expected guest or relay');
  });

  it('refuses a sysfs root that is relative or missing', () => {
    expect(problemOf('VIRTIOFWD_SYSFS_ROOT=sys')).toBe('VIRTIOFWD_SYSFS_ROOT="sys" (line 1): expected an absolute path');
    expect(problemOf(`VIRTIOFWD_SYSFS_ROOT=${scratch}/missing`)).toBe(
      `VIRTIOFWD_SYSFS_ROOT="${scratch}/missing" (line 1): not an existing directory`,
    );
  });
});

describe('control channels', () => {
  it('takes custom endpoints and turns services off', () => {
    const { config } = load(
      'VIRTIOFWD_ZMQ_CONFIG_EP=off\nVIRTIOFWD_ZMQ_STATS_EP=tcp://127.0.0.1:5555\nVIRTIOFWD_ZMQ_PORT_CONTROL_EP=ipc:///tmp/x/pc\nVIRTIOFWD_ZMQ_CORE_SCHED_EP=inproc://sched',
    );
    expect(config.zmq).toEqual({
      config: null,
      stats: 'tcp://127.0.0.1:5555',
      portControl: 'ipc:///tmp/x/pc',
      coreSched: 'inproc://sched',
    });
    expect(config.coreScheduler.statsEndpoint).toBe('tcp://127.0.0.1:5555');
    expect(config.coreScheduler.coreSchedEndpoint).toBe('inproc://sched');
  });

  it.each([
    ['/var/run/x', 'expected a ZMQ endpoint such as ipc:///var/run/virtio-forwarder/stats, or off'],
    ['ipc://relative', 'an ipc:// endpoint needs an absolute path (ipc:///dir/name)'],
    ['ipc:///var/run/', 'an ipc:// endpoint names a socket file, not a directory'],
    ['tcp://localhost', 'a tcp:// endpoint needs host:port'],
    ['tcp://localhost:70000', 'port 70000 is outside 1..65535'],
    ['udp://x:1', 'transport udp:// is not supported (use ipc, tcp or inproc)'],
    ['inproc://', 'an inproc:// endpoint needs a name'],
  ])('refuses the endpoint %s', (endpoint, reason) => {
    expect(problemOf(`VIRTIOFWD_ZMQ_CONFIG_EP=${endpoint}`)).toBe(`VIRTIOFWD_ZMQ_CONFIG_EP="${endpoint}" (line 1): ${reason}`);
  });

  it('refuses two services on one endpoint', () => {
    expect(problemOf('VIRTIOFWD_ZMQ_CONFIG_EP=ipc:///var/run/virtio-forwarder/stats')).toBe(
      'VIRTIOFWD_ZMQ_STATS_EP and VIRTIOFWD_ZMQ_CONFIG_EP are both "ipc:///var/run/virtio-forwarder/stats"; each service needs its own endpoint',
    );
  });

  it('selects IPC or OVSDB port control when ZMQ port control is off', () => {
    const ipc = load('VIRTIOFWD_IPC_PORT_CONTROL=true\nVIRTIOFWD_ZMQ_PORT_CONTROL_EP=off\nVIRTIOFWD_IPC_COMMAND_FILE=/run/cmd').config;
    expect(ipc.portControl).toEqual({ mode: 'ipc', ovsdbSocketPath: '/var/run/openvswitch/db.sock', ipcCommandFile: '/run/cmd' });
    expect(ipc.zmq.portControl).toBeNull();
    const ovsdb = load('VIRTIOFWD_OVSDB_SOCK_PATH=/run/ovs/db.sock\nVIRTIOFWD_ZMQ_PORT_CONTROL_EP=off').config;
    expect(ovsdb.portControl.mode).toBe('ovsdb');
    expect(ovsdb.portControl.ovsdbSocketPath).toBe('/run/ovs/db.sock');
    // A blank ZMQ endpoint is the default, not a choice, so IPC alone is enough.
    expect(load('VIRTIOFWD_IPC_PORT_CONTROL=yes').config.portControl.mode).toBe('ipc');
    expect(load('VIRTIOFWD_ZMQ_PORT_CONTROL_EP=off').config.portControl.mode).toBe('none');
  });

  it("picks one of two port-control channels in the original's order (ZMQ, IPC, OVSDB), warning about the other", () => {
    const zmqIpc = load('VIRTIOFWD_IPC_PORT_CONTROL=y\nVIRTIOFWD_ZMQ_PORT_CONTROL_EP=ipc:///run/pc');
    expect(zmqIpc.config.portControl.mode).toBe('zmq');
    expect(zmqIpc.config.zmq.portControl).toBe('ipc:///run/pc');
    expect(zmqIpc.warnings).toEqual([
      'VIRTIOFWD_IPC_PORT_CONTROL="y" is not used because VIRTIOFWD_ZMQ_PORT_CONTROL_EP is set too: ZMQ port control is used, as virtio-forwarder did; to say so, set VIRTIOFWD_IPC_PORT_CONTROL=n, or set VIRTIOFWD_ZMQ_PORT_CONTROL_EP=off to use the command file',
    ]);
    const ipcOvsdb = load('VIRTIOFWD_IPC_PORT_CONTROL=true\nVIRTIOFWD_OVSDB_SOCK_PATH=/run/db.sock');
    expect(ipcOvsdb.config.portControl.mode).toBe('ipc');
    expect(ipcOvsdb.config.zmq.portControl).toBeNull();
    expect(ipcOvsdb.warnings).toEqual([
      expect.stringMatching(/^VIRTIOFWD_OVSDB_SOCK_PATH is not used because VIRTIOFWD_IPC_PORT_CONTROL="true" too: the command file is used, as virtio-forwarder did/),
    ]);
    const zmqOvsdb = load('VIRTIOFWD_ZMQ_PORT_CONTROL_EP=ipc:///run/pc\nVIRTIOFWD_OVSDB_SOCK_PATH=/run/db.sock');
    expect(zmqOvsdb.config.portControl.mode).toBe('zmq');
    expect(zmqOvsdb.warnings).toEqual([expect.stringMatching(/^VIRTIOFWD_OVSDB_SOCK_PATH is not used because VIRTIOFWD_ZMQ_PORT_CONTROL_EP is set too: ZMQ port control is used/)]);
    // Said explicitly, there is nothing to warn about.
    expect(load('VIRTIOFWD_IPC_PORT_CONTROL=n\nVIRTIOFWD_ZMQ_PORT_CONTROL_EP=ipc:///run/pc').warnings).toEqual([]);
  });

  it('binds the core-sched service only when core scheduling is enabled', () => {
    const off = load('VIO4WD_CORE_SCHED_ENABLE=false');
    expect(off.config.zmq.coreSched).toBeNull();
    expect(off.config.coreScheduler.coreSchedEndpoint).toBeNull();
    expect(off.warnings).toEqual([]);
    const custom = load('VIO4WD_CORE_SCHED_ENABLE=false\nVIRTIOFWD_ZMQ_CORE_SCHED_EP=ipc:///run/cs');
    expect(custom.warnings).toEqual([
      'VIRTIOFWD_ZMQ_CORE_SCHED_EP="ipc:///run/cs" is not bound because VIO4WD_CORE_SCHED_ENABLE is false',
    ]);
  });

  it('refuses turning off services core scheduling needs', () => {
    expect(problemsOf('VIRTIOFWD_ZMQ_STATS_EP=off\nVIRTIOFWD_ZMQ_CORE_SCHED_EP=off')).toEqual([
      'VIRTIOFWD_ZMQ_CORE_SCHED_EP="off" contradicts VIO4WD_CORE_SCHED_ENABLE=true, which needs that service',
      'VIRTIOFWD_ZMQ_STATS_EP="off" contradicts VIO4WD_CORE_SCHED_ENABLE=true: the scheduler reads the stats service',
    ]);
    expect(load('VIRTIOFWD_ZMQ_STATS_EP=off\nVIO4WD_CORE_SCHED_ENABLE=false').config.zmq.stats).toBeNull();
  });
});

describe('core scheduler section', () => {
  it('reads sensitivity, poll interval and NUMA option', () => {
    const { coreScheduler } = load(
      'VIO4WD_CORE_SCHED_SENSITIVITY=0\nVIO4WD_CORE_SCHED_POLL_INTERVAL=0.5\nVIO4WD_CORE_SCHED_GLOBAL_NUMA_OPT=true',
    ).config;
    expect(coreScheduler.sensitivity).toBe(0);
    expect(coreScheduler.pollIntervalMs).toBe(500);
    expect(coreScheduler.globalNumaOpt).toBe(true);
    expect(load('VIO4WD_CORE_SCHED_SENSITIVITY=.5').config.coreScheduler.sensitivity).toBe(0.5);
  });

  it.each(['-0.25', 'abc', '1e3'])('refuses sensitivity %s', (text) => {
    expect(problemOf(`VIO4WD_CORE_SCHED_SENSITIVITY=${text}`)).toBe(
      `VIO4WD_CORE_SCHED_SENSITIVITY="${text}" (line 1): expected a decimal number >= 0, such as 0.25`,
    );
  });

  it.each(['0', '-1', '3601', 'soon'])('refuses poll interval %s', (text) => {
    expect(problemOf(`VIO4WD_CORE_SCHED_POLL_INTERVAL=${text}`)).toBe(
      `VIO4WD_CORE_SCHED_POLL_INTERVAL="${text}" (line 1): expected seconds, more than 0 and at most 3600`,
    );
  });
});

describe('variables kept for compatibility', () => {
  it('refuses zero copy and vfio-pci binding with the reason', () => {
    expect(problemOf('VIRTIOFWD_ZERO_COPY=true')).toMatch(
      /^VIRTIOFWD_ZERO_COPY=true: zero copy is not supported in this implementation/,
    );
    expect(problemOf('VIRTIOFWD_BIND_VFIO_PCI=0000:05:08.1')).toMatch(
      /^VIRTIOFWD_BIND_VFIO_PCI="0000:05:08.1" \(line 1\): binding to vfio-pci is not supported in this implementation/,
    );
    expect(load('VIRTIOFWD_ZERO_COPY=false\nVIRTIOFWD_BIND_VFIO_PCI=').warnings).toEqual([]);
  });

  it('accepts and ignores the DPDK-only variables with a reason each', () => {
    const { warnings } = load(
      [
        'VIRTIOFWD_HUGETLBFS_MOUNT_POINT=/dev/hugepages',
        'VIRTIOFWD_VFIO_VF_TOKEN=0',
        'VIRTIOFWD_BINARY=/usr/bin/virtio-forwarder',
        'VIRTIOFWD_MASTER_LCORE=0',
        'VIRTIOFWD_CPU_NIC_SAME_NUMA=true',
      ].join('\n'),
    );
    expect(warnings).toHaveLength(5);
    expect(warnings[0]).toMatch(/^VIRTIOFWD_CPU_NIC_SAME_NUMA=true is ignored: .*hugepage/);
    expect(warnings[1]).toMatch(/^VIRTIOFWD_HUGETLBFS_MOUNT_POINT="\/dev\/hugepages" \(line 1\) is ignored: .*AF_PACKET/);
    expect(warnings[2]).toMatch(/^VIRTIOFWD_VFIO_VF_TOKEN="0" \(line 2\) is ignored: .*vfio-pci/);
    expect(warnings[3]).toMatch(/^VIRTIOFWD_BINARY="\/usr\/bin\/virtio-forwarder" \(line 3\) is ignored: .*ExecStart/);
    expect(warnings[4]).toMatch(/^VIRTIOFWD_MASTER_LCORE="0" \(line 4\) is ignored: there is no DPDK main lcore/);
  });

  it('still refuses a malformed boolean in an ignored variable', () => {
    expect(problemOf('VIRTIOFWD_CPU_NIC_SAME_NUMA=maybe')).toMatch(/^VIRTIOFWD_CPU_NIC_SAME_NUMA="maybe"/);
    expect(load('VIRTIOFWD_CPU_NIC_SAME_NUMA=y').warnings).toEqual([expect.stringMatching(/^VIRTIOFWD_CPU_NIC_SAME_NUMA=true is ignored/)]);
  });
});

describe('every variable, good and bad', () => {
  // One accepted and one refused value per variable; the ignored ones refuse only the array form.
  const samples: Record<string, [good: string, bad: string]> = {
    VIRTIOFWD_CPU_MASK: ['1', '9'],
    VIRTIOFWD_LOG_LEVEL: ['7', '9'],
    VIRTIOFWD_POLL_MODE: ['busy', 'lazy'],
    VIRTIOFWD_IPC_PORT_CONTROL: ['n', 'maybe'],
    VIRTIOFWD_OVSDB_SOCK_PATH: ['', 'db.sock'],
    VIRTIOFWD_JUMBO: ['y', 'maybe'],
    VIRTIOFWD_MRGBUF: ['n', 'nein'],
    VIRTIOFWD_TSO: ['y', 'maybe'],
    VIRTIOFWD_UNSEALED_MEMORY: ['refuse', 'allow'],
    VIRTIOFWD_VF_PORT: ['af_xdp', 'dpdk'],
    VIRTIOFWD_XDP_UMEM: ['relay', 'copy'],
    VIRTIOFWD_XDP_RX: ['guest', 'zerocopy'],
    VIRTIOFWD_SOCKET_OWNER: ['root', 'nobody-here'],
    VIRTIOFWD_SOCKET_GROUP: ['kvm', 'nogroup-here'],
    VIRTIOFWD_HUGETLBFS_MOUNT_POINT: ['/mnt/huge', '(a b)'],
    VIRTIOFWD_STATIC_VFS: ['0000:05:08.1=1', '0000:05:08.1=x'],
    VIRTIOFWD_DYNAMIC_SOCKETS: ['true', 'sometimes'],
    VIRTIOFWD_CPU_NIC_SAME_NUMA: ['false', 'si'],
    VIRTIOFWD_VFIO_VF_TOKEN: ['14d63f20-8445-11ea-8900-1f9ce7d5650d', '(a b)'],
    VIO4WD_CORE_SCHED_ENABLE: ['false', 't'],
    VIO4WD_CORE_SCHED_SENSITIVITY: ['1.5', '-1'],
    VIO4WD_CORE_SCHED_LOG_LEVEL: ['0', '8'],
    VIO4WD_CORE_SCHED_POLL_INTERVAL: ['10', '0'],
    VIO4WD_CORE_SCHED_GLOBAL_NUMA_OPT: ['true', 'global'],
    VIRTIOFWD_CPU_PINS: ['1:1', '1:0'],
    VIRTIOFWD_PID_DIR: ['/run', 'run'],
    VIRTIOFWD_ZMQ_CONFIG_EP: ['ipc:///run/c', 'ipc://c'],
    VIRTIOFWD_ZMQ_PORT_CONTROL_EP: ['off', 'zmq'],
    VIRTIOFWD_ZMQ_STATS_EP: ['tcp://*:5000', 'tcp://*'],
    VIRTIOFWD_ZMQ_CORE_SCHED_EP: ['inproc://cs', 'inproc://'],
    VIRTIOFWD_METRICS_LISTEN: ['9477', ':9477'],
    VIRTIOFWD_SOCKET_DIR: ['/run/vio', 'vio'],
    VIRTIOFWD_SOCKET_FNAME_PATTERN: ['vm%u', 'vm'],
    VIRTIOFWD_BINARY: ['/opt/vio', '(a b)'],
    VIRTIOFWD_MASTER_LCORE: ['0', '(0 1)'],
    VIRTIOFWD_VHOST_CLIENT: ['yes', 'client'],
    VIRTIOFWD_ZERO_COPY: ['false', 'true'],
    VIRTIOFWD_BIND_VFIO_PCI: ['', '0000:05:08.1'],
    VIRTIOFWD_SYSFS_ROOT: ['/sys', '/nonexistent-sysfs'],
    VIRTIOFWD_IPC_COMMAND_FILE: ['/run/cmd', 'cmd'],
  };

  it('covers every known variable', () => {
    expect(Object.keys(samples).sort()).toEqual(VARIABLES.map((v) => v.name).sort());
  });

  it.each(Object.entries(samples))('%s: accepts %j and refuses the bad sample naming variable and value', (name, [good, bad]) => {
    expect(() => load(`${name}=${good}`, {}, ONLINE)).not.toThrow();
    const problem = problemsOf(`${name}=${bad}`, {}, ONLINE).find((p) => p.includes(name));
    expect(problem, `no problem names ${name}`).toBeDefined();
    const shownValue = bad.startsWith('(') ? bad : `"${bad}"`;
    expect(problem).toContain(bad === 'true' ? `${name}=true` : `${name}=${shownValue}`);
  });
});

describe('bash arrays in single-value variables', () => {
  const listVariables = new Set(['VIRTIOFWD_STATIC_VFS', 'VIRTIOFWD_CPU_PINS']);
  it.each(VARIABLES.map((v) => v.name).filter((name) => !listVariables.has(name)))(
    '%s=(a b) is reported once',
    (name) => {
      const problems = problemsOf(`${name}=(a b)`);
      expect(problems.filter((p) => p.startsWith(`${name}=(a b) (line 1)`))).toEqual([
        `${name}=(a b) (line 1): this variable takes one value, not a bash array`,
      ]);
    },
  );
});

describe('warnings and reporting', () => {
  it('reports a bad CPU mask once, without blaming pins that use its CPUs', () => {
    expect(problemsOf('VIRTIOFWD_CPU_MASK=7\nVIRTIOFWD_CPU_PINS=1:1')).toEqual([
      'VIRTIOFWD_CPU_MASK="7" (line 1): CPU 7 is not online (online: 0-3)',
    ]);
    expect(problemsOf('VIRTIOFWD_CPU_MASK=7\nVIRTIOFWD_CPU_PINS=1:x')).toEqual([
      'VIRTIOFWD_CPU_MASK="7" (line 1): CPU 7 is not online (online: 0-3)',
      'VIRTIOFWD_CPU_PINS="1:x" (line 2): "1:x" is not <relay>:<cpu> or <relay>:<vf-to-vm cpu>,<vm-to-vf cpu>',
    ]);
  });

  it('warns about unknown VIRTIOFWD_/VIO4WD_ variables, suggesting a close name, and ignores other names', () => {
    const { warnings } = load('VIRTIOFWD_JUMB0=true\nVIO4WD_SOMETHING=1\nPATH=/bin\nOTHER_VAR=1');
    expect(warnings).toEqual([
      'unknown variable VIRTIOFWD_JUMB0 on line 1 is ignored (did you mean VIRTIOFWD_JUMBO?)',
      'unknown variable VIO4WD_SOMETHING on line 2 is ignored',
    ]);
  });

  it('reports every problem of a file at once, each with its line', () => {
    const problems = problemsOf('VIRTIOFWD_JUMBO=maybe\n\nVIRTIOFWD_LOG_LEVEL=9\nVIRTIOFWD_POLL_MODE=x');
    expect(problems).toEqual([
      'VIRTIOFWD_LOG_LEVEL="9" (line 3): expected a log level from 0 (emergencies only) to 7 (debug)',
      'VIRTIOFWD_POLL_MODE="x" (line 4): expected busy or adaptive',
      'VIRTIOFWD_JUMBO="maybe" (line 1): expected y or n (also yes/no, true/false, 1/0, on/off)',
    ]);
  });

  it('puts the file name in the error of loadConfig', () => {
    const path = join(scratch, 'bad.conf');
    writeFileSync(path, 'VIRTIOFWD_LOG_LEVEL=9\n');
    expect(() => loadConfig({ path, onlineCpus: ONLINE })).toThrow(
      `${path}: VIRTIOFWD_LOG_LEVEL="9" (line 1): expected a log level from 0 (emergencies only) to 7 (debug)`,
    );
    writeFileSync(path, 'A=1\nVIRTIOFWD_LOG_LEVEL = 9\n');
    expect(() => loadConfig({ path, onlineCpus: ONLINE })).toThrow(ConfigSyntaxError);
    expect(() => loadConfig({ path, onlineCpus: ONLINE })).toThrow(`${path} line 2: spaces are not allowed around '='`);
    expect(() => loadConfig({ path: join(scratch, 'missing.conf'), onlineCpus: ONLINE })).toThrow(
      `${join(scratch, 'missing.conf')}: cannot read the configuration file: ENOENT`,
    );
  });

  it('works with no file at all', () => {
    expect(loadConfig({ path: null, onlineCpus: ONLINE }).config.sourcePath).toBeNull();
  });
});

describe('overrides', () => {
  it('replace the file\'s values, and repeated values form an array', () => {
    const { config } = load('VIRTIOFWD_CPU_MASK=1\nVIRTIOFWD_STATIC_VFS=0000:05:08.1=1\nVIRTIOFWD_JUMBO=true', {
      VIRTIOFWD_CPU_MASK: '2,3',
      VIRTIOFWD_STATIC_VFS: ['0000:05:08.2=2', '0000:05:08.3=3'],
      VIRTIOFWD_CPU_PINS: ['2:2,3'],
    });
    expect(config.cpus).toEqual([2, 3]);
    expect(config.staticVfs.map((v) => v.vf.pci)).toEqual(['0000:05:08.2', '0000:05:08.3']);
    expect(config.cpuPins).toEqual([{ relay: 2, vfToVmCpu: 2, vmToVfCpu: 3 }]);
    expect(config.jumbo).toBe(true);
  });

  it('say they came from the command line in errors', () => {
    expect(problemOf('VIRTIOFWD_LOG_LEVEL=3', { VIRTIOFWD_LOG_LEVEL: '11' })).toBe(
      'VIRTIOFWD_LOG_LEVEL="11" (command line): expected a log level from 0 (emergencies only) to 7 (debug)',
    );
  });

  it('refuse unknown variables', () => {
    expect(problemOf('', { VIRTIOFWD_NOPE: '1' })).toBe('override of unknown variable VIRTIOFWD_NOPE');
  });
});
