// What every chain a queue hands out must satisfy, whatever the guest wrote: each segment inside
// one region and at its guest address, readable segments before writable ones, lengths that add
// up, and no more bytes than the limit. Throws an Error naming the chain and the broken rule.
import type { DescriptorChain } from '../../virtio/descriptor-chain.js';
import type { GuestMemory } from '../../virtio/guest-memory.js';

export function checkChain(chain: DescriptorChain, memory: GuestMemory, maxChainBytes: number): void {
  let readable = 0;
  let writable = 0;
  if (chain.segmentCount > chain.capacity) throw new Error(`chain ${chain.head}: ${chain.segmentCount} segments over capacity`);
  for (let i = 0; i < chain.segmentCount; i++) {
    const region = memory.regions.find((r) => r.bytes === chain.segBytes[i]);
    const offset = chain.segOffset[i]!;
    const length = chain.segLength[i]!;
    if (region === undefined) throw new Error(`chain ${chain.head}: segment ${i} is not in a region`);
    if (length === 0 || offset < 0 || offset + length > region.size) throw new Error(`chain ${chain.head}: segment ${i} (${offset}+${length}) leaves its region`);
    if (region.guestPhysAddr + offset !== chain.segGpa[i]) throw new Error(`chain ${chain.head}: segment ${i} address mismatch`);
    const isWritable = chain.segWritable[i] === 1;
    if (isWritable !== i >= chain.readableSegments) throw new Error(`chain ${chain.head}: segment ${i} direction out of order`);
    if (isWritable) writable += length;
    else readable += length;
  }
  if (readable !== chain.readableLength || writable !== chain.writableLength) throw new Error(`chain ${chain.head}: lengths disagree with segments`);
  if (readable + writable > maxChainBytes) throw new Error(`chain ${chain.head}: ${readable + writable} bytes over the limit`);
}

/** `len` bytes of a recognisable pattern (the seed shifts it), to check what a copy moved. */
export const pattern = (len: number, seed = 1): Uint8Array => Uint8Array.from({ length: len }, (_, i) => (i * 7 + seed) & 0xff);

/** Segments of a popped chain as [gpa, length, writable] triples. */
export const segmentsOf = (c: DescriptorChain): [number, number, boolean][] =>
  Array.from({ length: c.segmentCount }, (_, i) => [c.segGpa[i]!, c.segLength[i]!, c.segWritable[i] === 1]);
