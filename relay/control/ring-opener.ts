// Opening and closing a VF's packet rings takes the kernel 25-55 ms (it allocates and frees the
// ring pages). Done on the main thread, that would stall every vhost-user session and control
// request of the daemon meanwhile, so a small thread of its own does it. fds and mappings belong
// to the process, so the handle it returns is usable everywhere.
import { Worker, isMainThread, parentPort } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { openPacketRing, closePacketRing, type PacketRingHandle, type PacketRingOptions } from '../../sys/packet-ring.js';

type RequestBody = { op: 'open'; ifname: string; options: PacketRingOptions } | { op: 'close'; handle: PacketRingHandle };
type Request = RequestBody & { id: number };
type Reply = { id: number; handle?: PacketRingHandle; error?: { message: string; code?: string } };

export class RingOpener {
  private readonly thread: Worker;
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (h: PacketRingHandle | undefined) => void; reject: (e: Error) => void }>();

  constructor() {
    this.thread = new Worker(fileURLToPath(import.meta.url), { name: 'vio4wd-ring-opener' });
    this.thread.on('message', (reply: Reply) => {
      const p = this.pending.get(reply.id);
      if (!p) return;
      this.pending.delete(reply.id);
      if (reply.error) p.reject(Object.assign(new Error(reply.error.message), { code: reply.error.code }));
      else p.resolve(reply.handle);
    });
    this.thread.on('error', (err) => {
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
    });
    // The opener never keeps the daemon alive on its own.
    this.thread.unref();
  }

  private call(request: RequestBody): Promise<PacketRingHandle | undefined> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.thread.postMessage({ ...request, id });
    });
  }

  async open(ifname: string, options: PacketRingOptions): Promise<PacketRingHandle> {
    return (await this.call({ op: 'open', ifname, options }))!;
  }

  async close(handle: PacketRingHandle): Promise<void> {
    await this.call({ op: 'close', handle });
  }

  async stop(): Promise<void> {
    await this.thread.terminate();
  }
}

if (!isMainThread && parentPort) {
  const port = parentPort;
  port.on('message', (req: Request) => {
    try {
      if (req.op === 'open') port.postMessage({ id: req.id, handle: openPacketRing(req.ifname, req.options) } satisfies Reply);
      else {
        closePacketRing(req.handle);
        port.postMessage({ id: req.id } satisfies Reply);
      }
    } catch (err) {
      const e = err as Error & { code?: string };
      port.postMessage({ id: req.id, error: { message: e.message, code: e.code } } satisfies Reply);
    }
  });
}
