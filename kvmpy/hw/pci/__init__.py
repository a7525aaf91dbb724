"""PCI: the virt board's PCIe host bridge, configuration space, PCI Express root ports, and
the virtio-pci transport.

Importing the package imports none of its modules (the virtio-pci transport pulls in every
virtio device it can carry): each public name below is imported from its module on first
use, and each module registers its QOM types when imported (:mod:`kvmpy.registry_init`
imports them as lookups need them; :mod:`kvmpy.hw.pci.virtio_pci` registers the
``virtio-*-pci`` types).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvmpy.hw.pci.bridge import PciBridge
    from kvmpy.hw.pci.bus import PciBus
    from kvmpy.hw.pci.device import PciBar, PciDevice
    from kvmpy.hw.pci.gpex import GpexHost, GpexRoot
    from kvmpy.hw.pci.root_port import PcieRootPort
    from kvmpy.hw.pci.virtio_pci import VirtioPciProxy

_HOMES = {
    "PciBridge": "bridge", "PciBus": "bus", "PciBar": "device", "PciDevice": "device",
    "GpexHost": "gpex", "GpexRoot": "gpex", "PcieRootPort": "root_port",
    "VirtioPciProxy": "virtio_pci",
}

__all__ = ["GpexHost", "GpexRoot", "PciBar", "PciBridge", "PciBus", "PciDevice",
           "PcieRootPort", "VirtioPciProxy"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
