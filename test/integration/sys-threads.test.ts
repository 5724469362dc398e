// The shim inside worker threads (run from dist/): each thread has its own tid and affinity, and
// memory mapped by the main thread is visible through viewAt.
import { readOnlineCpus } from '../../sys/topology.js';
import { describe, it, expect } from 'vitest';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { getAffinity, gettid } from '../../sys/affinity.js';
import { mmap, munmap, MAP_SHARED } from '../../sys/memory.js';
import { requireOrSkip } from '../support/env.js';

const compiledSys = fileURLToPath(new URL('../../dist/sys/', import.meta.url));

function runWorker(code: string, workerData: unknown): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(code, { eval: true, workerData });
    worker.once('message', (m) => {
      resolve(m);
      void worker.terminate();
    });
    worker.once('error', reject);
  });
}

describe('sys in worker threads', () => {
  const compiled = existsSync(`${compiledSys}affinity.js`);

  it('pins a worker thread without moving the main thread', async () => {
    if (!requireOrSkip(compiled, `compiled sys/ missing under ${compiledSys}: run npx tsc -p . first`)) return;
    const cpus = readOnlineCpus();
    const target = cpus[cpus.length - 1];
    const before = getAffinity();
    const result = (await runWorker(
      `
      const { workerData, parentPort } = require('node:worker_threads');
      import(workerData.dir + 'affinity.js').then((a) => {
        a.setAffinity([workerData.target]);
        parentPort.postMessage({ tid: a.gettid(), pid: process.pid, cpus: a.getAffinity() });
      });
      `,
      { dir: compiledSys, target },
    )) as { tid: number; pid: number; cpus: number[] };
    expect(result.pid).toBe(process.pid);
    expect(result.tid).not.toBe(gettid());
    expect(result.cpus).toEqual([target]);
    expect(getAffinity()).toEqual(before);
  });

  it('sees and writes memory mapped by the main thread through viewAt', async () => {
    if (!requireOrSkip(compiled, `compiled sys/ missing under ${compiledSys}: run npx tsc -p . first`)) return;
    const m = mmap({ length: 8192, flags: MAP_SHARED });
    try {
      new Uint8Array(m.buffer)[4096] = 17;
      const seen = await runWorker(
        `
        const { workerData, parentPort } = require('node:worker_threads');
        import(workerData.dir + 'memory.js').then((mem) => {
          const bytes = new Uint8Array(mem.viewAt(workerData.address + 4096, 16));
          const before = bytes[0];
          Atomics.store(new Int32Array(bytes.buffer, 4, 1), 0, 0x01020304);
          parentPort.postMessage(before);
        });
        `,
        { dir: compiledSys, address: m.address },
      );
      expect(seen).toBe(17);
      expect(new DataView(m.buffer).getInt32(4096 + 4, true)).toBe(0x01020304);
    } finally {
      munmap(m);
    }
  });
});
