// AF_XDP ports on an interface that already has XDP programs, against xdp-tools (xdp-filter,
// xdp-loader) and libxdp. Where the VF's hook is held by libxdp's dispatcher, the port joins it
// and both programs run: xdp-filter first (it drops what it denies), then the port's. Where the
// hook is held by a program alone, the port is refused with that program's name and id.
//
// libxdp's dispatcher needs a kernel that loads its freplace components; where this machine's
// kernel does not (libxdp then loads one program alone, as on kernels without BTF), the
// dispatcher cases run inside the nested-KVM rig, whose Debian kernel does: this file runs
// itself there.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { openXdpPort, closeXdpPort } from '../../sys/xdp-socket.js';
import { XdpPort } from '../../sys/xdp-port.js';
import { STATE_DIR } from '../../sys/libxdp.js';
import { requireRoot, createNetns, deleteNetns, createVethPair, deleteLink, uniqueTag } from '../support/netns.js';
import { findBinary, requireOrSkip } from '../support/env.js';
import { sleep, waitFor } from '../support/processes.js';
import { startRelay, statsToolCounters } from '../support/relay.js';
import { hex, testFrame, peerSend, TEST_ETHERTYPE } from '../support/raw-peer.js';
import { runNested, stopNested } from '../support/nested.js';

const INSIDE_RIG = process.env.VIO4WD_XDP_DISPATCHER_HERE === '1';
const tag = uniqueTag();
const ns = `xdpdns${tag}`;
const ourEnd = `xdpdA${tag}`;
const peerEnd = `xdpdB${tag}`;
const thisFile = fileURLToPath(import.meta.url);
const DENIED_SOURCE = '02:00:00:00:00:0c';

let ready = false;
/** Whether libxdp builds a dispatcher on this kernel (probed with xdp-filter). */
let dispatcherHere = false;

function run(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** The programs `xdp-loader status` lists on `ifname`, in its order: the dispatcher (or the program alone), then its components. */
function loaderStatus(ifname: string): Array<{ name: string; id: number }> {
  const found: Array<{ name: string; id: number }> = [];
  for (const line of run('xdp-loader', ['status', ifname]).split('\n')) {
    const m = /^\S+\s+(\w+)\s+(?:native|skb|hw)\s+(\d+)\s+[0-9a-f]{16}/.exec(line) ?? /^\s*=>\s+\d+\s+(\w+)\s+(\d+)\s+[0-9a-f]{16}/.exec(line);
    if (m) found.push({ name: m[1], id: Number(m[2]) });
  }
  return found;
}

const loaderPrograms = (ifname: string) => loaderStatus(ifname).map((p) => p.name);

function filterUnload(): void {
  try {
    run('xdp-filter', ['unload', ourEnd]);
  } catch {
    /* not loaded */
  }
}

/** A test frame from another source address (the one xdp-filter is told to deny). */
function deniedFrame(seq: number): Uint8Array {
  const f = testFrame(seq, 64);
  f[11] = 0x0c;
  return f;
}

async function receive(port: XdpPort, want: number, waitMs = 5000): Promise<Uint8Array[]> {
  const frames: Uint8Array[] = [];
  const deadline = Date.now() + waitMs;
  while (frames.length < want && Date.now() < deadline) {
    const n = port.receive((bytes, offset, length) => {
      if (((bytes[offset + 12] << 8) | bytes[offset + 13]) === TEST_ETHERTYPE) frames.push(bytes.slice(offset, offset + length));
    }, 64);
    if (n === 0) await sleep(5);
  }
  return frames;
}

const tools = findBinary('xdp-filter') !== null && findBinary('xdp-loader') !== null;

describe('AF_XDP ports beside other XDP programs (xdp-tools, libxdp)', () => {
  beforeAll(() => {
    if (!requireRoot() || !requireOrSkip(tools, 'xdp-filter and xdp-loader are missing (scripts/setup.sh installs xdp-tools)')) return;
    // libxdp keeps its dispatcher's state in bpffs; systemd mounts it, a bare container may not.
    if (!/^\S+ \/sys\/fs\/bpf bpf /m.test(readFileSync('/proc/mounts', 'utf8'))) run('mount', ['-t', 'bpf', 'bpf', '/sys/fs/bpf']);
    createNetns(ns);
    createVethPair(ourEnd, peerEnd, { nsB: ns, noIpv6: true });
    run('xdp-filter', ['load', ourEnd, '--mode', 'native']);
    dispatcherHere = loaderPrograms(ourEnd).includes('xdp_dispatcher');
    filterUnload();
    ready = true;
  }, 60_000);

  afterAll(() => {
    stopNested();
    filterUnload();
    deleteLink(ourEnd);
    deleteNetns(ns);
  });

  it('names the program that holds the VF alone, and leaves it working', (ctx) => {
    if (!ready) return;
    // (Our own program alone on the VF is refused the same way in sys-xdp-socket.test.ts.)
    if (dispatcherHere) ctx.skip('this kernel gives xdp-filter a dispatcher, so it is never alone on the VF');
    run('xdp-filter', ['load', ourEnd, '--mode', 'native']);
    try {
      const status = loaderStatus(ourEnd);
      expect(status).toHaveLength(1);
      const { name, id } = status[0];
      expect(name).toMatch(/^xdpfilt_/);
      expect(() => openXdpPort(ourEnd)).toThrow(new RegExp(`another XDP program \\(${name}, id ${id}\\) is attached to it, not through libxdp's dispatcher`));
      expect(loaderPrograms(ourEnd)).toEqual([name]);
    } finally {
      filterUnload();
    }
  });

  it.runIf(!INSIDE_RIG)('joins libxdp\'s dispatcher (here, or inside the nested-KVM rig where this kernel cannot load one)', async (ctx) => {
    if (!ready) return;
    if (dispatcherHere) ctx.skip('this kernel loads the dispatcher: the cases below run here');
    // The rig runs under QEMU's TCG, so it needs QEMU only, whatever /dev/kvm this machine has.
    const rigPossible = findBinary('qemu-system-x86_64') !== null;
    if (!requireOrSkip(rigPossible, 'this kernel cannot load libxdp\'s dispatcher and QEMU, which the nested-KVM rig runs on, is missing')) return;
    const relative = thisFile.slice(thisFile.indexOf('/test/') + 1);
    const r = await runNested(['bash', '-c', `VIO4WD_XDP_DISPATCHER_HERE=1 node node_modules/vitest/vitest.mjs run ${relative}`],
      { timeoutS: 600, label: 'xdp-rig' });
    expect(r.status, r.output.slice(-4000)).toBe(0);
    // Every dispatcher case ran there and passed; the two for this machine were skipped.
    expect(r.output.replace(/\x1b\[[0-9;]*m/g, '')).toMatch(/Tests\s+5 passed \| 2 skipped \(7\)/);
  }, 700_000);

  describe('in libxdp\'s dispatcher', () => {
    /** Whether the dispatcher cases run here; where the kernel cannot, they are skipped (the rig runs them). */
    const here = (ctx: { skip: (note?: string) => void }) => {
      if (ready && !dispatcherHere) ctx.skip('this kernel cannot load libxdp\'s dispatcher: the case runs in the nested-KVM rig');
      return ready;
    };

    it('joins xdp-filter\'s dispatcher: xdp-filter runs first, the port receives what it passes, and leaving removes only the port\'s program', async (ctx) => {
      if (!here(ctx)) return;
      run('xdp-filter', ['load', ourEnd, '--mode', 'native']);
      run('xdp-filter', ['ether', DENIED_SOURCE, '--mode', 'src']);
      const handle = openXdpPort(ourEnd);
      try {
        expect(handle.dispatcher).not.toBeNull();
        expect(handle.attachMode).toBe('native');
        expect(handle.programId).toBe(handle.dispatcher!.id);
        const programs = loaderPrograms(ourEnd);
        expect(programs[0]).toBe('xdp_dispatcher');
        expect(programs.slice(1)).toEqual([expect.stringMatching(/^xdpfilt_/), 'xsk_def_prog']);
        expect(readdirSync(STATE_DIR)).toContain(String(handle.programId));
        const port = XdpPort.attach(handle);
        const passed = Array.from({ length: 8 }, (_, i) => testFrame(i, 64));
        const denied = Array.from({ length: 8 }, (_, i) => deniedFrame(100 + i));
        peerSend(ns, peerEnd, [...passed, ...denied]);
        const got = await receive(port, 16, 3000);
        expect(got.map(hex)).toEqual(passed.map(hex));
      } finally {
        closeXdpPort(handle);
      }
      expect(loaderPrograms(ourEnd)).toEqual(['xdp_dispatcher', expect.stringMatching(/^xdpfilt_/)]);
      expect(existsSync(`${STATE_DIR}/${handle.programId}`)).toBe(false);
      filterUnload();
    });

    it('refuses a mode the dispatcher is not in, and leaves nothing behind', (ctx) => {
      if (!here(ctx)) return;
      run('xdp-filter', ['load', ourEnd, '--mode', 'native']);
      try {
        expect(() => openXdpPort(ourEnd, { attach: 'generic' })).toThrow(/libxdp's dispatcher is attached to it in native mode, not generic/);
        expect(loaderPrograms(ourEnd)).toEqual(['xdp_dispatcher', expect.stringMatching(/^xdpfilt_/)]);
      } finally {
        filterUnload();
      }
    });

    it('a daemon killed while in the dispatcher leaves its program; the next port on that VF removes it', async (ctx) => {
      if (!here(ctx)) return;
      const compiled = fileURLToPath(new URL('../../dist/sys/xdp-socket.js', import.meta.url));
      expect(existsSync(compiled), `compiled sys/ missing at ${compiled}: run npx tsc -p . first`).toBe(true);
      run('xdp-filter', ['load', ourEnd, '--mode', 'native']);
      const child = spawn(process.execPath, ['--input-type=module', '-e', `
        const { openXdpPort } = await import(${JSON.stringify(compiled)});
        console.log('open ' + openXdpPort(${JSON.stringify(ourEnd)}).programId);
        setInterval(() => {}, 1000);
      `], { stdio: ['ignore', 'pipe', 'inherit'] });
      let leftId = 0;
      try {
        leftId = await new Promise<number>((resolve, reject) => {
          child.stdout!.on('data', (d: Buffer) => {
            const m = /open (\d+)/.exec(d.toString());
            if (m) resolve(Number(m[1]));
          });
          child.on('exit', (code) => reject(new Error(`holder exited with ${code}`)));
        });
      } finally {
        child.kill('SIGKILL');
        await new Promise((r) => child.once('exit', r));
      }
      try {
        // libxdp pinned it: it outlives the process (its socket is gone, so it passes every frame on).
        expect(loaderPrograms(ourEnd)).toEqual(['xdp_dispatcher', expect.stringMatching(/^xdpfilt_/), 'xsk_def_prog']);
        expect(existsSync(`${STATE_DIR}/${leftId}`)).toBe(true);
        const handle = openXdpPort(ourEnd);
        try {
          expect(handle.dispatcher!.leftovers).toEqual({ removed: [{ id: leftId, pid: child.pid }], failed: [] });
          expect(loaderPrograms(ourEnd)).toEqual(['xdp_dispatcher', expect.stringMatching(/^xdpfilt_/), 'xsk_def_prog']);
          expect(existsSync(`${STATE_DIR}/${leftId}`)).toBe(false);
          const port = XdpPort.attach(handle);
          peerSend(ns, peerEnd, [testFrame(1, 64)]);
          expect((await receive(port, 1)).map(hex)).toEqual([hex(testFrame(1, 64))]);
        } finally {
          closeXdpPort(handle);
        }
        expect(loaderPrograms(ourEnd)).toEqual(['xdp_dispatcher', expect.stringMatching(/^xdpfilt_/)]);
      } finally {
        filterUnload();
      }
    });

    it('the daemon joins the dispatcher, says so in its log and its stats, and takes its program out when it stops', async (ctx) => {
      if (!here(ctx)) return;
      run('xdp-filter', ['load', ourEnd, '--mode', 'native']);
      try {
        const statsEp = `ipc:///tmp/vio4wd-stats-xdpd-${tag}`;
        const relay = await startRelay({ staticVfs: { [ourEnd]: 3 }, configLines: ['VIRTIOFWD_VF_PORT=af_xdp', `VIRTIOFWD_ZMQ_STATS_EP=${statsEp}`] });
        try {
          const portLine = () => relay.logs().map((l) => String(l.msg)).find((m) => m.startsWith(`VF ${ourEnd}: AF_XDP port`));
          await waitFor(() => portLine() !== undefined, 10_000, 'the port to be opened');
          const ours = loaderStatus(ourEnd).find((p) => p.name === 'xsk_def_prog');
          expect(ours).toBeDefined();
          expect(portLine()).toBe(`VF ${ourEnd}: AF_XDP port, program ${ours!.id} in libxdp's dispatcher (priority 20, native mode), beside the interface's other XDP programs, `
            + "copy mode, 1 queue, relay's UMEM (frames copied)");
          const stats = statsToolCounters(statsEp, 3) as unknown as { ports: unknown[] };
          expect(stats.ports).toEqual([{ netdev: ourEnd, port: 'af_xdp', attach: 'native', dispatcher: true, zeroCopy: false, umem: 'relay', rxInPlace: false, rxFramesInPlace: 0, txFramesInPlace: 0 }]);
        } finally {
          await relay.stop();
        }
        expect(loaderPrograms(ourEnd)).toEqual(['xdp_dispatcher', expect.stringMatching(/^xdpfilt_/)]);
      } finally {
        filterUnload();
      }
    });

    it('a port opened first keeps the VF to itself: xdp-loader cannot add a program beside its bpf_link', (ctx) => {
      if (!here(ctx)) return;
      const handle = openXdpPort(ourEnd);
      try {
        expect(handle.dispatcher).toBeNull();
        expect(() => run('xdp-filter', ['load', ourEnd, '--mode', 'native'])).toThrow();
      } finally {
        closeXdpPort(handle);
        filterUnload();
      }
      expect(loaderPrograms(ourEnd)).toEqual([]);
    });
  });
});
