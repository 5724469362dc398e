// Kernel network interface names, as OVSDB rows, IPC commands and the configuration carry them.

/** Linux netdev names: 1..15 bytes, no '/', ':' or white space, not "." or "..". */
export function isValidInterfaceName(name: string): boolean {
  return /^[^/:\s]{1,15}$/.test(name) && name !== '.' && name !== '..';
}

/** Throws an Error naming `name` when it cannot be an interface name. */
export function checkInterfaceName(name: string): void {
  if (!isValidInterfaceName(name)) {
    throw new Error(`${JSON.stringify(name)} is not a valid interface name (1 to 15 characters, no '/', ':' or spaces)`);
  }
}
