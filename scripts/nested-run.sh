#!/bin/bash
# Runs a command where /dev/kvm exists even if this machine has none: inside a Linux guest (L1)
# under QEMU's TCG with AMD SVM emulated (-cpu max), which loads kvm_amd. The host's root is shared
# read-only, the checkout read-write, and the command runs in a chroot that looks like the host
# (same node, same checkout path, same working directory). Its output streams here; its exit
# status becomes this script's.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/nested-run.sh [options] [--] COMMAND [ARG...]

Runs COMMAND as root inside the nested-KVM rig: a Debian kernel booted by qemu-system-x86_64
under TCG with SVM emulated, kvm_amd loaded, the host's / shared read-only and this checkout
read-write at the same path. The working directory is kept (it must be visible in the guest:
not under /tmp, /run, /root or /var/tmp, which are private there). CI and every VIO4WD_*
variable are passed in; the guest sets VIO4WD_IN_NESTED=1.

Options:
  --timeout SECONDS  end the guest after this long (default 1800); exit 124
  --memory SIZE      guest RAM, QEMU syntax (default 4G)
  --cpus N           guest vCPUs (default: this machine's CPU count)
  --hugepages N      2 MiB hugepages reserved in the guest (default 256)
  --env NAME         also pass the variable NAME (repeatable)
  --debug            keep the guest kernel's messages on the console
  -h, --help         this text

Exit status: the command's; 124 on timeout; 125 when the rig itself failed (no QEMU, no SVM,
no /dev/kvm in the guest, a share that did not mount: the reason is printed).
The guest image is built on first use by test/nested/build-nested-image.sh (.cache/nested).
EOF
}

timeout_s=1800
memory=4G
cpus=$(nproc)
hugepages=256
debug=0
extra_env=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --timeout) timeout_s=${2:?--timeout needs seconds}; shift 2 ;;
    --memory) memory=${2:?--memory needs a size}; shift 2 ;;
    --cpus) cpus=${2:?--cpus needs a count}; shift 2 ;;
    --hugepages) hugepages=${2:?--hugepages needs a count}; shift 2 ;;
    --env) extra_env+=("${2:?--env needs a name}"); shift 2 ;;
    --debug) debug=1; shift ;;
    --) shift; break ;;
    -*) echo "nested-run: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { echo "nested-run: no command given (see --help)" >&2; exit 2; }
[[ "$timeout_s" =~ ^[1-9][0-9]*$ ]] || { echo "nested-run: --timeout must be a positive number of seconds, not '$timeout_s'" >&2; exit 2; }
[[ "$cpus" =~ ^[1-9][0-9]*$ ]] || { echo "nested-run: --cpus must be a positive count, not '$cpus'" >&2; exit 2; }
[[ "$hugepages" =~ ^[0-9]+$ ]] || { echo "nested-run: --hugepages must be a count, not '$hugepages'" >&2; exit 2; }

rig_fail() { echo "nested-run: $*" >&2; exit 125; }

project=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
case "$project" in *[[:space:]]*) rig_fail "the checkout path '$project' has white space, which the kernel command line cannot carry" ;; esac
cwd=$(pwd)
case "$cwd/" in
  /tmp/*|/run/*|/root/*|/var/tmp/*)
    case "$cwd/" in "$project"/*) ;; *) rig_fail "the working directory $cwd is private inside the guest; run from the checkout or another host path" ;; esac ;;
esac
command -v qemu-system-x86_64 >/dev/null || rig_fail "qemu-system-x86_64 is missing (Debian package qemu-system-x86; scripts/setup.sh installs it)"
[ "$(id -u)" = 0 ] || rig_fail "run as root: the guest's chroot acts as root on the shared checkout"

image=${VIO4WD_NESTED_DIR:-$project/.cache/nested}
VIO4WD_NESTED_DIR=$image "$project/test/nested/build-nested-image.sh" || rig_fail "building the guest image failed"

mkdir -p "$project/.cache"
run_dir=$(mktemp -d "$project/.cache/nested-run.XXXXXX")
qemu_pid=
cleanup() {
  [ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null || true
  rm -rf "$run_dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The command, as a script the guest's init runs in the chroot: working directory, variables, argv.
{
  printf 'cd %q || exit 125\n' "$cwd"
  while IFS='=' read -r name _; do
    case "$name" in VIO4WD_FORCE_NESTED|VIO4WD_NESTED_DIR) ;; CI|VIO4WD_*) printf 'export %s=%q\n' "$name" "${!name}" ;; esac
  done < <(env)
  for name in "${extra_env[@]}"; do
    [ -n "${!name+set}" ] && printf 'export %s=%q\n' "$name" "${!name}"
  done
  printf 'exec'
  printf ' %q' "$@"
  printf '\n'
} >"$run_dir/run.sh"

append="console=ttyS0 panic=-1 reboot=t vio4wd.project=$project vio4wd.hugepages=$hugepages"
[ "$debug" = 1 ] && append+=" vio4wd.debug" || append+=" quiet"
share_opts=security_model=none,multidevs=remap
echo "nested-run: booting the rig (QEMU TCG, -cpu max, $cpus vCPUs, $memory) for: $*" >&2
start=$(date +%s)
# timeout(1) ends QEMU (status 124) when the time is up. The guest's console is this script's output; its CRs are dropped so logs read like the host's.
timeout -k 10 "$timeout_s" qemu-system-x86_64 -accel tcg,thread=multi -cpu max -smp "$cpus" -m "$memory" -M pc \
  -nodefaults -no-user-config -display none -nic none -no-reboot -serial stdio \
  -kernel "$image/vmlinuz" -initrd "$image/initramfs.cpio.gz" -append "$append" \
  -virtfs "local,path=/,mount_tag=hostroot,$share_opts,readonly=on" \
  -virtfs "local,path=$project,mount_tag=project,$share_opts" \
  -virtfs "local,path=$run_dir,mount_tag=results,$share_opts" \
  </dev/null > >(sed -u 's/\r$//') 2>&1 &
qemu_pid=$!
qemu_status=0
wait "$qemu_pid" || qemu_status=$?
qemu_pid=
elapsed=$(($(date +%s) - start))

if [ -f "$run_dir/status" ]; then
  status=$(cat "$run_dir/status")
  echo "nested-run: the command exited with status $status after $elapsed s in the rig" >&2
  exit "$status"
fi
if [ "$qemu_status" = 124 ]; then
  echo "nested-run: the command did not finish within $timeout_s s; the guest was stopped (see its last output above)" >&2
  exit 124
fi
rig_fail "the guest ended (QEMU status $qemu_status) after $elapsed s without reporting the command's status (see its output above)"
