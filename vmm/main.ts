// Entry point of bin/vio4wd-vmm: configuration, logging, pid file and daemon mode, the serial
// console, the api-channel, and the VM's exit status (0 when the guest reboots or powers off).
import { spawn } from 'node:child_process';
import { createServer, type Socket } from 'node:net';
import { closeSync, openSync, rmSync, writeFileSync } from 'node:fs';
import pino, { type Logger } from 'pino';
import { parseCommandLine } from './config-cli.js';
import { ConfigError, type VmConfig } from './config-types.js';
import { ApiChannel } from './api-channel.js';
import { checkHostResources, listenPath } from './host-resources.js';
import { Machine } from './machine.js';
import { usage } from './usage.js';
import { libc } from '../sys/libc.js';

const DAEMON_CHILD_ENV = 'VIO4WD_VMM_DAEMON_CHILD';

/** The log goes to -D FILE (appended; its directory must exist, it is not created) or stderr. */
function makeLogger(config: VmConfig): Logger {
  let fd = 2;
  if (config.logFile) {
    try {
      fd = openSync(config.logFile, 'a', 0o640);
    } catch (err) {
      throw new ConfigError(`${config.labels.logFile ?? '-D'}: cannot open ${config.logFile} (${(err as NodeJS.ErrnoException).code ?? err})`);
    }
  }
  return pino({ name: 'vio4wd-vmm', base: { vm: config.name, pid: process.pid } }, pino.destination({ fd, sync: true }));
}

/** Serial output and input: stdio, or a unix socket that one client at a time can attach to. */
async function attachSerial(machine: Machine, config: VmConfig, log: Logger): Promise<() => void> {
  const s = config.serial;
  if (s.kind === 'stdio') {
    // A reader that went away (EPIPE) must not turn into an uncaught exception: the guest keeps
    // running and its output is dropped.
    let stdoutGone = false;
    process.stdout.on('error', (err: Error) => {
      if (!stdoutGone) log.warn({ err: err.message }, 'serial: stdout is gone; guest output is dropped');
      stdoutGone = true;
    });
    machine.on('serial', (bytes: Uint8Array) => {
      if (!stdoutGone) process.stdout.write(bytes);
    });
    if (process.stdin.isTTY) process.stdin.setRawMode(true);
    process.stdin.on('data', (chunk: Buffer) => machine.serialInput(chunk));
    process.stdin.on('error', () => undefined);
    return () => process.stdin.pause();
  }
  if (s.kind === 'socket') {
    // Checked before KVM already; checked again because the path may have changed since.
    listenPath(s.path, config.labels.serial ?? '-serial');
    let client: Socket | null = null;
    const backlog: Uint8Array[] = [];
    const server = createServer((socket) => {
      if (client) {
        socket.end('serial console already in use\r\n');
        return;
      }
      client = socket;
      for (const b of backlog.splice(0)) socket.write(b);
      socket.on('data', (chunk) => machine.serialInput(chunk));
      socket.on('close', () => (client = null));
      socket.on('error', () => undefined);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(new Error(`-serial: cannot listen on ${s.path}: ${err.message}`)));
      server.listen(s.path, () => resolve());
    });
    machine.on('serial', (bytes: Uint8Array) => {
      if (client) client.write(bytes);
      else if (backlog.length < 65536) backlog.push(bytes);
    });
    log.info({ socket: s.path }, 'serial console listening');
    return () => {
      server.close();
      client?.destroy();
      rmSync(s.path, { force: true });
    };
  }
  return () => undefined;
}

/** -daemonize: start a detached copy of ourselves and return once it has written its pid file. */
async function daemonize(config: VmConfig): Promise<never> {
  const child = spawn(process.execPath, process.argv.slice(1), {
    detached: true,
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, [DAEMON_CHILD_ENV]: '1' },
  });
  let errors = '';
  child.stderr!.on('data', (d: Buffer) => (errors += d.toString()));
  const code = await new Promise<number>((resolve) => {
    child.on('exit', (c) => resolve(c ?? 1));
    const timer = setInterval(() => {
      if (errors.includes('VMM-DAEMON-READY')) {
        clearInterval(timer);
        resolve(0);
      }
    }, 20);
  });
  if (code !== 0) process.stderr.write(errors.replace('VMM-DAEMON-READY\n', ''));
  child.stderr!.destroy();
  child.unref();
  process.exit(code === 0 && config.pidFile ? 0 : code);
}

export async function main(argv: string[]): Promise<number> {
  if (argv.includes('-h') || argv.includes('--help') || argv.includes('-help')) {
    process.stdout.write(usage() + '\n');
    return 0;
  }
  let config: VmConfig;
  let log: Logger;
  const isDaemonChild = process.env[DAEMON_CHILD_ENV] === '1';
  try {
    config = parseCommandLine(argv);
    if (config.daemonize && config.serial.kind === 'stdio') throw new ConfigError('-daemonize: cannot be combined with -serial stdio');
    checkHostResources(config);
    if (config.daemonize && !isDaemonChild) await daemonize(config);
    log = makeLogger(config);
  } catch (err) {
    process.stderr.write(`vio4wd-vmm: ${(err as Error).message}\n`);
    return err instanceof ConfigError ? 2 : 1;
  }

  // What this process created on the host, removed again however it ends.
  const cleanups: Array<() => void | Promise<void>> = [];
  const cleanUp = async () => {
    for (const c of cleanups.splice(0).reverse()) await Promise.resolve(c()).catch(() => undefined);
  };
  let machine: Machine;
  try {
    machine = await Machine.create(config, log);
    currentMachine = machine;
  } catch (err) {
    log.error({ err: (err as Error).message }, 'VM creation failed');
    process.stderr.write(`vio4wd-vmm: ${(err as Error).message}\n`);
    return err instanceof ConfigError ? 2 : 1;
  }
  const fail = async (message: string, code: number, reason: string): Promise<number> => {
    log.error({ err: message }, reason);
    process.stderr.write(`vio4wd-vmm: ${message}\n`);
    await machine.shutdown(reason).catch(() => undefined);
    await cleanUp();
    return code;
  };

  let detachSerial: () => void;
  try {
    detachSerial = await attachSerial(machine, config, log);
  } catch (err) {
    return fail((err as Error).message, err instanceof ConfigError ? 2 : 1, 'serial console failed');
  }
  cleanups.push(detachSerial);
  let exitCode = 0;
  const done = new Promise<void>((resolve) => {
    machine.once('exit', (code: number, reason: string) => {
      exitCode = code;
      log.info({ code, reason }, 'VM ended');
      resolve();
    });
  });
  const stopVm = (reason: string) => {
    machine.shutdown(reason).catch((err: Error) => log.error({ err: err.message }, 'shutdown failed'));
  };
  process.on('SIGTERM', () => stopVm('SIGTERM'));
  process.on('SIGINT', () => stopVm('SIGINT'));

  if (config.pidFile) {
    const pidFile = config.pidFile;
    try {
      const fd = openSync(pidFile, 'wx');
      cleanups.push(() => rmSync(pidFile, { force: true }));
      writeFileSync(fd, `${process.pid}\n`);
      closeSync(fd);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      const why = code === 'EEXIST' ? 'it exists already; is another VM using it?' : String(code ?? err);
      return fail(`${config.labels.pidFile ?? '-pidfile'}: cannot create ${pidFile} (${why})`, 1, 'pidfile failed');
    }
  }

  if (config.apiChannel) {
    const api = new ApiChannel(
      config.apiChannel,
      {
        name: config.name,
        status: () => machine.status,
        cpus: () => machine.vcpus,
        devices: () => machine.describeDevices(),
        stop: () => machine.pause(),
        cont: () => machine.resume(),
        quit: () => stopVm('api-channel quit'),
      },
      log,
      config.labels.apiChannel ?? '-api-channel',
    );
    try {
      await api.listen();
    } catch (err) {
      return fail((err as Error).message, err instanceof ConfigError ? 2 : 1, 'api-channel failed');
    }
    cleanups.push(() => api.close());
  }

  try {
    await machine.start();
  } catch (err) {
    return fail(`the VM did not start: ${(err as Error).message}`, 1, 'start failed');
  }
  log.info({ vcpus: machine.vcpus }, 'VM running');
  if (isDaemonChild) process.stderr.write('VMM-DAEMON-READY\n');

  await done;
  await machine.shutdown('guest ended').catch(() => undefined);
  await cleanUp();
  return exitCode;
}

let currentMachine: Machine | null = null;
const hardExit = libc.func('void _exit(int status)');

/**
 * Ends the process once the VM is down. process.exit() joins every worker thread, so a thread
 * still blocked in a system call would keep the process alive; when one is left, _exit(2) ends
 * the process anyway (the log is written synchronously, so nothing is lost). stdout is flushed
 * first, but a reader that stopped reading cannot hold us either.
 */
function exitProcess(code: number): void {
  const leave = () => {
    const stuck = currentMachine?.liveThreads ?? 0;
    if (stuck > 0) hardExit(code);
    process.exit(code);
  };
  const timer = setTimeout(leave, 1000);
  process.stdout.write('', () => {
    clearTimeout(timer);
    leave();
  });
}

/** Runs the VMM with the process's arguments and exits with the VM's status. */
export function runMain(): void {
  // Default handling would exit through process.exit's worker joins and could hang on a vCPU.
  process.on('uncaughtException', (err) => {
    process.stderr.write(`vio4wd-vmm: ${err.stack ?? err.message}\n`);
    hardExit(1);
  });
  main(process.argv.slice(2)).then(
    (code) => exitProcess(code),
    (err: Error) => {
      process.stderr.write(`vio4wd-vmm: ${err.stack ?? err.message}\n`);
      process.exit(1);
    },
  );
}
