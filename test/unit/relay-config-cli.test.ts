import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FLAGS, UsageError, helpText, parseArgs, resolveConfigPath, versionText } from '../../daemon/cli.js';
import { VARIABLES, loadConfig } from '../../relay/config/load.js';
import { USAGE as SCHEDULER_USAGE } from '../../scheduler/config.js';

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
    expect(parseArgs(['--vhost-client', '--jumbo=false', '--no-mrgbuf', '--dynamic-sockets=yes']).overrides).toEqual({
      VIRTIOFWD_VHOST_CLIENT: 'true',
      VIRTIOFWD_JUMBO: 'false',
      VIRTIOFWD_MRGBUF: 'false',
      VIRTIOFWD_DYNAMIC_SOCKETS: 'yes',
    });
  });

  it('leaves the next argument alone after a boolean flag', () => {
    expect(() => parseArgs(['--vhost-client', 'false'])).toThrow('unexpected argument "false"');
  });

  it.each([
    [['--bogus'], 'unknown option --bogus (see --help)'],
    [['--no-cpu-mask'], 'unknown option --no-cpu-mask (see --help)'],
    [['--no-jumbo=1'], 'unknown option --no-jumbo (see --help)'],
    [['-x'], 'unknown option -x in "-x" (see --help)'],
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
      /VIRTIOFWD_CPU_PINS=\(70:1\) \(command line\): "70:1": relay id 70 is outside 0\.\.63[\s\S]*VIRTIOFWD_JUMBO="maybe" \(command line\): expected y or n/,
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
    // Every supported variable has a flag: the daemon's, or the scheduler's for what only it reads.
    const supported = VARIABLES.filter((v) => v.treatment === 'supported' && !v.schedulerFlag).map((v) => v.name);
    expect(supported.filter((name) => !withFlags.has(name))).toEqual([]);
    for (const flag of FLAGS) expect(VARIABLES.some((v) => v.name === flag.variable), flag.variable).toBe(true);
  });

  it('sends the scheduler-only settings to vio4wd_core_scheduler instead of taking them and doing nothing', () => {
    for (const [flag, variable, schedulerFlag] of [
      ['--core-sched-sensitivity=0.5', 'VIO4WD_CORE_SCHED_SENSITIVITY', '--sensitivity'],
      ['--core-sched-log-level=3', 'VIO4WD_CORE_SCHED_LOG_LEVEL', '--log-level'],
      ['--core-sched-poll-interval=2', 'VIO4WD_CORE_SCHED_POLL_INTERVAL', '--poll-interval'],
      ['--core-sched-global-numa-opt', 'VIO4WD_CORE_SCHED_GLOBAL_NUMA_OPT', '--global-numa-opt'],
    ]) {
      expect(() => parseArgs([flag])).toThrow(UsageError);
      expect(() => parseArgs([flag])).toThrow(`${variable} is read by vio4wd_core_scheduler, not by this daemon; set it in the configuration file or give ${schedulerFlag} to vio4wd_core_scheduler`);
    }
    expect(() => parseArgs(['--core-sched-frobnicate=1'])).toThrow('unknown option --core-sched-frobnicate (see --help)');
    expect(parseArgs(['--core-sched']).overrides).toEqual({ VIO4WD_CORE_SCHED_ENABLE: 'true' });
  });

  it("lists in vio4wd_core_scheduler's --help every variable the scheduler reads, with the table's flag", () => {
    const rows = VARIABLES.filter((v) => v.schedulerFlag);
    expect(rows.map((v) => v.name)).toEqual(expect.arrayContaining([
      'VIO4WD_CORE_SCHED_SENSITIVITY', 'VIO4WD_CORE_SCHED_POLL_INTERVAL', 'VIO4WD_CORE_SCHED_LOG_LEVEL', 'VIO4WD_CORE_SCHED_GLOBAL_NUMA_OPT',
    ]));
    for (const v of rows) expect(SCHEDULER_USAGE).toMatch(new RegExp(`${v.schedulerFlag}\\b[^\\n]*(\\n[^-\\n][^\\n]*)*\\(${v.name}`));
  });

  it('parses each plain value with its row: every row with a parser reads its own default', () => {
    const withParser = VARIABLES.filter((v) => v.parse);
    expect(withParser.length).toBeGreaterThan(10);
    for (const v of withParser) expect(() => v.parse!(v.defaultText), v.name).not.toThrow();
    const { config } = loadConfig({ path: null, onlineCpus: [0, 1] });
    expect(config.logLevel).toBe(Number(VARIABLES.find((v) => v.name === 'VIRTIOFWD_LOG_LEVEL')!.defaultText));
    expect(config.coreScheduler.sensitivity).toBe(Number(VARIABLES.find((v) => v.name === 'VIO4WD_CORE_SCHED_SENSITIVITY')!.defaultText));
  });

  it('gives the package version', () => {
    expect(versionText()).toMatch(/^virtio-forwarder \d+\.\d+\.\d+$/);
  });
});
