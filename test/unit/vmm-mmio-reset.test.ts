// A guest's device reset (Status ← 0) must not return to the guest before the device's back end
// stopped: the guest re-initialises its rings right after the write, and a vhost-user back end
// still running them would read the new ring's avail.idx 0 against the old ring's position. The
// vCPU's MMIO write therefore waits for MmioTransport.resetDone(), which here another thread
// calls only after it has recorded that the back end stopped.
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { MmioTransport, REG, createTransportState, type StatusChange } from '../../vmm/devices/virtio-mmio.js';

const state = () => createTransportState({ deviceId: 1, features: [0, 1], numQueues: 2, queueNumMax: 256, vhostUser: true, config: new Uint8Array(8) });
/** The compiled transport, for the helper thread (worker threads load dist/, like the VMM's). */
const compiled = new URL('../../dist/vmm/devices/virtio-mmio.js', import.meta.url).href;

/** A thread that, once the reset is reported, marks "back end stopped" in `flags` and then calls resetDone. */
function backEnd(flags: Int32Array, transport: SharedArrayBuffer): Worker {
  const code = `
    const { workerData, parentPort } = require('node:worker_threads');
    import(workerData.compiled).then(({ MmioTransport }) => {
      const flags = new Int32Array(workerData.flags);
      parentPort.postMessage('loaded');
      Atomics.wait(flags, 0, 0);                    // the reset was reported
      for (let i = 0; i < 2e7; i++);                // the back end takes a while to stop its rings
      Atomics.store(flags, 1, 1);                   // rings stopped
      MmioTransport.resetDone(workerData.transport);
    });
  `;
  return new Worker(code, { eval: true, workerData: { flags: flags.buffer, transport, compiled } });
}

describe('virtio-mmio device reset', () => {
  it('returns from the Status write only after the back end has stopped', async () => {
    const sab = state();
    const flags = new Int32Array(new SharedArrayBuffer(8));
    const worker = backEnd(flags, sab);
    await new Promise((r) => worker.once('message', r));
    const changes: StatusChange[] = [];
    const t = new MmioTransport(
      sab,
      (change) => {
        changes.push(change);
        if (change.status === 0) {
          Atomics.store(flags, 0, 1);
          Atomics.notify(flags, 0);
        }
      },
      { waitForReset: true },
    );
    t.write(REG.STATUS, 4, 1); // ACKNOWLEDGE
    t.write(REG.STATUS, 4, 0); // reset
    expect(changes.map((c) => c.status)).toEqual([0]);
    expect(Atomics.load(flags, 1)).toBe(1);
    await worker.terminate();
  });

  it('does not wait when the transport is not told to (main-thread users, tests)', () => {
    const sab = state();
    const seen: number[] = [];
    const t = new MmioTransport(sab, (c) => seen.push(c.status));
    t.write(REG.STATUS, 4, 1);
    t.write(REG.STATUS, 4, 0);
    expect(seen).toEqual([0]);
  });

  it('resetDone before the wait lets the write return at once', () => {
    const sab = state();
    const t = new MmioTransport(sab, (c) => c.status === 0 && MmioTransport.resetDone(sab), { waitForReset: true });
    t.write(REG.STATUS, 4, 1);
    t.write(REG.STATUS, 4, 0);
    expect(MmioTransport.status(sab)).toBe(0);
  });
});
