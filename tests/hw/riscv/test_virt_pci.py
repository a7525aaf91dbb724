"""The virt board's PCIe host bridge against QEMU 7.2: configuration space as its ECAM reads
back before any guest runs, device placement, and the command-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kvmpy.config import OptionSpec
from kvmpy.errors import ConfigError

ECAM = 0x30000000


def _drive(path: Path, interface: str = "virtio", drive_id: str = "virtio0",
           text: str = "") -> OptionSpec:
    props = {"file": str(path), "if": interface, "id": drive_id, "format": "raw"}
    return OptionSpec(drive_id, props, text or f"-drive file={path},if={interface}")


def _devices(*texts: str) -> list[OptionSpec]:
    specs = []
    for text in texts:
        driver, *rest = text.split(",")
        props = dict(item.split("=", 1) for item in rest)
        specs.append(OptionSpec(driver, props, f"-device {text}"))
    return specs


def _ecam_words(system: Any, devfn: int, count: int = 64) -> list[int]:
    base = ECAM + (devfn << 12)
    return [system.bus.read(base + 4 * i, 4) for i in range(count)]


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(1 << 20))
    return path


CASES = {
    "none": [],
    "rng-blk-serial": ["virtio-rng-pci", "virtio-serial-pci,id=ser0", "virtio-blk,drive=hd0"],
    "placed": ["virtio-rng-pci,addr=5", "virtio-rng,addr=6.0,multifunction=on",
               "virtio-serial-pci,addr=6.1", "virtio-rng-pci-non-transitional,addr=0x1f"],
    "transitional": ["virtio-rng-pci-transitional", "virtio-blk-pci,drive=hd0,vectors=5"],
    "no-msix": ["virtio-blk-pci,drive=hd0,vectors=0", "virtio-rng-pci,vectors=0"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_config_space_matches_qemu(board: Any, oracle: Any, disk: Path, case: str) -> None:
    devices = CASES[case]
    system, _ = board(bios="none", devices=_devices(*devices),
                      drives=[_drive(disk, "none", "hd0")])
    args = ["-M", "virt", "-bios", "none", "-drive", f"file={disk},if=none,id=hd0,format=raw"]
    for text in devices:
        args += ["-device", text]
    slots = sorted({devfn for devfn in system.machine.devices["pcie"].bus.devices} | {8, 0xF8})
    for devfn in slots:
        theirs = oracle.xp_words(args, ECAM + (devfn << 12), 64)
        assert _ecam_words(system, devfn) == theirs, f"devfn {devfn:#x}"


def test_drive_if_virtio_follows_the_devices(board: Any, oracle: Any, disk: Path) -> None:
    # QEMU adds the virtio-blk of -drive if=virtio after every -device.
    system, _ = board(bios="none", devices=_devices("virtio-rng-pci", "virtio-rng"),
                      drives=[_drive(disk)])
    bus = system.machine.devices["pcie"].bus
    assert {devfn >> 3: dev.type_name for devfn, dev in bus.devices.items()} == \
        {0: "gpex-root", 1: "virtio-rng-pci", 2: "virtio-rng-pci", 3: "virtio-blk-pci"}
    args = ["-M", "virt", "-bios", "none", "-device", "virtio-rng-pci", "-device",
            "virtio-rng", "-drive", f"file={disk},if=virtio,format=raw"]
    assert oracle.xp_words(args, ECAM + (3 << 15), 1) == [0x10011AF4]


def test_virtio_devices_still_go_on_virtio_mmio(board: Any) -> None:
    _, machine = board(bios="none",
                       devices=_devices("virtio-rng-device", "virtio-rng-device,"
                                        "bus=virtio-mmio-bus.3"))
    slots = machine.devices["virtio"]
    assert slots[7].device is not None and slots[3].device is not None
    assert list(machine.devices["pcie"].bus.devices) == [0]


@pytest.mark.parametrize(("devices", "message"), [
    (["virtio-rng-pci,addr=1", "virtio-rng-pci,addr=1"],
     "-device virtio-rng-pci,addr=1: PCI: slot 1 function 0 not available for virtio-rng-pci, "
     "in use by virtio-rng-pci,id=(null)"),
    (["virtio-rng-pci,addr=0"],
     "-device virtio-rng-pci,addr=0: PCI: slot 0 function 0 not available for virtio-rng-pci, "
     "in use by gpex-root,id=(null)"),
    (["virtio-rng-pci,bus=pcie.1"], "-device virtio-rng-pci,bus=pcie.1: Bus 'pcie.1' not found"),
    (["virtio-rng-pci,addr=1.9"],
     "-device virtio-rng-pci,addr=1.9: Property 'virtio-rng-pci.addr' doesn't take value '1.9'"),
    (["virtio-rng-pci,addr=32"],
     "-device virtio-rng-pci,addr=32: Property 'virtio-rng-pci.addr' doesn't take value '32'"),
    (["virtio-rng-pci,addr=2.0", "virtio-rng-pci,addr=2.1"],
     "-device virtio-rng-pci,addr=2.1: PCI: single function device can't be populated in "
     "function 2.1"),
    (["virtio-rng-pci,addr=2.1", "virtio-rng-pci,addr=2.0"],
     "-device virtio-rng-pci,addr=2.0: PCI: 2.0 indicates single function, but 2.1 is "
     "already populated."),
    (["virtio-rng-pci,bus=virtio-mmio-bus.0"],
     "-device virtio-rng-pci,bus=virtio-mmio-bus.0: Device 'virtio-rng-pci' can't go on "
     "virtio-mmio-bus bus"),
    (["virtio-rng-device,bus=pcie.0"],
     "-device virtio-rng-device,bus=pcie.0: Device 'virtio-rng-device' can't go on PCIE bus"),
    (["virtio-rng-pci,disable-legacy=on,disable-modern=on"],
     "-device virtio-rng-pci,disable-legacy=on,disable-modern=on: device cannot work as "
     "neither modern nor legacy mode is enabled"),
])
def test_placement_errors_are_qemus(board: Any, oracle: Any, devices: list[str],
                                    message: str) -> None:
    with pytest.raises(ConfigError) as info:
        board(bios="none", devices=_devices(*devices))
    assert f"{info.value.option}: {info.value}" == message
    args = ["-M", "virt", "-bios", "none"]
    for text in devices:
        args += ["-device", text]
    assert f"qemu-system-riscv64: {message}" in oracle.hmp(args, [])


def test_slots_fill_up(board: Any) -> None:
    with pytest.raises(ConfigError, match="PCI: no slot/function available for virtio-rng-pci, "
                       "all in use or reserved"):
        board(bios="none", devices=_devices(*["virtio-rng-pci"] * 32))
