// A guard around the one write a worker makes to a guest's call eventfd. The fd is made
// non-blocking when it arrives, but its front-end shares the file description and can make it
// blocking again and fill the counter; the write would then wait until the front-end reads, and
// every relay on the worker would stop. The worker announces each write here (shared memory, no
// system call); the main thread watches, confirms a write that has been blocked for a while from
// /proc, drains that eventfd without blocking itself, which lets the write finish, and marks the
// write so the worker then stops that ring.
//
// Slots (Int32): [0] sequence, odd while a write is in progress; [1] the fd being written;
// [2] the sequence of a write the main thread unblocked.
export const CALL_GUARD_BYTES = 16;

export function createCallGuardBuffer(): SharedArrayBuffer {
  return new SharedArrayBuffer(CALL_GUARD_BYTES);
}

let slots: Int32Array | null = null;

/** Installed once by the worker thread. */
export function setCallGuard(buffer: SharedArrayBuffer | null): void {
  slots = buffer ? new Int32Array(buffer) : null;
}

export function callWriteBegins(fd: number): void {
  if (slots === null) return;
  Atomics.store(slots, 1, fd);
  Atomics.add(slots, 0, 1);
}

/** Ends the write; true when the main thread had to unblock it (the ring must stop). */
export function callWriteEnds(): boolean {
  if (slots === null) return false;
  const seq = Atomics.add(slots, 0, 1);
  return Atomics.load(slots, 2) === seq;
}

/** The main thread's side: remembers the last sample and says which write has been stuck since. */
export class CallGuardWatch {
  private readonly slots: Int32Array;
  private lastSeq = 0;

  constructor(buffer: SharedArrayBuffer) {
    this.slots = new Int32Array(buffer);
  }

  /** The fd of a write that was already in progress at the previous sample, or -1. */
  stuckWrite(): { seq: number; fd: number } | null {
    const seq = Atomics.load(this.slots, 0);
    const stuck = (seq & 1) === 1 && seq === this.lastSeq;
    this.lastSeq = seq;
    return stuck ? { seq, fd: Atomics.load(this.slots, 1) } : null;
  }

  /** Marks write `seq` as unblocked by us; the worker stops the ring when the write returns. */
  markUnblocked(seq: number): void {
    Atomics.store(this.slots, 2, seq);
  }
}
