#!/bin/bash
# Reserves default-size (2 MiB) hugepages for DPDK and hugetlbfs-backed guests and mounts
# hugetlbfs at /dev/hugepages. Never lowers an existing reservation and never asks for more than
# 1000 pages: the machine is shared. Usage: scripts/reserve-hugepages.sh [pages, default 768]
set -euo pipefail

wanted=${1:-768}
max=1000
case "$wanted" in ''|*[!0-9]*) echo "reserve-hugepages: '$wanted' is not a page count" >&2; exit 2 ;; esac
if [ "$wanted" -gt "$max" ]; then
  echo "reserve-hugepages: $wanted pages asked, at most $max allowed" >&2
  exit 2
fi
[ "$(id -u)" = 0 ] || { echo "reserve-hugepages: needs root to write /proc/sys/vm/nr_hugepages" >&2; exit 1; }

current=$(cat /proc/sys/vm/nr_hugepages)
if [ "$current" -lt "$wanted" ]; then
  echo "$wanted" >/proc/sys/vm/nr_hugepages
fi
reserved=$(cat /proc/sys/vm/nr_hugepages)
if [ "$reserved" -lt "$wanted" ]; then
  # The kernel grants what it can find contiguous memory for; tests that need more say so.
  echo "reserve-hugepages: warning: asked for $wanted pages, the kernel reserved $reserved" >&2
fi

if ! awk '$2 == "/dev/hugepages" && $3 == "hugetlbfs" { found = 1 } END { exit !found }' /proc/mounts; then
  mkdir -p /dev/hugepages
  mount -t hugetlbfs -o pagesize=2M nodev /dev/hugepages
fi
echo "reserve-hugepages: $reserved reserved, $(awk '/^HugePages_Free:/ { print $2 }' /proc/meminfo) free, hugetlbfs on /dev/hugepages"
