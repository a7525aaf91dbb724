"""Boot ROM, fw_dynamic_info, payload addresses and hart start state, checked against QEMU 7.2."""

from __future__ import annotations

import dataclasses
import os
import struct
from pathlib import Path
from typing import Any

import fdt
import pytest

from kvmpy.accel.base import PRV_M, PRV_S
from kvmpy.errors import ConfigError, LoaderError
from kvmpy.firmware import opensbi
from kvmpy.hw.riscv import boot

MiB = 1 << 20
OPENSBI = opensbi.find_fw_dynamic()
needs_opensbi = pytest.mark.skipif(OPENSBI is None, reason="no OpenSBI fw_dynamic installed "
                                   "(Debian package opensbi)")


@pytest.fixture
def payloads(tmp_path: Path) -> Path:
    """A 300000-byte raw "kernel" and a 100000-byte initrd (contents do not matter)."""
    (tmp_path / "k.bin").write_bytes(os.urandom(300000))
    (tmp_path / "i.bin").write_bytes(os.urandom(100000))
    return tmp_path


def mrom_words(system: Any, count: int = 22) -> list[int]:
    rom = system.memory_at(0x1000, count * 4)
    return [rom.read_int(0x1000 + 4 * i, 4) for i in range(count)]


# -- pure functions ----------------------------------------------------------------------------

def test_fw_dynamic_info_layout() -> None:
    info = boot.fw_dynamic_info(0x80200000)
    assert struct.unpack("<6Q", info) == (0x4942534F, 2, 0x80200000, 1, 0, 0)


def test_reset_vector_is_qemus() -> None:
    rom = boot.reset_vec_rom(0x1000, start_addr=0x80000000, fdt_addr=0x87E00000,
                             kernel_entry=0x80200000)
    assert len(rom) == 0x58
    assert struct.unpack("<6I", rom[:24]) == (0x00000297, 0x02828613, 0xF1402573, 0x0202B583,
                                              0x0182B283, 0x00028067)
    assert struct.unpack("<QQ", rom[24:40]) == (0x80000000, 0x87E00000)


@pytest.mark.parametrize(("ram", "fdt_size", "expected"), [
    (128 * MiB, MiB, 0x87E00000),
    (512 * MiB, MiB, 0x9FE00000),
    (4096 * MiB, MiB, 0xBFE00000),        # capped below 3 GiB
    (128 * MiB, 3 * MiB, 0x87C00000),
])
def test_fdt_address(ram: int, fdt_size: int, expected: int) -> None:
    assert boot.compute_fdt_addr(0x80000000, ram, fdt_size) == expected


def test_kernel_and_initrd_addresses() -> None:
    assert boot.calc_kernel_start_addr(0x8001C280) == 0x80200000
    assert boot.calc_kernel_start_addr(0x80000000) == 0x80000000
    assert boot.initrd_start(0x80200000, 128 * MiB) == 0x84200000
    assert boot.initrd_start(0x80200000, 1024 * MiB) == 0x88200000


# -- against QEMU ------------------------------------------------------------------------------

@needs_opensbi
@pytest.mark.parametrize("extra", [
    ["-bios", "none"],                  # no -kernel: kvmpy would boot its bundled guest
    ["-m", "512M", "-smp", "2", "-kernel", "k.bin"],
    ["-kernel", "k.bin", "-initrd", "i.bin", "-append", "console=ttyS0"],
    ["-bios", "none", "-kernel", "k.bin", "-initrd", "i.bin"],
])
def test_mrom_matches_qemu(board: Any, oracle: Any, payloads: Path, extra: list[str],
                          monkeypatch: Any) -> None:
    monkeypatch.chdir(payloads)
    options: dict[str, Any] = {}
    args = iter(extra)
    for opt in args:
        value = next(args)
        if opt == "-m":
            options["ram_size"] = int(value[:-1]) * MiB
        elif opt == "-smp":
            continue
        else:
            options[opt.lstrip("-")] = value
    cpus = 2 if "-smp" in extra else 1
    system, _ = board(cpus=cpus, **options)
    expected = oracle.xp_words(["-M", "virt", *extra], 0x1000, 22, cwd=payloads)
    assert len(expected) == 22
    assert mrom_words(system) == expected


@needs_opensbi
@pytest.mark.parametrize("extra", [
    ["-kernel", "k.bin", "-initrd", "i.bin"],
    ["-m", "1G", "-kernel", "k.bin", "-initrd", "i.bin"],
    ["-bios", "none", "-kernel", "k.bin", "-initrd", "i.bin"],
    ["-bios", "k.bin"],
    ["-kernel", "k.bin", "-initrd", "/dev/zero"],  # an empty initrd: QEMU lists no ROM
])
def test_load_addresses_match_qemu_info_roms(board: Any, oracle: Any, payloads: Path,
                                             extra: list[str], monkeypatch: Any) -> None:
    monkeypatch.chdir(payloads)
    options: dict[str, Any] = {}
    args = iter(extra)
    for opt in args:
        value = next(args)
        if opt == "-m":
            options["ram_size"] = 1024 * MiB
        else:
            options[opt.lstrip("-")] = value
    _, machine = board(**options)
    ours = [(Path(r.name).name, r.addr, r.size) for r in machine.roms]
    theirs = oracle.roms(["-M", "virt", *extra], cwd=payloads)
    # QEMU names its bundled copy of OpenSBI differently from Debian's opensbi package.
    rename = {"opensbi-riscv64-generic-fw_dynamic.bin": "fw_dynamic.bin"}
    theirs = [(rename.get(name, name), addr, size) for name, addr, size in theirs]
    assert ours == theirs


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_an_initrd_of_0_bytes_is_still_announced(board: Any, payloads: Path,
                                                 device: str) -> None:
    """QEMU 7.2 with ``-initrd /dev/zero`` (which measures 0 bytes): /chosen has
    linux,initrd-start = linux,initrd-end = 0x84200000, and the kernel finds no initrd."""
    _, machine = board(kernel=str(payloads / "k.bin"), initrd=device)
    chosen = fdt.parse_dtb(machine.fdt_blob).get_node("chosen")
    assert chosen.get_property("linux,initrd-start").value == 0x84200000
    assert chosen.get_property("linux,initrd-end").value == 0x84200000


# -- firmware choices and hart start state -----------------------------------------------------

@needs_opensbi
def test_default_bios_is_opensbi_in_m_mode(board: Any, payloads: Path) -> None:
    system, _ = board(cpus=4, kernel=str(payloads / "k.bin"))
    assert system.firmware_mode == "opensbi"
    assert [(h.pc, h.priv, h.stopped) for h in system.boot.harts] == [(0x1000, PRV_M, False)] * 4


def test_default_bios_without_opensbi_falls_back_to_builtin(board: Any, monkeypatch: Any,
                                                            capsys: Any) -> None:
    monkeypatch.setenv(opensbi.ENV_OVERRIDE, "")
    system, _ = board(kernel=str(Path(__file__).parent / "guests" / "sbi_smoke.elf"))
    assert system.firmware_mode == "builtin"
    assert "OpenSBI not found, using the built-in SBI" in capsys.readouterr().err


def test_builtin_enters_kernel_in_s_mode(board: Any, payloads: Path) -> None:
    system, machine = board(cpus=4, bios="builtin", kernel=str(payloads / "k.bin"),
                            initrd=str(payloads / "i.bin"))
    harts = system.boot.harts
    assert system.firmware_mode == "builtin"
    assert (harts[0].pc, harts[0].priv, harts[0].a0, harts[0].a1, harts[0].stopped) == \
        (0x80000000, PRV_S, 0, 0x87E00000, False)
    assert all(h.stopped and h.a0 == i for i, h in enumerate(harts) if i)
    assert machine.fdt_addr == 0x87E00000
    assert system.sbi is machine.sbi is not None


def test_kvm_direct_boot_and_firmware_refusal(board: Any, kvm_caps: Any, payloads: Path) -> None:
    system, _ = board(caps=kvm_caps, cpus=2, kernel=str(payloads / "k.bin"))
    assert [(h.pc, h.priv, h.stopped) for h in system.boot.harts] == \
        [(0x80000000, PRV_S, False), (0x80000000, PRV_S, True)]
    assert not any(r.name.startswith("riscv.aclint") for r in system.bus.regions)
    for bios in ("default", str(payloads / "k.bin")):
        with pytest.raises(ConfigError, match=r"Machine mode firmware is not supported in "
                           r"combination with KVM\."):
            board(caps=kvm_caps, bios=bios)


def test_the_firmware_refusal_is_worded_by_the_accelerator(board: Any, kvm_caps: Any) -> None:
    """The board knows only that harts without M-mode run no M-mode firmware; the words are
    the accelerator's (QEMU's under KVM, above)."""
    caps = dataclasses.replace(kvm_caps, firmware_refusal="No M-mode here.")
    with pytest.raises(ConfigError, match=r"^No M-mode here\.$"):
        board(caps=caps, bios="default")


def test_bios_file_errors(board: Any, tmp_path: Path) -> None:
    with pytest.raises(LoaderError, match='Unable to load the RISC-V firmware "nonexist"'):
        board(bios="nonexist")
    with pytest.raises(LoaderError, match="could not load kernel"):
        board(bios="none", kernel=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="-initrd only allowed with -kernel option"):
        board(bios="none", initrd=str(tmp_path / "x"))
    with pytest.raises(ConfigError, match="-append only allowed with -kernel option"):
        board(bios="none", append="quiet")


def test_elf_firmware_end_places_kernel(board: Any, tmp_path: Path) -> None:
    """An ELF -bios goes to its own addresses; the kernel follows at the next 2 MiB."""
    elf = opensbi.find_firmware_file("opensbi-riscv64-generic-fw_dynamic.elf")
    if elf is None:
        pytest.skip("no OpenSBI ELF build installed")
    (tmp_path / "k.bin").write_bytes(b"\x13" * 64)
    _, machine = board(bios=elf, kernel=str(tmp_path / "k.bin"))
    kernel = next(r for r in machine.roms if r.name.endswith("k.bin"))
    assert kernel.addr == 0x80200000


def test_reset_reloads_payloads(board: Any, payloads: Path) -> None:
    system, machine = board(bios="builtin", kernel=str(payloads / "k.bin"))
    ram = system.ram
    original = ram.read(0x80000000, 64)
    seed_before = machine.fdt_blob
    ram.write(0x80000000, bytes(64))
    machine.reset(system)
    assert ram.read(0x80000000, 64) == original
    assert machine.fdt_blob != seed_before          # fresh rng-seed, as QEMU on reset
    assert len(machine.fdt_blob) == len(seed_before)
