"""Interrupt lines, QEMU's ``qemu_irq``: a device raises a line not knowing what it drives."""

from __future__ import annotations

from collections.abc import Callable

IrqHandler = Callable[[int, bool], None]
"""Called as ``handler(n, level)`` whenever the line is set; ``n`` is the input number."""


class IrqLine:
    """A level-triggered interrupt line into input ``n`` of a sink (PLIC source, hart pin, ...).

    The line remembers its level; every :meth:`set` is forwarded, so a sink may rely on
    seeing the current level after any change.
    """

    __slots__ = ("_handler", "level", "n")

    def __init__(self, handler: IrqHandler, n: int = 0) -> None:
        self._handler = handler
        self.n = n
        self.level = False

    def set(self, level: bool | int) -> None:
        self.level = bool(level)
        self._handler(self.n, self.level)

    def raise_(self) -> None:
        self.set(True)

    def lower(self) -> None:
        self.set(False)

    def pulse(self) -> None:
        self.set(True)
        self.set(False)


def unconnected_irq() -> IrqLine:
    """A line wired to nothing (QEMU leaves such IRQs NULL); setting it has no effect."""
    return IrqLine(lambda n, level: None)
