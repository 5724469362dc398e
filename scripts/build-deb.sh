#!/bin/bash
# Builds the Debian package vio4wd_<version>_amd64.deb from this checkout with dpkg-deb only:
#   /usr/lib/vio4wd                 the compiled program (dist/) and its production node_modules
#   /usr/bin                        virtio-forwarder, vio4wd-vmm, vio4wd_core_scheduler and the tools
#   /usr/lib/virtio-forwarder/, /usr/lib64/virtio-forwarder/
#                                   the tools under the original's file names (*.py), for callers
#                                   such as os-vif that run those paths
#   /lib/systemd/system             the units of etc/systemd
#   /etc/default/virtioforwarder    the configuration (a conffile)
#   /usr/share/man/man8             a page per command, made from its --help at build time
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/build-deb.sh [-o DIR] [--no-build]

Builds vio4wd_<version>_amd64.deb (version from package.json) into DIR (default:
build/ in the checkout) and prints its path. Needs node and npm's packages
installed (npm ci), dpkg-deb, gzip and python3.

  -o, --output DIR   where to put the .deb
  --no-build         use dist/ as it is instead of compiling first
  -h, --help         this text
USAGE
}

out_dir=""
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    -o|--output) [ $# -ge 2 ] || { echo "build-deb: $1 needs a directory" >&2; exit 2; }; out_dir=$2; shift 2 ;;
    --output=*) out_dir=${1#--output=}; shift ;;
    --no-build) build=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "build-deb: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
out_dir=${out_dir:-$repo/build}
mkdir -p "$out_dir"
out_dir=$(cd "$out_dir" && pwd)

for tool in node dpkg-deb gzip python3; do
  command -v "$tool" >/dev/null || { echo "build-deb: $tool is missing" >&2; exit 1; }
done
[ -d node_modules ] || { echo "build-deb: node_modules is missing (run npm ci)" >&2; exit 1; }

version=$(node -p "require('./package.json').version")
[[ $version =~ ^[0-9][0-9A-Za-z.+~-]*$ ]] || { echo "build-deb: package.json version '$version' is not a Debian version" >&2; exit 1; }
arch=amd64
[ "$(dpkg --print-architecture)" = "$arch" ] || { echo "build-deb: the native modules shipped are x86-64 only; this machine is $(dpkg --print-architecture)" >&2; exit 1; }
# Man page dates and file times come from the last commit, so two builds of one commit match.
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
date=$(date -u -d "@$epoch" +%Y-%m-%d)

if [ "$build" = 1 ]; then
  npx tsc -p tsconfig.json
fi
[ -f dist/daemon/main.js ] || { echo "build-deb: dist/ is not built (run npm run build)" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/root
app=$root/usr/lib/vio4wd
mkdir -p "$app/dist" "$app/bin" "$root/usr/bin" "$root/DEBIAN"

# The program: the compiled layers (not tests, benchmarks or the demo), package.json (the
# daemon reads its version there), and the launchers of bin/ with node's Debian path.
for layer in vocabulary sys virtio vhost-user relay port-control scheduler daemon vmm; do
  cp -r "dist/$layer" "$app/dist/"
done
find "$app/dist" -name '*.map' -delete
cp package.json "$app/"
# The original's protobuf messages, read at run time by dist/port-control/protobuf.js.
install -D -m 0644 port-control/virtioforwarder.proto "$app/port-control/virtioforwarder.proto"
commands=(virtio-forwarder vio4wd-vmm vio4wd_core_scheduler
  virtioforwarder_port_control virtioforwarder_stats virtioforwarder_core_pinner virtioforwarder_monitor_load)
for c in "${commands[@]}"; do
  sed '1s|^#!.*|#!/usr/bin/node|' "bin/$c" > "$app/bin/$c"
  chmod 0755 "$app/bin/$c"
  ln -s "../lib/vio4wd/bin/$c" "$root/usr/bin/$c"
done

# Production dependencies only (npm's own list), without the native builds for other systems.
npm ls --omit=dev --all --parseable 2>/dev/null | tail -n +2 | while read -r dir; do
  rel=${dir#"$repo"/}
  mkdir -p "$app/$(dirname "$rel")"
  cp -rT "$rel" "$app/$rel"
done
# Source maps are for debugging the packages themselves, not for running them.
find "$app/node_modules" -name '*.map' -delete
[ -d "$app/node_modules/zeromq" ] || { echo "build-deb: npm ls listed no production modules" >&2; exit 1; }
zbuild=$app/node_modules/zeromq/build
if [ -d "$zbuild" ]; then
  find "$zbuild" -mindepth 1 -maxdepth 1 ! -name linux ! -name manifest.json -exec rm -rf {} +
  find "$zbuild/linux" -mindepth 1 -maxdepth 1 ! -name x64 -exec rm -rf {} +
  find "$zbuild/linux/x64/node" -mindepth 1 -maxdepth 1 -name 'musl-*' -exec rm -rf {} +
fi
rm -rf "$app/node_modules/@koromix/koffi-linux-x64/musl_x64"

# The tools under the original's names and places. Each is a few lines of Python that hands
# over to the command, so `path args` and `python3 path args` both work.
for dir in usr/lib/virtio-forwarder usr/lib64/virtio-forwarder; do
  mkdir -p "$root/$dir"
  for pair in virtioforwarder_port_control virtioforwarder_stats virtioforwarder_core_pinner \
      virtioforwarder_monitor_load virtioforwarder_core_scheduler:vio4wd_core_scheduler; do
    name=${pair%%:*}
    target=${pair#*:}
    cat > "$root/$dir/$name.py" <<PY
#!/usr/bin/python3
# $name under the original virtio-forwarder's name: runs /usr/bin/$target.
import os
import sys

os.execv("/usr/bin/$target", ["$target"] + sys.argv[1:])
PY
    chmod 0755 "$root/$dir/$name.py"
  done
done

# Configuration and units.
install -D -m 0644 etc/default/virtioforwarder "$root/etc/default/virtioforwarder"
for unit in etc/systemd/*.service; do
  install -D -m 0644 "$unit" "$root/lib/systemd/system/$(basename "$unit")"
done

# Man pages from each command's own --help, run from the staged tree.
mandir=$root/usr/share/man/man8
mkdir -p "$mandir"
summary() {
  case "$1" in
    virtio-forwarder) echo "relay traffic between SR-IOV VFs and the virtio-net devices of VMs over vhost-user" ;;
    vio4wd-vmm) echo "minimal KVM virtual machine monitor whose NICs are served by virtio-forwarder" ;;
    vio4wd_core_scheduler) echo "balance the relays of virtio-forwarder across its worker CPUs" ;;
    virtioforwarder_port_control) echo "add and remove VFs, bonds and vhost-user sockets of virtio-forwarder" ;;
    virtioforwarder_stats) echo "print the counters and rates of the relays of virtio-forwarder" ;;
    virtioforwarder_core_pinner) echo "show and change which worker CPUs serve the relays of virtio-forwarder" ;;
    virtioforwarder_monitor_load) echo "show the load of the worker CPUs of virtio-forwarder" ;;
  esac
}
see_also=()
for c in "${commands[@]}"; do see_also+=(--see-also "$c(8)"); done
for c in "${commands[@]}"; do
  help=$(node "$app/bin/$c" --help) || { echo "build-deb: $c --help failed" >&2; exit 1; }
  [ -n "$help" ] || { echo "build-deb: $c --help printed nothing" >&2; exit 1; }
  files=()
  case "$c" in
    virtio-forwarder|vio4wd_core_scheduler)
      files=(--file "/etc/default/virtioforwarder:the configuration, KEY=VALUE lines with # comments"
             --file "/lib/systemd/system/$c.service:the systemd unit")
      ;;
  esac
  others=()
  for ((i = 0; i < ${#see_also[@]}; i += 2)); do
    [ "${see_also[i+1]}" = "$c(8)" ] || others+=("${see_also[i]}" "${see_also[i+1]}")
  done
  printf '%s\n' "$help" | node scripts/help-to-man.mjs --name "$c" --section 8 --summary "$(summary "$c")" \
    --version "$version" --date "$date" "${files[@]}" "${others[@]}" --see-also 'systemctl(1)' > "$mandir/$c.8"
  gzip -9n "$mandir/$c.8"
done

# Debian's documentation files.
docdir=$root/usr/share/doc/vio4wd
mkdir -p "$docdir"
cat > "$docdir/copyright" <<COPY
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: vio4wd

Files: *
License: BSD-3-Clause
 On Debian systems the full text of the BSD 3-clause license is in
 /usr/share/common-licenses/BSD.

Files: usr/lib/vio4wd/node_modules/*
License: various
 Each module carries its own license file in its directory.
COPY
printf 'vio4wd (%s) unstable; urgency=medium\n\n  * Package built from the vio4wd sources.\n\n -- %s  %s\n' \
  "$version" "${DEBFULLNAME:-vio4wd maintainers} <${DEBEMAIL:-vio4wd@localhost}>" "$(date -u -R -d "@$epoch")" \
  | gzip -9n > "$docdir/changelog.gz"

# Control files.
echo /etc/default/virtioforwarder > "$root/DEBIAN/conffiles"
installed_size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: vio4wd
Version: $version
Architecture: $arch
Maintainer: ${DEBFULLNAME:-vio4wd maintainers} <${DEBEMAIL:-vio4wd@localhost}>
Installed-Size: $installed_size
Depends: nodejs (>= 20), python3, libc6, libstdc++6, libgcc-s1
Recommends: libxdp1
Provides: virtio-forwarder
Conflicts: virtio-forwarder
Replaces: virtio-forwarder
Section: net
Priority: optional
Description: vhost-user virtio-net forwarder for SR-IOV VFs, and a minimal VMM
 virtio-forwarder relays packets between the virtio-net devices of virtual
 machines, served over vhost-user, and SR-IOV virtual functions or other host
 netdevs, with worker threads pinned to CPUs. Operators add VFs, bonds and
 sockets at run time over ZeroMQ, OVSDB or a command file;
 vio4wd_core_scheduler balances the relays across the workers; vio4wd-vmm is a
 minimal KVM monitor whose VMs plug into the relay.
 .
 A successor of Netronome's virtio-forwarder: same configuration file, command
 lines, tools and tool paths.
CONTROL
cat > "$root/DEBIAN/postinst" <<'SH'
#!/bin/sh
set -e
# New or changed units: let a running systemd see them. Nothing is enabled or started, since
# the relay needs its configuration (CPUs, VFs) first.
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
  systemctl --system daemon-reload >/dev/null || true
fi
SH
cat > "$root/DEBIAN/prerm" <<'SH'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
  systemctl --system stop vio4wd_core_scheduler.service virtio-forwarder.service >/dev/null 2>&1 || true
fi
SH
cat > "$root/DEBIAN/postrm" <<'SH'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
  systemctl --system daemon-reload >/dev/null || true
fi
if [ "$1" = purge ]; then
  # Enablement links a removed package leaves behind.
  rm -f /etc/systemd/system/multi-user.target.wants/virtio-forwarder.service \
    /etc/systemd/system/virtio-forwarder.service.wants/vio4wd_core_scheduler.service
  rmdir /etc/systemd/system/virtio-forwarder.service.wants 2>/dev/null || true
fi
SH
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"

find "$root" -type d -exec chmod 0755 {} +
find "$root" -exec touch -h -d "@$epoch" {} +
deb=$out_dir/vio4wd_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
