#!/bin/sh
# Rebuild the committed test guests of tests/hw (needs riscv64-unknown-elf-gcc).
set -e
cd "$(dirname "$0")"
riscv64-unknown-elf-gcc -march=rv64imac_zicsr -mabi=lp64 -nostdlib -nostartfiles \
    -T mmio_probe.ld -o mmio_probe.elf mmio_probe.S
# pci_fuzz runs from DRAM base as well (-bios none): the same link script.  Its object gets a
# fixed name (the ELF records it), so that a rebuild gives the same bytes.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
riscv64-unknown-elf-gcc -march=rv64imac_zicsr -mabi=lp64 -c -o "$tmp/pci_fuzz.o" pci_fuzz.S
riscv64-unknown-elf-gcc -march=rv64imac_zicsr -mabi=lp64 -nostdlib -nostartfiles \
    -Wl,--no-warn-rwx-segments -T mmio_probe.ld -o pci_fuzz.elf "$tmp/pci_fuzz.o"
