// Which relay was measured: the checkout's commit and when dist/ was last compiled. The relay runs
// from dist/, which anyone working in the same checkout may recompile between two runs, so the
// bench records this before every run of our relay and says when it changed.
import { execFileSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { repoRoot } from '../../test/support/relay.js';

/** The compiled layers bin/virtio-forwarder loads. */
const RELAY_LAYERS = ['relay', 'sys', 'virtio', 'vhost-user'];

export interface RelayBuild {
  commit: string;
  /** Newest modification time of the relay's compiled files, ISO 8601. */
  compiledAt: string;
}

function newestMtime(dir: string): number {
  let newest = 0;
  let entries: string[];
  try {
    entries = readdirSync(dir);
  } catch {
    return 0;
  }
  for (const name of entries) {
    const path = join(dir, name);
    const st = statSync(path, { throwIfNoEntry: false });
    if (!st) continue;
    if (st.isDirectory()) newest = Math.max(newest, newestMtime(path));
    else if (name.endsWith('.js')) newest = Math.max(newest, st.mtimeMs);
  }
  return newest;
}

export function relayBuild(): RelayBuild {
  let commit = 'unknown';
  try {
    commit = execFileSync('git', ['-C', repoRoot, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    /* not a git checkout */
  }
  const newest = Math.max(...RELAY_LAYERS.map((l) => newestMtime(join(repoRoot, 'dist', l))));
  return { commit, compiledAt: newest > 0 ? new Date(newest).toISOString() : 'not compiled' };
}
