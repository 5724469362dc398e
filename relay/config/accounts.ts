// Socket owner and group lookup. Node has no getpwnam, and the accounts the sockets are handed to
// (libvirt-qemu, qemu, kvm) are local system accounts, so /etc/passwd and /etc/group are read directly.
import { readFileSync } from 'node:fs';
import type { Account } from './types.js';

export interface AccountFiles {
  passwd: string;
  group: string;
}

export const SYSTEM_ACCOUNT_FILES: AccountFiles = { passwd: '/etc/passwd', group: '/etc/group' };

/** The highest id chown accepts; (uid_t)-1 means "leave unchanged" and is not a valid id. */
const MAX_ID = 0xfffffffe;

function idsByName(path: string, what: string): Map<string, number> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new Error(`cannot read ${path} to look up the socket ${what}: ${(err as Error).message}`);
  }
  const ids = new Map<string, number>();
  for (const line of text.split('\n')) {
    const fields = line.split(':');
    if (fields.length < 3 || fields[0] === '' || line.startsWith('#')) continue;
    const id = Number(fields[2]);
    if (Number.isInteger(id) && !ids.has(fields[0])) ids.set(fields[0], id);
  }
  return ids;
}

function lookup(nameOrId: string, path: string, what: 'user' | 'group'): Account {
  if (/^\d+$/.test(nameOrId)) {
    const id = Number(nameOrId);
    if (id > MAX_ID) throw new Error(`${what} id ${nameOrId} is above ${MAX_ID}`);
    return { id, name: nameOrId };
  }
  const id = idsByName(path, what).get(nameOrId);
  if (id === undefined) throw new Error(`no ${what} named "${nameOrId}" in ${path}`);
  return { id, name: nameOrId };
}

export function lookupUser(nameOrId: string, files: AccountFiles = SYSTEM_ACCOUNT_FILES): Account {
  return lookup(nameOrId, files.passwd, 'user');
}

export function lookupGroup(nameOrId: string, files: AccountFiles = SYSTEM_ACCOUNT_FILES): Account {
  return lookup(nameOrId, files.group, 'group');
}

/**
 * The accounts Debian and Ubuntu's libvirt runs QEMU as. A blank VIRTIOFWD_SOCKET_OWNER or
 * VIRTIOFWD_SOCKET_GROUP means these, where they exist, as it did for the original daemon.
 */
export const LIBVIRT_QEMU_USER = 'libvirt-qemu';
export const LIBVIRT_QEMU_GROUP = 'kvm';

/** How the owner or group of the vhost-user sockets was chosen. */
export type AccountOrigin =
  /** VIRTIOFWD_SOCKET_OWNER / VIRTIOFWD_SOCKET_GROUP named it. */
  | 'configured'
  /** Blank, and libvirt's account exists: the original's default. */
  | 'libvirt default'
  /** Blank, and libvirt's account does not exist (or the daemon cannot give files away). */
  | 'daemon';

/** Who may use the vhost-user sockets and their directory. null: the daemon's own user / group. */
export interface SocketAccess {
  owner: Account | null;
  group: Account | null;
  ownerOrigin: AccountOrigin;
  groupOrigin: AccountOrigin;
}

function tryLookup(lookupFn: () => Account): Account | null {
  try {
    return lookupFn();
  } catch {
    return null;
  }
}

/**
 * The owner and group the sockets get: the configured ones, or for a blank setting libvirt's
 * libvirt-qemu / kvm where they exist. Only a daemon running as root can hand files to another
 * user, so the libvirt defaults apply only then.
 */
export function socketAccessFor(
  configured: { socketOwner: Account | null; socketGroup: Account | null },
  opts: { files?: AccountFiles; runningAsRoot?: boolean } = {},
): SocketAccess {
  const files = opts.files ?? SYSTEM_ACCOUNT_FILES;
  const root = opts.runningAsRoot ?? (typeof process.geteuid === 'function' && process.geteuid() === 0);
  const owner = configured.socketOwner ?? (root ? tryLookup(() => lookupUser(LIBVIRT_QEMU_USER, files)) : null);
  const group = configured.socketGroup ?? (root ? tryLookup(() => lookupGroup(LIBVIRT_QEMU_GROUP, files)) : null);
  return {
    owner,
    group,
    ownerOrigin: configured.socketOwner ? 'configured' : owner ? 'libvirt default' : 'daemon',
    groupOrigin: configured.socketGroup ? 'configured' : group ? 'libvirt default' : 'daemon',
  };
}
