// virtioforwarder_port_control: adds and removes VFs, bonds and vhost-user sockets at run time.
// Same command line as the original Python tool, so callers such as OpenStack's os-vif plugin
// (add_sock / remove_sock with --pci-addr and --vhost-path) work unchanged.
import { parseArgs } from 'node:util';
import { ControlClient } from '../client.js';
import { canonicalPci, checkBondMode, DEFAULT_ENDPOINTS, MAX_RELAYS, PORT_CONTROL_OPS, PROTOCOL_VERSION, type PortControlOp } from '../protocol.js';
import { fail, integerOption, parseCommandLine, runMain } from './common.js';
import { VF_PORT_CHOICES, type VfPortChoice } from '../../relay/registry-api.js';
import { MEMIF_MAX_CLIENT_RINGS } from '../../vocabulary/limits.js';

const PROGRAM = 'virtioforwarder_port_control';

const HELP = `Usage: ${PROGRAM} <add|remove|add_sock|remove_sock|query_pci> [options]

Adds and removes VFs, bonds and vhost-user sockets of a running virtio-forwarder
(needs VIRTIOFWD_ZMQ_PORT_CONTROL_EP in /etc/default/virtioforwarder).

  add          --virtio-id=ID --pci-addr=PCI             attach a VF to relay ID
  add          --virtio-id=ID --name=net_bondingX --pci-addr=PCI --pci-addr=PCI [--mode=M]
                                                         attach a bond of 2..8 VFs
  remove       --virtio-id=ID [--pci-addr=PCI | --name=BOND]
                                                         detach the relay's VF or bond
  add          --virtio-id=ID --memif-socket=PATH --memif-role=ROLE --memif-id=N [--memif-secret=S] [--memif-rings=N]
                                                         attach a memif interface instead of a VF
  add          --virtio-id=ID --name=net_bondingX --pci-addr=PCI --memif-socket=PATH ... [--mode=M]
                                                         attach a bond of VFs and a memif (its last member)
  add_sock     --vhost-path=PATH --pci-addr=PCI [--pci-addr=PCI --name=BOND [--mode=M]]
                                                         take a free relay, attach the device, create the socket
                                                         (or --memif-* instead of --pci-addr)
  remove_sock  --vhost-path=PATH and/or (--pci-addr=PCI | --name=BOND)
                                                         remove a socket and its device
  query_pci    --vhost-path=PATH                         print the PCI address (or bond name) behind a socket

Options:
  --virtio-id=ID      relay id, 0..${MAX_RELAYS - 1}
  --pci-addr=PCI      dddd:bb:ss.f or bb:ss.f (domain 0000); repeat for a bond
  --name=NAME         bond name, must start with net_bonding
  --mode=M            bond mode: 0 round-robin, 1 active-backup (default), 2 balance, 3 broadcast
                      (4 802.3ad, 5 balance-tlb and 6 balance-alb are not supported)
  --vhost-path=PATH   vhost-user socket path (absolute)
  --conditional       add: succeed if the same device is already attached;
                      remove: succeed if the relay is already empty
  --vf-port=KIND      add, add_sock: af_packet, af_xdp or auto, for this VF (every
                      member of a bond); default: the daemon's VIRTIOFWD_VF_PORT
  --memif-socket=PATH add, add_sock: a memif interface (VPP, DPDK net_memif) as the relay's
                      host side; its control socket (absolute path)
  --memif-role=ROLE   server (the relay listens on PATH and creates it) or client (the
                      relay connects to PATH, retrying every second); required with
                      --memif-socket
  --memif-id=N        memif interface id, 0..4294967295 (default 0)
  --memif-secret=S    memif secret, 1..23 bytes; a server requires it from its client
  --memif-rings=N     client role: ring pairs to create, 1..16 (default 1), as many as the
                      server's interface has queues (a DPDK server needs that); a server
                      role takes as many rings as its client adds
  --zmq-ep=EP         port control endpoint (default ${DEFAULT_ENDPOINTS.portControl});
                      --zmq_ep is accepted too
  --timeout=MS        how long to wait for the reply (default 2000)
  --send-garbage      send an unreadable JSON frame instead of the request (tests the service)
  --crash-after-send  send the request and stop without waiting for the reply
  -h, --help          this text

Long options may be shortened to any unambiguous prefix (--virtio for --virtio-id).

Exit status: 0 on success, 1 with a message on stderr otherwise (usage errors
included).
`;

const OPTIONS = {
  help: { type: 'boolean', short: 'h' },
  'virtio-id': { type: 'string' },
  'pci-addr': { type: 'string', multiple: true },
  name: { type: 'string' },
  mode: { type: 'string' },
  'vhost-path': { type: 'string' },
  conditional: { type: 'boolean' },
  'vf-port': { type: 'string' },
  'memif-socket': { type: 'string' },
  'memif-role': { type: 'string' },
  'memif-id': { type: 'string' },
  'memif-secret': { type: 'string' },
  'memif-rings': { type: 'string' },
  'zmq-ep': { type: 'string' },
  timeout: { type: 'string' },
  // The original's fault-injection switches, kept so scripts that test with them still run.
  'send-garbage': { type: 'boolean' },
  'crash-after-send': { type: 'boolean' },
} as const;

async function main(): Promise<void> {
  const { values, positionals } = parseCommandLine(
    PROGRAM,
    (args) => parseArgs({ args, allowPositionals: true, strict: true, options: OPTIONS }),
    Object.keys(OPTIONS),
  );
  if (values.help) {
    process.stdout.write(HELP);
    return;
  }
  if (positionals.length !== 1) fail(PROGRAM, `give exactly one operation (${PORT_CONTROL_OPS.join('|')}); see --help`);
  const op = positionals[0] as PortControlOp;
  if (!PORT_CONTROL_OPS.includes(op)) fail(PROGRAM, `unknown operation ${JSON.stringify(op)}; use one of ${PORT_CONTROL_OPS.join(', ')}`);

  const fields: Record<string, unknown> = {};
  const virtioId = integerOption(PROGRAM, 'virtio-id', values['virtio-id'], 0, MAX_RELAYS - 1);
  if (virtioId !== undefined) fields.virtioId = virtioId;
  if (values['pci-addr']) {
    fields.pciAddrs = values['pci-addr'].map((p) => {
      try {
        return canonicalPci(p);
      } catch (err) {
        fail(PROGRAM, (err as Error).message);
      }
    });
  }
  if (values.name !== undefined) fields.name = values.name;
  const mode = integerOption(PROGRAM, 'mode', values.mode, 0, 255);
  if (mode !== undefined) {
    try {
      fields.mode = checkBondMode(mode);
    } catch (err) {
      fail(PROGRAM, (err as Error).message);
    }
  }
  if (values['vhost-path'] !== undefined) fields.vhostPath = values['vhost-path'];
  fields.conditional = values.conditional ?? false;
  if (values['vf-port'] !== undefined) {
    if (!VF_PORT_CHOICES.includes(values['vf-port'] as VfPortChoice)) fail(PROGRAM, `--vf-port=${values['vf-port']}: use one of ${VF_PORT_CHOICES.join(', ')}`);
    if (op !== 'add' && op !== 'add_sock') fail(PROGRAM, `--vf-port is for add and add_sock only`);
    fields.vfPort = values['vf-port'];
  }
  const memifGiven = ['memif-socket', 'memif-role', 'memif-id', 'memif-secret', 'memif-rings'].filter((k) => values[k as keyof typeof values] !== undefined);
  if (memifGiven.length > 0) {
    if (op !== 'add' && op !== 'add_sock') fail(PROGRAM, `--${memifGiven[0]} is for add and add_sock only`);
    if (values['memif-socket'] === undefined) fail(PROGRAM, `--${memifGiven[0]} needs --memif-socket=PATH`);
    const role = values['memif-role'];
    if (role !== 'server' && role !== 'client') fail(PROGRAM, role === undefined ? '--memif-socket needs --memif-role=server or --memif-role=client' : `--memif-role=${role}: use server or client`);
    const memif: Record<string, unknown> = { socket: values['memif-socket'], role, id: integerOption(PROGRAM, 'memif-id', values['memif-id'], 0, 0xffffffff) ?? 0 };
    if (values['memif-secret'] !== undefined) memif.secret = values['memif-secret'];
    if (values['memif-rings'] !== undefined) {
      if (role !== 'client') fail(PROGRAM, '--memif-rings is for --memif-role=client: a server takes as many rings as its client adds');
      memif.rings = integerOption(PROGRAM, 'memif-rings', values['memif-rings'], 1, MEMIF_MAX_CLIENT_RINGS);
    }
    // With a bond name the memif is the bond's last member, after its VFs.
    if (values.name !== undefined) fields.memifMembers = [memif];
    else fields.memif = memif;
  }

  const timeout = integerOption(PROGRAM, 'timeout', values.timeout, 1, 600_000) ?? 2000;
  const client = new ControlClient(values['zmq-ep'] ?? DEFAULT_ENDPOINTS.portControl, timeout);
  try {
    if (values['send-garbage'] || values['crash-after-send']) {
      const frame = values['send-garbage'] ? '{garbage, not a request' : JSON.stringify({ version: PROTOCOL_VERSION, op, ...fields });
      const answer = client.requestRaw(frame);
      if (values['crash-after-send']) {
        // Gives the frame time to leave, then stops without reading the reply.
        answer.catch(() => undefined);
        await new Promise((r) => setTimeout(r, 100));
        fail(PROGRAM, 'stopped after sending, as --crash-after-send asks');
      }
      fail(PROGRAM, `the service answered the garbage: ${await answer}`);
    }
    const reply = await client.request(op, fields);
    if (reply.pci) process.stdout.write(`${reply.pci}\n`);
  } finally {
    client.close();
  }
}

runMain(PROGRAM, main);
