#!/bin/bash
# Builds the Linux test guest from Debian packages: Debian's own kernel (bzImage, plus the ELF
# vmlinux inside it for PVH/ELF boots) and a busybox initramfs whose /init is test/guest/init.
# Packages are fetched with `apt-get download` and unpacked with `dpkg -x`; nothing is installed,
# so the host's own kernel and packages are never touched.
#
# Output (default <repo>/.cache/guest, override with VIO4WD_GUEST_DIR):
#   vmlinuz  initramfs.cpio.gz  vmlinux  kernel-release  stamp
# A second run does nothing while the stamp still matches the recipe; delete the stamp (or pass
# --force) to rebuild.
set -euo pipefail

# Bump when the image layout or contents change in a way the stamp cannot see.
RECIPE_VERSION=3

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${VIO4WD_GUEST_DIR:-$repo/.cache/guest}
init_script=$here/init
force=0
[ "${1:-}" = "--force" ] && force=1

# Dependencies first: the initramfs has no modules.dep, /init loads them in this order.
modules=(virtio_ring virtio virtio_mmio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
         failover net_failover virtio_net af_packet)

log() { echo "build-guest-image: $*" >&2; }
die() { log "error: $*"; exit 1; }

need() {
  command -v "$1" >/dev/null 2>&1 || die "the program '$1' is missing (Debian package: $2)"
}
need apt-get apt
need apt-cache apt
need dpkg dpkg
need gzip gzip
need xz xz-utils
need sha256sum coreutils

# The stamp identifies the recipe and the exact inputs we control; it does not re-query the
# archive, so an up-to-date cache costs no network access.
recipe_id() {
  printf 'recipe=%s init=%s builder=%s\n' "$RECIPE_VERSION" \
    "$(sha256sum <"$init_script" | cut -d' ' -f1)" \
    "$(sha256sum <"${BASH_SOURCE[0]}" | cut -d' ' -f1)"
}

outputs_match_stamp() {
  [ -f "$out/stamp" ] || return 1
  [ "$(head -n1 "$out/stamp")" = "$(recipe_id)" ] || return 1
  local name size
  while read -r name size; do
    [ -f "$out/$name" ] || return 1
    [ "$(stat -c %s "$out/$name")" = "$size" ] || return 1
  done < <(tail -n +2 "$out/stamp")
}

if [ "$force" = 0 ] && outputs_match_stamp; then
  log "up to date in $out ($(cat "$out/kernel-release"))"
  exit 0
fi

apt_opts=()
# As root apt drops to the _apt user for downloads, which cannot write into our private work dir.
[ "$(id -u)" = 0 ] && apt_opts+=(-o APT::Sandbox::User=root)

candidate_version() {
  apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2 }'
}

if [ -z "$(candidate_version linux-image-amd64)" ] || [ "$(candidate_version linux-image-amd64)" = "(none)" ]; then
  [ "$(id -u)" = 0 ] || die "apt knows no linux-image-amd64 and only root can run apt-get update"
  log "apt has no package lists yet: running apt-get update"
  apt-get update -qq >&2 || die "apt-get update failed"
fi

# The metapackage names the current kernel ABI, e.g. "linux-image-6.1.0-56-amd64 (= 6.1.192-2)".
kernel_pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
  awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9].*-amd64$/ { print $2; exit }')
[ -n "$kernel_pkg" ] || die "could not read the kernel package from linux-image-amd64's dependencies"
kernel_release=${kernel_pkg#linux-image-}
log "kernel package $kernel_pkg ($(candidate_version "$kernel_pkg")), busybox-static $(candidate_version busybox-static)"

work=$(mktemp -d "${TMPDIR:-/tmp}/vio4wd-guest-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"

(cd "$work" && apt-get "${apt_opts[@]}" -q download "$kernel_pkg" busybox-static >&2) ||
  die "apt-get download $kernel_pkg busybox-static failed (is the Debian archive reachable?)"
dpkg -x "$work"/linux-image-*_amd64.deb "$work/kernel"
dpkg -x "$work"/busybox-static_*_amd64.deb "$work/busybox"

bzimage=$work/kernel/boot/vmlinuz-$kernel_release
[ -f "$bzimage" ] || die "the package $kernel_pkg has no /boot/vmlinuz-$kernel_release"
busybox=$work/busybox/bin/busybox
[ -x "$busybox" ] || die "busybox-static has no /bin/busybox"
moddir=$work/kernel/lib/modules/$kernel_release

# --- vmlinux: the ELF kernel is the XZ stream inside the bzImage (same idea as the kernel's
# scripts/extract-vmlinux). Try every XZ magic until one decompresses to an ELF file.
extract_vmlinux() {
  local image=$1 dest=$2 offset
  # XZ stream magic: FD 37 7A 58 5A 00
  for offset in $(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$image" | cut -d: -f1); do
    # xz stops reading at the end of the stream, so tail may die of SIGPIPE: that is expected.
    if { tail -c +"$((offset + 1))" "$image" 2>/dev/null || true; } | xz -dc --single-stream >"$dest" 2>/dev/null &&
      [ "$(head -c 4 "$dest" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ]; then
      return 0
    fi
  done
  rm -f "$dest"
  return 1
}
extract_vmlinux "$bzimage" "$work/vmlinux" ||
  die "found no XZ-compressed ELF kernel inside $bzimage (is the kernel still XZ-compressed?)"

# --- initramfs
root=$work/initramfs
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,lib/modules}
cp "$busybox" "$root/bin/busybox"
cp "$init_script" "$root/init"
chmod 755 "$root/init" "$root/bin/busybox"
: >"$root/lib/modules/load-order"
for module in "${modules[@]}"; do
  if grep -q "/$module.ko\$" "$moddir/modules.builtin" 2>/dev/null; then
    continue
  fi
  found=$(find "$moddir/kernel" -name "$module.ko" -o -name "$module.ko.xz" -o -name "$module.ko.zst" | head -n1)
  [ -n "$found" ] || die "module $module is neither built into $kernel_release nor shipped as a .ko"
  case "$found" in
    *.ko.xz) xz -dc "$found" >"$root/lib/modules/$module.ko" ;;
    *.ko.zst) need zstd zstd; zstd -dcq "$found" >"$root/lib/modules/$module.ko" ;;
    *) cp "$found" "$root/lib/modules/$module.ko" ;;
  esac
  echo "$module" >>"$root/lib/modules/load-order"
done

# The kernel opens /dev/console before /init runs; without the node the init's early output is lost.
if [ "$(id -u)" = 0 ]; then
  mknod -m 600 "$root/dev/console" c 5 1
  mknod -m 666 "$root/dev/null" c 1 3
fi

# GNU cpio can record root ownership when we are not root; busybox's cpio is the fallback.
if command -v cpio >/dev/null 2>&1 && cpio --version 2>/dev/null | grep -q GNU; then
  (cd "$root" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) | gzip -9 >"$work/initramfs.cpio.gz"
else
  (cd "$root" && find . | LC_ALL=C sort | "$busybox" cpio -o -H newc 2>/dev/null) | gzip -9 >"$work/initramfs.cpio.gz"
fi

# --- publish atomically enough: the stamp is written last, so an interrupted build is redone.
mkdir -p "$out"
rm -f "$out/stamp"
cp "$bzimage" "$out/vmlinuz"
mv "$work/vmlinux" "$out/vmlinux"
mv "$work/initramfs.cpio.gz" "$out/initramfs.cpio.gz"
echo "$kernel_release" >"$out/kernel-release"
{
  recipe_id
  for name in vmlinuz vmlinux initramfs.cpio.gz kernel-release; do
    echo "$name $(stat -c %s "$out/$name")"
  done
} >"$out/stamp.new"
mv "$out/stamp.new" "$out/stamp"
log "built $kernel_release into $out"
