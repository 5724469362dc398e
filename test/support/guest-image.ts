// The Linux test guest (Debian's kernel + a busybox initramfs), built once by
// test/guest/build-guest-image.sh and cached under .cache/guest (or $VIO4WD_GUEST_DIR).
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface GuestImage {
  /** bzImage, for QEMU `-kernel` and bzImage loaders. */
  kernel: string;
  /** The ELF kernel extracted from the bzImage, for PVH / ELF-entry loaders. */
  vmlinux: string;
  initrd: string;
  /** `uname -r` of the guest kernel, e.g. 6.1.0-56-amd64. */
  release: string;
}

// This file runs from test/support (vitest) and from dist/test/support (compiled); walk up to
// the directory that holds the builder rather than assuming one depth.
function findRepoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(resolve(dir, 'test/guest/build-guest-image.sh')) && existsSync(resolve(dir, 'package.json'))) return dir;
    dir = dirname(dir);
  }
  throw new Error(`guest image: cannot find test/guest/build-guest-image.sh above ${fileURLToPath(import.meta.url)}`);
}

export const repoRoot = findRepoRoot();
export const guestImageBuilder = resolve(repoRoot, 'test/guest/build-guest-image.sh');

export function guestImageDir(): string {
  return process.env.VIO4WD_GUEST_DIR ? resolve(process.env.VIO4WD_GUEST_DIR) : resolve(repoRoot, '.cache/guest');
}

function imagePaths(): Omit<GuestImage, 'release'> {
  const dir = guestImageDir();
  return {
    kernel: resolve(dir, 'vmlinuz'),
    vmlinux: resolve(dir, 'vmlinux'),
    initrd: resolve(dir, 'initramfs.cpio.gz'),
  };
}

/** True when a completed build is in the cache (the builder writes its stamp last). */
export function guestImageAvailable(): boolean {
  const dir = guestImageDir();
  const paths = imagePaths();
  return [paths.kernel, paths.vmlinux, paths.initrd, resolve(dir, 'stamp'), resolve(dir, 'kernel-release')].every((p) =>
    existsSync(p),
  );
}

let building: Promise<GuestImage> | undefined;

/**
 * Runs the builder (a no-op when its stamp matches) and returns the image paths. The first build
 * downloads about 70 MB from the Debian archive; later calls cost a few milliseconds.
 */
export function ensureGuestImage(): Promise<GuestImage> {
  building ??= runBuilder().finally(() => {
    building = undefined;
  });
  return building;
}

async function runBuilder(): Promise<GuestImage> {
  const output = await new Promise<string>((resolveRun, reject) => {
    execFile(
      'bash',
      [guestImageBuilder],
      { cwd: repoRoot, timeout: 15 * 60_000, maxBuffer: 16 * 1024 * 1024, env: process.env },
      (err, stdout, stderr) => {
        const text = `${stdout}${stderr}`;
        if (err) reject(new Error(`guest image: ${guestImageBuilder} failed (${err.message.split('\n')[0]}):\n${text.slice(-4000)}`));
        else resolveRun(text);
      },
    );
  });
  if (!guestImageAvailable()) {
    throw new Error(`guest image: the builder succeeded but ${guestImageDir()} is incomplete:\n${output.slice(-2000)}`);
  }
  const release = readFileSync(resolve(guestImageDir(), 'kernel-release'), 'utf8').trim();
  return { ...imagePaths(), release };
}
