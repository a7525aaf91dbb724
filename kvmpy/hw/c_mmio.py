"""Device windows served in C: what a device offers an accelerator that can call C on MMIO.

A device with a C half (the 16550's hot registers, :mod:`kvmpy.hw.char.serial`) answers
``c_mmio()`` with a :class:`CMmio`: the address of a ``c_mmio_fn`` (kvmpy/hw/c_mmio.h) and its
``opaque`` argument, which the accelerator calls on an access to the device's window before
it would exit to Python.  The device stays blind to accelerators: it only learns that C code
may now complete some of its accesses, and when control comes back to Python (``flush``) and
when that ends (``detach``).  Accelerators find such devices on the bus with
:func:`c_mmio_devices`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvmpy.memory import MmioBus


class CMmio:
    """A device's C entry point and the calls its Python half needs from the accelerator."""

    __slots__ = ("detach", "flush", "function", "opaque")

    def __init__(self, function: int, opaque: int, flush: Callable[[], None],
                 detach: Callable[[], None]) -> None:
        self.function = function
        """Address of the ``c_mmio_fn``."""
        self.opaque = opaque
        """Its first argument (address of the device's C state)."""
        self.flush = flush
        """Hand what C buffered to Python (output to the chardev): called by the vCPU
        thread each time control returns to Python, before the exit is handled, so that the
        device's output keeps its order with other output; cheap when nothing is buffered."""
        self.detach = detach
        """C will not be called any more (the accelerator closes): the Python half takes
        every access again, and whatever C buffered is flushed."""


class CMmioWindow:
    """A device window served in C: ``[gpa, gpa + size)`` and its device's handler."""

    __slots__ = ("gpa", "handler", "size")

    def __init__(self, gpa: int, size: int, handler: CMmio) -> None:
        self.gpa = gpa
        self.size = size
        self.handler = handler


class CMmioDevices:
    """The bus windows whose devices have a C half, attached for one accelerator."""

    def __init__(self, windows: list[CMmioWindow]) -> None:
        self.windows = windows
        self._flushers = tuple(w.handler.flush for w in windows)
        self._detached: list[CMmioWindow] = []

    def flush(self) -> None:
        for flush in self._flushers:
            flush()

    def drop(self, window: CMmioWindow) -> None:
        """The accelerator cannot serve ``window`` in C after all: Python takes it again."""
        self.windows.remove(window)
        self._flushers = tuple(w.handler.flush for w in self.windows)
        window.handler.detach()  # never in the accelerator's table: nothing to keep

    def detach(self) -> None:
        """End C service of every window (each device flushes what is left).  The handlers
        stay referenced here: the accelerator's table may still hold their addresses."""
        windows, self.windows, self._flushers = self.windows, [], ()
        self._detached = windows
        for window in windows:
            window.handler.detach()


def c_mmio_devices(bus: MmioBus) -> CMmioDevices:
    """Attach every device on ``bus`` that offers a C half (``c_mmio()`` not None)."""
    windows = []
    for region in bus.regions:
        offer = getattr(region.device, "c_mmio", None)
        handler = offer() if offer is not None else None
        if handler is not None:
            windows.append(CMmioWindow(region.base, region.size, handler))
    return CMmioDevices(windows)
