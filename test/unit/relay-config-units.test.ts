// The shipped systemd units: the settings the daemon relies on, and systemd's own verifier.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { EXIT_CONFIG, EXIT_USAGE } from '../../daemon/cli.js';
import { DEFAULT_CONFIG_PATH } from '../../relay/config/load.js';
import { DEFAULT_ZMQ_DIR } from '../../vocabulary/endpoints.js';
import { requireBinary } from '../support/netns.js';

const unitDir = new URL('../../etc/systemd/', import.meta.url).pathname;
const forwarder = readFileSync(join(unitDir, 'virtio-forwarder.service'), 'utf8');
const scheduler = readFileSync(join(unitDir, 'vio4wd_core_scheduler.service'), 'utf8');

const settings = (unit: string) =>
  unit
    .split('\n')
    .filter((l) => /^[A-Za-z]+=/.test(l))
    .map((l) => l.trim());

describe('systemd units', () => {
  it('run the forwarder as a notify service that reads the file itself', () => {
    expect(settings(forwarder)).toEqual(
      expect.arrayContaining([
        'Type=notify',
        `EnvironmentFile=-${DEFAULT_CONFIG_PATH}`,
        `ExecStart=/usr/bin/virtio-forwarder --config ${DEFAULT_CONFIG_PATH}`,
        `RuntimeDirectory=${DEFAULT_ZMQ_DIR.replace('/var/run/', '')}`,
        'LimitNOFILE=65535',
        'LimitMEMLOCK=infinity',
        'Restart=on-failure',
        `RestartPreventExitStatus=${EXIT_USAGE} ${EXIT_CONFIG}`,
        'KillSignal=SIGTERM',
      ]),
    );
    expect(forwarder).toMatch(/^TimeoutStopSec=\d+$/m);
  });

  it('tie the scheduler to the forwarder and hand it the same file', () => {
    expect(settings(scheduler)).toEqual(
      expect.arrayContaining([
        'After=virtio-forwarder.service',
        'BindsTo=virtio-forwarder.service',
        `EnvironmentFile=-${DEFAULT_CONFIG_PATH}`,
        `ExecStart=/usr/bin/vio4wd_core_scheduler --config ${DEFAULT_CONFIG_PATH}`,
      ]),
    );
  });

  it('pass systemd-analyze verify (with the programs replaced by /bin/true, which exists here)', () => {
    if (!requireBinary('systemd-analyze')) return;
    const dir = mkdtempSync(join(tmpdir(), `vio4wd-units-${process.pid}-`));
    try {
      for (const [name, text] of [
        ['virtio-forwarder.service', forwarder],
        ['vio4wd_core_scheduler.service', scheduler],
      ]) {
        writeFileSync(join(dir, name), text.replace(/^ExecStart=\/usr\/bin\/\S+/m, 'ExecStart=/bin/true'));
      }
      // systemd-analyze exits 0 on unknown keys and bad values ("ignoring"), so its output must be empty too.
      const result = spawnSync(
        'systemd-analyze',
        ['verify', '--man=no', join(dir, 'virtio-forwarder.service'), join(dir, 'vio4wd_core_scheduler.service')],
        { encoding: 'utf8' },
      );
      expect(`${result.stdout}${result.stderr}`).toBe('');
      expect(result.status).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
