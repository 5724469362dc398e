// Starts bin/virtio-forwarder as a real process for integration tests (run `npx tsc -p .` first).
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { repoRoot } from './guest-image.js';
import { startProcess, type StartedProcess } from './processes.js';

export { repoRoot };
export const relayBin = join(repoRoot, 'bin/virtio-forwarder');

export interface RelayOptions {
  /** Worker CPUs (default [0]: leaves CPU 1 to the guest or traffic source). */
  cpus?: number[];
  /** VF (netdev name or PCI address) → relay id. */
  staticVfs?: Record<string, number>;
  vhostClient?: boolean;
  dynamicSockets?: boolean;
  pollMode?: 'busy' | 'adaptive';
  /** Extra configuration file lines (KEY=VALUE). */
  configLines?: string[];
  /** Extra command-line flags. */
  args?: string[];
  /** Turn the ZMQ services off unless the test asks for them (default true). */
  noZmq?: boolean;
  logLevel?: number;
  echo?: boolean;
  /** Extra environment variables of the daemon (e.g. VIO4WD_TEST_HOOKS=1). */
  env?: Record<string, string>;
  /** Reuse a socket directory (a restarted relay must find the same paths); kept on stop. */
  socketDir?: string;
  /** How long to wait for "virtio-forwarder ready" (default 20 s; slower inside the nested rig). */
  readyTimeoutMs?: number;
}

export interface RunningRelay {
  proc: StartedProcess;
  pid: number;
  dir: string;
  socketDir: string;
  configPath: string;
  socketPath(id: number): string;
  /** Parsed JSON log lines so far. */
  logs(): Record<string, unknown>[];
  stop(): Promise<number | string>;
}

export async function startRelay(o: RelayOptions = {}): Promise<RunningRelay> {
  const dir = mkdtempSync(join(tmpdir(), 'vio4wd-relay-'));
  const socketDir = o.socketDir ?? join(dir, 'sockets');
  const configPath = join(dir, 'virtioforwarder');
  const lines = [
    `VIRTIOFWD_CPU_MASK=${(o.cpus ?? [0]).join(',')}`,
    `VIRTIOFWD_LOG_LEVEL=${o.logLevel ?? 7}`,
    `VIRTIOFWD_SOCKET_DIR=${socketDir}`,
    `VIRTIOFWD_PID_DIR=${dir}`,
    `VIRTIOFWD_POLL_MODE=${o.pollMode ?? 'adaptive'}`,
    `VIRTIOFWD_VHOST_CLIENT=${o.vhostClient ? 'true' : 'false'}`,
    `VIRTIOFWD_DYNAMIC_SOCKETS=${o.dynamicSockets ? 'true' : 'false'}`,
  ];
  const vfs = Object.entries(o.staticVfs ?? {}).map(([vf, id]) => `${vf}=${id}`);
  if (vfs.length > 0) lines.push(`VIRTIOFWD_STATIC_VFS=(${vfs.join(' ')})`);
  if (o.noZmq ?? true) {
    lines.push(
      'VIO4WD_CORE_SCHED_ENABLE=false',
      'VIRTIOFWD_ZMQ_PORT_CONTROL_EP=off',
      'VIRTIOFWD_ZMQ_STATS_EP=off',
      'VIRTIOFWD_ZMQ_CONFIG_EP=off',
      'VIRTIOFWD_ZMQ_CORE_SCHED_EP=off',
    );
  }
  lines.push(...(o.configLines ?? []));
  writeFileSync(configPath, `${lines.join('\n')}\n`);
  const proc = startProcess('node', [relayBin, '--config', configPath, ...(o.args ?? [])], {
    label: 'relay',
    echo: o.echo,
    env: o.env ? { ...process.env, ...o.env } : undefined,
  });
  await proc.waitForOutput(/"msg":"virtio-forwarder ready"/, o.readyTimeoutMs ?? 20_000);
  return {
    proc,
    pid: proc.pid,
    dir,
    socketDir,
    configPath,
    socketPath: (id) => join(socketDir, `virtio-forwarder${id}.sock`),
    logs: () =>
      proc
        .output()
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => {
          try {
            return JSON.parse(l) as Record<string, unknown>;
          } catch {
            return {};
          }
        }),
    async stop() {
      const status = await proc.stop(8000);
      rmSync(dir, { recursive: true, force: true });
      return status;
    },
  };
}

/** One relay's counters per direction, as the operators' tool prints them (virtioforwarder_stats --json). */
export function statsToolCounters(statsEp: string, id: number): { vfToVm: Record<string, number>; vmToVf: Record<string, number> } {
  const out = execFileSync('node', [join(repoRoot, 'bin/virtioforwarder_stats'), `--stats-ep=${statsEp}`, '--json', '--delay=0', '--include-inactive'], { encoding: 'utf8' });
  const reply = JSON.parse(out) as { relays: { id: number; vfToVm: Record<string, number>; vmToVf: Record<string, number> }[] };
  const relay = reply.relays.find((r) => r.id === id);
  if (!relay) throw new Error(`relay ${id} missing from stats: ${out}`);
  return relay;
}
