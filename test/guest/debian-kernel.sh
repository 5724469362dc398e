# Sourced by the image builders (test/guest/build-guest-image.sh, test/nested/build-nested-image.sh):
# the stamp that makes a rebuild cheap, and fetching Debian's current kernel package and
# busybox-static with `apt-get download` + `dpkg -x` (nothing is installed on the host).
# The caller defines log() and die() and sets $out, the output directory.

need() {
  command -v "$1" >/dev/null 2>&1 || die "the program '$1' is missing (Debian package: $2)"
}

# The stamp's first line identifies the recipe: a version the builder bumps and the hashes of the
# files given (the builder, its init, this file). It does not re-query the archive, so an
# up-to-date cache costs no network access.
recipe_id() {
  local version=$1 file
  shift
  printf 'recipe=%s' "$version"
  for file in "$@" "${BASH_SOURCE[0]}"; do printf ' %s=%s' "$(basename "$file")" "$(sha256sum <"$file" | cut -d' ' -f1)"; done
  printf '\n'
}

# True when $out/stamp starts with the recipe line $1 and every file it lists has its size.
outputs_match_stamp() {
  [ -f "$out/stamp" ] || return 1
  [ "$(head -n1 "$out/stamp")" = "$1" ] || return 1
  local name size
  while read -r name size; do
    [ -f "$out/$name" ] && [ "$(stat -c %s "$out/$name")" = "$size" ] || return 1
  done < <(tail -n +2 "$out/stamp")
}

# Writes the stamp last, so an interrupted build is redone: recipe line $1, then the files' sizes.
write_stamp() {
  local recipe=$1 name
  shift
  { echo "$recipe"; for name in "$@"; do echo "$name $(stat -c %s "$out/$name")"; done; } >"$out/stamp.new"
  mv "$out/stamp.new" "$out/stamp"
}

# Exits 0 when the cache already holds a build of recipe $1 (unless $force is 1); otherwise makes
# the private work directory $work, removed when the builder exits.
exit_if_built_else_make_work() {
  if [ "${force:-0}" = 0 ] && outputs_match_stamp "$1"; then
    log "up to date in $out ($(cat "$out/kernel-release"))"
    exit 0
  fi
  work=$(mktemp -d "${TMPDIR:-/tmp}/vio4wd-$2.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  chmod 755 "$work"
}

candidate_version() {
  apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2 }'
}

# Downloads and unpacks the kernel package that linux-image-amd64 names and busybox-static into
# the directory $1. Sets kernel_pkg, kernel_release, bzimage, busybox and moddir.
fetch_kernel_and_busybox() {
  local work=$1
  need apt-get apt
  need apt-cache apt
  need dpkg dpkg
  local apt_opts=()
  # As root apt drops to the _apt user for downloads, which cannot write into our private work dir.
  [ "$(id -u)" = 0 ] && apt_opts+=(-o APT::Sandbox::User=root)
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
  (cd "$work" && apt-get "${apt_opts[@]}" -q download "$kernel_pkg" busybox-static >&2) ||
    die "apt-get download $kernel_pkg busybox-static failed (is the Debian archive reachable?)"
  dpkg -x "$work"/linux-image-*_amd64.deb "$work/kernel"
  dpkg -x "$work"/busybox-static_*_amd64.deb "$work/busybox"
  bzimage=$work/kernel/boot/vmlinuz-$kernel_release
  [ -f "$bzimage" ] || die "the package $kernel_pkg has no /boot/vmlinuz-$kernel_release"
  busybox=$work/busybox/bin/busybox
  [ -x "$busybox" ] || die "busybox-static has no /bin/busybox"
  moddir=$work/kernel/lib/modules/$kernel_release
}

# Copies module file $1 to $2 uncompressed.
copy_module() {
  case "$1" in
    *.ko.xz) xz -dc "$1" >"$2" ;;
    *.ko.zst) need zstd zstd; zstd -dcq "$1" >"$2" ;;
    *) cp "$1" "$2" ;;
  esac
}

# Packs the directory $1 into $work/initramfs.cpio.gz (gzipped newc, root ownership).
pack_initramfs() {
  # The kernel opens /dev/console before /init runs; without the node the init's early output is lost.
  if [ "$(id -u)" = 0 ]; then
    mknod -m 600 "$1/dev/console" c 5 1
    mknod -m 666 "$1/dev/null" c 1 3
  fi
  set -- "$1" "$work/initramfs.cpio.gz"
  if command -v cpio >/dev/null 2>&1 && cpio --version 2>/dev/null | grep -q GNU; then
    (cd "$1" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) | gzip -9 >"$2"
  else
    # GNU cpio can record root ownership when we are not root; busybox's cpio is the fallback.
    (cd "$1" && find . | LC_ALL=C sort | "$busybox" cpio -o -H newc 2>/dev/null) | gzip -9 >"$2"
  fi
}

# Publishes vmlinuz, the initramfs, kernel-release and the files named after the recipe $1 (made
# in $work) into $out; the stamp goes last, so an interrupted build is redone.
publish_outputs() {
  local recipe=$1 name
  shift
  mkdir -p "$out"
  rm -f "$out/stamp"
  cp "$bzimage" "$out/vmlinuz"
  for name in initramfs.cpio.gz "$@"; do mv "$work/$name" "$out/$name"; done
  echo "$kernel_release" >"$out/kernel-release"
  write_stamp "$recipe" vmlinuz "$@" initramfs.cpio.gz kernel-release
  log "built $kernel_release into $out"
}
