#!/bin/bash
# The test suite, from a fresh Debian 12 machine: sets up everything the tests use (see
# scripts/setup.sh), then runs unit, integration (QEMU, DPDK testpmd, ovsdb-server, ZeroMQ,
# veths in namespaces) and end-to-end tests. Run as root.
set -euo pipefail
case "${1:-}" in -h|--help) printf '%b\n' 'Usage: scripts/test.sh\n\nThe test suite, from a fresh Debian 12 machine: sets up everything the tests use (see\nscripts/setup.sh), then runs unit, integration (QEMU, DPDK testpmd, ovsdb-server, ZeroMQ,\nveths in namespaces) and end-to-end tests. Run as root.'; exit 0 ;; esac
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
echo
node -e "import('./dist/test/support/kvm.js').then((k) => console.log(k.kvmRoute() === 'direct'
  ? '=== KVM tests (test/kvm): directly on /dev/kvm (' + k.kvmRouteReason() + ')'
  : '=== KVM tests (test/kvm): inside the nested-KVM rig, one boot for all files (' + k.kvmRouteReason() + ')'))"
echo "=== npm test ($(date -u +%H:%M:%S) UTC)"
start=$(date +%s)
status=0
timeout 75m npm test || status=$?
echo "=== npm test: $(($(date +%s) - start)) s, exit $status"
exit $status
