// The VF data path: AF_PACKET with mmapped rings. A TPACKET_V3 RX ring (blocks of variable-size
// frames, handed over a block at a time) and a socket without a ring for sendmmsg from guest
// memory. On request (`txRing`, for the ring benchmark) also a TPACKET_V2 TX ring (fixed slots,
// flushed with one sendto per burst, bypassing the qdisc) on a socket of its own, because a socket
// has one PACKET_VERSION; it is bound with protocol 0, so the kernel never queues received frames
// to it. The relay sends with sendmmsg only and opens no TX ring.
//
// openPacketRing() runs once on the main thread and returns a plain, postMessage-able handle;
// PacketRing.attach() rebuilds views of the same mappings in the thread that polls the rings.
import { libc, lastErrno, SysError } from './libc.js';
import { close as closeFd } from './fd.js';
import { mmap, munmap, viewAt, MAP_SHARED, MAP_POPULATE, PROT_READ, PROT_WRITE } from './memory.js';
import { ifNameToIndex, linkMtu } from './netdev.js';
import {
  ETH_P_ALL, SOL_PACKET, PACKET_RX_RING, PACKET_TX_RING, PACKET_VERSION, PACKET_LOSS, PACKET_QDISC_BYPASS, PACKET_VNET_HDR,
  PACKET_IGNORE_OUTGOING, TPACKET_V2, TPACKET_V3, TP_STATUS_USER, TP_STATUS_KERNEL, TP_STATUS_AVAILABLE,
  TP_STATUS_SEND_REQUEST, TP_STATUS_WRONG_FORMAT, TP_STATUS_VLAN_VALID, TP_STATUS_VLAN_TPID_VALID,
  packetSocket, setIntOption, setBytesOption, bindPacketSocket, addPromiscuousMembership, growSendBuffer,
  tryIntOption, readPacketStatistics,
} from './packet-socket.js';

export { TP_STATUS_CSUMNOTREADY, TP_STATUS_CSUM_VALID, TP_STATUS_VLAN_VALID } from './packet-socket.js';

export interface PacketRingOptions {
  /** Bytes per RX block, a power of two ≥ 4096 (default 128 KiB). */
  blockSize?: number;
  /** RX blocks (default 16). */
  blockCount?: number;
  /** Nominal RX frame size; V3 packs frames tighter, this only sizes the kernel's bookkeeping (default 2048). */
  frameSize?: number;
  /** A partly filled RX block is handed over after this many ms: the RX latency at low rates (default 1). */
  retireTimeoutMs?: number;
  /** TX slot size, a power of two in [128, 65536] (default 2048: frames up to 2016 bytes). */
  txFrameSize?: number;
  /** TX slots, a multiple of the slots per TX block (default 512). */
  txFrameCount?: number;
  /** Also open the TPACKET_V2 TX ring (txSlot/txCommit/txFlush; default true). The relay does not. */
  txRing?: boolean;
  /** Receive frames for every MAC address (default true). */
  promiscuous?: boolean;
  /** Hand TX frames straight to the driver (default true). */
  qdiscBypass?: boolean;
  /** Socket send buffer for the TX socket in bytes (default 4 MiB). */
  sendBufferBytes?: number;
  /**
   * Every frame given to the sendmmsg socket starts with a 10-byte virtio_net_hdr (PACKET_VNET_HDR),
   * so a guest's checksum and segmentation offload requests reach the kernel (default false).
   */
  sendVnetHeader?: boolean;
  /**
   * The kernel writes a 10-byte virtio_net_hdr before each received frame (PACKET_VNET_HDR on the
   * RX socket): whether the frame is a GSO super-frame (GRO on the VF, or a veth peer's TSO) with
   * its segment size, and whether its checksum is left to complete or already verified. Frames
   * whose offload the header cannot describe (UDP GSO) are then dropped by the kernel and counted
   * with its ring drops (default false).
   */
  receiveVnetHeader?: boolean;
}

export interface RingMapping {
  address: number;
  length: number;
}

/** Everything a thread needs to poll the rings; plain data, safe to post to a worker. */
export interface PacketRingHandle {
  ifname: string;
  ifindex: number;
  rxFd: number;
  /** The TX ring's socket, or -1 when the handle has no TX ring (`txRing: false`). */
  txFd: number;
  /**
   * A third socket without a ring, bound to the interface, for sendmmsg(): frames are sent
   * straight from wherever they are (guest memory) without a copy into the TX ring, and the kernel
   * builds linear skbs instead of ring-page fragments it must copy again when they cross a veth.
   */
  sendFd: number;
  /** Frames on sendFd start with a virtio_net_hdr (PacketRingOptions.sendVnetHeader). */
  sendVnetHeader: boolean;
  /** Received frames are preceded by a virtio_net_hdr (PacketRingOptions.receiveVnetHeader). */
  rxVnetHeader: boolean;
  rx: RingMapping & { blockSize: number; blockCount: number; frameSize: number };
  tx: RingMapping & { frameSize: number; frameCount: number };
  /** Byte offset of frame data inside a TX slot. */
  txDataOffset: number;
  /** Largest untagged frame the interface accepts (MTU + Ethernet header); tagged frames get 4 more. */
  maxFrameLength: number;
  /** False on kernels before 4.20, where the RX ring also sees frames sent by other local sockets. */
  ignoresOutgoing: boolean;
  /** A shared page holding where RX and TX stand and the counters (see PacketRing). */
  position: RingMapping;
}

/**
 * Whether the kernel would send the frame at bytes[at..]: a whole Ethernet header, no longer than
 * the slot (`capacity`) nor than the link's untagged maximum, 4 bytes more for a VLAN-tagged frame.
 */
export function frameLengthAcceptable(bytes: Uint8Array, at: number, length: number, capacity: number, maxFrameLength: number): boolean {
  if (!Number.isInteger(length) || length < ETH_HEADER || length > capacity) return false;
  if (length <= maxFrameLength) return true;
  if (length > maxFrameLength + VLAN_TAG) return false;
  const ethertype = (bytes[at + 12] << 8) | bytes[at + 13];
  return ethertype === ETH_P_8021Q || ethertype === ETH_P_8021AD;
}

const TPACKET2_HDR_SIZE = 32;
const TX_DATA_OFFSET = TPACKET2_HDR_SIZE; // tp_hdrlen - sizeof(sockaddr_ll) without PACKET_TX_HAS_OFF
const TPACKET3_HDR_SIZE = 48;
const SOCKADDR_LL_SIZE = 20;
const RX_HEADROOM_START = TPACKET3_HDR_SIZE + SOCKADDR_LL_SIZE;
const ETH_HEADER = 14;
const VLAN_TAG = 4;
/** struct virtio_net_hdr as PACKET_VNET_HDR reads and writes it (no num_buffers), both ways. */
export const VNET_HDR_LEN = 10;
const ETH_P_8021Q = 0x8100;
const ETH_P_8021AD = 0x88a8;

/**
 * The kernel counts a header's offsets from the frame as it was without its VLAN tag: once the
 * tag is back in the frame, csum_start (when NEEDS_CSUM) and hdr_len (little-endian) move by it.
 */
function shiftVnetHeader(header: Uint8Array, by: number): void {
  if ((header[0] & 1) !== 0) {
    const start = (header[6] | (header[7] << 8)) + by;
    header[6] = start & 0xff;
    header[7] = start >> 8;
  }
  const hdrLen = header[2] | (header[3] << 8);
  if (hdrLen !== 0) {
    header[2] = (hdrLen + by) & 0xff;
    header[3] = (hdrLen + by) >> 8;
  }
}

function mapRing(fd: number, length: number, what: string): RingMapping {
  try {
    return mmap({ length, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED | MAP_POPULATE, fd });
  } catch (err) {
    if (err instanceof SysError) throw new SysError('mmap', err.errno, what);
    throw err;
  }
}

const isPowerOfTwo = (n: number) => Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;

function geometry(ifname: string, opts: PacketRingOptions) {
  const blockSize = opts.blockSize ?? 128 * 1024;
  const blockCount = opts.blockCount ?? 16;
  const frameSize = opts.frameSize ?? 2048;
  const retireTimeoutMs = opts.retireTimeoutMs ?? 1;
  const txFrameSize = opts.txFrameSize ?? 2048;
  const txFrameCount = opts.txFrameCount ?? 512;
  const bad = (what: string) => new RangeError(`packet ring on ${ifname}: ${what}`);
  if (!isPowerOfTwo(blockSize) || blockSize < 4096) throw bad(`block size ${blockSize} is not a power of two ≥ 4096`);
  if (!Number.isInteger(blockCount) || blockCount < 1 || blockCount > 65536) throw bad(`block count ${blockCount} is out of range`);
  if (!isPowerOfTwo(frameSize) || frameSize < 128 || frameSize > blockSize) throw bad(`frame size ${frameSize} is not a power of two in [128, block size]`);
  if (!Number.isInteger(retireTimeoutMs) || retireTimeoutMs < 1 || retireTimeoutMs > 1000) throw bad(`retire timeout ${retireTimeoutMs} ms is out of range`);
  if (!isPowerOfTwo(txFrameSize) || txFrameSize < 128 || txFrameSize > 65536) throw bad(`TX frame size ${txFrameSize} is not a power of two in [128, 65536]`);
  const txBlockSize = Math.max(4096, txFrameSize);
  const txFramesPerBlock = txBlockSize / txFrameSize;
  if (!Number.isInteger(txFrameCount) || txFrameCount < txFramesPerBlock || txFrameCount % txFramesPerBlock !== 0) {
    throw bad(`TX frame count ${txFrameCount} is not a positive multiple of ${txFramesPerBlock} (slots per ${txBlockSize}-byte block)`);
  }
  return { blockSize, blockCount, frameSize, retireTimeoutMs, txFrameSize, txFrameCount, txBlockSize };
}

/** Opens the RX and TX rings of `ifname` (needs CAP_NET_RAW; promiscuous mode needs CAP_NET_ADMIN). */
export function openPacketRing(ifname: string, opts: PacketRingOptions = {}): PacketRingHandle {
  const g = geometry(ifname, opts);
  const ifindex = ifNameToIndex(ifname);
  const mtu = linkMtu(ifname);
  const opened: number[] = [];
  const mapped: RingMapping[] = [];
  try {
    const position = mmap({ length: 4096, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED });
    mapped.push(position);
    // RX: V3 ring, then bind, so no frame is queued before the ring exists.
    const rxFd = packetSocket(ifname);
    opened.push(rxFd);
    setIntOption(rxFd, SOL_PACKET, PACKET_VERSION, TPACKET_V3, `PACKET_VERSION V3 on ${ifname}`);
    // Before the ring: the kernel refuses it on a socket that has one.
    if (opts.receiveVnetHeader) setIntOption(rxFd, SOL_PACKET, PACKET_VNET_HDR, 1, `PACKET_VNET_HDR on the RX socket of ${ifname}`);
    const req3 = new Uint32Array([g.blockSize, g.blockCount, g.frameSize, (g.blockSize / g.frameSize) * g.blockCount, g.retireTimeoutMs, 0, 0]);
    setBytesOption(rxFd, SOL_PACKET, PACKET_RX_RING, req3, `PACKET_RX_RING ${g.blockCount}×${g.blockSize} on ${ifname}`);
    const rxLength = g.blockSize * g.blockCount;
    const rxMap = mapRing(rxFd, rxLength, `RX ring of ${ifname}, ${rxLength} bytes`);
    mapped.push(rxMap);
    const ignoresOutgoing = tryIntOption(rxFd, SOL_PACKET, PACKET_IGNORE_OUTGOING, 1, `PACKET_IGNORE_OUTGOING on ${ifname}`);
    bindPacketSocket(rxFd, ifindex, ETH_P_ALL, ifname);
    if (opts.promiscuous ?? true) addPromiscuousMembership(rxFd, ifindex, ifname);

    // TX: V2 ring. PACKET_LOSS makes the kernel skip a malformed slot instead of stopping the ring
    // at it forever; txCommit rejects what the kernel would refuse, so that is only a safety net.
    let txFd = -1;
    let txMap: RingMapping = { address: 0, length: 0 };
    if (opts.txRing ?? true) {
      txFd = packetSocket(ifname);
      opened.push(txFd);
      setIntOption(txFd, SOL_PACKET, PACKET_VERSION, TPACKET_V2, `PACKET_VERSION V2 on ${ifname}`);
      setIntOption(txFd, SOL_PACKET, PACKET_LOSS, 1, `PACKET_LOSS on ${ifname}`);
      if (opts.qdiscBypass ?? true) setIntOption(txFd, SOL_PACKET, PACKET_QDISC_BYPASS, 1, `PACKET_QDISC_BYPASS on ${ifname}`);
      const txBlocks = (g.txFrameCount * g.txFrameSize) / g.txBlockSize;
      const req = new Uint32Array([g.txBlockSize, txBlocks, g.txFrameSize, g.txFrameCount]);
      setBytesOption(txFd, SOL_PACKET, PACKET_TX_RING, req, `PACKET_TX_RING ${g.txFrameCount}×${g.txFrameSize} on ${ifname}`);
      const txLength = g.txFrameCount * g.txFrameSize;
      txMap = mapRing(txFd, txLength, `TX ring of ${ifname}, ${txLength} bytes`);
      mapped.push(txMap);
      growSendBuffer(txFd, opts.sendBufferBytes ?? 4 * 1024 * 1024);
      bindPacketSocket(txFd, ifindex, 0, ifname);
    }

    const sendFd = packetSocket(ifname);
    opened.push(sendFd);
    if (opts.qdiscBypass ?? true) setIntOption(sendFd, SOL_PACKET, PACKET_QDISC_BYPASS, 1, `PACKET_QDISC_BYPASS on ${ifname}`);
    growSendBuffer(sendFd, opts.sendBufferBytes ?? 4 * 1024 * 1024);
    if (opts.sendVnetHeader) setIntOption(sendFd, SOL_PACKET, PACKET_VNET_HDR, 1, `PACKET_VNET_HDR on ${ifname}`);
    bindPacketSocket(sendFd, ifindex, 0, ifname);

    return {
      ifname,
      ifindex,
      rxFd,
      txFd,
      sendFd,
      sendVnetHeader: opts.sendVnetHeader ?? false,
      rxVnetHeader: opts.receiveVnetHeader ?? false,
      rx: { address: rxMap.address, length: rxLength, blockSize: g.blockSize, blockCount: g.blockCount, frameSize: g.frameSize },
      tx: txMap.length > 0 ? { address: txMap.address, length: txMap.length, frameSize: g.txFrameSize, frameCount: g.txFrameCount } : { address: 0, length: 0, frameSize: 0, frameCount: 0 },
      txDataOffset: TX_DATA_OFFSET,
      maxFrameLength: mtu + ETH_HEADER,
      ignoresOutgoing,
      position: { address: position.address, length: position.length },
    };
  } catch (err) {
    for (const m of mapped) munmap(m);
    for (const fd of opened) closeFd(fd);
    if (err instanceof SysError || err instanceof RangeError) throw err;
    throw new Error(`packet ring on ${ifname}: ${(err as Error).message}`);
  }
}

/** Unmaps the rings and closes the sockets; every PacketRing attached to the handle must be gone. */
export function closePacketRing(handle: PacketRingHandle): void {
  munmap(handle.rx);
  if (handle.tx.length > 0) munmap(handle.tx);
  munmap(handle.position);
  closeFd(handle.rxFd);
  if (handle.txFd >= 0) closeFd(handle.txFd);
  closeFd(handle.sendFd);
}
export { closePacketRing as close };

/**
 * Called per received frame: `bytes` is the whole RX mapping, the frame is [offset, offset + length).
 * Returning false ends the receive after this frame (the handler has nowhere to put more).
 */
export type FrameHandler = (bytes: Uint8Array, offset: number, length: number, status: number) => boolean | void;

/**
 * Asked before a frame is taken, with its length and (with PACKET_VNET_HDR) its virtio_net_hdr
 * in `rxHeader`: false leaves it, untouched, as the next frame of the ring, and ends the receive.
 */
export type FrameAdmission = (length: number) => boolean;

/** A free TX slot; the same object is returned by every txSlot() call of a ring. */
export interface TxSlot {
  /** The whole TX mapping. */
  bytes: Uint8Array;
  /** Where the frame's first byte goes. */
  offset: number;
  /** Largest frame the slot holds. */
  capacity: number;
}

export interface PacketRingCounters {
  /** Frames handed to onFrame. */
  rxFrames: number;
  /** Frames longer than the space the kernel had for them (tp_len > tp_snaplen), skipped. */
  rxTruncated: number;
  /** Blocks returned to the kernel. */
  rxBlocks: number;
  /** Frames committed to the TX ring. */
  txFrames: number;
  /** Frames txCommit refused (shorter than an Ethernet header, longer than the slot or the MTU). */
  txRejected: number;
  /** Slots found in TP_STATUS_WRONG_FORMAT and reclaimed. */
  txWrongFormat: number;
  /** Flushes that found the socket buffer full (EAGAIN/ENOBUFS); the frames stay queued. */
  txFlushBusy: number;
  /** Flushes that failed otherwise (ENETDOWN, ENXIO...). */
  txFlushErrors: number;
  /** errno of the last failed flush. */
  txLastErrno: number;
  /** Kernel PACKET_STATISTICS, accumulated: frames seen by the RX socket and frames dropped for lack of room. */
  kernelPackets: number;
  kernelDrops: number;
  kernelFreezes: number;
}

const EAGAIN = 11;
const ENOBUFS = 105;
const EINTR = 4;
const MSG_DONTWAIT = 0x40;
const sendtoNative = libc.func('intptr_t sendto(int fd, intptr_t buf, size_t len, int flags, intptr_t addr, uint32_t addrlen)');

// The position page shared by every PacketRing attached to a handle (any thread): where RX and
// TX stand and the counters. The RX fields are written only by the RX poller and the TX fields
// only by the TX poller, so one thread may receive while another sends, and a new owner resumes
// exactly where the previous one stopped (handover at a burst boundary loses and repeats nothing).
const POSITION_PAGE = 4096;
const P_RX_BLOCK = 0;
const P_RX_FRAMES_LEFT = 1;
const P_RX_FRAME_OFFSET = 2;
const P_TX_HEAD = 8;
const P_TX_UNFLUSHED = 9;
const COUNTERS_AT = 64;
const COUNTER_NAMES = [
  'rxFrames', 'rxTruncated', 'rxBlocks', 'kernelPackets', 'kernelDrops', 'kernelFreezes',
  'txFrames', 'txRejected', 'txWrongFormat', 'txFlushBusy', 'txFlushErrors', 'txLastErrno',
] as const satisfies readonly (keyof PacketRingCounters)[];
const C_RX_FRAMES = 0;
const C_RX_TRUNCATED = 1;
const C_RX_BLOCKS = 2;
const C_KERNEL_PACKETS = 3;
const C_KERNEL_DROPS = 4;
const C_KERNEL_FREEZES = 5;
const C_TX_FRAMES = 6;
const C_TX_REJECTED = 7;
const C_TX_WRONG_FORMAT = 8;
const C_TX_FLUSH_BUSY = 9;
const C_TX_FLUSH_ERRORS = 10;
const C_TX_LAST_ERRNO = 11;

/** Where the rings stand (for logs and tests); the live copy is shared through the handle. */
export interface PacketRingPosition {
  block: number;
  framesLeftInBlock: number;
  frameOffset: number;
  txHead: number;
  txUnflushed: boolean;
}

/** The poller side: walks the RX blocks and fills the TX slots of one interface without system calls. */
export class PacketRing {
  readonly handle: PacketRingHandle;
  readonly rxFd: number;

  private readonly position: Int32Array;
  private readonly count: Float64Array;

  private readonly rxBytes: Uint8Array;
  private readonly rxWords: Int32Array;
  private readonly rxHalves: Uint16Array;
  private readonly blockSize: number;
  private readonly blockCount: number;
  private block: number;
  private framesLeftInBlock: number;
  private frameOffset: number;

  private readonly txBytes: Uint8Array;
  private readonly txWords: Int32Array;
  private readonly txFrameSize: number;
  private readonly txFrameCount: number;
  private readonly txCapacity: number;
  private readonly maxFrameLength: number;
  private txHead: number;
  private txUnflushed: boolean;
  private readonly slot: TxSlot;

  /**
   * With PACKET_VNET_HDR on the RX socket: the virtio_net_hdr of the frame being delivered, copied
   * out before anything can overwrite it (putting a VLAN tag back moves the frame over it).
   */
  readonly rxHeader: Uint8Array | null;

  private readonly statsOut = new Uint32Array(3);
  private readonly statsLength = new Uint32Array(1);

  private constructor(handle: PacketRingHandle) {
    this.handle = handle;
    this.rxFd = handle.rxFd;
    const page = viewAt(handle.position.address, POSITION_PAGE);
    this.position = new Int32Array(page, 0, COUNTERS_AT / 4);
    this.count = new Float64Array(page, COUNTERS_AT, COUNTER_NAMES.length);

    const rx = viewAt(handle.rx.address, handle.rx.length);
    this.rxBytes = new Uint8Array(rx);
    this.rxWords = new Int32Array(rx);
    this.rxHalves = new Uint16Array(rx);
    this.blockSize = handle.rx.blockSize;
    this.blockCount = handle.rx.blockCount;
    this.block = Atomics.load(this.position, P_RX_BLOCK);
    this.framesLeftInBlock = Atomics.load(this.position, P_RX_FRAMES_LEFT);
    this.frameOffset = Atomics.load(this.position, P_RX_FRAME_OFFSET);
    this.rxHeader = handle.rxVnetHeader ? new Uint8Array(VNET_HDR_LEN) : null;

    // No TX ring (the relay's case): empty views, and txSlot() never finds a free slot.
    const tx = handle.tx.length > 0 ? viewAt(handle.tx.address, handle.tx.length) : new ArrayBuffer(0);
    this.txBytes = new Uint8Array(tx);
    this.txWords = new Int32Array(tx);
    this.txFrameSize = handle.tx.frameSize;
    this.txFrameCount = handle.tx.frameCount;
    this.txCapacity = handle.tx.frameSize - handle.txDataOffset;
    this.maxFrameLength = handle.maxFrameLength;
    this.txHead = Atomics.load(this.position, P_TX_HEAD);
    this.txUnflushed = Atomics.load(this.position, P_TX_UNFLUSHED) !== 0;
    this.slot = { bytes: this.txBytes, offset: 0, capacity: this.txCapacity };
  }

  /**
   * Views of the handle's rings for this thread, resuming where the previous PacketRing of the
   * same handle stopped. At most one thread receives and one sends through a handle at a time.
   */
  static attach(handle: PacketRingHandle): PacketRing {
    return new PacketRing(handle);
  }

  /** Frames skipped because the kernel had less room for them than their length (no allocation). */
  get rxTruncated(): number {
    return this.count[C_RX_TRUNCATED];
  }

  /** Counters of the handle (shared by every PacketRing attached to it), as a fresh object. */
  get counters(): PacketRingCounters {
    const out = {} as PacketRingCounters;
    COUNTER_NAMES.forEach((name, i) => (out[name] = this.count[i]));
    return out;
  }

  get currentPosition(): PacketRingPosition {
    return {
      block: this.block,
      framesLeftInBlock: this.framesLeftInBlock,
      frameOffset: this.frameOffset,
      txHead: this.txHead,
      txUnflushed: this.txUnflushed,
    };
  }

  /**
   * Delivers up to `budget` received frames to `onFrame` and returns how many it delivered.
   * With a virtio_net_hdr on received frames, `rxHeader` holds the delivered frame's during onFrame.
   * A block goes back to the kernel once every frame in it was delivered, so `onFrame` must copy
   * what it keeps before returning. A VLAN tag the kernel took out of the frame is put back.
   */
  receive(onFrame: FrameHandler, budget: number, admit?: FrameAdmission): number {
    const words = this.rxWords;
    const halves = this.rxHalves;
    const bytes = this.rxBytes;
    let delivered = 0;
    let seen = 0;
    // A block whose last frame is being delivered; it goes back to the kernel after onFrame
    // returns, or in the finally if onFrame throws, so a failing handler never re-reads a block.
    let releaseAfterFrame = -1;
    try {
      while (seen < budget) {
        const blockStart = this.block * this.blockSize;
        if (this.framesLeftInBlock === 0) {
          // block_status at byte 8 of tpacket_block_desc; num_pkts at 12; offset_to_first_pkt at 16
          if ((Atomics.load(words, (blockStart + 8) >> 2) & TP_STATUS_USER) === 0) break;
          this.framesLeftInBlock = words[(blockStart + 12) >> 2];
          this.frameOffset = blockStart + words[(blockStart + 16) >> 2];
          if (this.framesLeftInBlock === 0) {
            this.releaseBlock(blockStart);
            continue;
          }
        }
        const at = this.frameOffset;
        // tpacket3_hdr: tp_next_offset 0, tp_snaplen 12, tp_len 16, tp_status 20, tp_mac 24 (u16),
        // hv1.tp_vlan_tci 32, hv1.tp_vlan_tpid 36 (u16)
        const snaplen = words[(at + 12) >> 2];
        const wireLength = words[(at + 16) >> 2];
        const status = words[(at + 20) >> 2];
        let mac = at + halves[(at + 24) >> 1];
        let length = snaplen;
        const whole = wireLength === snaplen;
        const header = this.rxHeader;
        if (whole && header !== null) for (let i = 0, h = mac - VNET_HDR_LEN; i < VNET_HDR_LEN; i++) header[i] = bytes[h + i];
        // Nothing is changed before admission (putting a VLAN tag back moves the frame), so a
        // frame left here is read again, the same, by the next receive.
        if (whole && admit !== undefined && !admit((status & TP_STATUS_VLAN_VALID) !== 0 ? length + VLAN_TAG : length)) break;
        seen++;
        if (--this.framesLeftInBlock === 0) releaseAfterFrame = blockStart;
        else this.frameOffset = at + words[at >> 2];
        if (!whole) {
          this.count[C_RX_TRUNCATED]++;
        } else {
          if ((status & TP_STATUS_VLAN_VALID) !== 0 && mac - VLAN_TAG >= at + RX_HEADROOM_START) {
            const tci = words[(at + 32) >> 2] & 0xffff;
            const tpid = (status & TP_STATUS_VLAN_TPID_VALID) !== 0 ? halves[(at + 36) >> 1] : ETH_P_8021Q;
            bytes.copyWithin(mac - VLAN_TAG, mac, mac + 12);
            mac -= VLAN_TAG;
            length += VLAN_TAG;
            bytes[mac + 12] = tpid >> 8;
            bytes[mac + 13] = tpid & 0xff;
            bytes[mac + 14] = tci >> 8;
            bytes[mac + 15] = tci & 0xff;
            if (header !== null) shiftVnetHeader(header, VLAN_TAG);
          }
          delivered++;
          if (onFrame(bytes, mac, length, status) === false) seen = budget;
        }
        if (releaseAfterFrame >= 0) {
          this.releaseBlock(releaseAfterFrame);
          releaseAfterFrame = -1;
        }
      }
    } finally {
      if (releaseAfterFrame >= 0) this.releaseBlock(releaseAfterFrame);
      if (seen > 0) {
        this.count[C_RX_FRAMES] += delivered;
        const p = this.position;
        p[P_RX_BLOCK] = this.block;
        p[P_RX_FRAMES_LEFT] = this.framesLeftInBlock;
        Atomics.store(p, P_RX_FRAME_OFFSET, this.frameOffset);
      }
    }
    return delivered;
  }

  /** True when a frame is waiting, without consuming anything (for adaptive polling). */
  rxReady(): boolean {
    if (this.framesLeftInBlock > 0) return true;
    return (Atomics.load(this.rxWords, (this.block * this.blockSize + 8) >> 2) & TP_STATUS_USER) !== 0;
  }

  private releaseBlock(blockStart: number): void {
    Atomics.store(this.rxWords, (blockStart + 8) >> 2, TP_STATUS_KERNEL);
    this.count[C_RX_BLOCKS]++;
    this.block = this.block + 1 === this.blockCount ? 0 : this.block + 1;
  }

  /** The next free TX slot, or null when the ring is full (the kernel still owns the slot). */
  txSlot(): TxSlot | null {
    if (this.txFrameCount === 0) return null;
    const index = (this.txHead * this.txFrameSize) >> 2;
    let status = Atomics.load(this.txWords, index);
    if (status === TP_STATUS_WRONG_FORMAT) {
      this.count[C_TX_WRONG_FORMAT]++;
      Atomics.store(this.txWords, index, TP_STATUS_AVAILABLE);
      status = TP_STATUS_AVAILABLE;
    }
    if (status !== TP_STATUS_AVAILABLE) return null;
    this.slot.offset = this.txHead * this.txFrameSize + TX_DATA_OFFSET;
    return this.slot;
  }

  /**
   * Queues the frame written into the current slot. Returns false (and leaves the slot free)
   * when the kernel would refuse the length: shorter than an Ethernet header, longer than the
   * slot, or longer than the MTU allows.
   */
  txCommit(length: number): boolean {
    const start = this.txHead * this.txFrameSize;
    if (!this.txLengthAcceptable(start + TX_DATA_OFFSET, length)) {
      this.count[C_TX_REJECTED]++;
      return false;
    }
    const words = this.txWords;
    words[(start + 4) >> 2] = length; // tp_len
    words[(start + 8) >> 2] = length; // tp_snaplen
    Atomics.store(words, start >> 2, TP_STATUS_SEND_REQUEST);
    this.txHead = this.txHead + 1 === this.txFrameCount ? 0 : this.txHead + 1;
    this.txUnflushed = true;
    this.count[C_TX_FRAMES]++;
    this.position[P_TX_UNFLUSHED] = 1;
    Atomics.store(this.position, P_TX_HEAD, this.txHead);
    return true;
  }

  private txLengthAcceptable(dataAt: number, length: number): boolean {
    return frameLengthAcceptable(this.txBytes, dataAt, length, this.txCapacity, this.maxFrameLength);
  }

  /**
   * Asks the kernel to send every queued frame (one sendto). Returns the bytes the kernel took,
   * 0 when there was nothing to do, or -errno when it could not (EAGAIN/ENOBUFS: socket buffer
   * full, frames stay queued for the next flush; others such as ENETDOWN are counted).
   */
  txFlush(): number {
    if (!this.txUnflushed) return 0;
    let sent: number;
    for (;;) {
      sent = sendtoNative(this.handle.txFd, 0, 0, MSG_DONTWAIT, 0, 0) as number;
      if (sent >= 0 || lastErrno() !== EINTR) break;
    }
    // With the socket buffer full the kernel sends part of the queue and still returns success;
    // the newest committed slot tells whether anything is left.
    const newest = this.txHead === 0 ? this.txFrameCount - 1 : this.txHead - 1;
    this.txUnflushed = Atomics.load(this.txWords, (newest * this.txFrameSize) >> 2) === TP_STATUS_SEND_REQUEST;
    Atomics.store(this.position, P_TX_UNFLUSHED, this.txUnflushed ? 1 : 0);
    if (sent >= 0) return sent;
    const errno = lastErrno();
    if (errno === EAGAIN || errno === ENOBUFS) this.count[C_TX_FLUSH_BUSY]++;
    else this.count[C_TX_FLUSH_ERRORS]++;
    this.count[C_TX_LAST_ERRNO] = errno;
    return -errno;
  }

  /** Frames committed but not yet taken by the kernel remain (a later txFlush retries them). */
  txPending(): boolean {
    return this.txUnflushed;
  }

  /** Folds the kernel's PACKET_STATISTICS (which reset on every read) into the counters. */
  readKernelStatistics(): PacketRingCounters {
    const s = readPacketStatistics(this.rxFd, this.statsOut, this.statsLength);
    this.count[C_KERNEL_PACKETS] += s.packets;
    this.count[C_KERNEL_DROPS] += s.drops;
    this.count[C_KERNEL_FREEZES] += s.freezeCount;
    return this.counters;
  }
}
