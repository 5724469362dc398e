// A QMP client for tests: connects to the socket QEMU listens on (`-qmp unix:PATH,server=on`),
// negotiates capabilities, and runs commands one at a time, skipping the events QEMU sends between
// replies.
import { connect, type Socket } from 'node:net';

export class Qmp {
  private buffer = '';
  private readonly lines: string[] = [];
  private wake: (() => void) | null = null;
  private closed = false;

  private constructor(private readonly socket: Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      this.buffer += chunk;
      let nl: number;
      while ((nl = this.buffer.indexOf('\n')) >= 0) {
        const line = this.buffer.slice(0, nl).trim();
        this.buffer = this.buffer.slice(nl + 1);
        if (line) this.lines.push(line);
      }
      this.wake?.();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake?.();
    });
  }

  static async connect(path: string, timeoutMs = 10_000): Promise<Qmp> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const socket = await new Promise<Socket>((resolve, reject) => {
          const s = connect(path, () => resolve(s));
          s.once('error', reject);
        });
        const qmp = new Qmp(socket);
        const greeting = await qmp.next(deadline - Date.now());
        if (!('QMP' in greeting)) throw new Error(`qmp: no greeting from ${path}: ${JSON.stringify(greeting)}`);
        await qmp.execute('qmp_capabilities');
        return qmp;
      } catch (err) {
        if (Date.now() > deadline) throw new Error(`qmp: cannot connect to ${path}: ${(err as Error).message}`);
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  }

  /** Runs `command`; resolves with its `return`, rejects with QEMU's error description. */
  async execute(command: string, args?: Record<string, unknown>, timeoutMs = 30_000): Promise<unknown> {
    this.socket.write(`${JSON.stringify(args ? { execute: command, arguments: args } : { execute: command })}\n`);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const msg = await this.next(deadline - Date.now());
      if ('return' in msg) return msg.return;
      if ('error' in msg) throw new Error(`qmp: ${command}: ${JSON.stringify(msg.error)}`);
      // An event: not the reply.
    }
  }

  private async next(timeoutMs: number): Promise<Record<string, unknown>> {
    const deadline = Date.now() + Math.max(0, timeoutMs);
    while (this.lines.length === 0) {
      if (this.closed) throw new Error('qmp: QEMU closed the monitor');
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('qmp: no answer in time');
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.wake = null;
    }
    return JSON.parse(this.lines.shift()!) as Record<string, unknown>;
  }

  close(): void {
    this.socket.destroy();
  }
}
