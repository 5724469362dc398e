// The test guest with Debian's iperf3 in it, for bench/iperf.ts. The kernel unpacks concatenated
// cpio archives one over the other, so the bench's initramfs is the test guest's, unchanged,
// followed by a small archive with /usr/bin/iperf3 and the shared libraries it loads, copied from
// this host (Debian 12 like the guest's userland needs: the libraries are glibc's and OpenSSL's).
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { ensureGuestImage, type GuestImage } from '../../test/support/guest-image.js';

const IPERF3 = '/usr/bin/iperf3';

/** The libraries `ldd` lists for `binary`, as absolute paths (the vDSO has none). */
export function sharedLibraries(binary: string): string[] {
  const out = execFileSync('ldd', [binary], { encoding: 'utf8' });
  const paths: string[] = [];
  for (const line of out.split('\n')) {
    const m = /=>\s*(\/\S+)/.exec(line) ?? /^\s*(\/\S+)\s+\(/.exec(line);
    if (m) paths.push(m[1]);
  }
  return paths;
}

/** The test guest image with iperf3 added; built next to the guest's initramfs, rebuilt when either changes. */
export async function ensureIperfGuestImage(): Promise<GuestImage> {
  if (!existsSync(IPERF3)) throw new Error(`${IPERF3} is missing: install Debian's iperf3 (scripts/setup.sh does)`);
  const base = await ensureGuestImage();
  const target = join(dirname(base.initrd), 'initramfs-iperf3.cpio.gz');
  const libraries = sharedLibraries(IPERF3);
  const stamp = `${target}.stamp`;
  const recipe = JSON.stringify([base.initrd, statSync(base.initrd).mtimeMs, IPERF3, statSync(IPERF3).mtimeMs, ...libraries]);
  if (existsSync(target) && existsSync(stamp) && readFileSync(stamp, 'utf8') === recipe) return { ...base, initrd: target };

  const root = mkdtempSync(join(tmpdir(), 'vio4wd-iperf-guest-'));
  try {
    mkdirSync(join(root, 'usr/bin'), { recursive: true });
    copyFileSync(IPERF3, join(root, 'usr/bin/iperf3'));
    for (const lib of libraries) {
      // The dynamic loader is found by the path baked into the binary (/lib64/...), the others
      // through the default search path (/lib/x86_64-linux-gnu).
      const at = join(root, lib.startsWith('/lib64/') ? lib : join('/lib/x86_64-linux-gnu', basename(lib)));
      mkdirSync(dirname(at), { recursive: true });
      // Resolve symbolic links: the archive carries the file itself under the name the loader asks for.
      copyFileSync(lib, at);
    }
    const overlay = execFileSync('sh', ['-c', 'find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | gzip -9'], { cwd: root, maxBuffer: 64 << 20 });
    writeFileSync(target, Buffer.concat([readFileSync(base.initrd), overlay]));
    writeFileSync(stamp, recipe);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
  return { ...base, initrd: target };
}
