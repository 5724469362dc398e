// The Debian package: scripts/build-deb.sh builds it from dist/ (`--no-build`: the test command
// compiles first), dpkg installs it on this machine, and the installed commands, the *.py files
// under the original's paths (run as os-vif runs them, against the installed daemon), the man
// pages (man, groff) and the units (systemd-analyze) are checked. Then dpkg removes and purges it
// and nothing may be left. The package is purged in afterAll whatever failed before.
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { appendFileSync, existsSync, lstatSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { requireOrSkip } from '../support/env.js';
import { createFakeSysfs, type FakeSysfs } from '../support/fake-sysfs.js';
import { createVethPair, deleteLink, requireBinary, requireRoot, uniqueTag } from '../support/netns.js';
import { startProcess, type StartedProcess } from '../support/processes.js';
import { repoRoot } from '../support/relay.js';
import { PbPeer, requireProtobufPeer } from '../support/pb-peer.js';

vi.setConfig({ testTimeout: 120_000, hookTimeout: 600_000 });

const COMMANDS = [
  'virtio-forwarder',
  'vio4wd-vmm',
  'vio4wd_core_scheduler',
  'virtioforwarder_port_control',
  'virtioforwarder_stats',
  'virtioforwarder_core_pinner',
  'virtioforwarder_monitor_load',
];
const SHIMS: Record<string, string> = {
  'virtioforwarder_port_control.py': 'virtioforwarder_port_control',
  'virtioforwarder_stats.py': 'virtioforwarder_stats',
  'virtioforwarder_core_pinner.py': 'virtioforwarder_core_pinner',
  'virtioforwarder_monitor_load.py': 'virtioforwarder_monitor_load',
  'virtioforwarder_core_scheduler.py': 'vio4wd_core_scheduler',
};
const SHIM_DIRS = ['/usr/lib/virtio-forwarder', '/usr/lib64/virtio-forwarder'];
const UNITS = ['/lib/systemd/system/virtio-forwarder.service', '/lib/systemd/system/vio4wd_core_scheduler.service'];
const OWN_DIRS = ['/usr/lib/vio4wd', ...SHIM_DIRS, '/usr/share/doc/vio4wd'];
const CONFFILE = '/etc/default/virtioforwarder';
const version = (JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')) as { version: string }).version;

function sh(cmd: string, args: string[], env: NodeJS.ProcessEnv = {}): SpawnSyncReturns<string> {
  return spawnSync(cmd, args, { encoding: 'utf8', timeout: 300_000, env: { ...process.env, ...env }, maxBuffer: 64 * 1024 * 1024 });
}

const installed = () => sh('dpkg-query', ['-W', '-f=${Status}', 'vio4wd']).stdout === 'install ok installed';
const known = () => sh('dpkg-query', ['-W', '-f=${Status}', 'vio4wd']).status === 0;

/** dpkg, waiting while another dpkg or apt on this machine holds the lock. */
function dpkg(...args: string[]): SpawnSyncReturns<string> {
  const until = Date.now() + 180_000;
  for (;;) {
    const r = sh('dpkg', args);
    if (r.status === 0 || !/lock/i.test(r.stderr) || Date.now() > until) return r;
    spawnSync('sleep', ['2']);
  }
}

/** Another installation of the commands that is not this package's (npm --global, by hand): left alone. */
function foreignInstall(): string | null {
  for (const c of COMMANDS) {
    const path = `/usr/bin/${c}`;
    if (!existsSync(path) && !isLink(path)) continue;
    const owner = sh('dpkg-query', ['-S', path]);
    if (owner.status !== 0 || !owner.stdout.startsWith('vio4wd:')) return path;
  }
  return null;
}

function isLink(path: string): boolean {
  try {
    return lstatSync(path).isSymbolicLink();
  } catch {
    return false;
  }
}

const foreign = requireRoot() ? foreignInstall() : null;
const ready =
  requireRoot() &&
  ['dpkg-deb', 'dpkg', 'systemd-analyze', 'man', 'groff', 'python3', 'ip'].every(requireBinary) &&
  requireOrSkip(foreign === null, `${foreign} exists and is not from the vio4wd package; not installing over it`);

let work: string;
let deb: string;
let fileList: string[] = [];

function purge(): void {
  if (known()) {
    const r = dpkg('--purge', 'vio4wd');
    if (r.status !== 0) process.stderr.write(`deb-package: dpkg --purge failed: ${r.stderr}\n`);
  }
}

describe.skipIf(!ready)('the Debian package', () => {
  beforeAll(() => {
    // A package left by an interrupted run of this test goes first.
    purge();
    work = mkdtempSync(join(tmpdir(), `vio4wd-deb-${process.pid}-`));
  });

  afterAll(() => {
    purge();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('scripts/build-deb.sh builds vio4wd_<version>_amd64.deb and refuses what it does not understand', () => {
    const bad = sh(join(repoRoot, 'scripts/build-deb.sh'), ['--frobnicate']);
    expect(bad.status).toBe(2);
    expect(bad.stderr).toMatch(/build-deb: unknown argument '--frobnicate'/);
    const noDir = sh(join(repoRoot, 'scripts/build-deb.sh'), ['-o']);
    expect(noDir.status).toBe(2);
    expect(sh(join(repoRoot, 'scripts/build-deb.sh'), ['--help']).stdout).toMatch(/^Usage: scripts\/build-deb\.sh/);

    const r = sh(join(repoRoot, 'scripts/build-deb.sh'), ['--no-build', '-o', work]);
    expect(r.status, r.stderr).toBe(0);
    deb = r.stdout.trim();
    expect(deb).toBe(join(work, `vio4wd_${version}_amd64.deb`));
    const field = (name: string) => sh('dpkg-deb', ['--field', deb, name]).stdout.trim();
    expect(field('Package')).toBe('vio4wd');
    expect(field('Version')).toBe(version);
    expect(field('Architecture')).toBe('amd64');
    // The machine's node comes from the package nodejs; the package needs 20 or later.
    expect(sh('dpkg-query', ['-S', '/usr/bin/node']).stdout).toMatch(/^nodejs: /);
    expect(field('Depends')).toMatch(/^nodejs \(>= 20\), python3\b/);
    expect(field('Conflicts')).toBe('virtio-forwarder');
    expect(sh('dpkg-deb', ['--ctrl-tarfile', deb]).status).toBe(0);
    const conffiles = sh('sh', ['-c', `dpkg-deb --ctrl-tarfile '${deb}' | tar -xOf - ./conffiles`]).stdout;
    expect(conffiles.trim()).toBe(CONFFILE);
    // Every file belongs to root, and no test, benchmark or source map is shipped.
    const contents = sh('dpkg-deb', ['--contents', deb]).stdout.trim().split('\n');
    expect(contents.every((l) => l.split(/\s+/)[1] === 'root/root'), contents.find((l) => l.split(/\s+/)[1] !== 'root/root')).toBe(true);
    const paths = contents.map((l) => l.slice(l.indexOf(' ./') + 2).replace(/ -> .*$/, ''));
    expect(paths).toContain('/usr/lib/vio4wd/dist/daemon/main.js');
    expect(paths).toContain('/usr/lib/vio4wd/node_modules/zeromq/package.json');
    expect(paths.filter((p) => /\/dist\/(test|bench|demo)\/|\/dist\/.*\.map$|\/node_modules\/(vitest|typescript)\//.test(p))).toEqual([]);
  });

  it('dpkg installs it; every command answers --help from /usr/bin', () => {
    expect(deb, 'the build step ran').toBeTruthy();
    const r = dpkg('-i', deb);
    expect(r.status, r.stderr).toBe(0);
    expect(installed()).toBe(true);
    fileList = sh('dpkg', ['-L', 'vio4wd']).stdout.trim().split('\n');
    for (const c of COMMANDS) {
      const help = sh(`/usr/bin/${c}`, ['--help']);
      expect(help.status, `${c} --help: ${help.stderr}`).toBe(0);
      expect(help.stdout, c).toMatch(/usage/i);
      expect(help.stderr, c).toBe('');
    }
    expect(sh('/usr/bin/virtio-forwarder', ['--version']).stdout.trim()).toBe(`virtio-forwarder ${version}`);
    // A bad option is refused by the installed program, with its usage status.
    const bad = sh('/usr/bin/virtio-forwarder', ['--no-such-flag']);
    expect(bad.status).toBe(64);
    expect(bad.stderr).toMatch(/unknown option --no-such-flag/);
  });

  it('the *.py files under the original paths run the commands, directly and through python3', () => {
    for (const dir of SHIM_DIRS) {
      for (const [shim, command] of Object.entries(SHIMS)) {
        const path = join(dir, shim);
        const direct = sh(path, ['--help']);
        expect(direct.status, `${path}: ${direct.stderr}`).toBe(0);
        expect(direct.stdout).toBe(sh(`/usr/bin/${command}`, ['--help']).stdout);
        const viaPython = sh('python3', [path, '--help']);
        expect(viaPython.status, viaPython.stderr).toBe(0);
        expect(viaPython.stdout).toBe(direct.stdout);
      }
    }
    // Arguments and the exit status pass through unchanged.
    const bad = sh('/usr/lib64/virtio-forwarder/virtioforwarder_port_control.py', ['add_sock', '--pci-addr=zz:00.0', '--vhost-path=/tmp/x.sock']);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/^virtioforwarder_port_control: .*zz:00\.0/);
  });

  describe('os-vif against the installed daemon', () => {
    const tag = uniqueTag();
    const vf = `dv${tag}`;
    const peer = `dp${tag}`;
    const PCI = '0000:05:08.1';
    let sysfs: FakeSysfs | undefined;
    let daemon: StartedProcess | undefined;
    let dir: string;
    let ep: string;

    beforeAll(async () => {
      createVethPair(vf, peer);
      sysfs = createFakeSysfs({ devices: [{ pci: PCI, ifnames: [vf], physfn: '0000:05:00.0', vfIndex: 1 }] });
      dir = mkdtempSync(join(tmpdir(), `vio4wd-deb-daemon-${process.pid}-`));
      ep = `ipc://${dir}/port_control`;
      const config = join(dir, 'virtioforwarder');
      writeFileSync(
        config,
        [
          'VIRTIOFWD_CPU_MASK=0',
          `VIRTIOFWD_PID_DIR=${dir}`,
          `VIRTIOFWD_SOCKET_DIR=${dir}/sockets`,
          'VIRTIOFWD_DYNAMIC_SOCKETS=true',
          `VIRTIOFWD_SYSFS_ROOT=${sysfs.root}`,
          `VIRTIOFWD_ZMQ_PORT_CONTROL_EP=${ep}`,
          `VIRTIOFWD_ZMQ_STATS_EP=ipc://${dir}/stats`,
          'VIRTIOFWD_ZMQ_CONFIG_EP=off',
          'VIRTIOFWD_ZMQ_CORE_SCHED_EP=off',
          'VIO4WD_CORE_SCHED_ENABLE=false',
          '',
        ].join('\n'),
      );
      daemon = startProcess('/usr/bin/virtio-forwarder', ['--config', config], { label: 'installed virtio-forwarder' });
      await daemon.waitForOutput(/"msg":"virtio-forwarder ready"/, 30_000);
    });

    afterAll(async () => {
      await daemon?.stop(8000);
      deleteLink(vf);
      sysfs?.remove();
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    it.skipIf(!requireProtobufPeer())('the installed daemon answers the original protobuf messages (its .proto is in the package)', async () => {
      const sock = join(dir, 'vm-pb.sock');
      const peer = new PbPeer();
      try {
        const [domain, bus, slotFn] = [PCI.slice(0, 4), PCI.slice(5, 7), PCI.slice(8)];
        const [slot, fn] = slotFn.split('.');
        const addr = { domain: parseInt(domain, 16), bus: parseInt(bus, 16), slot: parseInt(slot, 16), function: parseInt(fn, 16) };
        const pc = (msg: Record<string, unknown>) => peer.request({ ep, type: 'PortControlRequest', msg, reply: 'PortControlResponse' });
        let a = await pc({ op: 'ADD_SOCK', vhost_path: sock, pci_addrs: [addr] });
        expect(a.reply, JSON.stringify(a)).toMatchObject({ status: 'OK' });
        a = await pc({ op: 'QUERY_PCI', vhost_path: sock });
        expect(a.reply, JSON.stringify(a)).toMatchObject({ status: 'OK', query_string: PCI });
        a = await pc({ op: 'REMOVE_SOCK', vhost_path: sock, pci_addrs: [addr] });
        expect(a.reply, JSON.stringify(a)).toMatchObject({ status: 'OK' });
      } finally {
        await peer.close();
      }
    });

    it('add_sock, query_pci and remove_sock through /usr/lib64/virtio-forwarder/virtioforwarder_port_control.py', () => {
      const tool = '/usr/lib64/virtio-forwarder/virtioforwarder_port_control.py';
      const sock = join(dir, 'vm1.sock');
      let r = sh(tool, ['add_sock', '--pci-addr', PCI, '--vhost-path', sock, '--zmq_ep', ep]);
      expect(r.status, r.stderr).toBe(0);
      expect(lstatSync(sock).isSocket()).toBe(true);
      r = sh('python3', ['/usr/lib/virtio-forwarder/virtioforwarder_port_control.py', 'query_pci', '--vhost-path', sock, `--zmq_ep=${ep}`]);
      expect(r.stdout.trim()).toBe(PCI);
      const stats = sh('/usr/lib/virtio-forwarder/virtioforwarder_stats.py', ['--stats-ep', `ipc://${dir}/stats`, '--include-inactive', '--delay', '0']);
      expect(stats.status, stats.stderr).toBe(0);
      expect(stats.stdout).toMatch(new RegExp(`^relay_0\\.vf\\.pci_addr_str=${PCI}$`, 'm'));
      expect(stats.stdout).toMatch(/^relay_0\.vf_to_vm\.internal_state=DPDK_ADDED$/m);
      // os-vif accepts 0 and 1: a second add_sock of the same path is 1, with the reason.
      r = sh(tool, ['add_sock', '--pci-addr', PCI, '--vhost-path', sock, '--zmq_ep', ep]);
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(/already/);
      r = sh(tool, ['remove_sock', '--pci-addr', PCI, '--vhost-path', sock, '--zmq_ep', ep]);
      expect(r.status, r.stderr).toBe(0);
      expect(existsSync(sock)).toBe(false);
      r = sh(tool, ['remove_sock', '--pci-addr', PCI, '--vhost-path', sock, '--zmq_ep', ep]);
      expect(r.status).toBe(1);
    });
  });

  it('man pages: man and groff render every command page without warnings', () => {
    for (const c of COMMANDS) {
      const page = `/usr/share/man/man8/${c}.8.gz`;
      expect(existsSync(page), page).toBe(true);
      expect(sh('man', ['-w', '8', c]).stdout.trim()).toBe(page);
      const shown = sh('man', ['-l', page], { MANPAGER: 'cat', PAGER: 'cat', MANWIDTH: '100' });
      expect(shown.status, shown.stderr).toBe(0);
      const text = shown.stdout.replace(/.\x08/g, '');
      expect(text).toMatch(new RegExp(`^NAME\\n\\s+${c.replace(/[-_]/g, '.')} - \\S`, 'm'));
      expect(text).toMatch(/^SYNOPSIS$/m);
      expect(text).toMatch(/^SEE ALSO$/m);
      const help = sh(`/usr/bin/${c}`, ['--help']).stdout;
      // A line of the --help text, with its dashes, is in the page as written.
      const optionLine = help.split('\n').find((l) => /^\s+--[a-z]/.test(l)) as string;
      expect(text).toContain(optionLine.trim());
      const roff = sh('sh', ['-c', `zcat '${page}' | groff -man -Tutf8 -ww -z`]);
      expect(roff.status).toBe(0);
      expect(roff.stderr, c).toBe('');
    }
    // The page generator refuses incomplete input.
    const noName = sh('node', [join(repoRoot, 'scripts/help-to-man.mjs'), '--section', '8', '--summary', 'x']);
    expect(noName.status).toBe(2);
    expect(noName.stderr).toMatch(/--name is required/);
  });

  it('systemd-analyze verify passes for the installed units, their programs and man pages', () => {
    const r = sh('systemd-analyze', ['verify', ...UNITS]);
    expect(`${r.stdout}${r.stderr}`).toBe('');
    expect(r.status).toBe(0);
    for (const unit of UNITS) {
      for (const doc of readFileSync(unit, 'utf8').match(/^Documentation=(.*)$/m)?.[1].split(/\s+/) ?? []) {
        const m = /^man:(.+)\((\d)\)$/.exec(doc) as RegExpExecArray;
        expect(sh('man', ['-w', m[2], m[1]]).status, doc).toBe(0);
      }
    }
  });

  it('remove keeps the edited conffile, purge leaves nothing behind', () => {
    expect(fileList.length).toBeGreaterThan(50);
    appendFileSync(CONFFILE, '# edited by the operator\n');
    let r = dpkg('-r', 'vio4wd');
    expect(r.status, r.stderr).toBe(0);
    expect(readFileSync(CONFFILE, 'utf8')).toMatch(/# edited by the operator\n$/);
    expect(sh('dpkg-query', ['-W', '-f=${Status}', 'vio4wd']).stdout).toBe('deinstall ok config-files');
    for (const c of COMMANDS) expect(isLink(`/usr/bin/${c}`) || existsSync(`/usr/bin/${c}`), c).toBe(false);
    r = dpkg('--purge', 'vio4wd');
    expect(r.status, r.stderr).toBe(0);
    const status = sh('dpkg-query', ['-W', '-f=${Status}', 'vio4wd']);
    expect(status.status !== 0 || status.stdout === 'unknown ok not-installed', status.stdout).toBe(true);
    expect(existsSync(CONFFILE)).toBe(false);
    for (const dir of OWN_DIRS) expect(existsSync(dir), dir).toBe(false);
    // Of everything the package had, only directories (or links to them, like a merged /lib)
    // that hold other files or that other packages own too (/usr/bin, /etc/default) may remain.
    const left = fileList
      .filter((p) => existsSync(p) || isLink(p))
      .filter((p) => !(existsSync(p) && statSync(p).isDirectory() && (readdirSync(p).length > 0 || sh('dpkg-query', ['-S', p]).status === 0)));
    expect(left).toEqual([]);
  });
});
