// A VM→VF direction without a worker thread, for tests of what leaves a VF: guest memory in a
// memfd, one guest TX ring driven from the test, and a VmToVf direction sending on a real port,
// AF_PACKET rings or AF_XDP sockets (a veth whose peer counts what arrives).
import { MAP_SHARED, PROT_READ, PROT_WRITE, ftruncate, memfdCreate, mmap, munmap, type Mapping } from '../../sys/memory.js';
import { close } from '../../sys/fd.js';
import { closePacketRing, openPacketRing, type PacketRingOptions } from '../../sys/packet-ring.js';
import { closeXdpPort, openXdpPort, type XdpPortOptions } from '../../sys/xdp-socket.js';
import { isPacketRingHandle, isXdpHandle, type VfHandle } from '../../relay/datapath/vf-link.js';
import type { MemoryLinkHandle } from '../../relay/datapath/memory-link.js';
import { GuestMemory } from '../../virtio/guest-memory.js';
import { SplitQueueDriver } from '../../virtio/split-queue-driver.js';
import { VmToVf } from '../../relay/datapath/vm-to-vf.js';
import { Counter, counterBase, createCounterBuffer, Dir } from '../../relay/datapath/counters.js';
import type { DirectionSpec, DirectionState, PortSpec } from '../../relay/datapath/worker-protocol.js';

/** Guest memory of a rig: 1 MiB from guest address 0. */
export const TX_RIG_MEMORY = 1 << 20;
const SIZE = TX_RIG_MEMORY;
/** Descriptors of the guest TX ring, unless the test asks for more (up to 512: the ring stays below BUFFERS_AT). */
const QSIZE = 16;
/** The virtio-net header length of VERSION_1 guests. */
export const TX_HDR = 12;
const BUFFERS_AT = 0x10000;
const BUFFER_STRIDE = 0x4000;
let memoryIds = 9000;

export interface TxRig {
  vf: string;
  handle: VfHandle;
  mem: Mapping;
  close(): void;
}

/**
 * Guest memory (`memoryBytes`, 1 MiB by default) and the port of `vf` (which must exist): its
 * packet rings, or with `xdp` its AF_XDP sockets.
 */
export function openTxRig(vf: string, ring: PacketRingOptions = {}, memoryBytes = SIZE, xdp?: XdpPortOptions, memoryLink?: MemoryLinkHandle, opts: { guestUmem?: boolean } = {}): TxRig {
  const memFd = memfdCreate('tx-direction');
  ftruncate(memFd, memoryBytes);
  const mem = mmap({ length: memoryBytes, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED, fd: memFd });
  // With guestUmem, the guest memory is part of the port's UMEM, as the relay does it for a VM.
  const xdpOptions = xdp && opts.guestUmem ? { ...xdp, guestMemory: [{ fd: memFd, hostAddress: mem.address, length: memoryBytes }] } : xdp;
  const handle: VfHandle = memoryLink ?? (xdpOptions ? openXdpPort(vf, xdpOptions) : openPacketRing(vf, { blockSize: 32 * 1024, blockCount: 8, ...ring }));
  return {
    vf,
    handle,
    mem,
    close: () => {
      if (isXdpHandle(handle)) closeXdpPort(handle);
      else if (isPacketRingHandle(handle)) closePacketRing(handle);
      munmap(mem);
      close(memFd);
    },
  };
}

export interface TxDirection {
  d: VmToVf;
  /**
   * Posts `header` and `frame` as a guest does: the header in its own descriptor, the frame in two
   * after `split` bytes. Returns where the frame is in the rig's memory.
   */
  post(header: Uint8Array, frame: Uint8Array, split?: number): number;
  /** Posts a chain of read-only buffers as they are given (guest addresses a hostile guest may choose). */
  postRaw(parts: { gpa: number; len: number }[]): void;
  publish(): void;
  /** Takes back the chains the relay completed, freeing their descriptors for more posts. */
  reclaim(): number;
  counter(c: Counter): number;
  usedIdx(): number;
}

/**
 * A fresh TX ring and a VmToVf direction for relay `relay` over the rig (ring memory reused);
 * `port` replaces the rig's single VF (a bond of memory links, say).
 */
export function txDirection(rig: TxRig, relay: number, guest: { hostOffloads?: boolean; queueSize?: number } = {}, port?: PortSpec, state?: DirectionState): TxDirection {
  const { mem, handle, vf } = rig;
  const memory = new GuestMemory([{ guestPhysAddr: 0, size: SIZE, userAddr: mem.address, bytes: new Uint8Array(mem.buffer, 0, SIZE) }]);
  const queueSize = guest.queueSize ?? QSIZE;
  const l = SplitQueueDriver.layout(0, queueSize);
  new Uint8Array(mem.buffer).fill(0, 0, BUFFERS_AT);
  const driver = new SplitQueueDriver({ memory, size: queueSize, descGpa: l.descGpa, availGpa: l.availGpa, usedGpa: l.usedGpa, name: 'tx' });
  const spec: DirectionSpec = {
    relay,
    dir: 'vm2vf',
    vmConnected: true,
    port: port ?? { mode: 'single', active: 0, members: [{ netdev: vf, handle, up: true }] },
    guest: {
      memoryId: memoryIds++,
      regions: [{ guestPhysAddr: 0, userAddr: mem.address, size: SIZE, hostAddress: mem.address }],
      hostOffloads: guest.hostOffloads ?? false,
      eventIdx: false,
      indirect: false,
      mergeable: false,
      hdrLen: TX_HDR,
      queues: [{ index: 1, size: queueSize, desc: { region: 0, offset: l.descGpa }, avail: { region: 0, offset: l.availGpa }, used: { region: 0, offset: l.usedGpa }, callFd: -1, kickFd: -1, enabled: true }],
    },
  };
  const counters = new Float64Array(createCounterBuffer());
  const d = new VmToVf(spec, state ?? null, counters, (q, m) => {
    throw new Error(`ring ${q} stopped: ${m}`);
  });
  const bytes = new Uint8Array(mem.buffer);
  let next = 0;
  const slots = Math.floor((SIZE - BUFFERS_AT) / BUFFER_STRIDE);
  const base = counterBase(relay, Dir.VmToVf);
  return {
    d,
    post: (header, frame, split = 3000) => {
      const at = BUFFERS_AT + (next++ % slots) * BUFFER_STRIDE;
      bytes.set(header, at);
      bytes.set(frame, at + TX_HDR);
      const first = Math.min(frame.length, split);
      const parts = [{ gpa: at, len: TX_HDR, writable: false }, { gpa: at + TX_HDR, len: first, writable: false }];
      if (frame.length > first) parts.push({ gpa: at + TX_HDR + first, len: frame.length - first, writable: false });
      driver.addBuffers(parts);
      return at + TX_HDR;
    },
    postRaw: (parts) => driver.addBuffers(parts.map((p) => ({ ...p, writable: false }))),
    publish: () => driver.publish(),
    reclaim: () => {
      let n = 0;
      while (driver.popUsed() !== null) n++;
      return n;
    },
    counter: (c) => counters[base + c],
    usedIdx: () => Atomics.load(new Uint16Array(mem.buffer, l.usedGpa, 2), 1),
  };
}
