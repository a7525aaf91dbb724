"""A hart as the board and devices see it: interrupt pins and the timer compare register.

The board is built (phase 4) before the accelerator creates vCPUs (phase 5), so devices are
wired to :class:`HartPort` objects that forward to the vCPU once it is attached.  Devices never
learn which accelerator runs the hart.
"""

from __future__ import annotations

from typing import Protocol

from kvmpy.hw.irq import IrqLine


class HartBackend(Protocol):
    """The subset of a vCPU a HartPort forwards to (see ``kvmpy.accel.base.Vcpu``)."""

    def set_irq(self, irq: int, level: bool) -> None: ...
    def get_reg(self, name: str) -> int: ...
    def set_reg(self, name: str, value: int) -> None: ...


class HartPort:
    """Pins of hart ``hartid``: ``irq_line(n)`` drives mip bit ``n``; ``mtimecmp`` is its
    machine timer compare (ACLINT MTIMER), which lives in the accelerator."""

    def __init__(self, hartid: int) -> None:
        self.hartid = hartid
        self.backend: HartBackend | None = None
        self._levels: dict[int, bool] = {}
        self._mtimecmp = (1 << 64) - 1

    def attach(self, backend: HartBackend) -> None:
        """Connect the vCPU; pins set before this take effect now."""
        self.backend = backend
        for irq, level in self._levels.items():
            backend.set_irq(irq, level)
        backend.set_reg("mtimecmp", self._mtimecmp)

    def _set_irq(self, irq: int, level: bool) -> None:
        self._levels[irq] = level
        if self.backend is not None:
            self.backend.set_irq(irq, level)

    def irq_line(self, irq: int) -> IrqLine:
        return IrqLine(self._set_irq, irq)

    @property
    def mtimecmp(self) -> int:
        if self.backend is not None:
            return self.backend.get_reg("mtimecmp")
        return self._mtimecmp

    @mtimecmp.setter
    def mtimecmp(self, value: int) -> None:
        self._mtimecmp = value
        if self.backend is not None:
            self.backend.set_reg("mtimecmp", value)
