// A TCP listen address as the configuration writes it: HOST:PORT, [IPv6]:PORT, or PORT alone,
// which means the loopback address. The metrics endpoint is the one user: its counters say which
// VMs exist and how busy they are, so it listens on loopback unless a host is written out.

export interface ListenAddress {
  /** An IPv4 address, an IPv6 address (without brackets), or a host name. */
  host: string;
  /** 0 lets the kernel pick a free port (the daemon logs the one it got). */
  port: number;
}

export const LOOPBACK_HOST = '127.0.0.1';

const IPV4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;
const HOST_NAME = /^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

function parsePort(text: string): number {
  if (!/^\d{1,5}$/.test(text) || Number(text) > 65535) throw new Error(`port "${text}" is not a number from 0 to 65535`);
  return Number(text);
}

/**
 * Reads HOST:PORT, [IPv6]:PORT or PORT; blank or `off` gives null (nothing listens). Throws an
 * Error saying what was expected; the caller names the variable.
 */
export function parseListenAddress(text: string): ListenAddress | null {
  const t = text.trim();
  if (t === '' || t.toLowerCase() === 'off') return null;
  if (/^\d+$/.test(t)) return { host: LOOPBACK_HOST, port: parsePort(t) };
  if (t.includes('/')) throw new Error('expected HOST:PORT without a scheme or a path');
  const bracketed = /^\[([^\]]*)\]:(.*)$/.exec(t);
  if (bracketed) {
    const host = bracketed[1];
    if (!/^[0-9A-Fa-f:.]+$/.test(host) || !host.includes(':')) throw new Error(`"[${host}]" is not an IPv6 address`);
    return { host, port: parsePort(bracketed[2]) };
  }
  if (t.startsWith('[')) throw new Error('expected HOST:PORT, [IPv6]:PORT, or a port alone for the loopback address');
  const colon = t.lastIndexOf(':');
  if (colon < 0) throw new Error('expected HOST:PORT, [IPv6]:PORT, or a port alone for the loopback address');
  const host = t.slice(0, colon);
  const portText = t.slice(colon + 1);
  if (host === '') {
    throw new Error('the host is missing: write 0.0.0.0:PORT to listen on every address, or the port alone for loopback');
  }
  if (host.includes(':')) throw new Error('an IPv6 address is written in brackets: [::1]:PORT');
  const v4 = IPV4.exec(host);
  if (v4) {
    if (v4.slice(1).some((octet) => Number(octet) > 255)) throw new Error(`"${host}" is not an IPv4 address`);
  } else if (/^[\d.]+$/.test(host) || !HOST_NAME.test(host)) {
    throw new Error(`"${host}" is neither an IP address nor a host name`);
  }
  return { host, port: parsePort(portText) };
}

/** HOST:PORT, with brackets around an IPv6 address. */
export function formatListenAddress(address: ListenAddress): string {
  return address.host.includes(':') ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`;
}
