"""The one place that imports every module registering QOM types.

``-M help``, ``-device help``, ``-accel help``, ``-chardev help`` and ``-cpu help`` are answered
from the registry, which only knows the types whose modules were imported.  Each entry below is
imported when it exists in this installation (a feature not built yet is simply absent).
"""

from __future__ import annotations

import importlib
import importlib.util

TYPE_MODULES = (
    "kvmpy.chardev",
    "kvmpy.accel.tcg",
    "kvmpy.accel.kvm",
    "kvmpy.hw.char",
    "kvmpy.hw.intc",
    "kvmpy.hw.misc",
    "kvmpy.hw.rtc",
    "kvmpy.hw.virtio",
    "kvmpy.hw.virtio.balloon",
    "kvmpy.hw.pci",
    "kvmpy.net",
    "kvmpy.hw.null_machine",
    "kvmpy.hw.riscv.virt",
    "kvmpy.hw.riscv.spike",
    "kvmpy.hw.riscv.cpu",
)

_loaded = False


def _exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def load_types() -> None:
    """Import every type module that exists (idempotent)."""
    global _loaded
    if _loaded:
        return
    for name in TYPE_MODULES:
        if _exists(name):
            importlib.import_module(name)
    _loaded = True
