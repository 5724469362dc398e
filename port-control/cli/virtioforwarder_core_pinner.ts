// virtioforwarder_core_pinner: moves relay directions to worker CPUs by hand, and shows the
// current relay→CPU map. `--virtio-cpu=R:c1,c2` puts VF→VM on c1 and VM→VF on c2, the order of
// VIRTIOFWD_CPU_PINS (the original pinner had it the other way round); one CPU means both.
import { parseArgs } from 'node:util';
import { ControlClient } from '../client.js';
import { DEFAULT_ENDPOINTS } from '../protocol.js';
import { parseVirtioCpu } from './virtio-cpu.js';
import { formatCpuGrid } from './format.js';
import { fail, integerOption, parseCommandLine, runMain } from './common.js';

const PROGRAM = 'virtioforwarder_core_pinner';

const HELP = `Usage: ${PROGRAM} [--virtio-cpu=R:C1[,C2]]... [options]

Without --virtio-cpu, prints the current relay-to-CPU map as a grid (one column
per worker CPU). With it, moves relay R's VF-to-VM direction to CPU C1 and its
VM-to-VF direction to C2 (C1 for both when C2 is left out), the same syntax as
VIRTIOFWD_CPU_PINS. All given relays move together or, if any entry is refused,
none does. A running core scheduler may move them again later.

Options:
  --virtio-cpu=R:C1,C2  a relay and its CPUs (repeatable)
  --sched-ep=EP         core-sched endpoint (default ${DEFAULT_ENDPOINTS.coreSched}); --zmq-ep is an alias
  --print-core-map      print the map after an update too (always done)
  --stats-ep=EP         accepted for compatibility; not needed
  --timeout=MS          how long to wait for each reply (default 2000)
  -h, --help            this text
`;

async function main(): Promise<void> {
  const { values } = parseCommandLine(PROGRAM, (args) =>
    parseArgs({
      args,
      strict: true,
      options: {
        help: { type: 'boolean', short: 'h' },
        'virtio-cpu': { type: 'string', multiple: true },
        'sched-ep': { type: 'string' },
        'zmq-ep': { type: 'string' },
        'print-core-map': { type: 'boolean' },
        // The original pinner read stats too; accepted so existing scripts keep working.
        'stats-ep': { type: 'string' },
        timeout: { type: 'string' },
      },
    }),
  );
  if (values.help) {
    process.stdout.write(HELP);
    return;
  }
  const map = (values['virtio-cpu'] ?? []).map((t) => {
    try {
      return parseVirtioCpu(t);
    } catch (err) {
      fail(PROGRAM, (err as Error).message);
    }
  });
  const dup = map.find((m, i) => map.findIndex((o) => o.relay === m.relay) !== i);
  if (dup) fail(PROGRAM, `relay ${dup.relay} is given twice`);
  const timeout = integerOption(PROGRAM, 'timeout', values.timeout, 1, 600_000) ?? 2000;
  const client = new ControlClient(values['sched-ep'] ?? values['zmq-ep'] ?? DEFAULT_ENDPOINTS.coreSched, timeout);
  try {
    if (map.length > 0) {
      await client.request('update', { map });
      process.stdout.write('Scheduler response: OK\n');
    }
    const current = await client.request('get_worker_cpus');
    process.stdout.write(formatCpuGrid(current.cpus, current.map));
  } finally {
    client.close();
  }
}

runMain(PROGRAM, main);
