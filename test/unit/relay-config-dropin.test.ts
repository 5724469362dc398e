// The original daemon's configuration, as its users have it: the shipped file's values, its
// spellings of booleans, its command line; and values from a hostile file kept out of the logs.
import { describe, expect, it } from 'vitest';
import { ConfigError, configFromText, loadConfig, type ConfigOverrides } from '../../relay/config/load.js';
import { escapeInvisible, parseBooleanValue, shownValue } from '../../relay/config/values.js';
import { UsageError, helpText, parseArgs } from '../../daemon/cli.js';
import { ORIGINAL_SHIPPED_LINES } from '../support/original-config.js';

const ONLINE = [0, 1, 2, 3];
const accountFiles = { passwd: '/dev/null', group: '/dev/null' };

function load(text: string, overrides: ConfigOverrides = {}) {
  return configFromText(text, { onlineCpus: ONLINE, accountFiles, overrides });
}

function problems(text: string, overrides: ConfigOverrides = {}): string[] {
  try {
    load(text, overrides);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).problems;
  }
  throw new Error(`accepted: ${text}`);
}

describe("the original's shipped file", () => {
  it('starts with its meaning: jumbo, mergeable buffers, client mode, ZMQ port control, core scheduling, no config service', () => {
    const { config, warnings } = load(ORIGINAL_SHIPPED_LINES.join('\n'));
    expect(config.cpus).toEqual([1, 2]);
    expect(config.logLevel).toBe(6);
    expect(config.jumbo).toBe(true);
    expect(config.mergeableRxBuffers).toBe(true);
    expect(config.vhostClient).toBe(true);
    expect(config.dynamicSockets).toBe(false);
    expect(config.tso).toBe(false);
    expect(config.staticVfs).toEqual([]);
    expect(config.cpuPins).toEqual([]);
    expect(config.socketDir).toBe('/tmp/virtio-forwarder');
    expect(config.socketFilenamePattern).toBe('virtio-forwarder%u.sock');
    expect(config.portControl.mode).toBe('zmq');
    expect(config.zmq).toEqual({
      portControl: 'ipc:///var/run/virtio-forwarder/port_control',
      config: null,
      stats: 'ipc:///var/run/virtio-forwarder/stats',
      coreSched: 'ipc:///var/run/virtio-forwarder/core_sched',
    });
    expect(config.coreScheduler).toMatchObject({ enabled: true, sensitivity: 0.25, pollIntervalMs: 5000, globalNumaOpt: false });
    // Every silent choice of the original is said, each once, with the way to say it explicitly.
    expect(warnings).toHaveLength(4);
    expect(warnings[0]).toMatch(/^VIRTIOFWD_HUGETLBFS_MOUNT_POINT="\/dev\/hugepages" \(line 10\) is ignored/);
    expect(warnings[1]).toMatch(/^VIRTIOFWD_BINARY="@BINDIR@\/virtio-forwarder" \(line 28\) is ignored/);
    expect(warnings[2]).toMatch(/^VIRTIOFWD_ZMQ_CONFIG_EP="" \(line 22\) is blank: the config service stays off, as virtio-forwarder left it; to say so, write VIRTIOFWD_ZMQ_CONFIG_EP=off/);
    expect(warnings[3]).toMatch(
      /^VIRTIOFWD_IPC_PORT_CONTROL="y" is not used because VIRTIOFWD_ZMQ_PORT_CONTROL_EP is set too: ZMQ port control is used, as virtio-forwarder did; to say so, set VIRTIOFWD_IPC_PORT_CONTROL=n/,
    );
  });

  it('takes IPC port control when the ZMQ endpoint is blank, as the original did', () => {
    const lines = ORIGINAL_SHIPPED_LINES.map((l) => (l.startsWith('VIRTIOFWD_ZMQ_PORT_CONTROL_EP=') ? 'VIRTIOFWD_ZMQ_PORT_CONTROL_EP=' : l));
    const { config, warnings } = load(lines.join('\n'));
    expect(config.portControl.mode).toBe('ipc');
    expect(config.zmq.portControl).toBeNull();
    expect(warnings.some((w) => w.includes('IPC_PORT_CONTROL'))).toBe(false);
  });

  it('still refuses what is really wrong in it, naming the variable', () => {
    const jumbo = ORIGINAL_SHIPPED_LINES.map((l) => (l === 'VIRTIOFWD_JUMBO=y' ? 'VIRTIOFWD_JUMBO=maybe' : l));
    expect(problems(jumbo.join('\n'))).toEqual(['VIRTIOFWD_JUMBO="maybe" (line 5): expected y or n (also yes/no, true/false, 1/0, on/off)']);
    const zeroCopy = ORIGINAL_SHIPPED_LINES.map((l) => (l === 'VIRTIOFWD_ZERO_COPY=' ? 'VIRTIOFWD_ZERO_COPY=y' : l));
    expect(problems(zeroCopy.join('\n'))).toEqual([expect.stringMatching(/^VIRTIOFWD_ZERO_COPY=true: zero copy is not supported/)]);
  });
});

describe('booleans', () => {
  it.each([
    ['y', true], ['Y', true], ['yes', true], ['YeS', true], ['true', true], ['1', true], ['on', true], ['ON', true], [' y ', true],
    ['n', false], ['N', false], ['no', false], ['False', false], ['0', false], ['off', false], ['OFF', false],
  ])('reads %j as %s', (text, value) => {
    expect(parseBooleanValue(text)).toBe(value);
  });

  it.each(['', 'maybe', 'yess', 'nn', '2', '01', 't', 'f', 'y n', 'enable', 'ÿ', 'y\u200b'])('refuses %j', (text) => {
    expect(() => parseBooleanValue(text)).toThrow('expected y or n (also yes/no, true/false, 1/0, on/off)');
  });

  it('gives the default for a blank value, not off: VIRTIOFWD_MRGBUF= keeps mergeable buffers on', () => {
    expect(load('VIRTIOFWD_MRGBUF=').config.mergeableRxBuffers).toBe(true);
    expect(load('VIRTIOFWD_MRGBUF=n').config.mergeableRxBuffers).toBe(false);
    expect(load('VIRTIOFWD_JUMBO=""').config.jumbo).toBe(false);
  });
});

describe('values echoed in messages', () => {
  it('are cut at 80 characters with an ellipsis', () => {
    expect(shownValue('a'.repeat(80))).toBe('a'.repeat(80));
    expect(shownValue('a'.repeat(81))).toBe(`${'a'.repeat(80)}…`);
    expect(shownValue('é'.repeat(100), 10)).toBe(`${'é'.repeat(10)}…`);
    expect(shownValue('😀'.repeat(3), 2)).toBe('😀😀…');
  });

  it('escape control characters, newlines, quotes and invisible characters', () => {
    expect(shownValue('a\nb\rc\td')).toBe('a\\nb\\rc\\td');
    expect(shownValue('\x1b[31mred')).toBe('\\x1b[31mred');
    expect(shownValue('x\u2028y\u2029z\u200bw\u202e')).toBe('x\\u{2028}y\\u{2029}z\\u{200b}w\\u{202e}');
    expect(shownValue('say "hi" \\ bye')).toBe('say \\"hi\\" \\\\ bye');
    expect(shownValue('\x00\x7f\x85')).toBe('\\x00\\x7f\\x85');
    expect(escapeInvisible('keep "quotes" \\ and\nthe rest')).toBe('keep "quotes" \\ and\\nthe rest');
  });

  it('from a hostile file cannot add a log line or flood one', () => {
    const forged = '1\n{"level":"info","msg":"virtio-forwarder ready"}';
    const [problem] = problems(`VIRTIOFWD_LOG_LEVEL='${forged}'`);
    expect(problem).not.toContain('\n');
    expect(problem).toBe(`VIRTIOFWD_LOG_LEVEL="1\\n{\\"level\\":\\"info\\",\\"msg\\":\\"virtio-forwarder ready\\"}" (line 1): expected a log level from 0 (emergencies only) to 7 (debug)`);
    const long = problems(`VIRTIOFWD_POLL_MODE=${'x'.repeat(5000)}`)[0];
    expect(long).toBe(`VIRTIOFWD_POLL_MODE="${'x'.repeat(80)}…" (line 1): expected busy or adaptive`);
    const pins = problems(`VIRTIOFWD_CPU_PINS="1:1;\x1b]0;pwned\x07"`)[0];
    expect(pins).not.toMatch(/[\x00-\x1f]/);
    expect(pins).toContain('\\x1b]0');
    const array = problems(`VIRTIOFWD_CPU_MASK=(${Array.from({ length: 20 }, (_, i) => `'a\nb${i}'`).join(' ')})`)[0];
    expect(array).not.toContain('\n');
    expect(array).toMatch(/^VIRTIOFWD_CPU_MASK=\(a\\nb0 a\\nb1 .* a\\nb7 …\) \(line 1\): this variable takes one value/);
  });

  it('in syntax errors are cut and escaped too', () => {
    expect(() => load(`VIRTIOFWD_LOG_LEVEL=6 \x1b[2J${'z'.repeat(100)}`)).toThrow(/after the value of VIRTIOFWD_LOG_LEVEL \("\\x1b\[2Jz{36}…"\)/);
    expect(() => load('VIRTIOFWD_LOG_LEVEL=6 \x07')).toThrow("unexpected '\\x07' after the value of VIRTIOFWD_LOG_LEVEL");
  });
});

describe("the original's command line", () => {
  it('reads what its start script passes for the shipped file', () => {
    const args = parseArgs([
      '-C1,2', '--nodaemon=log_syslog', '-l6', '-p/var/run', '-H/dev/hugepages',
      '--zmq-port-control-ep=ipc:///var/run/virtio-forwarder/port_control',
      '--zmq-stats-ep=ipc:///var/run/virtio-forwarder/stats',
      '--zmq-core-sched-ep=ipc:///var/run/virtio-forwarder/core_sched',
      '--ipc', '--vhost-path=/tmp/virtio-forwarder', '-J', '--enable-mrgbuf', '--vhostuser-client',
    ]);
    expect(args).toEqual({
      configPath: null,
      help: false,
      version: false,
      overrides: {
        VIRTIOFWD_CPU_MASK: '1,2',
        VIRTIOFWD_LOG_LEVEL: '6',
        VIRTIOFWD_PID_DIR: '/var/run',
        VIRTIOFWD_HUGETLBFS_MOUNT_POINT: '/dev/hugepages',
        VIRTIOFWD_ZMQ_PORT_CONTROL_EP: 'ipc:///var/run/virtio-forwarder/port_control',
        VIRTIOFWD_ZMQ_STATS_EP: 'ipc:///var/run/virtio-forwarder/stats',
        VIRTIOFWD_ZMQ_CORE_SCHED_EP: 'ipc:///var/run/virtio-forwarder/core_sched',
        VIRTIOFWD_IPC_PORT_CONTROL: 'true',
        VIRTIOFWD_SOCKET_DIR: '/tmp/virtio-forwarder',
        VIRTIOFWD_JUMBO: 'true',
        VIRTIOFWD_MRGBUF: 'true',
        VIRTIOFWD_VHOST_CLIENT: 'true',
      },
    });
    const { config } = loadConfig({ path: null, overrides: args.overrides, onlineCpus: ONLINE, accountFiles });
    expect(config).toMatchObject({ cpus: [1, 2], jumbo: true, mergeableRxBuffers: true, vhostClient: true, socketDir: '/tmp/virtio-forwarder' });
    expect(config.portControl.mode).toBe('zmq');
  });

  it('reads every short option with getopt rules: attached, separate, bundled, optional values', () => {
    expect(parseArgs(['-C', '3', '-JRid', '-a', '-I', '-M0', '-t', 'tok', '-V/run/s', '-Svm%u.sock', '-O', '/run/db.sock']).overrides).toEqual({
      VIRTIOFWD_CPU_MASK: '3',
      VIRTIOFWD_JUMBO: 'true',
      VIRTIOFWD_MRGBUF: 'true',
      VIRTIOFWD_VHOST_CLIENT: 'true',
      VIRTIOFWD_DYNAMIC_SOCKETS: 'true',
      VIRTIOFWD_CPU_NIC_SAME_NUMA: 'true',
      VIRTIOFWD_IPC_PORT_CONTROL: 'true',
      VIRTIOFWD_MASTER_LCORE: '0',
      VIRTIOFWD_VFIO_VF_TOKEN: 'tok',
      VIRTIOFWD_SOCKET_DIR: '/run/s',
      VIRTIOFWD_SOCKET_FNAME_PATTERN: 'vm%u.sock',
      VIRTIOFWD_OVSDB_SOCK_PATH: '/run/db.sock',
    });
    // -JC2: flags, then an option whose value is the rest of the word.
    expect(parseArgs(['-JC2']).overrides).toEqual({ VIRTIOFWD_JUMBO: 'true', VIRTIOFWD_CPU_MASK: '2' });
    // A required value may start with '-', as getopt takes the next word whatever it is.
    expect(parseArgs(['-l', '-1']).overrides).toEqual({ VIRTIOFWD_LOG_LEVEL: '-1' });
    expect(parseArgs(['-P0000:05:08.1=1', '-P', '05:08.2=2', '--add-pci-vf=0000:05:08.3=3', '-c1:1', '--virtio-cpu', '2:1,2']).overrides).toEqual({
      VIRTIOFWD_STATIC_VFS: ['0000:05:08.1=1', '05:08.2=2', '0000:05:08.3=3'],
      VIRTIOFWD_CPU_PINS: ['1:1', '2:1,2'],
    });
    // Optional values: bare means the default endpoint, or the daemon's own user and group.
    expect(parseArgs(['-Y', '-Z', '-z', '-s', '-u', '-g']).overrides).toEqual({
      VIRTIOFWD_ZMQ_CONFIG_EP: 'ipc:///var/run/virtio-forwarder/config',
      VIRTIOFWD_ZMQ_PORT_CONTROL_EP: 'ipc:///var/run/virtio-forwarder/port_control',
      VIRTIOFWD_ZMQ_STATS_EP: 'ipc:///var/run/virtio-forwarder/stats',
      VIRTIOFWD_ZMQ_CORE_SCHED_EP: 'ipc:///var/run/virtio-forwarder/core_sched',
      VIO4WD_CORE_SCHED_ENABLE: 'true',
      VIRTIOFWD_SOCKET_OWNER: '',
      VIRTIOFWD_SOCKET_GROUP: '',
    });
    expect(parseArgs(['-Ytcp://127.0.0.1:5000', '--vhost-username=qemu', '-gkvm']).overrides).toEqual({
      VIRTIOFWD_ZMQ_CONFIG_EP: 'tcp://127.0.0.1:5000',
      VIRTIOFWD_SOCKET_OWNER: 'qemu',
      VIRTIOFWD_SOCKET_GROUP: 'kvm',
    });
    expect(parseArgs(['--zmq-stats-ep', '-J']).overrides).toEqual({ VIRTIOFWD_ZMQ_STATS_EP: 'ipc:///var/run/virtio-forwarder/stats', VIRTIOFWD_JUMBO: 'true' });
    expect(parseArgs(['-Jv'])).toMatchObject({ version: true, help: false, overrides: { VIRTIOFWD_JUMBO: 'true' } });
    expect(parseArgs(['-Rh'])).toMatchObject({ version: false, help: true, overrides: { VIRTIOFWD_MRGBUF: 'true' } });
    expect(parseArgs(['-n']).overrides).toEqual({});
    expect(parseArgs(['-nlog_syslog', '--nodaemon']).overrides).toEqual({});
  });

  it.each([
    [['-C'], '-C needs a value'],
    [['--cpus'], '--cpus needs a value'],
    [['-q'], 'unknown option -q in "-q"'],
    [['-Jq'], 'unknown option -q in "-Jq"'],
    [['-\x1b'], 'unknown option -\\x1b in "-\\x1b"'],
    [['--enable-jumbo=1'], '--enable-jumbo takes no value'],
    [['-C1', '--cpu-mask=2'], '--cpu-mask sets VIRTIOFWD_CPU_MASK, which -C already set'],
    [['--cpu-mask=2', '-C1'], '-C sets VIRTIOFWD_CPU_MASK, which --cpu-mask already set'],
    [['-J', '--enable-jumbo'], '--enable-jumbo sets VIRTIOFWD_JUMBO, which -J already set'],
    [['-l6', '-l7'], '-l is given more than once'],
    [['--bogus\nline'], 'unknown option --bogus\\nline (see --help)'],
  ])('refuses %j', (argv, message) => {
    expect(() => parseArgs(argv)).toThrow(UsageError);
    expect(() => parseArgs(argv)).toThrow(message);
  });

  it('passes values on to the configuration rules: -T and --enable-tso turn TSO on, -0 and -l9 are refused there', () => {
    const load = (argv: string[]) => loadConfig({ path: null, overrides: parseArgs(argv).overrides, onlineCpus: ONLINE, accountFiles });
    const refused = (argv: string[]) => () => load(argv);
    expect(load(['-T']).config.tso).toBe(true);
    expect(load(['--enable-tso']).config.tso).toBe(true);
    expect(refused(['-0'])).toThrow(/VIRTIOFWD_ZERO_COPY=true: zero copy is not supported/);
    expect(refused(['-l9'])).toThrow(/VIRTIOFWD_LOG_LEVEL="9" \(command line\)/);
    expect(refused(['-C9'])).toThrow(/VIRTIOFWD_CPU_MASK="9" \(command line\): CPU 9 is not online/);
  });

  it('lists the original options in --help', () => {
    const text = helpText();
    expect(text).toContain("virtio-forwarder's original options are accepted with their original meaning:");
    expect(text).toMatch(/^ {2}-C, --cpus VALUE +VIRTIOFWD_CPU_MASK=VALUE$/m);
    expect(text).toMatch(/^ {2}-J, --enable-jumbo +VIRTIOFWD_JUMBO=true$/m);
    expect(text).toMatch(/^ {2}-s, --zmq-core-sched-ep\[=VALUE\] +VIRTIOFWD_ZMQ_CORE_SCHED_EP=VALUE \(and VIO4WD_CORE_SCHED_ENABLE=true\)$/m);
    expect(text).toMatch(/^ {2}-n, --nodaemon\[=VALUE\] +accepted; /m);
  });
});
