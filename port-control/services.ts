// What the daemon starts: the ZMQ services that are configured, and at most one run-time port
// control channel (ZMQ port control, the OVSDB monitor or the IPC file monitor).
import type { Logger } from 'pino';
import type { NetdevResolver, RelayRegistry } from '../relay/registry-api.js';
import { configHandler, coreSchedHandler, portControlHandler } from './handlers.js';
import { IpcMonitor } from './ipc-monitor.js';
import { protobufConfig, protobufCoreSched, protobufPortControl, protobufStats } from './protobuf-handlers.js';
import { OvsdbMonitor } from './ovsdb/monitor.js';
import { DEFAULT_ENDPOINTS } from './protocol.js';
import { StatsService } from './stats.js';
import { startReplyService, type ReplyService } from './zmq-server.js';
import type { ServiceName } from './protocol.js';

export type PortControlChoice =
  | { mode: 'zmq'; endpoint: string }
  | { mode: 'ovsdb'; socketPath: string }
  | { mode: 'ipc'; file: string }
  | { mode: 'none' };

/** The three channels as configured; a blank setting is undefined/null/false. */
export interface PortControlSettings {
  /** VIRTIOFWD_ZMQ_PORT_CONTROL_EP */
  zmqPortControlEp?: string | null;
  /** VIRTIOFWD_OVSDB_SOCK_PATH */
  ovsdbSockPath?: string | null;
  /** VIRTIOFWD_IPC_PORT_CONTROL */
  ipcPortControl?: boolean;
  /** The IPC command file (default /tmp/vio_cmd). */
  ipcFile?: string;
}

/**
 * Picks the run-time port control channel. The channels are mutually exclusive (the original
 * silently preferred ZMQ, then IPC, then OVSDB); configuring more than one is refused by name.
 */
export function selectPortControl(settings: PortControlSettings): PortControlChoice {
  const chosen: PortControlChoice[] = [];
  const names: string[] = [];
  if (settings.zmqPortControlEp) {
    chosen.push({ mode: 'zmq', endpoint: settings.zmqPortControlEp });
    names.push(`VIRTIOFWD_ZMQ_PORT_CONTROL_EP (${settings.zmqPortControlEp})`);
  }
  if (settings.ovsdbSockPath) {
    chosen.push({ mode: 'ovsdb', socketPath: settings.ovsdbSockPath });
    names.push(`VIRTIOFWD_OVSDB_SOCK_PATH (${settings.ovsdbSockPath})`);
  }
  if (settings.ipcPortControl) {
    chosen.push({ mode: 'ipc', file: settings.ipcFile ?? '/tmp/vio_cmd' });
    names.push('VIRTIOFWD_IPC_PORT_CONTROL');
  }
  if (chosen.length > 1) {
    throw new Error(
      `port control: ${names.join(' and ')} are all set, but ZMQ, OVSDB and IPC port control are mutually exclusive; keep exactly one`,
    );
  }
  return chosen[0] ?? { mode: 'none' };
}

export interface ControlServiceOptions extends PortControlSettings {
  statsEp?: string | null;
  configEp?: string | null;
  coreSchedEp?: string | null;
  /** VIO4WD_CORE_SCHED_ENABLE: the core-sched service runs only when true; it also turns stats on. */
  coreSchedEnabled?: boolean;
  /** Group given to ipc socket files (mode 0660). */
  socketGroup?: string | number;
  /** Overrides netdev → VfRef resolution (defaults to the registry's describeNetdev). */
  resolveNetdev?: NetdevResolver;
  /** OVSDB reconnect interval (default 1000 ms). */
  ovsdbRetryMs?: number;
}

/** A ZMQ service that could not start on its endpoint (bind, directory, mode): says which service. */
export class EndpointStartError extends Error {
  constructor(
    readonly service: ServiceName,
    readonly endpoint: string,
    cause: Error,
  ) {
    super(cause.message);
    this.name = 'EndpointStartError';
  }
}

export interface ControlServices {
  /** The endpoints that are listening, by service. */
  endpoints: Partial<Record<'portControl' | 'stats' | 'config' | 'coreSched', string>>;
  portControl: PortControlChoice;
  ovsdb?: OvsdbMonitor;
  ipc?: IpcMonitor;
  close(): Promise<void>;
}

export async function startControlServices(
  registry: RelayRegistry,
  options: ControlServiceOptions,
  logger: Logger,
): Promise<ControlServices> {
  const portControl = selectPortControl(options);
  const resolveNetdev: NetdevResolver = options.resolveNetdev ?? ((n) => registry.describeNetdev(n).ref);
  const services: ReplyService[] = [];
  const endpoints: ControlServices['endpoints'] = {};
  let ovsdb: OvsdbMonitor | undefined;
  let ipc: IpcMonitor | undefined;
  const common = { socketGroup: options.socketGroup };

  const closeAll = async () => {
    await Promise.all(services.map((s) => s.close()));
    await ovsdb?.close();
    await ipc?.close();
  };

  // The service being started, so that a failure says which variable's endpoint it was.
  let starting: { service: ServiceName; endpoint: string } | null = null;
  try {
    if (portControl.mode === 'zmq') {
      starting = { service: 'portControl', endpoint: portControl.endpoint };
      services.push(await startReplyService('portControl', { ...common, endpoint: portControl.endpoint, protobuf: protobufPortControl(registry, logger) }, portControlHandler(registry, logger), logger));
      endpoints.portControl = portControl.endpoint;
    }
    const statsEp = options.statsEp || (options.coreSchedEnabled ? DEFAULT_ENDPOINTS.stats : null);
    if (statsEp) {
      starting = { service: 'stats', endpoint: statsEp };
      const stats = new StatsService(registry);
      services.push(await startReplyService('stats', { ...common, endpoint: statsEp, protobuf: protobufStats(registry, logger) }, (req) => stats.snapshot(req), logger));
      endpoints.stats = statsEp;
    }
    if (options.configEp) {
      starting = { service: 'config', endpoint: options.configEp };
      services.push(await startReplyService('config', { ...common, endpoint: options.configEp, protobuf: protobufConfig(registry, logger) }, configHandler(registry), logger));
      endpoints.config = options.configEp;
    }
    if (options.coreSchedEnabled) {
      const ep = options.coreSchedEp || DEFAULT_ENDPOINTS.coreSched;
      starting = { service: 'coreSched', endpoint: ep };
      services.push(await startReplyService('coreSched', { ...common, endpoint: ep, protobuf: protobufCoreSched(registry, logger) }, coreSchedHandler(registry, logger), logger));
      endpoints.coreSched = ep;
    } else if (options.coreSchedEp) {
      logger.info('core-sched endpoint configured but VIO4WD_CORE_SCHED_ENABLE is not true; the service stays off');
    }
    starting = null;
    if (portControl.mode === 'ovsdb') {
      ovsdb = new OvsdbMonitor(registry, { socketPath: portControl.socketPath, resolveNetdev, retryMs: options.ovsdbRetryMs }, logger);
      ovsdb.start();
    } else if (portControl.mode === 'ipc') {
      ipc = new IpcMonitor(
        registry,
        { file: portControl.file, resolveNetdev, vfIndexOf: (n) => registry.describeNetdev(n).vfIndex },
        logger,
      );
      ipc.start();
    }
  } catch (err) {
    await closeAll();
    if (starting) throw new EndpointStartError(starting.service, starting.endpoint, err as Error);
    throw err;
  }
  return { endpoints, portControl, ovsdb, ipc, close: closeAll };
}
