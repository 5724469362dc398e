// Builds the tiny test guest with the host's gcc/as/ld into .cache/tiny-guest (once per process).
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

function findRepoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(resolve(dir, 'test/guest/tiny/build.sh')) && existsSync(resolve(dir, 'package.json'))) return dir;
    dir = dirname(dir);
  }
  throw new Error(`tiny guest: cannot find test/guest/tiny/build.sh above ${fileURLToPath(import.meta.url)}`);
}

export const repoRoot = findRepoRoot();
let built: string | undefined;

/** Returns the path of the tiny guest ELF, building it first. */
export function ensureTinyGuest(): string {
  if (built) return built;
  const out = resolve(repoRoot, '.cache/tiny-guest');
  execFileSync(resolve(repoRoot, 'test/guest/tiny/build.sh'), [out], { stdio: ['ignore', 'pipe', 'pipe'] });
  built = resolve(out, 'tiny-guest.elf');
  return built;
}
