// A NetDevice that moves no packets and remembers every hook call: what test suites and the
// protocol-trace tool use to watch a session. It tracks the avail index it would resume from
// (the started config's lastAvail, or what `lastAvailOf` reports for a ring a test consumed).
import type { NetDevice, SessionMemory, VringConfig } from './device.js';

export type DeviceEvent =
  | { kind: 'memoryChanged'; regions: number }
  | { kind: 'vringStarted'; index: number; config: VringConfig }
  | { kind: 'vringStopped'; index: number; lastAvail: number }
  | { kind: 'vringEnabled'; index: number; enabled: boolean }
  | { kind: 'vringCallChanged'; index: number; callFd: number }
  | { kind: 'disconnected' };

export class RecordingDevice implements NetDevice {
  readonly events: DeviceEvent[] = [];
  readonly running = new Map<number, VringConfig>();
  readonly enabled = new Map<number, boolean>();
  memory: SessionMemory | null = null;
  disconnectedCount = 0;
  /** Lets a test report how far it consumed a ring; defaults to the start index. */
  lastAvailOf: (index: number, config: VringConfig) => number = (_i, c) => c.lastAvail;
  private readonly waiters: Array<() => void> = [];

  /** Optional extra work a test wants done inside a hook (e.g. start a packet counter). */
  onStarted?: (index: number, config: VringConfig) => void | Promise<void>;
  onStopping?: (index: number) => void | Promise<void>;

  private record(e: DeviceEvent): void {
    this.events.push(e);
    for (const w of this.waiters.splice(0)) w();
  }

  /** Resolves once `predicate` holds (re-checked after every event). */
  waitFor(predicate: (d: RecordingDevice) => boolean, timeoutMs = 10_000, what = 'device state'): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}; events: ${this.describe()}`)), timeoutMs);
      const check = () => {
        if (predicate(this)) {
          clearTimeout(timer);
          resolve();
        } else this.waiters.push(check);
      };
      check();
    });
  }

  describe(): string {
    return this.events
      .map((e) => ('index' in e ? `${e.kind}(${e.index}${'enabled' in e ? `,${e.enabled}` : ''})` : e.kind))
      .join(' ');
  }

  isStartedAndEnabled(index: number): boolean {
    return this.running.has(index) && this.enabled.get(index) === true;
  }

  async memoryChanged(memory: SessionMemory): Promise<void> {
    this.memory = memory;
    this.record({ kind: 'memoryChanged', regions: memory.regions.length });
  }

  async vringStarted(index: number, config: VringConfig): Promise<void> {
    this.running.set(index, config);
    this.enabled.set(index, config.enabled);
    await this.onStarted?.(index, config);
    this.record({ kind: 'vringStarted', index, config });
  }

  async vringStopped(index: number): Promise<{ lastAvail: number }> {
    await this.onStopping?.(index);
    const config = this.running.get(index);
    const lastAvail = config ? this.lastAvailOf(index, config) : 0;
    this.running.delete(index);
    this.record({ kind: 'vringStopped', index, lastAvail });
    return { lastAvail };
  }

  async vringEnabled(index: number, enabled: boolean): Promise<void> {
    this.enabled.set(index, enabled);
    this.record({ kind: 'vringEnabled', index, enabled });
  }

  async disconnected(): Promise<void> {
    this.disconnectedCount++;
    this.memory = null;
    this.record({ kind: 'disconnected' });
  }
}
