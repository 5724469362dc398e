// Start-up cost of a microVM, vio4wd-vmm against QEMU's microvm in the same run, both booting the
// project's tiny guest (one ELF, entered through PVH by both): the time from process start to
// the first byte the guest writes to its serial port (its first act), and the resident memory
// beyond guest RAM (VmRSS minus the shared guest RAM pages, RssShmem; both VMMs get guest RAM
// from a memfd) once the guest has gone idle. QEMU runs with accel=kvm when that boots the guest
// on this host, otherwise with TCG; the table says which.
// Run: npx tsc -p . && node dist/bench/vmm-startup.js [runs]
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { ensureTinyGuest, repoRoot } from '../test/guest/tiny/build.js';
import { median } from './lib/report.js';

interface Sample {
  firstByteMs: number;
  rssKb: number;
  beyondGuestKb: number;
}

interface Row {
  vmm: string;
  runs: number;
  samples: Sample[];
  error?: string;
}

const GUEST_RAM = '256M';
/** After the first serial byte, time for the guest to reach its idle loop before memory is read. */
const SETTLE_MS = 500;

function procStatus(pid: number): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of readFileSync(`/proc/${pid}/status`, 'utf8').split('\n')) {
    const m = /^(\w+):\s+(\d+) kB/.exec(line);
    if (m) out[m[1]] = Number(m[2]);
  }
  return out;
}

function measure(cmd: string, args: string[], timeoutMs: number): Promise<Sample> {
  return new Promise((resolvePromise, reject) => {
    const started = process.hrtime.bigint();
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let firstByteMs = -1;
    let errors = '';
    let serial = '';
    let measured = false;
    const stop = () => {
      child.kill('SIGTERM');
      setTimeout(() => child.kill('SIGKILL'), 3000).unref();
    };
    const timer = setTimeout(() => {
      stop();
      reject(new Error(`${cmd}: no guest output within ${timeoutMs / 1000} s: ${errors.slice(-300).trim()}`));
    }, timeoutMs);
    child.stderr.on('data', (d: Buffer) => (errors += d.toString()));
    child.stdout.on('data', (d: Buffer) => {
      if (firstByteMs < 0) firstByteMs = Number(process.hrtime.bigint() - started) / 1e6;
      serial += d.toString();
      if (!measured && serial.includes('tiny-guest:')) {
        measured = true;
        clearTimeout(timer);
        setTimeout(() => {
          try {
            const s = procStatus(child.pid!);
            resolvePromise({ firstByteMs, rssKb: s.VmRSS, beyondGuestKb: s.VmRSS - (s.RssShmem ?? 0) });
          } catch (err) {
            reject(err as Error);
          }
          stop();
        }, SETTLE_MS);
      }
    });
    child.on('exit', (code) => {
      if (!measured) {
        clearTimeout(timer);
        reject(new Error(`${cmd} exited (${code}) before any guest output: ${errors.slice(-300).trim()}`));
      }
    });
  });
}

/** Runs one after the other, so the two VMMs never compete for the two CPUs. */
async function runSeries(label: string, cmd: string, args: string[], runs: number, timeoutMs: number): Promise<Row> {
  const samples: Sample[] = [];
  try {
    for (let i = 0; i < runs; i++) {
      samples.push(await measure(cmd, args, timeoutMs));
      await new Promise((r) => setTimeout(r, 300)); // let the previous process finish exiting
    }
  } catch (err) {
    return { vmm: label, runs, samples, error: (err as Error).message.split('\n')[0] };
  }
  return { vmm: label, runs, samples };
}

function qemuArgs(guest: string, accel: 'kvm' | 'tcg'): string[] {
  return [
    '-M', `microvm,accel=${accel},memory-backend=ram0`,
    '-object', `memory-backend-memfd,id=ram0,size=${GUEST_RAM},share=on`,
    // This host's KVM rejects IA32_ARCH_CAPABILITIES, which -cpu host would set.
    '-cpu', accel === 'kvm' ? 'host,-arch-capabilities' : 'max',
    '-m', GUEST_RAM, '-smp', '1', '-nodefaults', '-no-user-config', '-nographic', '-serial', 'stdio',
    '-kernel', guest,
  ];
}

if (process.argv[2] === '--help' || process.argv[2] === '-h') {
  process.stdout.write(
    'usage: node dist/bench/vmm-startup.js [runs]   (default 7; as root, after npx tsc -p .)\n\n' +
      'Boots the tiny test guest with vio4wd-vmm and with qemu-system-x86_64 -M microvm, one process at a\n' +
      'time, and prints the median time from process start to the first guest output on serial and the\n' +
      'resident memory beyond guest RAM for each.\n',
  );
  process.exit(0);
}
const runs = Number(process.argv[2] ?? 7);
if (!Number.isInteger(runs) || runs < 1) throw new Error(`runs: "${process.argv[2]}" is not a positive integer`);
const guest = ensureTinyGuest();
const ours = await runSeries(
  'vio4wd-vmm',
  process.execPath,
  [resolve(repoRoot, 'bin/vio4wd-vmm'), '-kernel', guest, '-m', GUEST_RAM, '-machine', 'mem-share=on', '-serial', 'stdio'],
  runs,
  30_000,
);

// accel=kvm when one probe boot reaches the guest's first output; TCG otherwise.
let accel: 'kvm' | 'tcg' = 'kvm';
let accelNote = 'accel=kvm';
try {
  await measure('qemu-system-x86_64', qemuArgs(guest, 'kvm'), 20_000);
} catch (err) {
  accel = 'tcg';
  accelNote = `accel=tcg (kvm failed: ${(err as Error).message.slice(0, 120)})`;
}
const qemu = await runSeries(`qemu-system-x86_64 -M microvm (${accel})`, 'qemu-system-x86_64', qemuArgs(guest, accel), runs, 60_000);

const rows = [ours, qemu];
const header = ['VMM', 'runs', 'first serial byte (ms)', 'VmRSS (MiB)', 'RSS beyond guest RAM (MiB)'];
const table: string[][] = rows.map((r) =>
  r.error
    ? [r.vmm, String(r.samples.length), `failed: ${r.error}`, '', '']
    : [
        r.vmm,
        String(r.runs),
        median(r.samples.map((s) => s.firstByteMs)).toFixed(1),
        (median(r.samples.map((s) => s.rssKb)) / 1024).toFixed(1),
        (median(r.samples.map((s) => s.beyondGuestKb)) / 1024).toFixed(1),
      ],
);
const widths = header.map((h, i) => Math.max(h.length, ...table.map((row) => row[i].length)));
const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i])).join(' | ');
console.log(`vmm start-up, tiny guest via PVH, ${GUEST_RAM} guest RAM, 1 vCPU, medians of ${runs} runs; QEMU ${accelNote}`);
console.log(line(header));
console.log(widths.map((w) => '-'.repeat(w)).join('-|-'));
for (const row of table) console.log(line(row));
for (const r of rows) {
  console.log(JSON.stringify({ vmm: r.vmm, firstSerialByteMs: r.samples.map((s) => Number(s.firstByteMs.toFixed(1))), rssBeyondGuestRamKb: r.samples.map((s) => s.beyondGuestKb), error: r.error }));
}
