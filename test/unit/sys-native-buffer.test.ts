// Native buffers are mmap'd pages that are never unmapped (a typed array may still view them), so
// owners that come and go must give them back for reuse: a VF link is made for every attachment
// of a direction, and a daemon whose VMs reconnect for months attaches directions without end.
import { describe, expect, it } from 'vitest';
import { nativeBuffer, releaseNativeBuffer, spareNativeBuffers } from '../../sys/native-buffer.js';
import { PacketBatch } from '../../sys/packet-batch.js';

describe('native buffers', () => {
  it('a released buffer of the same page-aligned length is handed out again, zeroed', () => {
    const a = nativeBuffer(5000);
    expect(a.length).toBe(8192);
    a.bytes.fill(0xab);
    const spareBefore = spareNativeBuffers();
    releaseNativeBuffer(a);
    expect(spareNativeBuffers()).toBe(spareBefore + 1);
    const other = nativeBuffer(100); // another length: new pages
    expect(other.address).not.toBe(a.address);
    const b = nativeBuffer(8000);
    expect(b.address).toBe(a.address);
    expect(spareNativeBuffers()).toBe(spareBefore);
    expect(b.bytes.every((x) => x === 0)).toBe(true);
  });

  it('packet batches made and released a thousand times reuse one mapping', () => {
    const addresses = new Set<number>();
    for (let i = 0; i < 1000; i++) {
      const batch = new PacketBatch(64, 1024);
      addresses.add((batch as unknown as { msgAddress: number }).msgAddress);
      batch.release();
    }
    expect(addresses.size).toBe(1);
  });
});
