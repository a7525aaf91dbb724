"""RISC-V ACLINT: MSWI / SSWI (``riscv.aclint.swi``) and MTIMER (``riscv.aclint.mtimer``).

QEMU's hw/intc/riscv_aclint.c.  On the virt board the SiFive CLINT window (0x2000000, 0x10000)
is an MSWI at +0 (0x4000) followed by an MTIMER at +0x4000 (0x8000) whose ``mtime`` sits at
+0x7ff8; ``aclint=on`` adds an SSWI at 0x2F00000.

* SWI (4-byte accesses): register ``4*h`` is hart h's MSIP (bit 0 drives mip.MSIP, reads
  back) or, for an SSWI, SETSSIP (writing 1 raises mip.SSIP, writing 0 is ignored, reads 0).
* MTIMER (4- or 8-byte accesses): ``timecmp_base + 8*h`` is hart h's mtimecmp (64-bit, or
  two 32-bit halves), ``time_base`` is mtime.  mtime comes from an injected :class:`TimeSource`
  (the accelerator's clock, 10 MHz ticks) and mtimecmp lives in the hart itself
  (:attr:`kvmpy.hw.cpu.HartPort.mtimecmp`), which raises MTIP on its own: this device only
  forwards register accesses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kvmpy import log
from kvmpy.hw.core import SysBusDevice, state_from_dict
from kvmpy.hw.irq import IrqLine
from kvmpy.qom import Property, register_type

_LO = 0xFFFFFFFF
_U64 = (1 << 64) - 1

RISCV_ACLINT_SWI_SIZE = 0x4000
RISCV_ACLINT_DEFAULT_MTIMER_SIZE = 0x8000
RISCV_ACLINT_DEFAULT_MTIMECMP = 0x0
RISCV_ACLINT_DEFAULT_MTIME = 0x7FF8
RISCV_ACLINT_DEFAULT_TIMEBASE_FREQ = 10_000_000


@dataclass
class SwiState:
    msip: list[bool] = field(default_factory=list)
    """Per hart: the MSIP level this device drives (an SSWI keeps nothing: SSIP belongs to
    the hart once set)."""


@register_type("riscv.aclint.swi", "sys-bus-device", description="RISC-V ACLINT MSWI/SSWI")
class AclintSwi(SysBusDevice):
    """MSWI (``sswi=False``: ``outputs[h]`` = hart h's ``irq_line(3)``) or SSWI
    (``sswi=True``: ``outputs[h]`` = hart h's ``irq_line(1)``)."""

    access_sizes = (4,)
    name = "riscv.aclint.swi"
    region_size = RISCV_ACLINT_SWI_SIZE
    state: SwiState

    hartid_base = Property(int, 0, "first hart id")
    num_harts = Property(int, 1, "number of harts")
    sswi = Property(bool, False, "supervisor software interrupts (SETSSIP) instead of MSIP")

    def __init__(self, outputs: Sequence[IrqLine] = (), **props: object) -> None:
        self.set_properties(props)
        if not props.get("num_harts"):
            self.num_harts = len(outputs)
        self.outputs = list(outputs)
        self.state = SwiState([False] * self.num_harts)

    def _hart(self, offset: int, what: str) -> int | None:
        if offset >> 2 < self.num_harts and offset & 3 == 0 and offset >> 2 < len(self.outputs):
            return offset >> 2
        log.guest_error(f"aclint-swi: invalid {what}: {offset:08x}")
        return None

    def mmio_read(self, offset: int, size: int) -> int:
        hart = self._hart(offset, "read")
        if hart is None or self.sswi:
            return 0
        return int(self.state.msip[hart])

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        hart = self._hart(offset, "write")
        if hart is None:
            return
        if self.sswi:
            # SETSSIP: an edge that sets mip.SSIP, which the hart's software then owns.
            if value & 1:
                self.outputs[hart].raise_()
            return
        self.state.msip[hart] = bool(value & 1)
        self.outputs[hart].set(value & 1)

    def reset(self) -> None:
        # ACLINT spec: MSWI reset clears every MSIP; SSWI has nothing to reset.
        self.state = SwiState([False] * self.num_harts)
        if not self.sswi:
            for line in self.outputs:
                line.lower()

    def set_state(self, state: dict[str, object]) -> None:
        from kvmpy.migration.errors import VmStateError

        new = state_from_dict(self.state, state, self.name)
        if len(new.msip) != self.num_harts:
            raise VmStateError(f"vmstate: {self.name}: state is for {len(new.msip)} harts, "
                               f"this one has {self.num_harts}")
        self.state = new
        if not self.sswi:
            for line, level in zip(self.outputs, self.state.msip, strict=False):
                line.set(level)


class TimeSource(Protocol):
    """The machine timer counter (mtime, ticks of ``timebase-freq``) the board binds to the
    accelerator's clock; ``write`` moves it (the ``time`` CSR reads the same counter)."""

    def read(self) -> int: ...
    def write(self, value: int) -> None: ...


class TimerCompare(Protocol):
    """Where a hart keeps its mtimecmp (:class:`kvmpy.hw.cpu.HartPort` satisfies this)."""

    mtimecmp: int


@dataclass
class MtimerState:
    """Nothing of its own: mtime is the time source's, each mtimecmp is its hart's."""


@register_type("riscv.aclint.mtimer", "sys-bus-device", description="RISC-V ACLINT MTIMER")
class AclintMtimer(SysBusDevice):
    """The machine timer of harts ``hartid-base`` .. + ``num-harts`` - 1 (``harts[i]``)."""

    access_sizes = (4, 8)
    name = "riscv.aclint.mtimer"

    hartid_base = Property(int, 0, "first hart id")
    num_harts = Property(int, 1, "number of harts")
    timecmp_base = Property(int, RISCV_ACLINT_DEFAULT_MTIMECMP, "offset of mtimecmp[0]")
    time_base = Property(int, RISCV_ACLINT_DEFAULT_MTIME, "offset of mtime")
    aperture_size = Property(int, RISCV_ACLINT_DEFAULT_MTIMER_SIZE, "size of the window")
    timebase_freq = Property(int, RISCV_ACLINT_DEFAULT_TIMEBASE_FREQ, "mtime frequency in Hz")

    def __init__(self, harts: Sequence[TimerCompare] = (), time: TimeSource | None = None,
                 **props: object) -> None:
        self.set_properties(props)
        if not props.get("num_harts"):
            self.num_harts = len(harts)
        self.harts = list(harts)
        self.time: TimeSource = time if time is not None else CounterTime()
        self.region_size = self.aperture_size
        self.state = MtimerState()

    def _timecmp_hart(self, offset: int) -> int | None:
        rel = offset - self.timecmp_base
        if 0 <= rel < min(self.num_harts, len(self.harts)) * 8:
            return rel >> 3
        return None

    def mmio_read(self, offset: int, size: int) -> int:
        hart = self._timecmp_hart(offset)
        if hart is not None:
            cmp = self.harts[hart].mtimecmp
            if offset & 7 == 0:
                return cmp & _LO if size == 4 else cmp
            if offset & 7 == 4 and size == 4:
                return cmp >> 32
        elif offset == self.time_base:
            now = self.time.read()
            return now & _LO if size == 4 else now
        elif offset == self.time_base + 4 and size == 4:
            return self.time.read() >> 32
        log.guest_error(f"aclint-mtimer: invalid read: {offset:08x} size {size}")
        return 0

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        hart = self._timecmp_hart(offset)
        if hart is not None:
            port = self.harts[hart]
            if offset & 7 == 0:
                port.mtimecmp = (port.mtimecmp & ~_LO & _U64) | value if size == 4 else value
                return
            if offset & 7 == 4 and size == 4:
                port.mtimecmp = (value << 32) | (port.mtimecmp & _LO)
                return
        elif offset == self.time_base:
            now = self.time.read()
            self.time.write((now & ~_LO & _U64) | value if size == 4 else value)
            return
        elif offset == self.time_base + 4 and size == 4:
            self.time.write((value << 32) | (self.time.read() & _LO))
            return
        log.guest_error(f"aclint-mtimer: invalid write: {offset:08x} size {size}")

    def reset(self) -> None:
        # ACLINT spec: MTIMER reset clears mtime; mtimecmp is unspecified (left as is).
        self.time.write(0)


class CounterTime:
    """A time source that only moves when written or advanced (for tests and spike runs
    without a clock): ``read()`` returns the stored count."""

    def __init__(self, value: int = 0) -> None:
        self.value = value

    def read(self) -> int:
        return self.value

    def write(self, value: int) -> None:
        self.value = value & _U64

    def advance(self, ticks: int) -> None:
        self.value = (self.value + ticks) & _U64
