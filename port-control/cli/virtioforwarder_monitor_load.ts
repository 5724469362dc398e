// virtioforwarder_monitor_load: a live bar per worker CPU showing the share of its polling time
// that moved packets (busyNs / pollNs deltas the workers measure), refreshed every interval.
import { randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import { ControlClient } from '../client.js';
import { DEFAULT_ENDPOINTS } from '../protocol.js';
import { formatLoadBars } from './format.js';
import { integerOption, numberOption, parseCommandLine, runMain } from './common.js';

const PROGRAM = 'virtioforwarder_monitor_load';

const HELP = `Usage: ${PROGRAM} [options]

Shows the load of each worker CPU of a running virtio-forwarder as a bar: the
share of the worker's polling time that moved packets over the last interval.

Options:
  --stats-ep=EP       stats endpoint (default ${DEFAULT_ENDPOINTS.stats}); --zmq-ep is an alias
  --interval=SECONDS  refresh interval (default 2; --poll-interval is an alias)
  --count=N           stop after N frames (default: run until interrupted)
  --sched-ep=EP        accepted for compatibility; not needed
  --timeout=MS        how long to wait for each reply (default 2000)
  -h, --help          this text

Long options may be shortened to any unambiguous prefix (--poll for
--poll-interval). Exit status: 0, or 1 with a message on stderr.
`;

const OPTIONS = {
  help: { type: 'boolean', short: 'h' },
  'stats-ep': { type: 'string' },
  'zmq-ep': { type: 'string' },
  // The original read the worker list from the core-sched service; vio4wd's stats reply has it.
  'sched-ep': { type: 'string' },
  interval: { type: 'string' },
  'poll-interval': { type: 'string' },
  count: { type: 'string' },
  timeout: { type: 'string' },
} as const;

async function main(): Promise<void> {
  const { values } = parseCommandLine(PROGRAM, (args) => parseArgs({ args, strict: true, options: OPTIONS }), Object.keys(OPTIONS));
  if (values.help) {
    process.stdout.write(HELP);
    return;
  }
  const intervalS = numberOption(PROGRAM, 'interval', values.interval ?? values['poll-interval'], 0.05) ?? 2;
  const count = integerOption(PROGRAM, 'count', values.count, 1, Number.MAX_SAFE_INTEGER);
  const timeout = integerOption(PROGRAM, 'timeout', values.timeout, 1, 600_000) ?? 2000;
  const client = new ControlClient(values['stats-ep'] ?? values['zmq-ep'] ?? DEFAULT_ENDPOINTS.stats, timeout);
  const clientId = `monitor-load-${process.pid}-${randomUUID()}`;
  let stop = false;
  process.on('SIGINT', () => (stop = true));
  process.on('SIGTERM', () => (stop = true));
  try {
    await client.request('stats', { clientId });
    for (let frame = 0; !stop && (count === undefined || frame < count); frame++) {
      await new Promise((r) => setTimeout(r, intervalS * 1000));
      const reply = await client.request('stats', { clientId });
      if (process.stdout.isTTY) process.stdout.write('\x1b[2J\x1b[H');
      process.stdout.write(formatLoadBars(reply.workers));
    }
  } finally {
    client.close();
  }
}

runMain(PROGRAM, main);
