"""virtio: the virtio-mmio transport and the devices plugged into it.

Importing the package imports none of its modules (a device model pulls in its back-end:
virtio-blk the disk layer, virtio-net the network layer): each public name below is imported
from its module on first use, and each module registers its QOM types when imported
(:mod:`kvmpy.registry_init` imports them as lookups need them).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvmpy.hw.virtio.blk import RawImage, VirtioBlk
    from kvmpy.hw.virtio.console import VirtConsole, VirtioSerial, VirtSerialPort
    from kvmpy.hw.virtio.device import VirtioDevice
    from kvmpy.hw.virtio.mmio import VirtioMmio, plug_devices
    from kvmpy.hw.virtio.net import VirtioNet
    from kvmpy.hw.virtio.ninep import VirtioNineP
    from kvmpy.hw.virtio.rng import VirtioRng

_HOMES = {
    "RawImage": "blk", "VirtioBlk": "blk",
    "VirtConsole": "console", "VirtioSerial": "console", "VirtSerialPort": "console",
    "VirtioDevice": "device",
    "VirtioMmio": "mmio", "plug_devices": "mmio",
    "VirtioNet": "net",
    "VirtioNineP": "ninep",
    "VirtioRng": "rng",
}

__all__ = ["RawImage", "VirtConsole", "VirtSerialPort", "VirtioBlk", "VirtioDevice",
           "VirtioMmio", "VirtioNet", "VirtioNineP", "VirtioRng", "VirtioSerial", "plug_devices"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
