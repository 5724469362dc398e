// Where a direction resumes when the worker that ran it ended without handing back its ring state:
// the used index each ring published in guest memory. Chains the dead worker had taken but not
// completed are taken again (a transmit frame may go out twice; nothing is lost or leaked), which
// is also how a reconnecting front-end's rings resume.
import { viewAt } from '../../sys/memory.js';
import type { DirectionSpec, DirectionState, QueueState } from '../datapath/worker-protocol.js';

export function resumeStateFromGuest(spec: DirectionSpec): DirectionState {
  const queues: Record<number, QueueState> = {};
  const guest = spec.guest;
  // A packed ring keeps no used index in guest memory: its queues get no state, and the worker
  // stops them (the VM must reset the device) rather than guess where they were.
  if (guest?.packed) return { queues, rrQueue: 0, rrMember: 0 };
  for (const q of guest?.queues ?? []) {
    const region = guest!.regions[q.used.region];
    if (!region || q.used.offset + 4 > region.size) continue;
    // used ring: u16 flags, u16 idx. The session keeps the mapping alive while the ring runs.
    const idx = new DataView(viewAt(region.hostAddress + q.used.offset, 4)).getUint16(2, true);
    queues[q.index] = { lastAvail: idx, lastUsed: idx, signalledUsed: 0, signalledValid: false };
  }
  return { queues, rrQueue: 0, rrMember: 0 };
}
