"""Miscellaneous devices: the SiFive test finisher and Spike's HTIF."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvmpy.hw.misc.htif import Htif
    from kvmpy.hw.misc.sifive_test import SifiveTest

__all__ = ["Htif", "SifiveTest"]

_HOMES = {"Htif": "htif", "SifiveTest": "sifive_test"}


def __getattr__(name: str) -> Any:
    # Each device's module on first use (spike's HTIF is not virt's business, nor the reverse).
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
