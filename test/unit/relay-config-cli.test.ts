import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FLAGS, UsageError, helpText, parseArgs, resolveConfigPath, versionText } from '../../relay/cli.js';
import { VARIABLES, loadConfig } from '../../relay/config.js';

const scratch = mkdtempSync(join(tmpdir(), `vio4wd-cli-${process.pid}-`));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

function usageError(argv: string[]): string {
  try {
    parseArgs(argv);
  } catch (err) {
    expect(err).toBeInstanceOf(UsageError);
    return (err as Error).message;
  }
  throw new Error(`accepted: ${argv.join(' ')}`);
}

describe('parseArgs', () => {
  it('gives nothing for an empty command line', () => {
    expect(parseArgs([])).toEqual({ configPath: null, help: false, version: false, overrides: {} });
  });

  it('reads --config, --help and --version in both spellings', () => {
    expect(parseArgs(['--config', '/etc/x'])).toMatchObject({ configPath: '/etc/x' });
    expect(parseArgs(['--config=/etc/y'])).toMatchObject({ configPath: '/etc/y' });
    expect(parseArgs(['--help']).help).toBe(true);
    expect(parseArgs(['-h']).help).toBe(true);
    expect(parseArgs(['--version']).version).toBe(true);
    expect(parseArgs(['-v']).version).toBe(true);
  });

  it('maps value flags to their variables, with = or a separate argument', () => {
    const args = parseArgs([
      '--cpu-mask', '1,2',
      '--log-level=7',
      '--socket-dir', '/run/vio',
      '--pid-dir=/run',
      '--poll-mode', 'busy',
      '--sysfs-root=/tmp/sys',
      '--zmq-port-control-ep', 'ipc:///run/pc',
      '--zmq-stats-ep=off',
      '--zmq-config-ep=tcp://127.0.0.1:5000',
      '--zmq-core-sched-ep=inproc://cs',
    ]);
    expect(args.overrides).toEqual({
      VIRTIOFWD_CPU_MASK: '1,2',
      VIRTIOFWD_LOG_LEVEL: '7',
      VIRTIOFWD_SOCKET_DIR: '/run/vio',
      VIRTIOFWD_PID_DIR: '/run',
      VIRTIOFWD_POLL_MODE: 'busy',
      VIRTIOFWD_SYSFS_ROOT: '/tmp/sys',
      VIRTIOFWD_ZMQ_PORT_CONTROL_EP: 'ipc:///run/pc',
      VIRTIOFWD_ZMQ_STATS_EP: 'off',
      VIRTIOFWD_ZMQ_CONFIG_EP: 'tcp://127.0.0.1:5000',
      VIRTIOFWD_ZMQ_CORE_SCHED_EP: 'inproc://cs',
    });
  });

  it('collects repeatable flags into arrays', () => {
    const args = parseArgs(['--static-vf', '0000:05:08.1=1', '--cpu-pin=1:0,1', '--static-vf=0000:05:08.2=2', '--cpu-pin', '2:1']);
    expect(args.overrides).toEqual({
      VIRTIOFWD_STATIC_VFS: ['0000:05:08.1=1', '0000:05:08.2=2'],
      VIRTIOFWD_CPU_PINS: ['1:0,1', '2:1'],
    });
  });

  it('reads boolean flags bare, with a value, and negated', () => {
    expect(parseArgs(['--vhost-client', '--jumbo=false', '--no-mrgbuf', '--tso=yes']).overrides).toEqual({
      VIRTIOFWD_VHOST_CLIENT: 'true',
      VIRTIOFWD_JUMBO: 'false',
      VIRTIOFWD_MRGBUF: 'false',
      VIRTIOFWD_TSO: 'yes',
    });
  });

  it('leaves the next argument alone after a boolean flag', () => {
    expect(() => parseArgs(['--vhost-client', 'false'])).toThrow('unexpected argument "false"');
  });

  it.each([
    [['--bogus'], 'unknown option --bogus (see --help)'],
    [['--no-cpu-mask'], 'unknown option --no-cpu-mask (see --help)'],
    [['--no-jumbo=1'], 'unknown option --no-jumbo (see --help)'],
    [['-x'], 'unexpected argument "-x"; settings are given as --flag=value (see --help)'],
    [['stray'], 'unexpected argument "stray"'],
    [['--cpu-mask'], '--cpu-mask needs a value'],
    [['--cpu-mask', '--log-level', '3'], '--cpu-mask needs a value'],
    [['--config'], '--config needs a value'],
    [['--config='], '--config needs a file name'],
    [['--config', 'a', '--config', 'b'], '--config is given more than once'],
    [['--log-level=1', '--log-level=2'], '--log-level is given more than once'],
    [['--jumbo', '--no-jumbo'], '--jumbo is given more than once'],
  ])('refuses %j', (argv, message) => {
    expect(usageError(argv)).toContain(message);
  });

  it('passes bad values through for the configuration rules to refuse, naming the variable', () => {
    const args = parseArgs(['--jumbo=maybe', '--cpu-pin', '70:1']);
    expect(() => loadConfig({ path: null, overrides: args.overrides, onlineCpus: [0, 1] })).toThrow(
      /VIRTIOFWD_CPU_PINS=\(70:1\) \(command line\): "70:1": relay id 70 is outside 0\.\.63[\s\S]*VIRTIOFWD_JUMBO="maybe" \(command line\): expected true or false/,
    );
  });
});

describe('flags over the file', () => {
  it('replace the file\'s values', () => {
    const path = join(scratch, 'conf');
    writeFileSync(path, 'VIRTIOFWD_CPU_MASK=1\nVIRTIOFWD_LOG_LEVEL=3\nVIRTIOFWD_STATIC_VFS=(0000:05:08.1=1)\nVIRTIOFWD_VHOST_CLIENT=true\n');
    const args = parseArgs(['--config', path, '--log-level', '7', '--static-vf', '0000:05:08.2=2', '--no-vhost-client']);
    const { config } = loadConfig({ path: resolveConfigPath(args), overrides: args.overrides, onlineCpus: [0, 1] });
    expect(config.cpus).toEqual([1]);
    expect(config.logLevel).toBe(7);
    expect(config.staticVfs).toEqual([{ relay: 2, vf: { pci: '0000:05:08.2' } }]);
    expect(config.vhostClient).toBe(false);
    expect(config.sourcePath).toBe(path);
  });

  it('use the default file only when it exists', () => {
    expect(resolveConfigPath({ configPath: null }, join(scratch, 'absent'))).toBeNull();
    const present = join(scratch, 'present');
    writeFileSync(present, '');
    expect(resolveConfigPath({ configPath: null }, present)).toBe(present);
    expect(resolveConfigPath({ configPath: '/x' }, present)).toBe('/x');
  });
});

describe('help and version', () => {
  it('lists every flag with its variable, and every settable variable has a flag', () => {
    const text = helpText();
    expect(text).toMatch(/^Usage: virtio-forwarder \[--config FILE\]/);
    for (const flag of FLAGS) {
      expect(text).toContain(flag.flag);
      expect(text).toContain(flag.variable);
    }
    const withFlags = new Set(FLAGS.map((f) => f.variable));
    const supported = VARIABLES.filter((v) => v.treatment === 'supported').map((v) => v.name);
    expect(supported.filter((name) => !withFlags.has(name))).toEqual([]);
    for (const flag of FLAGS) expect(VARIABLES.some((v) => v.name === flag.variable), flag.variable).toBe(true);
  });

  it('gives the package version', () => {
    expect(versionText()).toMatch(/^virtio-forwarder \d+\.\d+\.\d+$/);
  });
});
