import { configFromText } from '../../relay/config/load.js';
import { parseConfigText } from '../../relay/config/file.js';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { DEFAULT_CONFIG_PATH, parseKeyValueText,
  ConfigError, pinoLevel, resolveSettings } from '../../scheduler/config.js';
import { readCpuNodes } from '../../sys/topology.js';

const files = (map: Record<string, string>) => (path: string) => {
  if (path in map) return map[path];
  throw Object.assign(new Error(`ENOENT: no such file or directory, open '${path}'`), { code: 'ENOENT' });
};

const shipped = `
# Core scheduler
VIO4WD_CORE_SCHED_ENABLE=true
VIO4WD_CORE_SCHED_SENSITIVITY=
VIO4WD_CORE_SCHED_LOG_LEVEL=6
VIO4WD_CORE_SCHED_POLL_INTERVAL=
VIO4WD_CORE_SCHED_GLOBAL_NUMA_OPT=
VIRTIOFWD_CPU_PINS=(0:1,2 1:2)
VIRTIOFWD_STATIC_VFS=(
  0000:05:08.1=1
  0000:05:08.2=2
)
VIRTIOFWD_ZMQ_STATS_EP=ipc:///var/run/virtio-forwarder/stats
VIRTIOFWD_ZMQ_CORE_SCHED_EP=ipc:///var/run/virtio-forwarder/core_sched
`;

describe('parseKeyValueText', () => {
  it('reads plain, quoted, exported and commented values and bash arrays', () => {
    const vars = parseKeyValueText(
      [
        'A=plain',
        'B="double quoted # not a comment"',
        "C='single'",
        'export D=exported',
        'E=value   # trailing comment',
        'F=',
        '  # indented comment',
        'G=(x "y z")',
        'H=a#b',
      ].join('\n'),
      'test',
    );
    expect(Object.fromEntries(vars)).toEqual({
      A: 'plain',
      B: 'double quoted # not a comment',
      C: 'single',
      D: 'exported',
      E: 'value',
      F: '',
      G: 'x y z',
      H: 'a#b',
    });
  });

  it('reads a multi-line array and keeps going after it', () => {
    const vars = parseKeyValueText(shipped, 'f');
    expect(vars.get('VIRTIOFWD_STATIC_VFS')).toBe('0000:05:08.1=1 0000:05:08.2=2');
    expect(vars.get('VIRTIOFWD_ZMQ_STATS_EP')).toBe('ipc:///var/run/virtio-forwarder/stats');
  });

  it('drops comments inside a multi-line array', () => {
    const vars = parseKeyValueText('P=(\n  0:1 # first relay\n  # none here\n  1:2\n)\nQ=after', 'f');
    expect(vars.get('P')).toBe('0:1 1:2');
    expect(vars.get('Q')).toBe('after');
  });

  it('rejects malformed lines with file and line number, exactly where the daemon does', () => {
    const bad: [string, number][] = [
      ['A=(x "y)', 1],
      ['A=$HOME/x', 1],
      ['A="$(id)"', 1],
      ['A=`id`', 1],
      ['A=1\nnot a line', 2],
      ['=1', 1],
      ['1A=1', 1],
      ['A="open', 1],
      ['A=x y', 1],
      ['A=(x y', 1],
    ];
    for (const [text, line] of bad) {
      expect(() => parseKeyValueText(text, 'cfg'), text).toThrow(new RegExp(`cfg line ${line}`));
      expect(() => parseKeyValueText(text, 'cfg'), text).toThrow(ConfigError);
      expect(() => parseConfigText(text, 'cfg'), text).toThrow();
    }
    expect(parseKeyValueText("A='$literal' # $comment", 'cfg').get('A')).toBe('$literal');
  });
});

describe('resolveSettings', () => {
  it('uses defaults when the default file is absent, and says so', () => {
    const r = resolveSettings([], files({}));
    if (r.help) throw new Error('unexpected help');
    expect(r.settings).toMatchObject({
      configPath: DEFAULT_CONFIG_PATH,
      statsEndpoint: 'ipc:///var/run/virtio-forwarder/stats',
      coreSchedEndpoint: 'ipc:///var/run/virtio-forwarder/core_sched',
      configEndpoint: null,
      pollIntervalMs: 5000,
      sensitivity: 0.25,
      logLevel: 6,
      globalNuma: false,
      sysfsRoot: '/sys',
    });
    expect(r.warnings.join()).toMatch(/does not exist; using defaults/);
  });

  it('treats blank variables in the shipped file as defaults', () => {
    const r = resolveSettings(['--config', '/cfg'], files({ '/cfg': shipped }));
    if (r.help) throw new Error('unexpected help');
    expect(r.settings.sensitivity).toBe(0.25);
    expect(r.settings.pollIntervalMs).toBe(5000);
    expect(r.warnings).toEqual([]);
  });

  it('reads the scheduler variables and lets flags override them', () => {
    const text = [
      'VIO4WD_CORE_SCHED_SENSITIVITY=0.5',
      'VIO4WD_CORE_SCHED_POLL_INTERVAL=2.5',
      'VIO4WD_CORE_SCHED_LOG_LEVEL=7',
      'VIO4WD_CORE_SCHED_GLOBAL_NUMA_OPT=yes',
      'VIRTIOFWD_ZMQ_STATS_EP=ipc:///run/a/stats',
      'VIRTIOFWD_ZMQ_CORE_SCHED_EP=tcp://127.0.0.1:5555',
      'VIRTIOFWD_ZMQ_CONFIG_EP=ipc:///run/a/config',
      'VIO4WD_CORE_SCHED_TYPO=1',
    ].join('\n');
    const fromFile = resolveSettings(['--config=/cfg'], files({ '/cfg': text }));
    if (fromFile.help) throw new Error('unexpected help');
    expect(fromFile.settings).toMatchObject({
      sensitivity: 0.5,
      pollIntervalMs: 2500,
      logLevel: 7,
      globalNuma: true,
      statsEndpoint: 'ipc:///run/a/stats',
      coreSchedEndpoint: 'tcp://127.0.0.1:5555',
      configEndpoint: 'ipc:///run/a/config',
    });
    expect(fromFile.warnings).toEqual(['unknown variable VIO4WD_CORE_SCHED_TYPO ignored']);

    const flagged = resolveSettings(
      [
        '--config', '/cfg',
        '--sensitivity', '0',
        '--poll-interval=0.2',
        '--loglevel', '3',
        '--global-numa-opt=false',
        '--stats-ep', 'ipc:///x/stats',
        '--sched-ep', 'ipc:///x/cs',
        '--config-ep', 'ipc:///x/config',
        '--sysfs-root', '/tmp/sys',
        '--request-timeout', '250',
      ],
      files({ '/cfg': text }),
    );
    if (flagged.help) throw new Error('unexpected help');
    expect(flagged.settings).toMatchObject({
      sensitivity: 0,
      pollIntervalMs: 200,
      logLevel: 3,
      globalNuma: false,
      statsEndpoint: 'ipc:///x/stats',
      coreSchedEndpoint: 'ipc:///x/cs',
      configEndpoint: 'ipc:///x/config',
      sysfsRoot: '/tmp/sys',
      requestTimeoutMs: 250,
    });
    const bare = resolveSettings(['--global-numa-opt'], files({}));
    expect(!bare.help && bare.settings.globalNuma).toBe(true);
  });

  it('turns the config service off with "off" and warns when the core-sched service is disabled', () => {
    const r = resolveSettings(['--config', '/c'], files({ '/c': 'VIRTIOFWD_ZMQ_CONFIG_EP=off\nVIO4WD_CORE_SCHED_ENABLE=false\n' }));
    if (r.help) throw new Error('unexpected help');
    expect(r.settings.configEndpoint).toBeNull();
    expect(r.warnings).toEqual([expect.stringMatching(/VIO4WD_CORE_SCHED_ENABLE is false/)]);
  });

  it("accepts the project's shipped configuration file as it is", () => {
    const shippedFile = join(import.meta.dirname, '..', '..', 'etc', 'default', 'virtioforwarder');
    const r = resolveSettings(['--config', shippedFile]);
    if (r.help) throw new Error('unexpected help');
    expect(r.warnings).toEqual([]);
    expect(r.settings).toMatchObject({ sensitivity: 0.25, pollIntervalMs: 5000, logLevel: 6, globalNuma: false });
  });

  it('answers --help without reading anything', () => {
    expect(resolveSettings(['--sensitivity', 'x', '--help'], () => { throw new Error('read'); })).toEqual({ help: true });
  });

  it('rejects bad values naming the variable or flag', () => {
    const bad = (text: string) => () => resolveSettings(['--config', '/c'], files({ '/c': text }));
    expect(bad('VIO4WD_CORE_SCHED_SENSITIVITY=-0.1')).toThrow(/VIO4WD_CORE_SCHED_SENSITIVITY="-0.1" is not valid/);
    expect(bad('VIO4WD_CORE_SCHED_SENSITIVITY=lots')).toThrow(/VIO4WD_CORE_SCHED_SENSITIVITY="lots"/);
    expect(bad('VIO4WD_CORE_SCHED_POLL_INTERVAL=0')).toThrow(/VIO4WD_CORE_SCHED_POLL_INTERVAL="0" is not valid: expected seconds/);
    expect(bad('VIO4WD_CORE_SCHED_POLL_INTERVAL=-5')).toThrow(/POLL_INTERVAL/);
    expect(bad('VIO4WD_CORE_SCHED_LOG_LEVEL=8')).toThrow(/VIO4WD_CORE_SCHED_LOG_LEVEL="8" is not valid: expected a log level from 0/);
    expect(bad('VIO4WD_CORE_SCHED_LOG_LEVEL=2.5')).toThrow(/LOG_LEVEL/);
    expect(bad('VIO4WD_CORE_SCHED_GLOBAL_NUMA_OPT=maybe')).toThrow(/VIO4WD_CORE_SCHED_GLOBAL_NUMA_OPT="maybe" is not valid: expected y or n \(also yes\/no, true\/false, 1\/0, on\/off\)/);
    expect(bad('VIO4WD_CORE_SCHED_ENABLE=sure')).toThrow(/VIO4WD_CORE_SCHED_ENABLE="sure" is not valid: expected y or n \(also yes\/no, true\/false, 1\/0, on\/off\)/);
    expect(bad('VIRTIOFWD_ZMQ_STATS_EP=off')).toThrow(/VIRTIOFWD_ZMQ_STATS_EP=off: the scheduler cannot work without this service/);
    expect(bad('VIRTIOFWD_ZMQ_CORE_SCHED_EP=OFF')).toThrow(/VIRTIOFWD_ZMQ_CORE_SCHED_EP=off/);
    expect(bad('VIO4WD_CORE_SCHED_POLL_INTERVAL=3601')).toThrow(/at most 3600/);
    expect(bad('VIRTIOFWD_ZMQ_STATS_EP=/var/run/stats')).toThrow(/VIRTIOFWD_ZMQ_STATS_EP="\/var\/run\/stats" is not a ZeroMQ endpoint/);
    const flag = (...argv: string[]) => () => resolveSettings(argv, files({}));
    expect(flag('--sensitivity', '-1')).toThrow(/--sensitivity="-1"/);
    expect(flag('--poll-interval')).toThrow(/option --poll-interval needs a value/);
    expect(flag('--frobnicate')).toThrow(/unknown option --frobnicate/);
    expect(flag('stray')).toThrow(/unexpected argument "stray"/);
    expect(flag('--global-numa-opt=perhaps')).toThrow(/--global-numa-opt="perhaps" is not valid: expected y or n \(also yes\/no, true\/false, 1\/0, on\/off\)/);
    expect(flag('--request-timeout', '5')).toThrow(/--request-timeout/);
    expect(flag('--sysfs-root=')).toThrow(/--sysfs-root needs a directory/);
    expect(flag('--config', '/missing')).toThrow(/configuration file \/missing cannot be read/);
  });
});

describe('one reading of the file for the daemon and the scheduler', () => {
  // Values the two programs used to judge differently: 0x10 stopped the daemon and was taken by
  // the scheduler as 16 seconds; now both refuse it, and both take the same good values.
  it.each([
    ['VIO4WD_CORE_SCHED_POLL_INTERVAL', '0x10', false],
    ['VIO4WD_CORE_SCHED_POLL_INTERVAL', '1e1', false],
    ['VIO4WD_CORE_SCHED_POLL_INTERVAL', ' 2.5', true],
    ['VIO4WD_CORE_SCHED_POLL_INTERVAL', '.5', true],
    ['VIO4WD_CORE_SCHED_SENSITIVITY', '0x1', false],
    ['VIO4WD_CORE_SCHED_SENSITIVITY', 'Infinity', false],
    ['VIO4WD_CORE_SCHED_SENSITIVITY', '0.1', true],
    ['VIO4WD_CORE_SCHED_LOG_LEVEL', '7.0', false],
    ['VIO4WD_CORE_SCHED_LOG_LEVEL', '3', true],
    ['VIO4WD_CORE_SCHED_GLOBAL_NUMA_OPT', 'YES', true],
    ['VIO4WD_CORE_SCHED_GLOBAL_NUMA_OPT', 'on', true],
    ['VIO4WD_CORE_SCHED_GLOBAL_NUMA_OPT', 'n', true],
    ['VIO4WD_CORE_SCHED_GLOBAL_NUMA_OPT', 'maybe', false],
    ['VIRTIOFWD_ZMQ_STATS_EP', 'ipc://relative', false],
    ['VIRTIOFWD_ZMQ_STATS_EP', 'tcp://127.0.0.1:5555', true],
  ])('%s=%j: both accept it, or both refuse it (%s)', (name, value, good) => {
    const text = `${name}="${value}"`;
    const scheduler = () => resolveSettings(['--config', '/c'], files({ '/c': text }));
    const daemon = () => configFromText(text, { onlineCpus: [0, 1] });
    if (good) {
      expect(scheduler).not.toThrow();
      expect(daemon).not.toThrow();
    } else {
      expect(scheduler).toThrow(name);
      expect(daemon).toThrow(name);
    }
  });

  it('gives the same values', () => {
    const text = 'VIO4WD_CORE_SCHED_POLL_INTERVAL=2.5\nVIO4WD_CORE_SCHED_SENSITIVITY=0.4\nVIO4WD_CORE_SCHED_LOG_LEVEL=4\n';
    const r = resolveSettings(['--config', '/c'], files({ '/c': text }));
    if (r.help) throw new Error('unexpected help');
    const { config } = configFromText(text, { onlineCpus: [0, 1] });
    expect([r.settings.pollIntervalMs, r.settings.sensitivity, r.settings.logLevel]).toEqual([
      config.coreScheduler.pollIntervalMs,
      config.coreScheduler.sensitivity,
      config.coreScheduler.logLevel,
    ]);
  });
});

describe('pinoLevel', () => {
  it('maps syslog severities onto pino levels', () => {
    expect([0, 1, 2, 3, 4, 5, 6, 7].map(pinoLevel)).toEqual(['fatal', 'fatal', 'fatal', 'error', 'warn', 'info', 'info', 'debug']);
  });
});

describe('NUMA topology from sysfs', () => {
  const root = mkdtempSync(join(tmpdir(), `vio4wd-numa-${process.pid}-`));
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it('reads every node, including one without CPUs, and ignores other entries', () => {
    const sys = join(root, 'a');
    for (const [node, list] of [['node0', '0-1,4'], ['node1', '2-3'], ['node2', '']]) {
      mkdirSync(join(sys, 'devices/system/node', node), { recursive: true });
      writeFileSync(join(sys, 'devices/system/node', node, 'cpulist'), `${list}\n`);
    }
    writeFileSync(join(sys, 'devices/system/node/possible'), '0-2\n');
    expect(Object.fromEntries(readCpuNodes(sys))).toEqual({ 0: 0, 1: 0, 4: 0, 2: 1, 3: 1 });
  });

  it('returns an empty map when the host has no node directory', () => {
    expect(readCpuNodes(join(root, 'nothing')).size).toBe(0);
  });

  it('refuses a CPU listed under two nodes, or a node without cpulist', () => {
    const sys = join(root, 'b');
    for (const node of ['node0', 'node1']) mkdirSync(join(sys, 'devices/system/node', node), { recursive: true });
    writeFileSync(join(sys, 'devices/system/node/node0/cpulist'), '0-1\n');
    writeFileSync(join(sys, 'devices/system/node/node1/cpulist'), '1\n');
    expect(() => readCpuNodes(sys)).toThrow(/CPU 1 is listed under node0 and node1/);
    const sys2 = join(root, 'c');
    mkdirSync(join(sys2, 'devices/system/node/node0'), { recursive: true });
    expect(() => readCpuNodes(sys2)).toThrow(/cannot read .*node0\/cpulist/);
  });
});
