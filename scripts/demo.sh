#!/bin/bash
# The demo, from a fresh Debian 12 machine: sets up what it needs (scripts/setup.sh), then runs
# the relay between a QEMU guest and a veth VF stand-in and prints what passes. Run as root.
set -euo pipefail
case "${1:-}" in -h|--help) printf '%b\n' 'Usage: scripts/demo.sh\n\nThe demo, from a fresh Debian 12 machine: sets up what it needs (scripts/setup.sh), then runs\nthe relay between a QEMU guest and a veth VF stand-in and prints what passes. Run as root.'; exit 0 ;; esac
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
exec node dist/demo/demo.js
