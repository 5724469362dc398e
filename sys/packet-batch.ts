// A burst of frames for one sendmmsg() on an AF_PACKET socket: each frame is a list of
// (address, length) pieces anywhere in this process (guest memory, for the relay), gathered by
// the kernel as it builds the skb. One system call per burst, no copy in user space.
import { libc, lastErrno } from './libc.js';
import { nativeBuffer, releaseNativeBuffer, type NativeBuffer } from './native-buffer.js';
import { POLLOUT, pollSync } from './poll.js';

const MMSGHDR_SIZE = 64; // struct msghdr (56) + msg_len (4) + padding
const IOVEC_SIZE = 16;
const MSG_DONTWAIT = 0x40;
const EINTR = 4;
const EAGAIN = 11;
const ENOBUFS = 105;
const sendmmsgNative = libc.func('int sendmmsg(int fd, intptr_t msgvec, unsigned int vlen, int flags)');
// The same call with the vector given as the batch's bytes, for a send from its first frame (every
// burst's first call): an address above 2^31 passed as a number is a heap number, allocated per call.
const sendmmsgFromStart = libc.func('int sendmmsg(int fd, void *msgvec, unsigned int vlen, int flags)');

export class PacketBatch {
  readonly maxFrames: number;
  readonly maxPieces: number;
  /** Frames added since the last send(). */
  count = 0;
  /** errno of the last send() that stopped early, or 0. */
  lastErrno = 0;
  /** Bytes of the frames the last send() handed to the kernel. */
  takenBytes = 0;
  private readonly lengths: Float64Array;
  private pieces = 0;
  private frameStart = 0;
  private frameBytes = 0;
  private readonly msgAddress: number;
  private readonly iovAddress: number;
  private readonly msg32: Uint32Array;
  private readonly iov32: Uint32Array;
  private readonly buffer: NativeBuffer;

  constructor(maxFrames = 64, maxPieces = 8 * maxFrames) {
    this.maxFrames = maxFrames;
    this.maxPieces = maxPieces;
    this.lengths = new Float64Array(maxFrames);
    const buffer = nativeBuffer(maxFrames * MMSGHDR_SIZE + maxPieces * IOVEC_SIZE);
    this.buffer = buffer;
    this.msgAddress = buffer.address;
    this.iovAddress = buffer.address + maxFrames * MMSGHDR_SIZE;
    this.msg32 = new Uint32Array(buffer.bytes.buffer, 0, (maxFrames * MMSGHDR_SIZE) / 4);
    this.iov32 = new Uint32Array(buffer.bytes.buffer, maxFrames * MMSGHDR_SIZE, (maxPieces * IOVEC_SIZE) / 4);
  }

  /** Gives the batch's native memory back for reuse: the batch is not used again. */
  release(): void {
    releaseNativeBuffer(this.buffer);
  }

  /** Room for one more frame of up to `pieces` pieces. */
  hasRoom(pieces: number): boolean {
    return this.count < this.maxFrames && this.pieces + pieces <= this.maxPieces;
  }

  /** Adds a piece to the frame being built (call hasRoom first). */
  addPiece(address: number, length: number): void {
    this.addPieceWords(address % 0x1_0000_0000 | 0, Math.floor(address / 0x1_0000_0000), length);
  }

  /**
   * addPiece with the address as its two 32-bit words, the low one signed (`| 0`): what the relay
   * calls per frame. An address above 2^31 passed as one number to a function V8 does not inline
   * is a heap number, allocated per call.
   */
  addPieceWords(addressLo: number, addressHi: number, length: number): void {
    const w = this.pieces * 4;
    const iov = this.iov32;
    iov[w] = addressLo;
    iov[w + 1] = addressHi;
    iov[w + 2] = length;
    iov[w + 3] = 0;
    this.pieces++;
    this.frameBytes += length;
  }

  /** Closes the frame built from the pieces added since the previous endFrame(); returns its length. */
  endFrame(): number {
    const m = this.count * (MMSGHDR_SIZE / 4);
    const msg = this.msg32;
    const iov = this.iovAddress + this.frameStart * IOVEC_SIZE;
    // msg_name, msg_namelen: none (the socket is bound to its interface)
    msg[m] = 0;
    msg[m + 1] = 0;
    msg[m + 2] = 0;
    msg[m + 3] = 0;
    // msg_iov @16, msg_iovlen @24
    msg[m + 4] = iov % 0x1_0000_0000;
    msg[m + 5] = Math.floor(iov / 0x1_0000_0000);
    msg[m + 6] = this.pieces - this.frameStart;
    msg[m + 7] = 0;
    // msg_control, msg_controllen, msg_flags, msg_len
    for (let k = 8; k < 16; k++) msg[m + k] = 0;
    const length = this.frameBytes;
    this.lengths[this.count] = length;
    this.count++;
    this.frameStart = this.pieces;
    this.frameBytes = 0;
    return length;
  }

  /** Forgets the frame being built (its pieces) without sending it. */
  dropFrame(): void {
    this.pieces = this.frameStart;
    this.frameBytes = 0;
  }

  /**
   * Sends every frame with one sendmmsg (retrying the rest after a partial send, which the kernel
   * does when a socket buffer fills or one frame fails). Returns how many frames the kernel took;
   * the rest are dropped and `lastErrno` says why. Empties the batch.
   */
  send(fd: number): number {
    const total = this.count;
    let next = 0;
    let taken = 0;
    let busy = 0;
    let bytes = 0;
    this.lastErrno = 0;
    while (next < total) {
      const r = (next === 0 ? sendmmsgFromStart(fd, this.buffer.bytes, total, MSG_DONTWAIT) : sendmmsgNative(fd, this.msgAddress + next * MMSGHDR_SIZE, total - next, MSG_DONTWAIT)) as number;
      if (r > 0) {
        for (let k = next; k < next + r; k++) bytes += this.lengths[k];
        next += r;
        taken += r;
        busy = 0;
        continue;
      }
      const errno = lastErrno();
      if (errno === EINTR) continue;
      this.lastErrno = errno;
      if (errno === EAGAIN || errno === ENOBUFS) {
        // Either the socket buffer is full, or this one frame cannot be built (with
        // PACKET_VNET_HDR a guest's header can ask for a packet the kernel refuses with ENOBUFS).
        // A writable socket tells them apart: then only this frame is skipped.
        if (this.writable(fd)) {
          next++;
          continue;
        }
        // Full: a few immediate retries, then the rest of the burst is dropped.
        if (++busy >= 4) break;
        continue;
      }
      // The frame at `next` was refused (too long for the link, link down): skip it alone.
      next++;
    }
    this.count = 0;
    this.pieces = 0;
    this.frameStart = 0;
    this.frameBytes = 0;
    this.takenBytes = bytes;
    return taken;
  }

  /** Whether `fd` has room for more now (poll with no wait). */
  private writable(fd: number): boolean {
    return (pollSync([{ fd, events: POLLOUT }], 0)[0]! & POLLOUT) !== 0;
  }
}
