// testpmd with --stats-period=1 prints a "NIC statistics for port N" block per port every second.
// Its Rx-pps/Tx-pps lines are timed by testpmd itself (TSC), so they stay right even when its
// output reaches us late; the cumulative counters are kept too. The parser is fed raw output chunks
// and stamps each block with the time it arrived, so a window can pick the samples it contains.

export interface PortSample {
  port: number;
  /** performance.now() when the block was parsed. */
  at: number;
  rxPackets: number;
  rxMissed: number;
  txPackets: number;
  txErrors: number;
  rxPps: number;
  txPps: number;
}

const BLOCK =
  /NIC statistics for port (\d+)\s*#+\s*\n\s*RX-packets:\s*(\d+)\s+RX-missed:\s*(\d+)[^\n]*\n[\s\S]*?TX-packets:\s*(\d+)\s+TX-errors:\s*(\d+)[^\n]*\n[\s\S]*?Rx-pps:\s*(\d+)[^\n]*\n\s*Tx-pps:\s*(\d+)[^\n]*\n/g;

/** Text longer than this without a complete block is garbage (EAL chatter); keep only its tail. */
const MAX_PENDING = 64 * 1024;

export class TestpmdStatsStream {
  readonly samples: PortSample[] = [];
  private pending = '';

  constructor(private readonly now: () => number = () => performance.now()) {}

  feed(chunk: string): void {
    this.pending += chunk;
    const at = this.now();
    let consumed = 0;
    BLOCK.lastIndex = 0;
    for (let m = BLOCK.exec(this.pending); m; m = BLOCK.exec(this.pending)) {
      this.samples.push({
        port: Number(m[1]),
        at,
        rxPackets: Number(m[2]),
        rxMissed: Number(m[3]),
        txPackets: Number(m[4]),
        txErrors: Number(m[5]),
        rxPps: Number(m[6]),
        txPps: Number(m[7]),
      });
      consumed = BLOCK.lastIndex;
    }
    this.pending = this.pending.slice(consumed);
    if (this.pending.length > MAX_PENDING) this.pending = this.pending.slice(-MAX_PENDING / 2);
  }

  /** The newest sample of a port, if any. */
  latest(port: number): PortSample | undefined {
    for (let i = this.samples.length - 1; i >= 0; i--) if (this.samples[i].port === port) return this.samples[i];
    return undefined;
  }

  /** Samples of `port` that arrived in (from, to]. */
  between(port: number, from: number, to: number): PortSample[] {
    return this.samples.filter((s) => s.port === port && s.at > from && s.at <= to);
  }
}

/** Mean of a per-second rate over the samples of a window; null when the window got none. */
export function meanRate(samples: PortSample[], field: 'rxPps' | 'txPps'): number | null {
  if (samples.length === 0) return null;
  return samples.reduce((sum, s) => sum + s[field], 0) / samples.length;
}
