// virtio-forwarder, the program: the composition root that wires the layers together. It reads
// the configuration, locks the PID file, starts one pinned worker per CPU, attaches the static VFs,
// opens the vhost-user sockets (relay/), starts the control channels and the core-sched service
// (port-control/) on the relay's registry API, and tells systemd it is ready. SIGTERM/SIGINT undo
// all of it in reverse order and exit 0. It lives above relay/ so that relay/ never imports the
// control channels that drive it.
import type { Logger } from 'pino';
import { Reactor } from '../sys/poll.js';
import { parseArgs, resolveConfigPath, helpText, versionText, UsageError, EXIT_USAGE, EXIT_CONFIG } from './cli.js';
import { loadConfig, ConfigError, socketPathFor, type RelayConfig } from '../relay/config/load.js';
import { formatListenAddress } from '../vocabulary/listen-address.js';
import { MAX_RELAYS } from '../vocabulary/limits.js';
import { createLogger, componentLogger } from './log.js';
import { acquirePidFile, type PidFile } from './pidfile.js';
import { notifyReady, notifyStopping } from './sd-notify.js';
import { createCounterBuffer } from '../relay/datapath/counters.js';
import { WorkerPool } from '../relay/control/worker-pool.js';
import { RelayRegistryImpl } from '../relay/control/registry.js';
import { startControlServices, EndpointStartError, type ControlServices } from '../port-control/services.js';
import { ENDPOINT_VARIABLES } from '../vocabulary/endpoints.js';
import { escapeInvisible, shownValue } from '../relay/config/values.js';
import { writeStderr } from '../sys/journal.js';
import { statSync } from 'node:fs';
import { MetricsListenError, startMetricsServer, type MetricsServer } from '../port-control/metrics.js';
import { describeSocketAccess } from '../relay/control/socket-dir.js';
import { socketAccessFor } from '../relay/config/accounts.js';

export interface Daemon {
  registry: RelayRegistryImpl;
  pool: WorkerPool;
  config: RelayConfig;
  /** The Prometheus endpoint, when VIRTIOFWD_METRICS_LISTEN asks for one. */
  metrics: MetricsServer | null;
  stop(): Promise<void>;
}

/**
 * A fault of the configuration found while starting: a directory, a device or an endpoint the
 * file names cannot be used. Restarting cannot help, so the daemon exits EXIT_CONFIG (which the
 * unit's RestartPreventExitStatus= covers) with a message naming the variable.
 */
export class StartupConfigError extends Error {
  constructor(
    readonly variable: string,
    message: string,
  ) {
    super(message);
    this.name = 'StartupConfigError';
  }
}

/** Runs `step`; its failure becomes a StartupConfigError naming `variable` and its value. */
async function asConfigFault<T>(variable: string, value: string, step: () => T | Promise<T>): Promise<T> {
  try {
    return await step();
  } catch (err) {
    if (err instanceof StartupConfigError) throw err;
    throw new StartupConfigError(variable, `${variable}="${shownValue(value)}": ${escapeInvisible((err as Error).message)}`);
  }
}

/** Starts everything; throws (after undoing what it started) when something cannot start. */
/**
 * Test hooks: with VIO4WD_TEST_HOOKS=1, SIGUSR2 ends the first worker thread (its supervision is
 * tested); with VIO4WD_TEST_HOOKS=block, it leaves that thread stuck in a system call (the
 * watchdog is tested). Without the variable SIGUSR2 has its default meaning. With
 * VIO4WD_TEST_HOOKS=no-dirty-log the relays negotiate live migration's dirty logging but mark
 * nothing (relay/control/relay.ts), to show what a migration without it does.
 */
export const testHooksEnabled = (): boolean => process.env.VIO4WD_TEST_HOOKS === '1' || process.env.VIO4WD_TEST_HOOKS === 'block';
const dirtyLogIgnored = (): boolean => process.env.VIO4WD_TEST_HOOKS === 'no-dirty-log';

/** Exit status when worker supervision gives up: not 0, so that systemd restarts the daemon. */
export const EXIT_WORKER_FAILED = 1;

const METRICS_VARIABLE = 'VIRTIOFWD_METRICS_LISTEN';

/**
 * Starts everything; throws (after undoing what it started) when something cannot start: a
 * StartupConfigError when the configuration asks for something this host refuses (a directory,
 * device or address it names cannot be used), which the program reports as a configuration error.
 */
export async function startDaemon(config: RelayConfig, log: Logger, onFatal?: (message: string) => void): Promise<Daemon> {
  const undo: (() => Promise<void> | void)[] = [];
  const unwind = async () => {
    for (const step of undo.reverse()) {
      try {
        await step();
      } catch (err) {
        log.warn({ err: (err as Error).message }, 'shutdown step failed');
      }
    }
  };
  try {
    let pid: PidFile;
    try {
      pid = acquirePidFile(config.pidDir);
    } catch (err) {
      // Another instance holding the lock may be on its way out: that one is worth a restart.
      if ((err as Error).message.startsWith('another virtio-forwarder is running')) throw err;
      throw new StartupConfigError(
        'VIRTIOFWD_PID_DIR',
        `VIRTIOFWD_PID_DIR="${shownValue(config.pidDir)}" cannot hold the PID file: ${escapeInvisible((err as Error).message)}`,
      );
    }
    undo.push(() => pid.release());
    if (!config.dynamicSockets) checkSocketDir(config.socketDir);

    // The metrics address first: one the host refuses stops the start before any worker, VF or
    // socket exists (no VM sees a socket come and go).
    let metrics: MetricsServer | null = null;
    if (config.metricsListen) {
      try {
        metrics = await startMetricsServer(config.metricsListen, componentLogger(log, 'metrics'));
      } catch (err) {
        if (!(err instanceof MetricsListenError)) throw err;
        throw new StartupConfigError(METRICS_VARIABLE, `${METRICS_VARIABLE}=${formatListenAddress(config.metricsListen)}: ${err.message}`);
      }
      const server = metrics;
      undo.push(() => server.close());
    }

    const counters = createCounterBuffer();
    const pool = new WorkerPool({
      cpus: config.cpus,
      pollMode: config.pollMode,
      counters,
      log: componentLogger(log, 'workers'),
      onRingError: (relay, dir, queue) => log.warn({ relay, dir, queue }, 'guest ring stopped after a protocol violation; the VM must reset the device'),
      onFatal,
      testHooks: testHooksEnabled(),
      confineHousekeeping: true,
    });
    undo.push(() => pool.stop());
    await pool.start();

    const reactor = new Reactor();
    undo.push(() => reactor.close());

    // A blank socket owner or group means libvirt's QEMU accounts where they exist; say which.
    const socketAccess = socketAccessFor(config);
    const access = describeSocketAccess(socketAccess);
    const accessFields = { owner: socketAccess.owner?.name ?? null, group: socketAccess.group?.name ?? null };
    if (access.onlyRoot) log.warn(accessFields, access.message);
    else log.info(accessFields, access.message);

    const registry = new RelayRegistryImpl({ config, pool, reactor, counters, socketAccess, log: componentLogger(log, 'relays'), ignoreDirtyLog: dirtyLogIgnored() });
    undo.push(() => registry.shutdown());

    for (const s of config.staticVfs) {
      const device = s.vf.pci ?? s.vf.netdev ?? '';
      await asConfigFault('VIRTIOFWD_STATIC_VFS', `${device}=${s.relay}`, () => registry.addVf(s.relay, s.vf));
    }
    if (!config.dynamicSockets) {
      await asConfigFault('VIRTIOFWD_SOCKET_DIR', config.socketDir, () => {
        for (let id = 0; id < MAX_RELAYS; id++) registry.openSocket(id, socketPathFor(config, id));
      });
    }

    const mode = config.portControl.mode;
    const services: ControlServices = await startServices(
      registry,
      {
        zmqPortControlEp: mode === 'zmq' ? config.zmq.portControl : null,
        ovsdbSockPath: mode === 'ovsdb' ? config.portControl.ovsdbSocketPath : null,
        ipcPortControl: mode === 'ipc',
        ipcFile: config.portControl.ipcCommandFile,
        statsEp: config.zmq.stats,
        configEp: config.zmq.config,
        coreSchedEp: config.zmq.coreSched,
        coreSchedEnabled: config.coreScheduler.enabled,
        socketGroup: config.socketGroup?.id,
      },
      componentLogger(log, 'control'),
    );
    undo.push(() => services.close());

    if (metrics) {
      metrics.serve(registry);
      log.info({ url: metrics.url }, `Prometheus metrics at ${metrics.url} (${METRICS_VARIABLE})`);
    }

    log.info(
      {
        cpus: config.cpus,
        pollMode: config.pollMode,
        sockets: config.dynamicSockets ? 'dynamic' : `${config.socketDir} (${config.vhostClient ? 'client' : 'server'} mode)`,
        staticVfs: config.staticVfs.length,
        portControl: services.portControl.mode,
        endpoints: services.endpoints,
        metrics: metrics?.url ?? 'off',
      },
      'virtio-forwarder ready',
    );
    return {
      registry,
      pool,
      config,
      metrics,
      stop: unwind,
    };
  } catch (err) {
    await unwind();
    throw err;
  }
}

/** startControlServices, with an endpoint that cannot be bound reported as its variable's fault. */
async function startServices(...args: Parameters<typeof startControlServices>): Promise<ControlServices> {
  try {
    return await startControlServices(...args);
  } catch (err) {
    if (!(err instanceof EndpointStartError)) throw err;
    const variable = ENDPOINT_VARIABLES[err.service];
    throw new StartupConfigError(variable, `${variable}="${shownValue(err.endpoint)}" cannot be used: ${escapeInvisible(err.message)}`);
  }
}

/** The socket directory, when it exists, must be a directory (a file there would fail every socket, or, in client mode, every retry). */
function checkSocketDir(dir: string): void {
  let isDirectory = true;
  try {
    isDirectory = statSync(dir).isDirectory();
  } catch {
    return; // missing: created when the sockets are opened
  }
  if (!isDirectory) {
    throw new StartupConfigError('VIRTIOFWD_SOCKET_DIR', `VIRTIOFWD_SOCKET_DIR="${shownValue(dir)}" is not a directory`);
  }
}

/** The program: exit 0 after a clean stop, 1 when it cannot start, EXIT_CONFIG for a bad configuration, EXIT_USAGE for a bad command line. */
export async function main(argv: string[]): Promise<void> {
  let args;
  try {
    args = parseArgs(argv);
  } catch (err) {
    if (err instanceof UsageError) {
      writeStderr(`virtio-forwarder: ${err.message}\nTry 'virtio-forwarder --help'.\n`, 3);
      process.exit(EXIT_USAGE);
    }
    throw err;
  }
  if (args.help) {
    process.stdout.write(helpText());
    return;
  }
  if (args.version) {
    process.stdout.write(`${versionText()}\n`);
    return;
  }
  let config: RelayConfig;
  let warnings: string[];
  try {
    ({ config, warnings } = loadConfig({ path: resolveConfigPath(args), overrides: args.overrides }));
  } catch (err) {
    const message = err instanceof ConfigError ? err.message : escapeInvisible((err as Error).message);
    writeStderr(`virtio-forwarder: ${message}\n`, 3);
    // A distinct status, so systemd does not restart a daemon whose configuration cannot work.
    process.exit(EXIT_CONFIG);
  }
  const log = createLogger({ syslogLevel: config.logLevel, name: 'virtio-forwarder' });
  for (const w of warnings) log.warn(w);

  // Signals are handled from the start: one that arrives while the daemon is still starting
  // stops it as soon as the start has finished, with the same clean shutdown.
  let daemon: Daemon | null = null;
  let stopRequested: string | null = null;
  let stopping = false;
  const stop = async (signal: string) => {
    if (!daemon) {
      stopRequested ??= signal;
      return;
    }
    if (stopping) return;
    stopping = true;
    notifyStopping();
    log.info({ signal }, 'stopping');
    const watchdog = setTimeout(() => {
      log.error('shutdown took longer than 10 s; exiting anyway');
      process.exit(1);
    }, 10_000);
    await daemon.stop();
    clearTimeout(watchdog);
    log.info('stopped');
    setTimeout(() => process.exit(0), 20);
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));

  // Worker supervision gave up: leave with a failure status (after pino has flushed) so that
  // systemd starts the daemon again rather than leaving every VM without forwarding.
  // The daemon is stopped first: process.exit waits for the reactor's pending epoll_wait on the
  // thread pool, so exiting without closing it hangs. When the stop itself cannot finish (a
  // worker stuck in a system call), the process kills itself (SIGKILL: it ends whatever its
  // threads do, and leaves no core file), and systemd restarts it after the signal just as
  // after a failure status.
  const fatal = (message: string) => {
    if (stopping) return;
    stopping = true;
    writeStderr(`virtio-forwarder: ${message}\n`, 2);
    notifyStopping();
    const killTimer = setTimeout(() => {
      log.fatal('stopping after the worker failure took longer than 5 s; killing the process');
      process.kill(process.pid, 'SIGKILL');
    }, 5000);
    void Promise.resolve(daemon?.stop())
      .catch(() => undefined)
      .then(() => {
        clearTimeout(killTimer);
        setTimeout(() => process.exit(EXIT_WORKER_FAILED), 50);
      });
  };
  // The test hook is in place before the start, like the signal handlers: a SIGUSR2 sent as soon
  // as the daemon logs that it is ready must not meet the default action (the process ending).
  let crashRequested = false;
  const crashFirstWorker = () => {
    const how = process.env.VIO4WD_TEST_HOOKS === 'block' ? 'block' : 'throw';
    log.warn({ how }, 'test hook: ending the first worker thread');
    daemon?.pool.crashWorker(how);
  };
  if (testHooksEnabled()) {
    process.on('SIGUSR2', () => {
      if (daemon) crashFirstWorker();
      else crashRequested = true;
    });
  }
  try {
    daemon = await startDaemon(config, log, fatal);
  } catch (err) {
    const configFault = err instanceof StartupConfigError;
    const fields = configFault ? { err: err.message, variable: err.variable } : { err: (err as Error).message };
    log.fatal(fields, `cannot start: ${(err as Error).message}`);
    writeStderr(`virtio-forwarder: ${(err as Error).message}\n`, 2);
    // A fault of the configuration stays until the file is fixed: EXIT_CONFIG keeps systemd from
    // restarting every RestartSec. Let pino flush before leaving.
    setTimeout(() => process.exit(configFault ? EXIT_CONFIG : 1), 50);
    return;
  }
  notifyReady(`forwarding on CPUs ${config.cpus.join(',')}`);
  if (stopRequested) void stop(stopRequested);

  process.on('SIGHUP', () => log.info('SIGHUP ignored: restart the service to reload the configuration'));
  if (crashRequested) crashFirstWorker();
}
