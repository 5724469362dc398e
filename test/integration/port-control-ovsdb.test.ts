// The OVSDB monitor against a real ovsdb-server driven by ovs-vsctl: the registry must see exactly
// the right add/remove calls for tags, retags, untags, deletes and server restarts.
import { mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { describeNetdev } from '../../relay/control/vf.js';
import { JsonStreamSplitter } from '../../port-control/ovsdb/json-stream.js';
import { OvsdbMonitor } from '../../port-control/ovsdb/monitor.js';
import { requireOrSkip } from '../support/env.js';
import { MemoryRegistry, type RegistryCall } from '../support/memory-registry.js';
import { missingOvsdbPrerequisite, OvsdbSandbox } from '../support/ovsdb.js';
import { run } from '../support/env.js';
import { waitFor } from '../support/processes.js';

const dir = mkdtempSync(join(tmpdir(), `pc-ovsdb-${process.pid}-`));
const logger = pino({ level: 'silent' });

/** A fake sysfs where `vf7` is VF 0000:05:08.7 of PF 0000:05:00.0; other names are plain netdevs. */
function fakeSysfs(root: string): void {
  const dev = (pci: string) => join(root, 'devices/pci0000:00', pci);
  mkdirSync(dev('0000:05:00.0'), { recursive: true });
  mkdirSync(dev('0000:05:08.7'), { recursive: true });
  mkdirSync(join(root, 'class/net/vf7'), { recursive: true });
  symlinkSync(dev('0000:05:08.7'), join(root, 'class/net/vf7/device'));
  symlinkSync(dev('0000:05:00.0'), join(dev('0000:05:08.7'), 'physfn'));
  symlinkSync(dev('0000:05:08.7'), join(dev('0000:05:00.0'), 'virtfn7'));
}

afterAll(() => rmSync(dir, { recursive: true, force: true }));

const canRun = requireOrSkip(missingOvsdbPrerequisite() === null, missingOvsdbPrerequisite() ?? '');

describe.skipIf(!canRun)('OVSDB monitor with a real ovsdb-server', () => {
  const sandbox = new OvsdbSandbox(join(dir, 'ovsdb'));
  const registry = new MemoryRegistry();
  let monitor: OvsdbMonitor;
  let seen = 0;

  /** Waits for `count` more add/remove calls, lets the monitor settle, and returns exactly the new ones. */
  async function nextCalls(count: number): Promise<RegistryCall[]> {
    await waitFor(() => registry.mutations().length >= seen + count, 15_000, `${count} registry call(s)`, 50);
    await monitor.idle();
    const calls = registry.mutations().slice(seen);
    seen += calls.length;
    return calls;
  }

  const add = (relay: number, vf: object) => ({ method: 'addVf', args: [relay, vf, { conditional: true }] });
  const remove = (relay: number, pci?: string) => ({ method: 'removeDevice', args: [relay, pci ? { pci, conditional: true } : { conditional: true }] });

  beforeAll(async () => {
    const sysfs = join(dir, 'sys');
    fakeSysfs(sysfs);
    await sandbox.start();
    sandbox.vsctl('init');
    sandbox.vsctl('add-br', 'br0');
    // Tagged before the monitor starts: must arrive with the initial rows.
    sandbox.vsctl('add-port', 'br0', 'eth1', '--', 'set', 'Interface', 'eth1', 'external_ids:virtio_forwarder=1');
    sandbox.vsctl('add-port', 'br0', 'eth0');
    monitor = new OvsdbMonitor(registry, { socketPath: sandbox.socketPath, resolveNetdev: (n) => describeNetdev(n, sysfs).ref, retryMs: 200 }, logger);
    monitor.start();
  });

  afterAll(async () => {
    await monitor?.close();
    await sandbox.stop();
  });

  it('adds the interfaces already tagged when it starts', async () => {
    expect(await nextCalls(1)).toEqual([add(1, { netdev: 'eth1' })]);
    await waitFor(() => monitor.syncCount === 1, 10_000, 'the initial sync');
  });

  it('adds an interface when it is tagged, resolving a VF netdev to its PCI address through sysfs', async () => {
    sandbox.vsctl('add-port', 'br0', 'vf7');
    sandbox.vsctl('set', 'Interface', 'vf7', 'external_ids:virtio_forwarder=2');
    expect(await nextCalls(1)).toEqual([add(2, { pci: '0000:05:08.7' })]);
  });

  it('moves an interface when its tag changes', async () => {
    sandbox.vsctl('set', 'Interface', 'vf7', 'external_ids:virtio_forwarder=4');
    expect(await nextCalls(2)).toEqual([remove(2, '0000:05:08.7'), add(4, { pci: '0000:05:08.7' })]);
  });

  it('honours the virtio_relay key too', async () => {
    sandbox.vsctl('add-port', 'br0', 'eth2', '--', 'set', 'Interface', 'eth2', 'external_ids:virtio_relay=5');
    expect(await nextCalls(1)).toEqual([add(5, { netdev: 'eth2' })]);
  });

  it('ignores changes that leave the tag alone and tags that are not relay ids', async () => {
    sandbox.vsctl('set', 'Interface', 'eth2', 'external_ids:owner=nova');
    sandbox.vsctl('add-port', 'br0', 'eth3', '--', 'set', 'Interface', 'eth3', 'external_ids:virtio_forwarder=abc');
    sandbox.vsctl('set', 'Interface', 'eth0', 'external_ids:virtio_forwarder=99');
    // A change that does count, behind them on the same connection: it must be the only call.
    sandbox.vsctl('set', 'Interface', 'eth3', 'external_ids:virtio_forwarder=6');
    expect(await nextCalls(1)).toEqual([add(6, { netdev: 'eth3' })]);
  });

  it('removes an interface when its tag is removed, and when the interface is deleted', async () => {
    sandbox.vsctl('remove', 'Interface', 'eth1', 'external_ids', 'virtio_forwarder');
    expect(await nextCalls(1)).toEqual([remove(1)]);
    sandbox.vsctl('del-port', 'br0', 'eth2');
    expect(await nextCalls(1)).toEqual([remove(5)]);
  });

  it('retries a refused add only at the next resync, not on every update', async () => {
    // Relay 6 already holds eth3; eth4 asking for it is refused by the registry.
    sandbox.vsctl('add-port', 'br0', 'eth4', '--', 'set', 'Interface', 'eth4', 'external_ids:virtio_forwarder=6');
    expect(await nextCalls(1)).toEqual([add(6, { netdev: 'eth4' })]);
    sandbox.vsctl('set', 'Interface', 'eth4', 'external_ids:owner=x');
    sandbox.vsctl('set', 'Interface', 'eth0', 'external_ids:virtio_forwarder=7');
    expect(await nextCalls(1)).toEqual([add(7, { netdev: 'eth0' })]);
    sandbox.vsctl('del-port', 'br0', 'eth4');
    sandbox.vsctl('remove', 'Interface', 'eth0', 'external_ids', 'virtio_forwarder');
    expect(await nextCalls(1)).toEqual([remove(7)]);
  });

  it('resyncs after an ovsdb-server restart without touching unchanged relays', async () => {
    const syncs = monitor.syncCount;
    await sandbox.stop();
    await waitFor(() => !monitor.connected, 10_000, 'the monitor to notice the server is gone');
    await sandbox.start();
    await waitFor(() => monitor.syncCount > syncs, 15_000, 'the resync after the restart');
    await monitor.idle();
    // Sentinel behind the resync: the only call is the sentinel's.
    sandbox.vsctl('set', 'Interface', 'eth0', 'external_ids:virtio_forwarder=8');
    expect(await nextCalls(1)).toEqual([add(8, { netdev: 'eth0' })]);
  });

  it('applies what changed while the server was down, and only that', async () => {
    const syncs = monitor.syncCount;
    await sandbox.stop();
    await waitFor(() => !monitor.connected, 10_000, 'the monitor to notice the server is gone');
    // Offline edits: vf7 moves from relay 4 to 9, eth3 loses its tag; relay 8 (eth0) stays.
    const update = (name: string, ids: [string, string][]) => ({
      op: 'update',
      table: 'Interface',
      where: [['name', '==', name]],
      row: { external_ids: ['map', ids] },
    });
    run('ovsdb-tool', ['transact', sandbox.dbPath, JSON.stringify(['Open_vSwitch', update('vf7', [['virtio_forwarder', '9']]), update('eth3', [])])]);
    await sandbox.start();
    await waitFor(() => monitor.syncCount > syncs, 15_000, 'the resync after the restart');
    const calls = await nextCalls(3);
    expect(calls.filter((c) => c.method === 'removeDevice')).toEqual(expect.arrayContaining([remove(4, '0000:05:08.7'), remove(6)]));
    expect(calls.slice(0, 2).every((c) => c.method === 'removeDevice')).toBe(true);
    expect(calls[2]).toEqual(add(9, { pci: '0000:05:08.7' }));
    expect(calls).toHaveLength(3);
  });
});

describe('OVSDB monitor against a scripted JSON-RPC peer', () => {
  let server: Server;
  const sockPath = join(dir, 'fake-ovsdb.sock');
  const received: unknown[] = [];
  const peers: Socket[] = [];
  let behaviour: (msg: Record<string, unknown>, sock: Socket) => void = () => {};

  beforeAll(async () => {
    server = createServer((sock) => {
      peers.push(sock);
      const splitter = new JsonStreamSplitter();
      sock.setEncoding('utf8');
      sock.on('data', (d: string) => {
        for (const msg of splitter.push(d) as Record<string, unknown>[]) {
          received.push(msg);
          behaviour(msg, sock);
        }
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(sockPath, resolve);
    });
  });

  afterAll(async () => {
    for (const p of peers) p.destroy();
    await new Promise<void>((r) => server.close(() => r()));
  });

  it('answers echo requests and reconnects after unreadable data', async () => {
    const registry = new MemoryRegistry();
    behaviour = (msg, sock) => {
      if (msg.method === 'monitor') {
        sock.write(JSON.stringify({ id: msg.id, error: null, result: { Interface: { u1: { new: { name: 'eth9', external_ids: ['map', [['virtio_forwarder', '3']]] } } } } }));
        sock.write(JSON.stringify({ method: 'echo', params: ['ping', 1], id: 'echo-1' }));
      }
    };
    const monitor = new OvsdbMonitor(registry, { socketPath: sockPath, resolveNetdev: (n) => ({ netdev: n }), retryMs: 100 }, logger);
    monitor.start();
    try {
      await waitFor(() => received.some((m) => (m as { id?: unknown }).id === 'echo-1'), 10_000, 'the echo reply');
      expect(received.find((m) => (m as { id?: unknown }).id === 'echo-1')).toEqual({ id: 'echo-1', result: ['ping', 1], error: null });
      await waitFor(() => monitor.syncCount === 1, 10_000, 'the first sync');
      await monitor.idle();
      expect(registry.mutations()).toEqual([{ method: 'addVf', args: [3, { netdev: 'eth9' }, { conditional: true }] }]);
      // Garbage on the stream: the monitor drops the connection, reconnects, resyncs, and
      // touches nothing because the table did not change.
      const monitorsBefore = received.filter((m) => (m as { method?: string }).method === 'monitor').length;
      peers[peers.length - 1].write('}garbage');
      await waitFor(() => monitor.syncCount === 2, 10_000, 'the resync after garbage');
      await monitor.idle();
      expect(received.filter((m) => (m as { method?: string }).method === 'monitor').length).toBe(monitorsBefore + 1);
      expect(registry.mutations()).toHaveLength(1);
    } finally {
      await monitor.close();
    }
  });

  it('retries when ovsdb-server refuses the monitor request, and syncs once it accepts', async () => {
    const registry = new MemoryRegistry();
    let refusals = 0;
    behaviour = (msg, sock) => {
      if (msg.method !== 'monitor') return;
      if (refusals < 2) {
        refusals++;
        sock.write(JSON.stringify({ id: msg.id, result: null, error: 'unknown database', details: 'Open_vSwitch' }));
        return;
      }
      sock.write(JSON.stringify({ id: msg.id, error: null, result: { Interface: { u2: { new: { name: 'eth8', external_ids: ['map', [['virtio_relay', '0x1']]] } } } } }));
    };
    const monitor = new OvsdbMonitor(registry, { socketPath: sockPath, resolveNetdev: (n) => ({ netdev: n }), retryMs: 50 }, logger);
    monitor.start();
    try {
      await waitFor(() => monitor.syncCount === 1, 10_000, 'the sync after two refusals');
      await monitor.idle();
      expect(refusals).toBe(2);
      expect(registry.mutations()).toEqual([{ method: 'addVf', args: [1, { netdev: 'eth8' }, { conditional: true }] }]);
    } finally {
      await monitor.close();
    }
  });
});
