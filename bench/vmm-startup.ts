// Start-up cost of a microVM: time from process start to the first serial byte of the tiny guest
// (its first instructions write to the UART), and resident memory beyond guest RAM (VmRSS minus
// the shared guest RAM pages, RssShmem), for vio4wd-vmm and for QEMU's microvm with the same guest.
// Run: npx tsc -p . && node dist/bench/vmm-startup.js [runs]
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { ensureTinyGuest, repoRoot } from '../test/guest/tiny/build.js';

interface Sample {
  firstByteMs: number;
  rssKb: number;
  beyondGuestKb: number;
}

function status(pid: number): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of readFileSync(`/proc/${pid}/status`, 'utf8').split('\n')) {
    const m = /^(\w+):\s+(\d+) kB/.exec(line);
    if (m) out[m[1]] = Number(m[2]);
  }
  return out;
}

function measure(cmd: string, args: string[]): Promise<Sample> {
  return new Promise((resolvePromise, reject) => {
    const started = process.hrtime.bigint();
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let firstByteMs = -1;
    let errors = '';
    let serial = '';
    let measured = false;
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${cmd}: no serial output within 30 s: ${errors.slice(-500)}`));
    }, 30_000);
    child.stderr.on('data', (d: Buffer) => (errors += d.toString()));
    child.stdout.on('data', (d: Buffer) => {
      if (firstByteMs < 0) firstByteMs = Number(process.hrtime.bigint() - started) / 1e6;
      serial += d.toString();
      if (!measured && serial.includes('tiny-guest:')) {
        measured = true;
        // Let the guest settle into its idle loop before reading memory.
        setTimeout(() => {
          const s = status(child.pid!);
          clearTimeout(timer);
          child.kill('SIGTERM');
          setTimeout(() => child.kill('SIGKILL'), 3000).unref();
          resolvePromise({ firstByteMs, rssKb: s.VmRSS, beyondGuestKb: s.VmRSS - (s.RssShmem ?? 0) });
        }, 500);
      }
    });
    child.on('exit', (code) => {
      if (firstByteMs < 0) {
        clearTimeout(timer);
        reject(new Error(`${cmd} exited (${code}) before any serial output: ${errors.slice(-800)}`));
      }
    });
  });
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function run(label: string, cmd: string, args: string[], runs: number): Promise<void> {
  const samples: Sample[] = [];
  try {
    for (let i = 0; i < runs; i++) samples.push(await measure(cmd, args));
  } catch (err) {
    console.log(JSON.stringify({ vmm: label, error: (err as Error).message.split('\n')[0] }));
    return;
  }
  console.log(
    JSON.stringify({
      vmm: label,
      runs,
      firstSerialByteMs: Number(median(samples.map((s) => s.firstByteMs)).toFixed(1)),
      rssKb: median(samples.map((s) => s.rssKb)),
      rssBeyondGuestRamKb: median(samples.map((s) => s.beyondGuestKb)),
    }),
  );
}

const runs = Number(process.argv[2] ?? 5);
const guest = ensureTinyGuest();
await run('vio4wd-vmm', 'node', [resolve(repoRoot, 'bin/vio4wd-vmm'), '-kernel', guest, '-m', '256M', '-machine', 'mem-share=on', '-serial', 'stdio'], runs);
await run(
  'qemu-system-x86_64 -M microvm',
  'qemu-system-x86_64',
  [
    '-M', 'microvm,accel=kvm,memory-backend=ram0', '-object', 'memory-backend-memfd,id=ram0,size=256M,share=on',
    '-cpu', 'host,-arch-capabilities', '-m', '256M', '-nodefaults', '-no-user-config', '-nographic', '-serial', 'stdio',
    '-kernel', guest,
  ],
  runs,
);
