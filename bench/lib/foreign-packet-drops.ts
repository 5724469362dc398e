// The kernel's ring-overflow drops (PACKET_STATISTICS tp_drops) of another process's AF_PACKET
// sockets. DPDK 22.11's net_af_packet does not report them (its imissed stays 0), and they are not
// the sk_drops that `ss -m` shows, so the bench borrows each socket with pidfd_getfd(2) and reads
// them itself. Reading resets the kernel's count: use it only on a process that never reads its
// own (DPDK's relay), never on ours, whose worker folds them into its counters.
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { close } from '../../sys/fd.js';
import { check, libc } from '../../sys/libc.js';
import { readPacketStatistics } from '../../sys/packet-socket.js';

const SYS_pidfd_open = 434;
const SYS_pidfd_getfd = 438;
const syscall = libc.func('long syscall(long number, ...)');

/** Inodes of every AF_PACKET socket on the machine, from /proc/net/packet. */
function packetSocketInodes(): Set<string> {
  const lines = readFileSync('/proc/net/packet', 'utf8').trim().split('\n').slice(1);
  return new Set(lines.map((l) => l.trim().split(/\s+/)[8]).filter(Boolean));
}

/** Sum of tp_drops over the AF_PACKET sockets of process `pid` (x86-64 syscall numbers). */
export function foreignPacketDrops(pid: number): number {
  const inodes = packetSocketInodes();
  const fds: number[] = [];
  for (const name of readdirSync(`/proc/${pid}/fd`)) {
    let target = '';
    try {
      target = readlinkSync(`/proc/${pid}/fd/${name}`);
    } catch {
      continue;
    }
    const m = /^socket:\[(\d+)\]$/.exec(target);
    if (m && inodes.has(m[1])) fds.push(Number(name));
  }
  if (fds.length === 0) return 0;
  const pidfd = check(Number(syscall(SYS_pidfd_open, 'int', pid, 'unsigned int', 0)), 'pidfd_open', `pid ${pid}`);
  const out = new Uint32Array(3);
  const len = new Uint32Array([12]);
  let drops = 0;
  try {
    for (const fd of fds) {
      const copy = check(Number(syscall(SYS_pidfd_getfd, 'int', pidfd, 'int', fd, 'unsigned int', 0)), 'pidfd_getfd', `fd ${fd} of pid ${pid}`);
      try {
        len[0] = 12;
        drops += readPacketStatistics(copy, out, len).drops;
      } finally {
        close(copy);
      }
    }
  } finally {
    close(pidfd);
  }
  return drops;
}
