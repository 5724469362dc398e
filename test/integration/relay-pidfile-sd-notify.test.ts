// Readiness notification to a real unix datagram socket, bound the way systemd binds NOTIFY_SOCKET.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { notify, notifyReady, notifyStatus, notifyStopping } from '../../daemon/sd-notify.js';
import { findBinary } from '../support/env.js';
import { requireBinary } from '../support/netns.js';
import { startProcess, stopAll } from '../support/processes.js';

const scratch = mkdtempSync(join(tmpdir(), `vio4wd-notify-${process.pid}-`));
afterAll(async () => {
  await stopAll();
  rmSync(scratch, { recursive: true, force: true });
});

/** A python3 receiver bound to `address` ('@name' = abstract) that prints each datagram as JSON. */
function receiver(address: string) {
  const script = `
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
address = sys.argv[1]
s.bind('\\0' + address[1:] if address.startswith('@') else address)
print('BOUND', flush=True)
while True:
    data = s.recv(4096)
    print('GOT ' + json.dumps(data.decode()), flush=True)
`;
  return startProcess(findBinary('python3')!, ['-c', script, address], { label: 'notify receiver' });
}

async function received(proc: ReturnType<typeof receiver>, count: number): Promise<string[]> {
  const pattern = new RegExp(`(?:GOT .*\\n){${count}}`);
  await proc.waitForOutput(pattern, 10_000);
  return [...proc.output().matchAll(/^GOT (.*)$/gm)].map((m) => JSON.parse(m[1]) as string);
}

describe('sd-notify', () => {
  it('does nothing without NOTIFY_SOCKET', () => {
    expect(notify('READY=1', {})).toBe(false);
    expect(notifyReady(undefined, { NOTIFY_SOCKET: '' })).toBe(false);
  });

  it('sends READY=1, STATUS and STOPPING to a socket path', async () => {
    if (!requireBinary('python3')) return;
    const path = join(scratch, 'notify.sock');
    const proc = receiver(path);
    await proc.waitForOutput(/BOUND/, 10_000);
    const env = { NOTIFY_SOCKET: path };
    expect(notifyReady('2 workers, 0 relays', env)).toBe(true);
    expect(notifyStatus('relay 1 connected', env)).toBe(true);
    expect(notifyStopping(env)).toBe(true);
    expect(await received(proc, 3)).toEqual(['READY=1\nSTATUS=2 workers, 0 relays', 'STATUS=relay 1 connected', 'STOPPING=1']);
    await proc.stop();
  });

  it('reaches an abstract socket named with @', async () => {
    if (!requireBinary('python3')) return;
    const name = `@vio4wd-notify-${process.pid}`;
    const proc = receiver(name);
    await proc.waitForOutput(/BOUND/, 10_000);
    expect(notify('READY=1', { NOTIFY_SOCKET: name })).toBe(true);
    expect(await received(proc, 1)).toEqual(['READY=1']);
    await proc.stop();
  });

  it('fails with the socket named when nothing listens, and refuses a relative path', () => {
    const path = join(scratch, 'nobody.sock');
    expect(() => notify('READY=1', { NOTIFY_SOCKET: path })).toThrow(`cannot notify systemd through ${path}:`);
    expect(() => notify('READY=1', { NOTIFY_SOCKET: 'relative.sock' })).toThrow(
      'NOTIFY_SOCKET="relative.sock" is neither an absolute path nor an abstract socket (@name)',
    );
  });
});
