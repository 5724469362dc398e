// The wire of the benchmark: vethA (the relay's "VF", root namespace) ⇄ vethB (the peer, in its own
// network namespace). Counters of vethB are read through /proc/<pid>/net/dev of a process that
// lives in that namespace: a plain file read, no `ip netns exec` per sample (which would fork
// processes inside the measurement window).
import { existsSync, readFileSync } from 'node:fs';
import { run } from '../../test/support/env.js';

export interface Topology {
  ns: string;
  vethA: string;
  vethB: string;
}

export function topologyNames(tag: string): Topology {
  // Interface names are limited to 15 bytes.
  return { ns: `vbench${tag}`, vethA: `vbA${tag}`, vethB: `vbB${tag}` };
}

export function createTopology(t: Topology): void {
  run('ip', ['netns', 'add', t.ns]);
  // No IPv6 in the namespace: router solicitations and DAD would add frames to the counts.
  run('ip', ['netns', 'exec', t.ns, 'sysctl', '-qw', 'net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1']);
  run('ip', ['-n', t.ns, 'link', 'set', 'lo', 'up']);
  run('ip', ['link', 'add', t.vethA, 'type', 'veth', 'peer', 'name', t.vethB]);
  run('sysctl', ['-qw', `net.ipv6.conf.${t.vethA}.disable_ipv6=1`]);
  run('ip', ['link', 'set', t.vethB, 'netns', t.ns]);
  run('ip', ['-n', t.ns, 'link', 'set', t.vethB, 'up']);
  run('ip', ['link', 'set', t.vethA, 'up']);
}

/** Sets both ends' MTU (a jumbo case needs 9000 on the wire, the others 1500). */
export function setTopologyMtu(t: Topology, mtu: number): void {
  run('ip', ['link', 'set', t.vethA, 'mtu', String(mtu)]);
  run('ip', ['-n', t.ns, 'link', 'set', t.vethB, 'mtu', String(mtu)]);
}

/**
 * Caps what leaves vethB at `mpps` frames of `size` bytes a second with a token bucket (tbf counts
 * skb->len, the frame without FCS). The bucket holds 10 ms of traffic, so bursts stay short.
 */
export function limitVethBRate(t: Topology, mpps: number, size: number): void {
  const bytesPerSecond = Math.round(mpps * 1e6 * size);
  const burst = Math.max(size * 64, Math.round(bytesPerSecond / 100));
  run('ip', ['netns', 'exec', t.ns, 'tc', 'qdisc', 'replace', 'dev', t.vethB, 'root', 'tbf',
    'rate', `${bytesPerSecond * 8}bit`, 'burst', String(burst), 'latency', '20ms']);
}

/** Best effort: every step is tried even when an earlier one fails; returns what could not be removed. */
export function deleteTopology(t: Topology): string[] {
  const left: string[] = [];
  if (existsSync(`/sys/class/net/${t.vethA}`)) {
    try {
      run('ip', ['link', 'delete', t.vethA]);
    } catch (err) {
      left.push(`link ${t.vethA}: ${(err as Error).message}`);
    }
  }
  if (existsSync(`/run/netns/${t.ns}`)) {
    try {
      run('ip', ['netns', 'delete', t.ns]);
    } catch (err) {
      left.push(`netns ${t.ns}: ${(err as Error).message}`);
    }
  }
  return left;
}

export interface LinkCounters {
  rxPackets: number;
  rxDropped: number;
  txPackets: number;
}

export function rootLinkCounters(ifname: string): LinkCounters {
  const read = (c: string) => Number(readFileSync(`/sys/class/net/${ifname}/statistics/${c}`, 'utf8'));
  return { rxPackets: read('rx_packets'), rxDropped: read('rx_dropped'), txPackets: read('tx_packets') };
}

/** Parses the line of `ifname` in a /proc/net/dev table. */
export function parseNetDev(text: string, ifname: string): LinkCounters {
  for (const line of text.split('\n')) {
    const colon = line.indexOf(':');
    if (colon < 0 || line.slice(0, colon).trim() !== ifname) continue;
    const f = line.slice(colon + 1).trim().split(/\s+/).map(Number);
    // receive: bytes packets errs drop fifo frame compressed multicast | transmit: bytes packets ...
    return { rxPackets: f[1], rxDropped: f[3], txPackets: f[9] };
  }
  throw new Error(`/proc/net/dev has no line for ${ifname} (is the process reading it in the right namespace?)`);
}

/** Counters of an interface in another namespace, seen through a process that lives there. */
export function nsLinkCounters(pidInNs: number, ifname: string): LinkCounters {
  return parseNetDev(readFileSync(`/proc/${pidInNs}/net/dev`, 'utf8'), ifname);
}
