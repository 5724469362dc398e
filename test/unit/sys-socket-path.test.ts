// claimSocketPath may remove only a socket that nobody listens on; these put real files, a real
// listener and a real stale socket at the path.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { claimSocketPath, inspectSocketPath, probeSocketPath, SocketPathError } from '../../sys/socket-path.js';
import { unixListen } from '../../sys/unix-socket.js';
import { close } from '../../sys/fd.js';

let dir = '';
const servers: Server[] = [];
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'sockpath-'));
});
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
  rmSync(dir, { recursive: true, force: true });
});

/** A socket file whose listener has gone: bound, listened, closed (the file stays). */
function staleSocket(path: string): void {
  close(unixListen(path, 1));
  expect(lstatSync(path).isSocket()).toBe(true);
}

describe('claimSocketPath', () => {
  it('accepts a free path in an existing directory and creates nothing', () => {
    const path = join(dir, 'free.sock');
    expect(claimSocketPath(path)).toBe('free');
    expect(existsSync(path)).toBe(false);
  });

  it('removes a stale socket', () => {
    const path = join(dir, 'stale.sock');
    staleSocket(path);
    expect(probeSocketPath(path)).toBe('stale');
    expect(existsSync(path)).toBe(true); // probing changes nothing
    expect(claimSocketPath(path)).toBe('stale');
    expect(existsSync(path)).toBe(false);
  });

  it('leaves a regular file alone', () => {
    const path = join(dir, 'precious');
    writeFileSync(path, 'data');
    expect(() => claimSocketPath(path)).toThrow(SocketPathError);
    expect(() => claimSocketPath(path)).toThrow(`${path} exists and is not a socket; it is left alone`);
    expect(readFileSync(path, 'utf8')).toBe('data');
  });

  it('leaves a directory alone', () => {
    const path = join(dir, 'sub');
    mkdirSync(path);
    expect(() => claimSocketPath(path)).toThrow(/exists and is not a socket/);
    expect(lstatSync(path).isDirectory()).toBe(true);
  });

  it('refuses a socket another process listens on, and it keeps working', async () => {
    const path = join(dir, 'live.sock');
    // The probe connects and hangs up at once: the listener sees a short-lived connection.
    const server = createServer((c) => {
      c.on('error', () => undefined);
      c.end('still here');
    });
    servers.push(server);
    await new Promise<void>((r) => server.listen(path, r));
    expect(() => claimSocketPath(path)).toThrow(`${path} is in use: another process is listening on it`);
    const { connect } = await import('node:net');
    const reply = await new Promise<string>((resolve, reject) => {
      let text = '';
      connect(path).on('data', (d) => (text += d)).on('end', () => resolve(text)).on('error', reject);
    });
    expect(reply).toBe('still here');
  });

  it('refuses a path whose directory does not exist, and does not create it', () => {
    const path = join(dir, 'missing', 'x.sock');
    expect(() => claimSocketPath(path)).toThrow(`directory ${join(dir, 'missing')} does not exist`);
    expect(existsSync(join(dir, 'missing'))).toBe(false);
  });

  it('refuses a path under a regular file', () => {
    writeFileSync(join(dir, 'file'), '');
    expect(() => claimSocketPath(join(dir, 'file', 'x.sock'))).toThrow(/cannot be examined \(ENOTDIR\)|is not a directory/);
  });

  it('refuses a path longer than sockaddr_un holds', () => {
    const path = join(dir, 'x'.repeat(120));
    expect(() => claimSocketPath(path)).toThrow(/bytes; a unix socket path may have at most 107/);
  });
});

describe('inspectSocketPath (for clients: no connection is made)', () => {
  it('says absent or socket, and refuses anything else', async () => {
    expect(inspectSocketPath(join(dir, 'none.sock'))).toBe('absent');
    let connections = 0;
    const path = join(dir, 'served.sock');
    const server = createServer((c) => {
      connections++;
      c.destroy();
    });
    servers.push(server);
    await new Promise<void>((r) => server.listen(path, r));
    expect(inspectSocketPath(path)).toBe('socket');
    await new Promise((r) => setTimeout(r, 100));
    expect(connections).toBe(0);
    writeFileSync(join(dir, 'plain'), 'x');
    expect(() => inspectSocketPath(join(dir, 'plain'))).toThrow(/exists and is not a socket/);
    expect(() => inspectSocketPath(join(dir, 'nodir', 'x.sock'))).toThrow(/directory .*nodir does not exist/);
  });
});
