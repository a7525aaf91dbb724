"""The vCPU run loop in C (vcpu_loop.c), when it is built: MMIO exits to devices with a C
half (:mod:`kvmpy.hw.c_mmio`) complete without a return to Python.

Optional, like every compiled part of the ``kvm`` accelerator's fast paths: without the
module (:func:`available` False) each exit goes through Python as before.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from kvmpy.hw.c_mmio import CMmioDevices, c_mmio_devices

if TYPE_CHECKING:
    from kvmpy.accel.exits import VcpuExit
    from kvmpy.accel.kvm.kvm import Vcpu
    from kvmpy.memory import MmioBus

try:
    from kvmpy.accel.kvm import _vcpu_loop  # type: ignore[attr-defined]
except ImportError:  # not built here
    _vcpu_loop = None

_log = logging.getLogger("kvmpy")


def available() -> bool:
    return _vcpu_loop is not None


class KvmCMmio:
    """The C windows of ``bus``: one table, shared by the vCPUs of a VM, until :meth:`close`."""

    def __init__(self, bus: MmioBus) -> None:
        if _vcpu_loop is None:
            raise RuntimeError("the KVM run loop in C (kvmpy.accel.kvm._vcpu_loop) is not built")
        ffi, lib = _vcpu_loop.ffi, _vcpu_loop.lib
        table = lib.kvm_c_mmio_new()
        if table == ffi.NULL:
            raise MemoryError("kvm_c_mmio_new")
        self.table: Any = ffi.gc(table, lib.kvm_c_mmio_free)
        self.devices: CMmioDevices = c_mmio_devices(bus)
        for window in list(self.devices.windows):
            handler = window.handler
            if lib.kvm_c_mmio_add(table, window.gpa, window.size,
                                  ffi.cast("void *", handler.function),
                                  ffi.cast("void *", handler.opaque)) != 0:
                _log.debug("kvm: no C service for the window at 0x%x (table full)", window.gpa)
                self.devices.drop(window)
        self.flush = self.devices.flush

    def close(self) -> None:
        """No vCPU runs any more: the devices take every access in Python again."""
        self.devices.detach()


class CRunLoop:
    """``run()`` of one vCPU through ``kvm_vcpu_loop``: exits as :meth:`Vcpu.run` returns
    them, after the C devices' output went out (it precedes what the exit does)."""

    def __init__(self, fd: Vcpu, windows: KvmCMmio) -> None:
        assert _vcpu_loop is not None
        self._loop = _vcpu_loop.lib.kvm_vcpu_loop
        self._fd = fd.fd
        self._area = _vcpu_loop.ffi.cast("void *", fd.run_area)
        self._table = windows.table
        self._handled: Any = _vcpu_loop.ffi.new("uint64_t *")
        self._finish = fd.finish_run
        self._flush = windows.flush

    def run(self) -> VcpuExit:
        ret = self._loop(self._fd, self._area, self._table, self._handled)
        if self._handled[0]:
            self._flush()
        return self._finish(-ret)
