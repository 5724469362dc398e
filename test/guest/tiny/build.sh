#!/bin/sh
# Builds the tiny test guest (an ELF64 entered in long mode) with the host toolchain.
# usage: build.sh OUTPUT_DIR   -> OUTPUT_DIR/tiny-guest.elf
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-"$here/../../../.cache/tiny-guest"}
mkdir -p "$out"
# No SSE/AVX (the guest never saves FPU state), no red zone (interrupts use the same stack),
# no builtins (they would call into a libc that is not there).
CFLAGS="-O2 -ffreestanding -fno-builtin -fno-stack-protector -fno-pic -fno-pie -mno-red-zone -mgeneral-regs-only -fno-asynchronous-unwind-tables -fcf-protection=none -Wall -Wextra"
gcc $CFLAGS -c "$here/guest.c" -o "$out/guest.o"
gcc -c "$here/start.S" -o "$out/start.o"
ld -nostdlib -static -no-pie -z max-page-size=4096 -z noexecstack --no-warn-rwx-segments -T "$here/link.ld" "$out/start.o" "$out/guest.o" -o "$out/tiny-guest.elf"
echo "$out/tiny-guest.elf"
