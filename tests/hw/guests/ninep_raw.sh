#!/bin/sh
# Rebuild ninep_raw.elf (needs riscv64-unknown-elf-gcc): a freestanding C program, run from DRAM
# base with -bios none (the link script of mmio_probe).  The object gets a fixed name, so that
# a rebuild gives the same bytes.
set -e
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
riscv64-unknown-elf-gcc -march=rv64imac_zicsr -mabi=lp64 -mcmodel=medany -O2 -ffreestanding \
    -fno-builtin -Wall -Wextra -Werror -c -o "$tmp/ninep_raw.o" ninep_raw.c
riscv64-unknown-elf-gcc -march=rv64imac_zicsr -mabi=lp64 -nostdlib -nostartfiles \
    -Wl,--no-warn-rwx-segments -T mmio_probe.ld -o ninep_raw.elf "$tmp/ninep_raw.o"
