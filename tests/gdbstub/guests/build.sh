#!/bin/sh
# Rebuild gdbtest.elf (Debian's gcc-riscv64-unknown-elf and picolibc-riscv64-unknown-elf):
# unoptimised with full debug information, so that gdb's view (lines, locals, frames) is the
# same on every build.  Objects get fixed names, so a rebuild gives the same bytes.
set -e
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
CFLAGS="-march=rv64imafdc_zicsr -mabi=lp64d -mcmodel=medany -O0 -g -ffreestanding -Wall -Wextra -Werror"
riscv64-unknown-elf-gcc --specs=picolibc.specs $CFLAGS -c -o "$tmp/gdbtest.o" gdbtest.c
riscv64-unknown-elf-gcc $CFLAGS -c -o "$tmp/start.o" start.S
riscv64-unknown-elf-gcc --specs=picolibc.specs -march=rv64imafdc_zicsr -mabi=lp64d -nostartfiles \
    -Wl,--no-warn-rwx-segments -T gdbtest.ld -o gdbtest.elf "$tmp/start.o" "$tmp/gdbtest.o"
