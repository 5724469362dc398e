// virtio-blk requests (virtio 1.2 §5.2.6) against a raw image file, and the iops limit. Runs in an
// iothread; works on any SplitQueue, so tests drive it over in-memory guest memory. Every field of
// a request comes from the guest: a malformed one gets VIRTIO_BLK_S_IOERR (or UNSUPP) and never
// touches the file outside the disk.
import { fsyncSync, readSync, writeSync } from 'node:fs';
import { DescriptorChain, type SplitQueue } from '../virtio/split-queue.js';
import { nativeBuffer } from '../sys/native-buffer.js';

export const SECTOR_SIZE = 512;
export const VIRTIO_BLK_T_IN = 0;
export const VIRTIO_BLK_T_OUT = 1;
export const VIRTIO_BLK_T_FLUSH = 4;
export const VIRTIO_BLK_T_GET_ID = 8;
export const VIRTIO_BLK_S_OK = 0;
export const VIRTIO_BLK_S_IOERR = 1;
export const VIRTIO_BLK_S_UNSUPP = 2;
/** GET_ID answers with this many bytes, zero-padded. */
export const VIRTIO_BLK_ID_BYTES = 20;
const HEADER_BYTES = 16;
/** O_DIRECT wants buffer, offset and length aligned; a page covers every logical block size in use. */
export const DIRECT_ALIGN = 4096;
/** One bounce buffer, reused; larger requests are done in pieces of this size. */
const BOUNCE_BYTES = 256 * 1024;

export interface BlockImage {
  fd: number;
  /** Disk size the guest sees, in bytes (a multiple of the sector, or of DIRECT_ALIGN when direct). */
  capacityBytes: number;
  readOnly: boolean;
  direct: boolean;
  /** GET_ID answer; empty when the drive has no serial. */
  serial: string;
  /** Name used in messages. */
  label: string;
}

/**
 * A token bucket: `rate` requests per second, holding at most `burst` tokens (10 ms worth, at
 * least one), so a request beyond the rate waits for its token instead of being refused.
 */
export class TokenBucket {
  readonly burst: number;
  private tokens: number;
  private last: number;

  constructor(
    readonly rate: number,
    private readonly now: () => number = () => performance.now(),
    burst?: number,
  ) {
    if (!(rate > 0)) throw new RangeError(`token bucket: rate ${rate} is not positive`);
    this.burst = burst ?? Math.max(1, Math.ceil(rate / 100));
    this.tokens = this.burst;
    this.last = this.now();
  }

  /** Takes one token and returns 0, or returns the milliseconds until one is available. */
  take(): number {
    const t = this.now();
    this.tokens = Math.min(this.burst, this.tokens + ((t - this.last) * this.rate) / 1000);
    this.last = t;
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return 0;
    }
    return ((1 - this.tokens) * 1000) / this.rate;
  }
}

export interface RequestResult {
  status: number;
  /** Bytes written into the chain, status byte included (the used length). */
  written: number;
  /** Why the request failed, for the log; null on success. */
  problem: string | null;
}

/** Serves the requests of one drive: file I/O through an aligned bounce buffer. */
export class BlockRequestHandler {
  private readonly header = new Uint8Array(HEADER_BYTES);
  private readonly headerView = new DataView(this.header.buffer);
  private readonly bounce: Uint8Array;
  private readonly statusByte = new Uint8Array(1);
  private readonly id = new Uint8Array(VIRTIO_BLK_ID_BYTES);
  readonly chain = new DescriptorChain();

  constructor(readonly image: BlockImage) {
    this.bounce = nativeBuffer(BOUNCE_BYTES).bytes;
    const serial = new TextEncoder().encode(image.serial);
    this.id.set(serial.subarray(0, VIRTIO_BLK_ID_BYTES));
  }

  /** Pops and serves one chain; returns null when the ring is empty. The caller publishes the used entry. */
  serveNext(queue: SplitQueue): RequestResult | null {
    const chain = this.chain;
    if (!queue.popChain(chain)) return null;
    const result = this.serve(chain);
    queue.pushUsed(chain.head, result.written);
    return result;
  }

  serve(chain: DescriptorChain): RequestResult {
    if (!chain.ok) return { status: VIRTIO_BLK_S_IOERR, written: 0, problem: `malformed chain: ${chain.error}` };
    if (chain.writableLength < 1) return { status: VIRTIO_BLK_S_IOERR, written: 0, problem: 'request has no writable status byte' };
    const statusAt = chain.writableLength - 1;
    const finish = (status: number, dataWritten: number, problem: string | null): RequestResult => {
      this.statusByte[0] = status;
      chain.copyIn(this.statusByte, 0, 1, statusAt);
      return { status, written: dataWritten + 1, problem };
    };
    if (chain.readableLength < HEADER_BYTES || chain.copyOut(0, this.header, 0, HEADER_BYTES) !== HEADER_BYTES) {
      return finish(VIRTIO_BLK_S_IOERR, 0, `request header is ${chain.readableLength} bytes, expected ${HEADER_BYTES}`);
    }
    const type = this.headerView.getUint32(0, true);
    const sector = this.headerView.getUint32(8, true) + this.headerView.getUint32(12, true) * 2 ** 32;
    try {
      switch (type) {
        case VIRTIO_BLK_T_IN: {
          const length = statusAt;
          const problem = this.checkRange(sector, length);
          if (problem) return finish(VIRTIO_BLK_S_IOERR, 0, `read: ${problem}`);
          this.read(chain, sector * SECTOR_SIZE, length);
          return finish(VIRTIO_BLK_S_OK, length, null);
        }
        case VIRTIO_BLK_T_OUT: {
          if (this.image.readOnly) return finish(VIRTIO_BLK_S_IOERR, 0, 'write refused: the drive is read-only');
          const length = chain.readableLength - HEADER_BYTES;
          const problem = this.checkRange(sector, length);
          if (problem) return finish(VIRTIO_BLK_S_IOERR, 0, `write: ${problem}`);
          this.write(chain, sector * SECTOR_SIZE, length);
          return finish(VIRTIO_BLK_S_OK, 0, null);
        }
        case VIRTIO_BLK_T_FLUSH:
          if (!this.image.readOnly) fsyncSync(this.image.fd);
          return finish(VIRTIO_BLK_S_OK, 0, null);
        case VIRTIO_BLK_T_GET_ID: {
          const n = Math.min(VIRTIO_BLK_ID_BYTES, statusAt);
          chain.copyIn(this.id, 0, n, 0);
          return finish(VIRTIO_BLK_S_OK, n, null);
        }
        default:
          return finish(VIRTIO_BLK_S_UNSUPP, 0, `request type ${type} is not supported`);
      }
    } catch (err) {
      return finish(VIRTIO_BLK_S_IOERR, 0, `${this.image.label}: ${(err as Error).message}`);
    }
  }

  private checkRange(sector: number, length: number): string | null {
    if (length % SECTOR_SIZE !== 0) return `data length ${length} is not a multiple of ${SECTOR_SIZE}`;
    const offset = sector * SECTOR_SIZE;
    if (!Number.isSafeInteger(offset) || offset + length > this.image.capacityBytes) {
      return `sectors ${sector}..+${length / SECTOR_SIZE} lie beyond the end of the disk (${this.image.capacityBytes / SECTOR_SIZE} sectors)`;
    }
    return null;
  }

  /** Reads [offset, offset+length) of the image into the chain's writable bytes. */
  private read(chain: DescriptorChain, offset: number, length: number): void {
    let done = 0;
    while (done < length) {
      const at = offset + done;
      // The aligned window around the piece, so O_DIRECT sees aligned offsets and lengths.
      const start = this.image.direct ? Math.floor(at / DIRECT_ALIGN) * DIRECT_ALIGN : at;
      const lead = at - start;
      const n = Math.min(length - done, BOUNCE_BYTES - lead);
      const span = this.image.direct ? Math.ceil((lead + n) / DIRECT_ALIGN) * DIRECT_ALIGN : n;
      this.fill(start, span);
      chain.copyIn(this.bounce, lead, n, done);
      done += n;
    }
  }

  /** Writes the chain's data bytes (after the header) to [offset, offset+length) of the image. */
  private write(chain: DescriptorChain, offset: number, length: number): void {
    let done = 0;
    while (done < length) {
      const at = offset + done;
      if (!this.image.direct) {
        const n = Math.min(length - done, BOUNCE_BYTES);
        chain.copyOut(HEADER_BYTES + done, this.bounce, 0, n);
        this.flush(at, n);
        done += n;
        continue;
      }
      const start = Math.floor(at / DIRECT_ALIGN) * DIRECT_ALIGN;
      const lead = at - start;
      const n = Math.min(length - done, BOUNCE_BYTES - DIRECT_ALIGN);
      const span = Math.ceil((lead + n) / DIRECT_ALIGN) * DIRECT_ALIGN;
      // Sub-block pieces keep the bytes around them: read the blocks first (the capacity of a
      // direct image is a whole number of blocks, so the window never passes the file's end).
      if (lead !== 0 || n % DIRECT_ALIGN !== 0) this.fill(start, span);
      chain.copyOut(HEADER_BYTES + done, this.bounce, lead, n);
      this.flush(start, span);
      done += n;
    }
  }

  private fill(position: number, length: number): void {
    let got = 0;
    while (got < length) {
      const n = readSync(this.image.fd, this.bounce, got, length - got, position + got);
      if (n === 0) {
        // The file shrank under us: what is not there reads as zeros.
        this.bounce.fill(0, got, length);
        return;
      }
      got += n;
    }
  }

  private flush(position: number, length: number): void {
    let put = 0;
    while (put < length) put += writeSync(this.image.fd, this.bounce, put, length - put, position + put);
  }
}
