#!/bin/sh
# Rebuild the committed test guests of tests/hw (needs riscv64-unknown-elf-gcc).
set -e
cd "$(dirname "$0")"
riscv64-unknown-elf-gcc -march=rv64imac_zicsr -mabi=lp64 -nostdlib -nostartfiles \
    -T mmio_probe.ld -o mmio_probe.elf mmio_probe.S
