// virtio-blk request handling over in-memory guest memory and a real image file (buffered and
// O_DIRECT), the iops token bucket with a fake clock, the device's features and config space, and
// the --help text.
import { closeSync, constants, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  BlockRequestHandler,
  TokenBucket,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  type BlockImage,
} from '../../vmm/block-request.js';
import { VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, blockConfigSpace, blockFeatures } from '../../vmm/block-device.js';
import { FLAG_OPTIONS, VALUE_OPTIONS } from '../../vmm/config-cli.js';
import { finalizeConfig } from '../../vmm/config-build.js';
import { draftFromJson } from '../../vmm/config-json.js';
import { usage } from '../../vmm/usage.js';
import { RingBuilder, createTestMemory, readBytes, writeBytes, type BufferSpec } from '../support/ring-builder.js';

const dir = mkdtempSync(join(tmpdir(), `vmm-block-unit-${process.pid}-`));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const SECTORS = 64;
const HEADER = 0x10000;
const DATA = 0x20000;
const STATUS = 0x80000;

function imageBytes(size = SECTORS * 512): Buffer {
  const b = Buffer.alloc(size);
  for (let i = 0; i < size; i++) b[i] = (i * 13 + 5) & 0xff;
  return b;
}

function setup(opts: { readOnly?: boolean; direct?: boolean; serial?: string; size?: number } = {}) {
  const path = join(dir, `img-${Math.random().toString(16).slice(2)}`);
  const initial = imageBytes(opts.size);
  writeFileSync(path, initial);
  const fd = openSync(path, (opts.readOnly ? constants.O_RDONLY : constants.O_RDWR) | (opts.direct ? constants.O_DIRECT : 0));
  const image: BlockImage = {
    fd,
    capacityBytes: Math.floor(initial.length / (opts.direct ? 4096 : 512)) * (opts.direct ? 4096 : 512),
    readOnly: opts.readOnly ?? false,
    direct: opts.direct ?? false,
    serial: opts.serial ?? '',
    label: 'drive test',
  };
  const memory = createTestMemory([{ gpa: 0, size: 1 << 20 }]);
  const ring = new RingBuilder(memory, { size: 16 });
  const queue = ring.queue({ maxChainBytes: 2 ** 32 });
  const handler = new BlockRequestHandler(image);
  let slot = 0;
  /** Offers one request and serves it; returns the result and the status byte in guest memory. */
  const request = (type: number, sector: number, buffers: BufferSpec[], options: { header?: number[]; status?: boolean } = {}) => {
    const header = new Uint8Array(16);
    const v = new DataView(header.buffer);
    v.setUint32(0, type, true);
    v.setUint32(8, sector % 2 ** 32, true);
    v.setUint32(12, Math.floor(sector / 2 ** 32), true);
    writeBytes(memory, HEADER, options.header ?? [...header]);
    writeBytes(memory, STATUS, [0xee]);
    const chain: BufferSpec[] = [{ addr: HEADER, len: options.header?.length ?? 16 }, ...buffers];
    if (options.status !== false) chain.push({ addr: STATUS, len: 1, writable: true });
    const head = ring.writeChain(chain, slot);
    slot = (slot + chain.length) % 8;
    ring.offer(head);
    const result = handler.serveNext(queue)!;
    queue.flushUsed();
    return { result, status: readBytes(memory, STATUS, 1)[0], used: ring.usedEntry(ring.availIdx - 1) };
  };
  return { path, fd, initial, memory, request, close: () => closeSync(fd) };
}

describe('virtio-blk requests', () => {
  it('reads sectors into a chain split over several buffers and reports the used length', () => {
    const t = setup();
    try {
      const r = t.request(VIRTIO_BLK_T_IN, 3, [
        { addr: DATA, len: 512, writable: true },
        { addr: DATA + 0x4000, len: 1024, writable: true },
      ]);
      expect(r.result).toEqual({ status: VIRTIO_BLK_S_OK, written: 1537, problem: null });
      expect(r.status).toBe(VIRTIO_BLK_S_OK);
      expect(r.used.len).toBe(1537);
      expect(Buffer.from(readBytes(t.memory, DATA, 512)).equals(t.initial.subarray(3 * 512, 4 * 512))).toBe(true);
      expect(Buffer.from(readBytes(t.memory, DATA + 0x4000, 1024)).equals(t.initial.subarray(4 * 512, 6 * 512))).toBe(true);
    } finally {
      t.close();
    }
  });

  it('writes sectors to the file, larger than the bounce buffer, and flushes', () => {
    const size = 1024 * 1024;
    const t = setup({ size });
    try {
      const data = Buffer.alloc(600 * 512);
      for (let i = 0; i < data.length; i++) data[i] = (i * 31) & 0xff;
      writeBytes(t.memory, DATA, data.subarray(0, 0x40000));
      writeBytes(t.memory, DATA + 0x40000, data.subarray(0x40000));
      const r = t.request(VIRTIO_BLK_T_OUT, 10, [
        { addr: DATA, len: 0x40000 },
        { addr: DATA + 0x40000, len: data.length - 0x40000 },
      ]);
      expect(r.result.status).toBe(VIRTIO_BLK_S_OK);
      expect(r.used.len).toBe(1);
      expect(t.request(VIRTIO_BLK_T_FLUSH, 0, []).status).toBe(VIRTIO_BLK_S_OK);
      const file = readFileSync(t.path);
      expect(file.subarray(10 * 512, 10 * 512 + data.length).equals(data)).toBe(true);
      expect(file.subarray(0, 10 * 512).equals(t.initial.subarray(0, 10 * 512))).toBe(true);
      expect(file.subarray(10 * 512 + data.length).equals(t.initial.subarray(10 * 512 + data.length))).toBe(true);
    } finally {
      t.close();
    }
  });

  it('refuses writes to a read-only drive and leaves the file alone; reads still work', () => {
    const t = setup({ readOnly: true });
    try {
      writeBytes(t.memory, DATA, new Uint8Array(512).fill(0x55));
      const w = t.request(VIRTIO_BLK_T_OUT, 0, [{ addr: DATA, len: 512 }]);
      expect(w.status).toBe(VIRTIO_BLK_S_IOERR);
      expect(w.result.problem).toMatch(/read-only/);
      expect(readFileSync(t.path).equals(t.initial)).toBe(true);
      expect(t.request(VIRTIO_BLK_T_IN, 0, [{ addr: DATA, len: 512, writable: true }]).status).toBe(VIRTIO_BLK_S_OK);
      expect(t.request(VIRTIO_BLK_T_FLUSH, 0, []).status).toBe(VIRTIO_BLK_S_OK);
    } finally {
      t.close();
    }
  });

  it('answers IOERR for ranges past the end, partial sectors, huge sectors, and short headers', () => {
    const t = setup();
    try {
      const past = t.request(VIRTIO_BLK_T_IN, SECTORS, [{ addr: DATA, len: 512, writable: true }]);
      expect(past.status).toBe(VIRTIO_BLK_S_IOERR);
      expect(past.used.len).toBe(1);
      expect(past.result.problem).toMatch(/beyond the end of the disk \(64 sectors\)/);
      expect(t.request(VIRTIO_BLK_T_IN, SECTORS - 1, [{ addr: DATA, len: 1024, writable: true }]).status).toBe(VIRTIO_BLK_S_IOERR);
      expect(t.request(VIRTIO_BLK_T_OUT, SECTORS - 1, [{ addr: DATA, len: 1024 }]).status).toBe(VIRTIO_BLK_S_IOERR);
      expect(t.request(VIRTIO_BLK_T_IN, 0, [{ addr: DATA, len: 100, writable: true }]).result.problem).toMatch(/not a multiple of 512/);
      expect(t.request(VIRTIO_BLK_T_IN, 2 ** 52, [{ addr: DATA, len: 512, writable: true }]).status).toBe(VIRTIO_BLK_S_IOERR);
      expect(t.request(VIRTIO_BLK_T_IN, 0, [{ addr: DATA, len: 512, writable: true }], { header: [0, 0, 0, 0, 0, 0, 0, 0] }).result.problem).toMatch(/header is 8 bytes/);
      expect(readFileSync(t.path).equals(t.initial)).toBe(true);
    } finally {
      t.close();
    }
  });

  it('answers UNSUPP for unknown types and returns chains with no status byte or bad descriptors with length 0', () => {
    const t = setup();
    try {
      expect(t.request(99, 0, []).status).toBe(VIRTIO_BLK_S_UNSUPP);
      const noStatus = t.request(VIRTIO_BLK_T_IN, 0, [], { status: false });
      expect(noStatus.result.written).toBe(0);
      expect(noStatus.used.len).toBe(0);
      const outside = t.request(VIRTIO_BLK_T_IN, 0, [{ addr: 0x7fff_0000, len: 512, writable: true }]);
      expect(outside.result.written).toBe(0);
      expect(outside.result.problem).toMatch(/malformed chain: .*unmapped guest memory/);
    } finally {
      t.close();
    }
  });

  it('GET_ID: the serial zero-padded to 20 bytes, cut to the buffer the driver gave', () => {
    const t = setup({ serial: 'SERIAL-123' });
    try {
      writeBytes(t.memory, DATA, new Uint8Array(32).fill(0xaa));
      const r = t.request(VIRTIO_BLK_T_GET_ID, 0, [{ addr: DATA, len: 32, writable: true }]);
      expect(r.status).toBe(VIRTIO_BLK_S_OK);
      expect(r.used.len).toBe(21);
      const id = readBytes(t.memory, DATA, 32);
      expect(Buffer.from(id.subarray(0, 10)).toString('latin1')).toBe('SERIAL-123');
      expect([...id.subarray(10, 20)]).toEqual(new Array(10).fill(0));
      expect(id[20]).toBe(0xaa);
      const short = t.request(VIRTIO_BLK_T_GET_ID, 0, [{ addr: DATA + 0x100, len: 4, writable: true }]);
      expect(short.used.len).toBe(5);
      expect(Buffer.from(readBytes(t.memory, DATA + 0x100, 4)).toString('latin1')).toBe('SERI');
    } finally {
      t.close();
    }
  });

  it('O_DIRECT: unaligned single-sector writes keep the rest of their block, reads cross blocks', () => {
    // 64 KiB + 512: the tail is beyond the last whole block and never read or written.
    const t = setup({ direct: true, size: 64 * 1024 + 512 });
    try {
      const data = Buffer.alloc(1024, 0x77);
      writeBytes(t.memory, DATA, data);
      expect(t.request(VIRTIO_BLK_T_OUT, 7, [{ addr: DATA, len: 1024 }]).status).toBe(VIRTIO_BLK_S_OK);
      const file = readFileSync(t.path);
      expect(file.length).toBe(64 * 1024 + 512);
      expect(file.subarray(7 * 512, 9 * 512).equals(data)).toBe(true);
      expect(file.subarray(0, 7 * 512).equals(t.initial.subarray(0, 7 * 512))).toBe(true);
      expect(file.subarray(9 * 512).equals(t.initial.subarray(9 * 512))).toBe(true);
      const r = t.request(VIRTIO_BLK_T_IN, 5, [{ addr: DATA + 0x8000, len: 3 * 4096, writable: true }]);
      expect(r.status).toBe(VIRTIO_BLK_S_OK);
      expect(Buffer.from(readBytes(t.memory, DATA + 0x8000, 3 * 4096)).equals(file.subarray(5 * 512, 5 * 512 + 3 * 4096))).toBe(true);
      // Sector 128 starts at 64 KiB: outside the direct disk even though the file holds it.
      expect(t.request(VIRTIO_BLK_T_IN, 128, [{ addr: DATA, len: 512, writable: true }]).status).toBe(VIRTIO_BLK_S_IOERR);
    } finally {
      t.close();
    }
  });
});

describe('iops token bucket', () => {
  it('lets the burst through, then makes each request wait 1/rate; N requests take at least (N - burst) / rate', () => {
    let now = 0;
    const bucket = new TokenBucket(20, () => now);
    expect(bucket.burst).toBe(1);
    let waited = 0;
    for (let i = 0; i < 50; i++) {
      for (let wait = bucket.take(); wait > 0; wait = bucket.take()) {
        now += wait;
        waited += wait;
      }
    }
    expect(waited).toBeGreaterThanOrEqual(((50 - 1) / 20) * 1000 - 1e-6);
  });

  it('refills no more than the burst after an idle period, and refuses a non-positive rate', () => {
    let now = 0;
    const bucket = new TokenBucket(1000, () => now);
    expect(bucket.burst).toBe(10);
    now = 60_000;
    let immediate = 0;
    while (bucket.take() === 0) immediate++;
    expect(immediate).toBe(10);
    expect(() => new TokenBucket(0)).toThrow(/rate 0 is not positive/);
  });
});

describe('virtio-blk device', () => {
  it('offers VERSION_1 and FLUSH, and RO only for read-only drives; config space holds the capacity', () => {
    const rw = blockFeatures(false);
    const ro = blockFeatures(true);
    expect(Math.floor(rw / 2 ** 32) & 1).toBe(1);
    expect(Math.floor(rw / 2 ** VIRTIO_BLK_F_FLUSH) & 1).toBe(1);
    expect(Math.floor(rw / 2 ** VIRTIO_BLK_F_RO) & 1).toBe(0);
    expect(Math.floor(ro / 2 ** VIRTIO_BLK_F_RO) & 1).toBe(1);
    const config = new DataView(blockConfigSpace(3 * 2 ** 32 * 512, 256).buffer);
    expect(config.getBigUint64(0, true)).toBe(3n * 2n ** 32n);
    expect(config.getUint32(12, true)).toBe(254);
    expect(config.getUint32(20, true)).toBe(512);
  });
});

describe('etc/vmm/vm-with-disk.json', () => {
  it('is a valid configuration with two drives on one iothread', () => {
    const doc = JSON.parse(readFileSync(new URL('../../etc/vmm/vm-with-disk.json', import.meta.url), 'utf8'));
    const config = finalizeConfig(draftFromJson(doc), { checkFiles: false });
    expect(config.iothreads).toEqual(['io0']);
    expect(config.drives.map((d) => [d.id, d.readOnly, d.direct, d.iops, d.iothread])).toEqual([
      ['rootfs', false, true, 2000, 'io0'],
      ['seed', true, false, 0, 'io0'],
    ]);
  });
});

describe('vio4wd-vmm --help', () => {
  it('lists every command-line option', () => {
    const text = usage();
    for (const option of [...VALUE_OPTIONS, ...FLAG_OPTIONS]) {
      expect(text, `-${option}`).toMatch(new RegExp(`(^|\\s)--?${option}(\\s|$)`, 'm'));
    }
  });
});
