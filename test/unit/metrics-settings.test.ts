// VIRTIOFWD_METRICS_LISTEN as the configuration reads it (file, flag, defaults, bad values) and the
// endpoint's choice between the Prometheus text format and OpenMetrics.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FLAGS, parseArgs, UsageError } from '../../daemon/cli.js';
import { wantsOpenMetrics } from '../../port-control/metrics.js';
import { ConfigError, VARIABLES, configFromText, loadConfig, type ConfigOverrides } from '../../relay/config/load.js';
import { formatListenAddress, parseListenAddress } from '../../vocabulary/listen-address.js';

const scratch = mkdtempSync(join(tmpdir(), `vio4wd-metrics-config-${process.pid}-`));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

function problemsOf(run: () => unknown): string[] {
  try {
    run();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).problems;
  }
  throw new Error('the configuration was accepted');
}

describe('parseListenAddress', () => {
  it.each([
    ['9477', { host: '127.0.0.1', port: 9477 }],
    [' 9477 ', { host: '127.0.0.1', port: 9477 }],
    ['0', { host: '127.0.0.1', port: 0 }],
    ['127.0.0.1:9477', { host: '127.0.0.1', port: 9477 }],
    ['0.0.0.0:65535', { host: '0.0.0.0', port: 65535 }],
    ['[::1]:9477', { host: '::1', port: 9477 }],
    ['[::]:80', { host: '::', port: 80 }],
    ['[fe80::1:2]:80', { host: 'fe80::1:2', port: 80 }],
    ['localhost:9477', { host: 'localhost', port: 9477 }],
    ['127.0.0.1:80 ', { host: '127.0.0.1', port: 80 }],
    ['mon-1.example.org:9477', { host: 'mon-1.example.org', port: 9477 }],
  ])('reads %s', (text, address) => {
    expect(parseListenAddress(text)).toEqual(address);
  });

  it.each(['', '   ', 'off', 'OFF'])('reads %j as no endpoint', (text) => {
    expect(parseListenAddress(text)).toBeNull();
  });

  it.each([
    [':9477', 'the host is missing: write 0.0.0.0:PORT to listen on every address, or the port alone for loopback'],
    ['127.0.0.1', 'expected HOST:PORT, [IPv6]:PORT, or a port alone for the loopback address'],
    ['localhost', 'expected HOST:PORT, [IPv6]:PORT, or a port alone for the loopback address'],
    ['65536', 'port "65536" is not a number from 0 to 65535'],
    ['123456', 'port "123456" is not a number from 0 to 65535'],
    ['127.0.0.1:', 'port "" is not a number from 0 to 65535'],
    ['127.0.0.1:-1', 'port "-1" is not a number from 0 to 65535'],
    ['127.0.0.1:0x50', 'port "0x50" is not a number from 0 to 65535'],
    ['::1:9477', 'an IPv6 address is written in brackets: [::1]:PORT'],
    ['[::1]', 'expected HOST:PORT, [IPv6]:PORT, or a port alone for the loopback address'],
    ['[zz::1]:80', '"[zz::1]" is not an IPv6 address'],
    ['[1.2.3.4]:80', '"[1.2.3.4]" is not an IPv6 address'],
    ['256.0.0.1:80', '"256.0.0.1" is not an IPv4 address'],
    ['1.2.3:80', '"1.2.3" is neither an IP address nor a host name'],
    ['host_name:80', '"host_name" is neither an IP address nor a host name'],
    ['-host:80', '"-host" is neither an IP address nor a host name'],
    ['http://127.0.0.1:80', 'expected HOST:PORT without a scheme or a path'],
    ['127.0.0.1:80/metrics', 'expected HOST:PORT without a scheme or a path'],
    ['a b:80', '"a b" is neither an IP address nor a host name'],
  ])('refuses %j', (text, message) => {
    expect(() => parseListenAddress(text)).toThrow(message);
  });

  it('writes IPv6 addresses in brackets', () => {
    expect(formatListenAddress({ host: '::1', port: 80 })).toBe('[::1]:80');
    expect(formatListenAddress({ host: '127.0.0.1', port: 80 })).toBe('127.0.0.1:80');
  });
});

describe('VIRTIOFWD_METRICS_LISTEN in the configuration', () => {
  const online = [0, 1];
  const load = (text: string, overrides: ConfigOverrides = {}) => configFromText(text, { onlineCpus: online, overrides });

  it('is a row of the configuration table with a daemon flag, off by default', () => {
    const row = VARIABLES.find((v) => v.name === 'VIRTIOFWD_METRICS_LISTEN');
    expect(row).toMatchObject({ treatment: 'supported', defaultText: '', flag: { name: '--metrics-listen', kind: 'value' } });
    expect(row!.parse!(row!.defaultText)).toBeNull();
    expect(FLAGS.find((f) => f.flag === '--metrics-listen')?.variable).toBe('VIRTIOFWD_METRICS_LISTEN');
    expect(parseArgs(['--metrics-listen=9477']).overrides).toEqual({ VIRTIOFWD_METRICS_LISTEN: '9477' });
    expect(parseArgs(['--metrics-listen', '[::1]:9477']).overrides).toEqual({ VIRTIOFWD_METRICS_LISTEN: '[::1]:9477' });
    expect(() => parseArgs(['--metrics-listen=1', '--metrics-listen=2'])).toThrow(UsageError);
    expect(() => parseArgs(['--metrics-listen'])).toThrow('--metrics-listen needs a value');
  });

  it('is off when absent, blank or off', () => {
    for (const text of ['', 'VIRTIOFWD_METRICS_LISTEN=', 'VIRTIOFWD_METRICS_LISTEN=off', 'VIRTIOFWD_METRICS_LISTEN=""']) {
      const loaded = load(text);
      expect(loaded.config.metricsListen, text).toBeNull();
      expect(loaded.warnings).toEqual([]);
    }
    expect(loadConfig({ path: null, onlineCpus: online }).config.metricsListen).toBeNull();
  });

  it('reads the file, and the flag replaces the file', () => {
    const path = join(scratch, 'virtioforwarder');
    writeFileSync(path, '# metrics\nVIRTIOFWD_METRICS_LISTEN="10.1.2.3:9100"\n');
    expect(loadConfig({ path, onlineCpus: online }).config.metricsListen).toEqual({ host: '10.1.2.3', port: 9100 });
    expect(loadConfig({ path, onlineCpus: online, overrides: { VIRTIOFWD_METRICS_LISTEN: '9200' } }).config.metricsListen).toEqual({
      host: '127.0.0.1',
      port: 9200,
    });
    expect(loadConfig({ path, onlineCpus: online, overrides: { VIRTIOFWD_METRICS_LISTEN: 'off' } }).config.metricsListen).toBeNull();
  });

  it('names the variable, the value and where it came from, with the other problems of the file', () => {
    expect(problemsOf(() => load('VIRTIOFWD_METRICS_LISTEN=:80'))).toEqual([
      'VIRTIOFWD_METRICS_LISTEN=":80" (line 1): the host is missing: write 0.0.0.0:PORT to listen on every address, or the port alone for loopback',
    ]);
    expect(problemsOf(() => load('VIRTIOFWD_METRICS_LISTEN=(1 2)'))).toEqual([
      'VIRTIOFWD_METRICS_LISTEN=(1 2) (line 1): this variable takes one value, not a bash array',
    ]);
    expect(problemsOf(() => load('', { VIRTIOFWD_METRICS_LISTEN: 'x:y' }))).toEqual([
      'VIRTIOFWD_METRICS_LISTEN="x:y" (command line): port "y" is not a number from 0 to 65535',
    ]);
    expect(problemsOf(() => load('VIRTIOFWD_POLL_MODE=sometimes\nVIRTIOFWD_METRICS_LISTEN=99999'))).toEqual([
      'VIRTIOFWD_POLL_MODE="sometimes" (line 1): expected busy or adaptive',
      'VIRTIOFWD_METRICS_LISTEN="99999" (line 2): port "99999" is not a number from 0 to 65535',
    ]);
  });
});

describe('wantsOpenMetrics', () => {
  it.each([
    ['application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1', true],
    ['application/openmetrics-text', true],
    ['APPLICATION/OpenMetrics-Text; version=1.0.0', true],
    ['text/plain;q=0.5, application/openmetrics-text;q=0.9', true],
    ['application/openmetrics-text;q=0.5, text/plain', false],
    ['application/openmetrics-text;q=0', false],
    ['text/plain', false],
    ['*/*', false],
    ['', false],
    [undefined, false],
    [',,;;q=', false],
    ['application/openmetrics-text;q=abc', false],
  ])('%j → %s', (accept, expected) => {
    expect(wantsOpenMetrics(accept)).toBe(expected);
  });
});
