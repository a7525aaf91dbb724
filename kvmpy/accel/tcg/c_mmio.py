"""Device windows served in C inside the interpreter (``tcg_set_c_mmio``, c_mmio.c).

The engine offers a load or store that would exit as MMIO to the window's C function first
(kvmpy/hw/c_mmio.h); the interpreter and the translated code share that slow path.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from kvmpy.accel.tcg import core
from kvmpy.hw.c_mmio import CMmioDevices, c_mmio_devices

if TYPE_CHECKING:
    from kvmpy.memory import MmioBus

_log = logging.getLogger("kvmpy")


class TcgCMmio:
    """The C windows of ``bus`` attached to ``engine`` until :meth:`close`."""

    def __init__(self, engine: Any, bus: MmioBus) -> None:
        ffi, lib = core.ffi, core.lib
        table = lib.tcg_c_mmio_new()
        if table == ffi.NULL:
            raise MemoryError("tcg_c_mmio_new")
        self._table: Any = ffi.gc(table, lib.tcg_c_mmio_free)
        self._engine = engine
        self.devices: CMmioDevices = c_mmio_devices(bus)
        for window in list(self.devices.windows):
            handler = window.handler
            if lib.tcg_c_mmio_add(table, window.gpa, window.size,
                                  ffi.cast("void *", handler.function),
                                  ffi.cast("void *", handler.opaque)) != 0:
                _log.debug("tcg: no C service for the window at 0x%x (table full)", window.gpa)
                self.devices.drop(window)
        lib.tcg_set_c_mmio(engine, table)
        self.flush = self.devices.flush
        """Call when the hart returns to Python (before its exit is handled)."""

    def close(self) -> None:
        """Detach the table from the engine (no hart runs), then the devices."""
        core.lib.tcg_set_c_mmio(self._engine, core.ffi.NULL)
        self.devices.detach()
