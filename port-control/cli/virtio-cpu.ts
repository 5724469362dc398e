// The `R:C1[,C2]` relay-to-CPU syntax of the core pinner. Two orders are in use:
//  - the original pinner's --virtio-cpu: C1 is the VM→VF CPU, C2 the VF→VM CPU;
//  - VIRTIOFWD_CPU_PINS and the pinner's --pin: C1 is the VF→VM CPU, C2 the VM→VF CPU.
// One CPU means both directions in either order.
import type { RelayCpu } from '../../relay/registry-api.js';
import { MAX_CPU_ID, MAX_RELAYS } from '../../vocabulary/limits.js';

export type CpuPairOrder = 'vf-to-vm-first' | 'vm-to-vf-first';

export function parseVirtioCpu(text: string, order: CpuPairOrder = 'vf-to-vm-first', option = '--pin'): RelayCpu {
  const firstName = order === 'vf-to-vm-first' ? 'VF-to-VM' : 'VM-to-VF';
  const secondName = order === 'vf-to-vm-first' ? 'VM-to-VF' : 'VF-to-VM';
  const m = /^(\d+):(\d+)(?:,(\d+))?$/.exec(text.trim());
  if (!m) throw new Error(`${option} ${JSON.stringify(text)} is not of the form R:C1[,C2] (relay, ${firstName} CPU, ${secondName} CPU)`);
  const relay = Number(m[1]);
  const c1 = Number(m[2]);
  const c2 = m[3] === undefined ? c1 : Number(m[3]);
  if (relay >= MAX_RELAYS) throw new Error(`${option} ${text}: relay ${relay} is outside 0..${MAX_RELAYS - 1}`);
  if (c1 > MAX_CPU_ID || c2 > MAX_CPU_ID) throw new Error(`${option} ${text}: CPU numbers go up to ${MAX_CPU_ID}`);
  return order === 'vf-to-vm-first' ? { relay, vfToVmCpu: c1, vmToVfCpu: c2 } : { relay, vfToVmCpu: c2, vmToVfCpu: c1 };
}
