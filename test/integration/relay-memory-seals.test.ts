// Guest memory that could shrink under the relay's mapping, on the real daemon. A front-end that
// truncates its memory file after SET_MEM_TABLE would kill the daemon with SIGBUS, so:
// - with VIRTIOFWD_UNSEALED_MEMORY=refuse, a VM whose memfd cannot be sealed is refused with a log
//   line naming its relay and starts no ring, while a VM with sealed memory on another relay keeps
//   forwarding; a sealable but unsealed memfd is sealed by the relay, so its front-end can no
//   longer shrink it;
// - with the default (warn), the unsealable memfd is accepted with a warning naming the relay.
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { close as closeFd } from '../../sys/fd.js';
import { F_SEAL_SHRINK, MAP_SHARED, PROT_READ, PROT_WRITE, addSeals, fileSeals, ftruncate, memfdCreate, mmap, munmap, type Mapping } from '../../sys/memory.js';
import { Reactor } from '../../sys/poll.js';
import { Frontend } from '../../vhost-user/frontend.js';
import { VirtioNetFeature } from '../../vhost-user/features.js';
import { NetTestVm, type NetTestVmLayout } from '../support/net-test-vm.js';
import { createNetns, createVethPair, deleteLink, deleteNetns, linkCounter, requireBinary, requireRoot, uniqueTag } from '../support/netns.js';
import { sleep, stopAll, waitFor } from '../support/processes.js';
import { startRelay, type RunningRelay } from '../support/relay.js';

vi.setConfig({ testTimeout: 90_000, hookTimeout: 60_000 });

const ready = requireRoot() && requireBinary('ip');
const tag = uniqueTag();
const ns = `msns${tag}`;
const vf = `mv${tag}`;
const peer = `mp${tag}`;
const HEALTHY = 0;
const OTHER = 1;

const LAYOUT: NetTestVmLayout = {
  memSize: 4 << 20,
  queueSize: 256,
  rxRingGpa: 0x0,
  txRingGpa: 0x1_0000,
  rxBuffersGpa: 0x10_0000,
  txBuffersGpa: 0x20_0000,
  bufferSize: 2048,
  netHdr: 12,
  etherTypeOut: 0x88b5,
  etherTypeIn: 0x88b6,
};

type MemoryKind = 'sealed' | 'sealable' | 'unsealable';

/** A test VM on one relay socket: its memory, its rings and its front-end. */
interface Vm {
  memFd: number;
  mem: Mapping;
  fds: number[];
  vm: NetTestVm;
  frontend: Frontend;
  started: Promise<void>;
}

let relay: RunningRelay | null = null;
let reactor: Reactor;
const vms: Vm[] = [];

function memoryOf(kind: MemoryKind): number {
  const fd = memfdCreate(`seals-${kind}`, { allowSealing: kind !== 'unsealable' });
  ftruncate(fd, LAYOUT.memSize);
  if (kind === 'sealed') addSeals(fd, F_SEAL_SHRINK);
  return fd;
}

/** Connects a VM with `kind` memory to relay `id` and starts its device; `started` settles with the outcome. */
async function connectVm(id: number, kind: MemoryKind): Promise<Vm> {
  const memFd = memoryOf(kind);
  const mem = mmap({ length: LAYOUT.memSize, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED, fd: memFd });
  const { vm, fds } = NetTestVm.withEventfds(mem, LAYOUT);
  const { rxSetup, txSetup } = vm;
  const frontend = await Frontend.connect(relay!.socketPath(id), { reactor, retryMs: 100, timeoutMs: 20_000 });
  const negotiated = await frontend.negotiate({ features: 2 ** VirtioNetFeature.VERSION_1 });
  vm.refillRx();
  const started = frontend.startDevice(negotiated.features, [{ guestPhysAddr: 0, size: LAYOUT.memSize, userAddr: mem.address, mmapOffset: 0, fd: memFd }], [rxSetup, txSetup]);
  started.catch(() => undefined);
  const entry = { memFd, mem, fds, vm, frontend, started };
  vms.push(entry);
  return entry;
}

/** Sends frames from `vm` until the peer has counted `count` more, or fails. */
async function expectForwarding(vm: NetTestVm, count: number): Promise<void> {
  const before = linkCounter(peer, 'rx_packets', ns);
  await waitFor(
    () => {
      vm.send(32);
      return linkCounter(peer, 'rx_packets', ns) - before >= count;
    },
    10_000,
    `${count} frames from the VM with sealed memory at the peer`,
    5,
  );
}

const logsOf = (id: number, pattern: RegExp) => relay!.logs().filter((l) => l.relay === id && pattern.test(String(l.msg)));

async function closeVms(): Promise<void> {
  for (const v of vms.splice(0)) {
    await v.frontend.close().catch(() => undefined);
    munmap(v.mem);
    closeFd(v.memFd);
    for (const fd of v.fds) closeFd(fd);
  }
}

describe.skipIf(!ready)('guest memory that could shrink under the relay', () => {
  beforeAll(() => {
    createNetns(ns);
    createVethPair(vf, peer, { nsB: ns, noIpv6: true });
    reactor = new Reactor();
  });

  afterEach(async () => {
    await closeVms();
    await relay?.stop();
    relay = null;
  });

  afterAll(async () => {
    await stopAll();
    await reactor?.close();
    deleteLink(vf);
    deleteNetns(ns);
  });

  it('refuses unsealable memory (refuse), names the relay, and leaves the other VM forwarding', async () => {
    relay = await startRelay({ cpus: [1], staticVfs: { [vf]: HEALTHY }, logLevel: 6, configLines: ['VIRTIOFWD_UNSEALED_MEMORY=refuse'] });
    const healthy = await connectVm(HEALTHY, 'sealed');
    await healthy.started;
    await expectForwarding(healthy.vm, 200);

    const refused = await connectVm(OTHER, 'unsealable');
    await expect(refused.started).rejects.toThrow(/refused SET_MEM_TABLE/);
    const lines = logsOf(OTHER, /SET_MEM_TABLE refused: guest memory can shrink/);
    expect(lines.length).toBe(1);
    expect(String(lines[0].msg)).toMatch(/memory region 0: .*cannot be sealed/);
    expect(String(lines[0].msg)).toMatch(/VIRTIOFWD_UNSEALED_MEMORY=warn/);
    expect(logsOf(OTHER, /vring \d+ started/)).toEqual([]);
    // The healthy VM never noticed.
    await expectForwarding(healthy.vm, 200);
    expect(logsOf(HEALTHY, /ring broken|must reset|refused/)).toEqual([]);

    // The healthy VM's memory is sealed: its front-end cannot shrink it under the relay.
    expect(() => ftruncate(healthy.memFd, 0)).toThrow(expect.objectContaining({ code: 'EPERM' }));
    expect(relay.proc.proc.exitCode).toBeNull();
  });

  it('seals a sealable memfd itself (refuse), so its front-end can no longer shrink it', async () => {
    relay = await startRelay({ cpus: [1], staticVfs: { [vf]: HEALTHY }, logLevel: 6, configLines: ['VIRTIOFWD_UNSEALED_MEMORY=refuse'] });
    const vm = await connectVm(HEALTHY, 'sealable');
    expect(fileSeals(vm.memFd) & F_SEAL_SHRINK).toBe(0);
    await vm.started;
    expect(fileSeals(vm.memFd) & F_SEAL_SHRINK).toBe(F_SEAL_SHRINK);
    expect(logsOf(HEALTHY, /sealed against shrinking \(F_SEAL_SHRINK\) by the back-end/).length).toBe(1);
    await expectForwarding(vm.vm, 200);
    expect(() => ftruncate(vm.memFd, 0)).toThrow(expect.objectContaining({ code: 'EPERM' }));
    await sleep(100);
    await expectForwarding(vm.vm, 100);
  });

  it('accepts unsealable memory with a warning naming the relay by default (warn)', async () => {
    relay = await startRelay({ cpus: [1], staticVfs: { [vf]: HEALTHY }, logLevel: 6 });
    const vm = await connectVm(HEALTHY, 'unsealable');
    await vm.started;
    const warnings = logsOf(HEALTHY, /guest memory can shrink under the mapping/);
    expect(warnings.length).toBe(1);
    expect(warnings[0].level).toBe('warn');
    expect(String(warnings[0].msg)).toMatch(/Accepted because VIRTIOFWD_UNSEALED_MEMORY=warn/);
    await expectForwarding(vm.vm, 200);
  });
});
