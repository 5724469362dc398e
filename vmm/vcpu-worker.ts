// One vCPU: a worker thread that loops on KVM_RUN and serves PIO and MMIO exits itself (serial,
// i8042, ACPI sleep/reset registers, virtio-mmio registers). Anything that needs the main thread
// (serial bytes to stdout or a socket, a device's DRIVER_OK or reset, the VM's end) is posted.
import { parentPort } from 'node:worker_threads';
import * as kvm from '../sys/kvm.js';
import { setAffinity } from '../sys/affinity.js';
import { Serial } from './devices/serial.js';
import { MmioTransport } from './devices/virtio-mmio.js';
import { RUN_STATE, type VcpuMessage, type VcpuWorkerData } from './vcpu-protocol.js';
import {
  ACPI_RESET_PORT,
  ACPI_RESET_VALUE,
  ACPI_SLEEP_CONTROL_PORT,
  ACPI_SLEEP_STATUS_PORT,
  I8042_COMMAND_PORT,
  I8042_DATA_PORT,
  SERIAL_GSI,
  SERIAL_PORT,
} from './layout.js';

const port = parentPort!;
// The thread is started while the machine is still being built; its start data comes last.
const data = await new Promise<VcpuWorkerData>((resolve) => port.once('message', (m: VcpuWorkerData) => resolve(m)));
const post = (m: VcpuMessage) => port.postMessage(m);

const control = new Int32Array(data.control);
const runMap = kvm.mapRun(data.vcpuFd, data.runSize);
const run = runMap.view;
const runBytes = runMap.bytes;

if (data.hostCpu !== undefined) setAffinity([data.hostCpu]);

const serial = new Serial(
  data.serialState,
  () => post({ type: 'serial' }),
  (level) => kvm.irqLine(data.vmFd, SERIAL_GSI, level),
);
const transports = data.transports.map(
  (t, device) => ({ base: t.base, end: t.base + t.size, mmio: new MmioTransport(t.state, (change) => post({ type: 'status', device, change }), { waitForReset: true }) }),
);

function handleIo(): string | null {
  const out = run.getUint8(32) === 1;
  const size = run.getUint8(33);
  const portNumber = run.getUint16(34, true);
  const count = run.getUint32(36, true);
  const dataOffset = Number(run.getBigUint64(40, true));
  for (let i = 0; i < count; i++) {
    const at = dataOffset + i * size;
    if (out) {
      const value = size === 1 ? runBytes[at] : size === 2 ? run.getUint16(at, true) : run.getUint32(at, true);
      const ended = portWrite(portNumber, value);
      if (ended) return ended;
    } else {
      const value = portRead(portNumber, size);
      if (size === 1) runBytes[at] = value;
      else if (size === 2) run.setUint16(at, value, true);
      else run.setUint32(at, value >>> 0, true);
    }
  }
  return null;
}

function portWrite(p: number, value: number): string | null {
  if (p >= SERIAL_PORT && p < SERIAL_PORT + 8) serial.write(p - SERIAL_PORT, value & 0xff);
  else if (p === I8042_COMMAND_PORT && (value & 0xff) === 0xfe) return 'i8042 reset (reboot)';
  else if (p === ACPI_SLEEP_CONTROL_PORT && value & 0x20 && ((value >> 2) & 7) === 5) return 'ACPI S5 (poweroff)';
  else if (p === ACPI_RESET_PORT && (value & 0xff) === ACPI_RESET_VALUE) return 'ACPI reset (reboot)';
  return null;
}

function portRead(p: number, size: number): number {
  if (p >= SERIAL_PORT && p < SERIAL_PORT + 8) return serial.read(p - SERIAL_PORT);
  // i8042: status 0 = input buffer empty, nothing to read, so kb_wait() returns at once.
  if (p === I8042_COMMAND_PORT || p === I8042_DATA_PORT) return 0;
  if (p === ACPI_SLEEP_STATUS_PORT || p === ACPI_SLEEP_CONTROL_PORT) return 0;
  return size === 1 ? 0xff : size === 2 ? 0xffff : 0xffffffff;
}

function handleMmio(): void {
  const address = Number(run.getBigUint64(32, true));
  const length = run.getUint32(48, true);
  const isWrite = run.getUint8(52) === 1;
  for (const t of transports) {
    if (address >= t.base && address + length <= t.end) {
      if (isWrite) {
        let value = 0;
        for (let i = length - 1; i >= 0; i--) value = value * 256 + runBytes[40 + i];
        t.mmio.write(address - t.base, length, value);
      } else {
        let value = t.mmio.read(address - t.base, length);
        for (let i = 0; i < length; i++) {
          runBytes[40 + i] = value & 0xff;
          value = Math.floor(value / 256);
        }
      }
      return;
    }
  }
  // Unbacked MMIO: reads see zeros, writes are dropped.
  if (!isWrite) runBytes.fill(0, 40, 48);
}

/** Parks while the VM is paused; returns false when the VM is quitting. */
function honourControl(): boolean {
  for (;;) {
    const state = Atomics.load(control, 0);
    if (state === RUN_STATE.RUN) return true;
    if (state === RUN_STATE.QUIT) return false;
    Atomics.store(control, 1 + data.index, 1);
    Atomics.notify(control, 1 + data.index);
    Atomics.wait(control, 0, RUN_STATE.PAUSE);
    Atomics.store(control, 1 + data.index, 0);
  }
}

function loop(): void {
  post({ type: 'ready', index: data.index, tid: kvm.currentTid(), runAddress: runMap.address });
  for (;;) {
    if (!honourControl()) return;
    const ret = kvm.run(data.vcpuFd);
    if (ret < 0) {
      runBytes[1] = 0; // immediate_exit was how we were kicked
      continue;
    }
    const reason = run.getUint32(8, true);
    switch (reason) {
      case kvm.exitReasons.IO: {
        const ended = handleIo();
        if (ended) {
          post({ type: 'exit', index: data.index, reason: ended });
          return;
        }
        break;
      }
      case kvm.exitReasons.MMIO:
        handleMmio();
        break;
      case kvm.exitReasons.HLT:
        post({ type: 'exit', index: data.index, reason: 'hlt' });
        return;
      case kvm.exitReasons.SHUTDOWN:
        post({ type: 'exit', index: data.index, reason: 'triple fault (shutdown)', registers: shutdownRegisters(data.vcpuFd) });
        return;
      case kvm.exitReasons.SYSTEM_EVENT:
        post({ type: 'exit', index: data.index, reason: `system event ${run.getUint32(32, true)}` });
        return;
      case kvm.exitReasons.INTR:
        runBytes[1] = 0;
        break;
      case kvm.exitReasons.INTERNAL_ERROR: {
        const suberror = run.getUint32(32, true);
        const ndata = Math.min(run.getUint32(36, true), 16);
        const extra: string[] = [];
        for (let i = 0; i < ndata; i++) extra.push('0x' + run.getBigUint64(40 + i * 8, true).toString(16));
        post({
          type: 'fatal',
          index: data.index,
          message: `vCPU ${data.index}: KVM internal error, suberror ${suberror}${suberror === 1 ? ' (instruction emulation failed)' : ''} [${extra.join(' ')}]; ${kvm.describeVcpuState(data.vcpuFd)}`,
        });
        return;
      }
      case kvm.exitReasons.FAIL_ENTRY:
        post({ type: 'fatal', index: data.index, message: `vCPU ${data.index}: VM entry failed, reason 0x${run.getBigUint64(32, true).toString(16)}` });
        return;
      default:
        post({ type: 'fatal', index: data.index, message: `vCPU ${data.index}: unhandled exit ${kvm.exitReasonNames[reason] ?? reason}` });
        return;
    }
  }
}

try {
  loop();
} catch (err) {
  post({ type: 'fatal', index: data.index, message: `vCPU ${data.index}: ${(err as Error).message}` });
}

/**
 * Where a vCPU stood when the guest triple-faulted. KVM on Intel keeps the state of the fault;
 * KVM on AMD SVM resets the vCPU on the shutdown intercept (the VMCB is undefined after it), so
 * there the registers are the reset vector's and say nothing about the fault.
 */
function shutdownRegisters(vcpuFd: number): string {
  const state = kvm.describeVcpuState(vcpuFd);
  if (/^rip 0xfff0 .* cs 0xf000 /.test(state)) return 'registers not kept: KVM reset the vCPU at the shutdown (AMD SVM does)';
  return state;
}
