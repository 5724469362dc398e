import { describe, expect, it } from 'vitest';
import {
  FLAG_NEED_REPLY,
  FLAG_REPLY,
  HEADER_SIZE,
  ProtocolError,
  REPLY_FLAGS,
  Request,
  bitsOutside,
  checkFdCount,
  decodeLog,
  decodeMemTable,
  decodeMtu,
  decodeRarpMac,
  decodeReplyHeader,
  decodeRequestHeader,
  decodeSingleRegion,
  decodeU64,
  decodeVringAddr,
  decodeVringFile,
  decodeVringState,
  encodeHeader,
  encodeLog,
  encodeMemTable,
  encodeMessage,
  encodeRarpMac,
  encodeSingleRegion,
  encodeU64,
  encodeVringAddr,
  encodeVringFile,
  encodeVringState,
  expectedFdCount,
  hasBit,
  hasIntrinsicReply,
  maxPayloadSize,
  requestName,
  type MemRegionDesc,
} from '../../vhost-user/messages.js';
import { offeredFeatures, offeredProtocolFeatures, netHeaderLength } from '../../vhost-user/features.js';

const header = (request: number, flags: number, size: number) => encodeHeader({ request, flags, size });

function u64Bytes(lo: number, hi: number): Uint8Array {
  const b = new Uint8Array(8);
  const v = new DataView(b.buffer);
  v.setUint32(0, lo, true);
  v.setUint32(4, hi, true);
  return b;
}

const region = (i: number): MemRegionDesc => ({
  guestPhysAddr: 0x1000_0000 * i,
  size: 0x100_0000,
  userAddr: 0x7f00_0000_0000 + 0x1000_0000 * i,
  mmapOffset: 0x1000 * i,
});

describe('request ids', () => {
  it('names every id of the protocol table and flags unknown ones', () => {
    expect(Object.keys(Request)).toHaveLength(40);
    for (let id = 1; id <= 40; id++) expect(requestName(id)).not.toMatch(/^UNKNOWN/);
    expect(requestName(Request.SET_VRING_ADDR)).toBe('SET_VRING_ADDR');
    expect(requestName(41)).toBe('UNKNOWN_41');
    expect(requestName(0)).toBe('UNKNOWN_0');
  });
});

describe('request header', () => {
  it('decodes a well-formed request, with and without NEED_REPLY', () => {
    expect(decodeRequestHeader(header(Request.GET_FEATURES, 1, 0))).toEqual({ request: 1, flags: 1, size: 0 });
    expect(decodeRequestHeader(header(Request.SET_MEM_TABLE, 1 | FLAG_NEED_REPLY, 8 + 32 * 2)).size).toBe(72);
  });

  it('rejects a short header', () => {
    expect(() => decodeRequestHeader(new Uint8Array(11))).toThrow(/11 bytes, needs 12/);
  });

  it('rejects version 0, 2 and 3', () => {
    for (const v of [0, 2, 3]) expect(() => decodeRequestHeader(header(Request.GET_FEATURES, v, 0))).toThrow(/version/);
  });

  it('rejects the REPLY flag and reserved bits in a request', () => {
    expect(() => decodeRequestHeader(header(Request.GET_FEATURES, 1 | FLAG_REPLY, 0))).toThrow(/REPLY flag/);
    expect(() => decodeRequestHeader(header(Request.GET_FEATURES, 1 | 0x10, 0))).toThrow(/reserved/);
    expect(() => decodeRequestHeader(header(Request.GET_FEATURES, 1 | 0x8000_0000, 0))).toThrow(/reserved/);
  });

  it('rejects sizes other than the exact size the request needs', () => {
    expect(() => decodeRequestHeader(header(Request.GET_FEATURES, 1, 8))).toThrow(/exceeds/);
    expect(() => decodeRequestHeader(header(Request.SET_FEATURES, 1, 4))).toThrow(/not valid/);
    expect(() => decodeRequestHeader(header(Request.SET_VRING_ADDR, 1, 32))).toThrow(/not valid/);
    expect(() => decodeRequestHeader(header(Request.SET_VRING_ADDR, 1, 48))).toThrow(/exceeds/);
    expect(() => decodeRequestHeader(header(Request.SET_LOG_BASE, 1, 8))).toThrow(/not valid/);
  });

  it('accepts memory tables of 1..8 regions only', () => {
    for (let n = 1; n <= 8; n++) expect(decodeRequestHeader(header(Request.SET_MEM_TABLE, 1, 8 + 32 * n)).size).toBe(8 + 32 * n);
    expect(() => decodeRequestHeader(header(Request.SET_MEM_TABLE, 1, 8))).toThrow(/not valid/);
    expect(() => decodeRequestHeader(header(Request.SET_MEM_TABLE, 1, 8 + 32 * 9))).toThrow(/exceeds/);
    expect(() => decodeRequestHeader(header(Request.SET_MEM_TABLE, 1, 8 + 33))).toThrow(/not valid/);
    expect(maxPayloadSize(Request.SET_MEM_TABLE)).toBe(264);
  });

  it('lets unknown ids through up to the generic maximum so they can be NACKed', () => {
    expect(decodeRequestHeader(header(99, 1 | FLAG_NEED_REPLY, 16)).request).toBe(99);
    expect(() => decodeRequestHeader(header(99, 1, 4097))).toThrow(/exceeds/);
    expect(() => decodeRequestHeader(header(99, 1, 0xffff_ffff))).toThrow(/exceeds/);
  });
});

describe('reply header', () => {
  it('accepts exactly VERSION|REPLY', () => {
    expect(decodeReplyHeader(header(Request.GET_FEATURES, REPLY_FLAGS, 8)).request).toBe(1);
    expect(() => decodeReplyHeader(header(Request.GET_FEATURES, 1, 8))).toThrow(/flags 0x1/);
    expect(() => decodeReplyHeader(header(Request.GET_FEATURES, REPLY_FLAGS | FLAG_NEED_REPLY, 8))).toThrow(/flags/);
    expect(() => decodeReplyHeader(header(Request.GET_VRING_BASE, REPLY_FLAGS, 16))).toThrow(/expected 8/);
  });
});

describe('u64 payloads', () => {
  it('round-trips values up to MAX_SAFE_INTEGER', () => {
    for (const v of [0, 1, 0xffff_ffff, 2 ** 32, 2 ** 40 + 7, Number.MAX_SAFE_INTEGER]) expect(decodeU64(encodeU64(v))).toBe(v);
  });

  it('refuses values above MAX_SAFE_INTEGER instead of rounding', () => {
    expect(() => decodeU64(u64Bytes(0, 0x20_0000))).toThrow(ProtocolError);
    expect(() => decodeU64(u64Bytes(0xffff_ffff, 0xffff_ffff))).toThrow(/too large/);
    expect(decodeU64(u64Bytes(0xffff_ffff, 0x1f_ffff))).toBe(Number.MAX_SAFE_INTEGER);
  });

  it('refuses a payload of the wrong length', () => {
    expect(() => decodeU64(new Uint8Array(7))).toThrow(/7 bytes, expected 8/);
    expect(() => encodeU64(-1)).toThrow(RangeError);
    expect(() => encodeU64(2 ** 53)).toThrow(RangeError);
  });

  it('tests and masks feature bits above 31 without 32-bit truncation', () => {
    const f = offeredFeatures();
    expect(hasBit(f, 32)).toBe(true); // VERSION_1
    expect(hasBit(f, 30)).toBe(true); // PROTOCOL_FEATURES
    expect(hasBit(f, 15)).toBe(true); // MRG_RXBUF
    expect(hasBit(f, 35)).toBe(true); // IN_ORDER: both directions use buffers in order
    expect(hasBit(f, 34)).toBe(true); // RING_PACKED: the front-end chooses the ring layout
    expect(hasBit(f, 38)).toBe(false); // NOTIFICATION_DATA not offered
    expect(hasBit(offeredFeatures({ mergeableRxBuffers: false }), 15)).toBe(false);
    // Offloads (VIRTIOFWD_TSO) both ways: CSUM 0, GUEST_CSUM 1, GUEST_TSO4/6 7/8, GUEST_ECN 9,
    // HOST_TSO4/6 11/12, HOST_ECN 13; never the UFO bits (10, 14) nor GSO (6).
    const offloads = [0, 1, 7, 8, 9, 11, 12, 13];
    expect(offloads.filter((b) => hasBit(f, b))).toEqual([]);
    expect(offeredFeatures({ offloads: true }) - f).toBe(offloads.reduce((sum, b) => sum + 2 ** b, 0));
    expect(bitsOutside(f + 2 ** 38, f)).toBe(2 ** 38);
    expect(bitsOutside(f, f)).toBe(0);
    expect(f).toBe(0xd_7c60_8000);
    expect(offeredProtocolFeatures()).toBe(0x1800b); // MQ, LOG_SHMFD, REPLY_ACK, CONFIGURE_MEM_SLOTS, STATUS
    expect(netHeaderLength(0)).toBe(10);
    expect(netHeaderLength(2 ** 32)).toBe(12);
  });
});

describe('vring payloads', () => {
  it('round-trips vring state', () => {
    expect(decodeVringState(encodeVringState({ index: 3, num: 256 }))).toEqual({ index: 3, num: 256 });
    expect(() => decodeVringState(new Uint8Array(4))).toThrow(/vring state/);
  });

  it('decodes vring files with and without NOFD and refuses other bits', () => {
    expect(decodeVringFile(encodeVringFile({ index: 5, noFd: false }))).toEqual({ index: 5, noFd: false });
    expect(decodeVringFile(encodeVringFile({ index: 255, noFd: true }))).toEqual({ index: 255, noFd: true });
    expect(() => decodeVringFile(encodeU64(0x200))).toThrow(/bits other than/);
    expect(() => decodeVringFile(u64Bytes(1, 1))).toThrow(/bits other than/);
    expect(() => encodeVringFile({ index: 256, noFd: false })).toThrow(RangeError);
  });

  it('decodes vring addresses with used before avail on the wire', () => {
    const bytes = new Uint8Array(40);
    const v = new DataView(bytes.buffer);
    v.setUint32(0, 1, true);
    v.setUint32(4, 1, true);
    v.setUint32(8, 0x1000, true);
    v.setUint32(16, 0x3000, true); // used
    v.setUint32(24, 0x2000, true); // avail
    v.setUint32(32, 0x4000, true);
    const addr = decodeVringAddr(bytes);
    expect(addr).toEqual({ index: 1, flags: 1, descUserAddr: 0x1000, usedUserAddr: 0x3000, availUserAddr: 0x2000, logGuestAddr: 0x4000 });
    expect(encodeVringAddr(addr)).toEqual(bytes);
  });

  it('refuses unknown vring address flags and oversized addresses', () => {
    const ok = encodeVringAddr({ index: 0, flags: 0, descUserAddr: 0, usedUserAddr: 0, availUserAddr: 0, logGuestAddr: 0 });
    const badFlags = ok.slice();
    badFlags[4] = 2;
    expect(() => decodeVringAddr(badFlags)).toThrow(/unknown flag/);
    const huge = ok.slice();
    huge.set(u64Bytes(0, 0xffff_0000), 24);
    expect(() => decodeVringAddr(huge)).toThrow(/available ring address .* too large/);
  });
});

describe('memory table', () => {
  it('round-trips 1 and 8 regions', () => {
    expect(decodeMemTable(encodeMemTable([region(1)]))).toEqual([region(1)]);
    const eight = Array.from({ length: 8 }, (_, i) => region(i));
    expect(decodeMemTable(encodeMemTable(eight))).toEqual(eight);
  });

  it('refuses zero and more than eight regions', () => {
    const zero = new Uint8Array(8);
    expect(() => decodeMemTable(zero)).toThrow(/no regions/);
    const nine = new Uint8Array(8 + 32 * 9);
    new DataView(nine.buffer).setUint32(0, 9, true);
    expect(() => decodeMemTable(nine)).toThrow(/9 regions/);
  });

  it('refuses a count that disagrees with the payload size', () => {
    const bytes = encodeMemTable([region(1), region(2)]);
    new DataView(bytes.buffer).setUint32(0, 1, true);
    expect(() => decodeMemTable(bytes)).toThrow(/announces 1 regions/);
  });

  it('refuses empty, overflowing and overlapping regions', () => {
    expect(() => decodeMemTable(encodeMemTable([{ ...region(1), size: 0 }]))).toThrow(/size 0/);
    const overflow = encodeMemTable([region(1)]);
    overflow.set(u64Bytes(0xffff_f000, 0x1f_ffff), 8); // gpa near 2^53
    expect(() => decodeMemTable(overflow)).toThrow(/guest range .* overflows/);
    expect(() => decodeMemTable(encodeMemTable([region(1), { ...region(2), guestPhysAddr: region(1).guestPhysAddr + 0x10 }]))).toThrow(
      /overlap in the guest-physical/,
    );
    expect(() => decodeMemTable(encodeMemTable([region(1), { ...region(2), userAddr: region(1).userAddr }]))).toThrow(/overlap in the user/);
    expect(() => decodeMemTable(encodeMemTable([region(1), region(1)]))).toThrow(/overlap/);
  });

  it('round-trips single regions for ADD/REM_MEM_REG', () => {
    expect(decodeSingleRegion(encodeSingleRegion(region(3)))).toEqual(region(3));
    expect(() => decodeSingleRegion(new Uint8Array(32))).toThrow(/single memory region/);
  });
});

describe('log, RARP and MTU payloads', () => {
  it('round-trips the log and refuses empty or overflowing logs', () => {
    expect(decodeLog(encodeLog({ mmapSize: 4096, mmapOffset: 64 }))).toEqual({ mmapSize: 4096, mmapOffset: 64 });
    expect(() => decodeLog(encodeLog({ mmapSize: 0, mmapOffset: 0 }))).toThrow(/size 0/);
    expect(() => decodeLog(encodeLog({ mmapSize: Number.MAX_SAFE_INTEGER, mmapOffset: 1 }))).toThrow(/overflows/);
    expect(() => decodeLog(new Uint8Array(8))).toThrow(/log/);
  });

  it('reads the MAC of SEND_RARP', () => {
    expect(decodeRarpMac(encodeRarpMac('52:54:00:ab:cd:ef'))).toBe('52:54:00:ab:cd:ef');
    expect(() => encodeRarpMac('52:54:00')).toThrow(RangeError);
  });

  it('accepts MTUs 68..65535 only', () => {
    expect(decodeMtu(encodeU64(1500))).toBe(1500);
    expect(decodeMtu(encodeU64(68))).toBe(68);
    expect(decodeMtu(encodeU64(65535))).toBe(65535);
    expect(() => decodeMtu(encodeU64(67))).toThrow(/outside/);
    expect(() => decodeMtu(encodeU64(65536))).toThrow(/outside/);
  });
});

describe('fd counts', () => {
  const hdr = (request: number, size: number) => ({ request, flags: 1, size });
  it('expects one fd per memory region', () => {
    const table = encodeMemTable([region(1), region(2)]);
    expect(expectedFdCount(Request.SET_MEM_TABLE, table)).toEqual({ min: 2, max: 2 });
    expect(() => checkFdCount(hdr(Request.SET_MEM_TABLE, table.length), table, 1)).toThrow(/1 file descriptors attached, expected 2/);
    expect(() => checkFdCount(hdr(Request.SET_MEM_TABLE, table.length), table, 2)).not.toThrow();
  });

  it('follows the NOFD bit for kick, call and err', () => {
    for (const request of [Request.SET_VRING_KICK, Request.SET_VRING_CALL, Request.SET_VRING_ERR]) {
      const withFd = encodeVringFile({ index: 1, noFd: false });
      const noFd = encodeVringFile({ index: 1, noFd: true });
      expect(() => checkFdCount(hdr(request, 8), withFd, 1)).not.toThrow();
      expect(() => checkFdCount(hdr(request, 8), withFd, 0)).toThrow(/expected 1/);
      expect(() => checkFdCount(hdr(request, 8), noFd, 0)).not.toThrow();
      expect(() => checkFdCount(hdr(request, 8), noFd, 1)).toThrow(/expected 0/);
    }
  });

  it('refuses fds on messages that take none, and tolerates REM_MEM_REG stray fds', () => {
    expect(() => checkFdCount(hdr(Request.SET_FEATURES, 8), encodeU64(0), 1)).toThrow(/expected 0/);
    expect(() => checkFdCount(hdr(Request.GET_FEATURES, 0), new Uint8Array(0), 3)).toThrow(/expected 0/);
    expect(expectedFdCount(Request.SET_LOG_BASE, new Uint8Array(16))).toEqual({ min: 1, max: 1 });
    expect(expectedFdCount(Request.REM_MEM_REG, new Uint8Array(40))).toEqual({ min: 0, max: 1 });
  });
});

describe('message framing helpers', () => {
  it('builds header and payload in one buffer', () => {
    const m = encodeMessage(Request.GET_VRING_BASE, REPLY_FLAGS, encodeVringState({ index: 1, num: 42 }));
    expect(m.length).toBe(HEADER_SIZE + 8);
    expect(decodeReplyHeader(m.subarray(0, 12))).toEqual({ request: 11, flags: 5, size: 8 });
    expect(decodeVringState(m.subarray(12))).toEqual({ index: 1, num: 42 });
  });

  it('knows which requests carry an intrinsic reply', () => {
    expect(hasIntrinsicReply(Request.GET_FEATURES)).toBe(true);
    expect(hasIntrinsicReply(Request.GET_VRING_BASE)).toBe(true);
    expect(hasIntrinsicReply(Request.SET_MEM_TABLE)).toBe(false);
    expect(hasIntrinsicReply(Request.SET_LOG_BASE)).toBe(false);
    expect(hasIntrinsicReply(Request.SET_LOG_BASE, 0b10)).toBe(true);
  });
});
