// The daemon's ZMQ control services: their configuration variables, default endpoints, and what
// an endpoint may look like. The daemon binds these, the CLIs and the scheduler connect to them.

export type ZmqService = 'portControl' | 'stats' | 'config' | 'coreSched';

/** In the order the configuration reports them. */
export const ZMQ_SERVICES: readonly ZmqService[] = ['config', 'portControl', 'stats', 'coreSched'];

/** Where the default ipc:// endpoints live (the units' RuntimeDirectory). */
export const DEFAULT_ZMQ_DIR = '/var/run/virtio-forwarder';

export const DEFAULT_ENDPOINTS: Readonly<Record<ZmqService, string>> = {
  portControl: `ipc://${DEFAULT_ZMQ_DIR}/port_control`,
  stats: `ipc://${DEFAULT_ZMQ_DIR}/stats`,
  config: `ipc://${DEFAULT_ZMQ_DIR}/config`,
  coreSched: `ipc://${DEFAULT_ZMQ_DIR}/core_sched`,
};

/** The configuration variable that sets each service's endpoint. */
export const ENDPOINT_VARIABLES: Readonly<Record<ZmqService, string>> = {
  portControl: 'VIRTIOFWD_ZMQ_PORT_CONTROL_EP',
  stats: 'VIRTIOFWD_ZMQ_STATS_EP',
  config: 'VIRTIOFWD_ZMQ_CONFIG_EP',
  coreSched: 'VIRTIOFWD_ZMQ_CORE_SCHED_EP',
};

/** What is wrong with a ZMQ endpoint (ipc:// absolute path, tcp://host:port, inproc://name), or null. */
export function zmqEndpointProblem(endpoint: string): string | null {
  const m = /^([a-z]+):\/\/(.*)$/.exec(endpoint);
  if (!m) return 'expected a ZMQ endpoint such as ipc:///var/run/virtio-forwarder/stats, or off';
  const [, transport, address] = m;
  if (transport === 'ipc') {
    if (!address.startsWith('/')) return 'an ipc:// endpoint needs an absolute path (ipc:///dir/name)';
    if (address.endsWith('/')) return 'an ipc:// endpoint names a socket file, not a directory';
    return null;
  }
  if (transport === 'tcp') {
    const tcp = /^(\*|[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):(\d+|\*)$/.exec(address);
    if (!tcp) return 'a tcp:// endpoint needs host:port';
    if (tcp[2] !== '*' && (Number(tcp[2]) < 1 || Number(tcp[2]) > 65535)) return `port ${tcp[2]} is outside 1..65535`;
    return null;
  }
  if (transport === 'inproc') return address === '' ? 'an inproc:// endpoint needs a name' : null;
  return `transport ${transport}:// is not supported (use ipc, tcp or inproc)`;
}
