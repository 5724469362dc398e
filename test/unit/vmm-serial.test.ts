// The 8250's transmit path with several vCPUs: the guest's driver writes THR from whichever CPU
// runs it, one FIFO load (16 bytes) at a time, the next load often from another CPU. What reaches
// the console must be the guest's order, whatever thread wrote each byte and whenever the main
// thread gets to it; and a main thread that stops taking output must not stall the guest forever.
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { Serial, createSerialState } from '../../vmm/devices/serial.js';

/** The compiled device, for the "vCPU" threads (worker threads load dist/, like the VMM's). */
const compiled = new URL('../../dist/vmm/devices/serial.js', import.meta.url).href;

const THR = 0;
const LCR = 3;

/**
 * A "vCPU" thread: it writes its share of `text` to THR in 16-byte loads, taking turns with the
 * other thread through a shared turn word (the guest's port lock), and posts a wake-up when the
 * device asks for one, as vmm/vcpu-worker.ts does.
 */
function vcpu(index: number, threads: number, state: SharedArrayBuffer, turn: Int32Array, text: string): Worker {
  const code = `
    const { workerData, parentPort } = require('node:worker_threads');
    import(workerData.compiled).then(({ Serial }) => {
      const { index, threads, text } = workerData;
      const turn = new Int32Array(workerData.turn);
      const serial = new Serial(workerData.state, () => parentPort.postMessage('wake'), () => {});
      const loads = Math.ceil(text.length / 16);
      for (let load = index; load < loads; load += threads) {
        while (Atomics.load(turn, 0) !== load) Atomics.wait(turn, 0, Atomics.load(turn, 0), 5);
        for (const ch of text.slice(load * 16, load * 16 + 16)) serial.write(${THR}, ch.charCodeAt(0));
        Atomics.store(turn, 0, load + 1);
        Atomics.notify(turn, 0);
      }
      parentPort.postMessage('done');
    });
  `;
  return new Worker(code, { eval: true, workerData: { index, threads, state, turn: turn.buffer, text, compiled } });
}

describe('serial port (8250) transmit', () => {
  it('keeps the guest order when two vCPU threads take turns writing 16-byte loads', async () => {
    const lines = Array.from({ length: 400 }, (_, i) => `vio4wd-init: line ${i} of the boot, long enough to cross loads\r\n`);
    const text = lines.join('');
    const state = createSerialState();
    const main = new Serial(state, () => {}, () => {});
    const turn = new Int32Array(new SharedArrayBuffer(4));
    const out: Uint8Array[] = [];
    let wakes = 0;
    const workers = [0, 1].map((i) => vcpu(i, 2, state, turn, text));
    await Promise.all(workers.map((w) => new Promise<void>((resolve, reject) => {
      w.on('error', reject);
      w.on('message', (m) => {
        if (m === 'wake') {
          wakes++;
          out.push(main.takeOutput());
        } else resolve();
      });
    })));
    out.push(main.takeOutput());
    await Promise.all(workers.map((w) => w.terminate()));
    expect(Buffer.concat(out).toString('latin1')).toBe(text);
    expect(main.droppedOutput()).toBe(0);
    // A wake-up per non-empty ring, not per byte.
    expect(wakes).toBeGreaterThan(0);
    expect(wakes).toBeLessThan(text.length);
  });

  it('wakes the main thread once until it takes the output, and takes across the ring\'s end', () => {
    let wakes = 0;
    const s = new Serial(createSerialState(), () => wakes++, () => {});
    const chunk = Buffer.from('0123456789abcdef'.repeat(2500)); // 40,000 bytes: the second round wraps
    for (let round = 0; round < 2; round++) {
      for (const b of chunk) s.write(THR, b);
      expect(wakes).toBe(round + 1);
      expect(Buffer.from(s.takeOutput()).equals(chunk)).toBe(true);
    }
    expect(s.takeOutput().length).toBe(0);
  });

  it('does not transmit what is written with DLAB set (the divisor latch)', () => {
    const s = new Serial(createSerialState(), () => {}, () => {});
    s.write(LCR, 0x83);
    s.write(THR, 0x01);
    expect(s.read(THR)).toBe(0x01);
    s.write(LCR, 0x03);
    s.write(THR, 0x41);
    expect(Buffer.from(s.takeOutput()).toString()).toBe('A');
  });

  it('drops, and counts, what does not fit while the output is not taken: one wait, then at once', () => {
    const s = new Serial(createSerialState(), () => {}, () => {});
    const room = 65535;
    for (let i = 0; i < room; i++) s.write(THR, 0x30 + (i % 10));
    const started = Date.now();
    for (let i = 0; i < 100; i++) s.write(THR, 0x21);
    const waited = Date.now() - started;
    expect(waited).toBeGreaterThanOrEqual(900); // the first byte waited for room
    expect(waited).toBeLessThan(30_000); // the next 99 did not wait a second each (99 s)
    expect(s.droppedOutput()).toBe(100);
    const out = s.takeOutput();
    expect(out.length).toBe(room);
    expect(out[room - 1]).toBe(0x30 + ((room - 1) % 10));
    s.write(THR, 0x42); // room again: transmitted, not dropped
    expect(Buffer.from(s.takeOutput()).toString()).toBe('B');
    expect(s.droppedOutput()).toBe(100);
  });
});
