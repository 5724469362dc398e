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
import { MAX_RELAYS } from '../vocabulary/limits.js';
import { createLogger, componentLogger } from './log.js';
import { acquirePidFile, type PidFile } from './pidfile.js';
import { notifyReady, notifyStopping } from './sd-notify.js';
import { createCounterBuffer } from '../relay/datapath/counters.js';
import { WorkerPool } from '../relay/control/worker-pool.js';
import { RelayRegistryImpl } from '../relay/control/registry.js';
import { describeSocketAccess } from '../relay/control/socket-dir.js';
import { socketAccessFor } from '../relay/config/accounts.js';
import { startControlServices, type ControlServices } from '../port-control/services.js';

export interface Daemon {
  registry: RelayRegistryImpl;
  pool: WorkerPool;
  config: RelayConfig;
  stop(): Promise<void>;
}

/** Starts everything; throws (after undoing what it started) when something cannot start. */
/**
 * Test hooks: with VIO4WD_TEST_HOOKS=1, SIGUSR2 ends the first worker thread (its supervision is
 * tested); with VIO4WD_TEST_HOOKS=block, it leaves that thread stuck in a system call (the
 * watchdog is tested). Without the variable SIGUSR2 has its default meaning.
 */
export const testHooksEnabled = (): boolean => process.env.VIO4WD_TEST_HOOKS === '1' || process.env.VIO4WD_TEST_HOOKS === 'block';

/** Exit status when worker supervision gives up: not 0, so that systemd restarts the daemon. */
export const EXIT_WORKER_FAILED = 1;

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
    const pid: PidFile = acquirePidFile(config.pidDir);
    undo.push(() => pid.release());

    const counters = createCounterBuffer();
    const pool = new WorkerPool({
      cpus: config.cpus,
      pollMode: config.pollMode,
      counters,
      log: componentLogger(log, 'workers'),
      onRingError: (relay, dir, queue) => log.warn({ relay, dir, queue }, 'guest ring stopped after a protocol violation; the VM must reset the device'),
      onFatal,
      testHooks: testHooksEnabled(),
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

    const registry = new RelayRegistryImpl({ config, pool, reactor, counters, socketAccess, log: componentLogger(log, 'relays') });
    undo.push(() => registry.shutdown());

    for (const s of config.staticVfs) {
      await registry.addVf(s.relay, s.vf);
    }
    if (!config.dynamicSockets) {
      for (let id = 0; id < MAX_RELAYS; id++) registry.openSocket(id, socketPathFor(config, id));
    }

    const mode = config.portControl.mode;
    const services: ControlServices = await startControlServices(
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

    log.info(
      {
        cpus: config.cpus,
        pollMode: config.pollMode,
        sockets: config.dynamicSockets ? 'dynamic' : `${config.socketDir} (${config.vhostClient ? 'client' : 'server'} mode)`,
        staticVfs: config.staticVfs.length,
        portControl: services.portControl.mode,
        endpoints: services.endpoints,
      },
      'virtio-forwarder ready',
    );
    return {
      registry,
      pool,
      config,
      stop: unwind,
    };
  } catch (err) {
    await unwind();
    throw err;
  }
}

/** The program: exit 0 after a clean stop, 1 when it cannot start, EXIT_CONFIG for a bad configuration, EXIT_USAGE for a bad command line. */
export async function main(argv: string[]): Promise<void> {
  let args;
  try {
    args = parseArgs(argv);
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`virtio-forwarder: ${err.message}\nTry 'virtio-forwarder --help'.\n`);
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
    const message = err instanceof ConfigError ? err.message : (err as Error).message;
    process.stderr.write(`virtio-forwarder: ${message}\n`);
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
    process.stderr.write(`virtio-forwarder: ${message}\n`);
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
    log.fatal({ err: (err as Error).message }, `cannot start: ${(err as Error).message}`);
    process.stderr.write(`virtio-forwarder: ${(err as Error).message}\n`);
    // Let pino flush before leaving.
    setTimeout(() => process.exit(1), 50);
    return;
  }
  notifyReady(`forwarding on CPUs ${config.cpus.join(',')}`);
  if (stopRequested) void stop(stopRequested);

  process.on('SIGHUP', () => log.info('SIGHUP ignored: restart the service to reload the configuration'));
  if (crashRequested) crashFirstWorker();
}
