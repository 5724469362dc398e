// Entry point of bin/vio4wd_core_scheduler: settings from the file and flags, then the loop until
// SIGTERM or SIGINT.

import { ConfigError, USAGE, resolveSettings, schedulerLogger } from './config.js';
import { writeStderr } from '../sys/journal.js';
import { startScheduler } from './scheduler.js';

/** Same as the daemon (EX_CONFIG), so the systemd units' RestartPreventExitStatus covers both. */
export const EXIT_CONFIG = 78;

export async function main(argv: readonly string[]): Promise<number> {
  let parsed;
  try {
    parsed = resolveSettings(argv);
  } catch (err) {
    if (err instanceof ConfigError) {
      writeStderr(`vio4wd_core_scheduler: ${err.message}\n`, 3);
      return EXIT_CONFIG;
    }
    throw err;
  }
  if (parsed.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const { configPath, ...settings } = parsed.settings;
  const logger = schedulerLogger(settings.logLevel);
  for (const w of parsed.warnings) logger.warn({ configPath }, w);
  let scheduler;
  try {
    scheduler = startScheduler({ ...settings, logger });
  } catch (err) {
    logger.fatal(`cannot start: ${(err as Error).message}`);
    return 1;
  }
  const started = scheduler;
  return new Promise<number>((resolve) => {
    const finish = (signal: string) => {
      logger.info({ signal }, `stopping on ${signal}`);
      process.removeAllListeners('SIGTERM');
      process.removeAllListeners('SIGINT');
      void started.stop().then(() => resolve(0));
    };
    process.on('SIGTERM', () => finish('SIGTERM'));
    process.on('SIGINT', () => finish('SIGINT'));
    // The settings are read once; a reload would need the baseline and sockets rebuilt, so a
    // restart is the way to change them.
    process.on('SIGHUP', () => logger.info('SIGHUP ignored; restart the service to apply new settings'));
  });
}
