// A spin lock in shared memory for device state touched by several vCPU threads and the main
// thread. Critical sections are a few register updates, so spinning with a bounded wait is cheaper
// than any message round trip.

export function lock(words: Int32Array, index = 0): void {
  while (Atomics.compareExchange(words, index, 0, 1) !== 0) {
    Atomics.wait(words, index, 1, 1);
  }
}

export function unlock(words: Int32Array, index = 0): void {
  Atomics.store(words, index, 0);
  Atomics.notify(words, index, 1);
}
