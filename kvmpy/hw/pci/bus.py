"""A PCI bus: 32 slots of 8 functions, INTx swizzling, and the I/O and memory spaces the
functions' BARs decode (QEMU's ``PCIBus``).

Placement follows QEMU's ``do_pci_register_device`` and ``pci_init_multifunction``: a free
``addr`` is the first slot with function 0 free; functions above 0 need a multifunction
function 0; a single-function device at function 0 forbids the others.  The error messages
are QEMU's.

INTx pin ``p`` (0 = INTA) of slot ``s`` drives bus interrupt ``(p + s) % 4``
(``pci_swizzle_map_irq_fn``); a bus interrupt is raised while any function drives it.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Sequence

from kvmpy import log
from kvmpy.errors import ConfigError
from kvmpy.hw.irq import IrqLine
from kvmpy.hw.pci.device import (
    PCI_FUNC_MAX,
    PCI_SLOT_MAX,
    PciBar,
    PciDevice,
    pci_func,
    pci_slot,
)

PCI_NUM_PINS = 4


class _AddressSpace:
    """The BARs mapped in one space (I/O or memory), sorted for lookup."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._bases: list[int] = []
        self._bars: list[PciBar] = []

    def rebuild(self, bars: Sequence[PciBar]) -> None:
        mapped = sorted((bar for bar in bars if bar.addr is not None),
                        key=lambda bar: bar.addr or 0)
        self._bars = mapped
        self._bases = [bar.addr or 0 for bar in mapped]

    def find(self, addr: int) -> PciBar | None:
        i = bisect.bisect_right(self._bases, addr)
        # BARs the guest made overlap: like QEMU, one of them wins.
        for bar in reversed(self._bars[:i]):
            if bar.addr is not None and addr < bar.addr + bar.size:
                return bar
        return None


class PciBus:
    """A root bus (``pcie.0`` on the virt board); ``irqs`` are its INTA-D outputs.
    ``allow_0_address``: a BAR at bus address 0 decodes (QEMU's per-machine setting)."""

    def __init__(self, name: str, irqs: Sequence[IrqLine], allow_0_address: bool = False
                 ) -> None:
        self.name = name
        self.allow_0_address = allow_0_address
        self.irqs = list(irqs)
        self.devices: dict[int, PciDevice] = {}
        self._irq_count = [0] * PCI_NUM_PINS
        self._irq_level: dict[int, bool] = {}
        self.io = _AddressSpace("io")
        self.memory = _AddressSpace("memory")

    # -- placement ------------------------------------------------------------------------------

    def free_devfn(self) -> int | None:
        for slot in range(PCI_SLOT_MAX):
            if slot << 3 not in self.devices:
                return slot << 3
        return None

    def plug(self, device: PciDevice, devfn: int = -1) -> None:
        """Put ``device`` at ``devfn`` (-1: the first free slot); raises ConfigError."""
        name = device.type_name
        if devfn < 0:
            found = self.free_devfn()
            if found is None:
                raise ConfigError(f"PCI: no slot/function available for {name}, all in use "
                                  "or reserved")
            devfn = found
        elif devfn in self.devices:
            raise ConfigError(f"PCI: slot {pci_slot(devfn)} function {pci_func(devfn)} not "
                              f"available for {name}, in use by "
                              f"{self.devices[devfn].describe()}")
        self._check_multifunction(device, devfn)
        device.devfn = devfn
        device.allow_0_address = self.allow_0_address
        self.devices[devfn] = device
        device.on_irq = functools.partial(self._set_irq, devfn)
        device.on_mapping = self.update_mappings

    def _check_multifunction(self, device: PciDevice, devfn: int) -> None:
        """QEMU's pci_init_multifunction."""
        slot, func = pci_slot(devfn), pci_func(devfn)
        if func:
            f0 = self.devices.get(slot << 3)
            if f0 is not None and not f0.multifunction:
                raise ConfigError(f"PCI: single function device can't be populated in "
                                  f"function {slot:x}.{func:x}")
            return
        if device.multifunction:
            return
        for other in range(1, PCI_FUNC_MAX):
            if (slot << 3 | other) in self.devices:
                raise ConfigError(f"PCI: {slot:x}.0 indicates single function, but "
                                  f"{slot:x}.{other:x} is already populated.")

    def device_at(self, devfn: int) -> PciDevice | None:
        return self.devices.get(devfn)

    # -- interrupts -----------------------------------------------------------------------------

    def _set_irq(self, devfn: int, level: bool) -> None:
        device = self.devices.get(devfn)
        if device is None or not device.intx_pin:
            return
        old = self._irq_level.get(devfn, False)
        if old == level:
            return
        self._irq_level[devfn] = level
        line = (device.intx_pin - 1 + pci_slot(devfn)) % PCI_NUM_PINS
        self._irq_count[line] += 1 if level else -1
        if line < len(self.irqs):
            self.irqs[line].set(self._irq_count[line] > 0)

    # -- address spaces -------------------------------------------------------------------------

    def update_mappings(self) -> None:
        bars = [bar for device in self.devices.values() for bar in device.bars.values()]
        self.io.rebuild([bar for bar in bars if bar.is_io])
        self.memory.rebuild([bar for bar in bars if not bar.is_io])

    def read(self, space: _AddressSpace, addr: int, size: int) -> int | None:
        """A read of the space at bus address ``addr``; None where no BAR decodes it."""
        bar = space.find(addr)
        if bar is None or bar.addr is None:
            return None
        offset = addr - bar.addr
        if size not in bar.region.access_sizes or offset + size > bar.size:
            log.guest_error(f"PCI {space.name} read at 0x{addr:x} of size {size}: not a valid "
                            f"access to BAR{bar.index}")
            return 0
        return bar.region.mmio_read(offset, size)

    def write(self, space: _AddressSpace, addr: int, size: int, value: int) -> bool:
        """A write; False where no BAR decodes the address."""
        bar = space.find(addr)
        if bar is None or bar.addr is None:
            return False
        offset = addr - bar.addr
        if size not in bar.region.access_sizes or offset + size > bar.size:
            log.guest_error(f"PCI {space.name} write at 0x{addr:x} of size {size}: not a "
                            f"valid access to BAR{bar.index}")
            return True
        bar.region.mmio_write(offset, size, value)
        return True

    def reset(self) -> None:
        for device in self.devices.values():
            device.reset()
        self.update_mappings()

