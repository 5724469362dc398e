// The protobuf side of the ZMQ control services: the messages of port-control/virtioforwarder.proto
// (byte-compatible with Netronome's virtio-forwarder), loaded at run time with protobufjs, and a
// strict decoder. The services' meaning for protobuf callers is in protobuf-handlers.ts.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';

/**
 * Tells the two encodings apart, one frame at a time. A JSON request is an object, so its first
 * byte is `{` (0x7b); vio4wd's own clients never put white space before it. Read as a protobuf
 * tag, 0x7b is field 15 with wire type 3 (start of a group). None of the messages of this
 * protocol has a field 15 or uses groups, and a conforming encoder writes only the fields a
 * message declares, so no request from a protobuf peer ever starts with that byte. Every other
 * frame, the empty frame included (a valid StatsRequest or ConfigRequest), is protobuf.
 */
export function isJsonFrame(frame: Uint8Array): boolean {
  return frame.length > 0 && frame[0] === 0x7b;
}

/**
 * Larger protobuf requests are refused unread. The largest legitimate one, a core-sched UPDATE
 * for all 64 relays with negative CPU numbers (10-byte varints), stays under 2.5 KiB.
 */
export const PB_MAX_REQUEST_BYTES = 8192;

function protoPath(): string {
  // From the sources (tests) the file sits beside this module; from dist/port-control/ it is two
  // levels up, in the checkout or installed package.
  for (const rel of ['./virtioforwarder.proto', '../../port-control/virtioforwarder.proto']) {
    const path = fileURLToPath(new URL(rel, import.meta.url));
    if (existsSync(path)) return path;
  }
  throw new Error('port-control/virtioforwarder.proto not found beside the program');
}

let root: protobuf.Root | undefined;

function loadRoot(): protobuf.Root {
  if (!root) {
    // keepCase: the fields keep their .proto names (pci_addrs), as other runtimes show them.
    root = new protobuf.Root().loadSync(protoPath(), { keepCase: true });
    root.resolveAll();
  }
  return root;
}

export type MessageName =
  | 'PortControlRequest'
  | 'PortControlResponse'
  | 'StatsRequest'
  | 'StatsResponse'
  | 'ConfigRequest'
  | 'ConfigResponse'
  | 'CoreSchedRequest'
  | 'CoreSchedResponse';

export function messageType(name: MessageName): protobuf.Type {
  return loadRoot().lookupType(`virtioforwarder.${name}`);
}

/** A frame that is not a well-formed message of the expected type. */
export class PbDecodeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PbDecodeError';
  }
}

const WIRE_NAMES = ['varint', '64-bit', 'length-delimited', 'start-group', 'end-group', '32-bit'];

function expectedWireType(field: protobuf.Field): number {
  if (field.resolvedType instanceof protobuf.Type) return 2;
  if (field.resolvedType instanceof protobuf.Enum) return 0;
  const basic = (protobuf.types.basic as Record<string, number | undefined>)[field.type];
  return basic ?? 2; // string and bytes
}

/**
 * Walks the fields of one message and refuses what the generated decoder would silently
 * misread: a known field with the wrong wire type (it would be read as the declared type
 * anyway), groups (not part of this protocol), wire types 6 and 7, field number 0, and lengths
 * that run past the message. Unknown fields of the ordinary wire types are skipped, as every
 * protobuf runtime does.
 */
function checkWire(type: protobuf.Type, reader: protobuf.Reader, end: number, path: string): void {
  while (reader.pos < end) {
    const tag = reader.uint32();
    const id = tag >>> 3;
    const wire = tag & 7;
    if (id === 0) throw new PbDecodeError(`${path}: field number 0`);
    if (wire === 3 || wire === 4) throw new PbDecodeError(`${path}: field ${id} is a group; groups are not part of this protocol`);
    if (wire > 5) throw new PbDecodeError(`${path}: field ${id} has the invalid wire type ${wire}`);
    const field = type.fieldsById[id];
    if (!field) {
      reader.skipType(wire);
      if (reader.pos > end) throw new PbDecodeError(`${path}: field ${id} runs past the end of the message`);
      continue;
    }
    const expected = expectedWireType(field);
    const packed = field.repeated && expected !== 2 && wire === 2;
    if (wire !== expected && !packed) {
      throw new PbDecodeError(
        `${path}.${field.name} (field ${id}) is ${WIRE_NAMES[wire]} but must be ${WIRE_NAMES[expected]}; is this the right endpoint for the message?`,
      );
    }
    if (wire === 2) {
      const length = reader.uint32();
      const stop = reader.pos + length;
      if (stop > end) throw new PbDecodeError(`${path}.${field.name}: length ${length} runs past the end of the message`);
      if (field.resolvedType instanceof protobuf.Type) checkWire(field.resolvedType, reader, stop, `${path}.${field.name}`);
      else reader.pos = stop;
    } else {
      reader.skipType(wire);
    }
  }
  if (reader.pos !== end) throw new PbDecodeError(`${path}: the last field runs past the end of the message`);
}

/** Decodes `frame` as a `name`; throws PbDecodeError for anything that is not one. */
export function decodeMessage<T = Record<string, unknown>>(name: MessageName, frame: Uint8Array): T {
  const type = messageType(name);
  if (frame.length > PB_MAX_REQUEST_BYTES) {
    throw new PbDecodeError(`request of ${frame.length} bytes is larger than the ${PB_MAX_REQUEST_BYTES}-byte limit`);
  }
  try {
    checkWire(type, protobuf.Reader.create(frame), frame.length, name);
    return type.decode(frame) as unknown as T;
  } catch (err) {
    if (err instanceof PbDecodeError) throw err;
    throw new PbDecodeError(`not a ${name}: ${(err as Error).message}`);
  }
}

/** Encodes a plain object (only the fields it holds are written, so presence is exact). */
export function encodeMessage(name: MessageName, value: Record<string, unknown>): Uint8Array {
  const type = messageType(name);
  return type.encode(type.fromObject(value)).finish();
}

/** True when the decoded message carries `field` (proto2 presence, not the default value). */
export function has(message: object, field: string): boolean {
  return Object.prototype.hasOwnProperty.call(message, field);
}
