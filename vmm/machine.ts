// The KVM machine: VM with in-kernel irqchip and PIT, guest RAM slots, ACPI tables, the kernel,
// virtio-mmio devices (ioeventfd kicks, irqfd calls), and one worker thread per vCPU.
import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import type { Logger } from 'pino';
import * as kvm from '../sys/kvm.js';
import { Reactor } from '../sys/poll.js';
import { viewAt } from '../sys/memory.js';
import { buildAcpiTables, type AcpiNumaNode } from './acpi.js';
import { numaLayout } from './numa-layout.js';
import { loadKernel, parseKernel } from './boot.js';
import type { VmConfig } from './config-types.js';
import { BOOT_MSRS, buildFpu, buildRegs, buildSregs, hostIsPvm, patchCpuid, patchLapic } from './cpu.js';
import { Serial, createSerialState } from './devices/serial.js';
import { MmioTransport, createTransportState, type StatusChange } from './devices/virtio-mmio.js';
import { createGuestRam, writeGuest, type GuestRam } from './guest-ram.js';
import {
  ACPI_TABLES_ADDR,
  IDENTITY_MAP_ADDR,
  RSDP_ADDR,
  SERIAL_GSI,
  TSS_ADDR,
  VIRTIO_MMIO_SIZE,
  virtioMmioAddress,
  virtioMmioGsi,
} from './layout.js';
import { openBlockDevice } from './block-device.js';
import { IoThread } from './iothread.js';
import { openVhostUserNet } from './net-device.js';
import type { VirtioDevice } from './devices/virtio-device.js';
import { RUN_STATE, type VcpuMessage, type VcpuWorkerData } from './vcpu-protocol.js';

export type VmStatus = 'created' | 'running' | 'paused' | 'shutdown';

export interface VcpuInfo {
  index: number;
  tid: number;
  hostCpu?: number;
}

export interface MachineEvents {
  /** The guest ended (reboot=k, poweroff, triple fault): `code` 0; a fatal vCPU error: 1. */
  exit: (code: number, reason: string) => void;
  serial: (bytes: Uint8Array) => void;
}

/** A virtio device in its virtio-mmio slot. */
interface Device {
  index: number;
  address: number;
  gsi: number;
  state: SharedArrayBuffer;
  device: VirtioDevice;
  /** One status change at a time per device, in the order the guest made them. */
  chain: Promise<void>;
}

export class Machine extends EventEmitter {
  status: VmStatus = 'created';
  readonly vcpus: VcpuInfo[] = [];
  private workers: Worker[] = [];
  /** vCPU threads that have not exited yet. */
  private readonly liveWorkers = new Set<Worker>();
  private readonly vcpuReady: Promise<void>[] = [];
  private vcpusStarted = false;
  private runAddresses: number[] = [];
  private readonly control = new SharedArrayBuffer(4 * 256);
  private readonly controlWords = new Int32Array(this.control);
  private devices: Device[] = [];
  private iothreads: IoThread[] = [];
  private serialState = createSerialState();
  private serial!: Serial;
  private kvmFd = -1;
  private vmFd = -1;
  private vcpuFds: number[] = [];
  ram!: GuestRam;
  private reactor: Reactor | null = null;
  private ended = false;
  readonly bootTimes: { created: number; started?: number } = { created: Date.now() };

  private constructor(
    readonly config: VmConfig,
    private readonly log: Logger,
  ) {
    super();
  }

  static async create(config: VmConfig, log: Logger): Promise<Machine> {
    const m = new Machine(config, log);
    try {
      await m.build();
    } catch (err) {
      await m.destroy();
      throw err;
    }
    return m;
  }

  private async build(): Promise<void> {
    const c = this.config;
    const kernelImage = parseKernel(readFileSync(c.kernel), c.kernel);
    const initrd = c.initrd ? readFileSync(c.initrd) : undefined;

    // KVM first: without it (or with too few vCPUs allowed) no thread is worth starting.
    this.kvmFd = kvm.openKvm();
    const maxVcpus = Math.max(kvm.checkExtension(this.kvmFd, kvm.caps.MAX_VCPUS), kvm.checkExtension(this.kvmFd, kvm.caps.NR_VCPUS));
    if (c.vcpus > maxVcpus) throw new Error(`${c.labels.vcpus ?? '-smp'}: ${c.vcpus} vCPUs, but this host's KVM allows at most ${maxVcpus}`);
    this.spawnVcpuThreads();
    this.vmFd = kvm.createVm(this.kvmFd);
    kvm.setIdentityMapAddr(this.vmFd, IDENTITY_MAP_ADDR);
    kvm.setTssAddr(this.vmFd, TSS_ADDR);
    kvm.createIrqchip(this.vmFd);
    kvm.createPit2(this.vmFd);

    this.ram = createGuestRam(c.memory, { dumpGuestCore: c.dumpGuestCore });
    this.ram.regions.forEach((r, slot) =>
      kvm.setUserMemoryRegion(this.vmFd, { slot, guestPhysAddr: r.guestPhysAddr, size: r.size, userAddr: r.userAddr }),
    );
    if (c.disableSeccomp) this.log.info('-disable-seccomp: this VMM installs no seccomp filter, so there is none to disable');
    this.log.info({ size: this.ram.size, dumpGuestCore: c.dumpGuestCore, zones: this.ram.zones.map((z) => ({ id: z.id, size: z.size, shared: z.shared })) }, 'guest RAM mapped');

    this.serial = new Serial(
      this.serialState,
      () => queueMicrotask(() => this.flushSerial()),
      (level) => kvm.irqLine(this.vmFd, SERIAL_GSI, level),
    );

    if (c.nets.length > 0) this.reactor = new Reactor();
    for (const net of c.nets) {
      const handle = await openVhostUserNet(net, this.ram, this.reactor!, this.log);
      // A back-end that goes away is reconnected by the NIC itself (vmm/net-device.ts).
      this.addDevice(handle);
    }
    for (const drive of c.drives) this.addDevice(openBlockDevice(drive));
    this.createIothreads();

    const acpi = buildAcpiTables({
      vcpus: c.vcpus,
      mmioDevices: this.devices.map((d) => ({ address: d.address, size: VIRTIO_MMIO_SIZE, gsi: d.gsi })),
      numa: this.numaNodes(),
      tablesAddress: ACPI_TABLES_ADDR,
      rsdpAddress: RSDP_ADDR,
    });
    for (const t of acpi.tables) writeGuest(this.ram, t.address, t.bytes, `ACPI ${t.signature}`);

    const boot = loadKernel(
      { write: (gpa, bytes) => writeGuest(this.ram, gpa, bytes, 'kernel loader') },
      { kernel: kernelImage, cmdline: c.append, initrd, ramSize: this.ram.size, rsdpAddress: RSDP_ADDR },
    );
    this.log.info({ format: kernelImage.format, entry: boot.entry, initrd: boot.initrdAddress }, 'kernel loaded');

    const supported = kvm.getSupportedCpuid(this.kvmFd);
    const hideCx16 = hostIsPvm();
    for (let i = 0; i < c.vcpus; i++) {
      const fd = kvm.createVcpu(this.vmFd, i);
      this.vcpuFds.push(fd);
      kvm.setCpuid2(fd, patchCpuid(supported, { vcpuIndex: i, vcpuCount: c.vcpus, hideCx16 }));
      kvm.setMsrs(fd, BOOT_MSRS);
      kvm.setFpu(fd, buildFpu());
      kvm.setLapic(fd, patchLapic(kvm.getLapic(fd)));
      // Application processors wait for INIT/SIPI from the boot CPU; only the BSP gets the entry state.
      if (i === 0) {
        kvm.setRegs(fd, buildRegs(boot.entry));
        kvm.setSregs(fd, buildSregs(kvm.getSregs(fd), boot.entry));
      }
    }

    for (const d of this.devices) {
      d.device.kickFds.forEach((fd, q) => kvm.ioeventfd(this.vmFd, { address: d.address + 0x50, length: 4, datamatch: q, fd }));
      kvm.irqfd(this.vmFd, d.device.callFd, d.gsi);
    }
  }

  private addDevice(device: VirtioDevice): void {
    const index = this.devices.length;
    const h = device;
    this.devices.push({
      index,
      address: virtioMmioAddress(index),
      gsi: virtioMmioGsi(index),
      state: createTransportState({
        deviceId: h.deviceId,
        features: h.features,
        numQueues: h.numQueues,
        queueNumMax: h.queueNumMax,
        // A vhost-user back-end signals the irqfd itself; our own devices set InterruptStatus first.
        vhostUser: device.servedBy === 'vhost-user',
        config: h.configSpace,
      }),
      device,
      chain: Promise.resolve(),
    });
  }

  /** One worker per iothread the devices name (a drive without -iothread names one of its own). */
  private createIothreads(): void {
    const groups = new Map<string, Device[]>();
    for (const d of this.devices) {
      const io = d.device.iothread;
      if (io) groups.set(io.name, [...(groups.get(io.name) ?? []), d]);
    }
    for (const [name, devices] of groups) {
      const thread = new IoThread(name, devices.map((d) => d.device.iothread!.drive(d.state)), this.ram, this.log);
      for (const d of devices) d.device.iothread!.attach(thread);
      this.iothreads.push(thread);
    }
  }

  private numaNodes(): AcpiNumaNode[] {
    return numaLayout(this.config.numa, this.ram.regions, this.config.vcpus);
  }

  /**
   * Starts one thread per vCPU once /dev/kvm is open, before the rest of the machine is built: a
   * worker takes tens of milliseconds to load its modules, which then overlaps with VM and
   * guest-memory setup. Each waits for its
   * start data (VcpuWorkerData), sent by start().
   */
  private spawnVcpuThreads(): void {
    const workerUrl = new URL('./vcpu-worker.js', import.meta.url);
    this.log.info({ vcpus: this.config.vcpus }, 'starting vCPU threads');
    for (let i = 0; i < this.config.vcpus; i++) {
      const worker = new Worker(workerUrl, { name: `vcpu${i}` });
      this.workers.push(worker);
      this.liveWorkers.add(worker);
      worker.once('exit', () => this.liveWorkers.delete(worker));
      this.vcpuReady.push(
        new Promise((resolve, reject) => {
          worker.once('error', reject);
          worker.on('message', (m: VcpuMessage) => {
            if (m.type === 'ready') {
              this.vcpus[m.index] = { index: m.index, tid: m.tid, hostCpu: this.config.vcpuPin?.[m.index] };
              this.runAddresses[m.index] = m.runAddress;
              resolve();
            }
            this.onVcpuMessage(m);
          });
        }),
      );
      // Not yet started: a failed build terminates the thread, and that is not an error of the VM.
      this.vcpuReady[i].catch(() => undefined);
      worker.on('error', (err) => this.finish(1, `vCPU ${i} thread failed: ${err.message}`));
    }
  }

  /** Hands every vCPU thread its start data and resolves once each is in its run loop. */
  async start(): Promise<void> {
    if (this.ended) throw new Error('the VM has already been shut down');
    for (const t of this.iothreads) await t.start();
    // vCPU kicks are SIGUSR2 to the thread; a handler makes the signal interrupt KVM_RUN instead of killing us.
    process.on('SIGUSR2', () => undefined);
    const runSize = kvm.vcpuMmapSize(this.kvmFd);
    // Every vCPU thread parks until all have reported in, so the guest runs only once each thread
    // (and its tid, for query-cpus and pinning) exists.
    Atomics.store(this.controlWords, 0, RUN_STATE.PAUSE);
    this.workers.forEach((worker, i) => {
      const data: VcpuWorkerData = {
        index: i,
        vcpuFd: this.vcpuFds[i],
        vmFd: this.vmFd,
        runSize,
        hostCpu: this.config.vcpuPin?.[i],
        serialState: this.serialState,
        transports: this.devices.map((d) => ({ base: d.address, size: VIRTIO_MMIO_SIZE, state: d.state })),
        control: this.control,
      };
      worker.postMessage(data);
    });
    this.vcpusStarted = true;
    await Promise.all(this.vcpuReady);
    if (this.ended) return;
    this.status = 'running';
    this.bootTimes.started = Date.now();
    Atomics.store(this.controlWords, 0, RUN_STATE.RUN);
    Atomics.notify(this.controlWords, 0);
  }

  private onVcpuMessage(m: VcpuMessage): void {
    switch (m.type) {
      case 'serial':
        this.flushSerial();
        break;
      case 'status': {
        const device = this.devices[m.device];
        device.chain = device.chain.then(() => this.deviceStatus(device, m.change));
        break;
      }
      case 'exit':
        if (m.registers) this.log.warn({ vcpu: m.index, reason: m.reason, registers: m.registers }, `guest ended: ${m.reason}; ${m.registers}`);
        else this.log.info({ vcpu: m.index, reason: m.reason }, `guest ended: ${m.reason}`);
        this.finish(0, m.reason);
        break;
      case 'fatal':
        this.log.error({ vcpu: m.index }, m.message);
        this.finish(1, m.message);
        break;
      default:
        break;
    }
  }

  private async deviceStatus(device: Device, change: StatusChange): Promise<void> {
    try {
      await device.device.onStatus(change);
    } catch (err) {
      this.log.error({ device: device.index, err: (err as Error).message }, `virtio device ${device.index}: ${(err as Error).message}`);
      MmioTransport.setNeedsReset(device.state);
    } finally {
      // The vCPU that wrote the reset waits for this before the guest may touch its rings again.
      if (change.status === 0) MmioTransport.resetDone(device.state);
    }
  }

  /** Bytes typed at the serial console. */
  serialInput(bytes: Uint8Array): void {
    this.serial.input(bytes);
  }

  private kickAll(): void {
    const { signalThread } = kvm;
    this.vcpus.forEach((v, i) => {
      const run = new Uint8Array(viewRun(this.runAddresses[i]));
      run[1] = 1; // immediate_exit
      try {
        signalThread(v.tid, 12 /* SIGUSR2 */);
      } catch {
        /* the thread has already left */
      }
    });
  }

  /** Stops every vCPU (QMP `stop`); resolves once all are parked. */
  async pause(): Promise<void> {
    if (this.status !== 'running') return;
    Atomics.store(this.controlWords, 0, RUN_STATE.PAUSE);
    this.kickAll();
    const deadline = Date.now() + 5000;
    for (let i = 0; i < this.vcpus.length; i++) {
      while (Atomics.load(this.controlWords, 1 + i) !== 1) {
        if (Date.now() > deadline) throw new Error(`vCPU ${i} did not stop within 5 s`);
        await new Promise((r) => setTimeout(r, 5));
      }
    }
    this.status = 'paused';
  }

  resume(): void {
    if (this.status !== 'paused') return;
    Atomics.store(this.controlWords, 0, RUN_STATE.RUN);
    Atomics.notify(this.controlWords, 0);
    this.status = 'running';
  }

  describeDevices(): Array<Record<string, unknown>> {
    const list: Array<Record<string, unknown>> = [
      { id: 'serial0', type: 'serial-8250', port: '0x3f8', irq: SERIAL_GSI, backend: this.config.serial.kind },
    ];
    for (const d of this.devices) {
      list.push({ ...d.device.describe(), transport: 'virtio-mmio', address: `0x${d.address.toString(16)}`, irq: d.gsi });
    }
    return list;
  }

  /** Passes on what the guest transmitted, in its order (the vCPUs only post a wake-up). */
  private flushSerial(): void {
    if (!this.serial) return;
    const bytes = this.serial.takeOutput();
    if (bytes.length > 0) this.emit('serial', bytes);
  }

  private finish(code: number, reason: string): void {
    if (this.ended) return;
    // The guest's last lines (a panic, a poweroff message) may still wait in the ring.
    this.flushSerial();
    const dropped = this.serial?.droppedOutput() ?? 0;
    if (dropped > 0) this.log.warn({ dropped }, `the serial port dropped ${dropped} bytes the guest wrote while its output was not taken for a second or more`);
    this.ended = true;
    this.status = 'shutdown';
    this.emit('exit', code, reason);
  }

  /** Stops the vCPUs and closes the vhost-user connections (SIGTERM, QMP quit). */
  async shutdown(reason: string): Promise<void> {
    Atomics.store(this.controlWords, 0, RUN_STATE.QUIT);
    Atomics.notify(this.controlWords, 0);
    if (this.vcpus.length) this.kickAll();
    await this.destroy();
    this.finish(0, reason);
  }

  private async destroy(): Promise<void> {
    // vhost-user devices first: their connections live on the reactor closed next.
    for (const d of this.devices.filter((x) => x.device.servedBy === 'vhost-user')) {
      try {
        await d.device.close();
      } catch {
        /* closing is best effort at the end */
      }
    }
    this.reactor?.close();
    this.reactor = null;
    const iothreads = this.iothreads.splice(0);
    await Promise.all(iothreads.map((t) => t.stop()));
    // Devices an iothread served, once no iothread touches them any more.
    for (const d of this.devices.filter((x) => x.device.servedBy === 'iothread')) await d.device.close();
    await this.joinVcpus();
  }

  /**
   * Waits for the vCPU threads to leave KVM_RUN and exit. Worker.terminate() cannot interrupt a
   * thread blocked in KVM_RUN (an idle guest halted with the in-kernel irqchip never comes back
   * to user space), and process exit joins every worker: a thread left there would keep the
   * process alive after the VM ended. So kick them again until they are gone, within a deadline.
   */
  private async joinVcpus(timeoutMs = 3000): Promise<void> {
    if (!this.vcpusStarted) {
      // Still waiting for their start data, in their event loop: terminate() reaches them.
      await Promise.all(this.workers.map((w) => w.terminate().catch(() => undefined)));
      return;
    }
    Atomics.store(this.controlWords, 0, RUN_STATE.QUIT);
    Atomics.notify(this.controlWords, 0);
    const deadline = Date.now() + timeoutMs;
    while (this.liveWorkers.size > 0 && Date.now() < deadline) {
      if (this.vcpus.length) this.kickAll();
      await new Promise((r) => setTimeout(r, 20));
    }
    if (this.liveWorkers.size > 0) {
      this.log.error({ threads: this.liveWorkers.size }, `${this.liveWorkers.size} vCPU thread(s) did not stop within ${timeoutMs} ms`);
    }
  }

  /** Threads of this VM still running (vCPUs and iothreads); 0 once shutdown has completed. */
  get liveThreads(): number {
    return this.liveWorkers.size + this.iothreads.length;
  }
}

function viewRun(address: number): ArrayBuffer {
  // Only the first bytes (immediate_exit) are touched from the main thread.
  return viewAt(address, 8);
}
