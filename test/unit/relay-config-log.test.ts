import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { componentLogger, createLogger, pinoLevelForSyslog } from '../../daemon/log.js';

function capture(): { stream: Writable & { write(chunk: string): boolean }; lines: () => Record<string, unknown>[] } {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk, _encoding, done) {
      chunks.push(chunk.toString());
      done();
    },
  });
  return {
    stream: stream as never,
    lines: () =>
      chunks
        .join('')
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as Record<string, unknown>),
  };
}

describe('syslog severities onto pino levels', () => {
  it('maps 0-2 fatal, 3 error, 4 warn, 5-6 info, 7 debug', () => {
    expect([0, 1, 2, 3, 4, 5, 6, 7].map(pinoLevelForSyslog)).toEqual([
      'fatal', 'fatal', 'fatal', 'error', 'warn', 'info', 'info', 'debug',
    ]);
  });

  it.each([-1, 8, 1.5, Number.NaN])('refuses %s', (level) => {
    expect(() => pinoLevelForSyslog(level)).toThrow(`log level ${level} is not a syslog severity 0..7`);
  });
});

describe('createLogger', () => {
  it('writes JSON lines with level names, the program name and the pid', () => {
    const out = capture();
    const log = createLogger({ syslogLevel: 6, destination: out.stream });
    log.info({ relay: 3 }, 'relay started');
    const [line] = out.lines();
    expect(line).toMatchObject({ level: 'info', name: 'virtio-forwarder', pid: process.pid, relay: 3, msg: 'relay started' });
  });

  it('drops what is below the threshold', () => {
    const out = capture();
    const log = createLogger({ syslogLevel: 4, destination: out.stream });
    log.debug('d');
    log.info('i');
    log.warn('w');
    log.error('e');
    expect(out.lines().map((l) => l.msg)).toEqual(['w', 'e']);

    const verbose = capture();
    const debugLog = createLogger({ syslogLevel: 7, destination: verbose.stream });
    debugLog.debug('d');
    debugLog.trace('t');
    expect(verbose.lines().map((l) => l.msg)).toEqual(['d']);

    const quiet = capture();
    const fatalOnly = createLogger({ syslogLevel: 0, destination: quiet.stream });
    fatalOnly.error('e');
    fatalOnly.fatal('f');
    expect(quiet.lines().map((l) => l.msg)).toEqual(['f']);
  });

  it('gives component loggers that carry their component and extra bindings', () => {
    const out = capture();
    const root = createLogger({ destination: out.stream, name: 'vio4wd_core_scheduler' });
    componentLogger(root, 'worker', { cpu: 1 }).info('polling');
    expect(out.lines()[0]).toMatchObject({ name: 'vio4wd_core_scheduler', component: 'worker', cpu: 1, msg: 'polling' });
  });
});
