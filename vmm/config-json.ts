// The `-config FILE` JSON form, StratoVirt's keys plus cloud-hypervisor's memory objects.
// Unknown keys and wrong types are errors naming the key path (`machine-config.vcpu_count`).
import { ConfigError } from './config-types.js';
import { emptyDraft, type ConfigDraft } from './config-build.js';
import { parseMac, parseSize } from './config-values.js';

type Json = Record<string, unknown>;

const TOP_KEYS = ['name', 'boot-source', 'machine-config', 'memory', 'memory-zones', 'numa', 'drive', 'net', 'serial', 'iothread', 'console', 'vsock', 'balloon'];

export function draftFromJson(root: unknown): ConfigDraft {
  const doc = object(root, 'config');
  checkKeys(doc, TOP_KEYS, 'config');
  const d = emptyDraft();

  refuseUnimplemented(doc);
  if ('name' in doc) {
    d.name = string(doc.name, 'name');
    d.labels.name = 'name';
  }

  if ('boot-source' in doc) {
    const b = object(doc['boot-source'], 'boot-source');
    checkKeys(b, ['kernel_image_path', 'boot_args', 'initrd_fs_path'], 'boot-source');
    if ('kernel_image_path' in b) d.kernel = string(b.kernel_image_path, 'boot-source.kernel_image_path');
    if ('boot_args' in b) d.append = string(b.boot_args, 'boot-source.boot_args');
    if ('initrd_fs_path' in b) d.initrd = string(b.initrd_fs_path, 'boot-source.initrd_fs_path');
  }
  d.labels.kernel = 'boot-source.kernel_image_path';
  d.labels.initrd = 'boot-source.initrd_fs_path';

  if ('machine-config' in doc) {
    const m = object(doc['machine-config'], 'machine-config');
    checkKeys(
      m,
      ['type', 'vcpu_count', 'mem_size', 'dump_guest_core', 'mem-share', 'mem_share', 'mem_path', 'omit_vm_memory', 'vcpu_pin'],
      'machine-config',
    );
    if ('type' in m) {
      const type = string(m.type, 'machine-config.type');
      if (type.toLowerCase() !== 'microvm') throw new ConfigError(`machine-config.type: "${type}" is not supported (only MicroVm)`);
    }
    if ('vcpu_count' in m) d.vcpus = integer(m.vcpu_count, 'machine-config.vcpu_count');
    if ('mem_size' in m) {
      d.memSize = size(m.mem_size, 'machine-config.mem_size');
      d.labels.memSize = 'machine-config.mem_size';
    }
    if ('dump_guest_core' in m) {
      d.dumpGuestCore = boolean(m.dump_guest_core, 'machine-config.dump_guest_core');
      d.labels.dumpGuestCore = 'machine-config.dump_guest_core';
    }
    if ('mem-share' in m && 'mem_share' in m) throw new ConfigError('machine-config: mem-share and mem_share are both given');
    if ('mem-share' in m) d.memShare = boolean(m['mem-share'], 'machine-config.mem-share');
    if ('mem_share' in m) d.memShare = boolean(m.mem_share, 'machine-config.mem_share');
    if ('mem_path' in m) {
      d.memPath = string(m.mem_path, 'machine-config.mem_path');
      d.labels.memPath = 'machine-config.mem_path';
      if (!d.memPath.startsWith('/')) throw new ConfigError(`machine-config.mem_path: "${d.memPath}" must be an absolute path`);
    }
    if ('omit_vm_memory' in m) {
      d.omitVmMemory = boolean(m.omit_vm_memory, 'machine-config.omit_vm_memory');
      d.labels.omitVmMemory = 'machine-config.omit_vm_memory';
    }
    if ('vcpu_pin' in m) {
      d.vcpuPin = array(m.vcpu_pin, 'machine-config.vcpu_pin').map((c, i) => integer(c, `machine-config.vcpu_pin[${i}]`, 0, 4095));
    }
  }
  d.labels.vcpus = 'machine-config.vcpu_count';
  d.labels.vcpuPin = 'machine-config.vcpu_pin';
  d.labels.memShare = 'machine-config.mem-share';

  if ('memory' in doc) {
    const m = object(doc.memory, 'memory');
    checkKeys(m, ['size', 'shared', 'hugepages', 'hugepage_size', 'mergeable'], 'memory');
    if (!('size' in m)) throw new ConfigError('memory.size: is required');
    d.memory = {
      size: size(m.size, 'memory.size'),
      shared: 'shared' in m ? boolean(m.shared, 'memory.shared') : undefined,
      hugepages: 'hugepages' in m ? boolean(m.hugepages, 'memory.hugepages') : false,
      hugepageSize: 'hugepage_size' in m ? size(m.hugepage_size, 'memory.hugepage_size') : undefined,
      mergeable: 'mergeable' in m ? boolean(m.mergeable, 'memory.mergeable') : false,
    };
    d.labels.memory = 'memory';
  }

  if ('memory-zones' in doc) {
    array(doc['memory-zones'], 'memory-zones').forEach((zv, i) => {
      const where = `memory-zones[${i}]`;
      const z = object(zv, where);
      checkKeys(z, ['id', 'size', 'file', 'shared', 'hugepages', 'hugepage_size', 'host_numa_node'], where);
      if (!('id' in z)) throw new ConfigError(`${where}.id: is required`);
      if (!('size' in z)) throw new ConfigError(`${where}.size: is required`);
      d.zones.push({
        id: string(z.id, `${where}.id`),
        size: size(z.size, `${where}.size`),
        file: 'file' in z ? string(z.file, `${where}.file`) : undefined,
        shared: 'shared' in z ? boolean(z.shared, `${where}.shared`) : false,
        hugepages: 'hugepages' in z ? boolean(z.hugepages, `${where}.hugepages`) : false,
        hugepageSize: 'hugepage_size' in z ? size(z.hugepage_size, `${where}.hugepage_size`) : undefined,
        hostNumaNode: 'host_numa_node' in z ? integer(z.host_numa_node, `${where}.host_numa_node`, 0, 1023) : undefined,
      });
    });
    d.labels.zones = 'memory-zones';
  }

  if ('numa' in doc) {
    array(doc.numa, 'numa').forEach((nv, i) => {
      const where = `numa[${i}]`;
      const n = object(nv, where);
      checkKeys(n, ['guest_numa_id', 'cpus', 'distances', 'memory_zones'], where);
      if (!('guest_numa_id' in n)) throw new ConfigError(`${where}.guest_numa_id: is required`);
      d.numa.push({
        guestNumaId: integer(n.guest_numa_id, `${where}.guest_numa_id`, 0, 255),
        cpus: 'cpus' in n ? array(n.cpus, `${where}.cpus`).map((c, j) => integer(c, `${where}.cpus[${j}]`, 0, 255)) : [],
        distances:
          'distances' in n
            ? array(n.distances, `${where}.distances`).map((dv, j) => {
                const dw = `${where}.distances[${j}]`;
                const o = object(dv, dw);
                checkKeys(o, ['destination', 'distance'], dw);
                return { destination: integer(o.destination, `${dw}.destination`), distance: integer(o.distance, `${dw}.distance`, 0, 255) };
              })
            : [],
        memoryZones: 'memory_zones' in n ? array(n.memory_zones, `${where}.memory_zones`).map((s, j) => string(s, `${where}.memory_zones[${j}]`)) : [],
      });
    });
    d.labels.numa = 'numa';
  }

  if ('drive' in doc) {
    array(doc.drive, 'drive').forEach((dv, i) => {
      const where = `drive[${i}]`;
      const o = object(dv, where);
      checkKeys(o, ['drive_id', 'path_on_host', 'read_only', 'direct', 'serial_num', 'iothread', 'iops'], where);
      if (!('drive_id' in o)) throw new ConfigError(`${where}.drive_id: is required`);
      if (!('path_on_host' in o)) throw new ConfigError(`${where}.path_on_host: is required`);
      const serial = 'serial_num' in o ? string(o.serial_num, `${where}.serial_num`) : undefined;
      if (serial !== undefined && serial.length > 20) throw new ConfigError(`${where}.serial_num: "${serial}" is longer than 20 characters`);
      d.drives.push({
        id: string(o.drive_id, `${where}.drive_id`),
        path: string(o.path_on_host, `${where}.path_on_host`),
        readOnly: 'read_only' in o ? boolean(o.read_only, `${where}.read_only`) : false,
        direct: 'direct' in o ? boolean(o.direct, `${where}.direct`) : false,
        serial,
        iothread: 'iothread' in o ? string(o.iothread, `${where}.iothread`) : undefined,
        iops: 'iops' in o ? integer(o.iops, `${where}.iops`, 0, 1_000_000) : 0,
      });
    });
    d.labels.drives = 'drive';
  }

  if ('net' in doc) {
    array(doc.net, 'net').forEach((nv, i) => {
      const where = `net[${i}]`;
      const o = object(nv, where);
      checkKeys(o, ['iface_id', 'host_dev_name', 'socket_path', 'server', 'mac', 'queues', 'iothread'], where);
      if (!('iface_id' in o)) throw new ConfigError(`${where}.iface_id: is required`);
      if (!('socket_path' in o)) throw new ConfigError(`${where}.socket_path: is required (the vhost-user socket)`);
      d.nets.push({
        id: string(o.iface_id, `${where}.iface_id`),
        socketPath: string(o.socket_path, `${where}.socket_path`),
        server: 'server' in o ? boolean(o.server, `${where}.server`) : false,
        mac: 'mac' in o ? parseMac(string(o.mac, `${where}.mac`), `${where}.mac`) : undefined,
        queuePairs: 'queues' in o ? integer(o.queues, `${where}.queues`) : 1,
        iothread: 'iothread' in o ? string(o.iothread, `${where}.iothread`) : undefined,
        label: `${where} ${String(o.iface_id)}`,
        socketLabel: `${where}.socket_path`,
      });
    });
    d.labels.nets = 'net';
  }

  if ('serial' in doc) {
    const s = object(doc.serial, 'serial');
    checkKeys(s, ['stdio', 'socket_path'], 'serial');
    if ('stdio' in s && 'socket_path' in s && boolean(s.stdio, 'serial.stdio')) {
      throw new ConfigError('serial: give either stdio or socket_path, not both');
    }
    if ('socket_path' in s) {
      d.serial = { kind: 'socket', path: string(s.socket_path, 'serial.socket_path') };
      d.labels.serial = 'serial.socket_path';
    }
    else if ('stdio' in s) d.serial = boolean(s.stdio, 'serial.stdio') ? { kind: 'stdio' } : { kind: 'none' };
  }

  if ('iothread' in doc) {
    array(doc.iothread, 'iothread').forEach((tv, i) => {
      const o = object(tv, `iothread[${i}]`);
      checkKeys(o, ['id'], `iothread[${i}]`);
      d.iothreads.push(string(o.id, `iothread[${i}].id`));
    });
    d.labels.iothreads = 'iothread';
  }
  return d;
}

/**
 * StratoVirt's example configuration has devices this VMM does not implement. They are refused
 * all in one message (rather than one per attempt, or silently dropped), each with what to use.
 */
function refuseUnimplemented(doc: Json): void {
  const found: string[] = [];
  if ('console' in doc) found.push('console (virtio-console; use serial)');
  if ('vsock' in doc) found.push('vsock (vhost-vsock)');
  if ('balloon' in doc) found.push('balloon (virtio-balloon)');
  if (Array.isArray(doc.net)) {
    doc.net.forEach((n, i) => {
      if (typeof n === 'object' && n !== null && 'host_dev_name' in n) {
        found.push(`net[${i}].host_dev_name (a tap NIC; give socket_path, the vhost-user socket)`);
      }
    });
  }
  if (found.length) throw new ConfigError(`not implemented by this VMM: ${found.join(', ')}; remove ${found.length > 1 ? 'them' : 'it'}`);
}

function checkKeys(o: Json, allowed: string[], where: string): void {
  for (const key of Object.keys(o)) {
    if (!allowed.includes(key)) throw new ConfigError(`${where}: unknown key "${key}" (known keys: ${allowed.join(', ')})`);
  }
}

function object(v: unknown, where: string): Json {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new ConfigError(`${where}: must be an object`);
  return v as Json;
}

function array(v: unknown, where: string): unknown[] {
  if (!Array.isArray(v)) throw new ConfigError(`${where}: must be an array`);
  return v;
}

function string(v: unknown, where: string): string {
  if (typeof v !== 'string') throw new ConfigError(`${where}: must be a string`);
  return v;
}

function boolean(v: unknown, where: string): boolean {
  if (typeof v !== 'boolean') throw new ConfigError(`${where}: must be true or false`);
  return v;
}

function integer(v: unknown, where: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== 'number' || !Number.isInteger(v)) throw new ConfigError(`${where}: must be an integer`);
  if (v < min || v > max) throw new ConfigError(`${where}: ${v} is outside [${min}, ${max}]`);
  return v;
}

/** JSON sizes are bytes as a number, or a string with a unit ("1G"). */
function size(v: unknown, where: string): number {
  if (typeof v === 'number') return integer(v, where);
  if (typeof v === 'string') return parseSize(v, where);
  throw new ConfigError(`${where}: must be a size (bytes, or a string such as "512M")`);
}
