#!/bin/bash
# Builds the nested-KVM rig's L1 guest from Debian packages: Debian's kernel (bzImage) and a
# busybox initramfs that loads kvm/kvm_amd, 9p and the few modules the tests need from that same
# kernel package, then runs test/nested/init. QEMU's TCG emulates AMD SVM under `-cpu max`, so
# /dev/kvm exists inside this guest even on a host that has none (see scripts/nested-run.sh).
#
# Output (default <repo>/.cache/nested, override with VIO4WD_NESTED_DIR):
#   vmlinuz  initramfs.cpio.gz  kernel-release  stamp
# A second run does nothing while the stamp still matches the recipe; --force rebuilds.
set -euo pipefail
case "${1:-}" in -h|--help) printf '%b\n' 'Usage: test/nested/build-nested-image.sh [--force]\n\nBuilds the L1 guest of the nested-KVM rig (Debian kernel + busybox initramfs with kvm_amd,\n9p, veth, loop, ext4) into .cache/nested (or $VIO4WD_NESTED_DIR). Cached: a second run does\nnothing unless --force.'; exit 0 ;; esac

# Bump when the image layout or contents change in a way the stamp cannot see.
RECIPE_VERSION=1

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${VIO4WD_NESTED_DIR:-$repo/.cache/nested}
init_script=$here/init
force=0
[ "${1:-}" = "--force" ] && force=1

# What L1 must load; their dependencies are read from the modules themselves (the package ships
# no modules.dep) and loaded first. crc32c_generic is ext4's soft dependency, which `depends` omits.
wanted=(kvm_amd virtio_pci 9pnet_virtio 9p veth af_packet loop crc32c_generic ext4)

log() { echo "build-nested-image: $*" >&2; }
die() { log "error: $*"; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "the program '$1' is missing (Debian package: $2)"; }
need apt-get apt
need apt-cache apt
need dpkg dpkg
need modinfo kmod
need gzip gzip
need sha256sum coreutils

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
    [ -f "$out/$name" ] && [ "$(stat -c %s "$out/$name")" = "$size" ] || return 1
  done < <(tail -n +2 "$out/stamp")
}

if [ "$force" = 0 ] && outputs_match_stamp; then
  log "up to date in $out ($(cat "$out/kernel-release"))"
  exit 0
fi

apt_opts=()
# As root apt drops to the _apt user for downloads, which cannot write into our private work dir.
[ "$(id -u)" = 0 ] && apt_opts+=(-o APT::Sandbox::User=root)

candidate_version() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2 }'; }
if [ -z "$(candidate_version linux-image-amd64)" ] || [ "$(candidate_version linux-image-amd64)" = "(none)" ]; then
  [ "$(id -u)" = 0 ] || die "apt knows no linux-image-amd64 and only root can run apt-get update"
  log "apt has no package lists yet: running apt-get update"
  apt-get update -qq >&2 || die "apt-get update failed"
fi
kernel_pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
  awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9].*-amd64$/ { print $2; exit }')
[ -n "$kernel_pkg" ] || die "could not read the kernel package from linux-image-amd64's dependencies"
kernel_release=${kernel_pkg#linux-image-}
log "kernel package $kernel_pkg ($(candidate_version "$kernel_pkg")), busybox-static $(candidate_version busybox-static)"

work=$(mktemp -d "${TMPDIR:-/tmp}/vio4wd-nested-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
(cd "$work" && apt-get "${apt_opts[@]}" -q download "$kernel_pkg" busybox-static >&2) ||
  die "apt-get download $kernel_pkg busybox-static failed (is the Debian archive reachable?)"
dpkg -x "$work"/linux-image-*_amd64.deb "$work/kernel"
dpkg -x "$work"/busybox-static_*_amd64.deb "$work/busybox"
bzimage=$work/kernel/boot/vmlinuz-$kernel_release
[ -f "$bzimage" ] || die "the package $kernel_pkg has no /boot/vmlinuz-$kernel_release"
busybox=$work/busybox/bin/busybox
moddir=$work/kernel/lib/modules/$kernel_release

root=$work/initramfs
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,host,scratch,lib/modules}
cp "$busybox" "$root/bin/busybox"
cp "$init_script" "$root/init"
chmod 755 "$root/init" "$root/bin/busybox"

# Module names use '_' and '-' interchangeably; files are found by either spelling.
module_file() {
  local name=$1 alt=${1//_/-} alt2=${1//-/_}
  find "$moddir/kernel" \( -name "$alt.ko*" -o -name "$alt2.ko*" \) | head -n1
}
builtin() {
  local alt=${1//_/-} alt2=${1//-/_}
  grep -qE "/($alt|$alt2)\.ko\$" "$moddir/modules.builtin" 2>/dev/null
}
declare -A placed=()
order=()
place() {
  local name=${1//-/_} file dep
  [ -n "${placed[$name]:-}" ] && return 0
  placed[$name]=1
  builtin "$name" && return 0
  file=$(module_file "$name")
  [ -n "$file" ] || die "module $name is neither built into $kernel_release nor shipped as a .ko"
  for dep in $(modinfo -F depends "$file" | tr ',' ' '); do place "$dep"; done
  case "$file" in
    *.ko.xz) xz -dc "$file" >"$root/lib/modules/$name.ko" ;;
    *.ko.zst) need zstd zstd; zstd -dcq "$file" >"$root/lib/modules/$name.ko" ;;
    *) cp "$file" "$root/lib/modules/$name.ko" ;;
  esac
  order+=("$name")
}
for m in "${wanted[@]}"; do place "$m"; done
printf '%s\n' "${order[@]}" >"$root/lib/modules/load-order"
log "modules: ${order[*]}"

if [ "$(id -u)" = 0 ]; then
  mknod -m 600 "$root/dev/console" c 5 1
  mknod -m 666 "$root/dev/null" c 1 3
fi
if command -v cpio >/dev/null 2>&1 && cpio --version 2>/dev/null | grep -q GNU; then
  (cd "$root" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) | gzip -6 >"$work/initramfs.cpio.gz"
else
  (cd "$root" && find . | LC_ALL=C sort | "$busybox" cpio -o -H newc 2>/dev/null) | gzip -6 >"$work/initramfs.cpio.gz"
fi

# The stamp is written last, so an interrupted build is redone.
mkdir -p "$out"
rm -f "$out/stamp"
cp "$bzimage" "$out/vmlinuz"
mv "$work/initramfs.cpio.gz" "$out/initramfs.cpio.gz"
echo "$kernel_release" >"$out/kernel-release"
{
  recipe_id
  for name in vmlinuz initramfs.cpio.gz kernel-release; do echo "$name $(stat -c %s "$out/$name")"; done
} >"$out/stamp.new"
mv "$out/stamp.new" "$out/stamp"
log "built $kernel_release into $out"
