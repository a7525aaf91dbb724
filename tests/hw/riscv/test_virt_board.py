"""The virt machine type, its properties, memory map and IRQ wiring, against QEMU 7.2."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fdt
import pytest

from kvmpy import qom
from kvmpy.accel.base import IRQ_M_EXT, IRQ_M_SOFT, IRQ_S_EXT, IRQ_S_SOFT
from kvmpy.config import VMConfig
from kvmpy.errors import ConfigError, NotBuiltError
from kvmpy.hw.riscv.virt import VIRT_MEMMAP, VirtMachine
from kvmpy.machine import find_machine_class, instantiate_machine, machine_help

MiB = 1 << 20

# QEMU regions kvmpy does not model (listed so that a new one in QEMU's map fails the test).
NOT_MODELLED = {"platform bus", "fwcfg.data", "fwcfg.ctl", "fwcfg.dma", "virt.flash0",
                "virt.flash1"}


def test_machine_type() -> None:
    cls = find_machine_class("virt")
    assert cls is VirtMachine
    assert cls.type_name == "virt-machine"
    assert (cls.desc, cls.max_cpus, cls.default_ram_size) == ("RISC-V VirtIO board", 512,
                                                              128 * MiB)
    assert "virt                 RISC-V VirtIO board" in machine_help()
    props = qom.type_info("virt-machine").properties
    assert {"aclint", "aia", "aia-guests", "dumpdtb", "dtb", "accel", "kernel"} <= set(props)


@pytest.mark.parametrize(("props", "message"), [
    ({"foo": "1"}, "Property 'virt-machine.foo' not found"),
    ({"aclint": "1"}, "Parameter 'aclint' expects 'on' or 'off'"),
    ({"aia": "msi"}, "Invalid AIA interrupt controller type"),
])
def test_property_errors(props: dict[str, str], message: str) -> None:
    cfg = VMConfig(machine="virt", machine_props=props)
    with pytest.raises(ConfigError) as info:
        instantiate_machine(VirtMachine, cfg)
    assert str(info.value) == message


def test_aia_is_not_built(board: Any) -> None:
    with pytest.raises(NotBuiltError, match="aia=aplic"):
        board(machine_props={"aia": "aplic"})


def test_smp_limit() -> None:
    cfg = VMConfig(machine="virt")
    cfg.smp.cpus = 513
    with pytest.raises(ConfigError, match=r"Invalid SMP CPUs 513\. The max CPUs supported by "
                       r"machine 'virt' is 512"):
        instantiate_machine(VirtMachine, cfg)


def _our_map(system: Any) -> list[tuple[int, int, str]]:
    regions = [(r.base, r.end - 1, r.name) for r in system.bus.regions]
    for mem in (system.ram, *system.roms):
        regions.append((mem.base, mem.end - 1, mem.name))
    return sorted(regions)


@pytest.mark.parametrize(("cpus", "ram", "aclint"), [(1, 128, False), (2, 512, False),
                                                     (4, 256, True)])
def test_memory_map_matches_qemu_info_mtree(board: Any, oracle: Any, cpus: int, ram: int,
                                            aclint: bool) -> None:
    system, _ = board(cpus=cpus, ram_size=ram * MiB, bios="none",
                      machine_props={"aclint": "on" if aclint else "off"})
    qemu = oracle.mtree(["-M", f"virt,aclint={'on' if aclint else 'off'}", "-smp", str(cpus),
                         "-m", f"{ram}M", "-bios", "none"])
    # QEMU maps the PCIe windows as aliases ("alias pcie-ecam @pcie-mmcfg-mmio ..."): compare
    # by the alias's own name.
    named = [(start, last, name.split()[1] if name.startswith("alias ") else name)
             for start, last, name in qemu]
    theirs = [r for r in named if r[2] not in NOT_MODELLED]
    ours = _our_map(system)
    if not any(name == "virtio-mmio" for _, _, name in ours):
        # virtio-mmio transports are wired only once kvmpy.hw.virtio provides them.
        theirs = [r for r in theirs if r[2] != "virtio-mmio"]
    assert ours == sorted(theirs)


def test_mmio_windows_are_qemus() -> None:
    assert VIRT_MEMMAP["uart0"].base == 0x10000000
    assert VIRT_MEMMAP["plic"].size == 0x200000 + 1024 * 0x1000
    assert [VIRT_MEMMAP["virtio"].base + i * 0x1000 for i in (0, 7)] == [0x10001000, 0x10008000]


def _hart_levels(system: Any, hart: int) -> dict[int, bool]:
    return dict(system.harts[hart]._levels)


def test_uart_and_rtc_irqs_reach_the_s_context(board: Any) -> None:
    system, machine = board(cpus=2, bios="none")
    bus = system.bus
    plic = 0xC000000
    for source in (10, 11):
        bus.write(plic + 4 * source, 4, 1)                          # priority 1
    bus.write(plic + 0x2000 + 0x80 * 3, 4, (1 << 10) | (1 << 11))   # ctx 3 = hart 1 S-mode
    machine.devices["uart0"].irq.raise_()
    assert bus.read(plic + 0x1000, 4) & (1 << 10)
    assert _hart_levels(system, 1).get(IRQ_S_EXT) is True
    assert not _hart_levels(system, 1).get(IRQ_M_EXT)
    assert not _hart_levels(system, 0).get(IRQ_S_EXT)
    assert bus.read(plic + 0x200004 + 0x1000 * 3, 4) == 10          # claim
    machine.devices["rtc"].irq.raise_()
    assert bus.read(plic + 0x1000, 4) & (1 << 11)


def test_clint_and_sswi_pins(board: Any) -> None:
    system, _ = board(cpus=2, bios="none", machine_props={"aclint": "on"})
    system.bus.write(0x2000004, 4, 1)                 # MSIP of hart 1
    assert _hart_levels(system, 1)[IRQ_M_SOFT] is True
    system.bus.write(0x2F00000, 4, 1)                 # SSWI of hart 0
    assert _hart_levels(system, 0)[IRQ_S_SOFT] is True


def test_kvm_board_has_no_clint_and_s_only_plic(board: Any, kvm_caps: Any) -> None:
    system, machine = board(caps=kvm_caps, cpus=2)
    names = {r.name for r in system.bus.regions}
    assert not {"riscv.aclint.swi", "riscv.aclint.mtimer"} & names
    assert machine.plic.hart_config == "S,S"
    system.bus.write(0xC000000 + 4 * 10, 4, 1)
    system.bus.write(0xC002000 + 0x80 * 1, 4, 1 << 10)      # ctx 1 = hart 1 S-mode
    machine.devices["uart0"].irq.raise_()
    assert _hart_levels(system, 1)[IRQ_S_EXT] is True


def test_sifive_test_finisher(board: Any) -> None:
    system, _ = board(bios="none")
    system.bus.write(0x100000, 4, 0x00033333)
    assert system.exit_code == 3


def test_dumpdtb_writes_and_exits_zero(board: Any, tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "virt.dtb"
    with pytest.raises(SystemExit) as info:
        board(bios="none", machine_props={"dumpdtb": str(out)})
    assert info.value.code == 0
    tree = fdt.parse_dtb(out.read_bytes())
    assert tree.get_node("/soc/serial@10000000") is not None
    assert f"dtb dumped to {out}. Exiting." in capsys.readouterr().err


def test_user_dtb_replaces_the_tree_with_chosen_fixed_up(board: Any, tmp_path: Path) -> None:
    user = fdt.FDT()
    user.add_item(fdt.PropStrings("model", "mine"))
    (tmp_path / "user.dtb").write_bytes(user.to_dtb(version=17))
    (tmp_path / "k.bin").write_bytes(b"\0" * 4096)
    (tmp_path / "i.bin").write_bytes(b"\1" * 4096)
    _, machine = board(bios="none", dtb=str(tmp_path / "user.dtb"),
                       kernel=str(tmp_path / "k.bin"), initrd=str(tmp_path / "i.bin"),
                       append="root=/dev/ram")
    tree = fdt.parse_dtb(machine.fdt_blob)
    assert tree.get_property("model").value == "mine"
    chosen = tree.get_node("/chosen")
    assert [p.name for p in chosen.props] == ["linux,initrd-end", "linux,initrd-start",
                                              "bootargs"]
    assert chosen.get_property("bootargs").value == "root=/dev/ram"
    assert chosen.get_property("linux,initrd-start").value == 0x84000000
    assert machine.fdt_addr == 0x87E00000


def test_virtio_devices_fill_slots_from_the_top(board: Any) -> None:
    """As QEMU: the first -device virtio-*-device lands at 0x10008000 (IRQ 8)."""
    from kvmpy.config import OptionSpec

    system, _ = board(bios="none", devices=[OptionSpec("virtio-rng-device")])
    bus = system.bus
    assert bus.read(0x10008000, 4) == 0x74726976                 # "virt"
    assert bus.read(0x10008008, 4) == 4                          # DeviceID: entropy
    assert [bus.read(0x10001000 + 0x1000 * i + 8, 4) for i in range(7)] == [0] * 7


def test_rtc_reads_host_time(board: Any) -> None:
    import time

    system, _ = board(bios="none")
    before = time.time_ns()
    low = system.bus.read(0x101000, 4)
    high = system.bus.read(0x101004, 4)
    guest_ns = (high << 32) | low
    assert abs(guest_ns - before) < 5_000_000_000


def test_reset_survives_a_vanished_kernel(board: Any, tmp_path: Path, capsys: Any) -> None:
    kernel = tmp_path / "k.bin"
    kernel.write_bytes(b"\x13" * 64)
    system, machine = board(bios="builtin", kernel=str(kernel))
    kernel.unlink()
    machine.reset(system)
    assert "system reset: could not load kernel" in capsys.readouterr().err


def test_sbi_console_goes_through_the_uart(board: Any) -> None:
    """Built-in SBI console calls use the ns16550a like OpenSBI's driver: THR out, RBR in."""
    from kvmpy.accel.exits import SbiExit

    system, machine = board(bios="builtin")

    class Caller:
        index = 0

        def get_reg(self, name: str) -> int:
            return 0

    serial = system.serials[0]
    for ch in b"ok\n":
        assert machine.sbi.handle(Caller(), SbiExit(0x01, 0, (ch, 0, 0, 0, 0, 0))) == (0, 0)
    system.ram.write(0x80001000, b"dbcn")
    assert machine.sbi.handle(Caller(), SbiExit(0x4442434E, 0, (4, 0x80001000, 0, 0, 0, 0))) \
        == (0, 4)
    assert bytes(serial.output) == b"ok\ndbcn"
    assert machine.sbi.handle(Caller(), SbiExit(0x02, 0, (0,) * 6))[0] == -1
    serial.type(b"x")
    assert machine.sbi.handle(Caller(), SbiExit(0x02, 0, (0,) * 6))[0] == ord("x")
    assert machine.sbi.hypervisor          # QEMU's rv64 list has "h": hfence calls served


def test_smp_sockets_do_not_split_the_board(board: Any) -> None:
    """QEMU: without -numa, virt has one socket whatever -smp sockets= says (one cluster0)."""
    from kvmpy.config import SmpConfig

    system, machine = board(cpus=4, bios="none", smp=SmpConfig(cpus=4, sockets=2, cores=2))
    tree = fdt.parse_dtb(machine.fdt_blob)
    assert [n.name for n in tree.get_node("/cpus/cpu-map").nodes] == ["cluster0"]
    assert len(system.boot.harts) == 4
