"""The 9P2000.L file server behind ``-fsdev local`` / ``-virtfs`` (virtio-9p's back-end).

Importing the package imports none of its modules: the names below are imported from their
modules on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvmpy.fs.fsdev import FsDev, parse_fsdev, parse_virtfs
    from kvmpy.fs.server import Server

_HOMES = {"FsDev": "fsdev", "parse_fsdev": "fsdev", "parse_virtfs": "fsdev",
          "Server": "server"}

__all__ = ["FsDev", "Server", "parse_fsdev", "parse_virtfs"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
