// A real ovsdb-server with the Open_vSwitch schema and no ovs-vswitchd, for the OVSDB monitor
// tests. ovs-vsctl always gets --no-wait: without vswitchd it would wait for cur_cfg forever.
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { findBinary, run } from './env.js';
import { startProcess, waitFor, type StartedProcess } from './processes.js';

export const VSWITCH_SCHEMA = '/usr/share/openvswitch/vswitch.ovsschema';

/** What the OVSDB tests need, as a message for requireOrSkip, or null when everything is there. */
export function missingOvsdbPrerequisite(): string | null {
  for (const bin of ['ovsdb-server', 'ovsdb-tool', 'ovs-vsctl']) {
    if (!findBinary(bin)) return `this test needs ${bin} (Debian package openvswitch-common / openvswitch-switch)`;
  }
  if (!existsSync(VSWITCH_SCHEMA)) return `this test needs ${VSWITCH_SCHEMA} (Debian package openvswitch-common)`;
  return null;
}

export class OvsdbSandbox {
  readonly dbPath: string;
  readonly socketPath: string;
  private server: StartedProcess | undefined;

  constructor(readonly dir: string) {
    mkdirSync(dir, { recursive: true });
    this.dbPath = join(dir, 'conf.db');
    this.socketPath = join(dir, 'db.sock');
  }

  /** Creates the database (once) and starts ovsdb-server in the foreground, ended by PID in stop(). */
  async start(): Promise<void> {
    if (!existsSync(this.dbPath)) run('ovsdb-tool', ['create', this.dbPath, VSWITCH_SCHEMA]);
    rmSync(this.socketPath, { force: true });
    this.server = startProcess(
      findBinary('ovsdb-server') as string,
      [this.dbPath, `--remote=punix:${this.socketPath}`, `--unixctl=${join(this.dir, 'ovsdb-server.ctl')}`, '--no-chdir', '-vconsole:warn'],
      { label: 'ovsdb-server' },
    );
    await waitFor(() => existsSync(this.socketPath), 10_000, `ovsdb-server socket ${this.socketPath}`, 50);
    // The socket file appears before the server accepts on it on some versions: one real query.
    await waitFor(() => {
      this.vsctl('show');
      return true;
    }, 10_000, 'ovsdb-server to answer ovs-vsctl', 100);
  }

  async stop(): Promise<void> {
    await this.server?.stop();
    this.server = undefined;
  }

  get pid(): number | undefined {
    return this.server?.pid;
  }

  /** Runs `ovs-vsctl --db=unix:<sock> --no-wait <args>` and returns its output. */
  vsctl(...args: string[]): string {
    return run('ovs-vsctl', [`--db=unix:${this.socketPath}`, '--no-wait', '--timeout=10', ...args]);
  }
}
