// The IPC file monitor through startControlServices: commands written to the file reach the
// registry, bad lines are reported without stopping the monitor, and the file is consumed.
import { appendFileSync, existsSync, linkSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startControlServices, type ControlServices } from '../../port-control/services.js';
import { MemoryRegistry, type RegistryCall } from '../support/memory-registry.js';
import { waitFor } from '../support/processes.js';

const dir = mkdtempSync(join(tmpdir(), `pc-ipc-${process.pid}-`));
const cmdFile = join(dir, 'vio_cmd');
const sysfs = join(dir, 'sys');
const logLines: { level: number; msg: string }[] = [];
const logger = pino({ level: 'info' }, { write: (line: string) => void logLines.push(JSON.parse(line)) });

/** vf1 is VF index 1 (0000:05:08.1) of PF 0000:05:00.0; other names are plain netdevs. */
function fakeSysfs(): void {
  const dev = (pci: string) => join(sysfs, 'devices/pci0000:00', pci);
  mkdirSync(dev('0000:05:00.0'), { recursive: true });
  mkdirSync(dev('0000:05:08.1'), { recursive: true });
  mkdirSync(join(sysfs, 'class/net/vf1'), { recursive: true });
  symlinkSync(dev('0000:05:08.1'), join(sysfs, 'class/net/vf1/device'));
  symlinkSync(dev('0000:05:00.0'), join(dev('0000:05:08.1'), 'physfn'));
  symlinkSync(dev('0000:05:08.1'), join(dev('0000:05:00.0'), 'virtfn1'));
}

const registry = new MemoryRegistry({ sysfsRoot: sysfs });
let services: ControlServices;
let seen = 0;

async function runCommands(text: string): Promise<RegistryCall[]> {
  writeFileSync(cmdFile, text);
  await waitFor(() => !existsSync(cmdFile), 10_000, `${cmdFile} to be consumed`, 20);
  await services.ipc?.idle();
  const calls = registry.mutations().slice(seen);
  seen += calls.length;
  return calls;
}

const errorsLogged = () => logLines.filter((l) => l.level >= 50).map((l) => l.msg);

beforeAll(async () => {
  fakeSysfs();
  // A command left before the daemon starts is still carried out.
  writeFileSync(cmdFile, 'add_port eth0 2\n');
  services = await startControlServices(registry, { ipcPortControl: true, ipcFile: cmdFile }, logger);
  expect(services.portControl).toEqual({ mode: 'ipc', file: cmdFile });
});

afterAll(async () => {
  await services?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('IPC file monitor', () => {
  it('runs a command left in the file before it started', async () => {
    await waitFor(() => !existsSync(cmdFile), 10_000, 'the startup command to be consumed', 20);
    await services.ipc?.idle();
    expect(registry.mutations()).toEqual([{ method: 'addVf', args: [2, { netdev: 'eth0' }, {}] }]);
    seen = 1;
  });

  it('adds a VF under its VF index when no relay id is given, and removes it by netdev', async () => {
    expect(await runCommands('add_port vf1\n')).toEqual([{ method: 'addVf', args: [1, { pci: '0000:05:08.1' }, {}] }]);
    expect(await runCommands('del_port vf1\n')).toEqual([{ method: 'removeDevice', args: [1, { pci: '0000:05:08.1' }] }]);
  });

  it('runs every line of a file in order, reporting bad lines without stopping', async () => {
    logLines.length = 0;
    const calls = await runCommands(['add_port eth5 3', 'frobnicate eth5', 'add_port eth6', 'del_port nothere', '', 'add_port eth7 4', 'del_port eth5'].join('\n'));
    expect(calls).toEqual([
      { method: 'addVf', args: [3, { netdev: 'eth5' }, {}] },
      { method: 'addVf', args: [4, { netdev: 'eth7' }, {}] },
      { method: 'removeDevice', args: [3, {}] },
    ]);
    const errors = errorsLogged();
    expect(errors).toHaveLength(3);
    expect(errors[0]).toMatch(/line 2 "frobnicate eth5" refused: unknown command "frobnicate"/);
    expect(errors[1]).toMatch(/add_port eth6 failed: eth6 is not a VF, so the relay id must be given/);
    expect(errors[2]).toMatch(/del_port nothere failed: no relay holds nothere/);
    expect(logLines.filter((l) => l.level === 30 && /add_port eth7: added to relay 4/.test(l.msg))).toHaveLength(1);
  });

  it('logs registry refusals and keeps watching', async () => {
    logLines.length = 0;
    // eth7 already holds relay 4.
    expect(await runCommands('add_port eth8 4')).toEqual([{ method: 'addVf', args: [4, { netdev: 'eth8' }, {}] }]);
    expect(errorsLogged()[0]).toMatch(/add_port eth8 failed: relay 4 already has VF eth7/);
    // Appending to a fresh file works the same way, and the file is consumed each time.
    appendFileSync(cmdFile, 'del_port eth7\n');
    await waitFor(() => !existsSync(cmdFile), 10_000, 'the appended command to be consumed', 20);
    await services.ipc?.idle();
    expect(registry.mutations().slice(seen)).toEqual([{ method: 'removeDevice', args: [4, {}] }]);
    seen = registry.mutations().length;
  });

  it('does not follow a symlink or a hard link planted as the command file', async () => {
    const secret = join(dir, 'secret');
    writeFileSync(secret, 'add_port leaked 9\nroot:s3cr3t-hash:19000\n');
    for (const [plant, reason] of [
      [() => symlinkSync(secret, cmdFile), /ignored: it is a symbolic link/],
      [() => linkSync(secret, cmdFile), /ignored: it is a hard link/],
    ] as const) {
      logLines.length = 0;
      plant();
      await waitFor(() => !existsSync(cmdFile), 10_000, `${cmdFile} to be taken away`, 20);
      await services.ipc?.idle();
      expect(errorsLogged()).toEqual([expect.stringMatching(reason)]);
      expect(JSON.stringify(logLines)).not.toContain('s3cr3t');
      expect(registry.mutations().slice(seen)).toEqual([]);
    }
    expect(readFileSync(secret, 'utf8')).toContain('s3cr3t');
  });
});
