"""Build the virt board through the real phases 2-4 (no accelerator), and ask QEMU the same."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

import kvmpy.hw.riscv.virt  # noqa: F401  (registers virt-machine)
from kvmpy.accel.base import AccelCaps
from kvmpy.chardev.base import Chardev
from kvmpy.config import SmpConfig, VMConfig
from kvmpy.hw.cpu import HartPort
from kvmpy.hw.riscv.virt import VirtMachine
from kvmpy.hw.riscv.virt_fdt import DEFAULT_ISA
from kvmpy.machine import instantiate_machine, select_machine_class
from kvmpy.system import System

QEMU = shutil.which("qemu-system-riscv64")

TCG_LIKE = AccelCaps(machine_mode=True, in_kernel_timer_ipi=False, isa_extensions=DEFAULT_ISA,
                     mmu_type="riscv,sv48")
"""An interpreter-style accelerator whose extension list is QEMU 7.2's rv64 CPU."""
KVM_LIKE = AccelCaps(machine_mode=False, in_kernel_timer_ipi=True, isa_extensions=DEFAULT_ISA,
                     mmu_type="riscv,sv48",
                     firmware_refusal="Machine mode firmware is not supported in combination "
                                      "with KVM.")

BoardFactory = Callable[..., tuple[System, VirtMachine]]


class CaptureChardev(Chardev):
    """Serial 0 of the test boards: output collected in ``output``, input typed with ``type``."""

    def __init__(self) -> None:
        super().__init__()
        self.output = bytearray()

    def write(self, data: bytes) -> int:
        self.output += data
        return len(data)

    def type(self, data: bytes) -> None:
        self.deliver(data)


def build_board(caps: AccelCaps = TCG_LIKE, cpus: int = 1, **config: object
                ) -> tuple[System, VirtMachine]:
    """Phases 2-4 of a ``-M virt`` VM with the given options (VMConfig field names).

    Serial 0 is a :class:`CaptureChardev` (``system.serials[0]``)."""
    cfg = VMConfig(machine="virt", smp=SmpConfig(cpus=cpus))
    for key, value in config.items():
        setattr(cfg, key, value)
    system = System(cfg)
    machine = instantiate_machine(select_machine_class(cfg), cfg)
    assert isinstance(machine, VirtMachine)
    system.machine = machine
    system.caps = caps
    system.harts = [HartPort(i) for i in range(cpus)]
    system.serials = [CaptureChardev()]
    machine.init(system)
    return system, machine


@pytest.fixture
def board() -> BoardFactory:
    return build_board


class Oracle:
    """``qemu-system-riscv64`` 7.2 asked through HMP (``info roms``, ``xp``, ``info mtree``)."""

    @staticmethod
    def hmp(args: Sequence[str], commands: Sequence[str], cwd: Path | None = None) -> str:
        return qemu_hmp(args, commands, cwd)

    @staticmethod
    def xp_words(args: Sequence[str], addr: int, count: int, cwd: Path | None = None
                 ) -> list[int]:
        return qemu_xp_words(args, addr, count, cwd)

    @staticmethod
    def roms(args: Sequence[str], cwd: Path | None = None) -> list[tuple[str, int, int]]:
        return qemu_roms(args, cwd)

    @staticmethod
    def mtree(args: Sequence[str]) -> list[tuple[int, int, str]]:
        return qemu_mtree(args)


@pytest.fixture
def oracle() -> Oracle:
    if QEMU is None:
        pytest.skip("qemu-system-riscv64 (the oracle) is not installed")
    return Oracle()


@pytest.fixture
def tcg_caps() -> AccelCaps:
    return TCG_LIKE


@pytest.fixture
def kvm_caps() -> AccelCaps:
    return KVM_LIKE


def qemu_hmp(args: Sequence[str], commands: Sequence[str], cwd: Path | None = None) -> str:
    """Run QEMU stopped (-S) with HMP on stdio, send ``commands``, return the output."""
    assert QEMU is not None
    script = "\n".join([*commands, "quit"]) + "\n"
    proc = subprocess.run([QEMU, "-S", "-display", "none", "-serial", "null", "-monitor",
                           "stdio", *args], input=script, capture_output=True, text=True,
                          timeout=60, cwd=cwd, check=False)
    return proc.stdout + proc.stderr


def qemu_xp_words(args: Sequence[str], addr: int, count: int, cwd: Path | None = None
                  ) -> list[int]:
    """``xp /{count}xw addr``, parsed."""
    out = qemu_hmp(args, [f"xp /{count}xw 0x{addr:x}"], cwd)
    words: list[int] = []
    for line in out.splitlines():
        match = re.match(r"^[0-9a-f]{16}:((?:\s+0x[0-9a-f]{8})+)\s*$", line.strip())
        if match:
            words += [int(w, 16) for w in match.group(1).split()]
    return words


def qemu_roms(args: Sequence[str], cwd: Path | None = None) -> list[tuple[str, int, int]]:
    """``info roms`` as (basename of name, addr, size)."""
    out = qemu_hmp(args, ["info roms"], cwd)
    roms = []
    for match in re.finditer(r'addr=([0-9a-f]+) size=0x([0-9a-f]+) mem=\w+ name="([^"]+)"', out):
        roms.append((Path(match.group(3)).name, int(match.group(1), 16), int(match.group(2), 16)))
    return roms


def qemu_mtree(args: Sequence[str]) -> list[tuple[int, int, str]]:
    """Top-level regions of ``info mtree`` in the ``memory`` address space: (start, last, name)."""
    out = qemu_hmp(args, ["info mtree"])
    regions = []
    in_memory = False
    for line in out.splitlines():
        if line.strip() and not line[0].isspace():      # a section header
            in_memory = line.strip() == "address-space: memory"
            continue
        match = re.match(r"^    ([0-9a-f]{16})-([0-9a-f]{16}) \(prio \d+, [\w/]+\): (.+)$", line)
        if in_memory and match:
            regions.append((int(match.group(1), 16), int(match.group(2), 16), match.group(3)))
    return regions
