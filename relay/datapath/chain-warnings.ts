// Warnings about broken descriptor chains. A guest can post thousands of bad chains a second; each
// is dropped and counted (Counter.BadChains), and this module turns them into at most one warning
// per ring per interval, with the reason of the latest and how many went unmentioned since.
import { performance } from 'node:perf_hooks';

export const CHAIN_WARNING_INTERVAL_MS = 10_000;

export type ChainWarningSink = (relay: number, vring: number, reason: string, unreported: number) => void;

export class ChainWarnings {
  /** Keyed relay × 256 + vring: bounded by 64 relays × 64 vrings. */
  private readonly rings = new Map<number, { at: number; unreported: number }>();

  constructor(
    private readonly sink: ChainWarningSink,
    private readonly intervalMs = CHAIN_WARNING_INTERVAL_MS,
    private readonly clock: () => number = () => performance.now(),
  ) {}

  /** One bad chain on `vring` of `relay`; warns now unless this ring warned within the interval. */
  report(relay: number, vring: number, reason: string): void {
    const key = relay * 256 + vring;
    const now = this.clock();
    const ring = this.rings.get(key);
    if (ring && now - ring.at < this.intervalMs) {
      ring.unreported++;
      return;
    }
    this.sink(relay, vring, reason, ring?.unreported ?? 0);
    this.rings.set(key, { at: now, unreported: 0 });
  }
}

let current: ChainWarnings | null = null;

/** Installed once by the worker thread; the data path reports through it. */
export function setChainWarnings(w: ChainWarnings | null): void {
  current = w;
}

export function reportBadChain(relay: number, vring: number, reason: string): void {
  current?.report(relay, vring, reason);
}
