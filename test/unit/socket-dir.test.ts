// Who may use the vhost-user sockets: a blank owner/group means libvirt's QEMU accounts where they
// exist, and the socket directory is created, adopted or left alone with the owner, group and
// mode that let that group in and keep everyone else out.
import { chownSync, lstatSync, mkdirSync, mkdtempSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { socketAccessFor, type SocketAccess } from '../../relay/config/accounts.js';
import { describeSocketAccess, prepareSocketDir, SOCKET_DIR_MODE } from '../../relay/control/socket-dir.js';
import { isRoot } from '../support/env.js';

const dir = mkdtempSync(join(tmpdir(), 'vio4wd-sockdir-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function accountFiles(withLibvirt: boolean) {
  const sub = mkdtempSync(join(dir, 'accounts-'));
  const files = { passwd: join(sub, 'passwd'), group: join(sub, 'group') };
  writeFileSync(files.passwd, `root:x:0:0:root:/root:/bin/bash\n${withLibvirt ? 'libvirt-qemu:x:64055:107::/var/lib/libvirt:/usr/sbin/nologin\n' : ''}`);
  writeFileSync(files.group, `root:x:0:\n${withLibvirt ? 'kvm:x:107:\n' : ''}`);
  return files;
}

describe('socketAccessFor', () => {
  const blank = { socketOwner: null, socketGroup: null };

  it('fills a blank owner and group with libvirt-qemu and kvm where they exist, as the original did', () => {
    const access = socketAccessFor(blank, { files: accountFiles(true), runningAsRoot: true });
    expect(access).toEqual({
      owner: { id: 64055, name: 'libvirt-qemu' },
      group: { id: 107, name: 'kvm' },
      ownerOrigin: 'libvirt default',
      groupOrigin: 'libvirt default',
    });
    expect(describeSocketAccess(access).message).toMatch(/owner libvirt-qemu \(64055, libvirt default for a blank setting\), group kvm \(107, libvirt default/);
  });

  it('keeps what is configured, and fills only the blank one', () => {
    const access = socketAccessFor({ socketOwner: { id: 107, name: 'qemu' }, socketGroup: null }, { files: accountFiles(true), runningAsRoot: true });
    expect(access.owner).toEqual({ id: 107, name: 'qemu' });
    expect(access.ownerOrigin).toBe('configured');
    expect(access.group).toEqual({ id: 107, name: 'kvm' });
  });

  it('says loudly that only root can connect when neither libvirt account exists', () => {
    const access = socketAccessFor(blank, { files: accountFiles(false), runningAsRoot: true });
    expect(access).toMatchObject({ owner: null, group: null, ownerOrigin: 'daemon', groupOrigin: 'daemon' });
    if (isRoot()) {
      const d = describeSocketAccess(access);
      expect(d.onlyRoot).toBe(true);
      expect(d.message).toMatch(/ONLY ROOT CAN CONNECT: set VIRTIOFWD_SOCKET_OWNER/);
    }
  });

  it('does not pick libvirt accounts for a daemon that is not root (it could not give the sockets away)', () => {
    expect(socketAccessFor(blank, { files: accountFiles(true), runningAsRoot: false })).toMatchObject({ owner: null, group: null });
  });
});

describe.runIf(isRoot())('prepareSocketDir', () => {
  const access: SocketAccess = { owner: { id: 4321, name: '4321' }, group: { id: 4322, name: '4322' }, ownerOrigin: 'configured', groupOrigin: 'configured' };

  it('creates a missing directory (and its parents) with the socket owner, group and mode 2770', () => {
    const path = join(dir, 'new/parent/sockets');
    const st = prepareSocketDir(path, access);
    expect(st).toMatchObject({ action: 'created', mode: 0o2770, uid: 4321, gid: 4322 });
    expect(SOCKET_DIR_MODE).toBe(0o2770);
    const real = statSync(path);
    expect(real.mode & 0o7777).toBe(0o2770);
    expect(statSync(join(dir, 'new/parent')).mode & 0o777).toBe(0o755);
  });

  it('adopts an existing directory that holds only sockets and is the daemon\'s', () => {
    const path = join(dir, 'existing');
    mkdirSync(path, { mode: 0o755 });
    expect(prepareSocketDir(path, access)).toMatchObject({ action: 'adopted', mode: 0o2770, uid: 4321, gid: 4322 });
    // Now the socket owner's: a restart adopts it again.
    expect(prepareSocketDir(path, access)).toMatchObject({ action: 'adopted' });
  });

  it('leaves alone a directory that holds other files, a symbolic link, and a directory of another user', () => {
    const shared = join(dir, 'shared');
    mkdirSync(shared, { mode: 0o755 });
    writeFileSync(join(shared, 'notes.txt'), 'x');
    expect(prepareSocketDir(shared, access)).toMatchObject({ action: 'left', mode: 0o755, uid: 0, reason: expect.stringMatching(/holds notes.txt/) });

    const link = join(dir, 'link');
    symlinkSync(shared, link);
    expect(prepareSocketDir(link, access)).toMatchObject({ action: 'left', reason: 'it is a symbolic link' });
    expect(lstatSync(shared).mode & 0o7777).toBe(0o755);

    const foreign = join(dir, 'foreign');
    mkdirSync(foreign, { mode: 0o777 });
    chownSync(foreign, 999, 999);
    expect(prepareSocketDir(foreign, access)).toMatchObject({ action: 'left', reason: expect.stringMatching(/belongs to uid 999/) });
  });

  it('refuses a path that is a file', () => {
    const file = join(dir, 'file');
    writeFileSync(file, '');
    expect(() => prepareSocketDir(file, access)).toThrow(/exists and is not a directory/);
  });
});
