// The VMM with the project's tiny guest under real KVM: serial output, reboot ends the VM with 0,
// the api-channel, SIGTERM, and virtio-net over vhost-user against dpdk-testpmd's vhost back-end
// forwarding to a veth whose peer sits in a network namespace and pings the guest.
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startProcess, stopAll, waitFor, type StartedProcess } from '../support/processes.js';
import { hasBinary, isRoot, requireOrSkip } from '../support/env.js';
import { kvmTestsCanRun } from '../support/kvm.js';
import { createNetns, createVethPair, deleteLink, deleteNetns, nsExec } from '../support/netns.js';
import { startTestpmd, vhostVdev, type Testpmd } from '../support/testpmd.js';
import { ensureTinyGuest, repoRoot } from '../guest/tiny/build.js';

const vmmBin = resolve(repoRoot, 'bin/vio4wd-vmm');
const canRun = kvmTestsCanRun([resolve(repoRoot, 'dist/vmm/main.js')]);

let guest = '';
beforeAll(() => {
  if (canRun) guest = ensureTinyGuest();
});
afterAll(async () => {
  await stopAll();
});

function startVmm(args: string[], label = 'vmm'): StartedProcess {
  return startProcess('node', [vmmBin, '-kernel', guest, '-serial', 'stdio', ...args], { label });
}

class QmpClient {
  private buffer = '';
  private waiters: Array<() => void> = [];
  constructor(private readonly socket: Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => {
      this.buffer += d;
      for (const w of this.waiters.splice(0)) w();
    });
  }
  static open(path: string): Promise<QmpClient> {
    return new Promise((res, rej) => {
      const s = connect(path, () => res(new QmpClient(s)));
      s.once('error', rej);
    });
  }
  /** Next complete line as JSON. */
  async next(timeoutMs = 10_000): Promise<Record<string, unknown>> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const nl = this.buffer.indexOf('\n');
      if (nl >= 0) {
        const line = this.buffer.slice(0, nl).trim();
        this.buffer = this.buffer.slice(nl + 1);
        if (line) return JSON.parse(line);
        continue;
      }
      if (Date.now() > deadline) throw new Error(`no QMP reply within ${timeoutMs} ms (buffer: ${this.buffer})`);
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 200);
      });
    }
  }
  async send(text: string): Promise<Record<string, unknown>> {
    this.socket.write(text);
    return this.next();
  }
  close(): void {
    this.socket.destroy();
  }
}

describe.runIf(canRun)('vio4wd-vmm with the tiny guest', () => {
  it('prints the guest greeting on the serial port and exits 0 when the guest resets through the i8042', async () => {
    const vmm = startVmm(['-append', 'tiny.exit', '-m', '256M']);
    await vmm.waitForOutput(/tiny-guest: hello from the tiny guest/, 30_000);
    expect(await vmm.exited).toBe(0);
    expect(vmm.output()).toMatch(/guest ended: i8042 reset/);
  });

  it('a guest triple fault ends the VM with status 0 and a warning that says what is known of where', async () => {
    const vmm = startVmm(['-append', 'tiny.triple-fault', '-m', '256M']);
    expect(await vmm.exited, vmm.output()).toBe(0);
    // ud2 with an IDT of limit 0: #UD, #GP on its delivery, #DF, then the shutdown.
    const line = /"level":40,.*"msg":"guest ended: triple fault \(shutdown\); ([^"]*)"/.exec(vmm.output());
    expect(line, vmm.output()).not.toBeNull();
    if (line![1].startsWith('registers not kept')) {
      // KVM on AMD SVM resets the vCPU on a shutdown: the VMM must say so instead of printing the reset state.
      expect(line![1]).toBe('registers not kept: KVM reset the vCPU at the shutdown (AMD SVM does)');
    } else {
      const regs = /^rip (0x[0-9a-f]+) rsp 0x[0-9a-f]+ rflags 0x[0-9a-f]+ cs 0x8 cr0 0x[0-9a-f]+ cr2 0x[0-9a-f]+ cr3 0x[0-9a-f]+ cr4 0x[0-9a-f]+ efer (0x[0-9a-f]+) idt 0x[0-9a-f]+$/.exec(line![1]);
      expect(regs, line![1]).not.toBeNull();
      expect(Number(regs![1])).toBeGreaterThanOrEqual(0x100000); // in the guest's text at 1 MiB
      expect(Number(regs![1])).toBeLessThan(0x200000);
      expect(Number(regs![2]) & 0x400, 'EFER.LMA: the guest was in long mode').toBe(0x400);
    }
  });

  it("a guest exception is named by the guest's handler on the serial port before it resets", async () => {
    const vmm = startVmm(['-append', 'tiny.exception', '-m', '256M']);
    expect(await vmm.exited, vmm.output()).toBe(0);
    expect(vmm.output()).toMatch(/tiny-guest: exception 6 error 0x0+ rip 0x00000000001[0-9a-f]{5} rsp/);
    expect(vmm.output()).toMatch(/guest ended: i8042 reset/);
  });

  it('serves the api-channel: greeting, capabilities, status, cpus, devices, stop/cont, errors, quit', async () => {
    const api = join(tmpdir(), `vmm-api-${process.pid}.sock`);
    const vmm = startVmm(['-api-channel', `unix:${api}`, '-smp', '2']);
    try {
      await vmm.waitForOutput(/no usable virtio-net device/, 30_000);
      const qmp = await QmpClient.open(api);
      expect(await qmp.next()).toHaveProperty('QMP');
      expect(await qmp.send('{"execute":"query-status"}\n')).toMatchObject({ error: { class: 'CommandNotFound' } });
      expect(await qmp.send('{"execute":"qmp_capabilities"}\n')).toEqual({ return: {} });
      expect(await qmp.send('{"execute": }\n')).toMatchObject({ error: { class: 'GenericError', desc: expect.stringMatching(/JSON parse error/) } });
      expect(await qmp.send('[1,2]\n')).toMatchObject({ error: { class: 'GenericError' } });
      expect(await qmp.send('{"execute":"no-such-command","id":7}\n')).toMatchObject({ error: { class: 'CommandNotFound' }, id: 7 });
      expect(await qmp.send('{"execute":"query-status","id":"a"}')).toEqual({ return: { status: 'running', running: true, singlestep: false }, id: 'a' });
      const cpus = (await qmp.send('{"execute":"query-cpus"}')).return as Array<{ CPU: number; thread_id: number }>;
      expect(cpus.map((c) => c.CPU), JSON.stringify(cpus)).toEqual([0, 1]);
      for (const c of cpus) expect(existsSync(`/proc/${vmm.pid}/task/${c.thread_id}`)).toBe(true);
      const devices = (await qmp.send('{"execute":"query-devices"}')).return as Array<{ type: string }>;
      expect(devices.map((d) => d.type)).toEqual(['serial-8250']);
      expect(await qmp.send('{"execute":"stop"}')).toEqual({ return: {} });
      expect(await qmp.next()).toMatchObject({ event: 'STOP' });
      expect((await qmp.send('{"execute":"query-status"}')).return).toMatchObject({ status: 'paused', running: false });
      expect(await qmp.send('{"execute":"cont"}')).toEqual({ return: {} });
      expect(await qmp.next()).toMatchObject({ event: 'RESUME' });
      expect((await qmp.send('{"execute":"query-status"}')).return).toMatchObject({ status: 'running' });
      expect(await qmp.send('{"execute":"quit"}')).toEqual({ return: {} });
      qmp.close();
      expect(await vmm.exited).toBe(0);
      expect(existsSync(api)).toBe(false);
    } finally {
      await vmm.stop();
      rmSync(api, { force: true });
    }
  });

  it('ends the VM on SIGTERM with status 0', async () => {
    const vmm = startVmm([]);
    await vmm.waitForOutput(/no usable virtio-net device/, 30_000);
    process.kill(vmm.pid, 'SIGTERM');
    expect(await vmm.exited).toBe(0);
  });

  describe('virtio-net over vhost-user with dpdk-testpmd as the back-end', () => {
    const ready = requireOrSkip(isRoot() && hasBinary('dpdk-testpmd'), 'needs root and dpdk-testpmd (Debian dpdk)');
    const tag = `${process.pid % 100000}`;
    const ns = `vmmns${tag}`;
    const hostVeth = `vmmh${tag}`;
    const nsVeth = `vmmg${tag}`;
    const socket = join(tmpdir(), `vmm-vu-${tag}.sock`);
    let testpmd: Testpmd | null = null;

    afterAll(async () => {
      await testpmd?.stop().catch(() => undefined);
      deleteLink(hostVeth);
      deleteNetns(ns);
      rmSync(socket, { force: true });
    });

    it.runIf(ready)('the guest answers ARP and ping from a veth peer, and SIGTERM closes the vhost-user connection', async () => {
      createNetns(ns);
      createVethPair(hostVeth, nsVeth, { nsB: ns });
      nsExec(ns, 'ip', ['addr', 'add', '10.77.0.1/24', 'dev', nsVeth]);
      testpmd = startTestpmd({ vdevs: [vhostVdev({ iface: socket }), `net_af_packet0,iface=${hostVeth}`], forwardMode: 'io', label: 'testpmd', extraApp: ['--port-topology=paired'] });
      await testpmd.proc.waitForOutput(/vhost-user server: socket created/, 30_000);
      const vmm = startVmm([
        '-append', 'ip=10.77.0.2', '-machine', 'mem-share=on',
        '-chardev', `socket,id=c0,path=${socket}`, '-netdev', 'vhost-user,id=net0,chardev=c0',
        '-device', 'virtio-net-device,netdev=net0,mac=52:54:00:12:34:56',
      ], 'vmm-net');
      await vmm.waitForOutput(/tiny-guest: net ready/, 60_000);
      await vmm.waitForOutput(/rings handed to the vhost-user back-end/, 30_000);
      const ping = nsExec(ns, 'ping', ['-c', '3', '-W', '5', '10.77.0.2'], { timeoutMs: 60_000 });
      expect(ping).toMatch(/3 received/);
      await vmm.waitForOutput(/tiny-guest: arp reply/, 10_000);
      await vmm.waitForOutput(/tiny-guest: icmp echo reply seq 3/, 10_000);
      process.kill(vmm.pid, 'SIGTERM');
      expect(await vmm.exited).toBe(0);
      await testpmd.proc.waitForOutput(/vhost peer closed/, 10_000);
    });

    it.runIf(ready)('a guest that resets its NIC and initialises it again gets working rings: GET_VRING_BASE stops them, DRIVER_OK hands them over anew', async () => {
      testpmd ??= startTestpmd({ vdevs: [vhostVdev({ iface: socket }), `net_af_packet0,iface=${hostVeth}`], forwardMode: 'io', label: 'testpmd', extraApp: ['--port-topology=paired'] });
      const vmm = startVmm([
        '-append', 'ip=10.77.0.3 tiny.net-reinit', '-machine', 'mem-share=on',
        '-chardev', `socket,id=c0,path=${socket}`, '-netdev', 'vhost-user,id=net0,chardev=c0',
        '-device', 'virtio-net-device,netdev=net0,mac=52:54:00:12:34:57',
      ], 'vmm-net-reinit');
      await vmm.waitForOutput(/tiny-guest: net reset and re-initialised/, 60_000);
      await vmm.waitForOutput(/tiny-guest: net ready/, 60_000);
      await vmm.waitForOutput(/NIC net0: guest reset the device; rings stopped[\s\S]*rings handed to the vhost-user back-end/, 30_000);
      expect(vmm.output().match(/rings handed to the vhost-user back-end/g)?.length).toBe(2);
      const ping = nsExec(ns, 'ping', ['-c', '2', '-W', '5', '10.77.0.3'], { timeoutMs: 60_000 });
      expect(ping).toMatch(/2 received/);
      await vmm.waitForOutput(/tiny-guest: icmp echo reply seq 2/, 10_000);
      process.kill(vmm.pid, 'SIGTERM');
      expect(await vmm.exited).toBe(0);
    });
  });
});

describe.runIf(canRun)('vio4wd-vmm removes what it created', () => {
  const dir = join(tmpdir(), `vmm-created-${process.pid}`);
  beforeAll(() => mkdirSync(dir, { recursive: true }));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('a daemon creates its pid file, serial and api sockets, and removes all three when it quits', async () => {
    const [pidFile, serial, api] = ['vm.pid', 'serial.sock', 'api.sock'].map((n) => join(dir, n));
    const vmm = startProcess('node', [vmmBin, '-kernel', guest, '-daemonize', '-pidfile', pidFile, '-serial', `unix:${serial}`, '-api-channel', `unix:${api}`], { label: 'vmm-daemon' });
    expect(await vmm.exited).toBe(0);
    const pid = Number(readFileSync(pidFile, 'utf8').trim());
    expect(pid).toBeGreaterThan(0);
    expect(existsSync(serial) && existsSync(api)).toBe(true);
    const qmp = await QmpClient.open(api);
    try {
      await qmp.next();
      await qmp.send('{"execute":"qmp_capabilities"}');
      await qmp.send('{"execute":"quit"}');
    } finally {
      qmp.close();
    }
    await waitFor(() => !existsSync(`/proc/${pid}`), 30_000, 'the daemon to exit');
    expect([pidFile, serial, api].filter((p) => existsSync(p))).toEqual([]);
  });

  it('a start that fails after creating the pid file and the serial socket removes them (exit 1, the api path named)', async () => {
    const [pidFile, serial] = ['failed.pid', 'failed-serial.sock'].map((n) => join(dir, n));
    // procfs refuses bind(), after the up-front check has found the path free.
    const api = `/proc/vio4wd-test-${process.pid}.api`;
    const vmm = startProcess('node', [vmmBin, '-kernel', guest, '-daemonize', '-pidfile', pidFile, '-serial', `unix:${serial}`, '-api-channel', `unix:${api}`], { label: 'vmm-daemon-fail' });
    expect(await vmm.exited).toBe(1);
    expect(vmm.output()).toContain(`-api-channel: cannot listen on ${api}`);
    expect(existsSync(pidFile)).toBe(false);
    expect(existsSync(serial)).toBe(false);
  });
});
