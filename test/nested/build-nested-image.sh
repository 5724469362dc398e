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
# shellcheck source=../guest/debian-kernel.sh
. "$here/../guest/debian-kernel.sh"
need modinfo kmod
need gzip gzip
need sha256sum coreutils

recipe=$(recipe_id "$RECIPE_VERSION" "${BASH_SOURCE[0]}" "$init_script")
exit_if_built_else_make_work "$recipe" nested-build
fetch_kernel_and_busybox "$work"

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
  copy_module "$file" "$root/lib/modules/$name.ko"
  order+=("$name")
}
for m in "${wanted[@]}"; do place "$m"; done
printf '%s\n' "${order[@]}" >"$root/lib/modules/load-order"
log "modules: ${order[*]}"

pack_initramfs "$root"
publish_outputs "$recipe"
