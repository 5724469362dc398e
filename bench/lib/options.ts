// Command line of bench/relay.ts.
import type { Direction, RelayKind } from './report.js';
import { JUMBO_MTU } from '../../vocabulary/limits.js';

/** The largest frame at MTU 1500, and at the relay's jumbo MTU (without FCS or VLAN tag). */
export const MAX_STANDARD_FRAME = 1514;
export const MAX_JUMBO_FRAME = JUMBO_MTU + 14;
/** A case whose frames need MTU 9000 on the wire and VIRTIOFWD_JUMBO in our relay. */
export const isJumbo = (size: number): boolean => size > MAX_STANDARD_FRAME;

export interface BenchOptions {
  help: boolean;
  runs: number;
  warmupSeconds: number;
  windowSeconds: number;
  sizes: number[];
  directions: Direction[];
  /** Our relay's poll modes to measure (none = DPDK only). */
  modes: ('busy' | 'adaptive')[];
  dpdk: boolean;
  /** VF port kinds to measure, for DPDK's relay and ours alike. */
  vfPorts: ('af_packet' | 'af_xdp' | 'memif')[];
  /** Our AF_XDP relay's VIRTIOFWD_XDP_UMEM. */
  xdpUmem: 'guest' | 'relay';
  xdpRx: 'copy' | 'guest';
  relayCpu: number;
  trafficCpu: number;
  /** % of one core; a window above it is marked contaminated (and re-done up to `redo` times). */
  maxForeign: number;
  quietWaitSeconds: number;
  redo: number;
  pinRelay: boolean;
  jsonPath: string | null;
  /** Print the table of a file written by --json instead of measuring. */
  summarizePath: string | null;
  /** rx only: cap the injector at this many Mpps (a tbf qdisc on vethB), to measure below saturation. */
  rxRateMpps: number | null;
  /** The VM side (virtio-user) asks for packed virtqueues (packed_vq=1), for both relays. */
  packed: boolean;
}

export const USAGE = `usage: node dist/bench/relay.js [options]      (as root, after npx tsc -p .)

Measures the relay's throughput VM→VF (tx) and VF→VM (rx) next to DPDK's relay
(dpdk-testpmd net_vhost ⇄ net_af_packet or net_af_xdp, io forwarding), relay on one CPU,
traffic on the other.

  --runs N            runs per case; the table shows the median (default 3)
  --warmup S          seconds of traffic before the window (default 3)
  --window S          measurement window in seconds (default 10)
  --sizes LIST        Ethernet frame sizes without FCS, 60..9014 (default 64,1500). Above 1514
                      a case is a jumbo one: both veths at MTU 9000, our relay with
                      VIRTIOFWD_JUMBO (its AF_XDP port then spans frames over several
                      chunks), DPDK's relay and the traffic process with 10 KiB mbufs
                      and 16 KiB AF_PACKET frames. DPDK 22.11's net_af_xdp has no
                      frames over several chunks, so its relay is left out of jumbo
                      cases. Not with memif (the memif peers' buffers are 2 KiB)
  --directions LIST   tx,rx (default both)
  --modes LIST        our relay's poll modes: busy,adaptive, or none (default busy,adaptive)
  --no-dpdk           leave DPDK's relay out (no ours/DPDK ratio then)
  --vf-ports LIST     VF ports, for both relays: af_packet,af_xdp (default both): DPDK's
                      net_af_packet or net_af_xdp, ours with VIRTIOFWD_VF_PORT=af_packet or af_xdp;
                      memif relays to a memif peer instead of a VF: DPDK's net_vhost ⇄ net_memif
                      and ours with a memif device, the traffic process's net_memif port at the far end
  --xdp-umem W        our AF_XDP relay's VIRTIOFWD_XDP_UMEM: guest (frames sent from guest
                      memory, the default) or relay (every frame copied)
  --xdp-rx W          our AF_XDP relay's VIRTIOFWD_XDP_RX: copy (the default) or guest (frames
                      received straight into the guest's buffers)
  --relay-cpu N       CPU of the relay under test (default 0)
  --traffic-cpu N     CPU of the traffic process (default 1)
  --max-foreign P     foreign CPU, % of one core, above which a run counts as contaminated (default 15)
  --quiet-wait S      before each run, wait up to S seconds for foreign CPU to fall under
                      --max-foreign, then measure anyway (default 10)
  --redo N            re-do a contaminated run up to N times, keep the cleanest (default 1)
  --rx-rate MPPS      rx: offer at most MPPS (a tbf qdisc on vethB; the injector's AF_PACKET
                      port then goes through the qdisc). Shows loss below saturation, where a
                      relay with CPU to spare should lose nothing (default: as fast as it can)
  --packed            the VM side uses packed virtqueues (virtio-user packed_vq=1), for both relays
  --no-pin-relay      do not confine our relay's whole process to --relay-cpu (only its worker is pinned)
  --json FILE         also write every run and the summaries as JSON
  --summarize FILE    print the table of a file written by --json, measure nothing
  --quick             smoke test: 1 run, 2 s warm-up, 3 s window, 64 bytes only, no re-do
  -h, --help          this text

Columns: Mpps = frames delivered per second (vethB rx_packets in tx, virtio-user Rx-pps in rx);
relay CPU = the relay process's user+system time, % of one core; ns/pkt = relay CPU time per
delivered frame; loss = 1 - delivered/offered in exact counts over the whole run (tx: virtio-user
TX-packets vs vethB rx_packets; rx: frames that reached vethA vs virtio-user RX-packets);
foreign = CPU used by processes the bench did not start ('!' marks a contaminated run);
steal = CPU the hypervisor withheld; ours/best DPDK = our median over the fastest DPDK relay's; same run = that ratio run by run (median, range); clean Mpps = median of
the runs that were not contaminated (on a shared machine, the figure to compare).

Environment: VIO4WD_BENCH_CPU_PROF=DIR writes a CPU profile of each of our relay's threads to
DIR; VIO4WD_BENCH_NODE_FLAGS="--flag ..." adds flags to our relay's node command line.
`;

export function positive(flag: string, text: string | undefined, { integer = false, zero = false } = {}): number {
  const v = Number(text);
  if (text === undefined || !Number.isFinite(v) || v < 0 || (!zero && v === 0) || (integer && !Number.isInteger(v))) {
    throw new Error(`${flag} needs a ${integer ? 'whole ' : ''}number ${zero ? '≥ 0' : '> 0'}, got ${text ?? 'nothing'}`);
  }
  return v;
}

export function list<T extends string>(flag: string, text: string | undefined, allowed: readonly T[]): T[] {
  if (!text) throw new Error(`${flag} needs a comma-separated list of ${allowed.join(', ')}`);
  const items = text.split(',').map((s) => s.trim()).filter(Boolean);
  for (const item of items) if (!allowed.includes(item as T)) throw new Error(`${flag}: unknown value "${item}" (use ${allowed.join(', ')})`);
  return [...new Set(items)] as T[];
}

export function parseOptions(argv: string[]): BenchOptions {
  const o: BenchOptions = {
    help: false,
    runs: 3,
    warmupSeconds: 3,
    windowSeconds: 10,
    sizes: [64, 1500],
    directions: ['tx', 'rx'],
    modes: ['busy', 'adaptive'],
    dpdk: true,
    vfPorts: ['af_packet', 'af_xdp'],
    xdpUmem: 'guest',
    xdpRx: 'copy',
    relayCpu: 0,
    trafficCpu: 1,
    maxForeign: 15,
    quietWaitSeconds: 10,
    redo: 1,
    pinRelay: true,
    jsonPath: null,
    summarizePath: null,
    rxRateMpps: null,
    packed: false,
  };
  // --quick sets defaults first, so explicit flags (wherever they appear) still win.
  if (argv.includes('--quick')) Object.assign(o, { runs: 1, warmupSeconds: 2, windowSeconds: 3, sizes: [64], redo: 0 });
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => argv[++i];
    switch (a) {
      case '-h':
      case '--help':
        o.help = true;
        break;
      case '--quick':
        break;
      case '--packed':
        o.packed = true;
        break;
      case '--runs':
        o.runs = positive(a, next(), { integer: true });
        break;
      case '--warmup':
        o.warmupSeconds = positive(a, next(), { zero: true });
        break;
      case '--window':
        o.windowSeconds = positive(a, next());
        if (o.windowSeconds < 2) throw new Error(`--window ${o.windowSeconds}: at least 2 s (testpmd reports once a second)`);
        break;
      case '--sizes': {
        const text = next();
        o.sizes = (text ?? '').split(',').filter(Boolean).map((s) => positive(a, s, { integer: true }));
        if (o.sizes.length === 0) throw new Error('--sizes needs at least one frame size');
        for (const s of o.sizes) if (s < 60 || s > MAX_JUMBO_FRAME) throw new Error(`--sizes: ${s} is outside 60..${MAX_JUMBO_FRAME} (Ethernet frame without FCS)`);
        break;
      }
      case '--directions':
        o.directions = list(a, next(), ['tx', 'rx'] as const);
        break;
      case '--modes': {
        const text = next();
        o.modes = text === 'none' ? [] : list(a, text, ['busy', 'adaptive'] as const);
        break;
      }
      case '--no-dpdk':
        o.dpdk = false;
        break;
      case '--vf-ports':
        o.vfPorts = list(a, next(), ['af_packet', 'af_xdp', 'memif'] as const);
        break;
      case '--xdp-umem': {
        const v = next();
        if (v !== 'guest' && v !== 'relay') throw new Error(`${a}: expected guest or relay, not ${JSON.stringify(v)}`);
        o.xdpUmem = v;
        break;
      }
      case '--xdp-rx': {
        const v = next();
        if (v !== 'copy' && v !== 'guest') throw new Error(`${a}: expected copy or guest, not ${JSON.stringify(v)}`);
        o.xdpRx = v;
        break;
      }
      case '--relay-cpu':
        o.relayCpu = positive(a, next(), { integer: true, zero: true });
        break;
      case '--traffic-cpu':
        o.trafficCpu = positive(a, next(), { integer: true, zero: true });
        break;
      case '--max-foreign':
        o.maxForeign = positive(a, next(), { zero: true });
        break;
      case '--quiet-wait':
        o.quietWaitSeconds = positive(a, next(), { zero: true });
        break;
      case '--redo':
        o.redo = positive(a, next(), { integer: true, zero: true });
        break;
      case '--rx-rate':
        o.rxRateMpps = positive(a, next());
        break;
      case '--no-pin-relay':
        o.pinRelay = false;
        break;
      case '--json': {
        const path = next();
        if (!path) throw new Error('--json needs a file name');
        o.jsonPath = path;
        break;
      }
      case '--summarize': {
        const path = next();
        if (!path) throw new Error('--summarize needs the file written by --json');
        o.summarizePath = path;
        break;
      }
      default:
        throw new Error(`unknown option ${a}`);
    }
  }
  if (o.vfPorts.includes('memif') && o.sizes.some(isJumbo)) {
    throw new Error(`--vf-ports memif with --sizes above ${MAX_STANDARD_FRAME}: the memif peers' 2 KiB buffers take no jumbo frames`);
  }
  if (!o.dpdk && o.modes.length === 0) throw new Error('nothing to measure: --no-dpdk and --modes none');
  if (o.relayCpu === o.trafficCpu) throw new Error(`--relay-cpu and --traffic-cpu are both ${o.relayCpu}: the two pollers need a CPU each`);
  return o;
}
