// The real daemon started with virtio-forwarder's configuration: its shipped file's values start
// it, and each fault of the configuration found at start-up ends it with status 78 (EX_CONFIG),
// which the units keep systemd from restarting, and a message naming the variable.
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ORIGINAL_SHIPPED_LINES, originalShippedFile } from '../support/original-config.js';
import { startProcess, stopAll, type StartedProcess } from '../support/processes.js';
import { relayBin, repoRoot } from '../support/relay.js';
import { readOnlineCpus } from '../../sys/topology.js';

const compiled = join(repoRoot, 'dist/daemon/main.js');
/** One worker CPU that exists here: the shipped 1,2 needs three CPUs. CPU 1 when there is one. */
const online = readOnlineCpus('/sys');
const workerCpu = online.includes(1) ? 1 : online[0];
const scratch = mkdtempSync(join(tmpdir(), `vio4wd-dropin-${process.pid}-`));
let count = 0;

beforeAll(() => {
  if (!existsSync(compiled)) throw new Error(`${compiled} is missing: run \`npx tsc -p .\` before the integration tests`);
});
afterAll(async () => {
  await stopAll();
  rmSync(scratch, { recursive: true, force: true });
});

/**
 * The paths and endpoints of this test on the original's command line (the options its start
 * script builds), so that nothing touches /var/run or /tmp/virtio-forwarder; the file keeps the
 * shipped values. One CPU replaces the shipped 1,2, which small machines do not have.
 */
function privateArgs(dir: string): string[] {
  return [
    `-C${workerCpu}`,
    `-p${dir}`,
    `--vhost-path=${join(dir, 'sockets')}`,
    `--zmq-port-control-ep=ipc://${dir}/port_control`,
    `--zmq-stats-ep=ipc://${dir}/stats`,
    `--zmq-core-sched-ep=ipc://${dir}/core_sched`,
  ];
}

function freshDir(): string {
  const dir = join(scratch, `run-${++count}`);
  mkdirSync(dir);
  return dir;
}

function daemon(configText: string, args: string[], dir: string): StartedProcess {
  const path = join(dir, 'virtioforwarder');
  writeFileSync(path, configText);
  return startProcess(process.execPath, [relayBin, '--config', path, ...args], { label: 'virtio-forwarder' });
}

function jsonLines(p: StartedProcess): Record<string, unknown>[] {
  return p
    .output()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

/** A configuration of the daemon with no ZMQ service, in `dir`, plus `lines`. */
function quietConfig(dir: string, lines: string[]): string {
  return [
    `VIRTIOFWD_CPU_MASK=${workerCpu}`,
    `VIRTIOFWD_PID_DIR=${dir}`,
    `VIRTIOFWD_SOCKET_DIR=${join(dir, 'sockets')}`,
    'VIO4WD_CORE_SCHED_ENABLE=n',
    'VIRTIOFWD_ZMQ_PORT_CONTROL_EP=off',
    'VIRTIOFWD_ZMQ_STATS_EP=off',
    'VIRTIOFWD_ZMQ_CONFIG_EP=off',
    ...lines,
    '',
  ].join('\n');
}

describe("virtio-forwarder's shipped configuration", () => {
  it('starts the daemon unchanged, says ready, and logs each choice the original made silently', async () => {
    const dir = freshDir();
    const p = daemon(`${ORIGINAL_SHIPPED_LINES.join('\n')}\n`, privateArgs(dir), dir);
    await p.waitForOutput(/"msg":"virtio-forwarder ready"/, 20_000);
    const logs = jsonLines(p);
    const ready = logs.find((l) => l.msg === 'virtio-forwarder ready')!;
    expect(ready).toMatchObject({ level: 'info', cpus: [workerCpu], portControl: 'zmq' });
    expect(ready.sockets).toBe(`${join(dir, 'sockets')} (client mode)`);
    expect(ready.endpoints).toEqual({
      portControl: `ipc://${dir}/port_control`,
      stats: `ipc://${dir}/stats`,
      coreSched: `ipc://${dir}/core_sched`,
    });
    const warnings = logs.filter((l) => l.level === 'warn').map((l) => String(l.msg));
    expect(warnings).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^VIRTIOFWD_IPC_PORT_CONTROL="y" is not used because VIRTIOFWD_ZMQ_PORT_CONTROL_EP is set too/),
        expect.stringMatching(/^VIRTIOFWD_ZMQ_CONFIG_EP="" \(line 22\) is blank: the config service stays off/),
        expect.stringMatching(/^VIRTIOFWD_HUGETLBFS_MOUNT_POINT="\/dev\/hugepages" \(line 10\) is ignored/),
        expect.stringMatching(/^VIRTIOFWD_BINARY="@BINDIR@\/virtio-forwarder" \(line 28\) is ignored/),
      ]),
    );
    expect(existsSync(join(dir, 'virtio-forwarder.pid'))).toBe(true);
    expect(await p.stop(8000)).toBe(0);
  });

  it("starts with the original's own shipped file when VIO4WD_ORIGINAL_SRC points to it", async (ctx) => {
    const found = originalShippedFile();
    if ('skip' in found) {
      console.warn(`skipping: ${found.skip}`);
      ctx.skip();
      return;
    }
    const dir = freshDir();
    const p = startProcess(process.execPath, [relayBin, '--config', found.path, ...privateArgs(dir)], { label: 'virtio-forwarder' });
    await p.waitForOutput(/"msg":"virtio-forwarder ready"/, 20_000);
    expect(jsonLines(p).some((l) => l.level === 'warn' && /^VIRTIOFWD_IPC_PORT_CONTROL="y" is not used/.test(String(l.msg)))).toBe(true);
    expect(await p.stop(8000)).toBe(0);
  });
});

describe('configuration faults end the daemon with status 78 and name the variable', () => {
  it.each([
    ['VIRTIOFWD_JUMBO=maybe', /VIRTIOFWD_JUMBO="maybe" \(line 8\): expected y or n/],
    ['VIRTIOFWD_CPU_MASK=4095', /VIRTIOFWD_CPU_MASK="4095" \(line 8\): CPU 4095 is not online/],
  ])('a bad value in the file: %s', async (line, message) => {
    const dir = freshDir();
    const p = daemon(quietConfig(dir, [line]), [], dir);
    expect(await p.exited).toBe(78);
    expect(p.output()).toMatch(message);
    expect(p.output()).not.toContain('virtio-forwarder ready');
  });

  it('a static VF that does not exist', async () => {
    const dir = freshDir();
    const p = daemon(quietConfig(dir, ['VIRTIOFWD_STATIC_VFS=(0000:7f:1f.7=3)']), [], dir);
    expect(await p.exited).toBe(78);
    expect(p.output()).toMatch(/virtio-forwarder: VIRTIOFWD_STATIC_VFS="0000:7f:1f\.7=3": relay 3: cannot attach VF 0000:7f:1f\.7/);
    const fatal = jsonLines(p).find((l) => l.level === 'fatal');
    expect(fatal).toMatchObject({ variable: 'VIRTIOFWD_STATIC_VFS' });
    // The PID file went with the daemon.
    expect(existsSync(join(dir, 'virtio-forwarder.pid'))).toBe(false);
  });

  it.each([['server', 'n'], ['client', 'y']])('a socket directory that is a regular file (%s mode)', async (_mode, client) => {
    const dir = freshDir();
    const file = join(dir, 'not-a-dir');
    writeFileSync(file, 'x');
    const p = daemon(quietConfig(dir, [`VIRTIOFWD_SOCKET_DIR=${file}`, `VIRTIOFWD_VHOST_CLIENT=${client}`]), [], dir);
    expect(await p.exited).toBe(78);
    expect(p.output()).toContain(`virtio-forwarder: VIRTIOFWD_SOCKET_DIR="${file}" is not a directory`);
    expect(jsonLines(p).find((l) => l.level === 'fatal')).toMatchObject({ variable: 'VIRTIOFWD_SOCKET_DIR' });
  });

  it('a PID directory that is missing or a regular file', async () => {
    for (const make of [(path: string) => writeFileSync(path, ''), () => undefined]) {
      const dir = freshDir();
      const pidDir = join(dir, 'pid');
      make(pidDir);
      const p = daemon(quietConfig(dir, [`VIRTIOFWD_PID_DIR=${pidDir}`]), [], dir);
      expect(await p.exited).toBe(78);
      expect(p.output()).toContain(`virtio-forwarder: VIRTIOFWD_PID_DIR="${pidDir}" cannot hold the PID file: PID directory ${pidDir} (VIRTIOFWD_PID_DIR) is not usable`);
    }
  });

  it('a ZMQ endpoint that cannot be bound (its port is taken by another listener)', async () => {
    const server: Server = createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as { port: number }).port;
    try {
      const dir = freshDir();
      const p = daemon(quietConfig(dir, [`VIRTIOFWD_ZMQ_STATS_EP=tcp://127.0.0.1:${port}`]), [], dir);
      expect(await p.exited).toBe(78);
      expect(p.output()).toMatch(new RegExp(`virtio-forwarder: VIRTIOFWD_ZMQ_STATS_EP="tcp://127\\.0\\.0\\.1:${port}" cannot be used: stats service: cannot bind`));
      expect(jsonLines(p).find((l) => l.level === 'fatal')).toMatchObject({ variable: 'VIRTIOFWD_ZMQ_STATS_EP' });
    } finally {
      server.close();
    }
  });

  it('an ipc endpoint whose directory is a regular file', async () => {
    const dir = freshDir();
    writeFileSync(join(dir, 'file'), '');
    const p = daemon(quietConfig(dir, [`VIRTIOFWD_ZMQ_PORT_CONTROL_EP=ipc://${dir}/file/pc`]), [], dir);
    expect(await p.exited).toBe(78);
    expect(p.output()).toContain(`virtio-forwarder: VIRTIOFWD_ZMQ_PORT_CONTROL_EP="ipc://${dir}/file/pc" cannot be used: portControl service`);
  });

  it('but not a PID file held by another running daemon, which may be on its way out (status 1)', async () => {
    const dir = freshDir();
    const first = daemon(quietConfig(dir, []), [], dir);
    await first.waitForOutput(/"msg":"virtio-forwarder ready"/, 20_000);
    const secondDir = freshDir();
    const second = daemon(quietConfig(secondDir, [`VIRTIOFWD_PID_DIR=${dir}`]), [], secondDir);
    expect(await second.exited).toBe(1);
    expect(second.output()).toContain(`another virtio-forwarder is running: ${join(dir, 'virtio-forwarder.pid')} is locked by pid ${first.pid}`);
    expect(await first.stop(8000)).toBe(0);
  });

  it('escapes a hostile value so it cannot add a line to the log', async () => {
    const dir = freshDir();
    const forged = `6\n{"level":"info","msg":"virtio-forwarder ready"}${'x'.repeat(200)}`;
    const p = daemon(quietConfig(dir, [`VIRTIOFWD_LOG_LEVEL='${forged}'`]), [], dir);
    expect(await p.exited).toBe(78);
    const out = p.output();
    expect(out.split('\n').filter((l) => l !== '')).toHaveLength(1);
    expect(out).not.toMatch(/^\{/m);
    expect(out).toContain('VIRTIOFWD_LOG_LEVEL="6\\n{\\"level\\":\\"info\\"');
    expect(out).toMatch(/x…" \(line 8\): expected a log level/);
  });
});
