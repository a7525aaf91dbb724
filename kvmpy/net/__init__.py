"""Network back-ends (``-netdev``): what a NIC's frames go to and come from.

Importing the package imports none of its modules: the back-ends (:mod:`~kvmpy.net.stream`,
:mod:`~kvmpy.net.tap`, :mod:`~kvmpy.net.user`) are imported when a ``-netdev`` or a lookup
of their types needs them (:mod:`kvmpy.registry_init`), and the names below on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvmpy.net import stream, tap, user
    from kvmpy.net.base import NetBackend, netdev_class

__all__ = ["NetBackend", "netdev_class", "stream", "tap", "user"]

_HOMES = {"NetBackend": "kvmpy.net.base", "netdev_class": "kvmpy.net.base"}


def __getattr__(name: str) -> Any:
    if name in ("stream", "tap", "user"):
        return importlib.import_module(f"{__name__}.{name}")
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
