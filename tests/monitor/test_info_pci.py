"""HMP ``info pci`` and QMP ``query-pci`` with qemu-system-riscv64 7.2 as the oracle.

The same command line runs on kvmpy and on QEMU, stopped (-S) so every function is as reset
left it; the QMP reply is compared as text, so QEMU's key order counts too.  BARs a guest
mapped are compared with a tiny guest that programs them through ECAM on both VMMs; the line
formats are also checked against values worked out by hand from QEMU's hmp_info_pci_device,
so they are covered where QEMU is not installed.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp.legacy import QEMUMonitorProtocol

import kvmpy
from kvmpy.monitor.pci import format_device, format_region

from ..lifecycle.helpers import kvmpy_env, vmm_command, wait_for_socket

BASE = ["-display", "none", "-nodefaults"]
VIRT = ["-M", "virt", "-bios", "none"]
ECAM = 0x3000_0000
"""The virt board's PCIe ECAM window (bus 0: devfn << 12)."""

Asker = Callable[..., tuple[str, list[dict[str, Any]]]]


@pytest.fixture
def ask(tmp_path: Path) -> Iterator[Asker]:
    """``ask(vmm, *args, until=None)`` -> (``info pci`` text, ``query-pci`` result).

    The VMM runs with ``args`` and QMP on a socket; with ``until``, ``query-pci`` is asked
    again (for up to 30 s) until ``until(result)`` holds, for a guest to do its work."""
    procs: list[subprocess.Popen[bytes]] = []

    def run(vmm: str, *args: str, until: Callable[[list[dict[str, Any]]], bool] | None = None
            ) -> tuple[str, list[dict[str, Any]]]:
        command = vmm_command(vmm)
        path = str(tmp_path / f"{vmm}-{len(procs)}.sock")
        proc = subprocess.Popen([*command, *BASE, *args,
                                 "-qmp", f"unix:{path},server=on,wait=off"],
                                env=kvmpy_env(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        wait_for_socket(path, proc)
        qmp = QEMUMonitorProtocol(path)
        qmp.connect()
        try:
            deadline = time.monotonic() + 30
            while True:
                result = qmp.cmd_obj({"execute": "query-pci"})["return"]
                if until is None or until(result) or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            text = qmp.cmd_obj({"execute": "human-monitor-command",
                                "arguments": {"command-line": "info pci"}})["return"]
            qmp.cmd_obj({"execute": "quit"})
        finally:
            with contextlib.suppress(EOFError):  # after quit the VMM may hang up first
                qmp.close()
        proc.wait(30)
        return text.replace("\r\n", "\n"), result

    yield run
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def as_text(result: list[dict[str, Any]]) -> str:
    """A reply as JSON text, one member a line: equal only if the key order is equal too."""
    return json.dumps(result, indent=1)


def compare(ask: Asker, *args: str) -> tuple[str, list[dict[str, Any]]]:
    """Both VMMs stopped with ``args``; asserts equal output and returns kvmpy's."""
    qemu_text, qemu_result = ask("qemu", "-S", *args)
    text, result = ask("kvmpy", "-S", *args)
    assert text == qemu_text
    assert as_text(result) == as_text(qemu_result)
    return text, result


# -- stopped: as reset left the functions -----------------------------------------------------

def test_only_the_host_bridge(ask: Asker) -> None:
    text, result = compare(ask, *VIRT)
    assert text == ('  Bus  0, device   0, function 0:\n'
                    '    Host bridge: PCI device 1b36:0008\n'
                    '      PCI subsystem 1af4:1100\n'
                    '      id ""\n')
    assert [bus["bus"] for bus in result] == [0]


def test_virtio_blk_from_drive_if_virtio(ask: Asker, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    text, _ = compare(ask, *VIRT, "-drive", f"file={image},if=virtio,format=raw")
    assert ('  Bus  0, device   1, function 0:\n'
            '    SCSI controller: PCI device 1af4:1001\n'
            '      PCI subsystem 1af4:0002\n'
            '      IRQ 0, pin A\n'
            '      BAR0: I/O at 0xffffffffffffffff [0x007e].\n'
            '      BAR1: 32 bit memory at 0xffffffffffffffff [0x00000ffe].\n'
            '      BAR4: 64 bit prefetchable memory at 0xffffffffffffffff [0x00003ffe].\n'
            '      id ""\n') in text


def test_fixed_slot_and_a_multifunction_pair(ask: Asker) -> None:
    text, result = compare(ask, *VIRT, "-device", "virtio-rng-pci,addr=5",
                           "-device", "virtio-rng-pci,addr=6.0,multifunction=on,id=f0",
                           "-device", "virtio-rng-pci,addr=6.1,id=f1")
    devices = result[0]["devices"]
    assert [(d["slot"], d["function"], d["qdev_id"]) for d in devices] == \
        [(0, 0, ""), (5, 0, ""), (6, 0, "f0"), (6, 1, "f1")]
    assert "  Bus  0, device   6, function 1:\n    Class 0255: PCI device 1af4:1005\n" in text


def test_virtio_serial_with_an_id(ask: Asker) -> None:
    text, _ = compare(ask, *VIRT, "-device", "virtio-serial-pci,id=ser0")
    assert "    Class 1920: PCI device 1af4:1003\n" in text  # class 0x0780 printed "%04d"
    assert text.endswith('      id "ser0"\n')


def test_non_transitional(ask: Asker) -> None:
    text, result = compare(ask, *VIRT, "-device", "virtio-rng-pci-non-transitional,id=rng")
    device = result[0]["devices"][1]
    assert (device["id"]["device"], [r["bar"] for r in device["regions"]]) == (0x1044, [1, 4])
    assert "BAR0" not in text


def test_a_machine_without_pci(ask: Asker) -> None:
    assert compare(ask, "-M", "spike", "-bios", "none") == ("", [])


# -- mapped BARs ------------------------------------------------------------------------------

def lui(rd: int, imm20: int) -> int:
    return imm20 << 12 | rd << 7 | 0x37


def addi(rd: int, rs1: int, imm: int) -> int:
    return (imm & 0xFFF) << 20 | rs1 << 15 | rd << 7 | 0x13


def store(width: int, rs2: int, rs1: int, offset: int) -> int:
    funct3 = {1: 0, 2: 1, 4: 2}[width]
    return ((offset >> 5) << 25 | rs2 << 20 | rs1 << 15 | funct3 << 12 | (offset & 0x1F) << 7
            | 0x23)


T0, T1, T2 = 5, 6, 7
PROGRAM_BARS = [
    lui(T0, (ECAM + (1 << 15)) >> 12),  # 00:01.0, virtio-rng-pci
    lui(T1, 0x1),
    store(4, T1, T0, 0x10),             # BAR0 (I/O) = 0x1000
    lui(T1, 0x40010),
    store(4, T1, T0, 0x14),             # BAR1 (32-bit) = 0x40010000
    store(4, 0, T0, 0x20),
    addi(T1, 0, 4),
    store(4, T1, T0, 0x24),             # BAR4 (64-bit) = 0x4_0000_0000
    addi(T1, 0, 0x21),
    store(1, T1, T0, 0x3C),             # interrupt line 33
    lui(T2, (ECAM + (2 << 15)) >> 12),  # 00:02.0, virtio-rng-pci-non-transitional
    lui(T1, 0x40200),
    store(4, T1, T2, 0x14),             # BAR1 = 0x40200000
    lui(T1, 0x40100),
    store(4, T1, T2, 0x20),             # BAR4 = 0x40100000, a 64-bit BAR below 4 GiB
    addi(T1, 0, 2),
    store(2, T1, T2, 0x04),             # command: memory
    addi(T1, 0, 7),
    store(2, T1, T0, 0x04),             # command: I/O, memory, bus master (last)
    0x0000006F,                         # j .
]
"""Programs the BARs of 00:01.0 and 00:02.0 through ECAM, as firmware would, then spins."""

SLOT1_MAPPED = ('  Bus  0, device   1, function 0:\n'
                '    Class 0255: PCI device 1af4:1005\n'
                '      PCI subsystem 1af4:0004\n'
                '      IRQ 33, pin A\n'
                '      BAR0: I/O at 0x1000 [0x101f].\n'
                '      BAR1: 32 bit memory at 0x40010000 [0x40010fff].\n'
                '      BAR4: 64 bit prefetchable memory at 0x400000000 [0x400003fff].\n'
                '      id ""\n')
SLOT2_MAPPED = ('  Bus  0, device   2, function 0:\n'
                '    Class 0255: PCI device 1af4:1044\n'
                '      PCI subsystem 1af4:1100\n'
                '      IRQ 0, pin A\n'
                '      BAR1: 32 bit memory at 0x40200000 [0x40200fff].\n'
                '      BAR4: 64 bit prefetchable memory at 0x40100000 [0x40103fff].\n'
                '      id ""\n')
"""Worked out from hmp_info_pci_device: "0x%08" PRIx64 widens past 8 digits; the bracket is
address + size - 1 (BAR sizes 0x20, 0x1000, 0x4000)."""

MAPPED_DEVICES = ["-device", "virtio-rng-pci", "-device", "virtio-rng-pci-non-transitional"]


def slot1_mapped(result: list[dict[str, Any]]) -> bool:
    return all(region["address"] != -1 for region in result[0]["devices"][1]["regions"])


def test_bars_a_guest_mapped(ask: Asker, tmp_path: Path) -> None:
    payload = tmp_path / "bars.bin"
    payload.write_bytes(b"".join(word.to_bytes(4, "little") for word in PROGRAM_BARS))
    args = [*VIRT, "-kernel", str(payload), *MAPPED_DEVICES]
    qemu_text, qemu_result = ask("qemu", *args, until=slot1_mapped)
    text, result = ask("kvmpy", *args, until=slot1_mapped)
    assert text == qemu_text
    assert as_text(result) == as_text(qemu_result)
    assert text.endswith(SLOT1_MAPPED + SLOT2_MAPPED)


def ecam_write(vm: kvmpy.VM, writes: list[tuple[int, int, int]]) -> None:
    """Configuration writes (gpa, size, value) through the system bus, on the VM's loop."""
    system = vm.system

    def program() -> None:
        with system.lock:
            for gpa, size, value in writes:
                system.bus.write(gpa, size, value)

    vm._on_loop(program)


def test_bars_mapped_through_the_ecam_window() -> None:
    """The same writes from the host side, on an in-process VM (no QEMU needed)."""
    with kvmpy.VM([*VIRT, "-S", "-nodefaults", *MAPPED_DEVICES]) as vm:
        slot1, slot2 = ECAM + (1 << 15), ECAM + (2 << 15)
        writes = [(slot1 + 0x10, 4, 0x1000), (slot1 + 0x14, 4, 0x40010000),
                  (slot1 + 0x20, 4, 0), (slot1 + 0x24, 4, 4), (slot1 + 0x3C, 1, 0x21),
                  (slot2 + 0x14, 4, 0x40200000), (slot2 + 0x20, 4, 0x40100000),
                  (slot2 + 0x04, 2, 2), (slot1 + 0x04, 2, 7)]
        ecam_write(vm, writes)
        assert vm.hmp("info pci").endswith(SLOT1_MAPPED + SLOT2_MAPPED)
        device = vm.qmp("query-pci")[0]["devices"][1]
        # Listed as QEMU lists them (hmp-commands-info.hx; query-commands).
        assert "\ninfo pci  -- show PCI info\n" in vm.hmp("help info")
        assert {"name": "query-pci"} in vm.qmp("query-commands")
    # QEMU's wire order (its QDict hash order), as qemu-system-riscv64 sends it.
    assert list(device) == ["irq_pin", "bus", "qdev_id", "irq", "slot", "class_info", "id",
                            "function", "regions"]
    assert list(device["id"]) == ["device", "subsystem-vendor", "vendor", "subsystem"]
    assert device["regions"] == [
        {"bar": 0, "size": 0x20, "address": 0x1000, "type": "io"},
        {"prefetch": False, "mem_type_64": False, "bar": 1, "size": 0x1000,
         "address": 0x40010000, "type": "memory"},
        {"prefetch": True, "mem_type_64": True, "bar": 4, "size": 0x4000,
         "address": 0x4_0000_0000, "type": "memory"}]
    assert [list(region) for region in device["regions"]][1] == \
        ["prefetch", "mem_type_64", "bar", "size", "address", "type"]
    assert device["irq"] == 0x21


def test_a_bar_left_at_address_0() -> None:
    with kvmpy.VM([*VIRT, "-S", "-nodefaults", "-device", "virtio-rng-pci"]) as vm:
        ecam_write(vm, [(ECAM + (1 << 15) + 0x04, 2, 2)])  # command: memory
        text = vm.hmp("info pci")
    assert "      BAR1: 32 bit memory at 0x00000000 [0x00000fff].\n" in text


# -- the formats, by hand ---------------------------------------------------------------------

@pytest.mark.parametrize(("region", "line"), [
    ({"type": "io", "address": -1, "size": 0x20}, "I/O at 0xffffffffffffffff [0x001e]."),
    ({"type": "io", "address": 0x20, "size": 0x20}, "I/O at 0x0020 [0x003f]."),
    ({"type": "io", "address": 0x12340, "size": 0x40}, "I/O at 0x12340 [0x1237f]."),
    ({"type": "memory", "address": -1, "size": 0x1000, "prefetch": False,
      "mem_type_64": False}, "32 bit memory at 0xffffffffffffffff [0x00000ffe]."),
    ({"type": "memory", "address": 0x40000, "size": 0x1000, "prefetch": False,
      "mem_type_64": False}, "32 bit memory at 0x00040000 [0x00040fff]."),
    ({"type": "memory", "address": 0x8000_0000_0000_0000 - (1 << 64), "size": 0x4000,
      "prefetch": True, "mem_type_64": True},
     "64 bit prefetchable memory at 0x8000000000000000 [0x8000000000003fff]."),
    ({"type": "memory", "address": 0x10_0000_0000, "size": 0x4000, "prefetch": False,
      "mem_type_64": True}, "64 bit memory at 0x1000000000 [0x1000003fff]."),
])
def test_bar_line(region: dict[str, Any], line: str) -> None:
    assert format_region(region) == line


def test_class_without_a_name_bridge_and_no_pin() -> None:
    """A PCI-PCI bridge's lines (from QAPI data): windows between the IRQ and the BARs,
    children after the id; a class absent from the table is printed in decimal; a function
    without an interrupt pin has no IRQ line."""
    child = {"bus": 1, "slot": 0, "function": 0, "class_info": {"class": 0xFF00},
             "id": {"device": 0x1234, "vendor": 0x5678}, "irq_pin": 0, "qdev_id": "c",
             "regions": []}
    bridge = {"bus": 0, "slot": 3, "function": 2,
              "class_info": {"desc": "PCI bridge", "class": 0x0604},
              "id": {"device": 0x0001, "vendor": 0x1B36}, "irq": 10, "irq_pin": 1,
              "qdev_id": "br",
              "pci_bridge": {"bus": {"number": 0, "secondary": 1, "subordinate": 1,
                                     "io_range": {"base": 0x1000, "limit": 0x1FFF},
                                     "memory_range": {"base": 0x4000_0000,
                                                      "limit": 0x400F_FFFF},
                                     "prefetchable_range": {"base": 0xFFF0_0000,
                                                            "limit": 0xFFFFF}},
                             "devices": [child]},
              "regions": [{"bar": 0, "type": "memory", "address": -1, "size": 0x100,
                           "prefetch": False, "mem_type_64": False}]}
    assert "\n".join(format_device(bridge)) == (
        '  Bus  0, device   3, function 2:\n'
        '    PCI bridge: PCI device 1b36:0001\n'
        '      IRQ 10, pin A\n'
        '      BUS 0.\n'
        '      secondary bus 1.\n'
        '      subordinate bus 1.\n'
        '      IO range [0x1000, 0x1fff]\n'
        '      memory range [0x40000000, 0x400fffff]\n'
        '      prefetchable memory range [0xfff00000, 0x000fffff]\n'
        '      BAR0: 32 bit memory at 0xffffffffffffffff [0x000000fe].\n'
        '      id "br"\n'
        '  Bus  1, device   0, function 0:\n'
        '    Class 65280: PCI device 5678:1234\n'
        '      id "c"')


# -- behind a PCI Express root port -----------------------------------------------------------

PORT_CFG, BEHIND_CFG = ECAM + (1 << 15), ECAM + (1 << 20)
PROGRAM_PORT = [
    lui(T0, PORT_CFG >> 12),            # 00:01.0, pcie-root-port
    lui(T1, 0x10),
    addi(T1, T1, 0x100),
    store(4, T1, T0, 0x18),             # primary 0, secondary 1, subordinate 1
    lui(T1, 0x1),
    addi(T1, T1, 0x10),
    store(2, T1, T0, 0x1C),             # I/O window 0x1000-0x1fff
    lui(T1, 0x40104),
    store(4, T1, T0, 0x20),             # memory window 0x40000000-0x401fffff
    lui(T1, 0x40200),
    store(4, T1, T0, 0x10),             # the port's BAR0
    lui(T2, BEHIND_CFG >> 12),          # 01:00.0, virtio-rng-pci behind the port
    lui(T1, 0x40000),
    store(4, T1, T2, 0x14),             # BAR1
    lui(T1, 0x40100),
    store(4, T1, T2, 0x20),             # BAR4 low (high stays 0)
    addi(T1, 0, 0x22),
    store(1, T1, T2, 0x3C),             # interrupt line 34
    addi(T1, 0, 2),
    store(2, T1, T2, 0x04),             # command: memory
    addi(T1, 0, 3),
    store(2, T1, T0, 0x04),             # the port: I/O and memory decode (last)
    0x0000006F,                         # j .
]
"""Numbers the port's bus, opens its windows and maps the function behind it."""

PORT_PROGRAMMED = ('  Bus  0, device   1, function 0:\n'
                   '    PCI bridge: PCI device 1b36:000c\n'
                   '      IRQ 0, pin A\n'
                   '      BUS 0.\n'
                   '      secondary bus 1.\n'
                   '      subordinate bus 1.\n'
                   '      IO range [0x1000, 0x1fff]\n'
                   '      memory range [0x40000000, 0x401fffff]\n'
                   '      prefetchable memory range [0xfff00000, 0x000fffff]\n'
                   '      BAR0: 32 bit memory at 0x40200000 [0x40200fff].\n'
                   '      id "rp1"\n'
                   '  Bus  1, device   0, function 0:\n'
                   '    Class 0255: PCI device 1af4:1044\n'
                   '      PCI subsystem 1af4:1100\n'
                   '      IRQ 34, pin A\n'
                   '      BAR1: 32 bit memory at 0x40000000 [0x40000fff].\n'
                   '      BAR4: 64 bit prefetchable memory at 0x40100000 [0x40103fff].\n'
                   '      id "rng"\n')
"""A bridge's windows follow its IRQ line, its bus's functions follow its id; the
prefetchable window reset left closed (base 0xfff00000 above limit 0xfffff)."""


def port_programmed(result: list[dict[str, Any]]) -> bool:
    """The program is done: its last store turned the port's decoding on (BAR0 mapped).  (The
    hart runs on a thread of its own while the monitor asks: earlier states can be seen.)"""
    port = result[0]["devices"][1]
    bridge = port.get("pci_bridge", {})
    return (any(region["address"] != -1 for region in port.get("regions", [])) and
            any(region["address"] != -1 for child in bridge.get("devices", [])
                for region in child["regions"]))


def test_a_function_behind_a_root_port(ask: Asker, tmp_path: Path) -> None:
    devices = ["-device", "pcie-root-port,id=rp1,chassis=1",
               "-device", "virtio-rng-pci,bus=rp1,id=rng"]
    text, result = compare(ask, *VIRT, *devices)  # stopped: bus 1 is not numbered yet
    assert "devices" not in result[0]["devices"][1]["pci_bridge"]
    assert "Bus  1" not in text
    payload = tmp_path / "port.bin"
    payload.write_bytes(b"".join(word.to_bytes(4, "little") for word in PROGRAM_PORT))
    args = [*VIRT, "-kernel", str(payload), *devices]
    qemu_text, qemu_result = ask("qemu", *args, until=port_programmed)
    text, result = ask("kvmpy", *args, until=port_programmed)
    assert text == qemu_text
    assert as_text(result) == as_text(qemu_result)
    assert text.endswith(PORT_PROGRAMMED)
    child = result[0]["devices"][1]["pci_bridge"]["devices"][0]
    assert (child["bus"], child["slot"], child["qdev_id"]) == (1, 0, "rng")
