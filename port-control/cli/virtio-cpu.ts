// The `R:C1[,C2]` relay-to-CPU syntax of VIRTIOFWD_CPU_PINS and the core pinner.
import type { RelayCpu } from '../../relay/registry-api.js';
import { MAX_CPU_ID, MAX_RELAYS } from '../../vocabulary/limits.js';

/** C1 is the VF→VM CPU and C2 the VM→VF CPU, as in the configuration file; one CPU means both. */
export function parseVirtioCpu(text: string): RelayCpu {
  const m = /^(\d+):(\d+)(?:,(\d+))?$/.exec(text.trim());
  if (!m) throw new Error(`--virtio-cpu ${JSON.stringify(text)} is not of the form R:C1[,C2] (relay, VF-to-VM CPU, VM-to-VF CPU)`);
  const relay = Number(m[1]);
  const c1 = Number(m[2]);
  const c2 = m[3] === undefined ? c1 : Number(m[3]);
  if (relay >= MAX_RELAYS) throw new Error(`--virtio-cpu ${text}: relay ${relay} is outside 0..${MAX_RELAYS - 1}`);
  if (c1 > MAX_CPU_ID || c2 > MAX_CPU_ID) throw new Error(`--virtio-cpu ${text}: CPU numbers go up to ${MAX_CPU_ID}`);
  return { relay, vfToVmCpu: c1, vmToVfCpu: c2 };
}
