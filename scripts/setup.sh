#!/bin/bash
# Prepares a Debian 12 machine (as root) for the demo and the tests: the real peers (QEMU,
# DPDK's testpmd, ovsdb-server), the npm dependencies and the build, hugepages, and the test
# guest (Debian's kernel + a busybox initramfs, built from Debian packages and cached). Every
# step is skipped when already done, so running it again is cheap.
set -euo pipefail
case "${1:-}" in -h|--help) printf '%b\n' 'Usage: scripts/setup.sh\n\nPrepares a Debian 12 machine (as root) for the demo and the tests: the real peers (QEMU,\nDPDKs testpmd, ovsdb-server), the npm dependencies and the build, hugepages, and the test\nguest (Debians kernel + a busybox initramfs, built from Debian packages and cached). Every\nstep is skipped when already done, so running it again is cheap.'; exit 0 ;; esac

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export DEBIAN_FRONTEND=noninteractive
[ "$(id -u)" = 0 ] || { echo "setup: run as root (apt-get, hugepages, network namespaces)" >&2; exit 1; }

run_start=$(date +%s)
step_name=""
step_start=0

end_step() {
  if [ -n "$step_name" ]; then
    echo "--- $step_name: done in $(($(date +%s) - step_start)) s"
    step_name=""
  fi
}

begin_step() {
  end_step
  step_name=$1
  step_start=$(date +%s)
  echo
  echo "=== $step_name ($(date -u +%H:%M:%S) UTC)"
}

on_exit() {
  local status=$?
  if [ -n "$step_name" ]; then
    echo "--- $step_name: FAILED (exit $status) after $(($(date +%s) - step_start)) s"
  fi
  echo "=== setup: $(($(date +%s) - run_start)) s, exit $status"
}
trap on_exit EXIT

# QEMU 7.2, dpdk-testpmd (it lives in dpdk-dev, not dpdk), ovsdb-server/ovs-vsctl, iasl for the
# VMM's ACPI tables, gcc/binutils for the VMM's tiny test guest, what the guest builder and the
# network tests call, what scripts/build-deb.sh and its test use (dpkg-deb, man, groff),
# protoc, Google's protobuf runtime and pyzmq for the tests that speak the original's protobuf
# protocol to the ZMQ services, and libvirt 9.0 (libvirtd, virtlogd, virsh, and the libvirt-qemu
# user and kvm group its QEMU runs as) for the libvirt test, which starts libvirtd itself: no
# service is enabled or started here. iperf3 and ethtool serve bench/iperf.ts (iperf3 also goes
# into the bench's guest). libxdp1 lets AF_XDP ports join libxdp's dispatcher; xdp-tools
# (xdp-filter, xdp-loader) is the other program in the test of that.
packages=(
  qemu-system-x86 dpdk-dev openvswitch-common openvswitch-switch acpica-tools
  libvirt-daemon-system libvirt-clients
  iproute2 busybox-static cpio xz-utils iputils-ping procps util-linux systemd
  gcc binutils python3 dpkg man-db groff-base gzip python3-zmq python3-protobuf protobuf-compiler
  iperf3 ethtool libxdp1 xdp-tools
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  begin_step "apt-get update"
  timeout 10m apt-get update -q
  begin_step "install packages: ${missing[*]}"
  # Recommends would add a desktop's worth of QEMU extras (GUI, OVMF, block drivers) nobody uses.
  timeout 20m apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

begin_step "versions"
node --version
npm --version
qemu-system-x86_64 --version | head -n1
dpkg-query -W -f 'dpdk-dev ${Version}\n' dpdk-dev
ovsdb-server --version | head -n1

begin_step "npm dependencies and build"
if [ -f node_modules/.package-lock.json ] && [ node_modules/.package-lock.json -nt package-lock.json ]; then
  echo "node_modules is up to date"
else
  timeout 10m npm ci --no-audit --no-fund
fi
npm run build

begin_step "hugepages (768 x 2 MiB) and hugetlbfs"
scripts/reserve-hugepages.sh 768

begin_step "test guest image (Debian kernel + busybox initramfs)"
timeout 10m test/guest/build-guest-image.sh

# The KVM tests run in the nested-KVM rig where /dev/kvm cannot boot Linux (test/support/kvm.ts).
begin_step "nested-KVM rig image (Debian kernel + kvm_amd, 9p; used where /dev/kvm is missing)"
timeout 10m test/nested/build-nested-image.sh

end_step
