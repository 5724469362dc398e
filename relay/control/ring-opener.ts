// Opening and closing a VF's port takes the kernel 25-55 ms for packet rings (it allocates and
// frees the ring pages), and as long for AF_XDP sockets (UMEM pinning, program verification, and
// a queue that a socket closed just before still holds). Done on the main thread, that would stall
// every vhost-user session and control request of the daemon meanwhile, so a small thread of its
// own does it. fds and mappings belong to the process, so the handle it returns is usable everywhere.
import { Worker, isMainThread, parentPort } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { openPacketRing, closePacketRing, type PacketRingHandle, type PacketRingOptions } from '../../sys/packet-ring.js';
import { openXdpPort, closeXdpPort, type XdpPortHandle, type XdpPortOptions } from '../../sys/xdp-socket.js';
import { isPacketRingHandle, isXdpHandle, type VfHandle } from '../datapath/vf-link.js';

type RequestBody =
  | { op: 'open'; ifname: string; options: PacketRingOptions }
  | { op: 'open-xdp'; ifname: string; options: XdpPortOptions }
  | { op: 'close'; handle: VfHandle };
type Request = RequestBody & { id: number };
type Reply = { id: number; handle?: VfHandle; error?: { message: string; code?: string } };

export class RingOpener {
  private readonly thread: Worker;
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (h: VfHandle | undefined) => void; reject: (e: Error) => void }>();

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

  private call(request: RequestBody): Promise<VfHandle | undefined> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.thread.postMessage({ ...request, id });
    });
  }

  async open(ifname: string, options: PacketRingOptions): Promise<PacketRingHandle> {
    return (await this.call({ op: 'open', ifname, options })) as PacketRingHandle;
  }

  async openXdp(ifname: string, options: XdpPortOptions): Promise<XdpPortHandle> {
    return (await this.call({ op: 'open-xdp', ifname, options })) as XdpPortHandle;
  }

  async close(handle: VfHandle): Promise<void> {
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
      else if (req.op === 'open-xdp') port.postMessage({ id: req.id, handle: openXdpPort(req.ifname, req.options) } satisfies Reply);
      else {
        if (isXdpHandle(req.handle)) closeXdpPort(req.handle);
        else if (isPacketRingHandle(req.handle)) closePacketRing(req.handle);
        port.postMessage({ id: req.id } satisfies Reply);
      }
    } catch (err) {
      const e = err as Error & { code?: string };
      port.postMessage({ id: req.id, error: { message: e.message, code: e.code } } satisfies Reply);
    }
  });
}
