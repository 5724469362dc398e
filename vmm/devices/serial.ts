// 16550A UART on 0x3f8. State lives in a SharedArrayBuffer so any vCPU thread can serve register
// accesses and the main thread can push input. Interrupts follow kvmtool's level model: THRI is
// pending whenever IER.THRI is set (transmit is instant), RDI whenever IER.RDI is set and input is
// waiting; the line is driven only when that changes.
//
// Transmitted bytes go into a ring in the same shared state, appended under the lock, and only the
// main thread takes them out. With several vCPUs the guest's driver writes THR from whichever CPU
// runs it (Linux fills the 16-byte FIFO from the interrupt handler, on any CPU); a byte posted per
// write from each vCPU thread would reach the main thread in the order of their message ports,
// not the guest's, and lines came out shuffled in 16-byte pieces. The ring keeps the guest's order;
// a vCPU posts only a wake-up when the ring stops being empty.
import { lock, unlock } from './shared-lock.js';

const W = {
  lock: 0, ier: 1, lcr: 2, mcr: 3, scr: 4, dll: 5, dlm: 6, line: 7, rxHead: 8, rxTail: 9, thriAck: 10,
  txHead: 11, txTail: 12, txWaking: 13, txDropped: 14, txDropping: 15,
} as const;
const WORDS = 16;
const RX_CAPACITY = 4096;
/** Room for what a guest prints while the main thread is busy elsewhere (a boot prints ~20 KiB). */
const TX_CAPACITY = 65536;
/**
 * How long a vCPU waits for room in a full ring before it drops the byte; until the main thread
 * takes output again, later bytes are dropped at once (a stuck main thread must not stall the guest
 * a second per byte).
 */
const TX_FULL_WAIT_MS = 1000;

export const SERIAL_STATE_BYTES = WORDS * 4 + RX_CAPACITY + TX_CAPACITY;

const UART_LSR_DR = 0x01;
const UART_LSR_THRE = 0x20;
const UART_LSR_TEMT = 0x40;
const UART_IER_RDI = 0x01;
const UART_IER_THRI = 0x02;
const UART_LCR_DLAB = 0x80;
const UART_MCR_LOOP = 0x10;
const UART_IIR_NONE = 0x01;
const UART_IIR_THRI = 0x02;
const UART_IIR_RDI = 0x04;
const UART_IIR_FIFO = 0xc0;

export function createSerialState(): SharedArrayBuffer {
  const sab = new SharedArrayBuffer(SERIAL_STATE_BYTES);
  const w = new Int32Array(sab, 0, WORDS);
  w[W.lcr] = 0x03;
  w[W.mcr] = 0x08;
  w[W.dll] = 0x0c;
  return sab;
}

export class Serial {
  private readonly w: Int32Array;
  private readonly rx: Uint8Array;
  private readonly tx: Uint8Array;

  /**
   * @param wake called (with the lock released) when transmitted bytes wait in a ring that was
   *   empty: the main thread should call takeOutput()
   * @param setIrq drives the interrupt line (KVM_IRQ_LINE)
   */
  constructor(
    state: SharedArrayBuffer,
    private readonly wake: () => void,
    private readonly setIrq: (level: number) => void,
  ) {
    this.w = new Int32Array(state, 0, WORDS);
    this.rx = new Uint8Array(state, WORDS * 4, RX_CAPACITY);
    this.tx = new Uint8Array(state, WORDS * 4 + RX_CAPACITY, TX_CAPACITY);
  }

  /** Takes every transmitted byte waiting, in the order the guest wrote them (main thread). */
  takeOutput(): Uint8Array {
    const w = this.w;
    lock(w);
    try {
      const head = w[W.txHead];
      const tail = w[W.txTail];
      const count = (tail - head + TX_CAPACITY) % TX_CAPACITY;
      const out = new Uint8Array(count);
      const first = Math.min(count, TX_CAPACITY - head);
      out.set(this.tx.subarray(head, head + first));
      out.set(this.tx.subarray(0, count - first), first);
      Atomics.store(w, W.txHead, tail);
      w[W.txWaking] = 0;
      w[W.txDropping] = 0;
      return out;
    } finally {
      unlock(w);
      // A vCPU waiting for room (see transmit) looks again.
      Atomics.notify(w, W.txHead);
    }
  }

  /** Bytes dropped because the ring stayed full for TX_FULL_WAIT_MS (the main thread was stuck). */
  droppedOutput(): number {
    return Atomics.load(this.w, W.txDropped);
  }

  private rxCount(): number {
    return (this.w[W.rxTail] - this.w[W.rxHead] + RX_CAPACITY) % RX_CAPACITY;
  }

  /** Computes IIR and drives the line; call with the lock held. */
  private update(): number {
    const w = this.w;
    const rdi = (w[W.ier] & UART_IER_RDI) !== 0 && this.rxCount() > 0;
    // THRI is cleared by reading IIR until the next transmit or IER write (as on a real 16550).
    const thri = (w[W.ier] & UART_IER_THRI) !== 0 && w[W.thriAck] === 0;
    const iir = rdi ? UART_IIR_RDI : thri ? UART_IIR_THRI : UART_IIR_NONE;
    const level = iir !== UART_IIR_NONE && (w[W.mcr] & 0x08) !== 0 ? 1 : 0;
    if (level !== w[W.line]) {
      w[W.line] = level;
      this.setIrq(level);
    }
    return iir;
  }

  read(offset: number): number {
    const w = this.w;
    lock(w);
    try {
      const dlab = (w[W.lcr] & UART_LCR_DLAB) !== 0;
      switch (offset) {
        case 0: {
          if (dlab) return w[W.dll];
          if (this.rxCount() === 0) return 0;
          const byte = this.rx[w[W.rxHead]];
          w[W.rxHead] = (w[W.rxHead] + 1) % RX_CAPACITY;
          this.update();
          return byte;
        }
        case 1:
          return dlab ? w[W.dlm] : w[W.ier];
        case 2: {
          const iir = this.update();
          if (iir === UART_IIR_THRI) {
            w[W.thriAck] = 1;
            this.update();
          }
          return iir | UART_IIR_FIFO;
        }
        case 3:
          return w[W.lcr];
        case 4:
          return w[W.mcr];
        case 5:
          return UART_LSR_THRE | UART_LSR_TEMT | (this.rxCount() > 0 ? UART_LSR_DR : 0);
        case 6:
          if (w[W.mcr] & UART_MCR_LOOP) {
            const mcr = w[W.mcr];
            return ((mcr & 0x02) << 3) | ((mcr & 0x01) << 5) | ((mcr & 0x04) << 4) | ((mcr & 0x08) << 4);
          }
          return 0xb0; // DCD | DSR | CTS
        case 7:
          return w[W.scr];
        default:
          return 0xff;
      }
    } finally {
      unlock(w);
    }
  }

  write(offset: number, value: number): void {
    if (offset === 0 && this.transmit(value)) return;
    const w = this.w;
    lock(w);
    try {
      const dlab = (w[W.lcr] & UART_LCR_DLAB) !== 0;
      switch (offset) {
        case 0:
          if (dlab) w[W.dll] = value;
          else if (w[W.mcr] & UART_MCR_LOOP) this.push(value);
          break;
        case 1:
          if (dlab) w[W.dlm] = value;
          else {
            w[W.ier] = value & 0x0f;
            w[W.thriAck] = 0;
          }
          break;
        case 2:
          if (value & 0x02) {
            w[W.rxHead] = 0;
            w[W.rxTail] = 0;
          }
          break;
        case 3:
          w[W.lcr] = value;
          break;
        case 4:
          w[W.mcr] = value & 0x1f;
          break;
        case 7:
          w[W.scr] = value;
          break;
        default:
          break;
      }
      this.update();
    } finally {
      unlock(w);
    }
  }

  /**
   * A byte written to THR outside DLAB and loopback: appended to the transmit ring under the lock,
   * so the ring holds the guest's order whatever vCPU wrote. Returns false when the write is not
   * a transmit (write() then handles it as a register write).
   */
  private transmit(value: number): boolean {
    const w = this.w;
    let deadline = 0; // set when the ring is first found full
    for (;;) {
      let wake = false;
      let waitFor = -1;
      lock(w);
      try {
        if ((w[W.lcr] & UART_LCR_DLAB) !== 0 || (w[W.mcr] & UART_MCR_LOOP) !== 0) return false;
        const tail = w[W.txTail];
        const next = (tail + 1) % TX_CAPACITY;
        const full = next === w[W.txHead];
        if (full && w[W.txDropping] === 0 && (deadline === 0 || Date.now() < deadline)) {
          if (deadline === 0) deadline = Date.now() + TX_FULL_WAIT_MS;
          waitFor = w[W.txHead];
        } else {
          if (full) {
            w[W.txDropping] = 1;
            w[W.txDropped]++;
          } else {
            this.tx[tail] = value;
            w[W.txTail] = next;
            if (w[W.txWaking] === 0) {
              w[W.txWaking] = 1;
              wake = true;
            }
          }
          w[W.thriAck] = 0;
          this.update();
        }
      } finally {
        unlock(w);
      }
      if (waitFor < 0) {
        if (wake) this.wake();
        return true;
      }
      // The ring is full: the main thread has not taken output for a while. Wait for it, as a
      // UART whose FIFO is full holds the CPU, but not forever.
      this.wake();
      Atomics.wait(w, W.txHead, waitFor, 50);
    }
  }

  private push(byte: number): boolean {
    const w = this.w;
    if (this.rxCount() === RX_CAPACITY - 1) return false;
    this.rx[w[W.rxTail]] = byte;
    w[W.rxTail] = (w[W.rxTail] + 1) % RX_CAPACITY;
    return true;
  }

  /** Input from the host side; bytes beyond the FIFO's room are dropped. Returns how many were taken. */
  input(bytes: Uint8Array): number {
    const w = this.w;
    lock(w);
    try {
      let taken = 0;
      for (const b of bytes) {
        if (!this.push(b)) break;
        taken++;
      }
      this.update();
      return taken;
    } finally {
      unlock(w);
    }
  }
}
