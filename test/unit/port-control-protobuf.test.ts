// The protobuf codec and handlers of the ZMQ services over the in-memory registry: how frames are
// told apart, the strict decoder, and a seeded stream of random and mutated frames that must each
// get exactly one well-formed reply of the endpoint's type without touching the registry wrongly.
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { PbDecodeError, decodeMessage, encodeMessage, isJsonFrame, messageType, type MessageName } from '../../port-control/protobuf.js';
import { protobufConfig, protobufCoreSched, protobufPortControl, protobufStats, type ProtobufHandler } from '../../port-control/protobuf-handlers.js';
import { MemoryRegistry } from '../support/memory-registry.js';
import { mulberry32 as rng } from '../support/seeded-random.js';

const logger = pino({ level: 'silent' });


describe('telling JSON from protobuf', () => {
  it('takes a frame as JSON only when its first byte is {', () => {
    expect(isJsonFrame(Buffer.from('{"version":1}'))).toBe(true);
    expect(isJsonFrame(Buffer.from(' {"version":1}'))).toBe(false);
    expect(isJsonFrame(Buffer.alloc(0))).toBe(false);
    expect(isJsonFrame(Buffer.from([0x08, 0x00]))).toBe(false);
  });

  it('no request message of the protocol, filled in any way, encodes to a frame starting with {', () => {
    const r = rng(7);
    const samples: [MessageName, Record<string, unknown>][] = [];
    for (let i = 0; i < 500; i++) {
      const n = () => Math.floor(r() * 2 ** 32);
      samples.push(
        ['PortControlRequest', { op: Math.floor(r() * 5), virtio_id: n(), conditional: r() < 0.5, name: 'x'.repeat(Math.floor(r() * 200)), mode: n(), vhost_path: '/'.repeat(Math.floor(r() * 300)), pci_addrs: [{ domain: n(), bus: n(), slot: n(), function: n() }] }],
        ['StatsRequest', { relay: Array.from({ length: Math.floor(r() * 70) }, n), include_inactive: r() < 0.5, delay: n() }],
        ['CoreSchedRequest', { op: Math.floor(r() * 2), relay_cpu_map: [{ relay_number: n() | 0, vf2virtio_cpu: n() | 0, virtio2vf_cpu: n() | 0 }] }],
        ['ConfigRequest', {}],
      );
    }
    for (const [name, value] of samples) {
      const frame = encodeMessage(name, value);
      expect(isJsonFrame(frame), `${name} ${JSON.stringify(value).slice(0, 100)}`).toBe(false);
      expect(decodeMessage(name, frame)).toBeDefined();
    }
  });
});

describe('the strict decoder', () => {
  const refuse = (name: MessageName, hex: string, why: RegExp) => {
    expect(() => decodeMessage(name, Buffer.from(hex, 'hex'))).toThrow(PbDecodeError);
    expect(() => decodeMessage(name, Buffer.from(hex, 'hex'))).toThrow(why);
  };

  it('refuses wrong wire types, groups, bad lengths, missing required fields and oversized frames', () => {
    refuse('PortControlRequest', '', /missing required 'op'/);
    refuse('PortControlRequest', '0800' + '1000', /pci_addrs \(field 2\) is varint/);
    refuse('PortControlRequest', '0800' + '7b' + '7c', /group/);
    refuse('PortControlRequest', '0800' + '2a05' + '41', /runs past the end/);
    refuse('PortControlRequest', '0800' + '1204' + '08001000', /missing required 'slot'/);
    refuse('PortControlRequest', '0800' + '0e', /invalid wire type 6/);
    refuse('PortControlRequest', '00', /field number 0/);
    refuse('StatsRequest', '1a04' + '00000000', /delay \(field 3\) is length-delimited/);
    refuse('CoreSchedRequest', '0801' + '1203' + '080110', /index out of range|runs past|missing required/);
    refuse('ConfigRequest', 'ff', /.+/);
    refuse('StatsRequest', '08'.repeat(8193), /8192-byte limit/);
  });

  it('accepts unknown fields of the ordinary wire types, packed and unpacked repeated fields, and keeps presence', () => {
    const req = decodeMessage<Record<string, unknown>>('PortControlRequest', Buffer.from('0803' + 'f80701' + 'fa070161' + 'fd0701020304' + 'f9070102030405060708', 'hex'));
    expect(req.op).toBe(3);
    expect(Object.prototype.hasOwnProperty.call(req, 'conditional')).toBe(false);
    expect(decodeMessage<{ relay: number[] }>('StatsRequest', Buffer.from('0a020304' + '0805', 'hex')).relay).toEqual([3, 4, 5]);
    const type = messageType('StatsResponse');
    expect(type.fields.status.required).toBe(true);
  });
});

describe('the handlers under random and mutated frames', () => {
  const registry = new MemoryRegistry({ workerCpus: [0, 1], pins: [{ relay: 5, vfToVmCpu: 1, vmToVfCpu: 0 }] });
  registry.seed(5, { kind: 'vf', vf: { pci: '0000:05:08.5' } }, '/tmp/vm5.sock', true);
  const services: [string, ProtobufHandler, MessageName, Uint8Array[]][] = [
    ['portControl', protobufPortControl(registry, logger), 'PortControlResponse', [
      encodeMessage('PortControlRequest', { op: 4, vhost_path: '/tmp/vm5.sock' }),
      encodeMessage('PortControlRequest', { op: 0, virtio_id: 7, pci_addrs: [{ domain: 0, bus: 0xee, slot: 1, function: 0 }] }),
    ]],
    // No real waiting: random frames ask for delays of up to 10 s.
    ['stats', protobufStats(registry, logger, () => performance.now(), async () => undefined), 'StatsResponse', [encodeMessage('StatsRequest', { relay: [5, 6], include_inactive: false })]],
    ['config', protobufConfig(registry, logger), 'ConfigResponse', [encodeMessage('ConfigRequest', {})]],
    ['coreSched', protobufCoreSched(registry, logger), 'CoreSchedResponse', [
      encodeMessage('CoreSchedRequest', { op: 1 }),
      encodeMessage('CoreSchedRequest', { op: 0, relay_cpu_map: [{ relay_number: 5, vf2virtio_cpu: 1, virtio2vf_cpu: 0 }] }),
    ]],
  ];

  it('answer the good requests with what they ask', async () => {
    const reply = async (i: number, j: number) => messageType(services[i][2]).toObject(messageType(services[i][2]).decode(await services[i][1]([Buffer.from(services[i][3][j])])));
    expect(await reply(0, 0)).toEqual({ status: 1, query_string: '0000:05:08.5' });
    expect(await reply(0, 1)).toMatchObject({ status: 0, error_code: 2 });
    const stats = await reply(1, 0);
    expect(stats.relay.map((r: { id: number }) => r.id)).toEqual([5]);
    expect(stats.relay[0]).toMatchObject({ active: true, vf: { pci_addr_str: '0000:05:08.5' }, vm_to_vf: { internal_state: 'VIRTIO_READY' } });
    expect(await reply(2, 0)).toEqual({ status: 0, relay_cpu_map: [{ relay_number: 5, vf2virtio_cpu: 1, virtio2vf_cpu: 0 }] });
    expect(await reply(3, 0)).toEqual({ status: 1, eal_cores: [0, 1] });
    expect(await reply(3, 1)).toEqual({ status: 1 });
  });

  it('give every random or mutated frame exactly one decodable reply of the endpoint type; what reaches the registry is in bounds', async () => {
    const r = rng(Number(process.env.VIO4WD_PB_FUZZ_SEED ?? 1234));
    const before = registry.mutations().length;
    const stats = { refused: 0, accepted: 0 };
    for (let i = 0; i < 3000; i++) {
      const [, handler, replyType, goods] = services[i % services.length];
      let frame: Buffer;
      const kind = r();
      if (kind < 0.3) {
        frame = Buffer.from(Array.from({ length: Math.floor(r() * 64) }, () => Math.floor(r() * 256)));
      } else {
        frame = Buffer.from(goods[Math.floor(r() * goods.length)]);
        const flips = 1 + Math.floor(r() * 4);
        for (let k = 0; k < flips && frame.length > 0; k++) frame[Math.floor(r() * frame.length)] = Math.floor(r() * 256);
        if (r() < 0.2) frame = frame.subarray(0, Math.floor(r() * frame.length));
      }
      if (frame.length > 0 && frame[0] === 0x7b) continue; // JSON's, not ours
      const out = await handler([frame]);
      const type = messageType(replyType);
      const decoded = type.toObject(type.decode(out)) as { status: number };
      expect(typeof decoded.status, `reply to ${frame.toString('hex')}`).toBe('number');
      if (decoded.status === (replyType === 'StatsResponse' || replyType === 'ConfigResponse' ? 0 : 1)) stats.accepted++;
      else stats.refused++;
    }
    // Whatever got through validation is in bounds: canonical PCI addresses, at most 8 of them,
    // absolute socket paths, relay ids and CPUs in range.
    const pciOk = (p: unknown) => typeof p === 'string' && /^[0-9a-f]{4}:[0-9a-f]{2}:[01][0-9a-f]\.[0-7]$/.test(p);
    const reached = registry.mutations().slice(before);
    expect(reached.length).toBeGreaterThan(0);
    for (const { method, args } of reached) {
      const text = JSON.stringify(args);
      if (method === 'addVf') expect(pciOk((args[1] as { pci: string }).pci), text).toBe(true);
      if (method === 'addBond') {
        const members = (args[1] as { members: { pci: string }[] }).members;
        expect(members.length, text).toBeLessThanOrEqual(8);
        expect(members.every((m) => pciOk(m.pci)), text).toBe(true);
      }
      if (method === 'addSocket') expect(String(args[0]), text).toMatch(/^(\/|$)/);
      if (method === 'applyCpuMap') {
        for (const e of args[0] as { relay: number; vfToVmCpu: number; vmToVfCpu: number }[]) {
          expect(e.relay >= 0 && e.relay < 64 && e.vfToVmCpu >= 0 && e.vmToVfCpu >= 0 && e.vfToVmCpu <= 4095 && e.vmToVfCpu <= 4095, text).toBe(true);
        }
      }
    }
    expect(stats.refused).toBeGreaterThan(500);
    expect(stats.accepted).toBeGreaterThan(100);
  });

  it('refuse several frames and an empty list of frames with the endpoint error', async () => {
    for (const [, handler, replyType, goods] of services) {
      const type = messageType(replyType);
      for (const frames of [[Buffer.from(goods[0]), Buffer.from(goods[0])], []]) {
        const decoded = type.toObject(type.decode(await handler(frames))) as { status: number };
        expect(decoded.status).toBe(replyType === 'StatsResponse' ? 400 : replyType === 'ConfigResponse' ? 400 : 0);
      }
    }
  });
});
