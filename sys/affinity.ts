// CPU pinning for worker threads: sched_setaffinity on the calling thread (tid 0) or a given tid.
import { readdirSync } from 'node:fs';
import { libc, check } from './libc.js';

const SYS_gettid = 186;
const CPU_SETSIZE = 1024;
const CPU_SET_BYTES = CPU_SETSIZE / 8;

const syscallNative = libc.func('long syscall(long number, ...)');
const setAffinityNative = libc.func('int sched_setaffinity(int pid, size_t cpusetsize, const void *mask)');
const getAffinityNative = libc.func('int sched_getaffinity(int pid, size_t cpusetsize, void *mask)');

/** The kernel thread id of the calling thread (each worker thread has its own). */
export function gettid(): number {
  return check(Number(syscallNative(SYS_gettid)), 'gettid');
}

export function setAffinity(cpus: readonly number[], tid = 0): void {
  if (cpus.length === 0) throw new RangeError(`setAffinity(tid ${tid}): empty CPU list`);
  const mask = new Uint8Array(CPU_SET_BYTES);
  for (const cpu of cpus) {
    if (!Number.isInteger(cpu) || cpu < 0 || cpu >= CPU_SETSIZE) throw new RangeError(`setAffinity(tid ${tid}): bad CPU ${cpu}`);
    mask[cpu >> 3] |= 1 << (cpu & 7);
  }
  check(setAffinityNative(tid, CPU_SET_BYTES, mask), 'sched_setaffinity', `tid ${tid} to CPUs ${cpus.join(',')}`);
}

const prctlNative = libc.func('int prctl(int option, unsigned long a2, unsigned long a3, unsigned long a4, unsigned long a5)');
const PR_SET_TIMERSLACK = 29;

/**
 * How late the kernel may wake the calling thread from a timed sleep, in ns (PR_SET_TIMERSLACK).
 * The default, 50 µs, would make an adaptive worker's naps twice as long as asked.
 */
export function setTimerSlack(ns: number): void {
  check(prctlNative(PR_SET_TIMERSLACK, ns, 0, 0, 0), 'prctl', `PR_SET_TIMERSLACK ${ns}`);
}

export function getAffinity(tid = 0): number[] {
  const mask = new Uint8Array(CPU_SET_BYTES);
  check(getAffinityNative(tid, CPU_SET_BYTES, mask), 'sched_getaffinity', `tid ${tid}`);
  const cpus: number[] = [];
  for (let cpu = 0; cpu < CPU_SETSIZE; cpu++) if (mask[cpu >> 3] & (1 << (cpu & 7))) cpus.push(cpu);
  return cpus;
}

/** The kernel thread ids of this process's threads, right now (/proc/self/task). */
export function threadIds(): number[] {
  return readdirSync('/proc/self/task').map(Number).filter((tid) => Number.isInteger(tid) && tid > 0);
}
