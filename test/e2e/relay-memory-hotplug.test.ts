// Memory hot-plug: a DIMM added to a running QEMU guest (QMP object-add + device_add pc-dimm)
// reaches the relay as one more region (ADD_MEM_REG, CONFIGURE_MEM_SLOTS) while its rings run. The guest onlines the new memory and
// keeps its network: pings both ways before and after, no ring stops, and the relay maps the
// table with the DIMM's region.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { hasBinary, requireOrSkip } from '../support/env.js';
import { createNetns, createVethPair, deleteLink, deleteNetns, nsExec, requireRoot, uniqueTag } from '../support/netns.js';
import { ensureGuestImage, type GuestImage } from '../support/guest-image.js';
import { pingFromGuest, startGuestVm, type GuestVm } from '../support/qemu.js';
import { Qmp } from '../support/qmp.js';
import { startRelay, type RunningRelay } from '../support/relay.js';
import { stopAll, waitFor } from '../support/processes.js';

vi.setConfig({ testTimeout: 300_000, hookTimeout: 300_000 });

const ready = requireRoot() && requireOrSkip(hasBinary('qemu-system-x86_64'), 'the e2e tests need qemu-system-x86_64');
const tag = uniqueTag();
const ns = `mhns${tag}`;
const vf = `mhv${tag}`;
const peer = `mhp${tag}`;
const HOST_IP = '10.67.0.1';
const GUEST_IP = '10.67.0.2';
const DIMM_MIB = 128;

let image: GuestImage;
let relay: RunningRelay | null = null;
let vm: GuestVm | null = null;
let qmp: Qmp | null = null;
let dir: string;

const guestPings = (count: number) => pingFromGuest(vm!, HOST_IP, count, { context: () => `relay log tail:\n${relay?.proc.output().slice(-3000)}` });

const mappedTables = () => relay!.logs().filter((l) => l.msg === 'vhost-user: memory table mapped') as { via: string; regions: { size: string }[] }[];

describe.runIf(ready)('memory hot-plug in a running QEMU guest', () => {
  beforeAll(async () => {
    image = await ensureGuestImage();
    dir = mkdtempSync(join(tmpdir(), 'vio4wd-hotplug-'));
    createNetns(ns);
    createVethPair(vf, peer, { nsB: ns });
    nsExec(ns, 'ip', ['addr', 'add', `${HOST_IP}/24`, 'dev', peer]);
  });

  afterAll(async () => {
    qmp?.close();
    await vm?.stop();
    await relay?.stop();
    await stopAll();
    deleteLink(vf);
    deleteNetns(ns);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('a DIMM added while the NIC runs: the relay maps the new table and the guest keeps its network', async () => {
    relay = await startRelay({ staticVfs: { [vf]: 1 }, cpus: [0] });
    const qmpSocket = join(dir, 'qmp.sock');
    vm = await startGuestVm({
      image,
      machine: 'pc',
      memoryBackend: 'memfd',
      memoryMiB: 256,
      hotplug: { slots: 2, maxMiB: 1024 },
      qmpSocket,
      vhostUser: { socketPath: relay.socketPath(1) },
      ip: `${GUEST_IP}/24`,
      mac: '52:54:00:67:00:02',
      cpu: 1,
    });
    await vm.ready(180_000);
    await guestPings(3);
    // QEMU 7.2 also negotiated PROTOCOL_F_STATUS and told the relay the driver started the device.
    const statuses = relay.logs().filter((l) => /device status/.test(String(l.msg))).map((l) => l.status as string[]);
    expect(statuses.some((s) => s.includes('DRIVER_OK')), JSON.stringify(statuses)).toBe(true);
    const memTotal = async () => {
      const r = await vm!.exec('grep MemTotal /proc/meminfo; ls /sys/devices/system/memory | wc -l', 30_000);
      return Number(r.output.match(/MemTotal:\s+(\d+)/)?.[1]);
    };
    const memBefore = await memTotal();
    const tablesBefore = mappedTables().length;
    expect(tablesBefore).toBeGreaterThan(0);
    const regionsBefore = mappedTables()[tablesBefore - 1].regions.length;

    const blocksBefore = (await vm.exec('ls -d /sys/devices/system/memory/memory* | wc -l', 30_000)).output.trim();
    qmp = await Qmp.connect(qmpSocket);
    await qmp.execute('object-add', { 'qom-type': 'memory-backend-memfd', id: 'hp1', size: DIMM_MIB * 2 ** 20, share: true });
    await qmp.execute('device_add', { driver: 'pc-dimm', id: 'dimm1', memdev: 'hp1' });

    // QEMU re-sends the whole table with the DIMM's region while the rings run.
    await waitFor(() => mappedTables().length > tablesBefore, 60_000, 'the relay to map a memory table with the DIMM');
    const after = mappedTables()[mappedTables().length - 1];
    expect(after.regions.length).toBe(regionsBefore + 1);
    // QEMU negotiated CONFIGURE_MEM_SLOTS: the DIMM came alone, not as a whole new table.
    expect(after.via).toBe('ADD_MEM_REG');
    expect(after.regions.map((r) => Number(r.size))).toContain(DIMM_MIB * 2 ** 20);

    // The guest brings the new memory online (Debian's kernel may have done it already) once its
    // ACPI handler has added the blocks.
    await waitFor(async () => (await vm!.exec('ls -d /sys/devices/system/memory/memory* | wc -l', 30_000)).output.trim() !== blocksBefore, 60_000, 'the guest to add the DIMM\'s memory blocks');
    const online = await vm.exec(
      'for m in /sys/devices/system/memory/memory*/state; do if grep -q offline $m; then echo online > $m || exit 1; fi; done; grep MemTotal /proc/meminfo',
      60_000,
    );
    expect(online.status, online.output).toBe(0);
    const memTotalKiB = Number(online.output.match(/MemTotal:\s+(\d+)/)?.[1]);
    expect(memTotalKiB - memBefore, online.output).toBeGreaterThanOrEqual((DIMM_MIB - 8) * 1024);

    // The network goes on, both ways, and no ring stopped along the way.
    await guestPings(5);
    expect(nsExec(ns, 'ping', ['-c', '3', '-W', '2', GUEST_IP], { timeoutMs: 30_000 })).toMatch(/3 received/);
    const faults = relay.logs().filter((l) => /guest ring broken|not started|descriptor chain dropped/.test(String(l.msg)));
    expect(faults).toEqual([]);
  });
});
