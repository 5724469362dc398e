// Where the daemon's threads run: each worker on its CPU, and every other thread (main, V8's
// garbage-collection and compiler threads, libuv, ZeroMQ, the ring opener) on the CPUs no worker
// polls, so none of them takes slices from a busy-polling worker. When every CPU has a worker,
// the other threads stay where they were and the log says so.
import { readdirSync, readFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { readOnlineCpus } from '../../sys/topology.js';
import { requireOrSkip } from '../support/env.js';
import { requireRoot } from '../support/netns.js';
import { startRelay, type RunningRelay } from '../support/relay.js';
import { stopAll, waitFor } from '../support/processes.js';

const online = readOnlineCpus();
const ready = requireRoot() && requireOrSkip(online.length >= 2, 'needs at least 2 CPUs');

let relay: RunningRelay | null = null;

afterEach(async () => {
  await relay?.stop();
  relay = null;
  await stopAll();
});

/** Each thread of `pid` with its allowed CPUs, as /proc shows them. */
function threadCpus(pid: number): Map<number, string> {
  const out = new Map<number, string>();
  for (const tid of readdirSync(`/proc/${pid}/task`).map(Number)) {
    try {
      const status = readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8');
      out.set(tid, status.match(/^Cpus_allowed_list:\s*(\S+)/m)![1]);
    } catch {
      /* a thread that ended meanwhile */
    }
  }
  return out;
}


describe.runIf(ready)('thread placement of the daemon', () => {
  it('keeps every thread but the worker off the worker CPU', async () => {
    const worker = online[0];
    relay = await startRelay({ cpus: [worker], pollMode: 'busy' });
    const started = await waitFor(() => relay!.logs().find((l) => l.msg === 'worker started and pinned'), 10_000, 'the worker to start');
    const workerTid = Number(started!.tid);
    await waitFor(() => relay!.logs().some((l) => /off the worker CPUs/.test(String(l.msg))), 10_000, 'the housekeeping log line');
    const cpus = threadCpus(relay.pid);
    expect(cpus.get(workerTid)).toBe(String(worker));
    const others = [...cpus].filter(([tid]) => tid !== workerTid);
    // Main, V8 platform, libuv, ZeroMQ and ring-opener threads: well more than a handful.
    expect(others.length).toBeGreaterThan(4);
    const rest = online.filter((c) => c !== worker);
    for (const [tid, allowed] of others) {
      // /proc writes ranges ("1-3"); compare as sets.
      expect(expandList(allowed), `thread ${tid}`).toEqual(rest);
    }
  });

  it('leaves the other threads where they are when every CPU has a worker', async () => {
    relay = await startRelay({ cpus: online, pollMode: 'adaptive' });
    await waitFor(() => relay!.logs().some((l) => /no CPU without a worker/.test(String(l.msg))), 10_000, 'the log line saying no CPU is left');
    const workerTids = new Set(relay.logs().filter((l) => l.msg === 'worker started and pinned').map((l) => Number(l.tid)));
    expect(workerTids.size).toBe(online.length);
    for (const [tid, allowed] of threadCpus(relay.pid)) {
      if (!workerTids.has(tid)) expect(expandList(allowed), `thread ${tid}`).toEqual(online);
    }
  });
});

function expandList(text: string): number[] {
  const cpus: number[] = [];
  for (const part of text.split(',')) {
    const [a, b] = part.split('-').map(Number);
    for (let c = a; c <= (b ?? a); c++) cpus.push(c);
  }
  return cpus;
}
