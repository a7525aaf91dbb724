"""Character devices: the backends (``-chardev``) and how options become open chardevs.

Importing the package makes every backend type known to the registry without importing its
module: a lookup of ``chardev-stdio`` (``-serial stdio``, ``qom.object_new``) or of all of them
(``-chardev help``) imports what it needs (:func:`kvmpy.registry_init.load_types`).  The names
below are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kvmpy.registry_init import load_types

if TYPE_CHECKING:
    from kvmpy.chardev.base import (
        CHR_EVENT_BREAK,
        CHR_EVENT_CLOSED,
        CHR_EVENT_MUX_IN,
        CHR_EVENT_MUX_OUT,
        CHR_EVENT_OPENED,
        Chardev,
    )
    from kvmpy.chardev.file import FileChardev
    from kvmpy.chardev.mux import MuxChardev, MuxFrontend
    from kvmpy.chardev.null import NullChardev, VcChardev
    from kvmpy.chardev.pty import PtyChardev
    from kvmpy.chardev.ringbuf import MemoryChardev, RingbufChardev
    from kvmpy.chardev.setup import (
        ChardevBuilder,
        MonitorSpec,
        VMChardevs,
        chardev_help,
        create_chardevs,
        open_backends,
    )
    from kvmpy.chardev.socket import SocketChardev
    from kvmpy.chardev.stdio import StdioChardev, restore_terminals

__all__ = [
    "CHR_EVENT_BREAK",
    "CHR_EVENT_CLOSED",
    "CHR_EVENT_MUX_IN",
    "CHR_EVENT_MUX_OUT",
    "CHR_EVENT_OPENED",
    "Chardev",
    "ChardevBuilder",
    "FileChardev",
    "MemoryChardev",
    "MonitorSpec",
    "MuxChardev",
    "MuxFrontend",
    "NullChardev",
    "PtyChardev",
    "RingbufChardev",
    "SocketChardev",
    "StdioChardev",
    "VMChardevs",
    "VcChardev",
    "chardev_help",
    "create_chardevs",
    "open_backends",
    "restore_terminals",
]

load_types()

_HOMES = {
    **dict.fromkeys(("CHR_EVENT_BREAK", "CHR_EVENT_CLOSED", "CHR_EVENT_MUX_IN",
                     "CHR_EVENT_MUX_OUT", "CHR_EVENT_OPENED", "Chardev"), "base"),
    "FileChardev": "file",
    "MuxChardev": "mux",
    "MuxFrontend": "mux",
    "NullChardev": "null",
    "VcChardev": "null",
    "PtyChardev": "pty",
    "MemoryChardev": "ringbuf",
    "RingbufChardev": "ringbuf",
    **dict.fromkeys(("ChardevBuilder", "MonitorSpec", "VMChardevs", "chardev_help",
                     "create_chardevs", "open_backends"), "setup"),
    "SocketChardev": "socket",
    "StdioChardev": "stdio",
    "restore_terminals": "stdio",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
