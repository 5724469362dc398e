// The IPC file monitor: commands written to a file (by default /tmp/vio_cmd), one per line:
//   add_port <netdev> [<relay id>]   (without an id, a VF's index under its PF is the relay id)
//   del_port <netdev>
// The directory is watched with inotify (fs.watch), the file is taken away (renamed) before it is
// read so a command is never run twice, and every line's outcome is logged.
import { closeSync, constants, existsSync, fstatSync, mkdirSync, openSync, readSync, renameSync, unlinkSync, watch, type FSWatcher } from 'node:fs';
import { basename, dirname } from 'node:path';
import type { Logger } from 'pino';
import type { NetdevResolver, RelayRegistry } from '../relay/registry-api.js';
import { MAX_RELAYS } from './protocol.js';
import { checkInterfaceName } from '../vocabulary/netdev-name.js';

export const DEFAULT_IPC_FILE = '/tmp/vio_cmd';
/** Writers open, write and close; waiting this long after the last event avoids reading half a write. */
const SETTLE_MS = 30;
const MAX_COMMAND_FILE_BYTES = 64 * 1024;

export type IpcCommand = { op: 'add_port'; netdev: string; relay?: number } | { op: 'del_port'; netdev: string };

/** Parses one line; throws with the reason. Blank lines and # comments return null. */
export function parseIpcLine(line: string): IpcCommand | null {
  const text = line.trim();
  if (text === '' || text.startsWith('#')) return null;
  const words = text.split(/\s+/);
  const [op, netdev, id, ...rest] = words;
  if (op !== 'add_port' && op !== 'del_port') throw new Error(`unknown command ${JSON.stringify(op)} (expected add_port or del_port)`);
  if (netdev === undefined) throw new Error(`${op} needs an interface name`);
  checkInterfaceName(netdev);
  if (op === 'del_port') {
    if (id !== undefined) throw new Error(`del_port takes only an interface name, got extra ${JSON.stringify(words.slice(2).join(' '))}`);
    return { op, netdev };
  }
  if (rest.length > 0) throw new Error(`add_port takes an interface name and an optional relay id, got extra ${JSON.stringify(rest.join(' '))}`);
  if (id === undefined) return { op, netdev };
  if (!/^\d+$/.test(id) || Number(id) >= MAX_RELAYS) throw new Error(`relay id ${JSON.stringify(id)} is not in 0..${MAX_RELAYS - 1}`);
  return { op, netdev, relay: Number(id) };
}

export interface IpcMonitorOptions {
  file: string;
  resolveNetdev: NetdevResolver;
  /** Relay id of a VF given without one (its VF index); undefined for a non-VF. */
  vfIndexOf: (netdev: string) => number | undefined;
}

export class IpcMonitor {
  private watcher: FSWatcher | undefined;
  private settleTimer: NodeJS.Timeout | undefined;
  private queue: Promise<void> = Promise.resolve();
  private closed = false;
  /** Lines processed so far (for tests and logs). */
  processedLines = 0;

  constructor(
    private readonly registry: RelayRegistry,
    private readonly options: IpcMonitorOptions,
    private readonly logger: Logger,
  ) {}

  start(): void {
    const dir = dirname(this.options.file);
    const name = basename(this.options.file);
    try {
      mkdirSync(dir, { recursive: true, mode: 0o755 });
      this.watcher = watch(dir, { persistent: false }, (_event, filename) => {
        if (filename === null || filename === name) this.poke();
      });
    } catch (err) {
      throw new Error(`IPC monitor: cannot watch ${dir} for ${name}: ${(err as Error).message}`);
    }
    this.watcher.on('error', (err) => this.logger.error({ err }, `IPC monitor: watching ${dir} failed: ${err.message}`));
    this.logger.info({ file: this.options.file }, `IPC monitor watching ${this.options.file}`);
    // A command written before the daemon started is still honoured.
    if (existsSync(this.options.file)) this.poke();
  }

  /** Resolves once every command read so far has been carried out. */
  idle(): Promise<void> {
    return this.queue;
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.settleTimer);
    this.watcher?.close();
    await this.queue;
  }

  private poke(): void {
    if (this.closed) return;
    clearTimeout(this.settleTimer);
    this.settleTimer = setTimeout(() => {
      this.queue = this.queue.then(() => this.consume());
    }, SETTLE_MS);
  }

  private async consume(): Promise<void> {
    const file = this.options.file;
    const taken = `${file}.${process.pid}.reading`;
    try {
      renameSync(file, taken);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      this.logger.error({ file }, `IPC monitor: cannot take ${file}: ${(err as Error).message}`);
      return;
    }
    let text: string;
    try {
      text = this.readCommandFile(taken);
    } catch (err) {
      this.logger.error({ file }, `IPC monitor: ${file} ignored: ${(err as Error).message}`);
      return;
    } finally {
      try {
        unlinkSync(taken);
      } catch {
        /* already gone */
      }
    }
    for (const [i, line] of text.split('\n').entries()) {
      await this.runLine(line, i + 1);
    }
  }

  /**
   * Reads the taken command file. The file usually lives in a world-writable directory, so a
   * symlink or a hard link to another file (which would have its lines echoed into the log as
   * refused commands) is not followed.
   */
  private readCommandFile(path: string): string {
    let fd: number;
    try {
      fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ELOOP') throw new Error('it is a symbolic link');
      throw err;
    }
    try {
      const st = fstatSync(fd);
      if (!st.isFile()) throw new Error('it is not a regular file');
      if (st.nlink > 1) throw new Error('it is a hard link to another file');
      const bytes = Buffer.alloc(Math.min(st.size, MAX_COMMAND_FILE_BYTES));
      const length = readSync(fd, bytes, 0, bytes.length, 0);
      if (st.size > MAX_COMMAND_FILE_BYTES) {
        this.logger.error({ file: this.options.file }, `IPC monitor: ${this.options.file} holds ${st.size} bytes; only the first ${MAX_COMMAND_FILE_BYTES} are read`);
      }
      return bytes.subarray(0, length).toString('utf8');
    } finally {
      closeSync(fd);
    }
  }

  private async runLine(line: string, lineNo: number): Promise<void> {
    let cmd: IpcCommand | null;
    try {
      cmd = parseIpcLine(line);
    } catch (err) {
      this.processedLines++;
      this.logger.error({ line, lineNo }, `IPC monitor: line ${lineNo} ${JSON.stringify(line.trim())} refused: ${(err as Error).message}`);
      return;
    }
    if (!cmd) return;
    this.processedLines++;
    try {
      if (cmd.op === 'add_port') {
        const relay = cmd.relay ?? this.options.vfIndexOf(cmd.netdev);
        if (relay === undefined) throw new Error(`${cmd.netdev} is not a VF, so the relay id must be given (add_port ${cmd.netdev} <id>)`);
        if (relay >= MAX_RELAYS) throw new Error(`VF index ${relay} of ${cmd.netdev} is not a relay id (0..${MAX_RELAYS - 1})`);
        const vf = this.options.resolveNetdev(cmd.netdev);
        await this.registry.addVf(relay, vf);
        this.logger.info({ relay, interface: cmd.netdev, vf }, `IPC monitor: add_port ${cmd.netdev}: added to relay ${relay}`);
      } else {
        const vf = this.options.resolveNetdev(cmd.netdev);
        const relay = this.registry.list().find((r) => {
          const d = r.device;
          if (d?.kind !== 'vf') return false;
          return vf.pci !== undefined ? d.vf.pci === vf.pci : d.vf.netdev === cmd.netdev && d.vf.pci === undefined;
        });
        if (!relay) throw new Error(`no relay holds ${cmd.netdev}${vf.pci ? ` (VF ${vf.pci})` : ''}`);
        await this.registry.removeDevice(relay.id, { pci: vf.pci });
        this.logger.info({ relay: relay.id, interface: cmd.netdev }, `IPC monitor: del_port ${cmd.netdev}: removed from relay ${relay.id}`);
      }
    } catch (err) {
      this.logger.error({ line: line.trim() }, `IPC monitor: ${cmd.op} ${cmd.netdev} failed: ${(err as Error).message}`);
    }
  }
}
