// virtioforwarder_core_pinner: moves relay directions to worker CPUs by hand, and shows the
// current relay→CPU map. Two spellings of a move:
//  - `--virtio-cpu=R:c1,c2`, the original's: c1 is the VM→VF CPU, c2 the VF→VM CPU;
//  - `--pin=R:c1,c2`, vio4wd's: the order of VIRTIOFWD_CPU_PINS, c1 VF→VM and c2 VM→VF.
// One CPU means both directions in either spelling.
import { parseArgs } from 'node:util';
import type { RelayCpu } from '../../relay/registry-api.js';
import { ControlClient, ServiceError } from '../client.js';
import { DEFAULT_ENDPOINTS } from '../protocol.js';
import { parseVirtioCpu, type CpuPairOrder } from './virtio-cpu.js';
import { formatCpuGrid } from './format.js';
import { fail, integerOption, parseCommandLine, runMain } from './common.js';

const PROGRAM = 'virtioforwarder_core_pinner';

const HELP = `Usage: ${PROGRAM} [--pin=R:C1[,C2] | --virtio-cpu=R:C1[,C2]]... [options]

Without a move, prints the current relay-to-CPU map as a grid (one column per
worker CPU, each with the relays whose VF-to-VM and VM-to-VF directions run
there). With moves, applies them and prints the new map. All given relays move
together or, if any entry is refused, none does. A running core scheduler may
move them again later.

Options:
  --pin=R:C1[,C2]         relay R: VF-to-VM direction on CPU C1, VM-to-VF on C2,
                          the order of VIRTIOFWD_CPU_PINS (repeatable)
  --virtio-cpu=R:C1[,C2]  the original pinner's spelling, other order: VM-to-VF
                          on C1, VF-to-VM on C2 (repeatable)
                          (one CPU moves both directions there, in either spelling)
  --print-core-map        print the current map and exit, moving nothing
  --sched-ep=EP           core-sched endpoint (default ${DEFAULT_ENDPOINTS.coreSched});
                          --zmq-ep is an alias
  --stats-ep=EP           accepted for compatibility; not needed
  --timeout=MS            how long to wait for each reply (default 2000)
  -h, --help              this text

Long options may be shortened to any unambiguous prefix (--virtio for
--virtio-cpu). Exit status: 0, or 1 with a message on stderr (a refused move
prints "Scheduler response: ERROR" first).
`;

const OPTIONS = {
  help: { type: 'boolean', short: 'h' },
  pin: { type: 'string', multiple: true },
  'virtio-cpu': { type: 'string', multiple: true },
  'sched-ep': { type: 'string' },
  'zmq-ep': { type: 'string' },
  'print-core-map': { type: 'boolean' },
  // The original pinner read stats too; accepted so existing scripts keep working.
  'stats-ep': { type: 'string' },
  timeout: { type: 'string' },
} as const;

function parseMoves(texts: string[] | undefined, order: CpuPairOrder, option: string): RelayCpu[] {
  return (texts ?? []).map((t) => {
    try {
      return parseVirtioCpu(t, order, option);
    } catch (err) {
      fail(PROGRAM, (err as Error).message);
    }
  });
}

const cpuName = (cpu: number) => (cpu < 0 ? 'no CPU' : `CPU ${cpu}`);

async function main(): Promise<void> {
  const { values } = parseCommandLine(PROGRAM, (args) => parseArgs({ args, strict: true, options: OPTIONS }), Object.keys(OPTIONS));
  if (values.help) {
    process.stdout.write(HELP);
    return;
  }
  const map = [...parseMoves(values.pin, 'vf-to-vm-first', '--pin'), ...parseMoves(values['virtio-cpu'], 'vm-to-vf-first', '--virtio-cpu')];
  const dup = map.find((m, i) => map.findIndex((o) => o.relay === m.relay) !== i);
  if (dup) fail(PROGRAM, `relay ${dup.relay} is given twice`);
  const timeout = integerOption(PROGRAM, 'timeout', values.timeout, 1, 600_000) ?? 2000;
  const client = new ControlClient(values['sched-ep'] ?? values['zmq-ep'] ?? DEFAULT_ENDPOINTS.coreSched, timeout);
  try {
    if (values['print-core-map'] || map.length === 0) {
      const current = await client.request('get_worker_cpus');
      process.stdout.write(`Worker cores affinities:\n${formatCpuGrid(current.cpus, current.map)}`);
      return;
    }
    for (const m of map) {
      process.stdout.write(`Setting relay ${m.relay}: VF2VM on ${cpuName(m.vfToVmCpu)}, VM2VF on ${cpuName(m.vmToVfCpu)}\n`);
    }
    try {
      await client.request('update', { map });
    } catch (err) {
      if (err instanceof ServiceError) process.stdout.write('Scheduler response: ERROR\n');
      throw err;
    }
    process.stdout.write('Scheduler response: OK\n');
    const current = await client.request('get_worker_cpus');
    process.stdout.write(`New worker core mapping:\n${formatCpuGrid(current.cpus, current.map)}`);
  } finally {
    client.close();
  }
}

runMain(PROGRAM, main);
