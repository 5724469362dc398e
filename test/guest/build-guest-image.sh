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
# shellcheck source=debian-kernel.sh
. "$here/debian-kernel.sh"
need gzip gzip
need xz xz-utils
need sha256sum coreutils

recipe=$(recipe_id "$RECIPE_VERSION" "${BASH_SOURCE[0]}" "$init_script")
exit_if_built_else_make_work "$recipe" guest-build
fetch_kernel_and_busybox "$work"

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
  copy_module "$found" "$root/lib/modules/$module.ko"
  echo "$module" >>"$root/lib/modules/load-order"
done

pack_initramfs "$root"
publish_outputs "$recipe" vmlinux
