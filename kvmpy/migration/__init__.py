"""VM state: save and restore a whole VM, and stream it live (issue 14's state core).

``save_vm(system, out)`` writes a paused VM's whole state as one stream of kvmpy's own
versioned format (``docs/vmstate.md``); ``load_vm(system, inp)`` loads it into a VM created
with the same configuration, checking everything before changing anything; ``LiveSaver``
writes the same stream from a running VM by pre-copy with dirty-page logging.  Errors are
one-line :class:`VmStateError`.  ``kvmpy.VM.save(path)`` / ``kvmpy.VM.restore(path)`` build
on these.

Only :class:`VmStateError` is imported eagerly (devices raise it from ``set_state``); the rest
loads on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kvmpy.migration.errors import VmStateError

if TYPE_CHECKING:
    from kvmpy.migration.save import (
        LiveSaver,
        LoadInfo,
        SaveStats,
        load_vm,
        read_header,
        save_file,
        save_vm,
        vcpus_held,
    )

__all__ = ["LiveSaver", "LoadInfo", "SaveStats", "VmStateError", "load_vm", "read_header",
           "save_file", "save_vm", "vcpus_held"]

_LAZY = frozenset(__all__) - {"VmStateError"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from kvmpy.migration import save

        return getattr(save, name)
    raise AttributeError(f"module 'kvmpy.migration' has no attribute '{name}'")
