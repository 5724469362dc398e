// virtioforwarder_stats: counters and rates of the relays, in the original's flat key=value form
// (or JSON). Rates are measured over this tool's own window: a first request opens the window,
// a second one `--delay` ms later closes it; other clients' windows are not touched.
import { randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import { ControlClient } from '../client.js';
import { DEFAULT_ENDPOINTS, MAX_RELAYS } from '../protocol.js';
import { formatStatsFlat, formatStatsProtobufText } from './format.js';
import { fail, integerOption, parseCommandLine, runMain } from './common.js';

const PROGRAM = 'virtioforwarder_stats';

const HELP = `Usage: ${PROGRAM} [options]

Prints the counters and rates of every relay of a running virtio-forwarder, one
relay_<id>.<field>=<value> per line (both directions: vf_to_vm and vm_to_vf), with
the original tool's keys and value spellings (True/False, DPDK_READY, VIRTIO_READY,
rates as floats; nan when there is no rate window, --delay=0).

Options:
  --stats-ep=EP         stats endpoint (default ${DEFAULT_ENDPOINTS.stats}); --zmq-ep is an alias
  --relay=ID            only this relay (repeatable)
  --include-inactive    also relays without both a VM and a device
  --delay=MS            rate window in milliseconds (default 200; 0: counters only)
  -z, --suppress-zero   leave out integer counters that are 0 (--hide-zero is an alias)
  --output-format=F     flat (default), protobuf (the original's message as text)
                        or json (the service's whole reply)
  --json                the same as --output-format=json
  --timeout=MS          how long to wait for each reply (default 2000)
  -h, --help            this text

Long options may be shortened to any unambiguous prefix (--include for
--include-inactive). Exit status: 0, or 1 with a message on stderr.
`;

const OPTIONS = {
  help: { type: 'boolean', short: 'h' },
  'stats-ep': { type: 'string' },
  'zmq-ep': { type: 'string' },
  relay: { type: 'string', multiple: true },
  'include-inactive': { type: 'boolean' },
  delay: { type: 'string' },
  'suppress-zero': { type: 'boolean', short: 'z' },
  'hide-zero': { type: 'boolean' },
  json: { type: 'boolean' },
  'output-format': { type: 'string' },
  timeout: { type: 'string' },
} as const;

const FORMATS = ['flat', 'protobuf', 'json'];

async function main(): Promise<void> {
  const { values } = parseCommandLine(PROGRAM, (args) => parseArgs({ args, strict: true, options: OPTIONS }), Object.keys(OPTIONS));
  if (values.help) {
    process.stdout.write(HELP);
    return;
  }
  const format = values['output-format'] ?? (values.json ? 'json' : 'flat');
  if (!FORMATS.includes(format)) fail(PROGRAM, `--output-format ${JSON.stringify(format)} is not one of ${FORMATS.join(', ')}`);
  if (values.json && format !== 'json') fail(PROGRAM, `--json and --output-format=${format} contradict each other`);
  const relays = (values.relay ?? []).map((r) => integerOption(PROGRAM, 'relay', r, 0, MAX_RELAYS - 1) as number);
  const delay = integerOption(PROGRAM, 'delay', values.delay, 0, 3_600_000) ?? 200;
  const timeout = integerOption(PROGRAM, 'timeout', values.timeout, 1, 600_000) ?? 2000;
  const client = new ControlClient(values['stats-ep'] ?? values['zmq-ep'] ?? DEFAULT_ENDPOINTS.stats, timeout);
  const fields: Record<string, unknown> = { includeInactive: values['include-inactive'] ?? false };
  if (relays.length > 0) fields.relays = relays;
  try {
    let reply;
    if (delay > 0) {
      const clientId = `stats-${process.pid}-${randomUUID()}`;
      await client.request('stats', { ...fields, clientId });
      await new Promise((r) => setTimeout(r, delay));
      reply = await client.request('stats', { ...fields, clientId });
    } else {
      reply = await client.request('stats', fields);
    }
    if (format === 'json') process.stdout.write(`${JSON.stringify(reply, null, 2)}\n`);
    else if (format === 'protobuf') process.stdout.write(formatStatsProtobufText(reply.relays));
    else process.stdout.write(formatStatsFlat(reply.relays, { hideZero: values['suppress-zero'] || values['hide-zero'] }));
  } finally {
    client.close();
  }
}

runMain(PROGRAM, main);
