#!/bin/bash
# Boots the test guest (Debian's kernel and the project's busybox initramfs, .cache/guest) again
# and again on /dev/kvm, alternating vio4wd-vmm and QEMU with the same kernel, initramfs, command
# line, memory and vCPUs, and prints one line per boot: whether it reached the init's ready marker,
# ended in a triple fault, or stopped. It tells a failure of the machine's KVM (the nested-KVM
# rig's emulation) from one of the VMM's: both VMMs fail alike on the first, only ours on the
# second. Meant for the rig:
#   sudo scripts/nested-run.sh --memory 8G -- test/nested/boot-survey.sh --count 14
set -uo pipefail

usage() {
  cat <<'EOF'
Usage: test/nested/boot-survey.sh [--count N] [--only vmm|qemu] [--smp N] [--memory SIZE] [--timeout S]

Boots Debian's kernel with the test initramfs (.cache/guest, built by the tests) N times under
each of vio4wd-vmm and QEMU (-accel kvm -cpu host), alternating, and prints a line per boot:
  RESULT <vmm>-<i> <ready|stopped|exited>[+triplefault][+init] <seconds>s
then a summary per VMM. Each boot's serial output is kept in .cache/boot-survey/<vmm>-<i>.log.
Needs a working /dev/kvm (run it inside scripts/nested-run.sh where there is none).

  --count N       boots per VMM (default 10)
  --only WHICH    boot only vmm or only qemu
  --smp N         vCPUs (default 2)
  --memory SIZE   guest RAM as both VMMs take it (default 512M)
  --timeout S     seconds a boot may take to print the ready marker (default 200)
EOF
}

count=10 only='' smp=2 memory=512M timeout_s=200
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --count) count=${2:?--count needs a number}; shift 2 ;;
    --only) only=${2:?--only needs vmm or qemu}; shift 2 ;;
    --smp) smp=${2:?--smp needs a number}; shift 2 ;;
    --memory) memory=${2:?--memory needs a size}; shift 2 ;;
    --timeout) timeout_s=${2:?--timeout needs seconds}; shift 2 ;;
    *) echo "boot-survey: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$count" =~ ^[1-9][0-9]*$ ]] || { echo "boot-survey: --count must be a positive number, not '$count'" >&2; exit 2; }
[[ "$smp" =~ ^[1-9][0-9]*$ ]] || { echo "boot-survey: --smp must be a positive number, not '$smp'" >&2; exit 2; }
[[ "$timeout_s" =~ ^[1-9][0-9]*$ ]] || { echo "boot-survey: --timeout must be a positive number of seconds, not '$timeout_s'" >&2; exit 2; }
case "$only" in ''|vmm|qemu) ;; *) echo "boot-survey: --only takes vmm or qemu, not '$only'" >&2; exit 2 ;; esac

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
kernel=.cache/guest/vmlinux initrd=.cache/guest/initramfs.cpio.gz
for f in "$kernel" "$initrd" dist/vmm/main.js; do
  [ -e "$f" ] || { echo "boot-survey: $f is missing (build with 'npx tsc -p .' and run the tests once to build the guest image)" >&2; exit 2; }
done
[ -c /dev/kvm ] || { echo "boot-survey: no /dev/kvm here; run it inside scripts/nested-run.sh" >&2; exit 2; }
# PVM's /dev/kvm emulates guest kernel code and cannot boot Linux (docs/vmm.md).
[ -e /sys/module/kvm_pvm ] && { echo "boot-survey: this /dev/kvm is PVM's, which cannot boot Linux; run it inside scripts/nested-run.sh" >&2; exit 2; }
append="console=ttyS0 earlyprintk=serial,ttyS0 reboot=k panic=-1 nokaslr noxsave"
logs=.cache/boot-survey
mkdir -p "$logs"
declare -A tally

boot() { # name, command...
  local name=$1; shift
  local log=$logs/$name.log start=$SECONDS result=stopped
  "$@" > "$log" 2>&1 &
  local pid=$!
  while [ $((SECONDS - start)) -lt "$timeout_s" ]; do
    if grep -q VIO4WD-GUEST-READY "$log"; then result=ready; break; fi
    if ! kill -0 "$pid" 2>/dev/null; then result=exited; break; fi
    sleep 1
  done
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  grep -q "triple fault" "$log" && result+="+triplefault"
  grep -q "Run /init" "$log" && result+="+init"
  echo "RESULT $name $result $((SECONDS - start))s"
  tally["${name%-*} ${result%%+*}"]=$(( ${tally["${name%-*} ${result%%+*}"]:-0} + 1 ))
}

for i in $(seq 1 "$count"); do
  [ "$only" != qemu ] && boot "vmm-$i" node bin/vio4wd-vmm -kernel "$kernel" -initrd "$initrd" -m "$memory" -smp "$smp" -serial stdio -append "$append"
  # -no-reboot: a triple fault ends QEMU instead of resetting the guest.
  [ "$only" != vmm ] && boot "qemu-$i" qemu-system-x86_64 -accel kvm -cpu host -M pc -m "$memory" -smp "$smp" -kernel "$kernel" -initrd "$initrd" \
    -append "$append" -display none -serial stdio -monitor none -nic none -no-reboot -d guest_errors
done
for key in "${!tally[@]}"; do echo "SUMMARY $key ${tally[$key]}"; done | sort
