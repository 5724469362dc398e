// Network namespaces and veth pairs: the test hosts and VF stand-ins of the suite.
import { existsSync, readFileSync } from 'node:fs';
import { run, isRoot, hasBinary, requireOrSkip } from './env.js';

export function requireRoot(): boolean {
  return requireOrSkip(isRoot(), 'this test needs root (network namespaces, AF_PACKET, hugepages)');
}

export function requireBinary(name: string): boolean {
  return requireOrSkip(hasBinary(name), `this test needs the program ${name}`);
}

export function createNetns(name: string): void {
  run('ip', ['netns', 'add', name]);
  run('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
}

export function deleteNetns(name: string): void {
  if (existsSync(`/run/netns/${name}`)) {
    try {
      run('ip', ['netns', 'delete', name]);
    } catch {
      /* already gone */
    }
  }
}

/**
 * A veth pair `a`—`b`, both up, `b` moved into `nsB` if given. `noIpv6` turns IPv6 off on both
 * ends, so router solicitations and MLD reports do not add frames to what a test counts.
 */
export function createVethPair(a: string, b: string, opts: { nsB?: string; mtu?: number; noIpv6?: boolean } = {}): void {
  run('ip', ['link', 'add', a, 'type', 'veth', 'peer', 'name', b]);
  // Before the links come up, so that they send nothing; `b`'s setting is made in its final
  // namespace (a move between namespaces gives a device that namespace's defaults again).
  if (opts.noIpv6) run('sysctl', ['-qw', `net.ipv6.conf.${a}.disable_ipv6=1`]);
  if (opts.mtu) {
    run('ip', ['link', 'set', a, 'mtu', String(opts.mtu)]);
    run('ip', ['link', 'set', b, 'mtu', String(opts.mtu)]);
  }
  if (opts.nsB) {
    run('ip', ['link', 'set', b, 'netns', opts.nsB]);
    if (opts.noIpv6) run('ip', ['netns', 'exec', opts.nsB, 'sysctl', '-qw', `net.ipv6.conf.${b}.disable_ipv6=1`]);
    run('ip', ['-n', opts.nsB, 'link', 'set', b, 'up']);
  } else {
    if (opts.noIpv6) run('sysctl', ['-qw', `net.ipv6.conf.${b}.disable_ipv6=1`]);
    run('ip', ['link', 'set', b, 'up']);
  }
  run('ip', ['link', 'set', a, 'up']);
}

export function deleteLink(name: string): void {
  if (existsSync(`/sys/class/net/${name}`)) {
    try {
      run('ip', ['link', 'delete', name]);
    } catch {
      /* already gone */
    }
  }
}

export function nsExec(ns: string, cmd: string, args: string[], opts: { timeoutMs?: number } = {}): string {
  return run('ip', ['netns', 'exec', ns, cmd, ...args], opts);
}

/** Reads an interface counter such as rx_packets from sysfs (root namespace) or through `ip netns exec`. */
export function linkCounter(ifname: string, counter: string, ns?: string): number {
  if (!ns) return Number(readFileSync(`/sys/class/net/${ifname}/statistics/${counter}`, 'utf8'));
  return Number(nsExec(ns, 'cat', [`/sys/class/net/${ifname}/statistics/${counter}`]).trim());
}

let tagCounter = Math.floor(Math.random() * 100);

/** A short unique suffix for names of links and namespaces (interface names are limited to 15 bytes). */
export function uniqueTag(): string {
  // A counter, not a random draw: rigs of one file live at the same time, and two draws gave
  // them the same names one time in a hundred.
  tagCounter = (tagCounter + 1) % 100;
  return `${process.pid % 10000}${String(tagCounter).padStart(2, '0')}`;
}
