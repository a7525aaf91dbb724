"""The built-in SBI, call by call, against fake harts that record what the SBI asks of them."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from kvmpy.accel.base import IRQ_S_SOFT
from kvmpy.accel.exits import SbiExit
from kvmpy.firmware import sbi as S
from kvmpy.memory import GuestRAM

RAM_BASE = 0x80000000
ALL = (1 << 64) - 1


@dataclass
class FakeHart:
    """A FirmwareHart (kvmpy.accel.base) that records calls; also the calling vCPU."""

    index: int
    stopped: bool = False
    irqs: list[tuple[int, bool]] = field(default_factory=list)
    timer: int | None = None
    flushes: int = 0
    started: list[tuple[int, int]] = field(default_factory=list)
    regs: dict[str, int] = field(default_factory=dict)

    def set_irq(self, irq: int, level: bool) -> None:
        self.irqs.append((irq, level))

    def set_sbi_timer(self, deadline: int) -> None:
        self.timer = deadline

    def flush_tlb(self) -> None:
        self.flushes += 1

    def hart_start(self, start_addr: int, opaque: int) -> None:
        self.stopped = False
        self.started.append((start_addr, opaque))

    def hart_stop(self) -> None:
        self.stopped = True

    def get_reg(self, name: str) -> int:
        return self.regs.get(name, 0)


class Console(S.SbiConsole):
    def __init__(self) -> None:
        self.out = bytearray()
        self.input = bytearray()

    def write(self, data: bytes) -> None:
        self.out += data

    def read(self, max_bytes: int) -> bytes:
        data = bytes(self.input[:max_bytes])
        del self.input[:max_bytes]
        return data


class Env:
    def __init__(self, harts: int = 4) -> None:
        self.harts = [FakeHart(i, stopped=i != 0) for i in range(harts)]
        self.console = Console()
        self.ram = GuestRAM(RAM_BASE, 1 << 20)
        self.requests: list[tuple[str, str, bool]] = []
        self.wakes = 0
        self.sbi = S.Sbi(harts, self.console, self.ram, lambda: self.harts,
                         shutdown=lambda r, g: self.requests.append(("shutdown", r, g)),
                         reset=lambda r, g: self.requests.append(("reset", r, g)),
                         wake=self._wake)

    def _wake(self) -> None:
        self.wakes += 1

    def call(self, eid: int, fid: int, *args: int, hart: int = 0) -> tuple[int, int]:
        padded = (tuple(a & ALL for a in args) + (0,) * 6)[:6]
        return self.sbi.handle(self.harts[hart], SbiExit(eid, fid, padded))  # type: ignore[arg-type]


@pytest.fixture
def env() -> Env:
    return Env()


def test_base(env: Env) -> None:
    assert env.call(S.EXT_BASE, 0) == (0, 0x02000000)
    assert env.call(S.EXT_BASE, 1) == (0, S.SBI_IMPL_ID)
    for eid in (S.EXT_TIME, S.EXT_IPI, S.EXT_RFENCE, S.EXT_HSM, S.EXT_SRST, S.EXT_DBCN,
                S.EXT_BASE, S.EXT_LEGACY_PUTCHAR):
        assert env.call(S.EXT_BASE, 3, eid) == (0, 1)
    assert env.call(S.EXT_BASE, 3, 0x504D55) == (0, 0)        # PMU: not implemented
    env.harts[0].regs["marchid"] = 0x1234
    assert env.call(S.EXT_BASE, 5) == (0, 0x1234)
    assert env.call(S.EXT_BASE, 99) == (S.SBI_ERR_NOT_SUPPORTED, 0)
    assert env.call(0x0A000000, 0) == (S.SBI_ERR_NOT_SUPPORTED, 0)


def test_time_sets_the_callers_timer(env: Env) -> None:
    env.harts[2].stopped = False
    assert env.call(S.EXT_TIME, 0, 123456, hart=2) == (0, 0)
    assert env.harts[2].timer == 123456 and env.harts[0].timer is None
    assert env.call(S.EXT_LEGACY_SET_TIMER, 0, 77) == (0, 0)
    assert env.harts[0].timer == 77


def test_ipi_masks(env: Env) -> None:
    assert env.call(S.EXT_IPI, 0, 0b101, 0) == (0, 0)
    assert [bool(h.irqs) for h in env.harts] == [True, False, True, False]
    assert env.wakes == 1                                        # idle targets get to run
    assert env.harts[0].irqs == [(IRQ_S_SOFT, True)]
    assert env.call(S.EXT_IPI, 0, 0b1, 3) == (0, 0)
    assert env.harts[3].irqs == [(IRQ_S_SOFT, True)]
    assert env.call(S.EXT_IPI, 0, 0, ALL) == (0, 0)              # base -1: every hart
    assert all(h.irqs for h in env.harts)
    assert env.call(S.EXT_IPI, 0, 0b10, 3) == (S.SBI_ERR_INVALID_PARAM, 0)  # hart 4
    assert env.call(S.EXT_IPI, 1) == (S.SBI_ERR_NOT_SUPPORTED, 0)


def test_rfence_flushes_targets(env: Env) -> None:
    assert env.call(S.EXT_RFENCE, 0, 0b11, 0) == (0, 0)               # fence.i
    assert env.call(S.EXT_RFENCE, 1, 0b10, 0, 0x1000, 0x2000) == (0, 0)
    assert env.call(S.EXT_RFENCE, 2, 0, ALL, 0, ALL, 5) == (0, 0)
    assert [h.flushes for h in env.harts] == [2, 3, 1, 1]
    assert env.call(S.EXT_RFENCE, 3, 1, 0) == (S.SBI_ERR_NOT_SUPPORTED, 0)   # no H here
    assert env.call(S.EXT_RFENCE, 0, 1 << 9, 0) == (S.SBI_ERR_INVALID_PARAM, 0)


def test_hsm_start_status_stop(env: Env) -> None:
    status = S.EXT_HSM
    assert env.call(status, 2, 0) == (0, S.HSM_STARTED)
    assert env.call(status, 2, 1) == (0, S.HSM_STOPPED)
    assert env.call(status, 2, 4) == (S.SBI_ERR_INVALID_PARAM, 0)
    assert env.call(status, 0, 1, RAM_BASE + 0x100, 0xABC) == (0, 0)
    assert env.harts[1].started == [(RAM_BASE + 0x100, 0xABC)]
    assert env.wakes == 1
    assert env.call(status, 2, 1) == (0, S.HSM_STARTED)
    assert env.call(status, 0, 1, RAM_BASE, 0) == (S.SBI_ERR_ALREADY_AVAILABLE, 0)
    assert env.call(status, 0, 2, 0x1000, 0) == (S.SBI_ERR_INVALID_ADDRESS, 0)
    assert env.call(status, 0, 9, RAM_BASE, 0) == (S.SBI_ERR_INVALID_PARAM, 0)
    assert env.call(status, 1, hart=1) == (0, 0)
    assert env.harts[1].stopped
    assert env.call(status, 2, 1) == (0, S.HSM_STOPPED)


def test_hsm_suspend(env: Env) -> None:
    assert env.call(S.EXT_HSM, 3, S.HSM_SUSPEND_RETENTIVE) == (0, 0)
    assert env.harts[0].started == []
    assert env.call(S.EXT_HSM, 3, S.HSM_SUSPEND_NON_RETENTIVE, RAM_BASE + 8, 42) == (0, 0)
    assert env.harts[0].started == [(RAM_BASE + 8, 42)] and not env.harts[0].stopped
    assert env.call(S.EXT_HSM, 3, 0x10000000) == (S.SBI_ERR_INVALID_PARAM, 0)
    assert env.call(S.EXT_HSM, 3, S.HSM_SUSPEND_NON_RETENTIVE, 0x10, 0) == \
        (S.SBI_ERR_INVALID_ADDRESS, 0)


def test_srst(env: Env) -> None:
    assert env.call(S.EXT_SRST, 0, S.SRST_SHUTDOWN, 0) == (0, 0)
    assert env.call(S.EXT_SRST, 0, S.SRST_COLD_REBOOT, 0) == (0, 0)
    assert env.call(S.EXT_SRST, 0, S.SRST_WARM_REBOOT, 1) == (0, 0)
    assert env.requests == [("shutdown", "guest-shutdown", True), ("reset", "guest-reset", True),
                            ("reset", "guest-reset", True)]
    assert env.call(S.EXT_SRST, 0, 3, 0) == (S.SBI_ERR_INVALID_PARAM, 0)
    assert env.call(S.EXT_SRST, 0, 0, 2) == (S.SBI_ERR_INVALID_PARAM, 0)
    assert env.call(S.EXT_LEGACY_SHUTDOWN, 0) == (0, 0)
    assert env.requests[-1] == ("shutdown", "guest-shutdown", True)


def test_dbcn(env: Env) -> None:
    env.ram.write(RAM_BASE + 0x40, b"hello, world\n")
    assert env.call(S.EXT_DBCN, 0, 13, RAM_BASE + 0x40, 0) == (0, 13)
    assert env.call(S.EXT_DBCN, 2, ord("!")) == (0, 0)
    assert bytes(env.console.out) == b"hello, world\n!"
    assert env.call(S.EXT_DBCN, 0, 4, 0x1000, 0) == (S.SBI_ERR_INVALID_PARAM, 0)
    assert env.call(S.EXT_DBCN, 0, 4, RAM_BASE, 1) == (S.SBI_ERR_INVALID_PARAM, 0)
    env.console.input += b"ls\n"
    assert env.call(S.EXT_DBCN, 1, 2, RAM_BASE + 0x100, 0) == (0, 2)
    assert env.ram.read(RAM_BASE + 0x100, 2) == b"ls"
    assert env.call(S.EXT_DBCN, 1, 8, RAM_BASE + 0x100, 0) == (0, 1)
    assert env.call(S.EXT_DBCN, 1, 8, RAM_BASE + 0x100, 0) == (0, 0)


def test_legacy_console_and_ipi(env: Env) -> None:
    assert env.call(S.EXT_LEGACY_PUTCHAR, 0, ord("x"), 0x55) == (0, 0x55)   # a1 preserved
    assert bytes(env.console.out) == b"x"
    assert env.call(S.EXT_LEGACY_GETCHAR, 0) == (-1, 0)
    env.console.input += b"q"
    assert env.call(S.EXT_LEGACY_GETCHAR, 0) == (ord("q"), 0)
    # send_ipi takes a pointer to the mask; with satp = 0 it is a physical address
    env.ram.write_int(RAM_BASE + 0x200, 8, 0b1010)
    assert env.call(S.EXT_LEGACY_SEND_IPI, 0, RAM_BASE + 0x200) == (0, 0)
    assert [bool(h.irqs) for h in env.harts] == [False, True, False, True]
    assert env.call(S.EXT_LEGACY_CLEAR_IPI, 0, hart=1) == (0, 0)
    assert env.harts[1].irqs[-1] == (IRQ_S_SOFT, False)
    assert env.call(S.EXT_LEGACY_REMOTE_FENCE_I, 0, 0) == (0, 0)             # NULL: all
    assert [h.flushes for h in env.harts] == [1, 1, 1, 1]


def test_legacy_mask_through_sv39(env: Env) -> None:
    """The v0.1 mask pointer is an S-mode virtual address: walk the hart's Sv39 table."""
    root, l1, l0, page = (RAM_BASE + 0x1000 * i for i in (1, 2, 3, 4))
    va = 0x4000_1008

    def pte(pa: int, leaf: bool) -> int:
        return ((pa >> 12) << 10) | (0b1111 if leaf else 0b1)

    env.ram.write_int(root + ((va >> 30) & 0x1FF) * 8, 8, pte(l1, False))
    env.ram.write_int(l1 + ((va >> 21) & 0x1FF) * 8, 8, pte(l0, False))
    env.ram.write_int(l0 + ((va >> 12) & 0x1FF) * 8, 8, pte(page, True))
    env.ram.write_int(page + 8, 8, 0b100)
    env.harts[0].regs["satp"] = (8 << 60) | (root >> 12)
    assert S.translate(env.harts[0], env.ram, va) == page + 8
    assert env.call(S.EXT_LEGACY_SEND_IPI, 0, va) == (0, 0)
    assert [bool(h.irqs) for h in env.harts] == [False, False, True, False]
    assert env.call(S.EXT_LEGACY_SEND_IPI, 0, 0x7000_0000) == (S.SBI_ERR_INVALID_PARAM, 0)
