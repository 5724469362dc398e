// A VM's surroundings in the relay tests that play the VM themselves (test-vm.ts): the veth pair
// standing in for its VF with the peer in a network namespace, a UDP sender in that namespace,
// checks that one frame goes each way, and the daemon's fd and RSS figures.
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { run } from './env.js';
import { createNetns, createVethPair, deleteLink, deleteNetns, linkCounter, nsExec } from './netns.js';
import { sleep, startProcess, waitFor, type StartedProcess } from './processes.js';
import { testFrame, type TestVm } from './test-vm.js';

export const BROADCAST = new Uint8Array(6).fill(0xff);

/** One VM's surroundings: its relay id, the veth pair standing in for its VF, and a UDP sender in the namespace. */
export interface Site {
  relayId: number;
  ns: string;
  vf: string;
  peer: string;
  ip: string;
  /** The namespace side is 10.<subnet>.0.1, the VM 10.<subnet>.0.2. */
  subnet: number;
  mac: Uint8Array;
  sender: StartedProcess | null;
}

/** Names for relay `relayId`'s site; `prefix` keeps test files that run at once apart (link names ≤ 15 bytes). */
export function makeSite(prefix: string, relayId: number, tag: string, subnet: number): Site {
  return {
    relayId,
    ns: `${prefix}ns${relayId}${tag}`,
    vf: `${prefix}vf${relayId}${tag}`,
    peer: `${prefix}pr${relayId}${tag}`,
    ip: `10.${subnet}.0.2`,
    subnet,
    mac: new Uint8Array([0x02, 0, 0, subnet, 0, 2]),
    sender: null,
  };
}

// Sends UDP datagrams to the VM's address on request ("count interval" per line); a static
// neighbour entry makes them leave as unicast frames at once.
const SENDER = `
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
print("ready", flush=True)
for line in sys.stdin:
    n, gap = line.split()
    for i in range(int(n)):
        s.sendto(b"vio4wd-test", (sys.argv[1], 9))
        time.sleep(float(gap))
`;

export function setUpSite(s: Site): void {
  createNetns(s.ns);
  createVethPair(s.vf, s.peer, { nsB: s.ns });
  // Nothing else may talk on the link, or a count of frames would prove nothing.
  run('sysctl', ['-q', '-w', `net.ipv6.conf.${s.vf}.disable_ipv6=1`]);
  nsExec(s.ns, 'sysctl', ['-q', '-w', 'net.ipv6.conf.all.disable_ipv6=1']);
  nsExec(s.ns, 'ip', ['addr', 'add', `10.${s.subnet}.0.1/24`, 'dev', s.peer]);
  const mac = [...s.mac].map((b) => b.toString(16).padStart(2, '0')).join(':');
  nsExec(s.ns, 'ip', ['neigh', 'add', s.ip, 'lladdr', mac, 'dev', s.peer]);
}

export async function startSender(s: Site): Promise<void> {
  s.sender = startProcess('ip', ['netns', 'exec', s.ns, 'python3', '-u', '-c', SENDER, s.ip], { label: `sender-${s.relayId}`, stdio: ['pipe', 'pipe', 'pipe'] });
  await s.sender.waitForOutput(/ready/, 10_000);
}

export function sendFromPeer(s: Site, count = 1, gapSeconds = 0): void {
  s.sender!.proc.stdin!.write(`${count} ${gapSeconds}\n`);
}

let marker = 1;

/** VM → VF: a frame from the VM reaches the veth peer in the namespace. */
export async function checkVmToVf(vm: TestVm, s: Site, what: string): Promise<void> {
  const before = linkCounter(s.peer, 'rx_packets', s.ns);
  vm.sendFrame(testFrame(BROADCAST, s.mac, marker++));
  await waitFor(() => linkCounter(s.peer, 'rx_packets', s.ns) > before, 3000, `${what}: a frame from ${vm.name} on ${s.peer}`, 20);
}

/** VF → VM: a datagram sent in the namespace arrives in the VM's receive ring. */
export async function checkVfToVm(vm: TestVm, s: Site, what: string): Promise<void> {
  vm.receiveFrames();
  sendFromPeer(s);
  await waitFor(
    () => vm.receiveFrames().some((f) => f[12] === 0x08 && f[13] === 0x00 && f.subarray(0, 6).every((b, i) => b === s.mac[i])),
    3000,
    `${what}: a datagram from ${s.ns} in ${vm.name}'s receive ring`,
    10,
  );
}

export async function checkBothWays(vm: TestVm, s: Site, what: string): Promise<void> {
  await checkVmToVf(vm, s, what);
  await checkVfToVm(vm, s, what);
}

export function processStats(pid: number): { fds: number; rssKiB: number; targets: string[] } {
  const targets = readdirSync(`/proc/${pid}/fd`).map((fd) => {
    try {
      return readlinkSync(`/proc/${pid}/fd/${fd}`).replace(/\d+/g, 'N');
    } catch {
      return 'gone';
    }
  });
  const rss = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return { fds: targets.length, rssKiB: Number(rss?.[1] ?? 0), targets };
}

/** The kinds of fd the daemon holds more of at `end` than at `start`, for a leak's failure message. */
export function fdGrowth(start: { targets: string[] }, end: { targets: string[] }): string {
  const count = (xs: string[]) => xs.reduce((m, x) => m.set(x, (m.get(x) ?? 0) + 1), new Map<string, number>());
  const a = count(start.targets);
  const b = count(end.targets);
  return [...new Set([...a.keys(), ...b.keys()])].filter((k) => a.get(k) !== b.get(k)).map((k) => `${k}: ${a.get(k) ?? 0} → ${b.get(k) ?? 0}`).join(', ');
}

/** The daemon's fds once the last disconnection has been processed: the same count three reads in a row. */
export async function settledStats(pid: number): Promise<ReturnType<typeof processStats>> {
  let last = processStats(pid);
  for (let same = 0, tries = 0; same < 3 && tries < 40; tries++) {
    await sleep(100);
    const now = processStats(pid);
    same = now.fds === last.fds ? same + 1 : 0;
    last = now;
  }
  return last;
}


export async function tearDownSite(s: Site): Promise<void> {
  s.sender?.proc.stdin?.end();
  await s.sender?.stop();
  deleteLink(s.vf);
  deleteNetns(s.ns);
}
