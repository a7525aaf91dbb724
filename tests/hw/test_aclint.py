"""ACLINT MSWI/SSWI and MTIMER (CLINT) register behaviour."""

from __future__ import annotations

from typing import Any

import pytest

from kvmpy.hw.cpu import HartPort
from kvmpy.hw.intc.aclint import AclintMtimer, AclintSwi, CounterTime
from kvmpy.memory import MmioBus

CLINT = 0x2000000


class FakeHart:
    """A vCPU backend as a HartPort sees it: pins and the mtimecmp register."""

    def __init__(self) -> None:
        self.irqs: dict[int, bool] = {}
        self.regs: dict[str, int] = {}

    def set_irq(self, irq: int, level: bool) -> None:
        self.irqs[irq] = level

    def get_reg(self, name: str) -> int:
        return self.regs[name]

    def set_reg(self, name: str, value: int) -> None:
        self.regs[name] = value


@pytest.fixture
def harts() -> list[HartPort]:
    ports = [HartPort(i) for i in range(2)]
    for port in ports:
        port.attach(FakeHart())
    return ports


@pytest.fixture
def clint(harts: list[HartPort]) -> tuple[MmioBus, AclintSwi, AclintMtimer, CounterTime]:
    time = CounterTime(1000)
    mswi = AclintSwi(outputs=[h.irq_line(3) for h in harts])
    mtimer = AclintMtimer(harts=harts, time=time)
    bus = MmioBus()
    bus.add(CLINT, mswi.region_size, mswi)
    bus.add(CLINT + 0x4000, mtimer.region_size, mtimer)
    return bus, mswi, mtimer, time


def backend(port: HartPort) -> FakeHart:
    assert isinstance(port.backend, FakeHart)
    return port.backend


def test_msip_sets_and_clears_the_pin(clint: Any, harts: list[HartPort]) -> None:
    bus, _, _, _ = clint
    bus.write(CLINT + 4, 4, 1)
    assert backend(harts[1]).irqs[3] is True
    assert bus.read(CLINT + 4, 4) == 1
    assert bus.read(CLINT, 4) == 0
    bus.write(CLINT + 4, 4, 0xFFFFFFFE)  # bit 0 clear: lowers
    assert backend(harts[1]).irqs[3] is False
    assert bus.read(CLINT + 4, 4) == 0


def test_mtimecmp_lives_in_the_hart(clint: Any, harts: list[HartPort]) -> None:
    bus, _, _, _ = clint
    bus.write(CLINT + 0x4000 + 8, 8, 0x1_2345_6789)
    assert backend(harts[1]).regs["mtimecmp"] == 0x1_2345_6789
    assert harts[1].mtimecmp == 0x1_2345_6789
    assert bus.read(CLINT + 0x4000 + 8, 8) == 0x1_2345_6789
    assert bus.read(CLINT + 0x4000 + 8, 4) == 0x2345_6789
    assert bus.read(CLINT + 0x4000 + 12, 4) == 1
    # 32-bit halves, the way RV32 firmware writes them
    bus.write(CLINT + 0x4000 + 12, 4, 0xFFFFFFFF)
    bus.write(CLINT + 0x4000 + 8, 4, 0xAABBCCDD)
    assert harts[1].mtimecmp == 0xFFFFFFFF_AABBCCDD
    assert harts[0].mtimecmp == (1 << 64) - 1  # untouched


def test_mtime_reads_and_writes_the_time_source(clint: Any) -> None:
    bus, _, _, time = clint
    mtime = CLINT + 0xBFF8
    assert bus.read(mtime, 8) == 1000
    time.advance(0x1_0000_0000)
    assert bus.read(mtime, 8) == 0x1_0000_03E8
    assert bus.read(mtime, 4) == 0x3E8
    assert bus.read(mtime + 4, 4) == 1
    bus.write(mtime, 8, 42)
    assert time.read() == 42
    bus.write(mtime + 4, 4, 2)
    assert time.read() == (2 << 32) | 42
    bus.write(mtime, 4, 7)
    assert time.read() == (2 << 32) | 7


def test_mtimer_reset_clears_mtime(clint: Any) -> None:
    _, _, mtimer, time = clint
    mtimer.reset()
    assert time.read() == 0


def test_mswi_reset_lowers_msip(clint: Any, harts: list[HartPort]) -> None:
    bus, mswi, _, _ = clint
    bus.write(CLINT, 4, 1)
    saved = mswi.get_state()
    mswi.reset()
    assert backend(harts[0]).irqs[3] is False
    mswi.set_state(saved)
    assert backend(harts[0]).irqs[3] is True
    assert bus.read(CLINT, 4) == 1


def test_sswi_only_sets(harts: list[HartPort]) -> None:
    sswi = AclintSwi(outputs=[h.irq_line(1) for h in harts], sswi=True)
    sswi.mmio_write(4, 4, 1)
    assert backend(harts[1]).irqs[1] is True
    sswi.mmio_write(4, 4, 0)  # writing 0 is ignored
    assert backend(harts[1]).irqs[1] is True
    assert sswi.mmio_read(4, 4) == 0  # reads 0


def test_bad_accesses_are_logged(clint: Any, guest_errors: Any) -> None:
    bus, _, _, _ = clint
    bus.write(CLINT + 8, 4, 1)  # hart 2 does not exist
    assert bus.read(CLINT + 8, 4) == 0
    bus.write(CLINT, 8, 1)  # MSWI is 32-bit only (bus)
    bus.write(CLINT, 1, 1)
    bus.write(CLINT + 0x4000 + 12, 8, 1)  # 64-bit write to the high half
    bus.write(CLINT + 0x4000 + 0x10, 8, 1)  # mtimecmp of hart 2
    bus.read(CLINT + 0x4000 + 0x100, 4)  # hole in the MTIMER window
    bus.write(CLINT + 0xBFFC, 8, 1)  # 64-bit write to mtime_hi
    bus.write(CLINT + 0x4000, 2, 1)  # MTIMER is 4/8 bytes
    assert bus.read(CLINT + 0xC000, 4) == 0  # past the CLINT devices
    assert len(guest_errors) == 10


def test_time_source_default_is_a_counter() -> None:
    mtimer = AclintMtimer(harts=[HartPort(0)])
    assert isinstance(mtimer.time, CounterTime)
    assert mtimer.num_harts == 1
