// The directory of the vhost-user sockets and who may use it. A VM's QEMU connects to the relay's
// socket there (server mode) or creates its own socket there (client mode), so the directory must
// let the socket owner and group in, and must keep everyone else out: whoever can connect to a
// vhost-user socket, or put one in place of another, is handed a guest's whole memory.
import { chmodSync, chownSync, lstatSync, mkdirSync, readdirSync } from 'node:fs';
import { dirname } from 'node:path';
import type { SocketAccess } from '../config/accounts.js';

/**
 * rwx for the owner and the group, nothing for others; setgid so that every socket created in it
 * (QEMU's own, in client mode) belongs to the socket group whatever the creator's primary group.
 * Others get nothing because QEMU creates its client-mode socket with its own umask, and a
 * vhost-user socket anyone can reach gives away the guest's memory.
 */
export const SOCKET_DIR_MODE = 0o2770;

export interface SocketDirState {
  path: string;
  /** created: made by the daemon; adopted: existed and was given the owner, group and mode; left: existed and was not touched (see reason). */
  action: 'created' | 'adopted' | 'left';
  mode: number;
  uid: number;
  gid: number;
  /** Why an existing directory was left as it was. */
  reason?: string;
}

const daemonUid = (): number => (typeof process.geteuid === 'function' ? process.geteuid() : 0);

function state(path: string, action: SocketDirState['action'], reason?: string): SocketDirState {
  const st = lstatSync(path);
  return { path, action, mode: st.mode & 0o7777, uid: st.uid, gid: st.gid, reason };
}

function grant(path: string, access: SocketAccess): void {
  if (access.owner || access.group) chownSync(path, access.owner?.id ?? -1, access.group?.id ?? -1);
  // After chown, which may clear the setgid bit.
  chmodSync(path, SOCKET_DIR_MODE);
}

/** Why an existing directory must not be handed to the socket owner and group, or null when it may. */
function reasonToLeave(path: string, access: SocketAccess): string | null {
  const st = lstatSync(path);
  if (st.isSymbolicLink()) return 'it is a symbolic link';
  if (!st.isDirectory()) throw new Error(`vhost-user socket directory ${path} exists and is not a directory`);
  if (st.uid !== daemonUid() && st.uid !== access.owner?.id) {
    return `it belongs to uid ${st.uid}, neither the daemon nor the socket owner (whoever owns it can swap the sockets in it)`;
  }
  const other = readdirSync(path, { withFileTypes: true }).find((e) => !e.isSocket());
  if (other) return `it holds ${other.name}, which is not a socket, so it is not the relay's own directory`;
  return null;
}

/**
 * Makes `path` the directory of vhost-user sockets: created with the socket owner, group and
 * SOCKET_DIR_MODE when missing (its missing parents get 0755); an existing directory that holds
 * nothing but sockets and belongs to the daemon or the socket owner gets the same owner, group and
 * mode. Any other existing directory (/tmp, /run, one owned by another user, a symbolic link) is
 * left as it is, and the state says why. Throws when the directory cannot be created or given away.
 */
export function prepareSocketDir(path: string, access: SocketAccess): SocketDirState {
  let created = false;
  try {
    mkdirSync(dirname(path), { recursive: true, mode: 0o755 });
    // 0700 until the group and mode are set, so nobody gets in through a half-prepared directory.
    mkdirSync(path, { mode: 0o700 });
    created = true;
  } catch (err) {
    if ((err as { code?: string }).code !== 'EEXIST') {
      throw new Error(`vhost-user socket directory ${path}: cannot create it: ${(err as Error).message}`);
    }
  }
  if (!created) {
    const reason = reasonToLeave(path, access);
    if (reason) return state(path, 'left', reason);
  }
  try {
    grant(path, access);
  } catch (err) {
    throw new Error(
      `vhost-user socket directory ${path}: cannot give it owner ${access.owner?.name ?? '(unchanged)'}, group ${access.group?.name ?? '(unchanged)'} and mode ${SOCKET_DIR_MODE.toString(8)}: ${(err as Error).message}`,
    );
  }
  return state(path, created ? 'created' : 'adopted');
}

/** One line for the start log: who can reach the sockets, and how that was chosen. */
export function describeSocketAccess(access: SocketAccess): { message: string; onlyRoot: boolean } {
  const who = (a: SocketAccess['owner'], origin: string, fallback: string) =>
    a ? `${a.name} (${a.id}${origin === 'libvirt default' ? ', libvirt default for a blank setting' : ''})` : fallback;
  const owner = who(access.owner, access.ownerOrigin, "the daemon's own user");
  const group = who(access.group, access.groupOrigin, "the daemon's own group");
  const onlyRoot = !access.owner && !access.group && daemonUid() === 0;
  const message = onlyRoot
    ? "vhost-user sockets: VIRTIOFWD_SOCKET_OWNER and VIRTIOFWD_SOCKET_GROUP are blank and this machine has neither the user libvirt-qemu nor the group kvm, so the sockets and their directory stay root's and ONLY ROOT CAN CONNECT: set VIRTIOFWD_SOCKET_OWNER/VIRTIOFWD_SOCKET_GROUP to the user or group your VMs' QEMU runs as (for example qemu)"
    : `vhost-user sockets: owner ${owner}, group ${group}, mode 0660 (server mode); their directory: the same owner and group, mode ${SOCKET_DIR_MODE.toString(8)}`;
  return { message, onlyRoot };
}
