"""A PCI bus: 32 slots of 8 functions, INTx swizzling, bus numbers, and the I/O and memory
spaces the functions' BARs and the bridges' windows decode (QEMU's ``PCIBus``).

Placement follows QEMU's ``do_pci_register_device`` and ``pci_init_multifunction``: a free
``addr`` is the first slot with function 0 free; functions above 0 need a multifunction
function 0; a single-function device at function 0 forbids the others.  The error messages
are QEMU's.

INTx pin ``p`` (0 = INTA) of slot ``s`` drives bus interrupt ``(p + s) % 4``
(``pci_swizzle_map_irq_fn``).  A root bus has the interrupt lines; the secondary bus of a
bridge hands its bus interrupt ``n`` up as pin ``n`` of the bridge's slot, swizzled again on
the bus above (``pci_change_irq_level``).  A line is raised while any function drives it.

A root bus is number 0; a secondary bus has the number the guest wrote into its bridge.
:meth:`PciBus.find_bus_nr` finds a bus by number as QEMU's ``pci_find_bus_nr`` does, for
configuration cycles and ``query-pci``.

Each space is sorted by address: a lookup is one bisection on the bus the CPU window opens
onto, plus one per bridge window passed on the way down.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

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

if TYPE_CHECKING:
    from kvmpy.hw.pci.bridge import PciBridge

PCI_NUM_PINS = 4


@dataclass
class BridgeWindow:
    """An address range a bridge forwards from its primary bus to ``target``, a space of
    its secondary bus (QEMU's ``pci_bridge_init_alias``)."""

    addr: int
    size: int
    target: _AddressSpace

    @property
    def is_io(self) -> bool:
        return self.target.name == "io"


_Entry = PciBar | BridgeWindow


class _AddressSpace:
    """The BARs and bridge windows mapped in one space (I/O or memory), sorted for lookup."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._bases: list[int] = []
        self._entries: list[_Entry] = []

    def rebuild(self, entries: Sequence[_Entry]) -> None:
        mapped = sorted((entry for entry in entries if entry.addr is not None),
                        key=lambda entry: entry.addr or 0)
        self._entries = mapped
        self._bases = [entry.addr or 0 for entry in mapped]

    def find(self, addr: int) -> _Entry | None:
        i = bisect.bisect_right(self._bases, addr)
        # Ranges the guest made overlap: like QEMU, one of them wins.
        for entry in reversed(self._entries[:i]):
            if entry.addr is not None and addr < entry.addr + entry.size:
                return entry
        return None

    def find_bar(self, addr: int) -> PciBar | None:
        """The BAR decoding ``addr``, through any bridge windows on the way."""
        entry = self.find(addr)
        while isinstance(entry, BridgeWindow):
            entry = entry.target.find(addr)
        return entry


class PciBus:
    """A root bus (``pcie.0`` on the virt board; ``irqs`` are its INTA-D outputs) or, with
    ``bridge``, the secondary bus of that bridge.  ``allow_0_address``: a BAR at bus
    address 0 decodes (QEMU's per-machine setting)."""

    def __init__(self, name: str, irqs: Sequence[IrqLine] = (), allow_0_address: bool = False,
                 bridge: PciBridge | None = None) -> None:
        self.name = name
        self.allow_0_address = allow_0_address
        self.irqs = list(irqs)
        self.bridge = bridge
        """The bridge this bus is the secondary bus of (None: a root bus)."""
        self.parent: PciBus | None = None
        """The bus the bridge sits on, once it is plugged."""
        self.upstream: Callable[[int, int], None] = lambda pin, change: None
        """Set by the bus above: bus interrupt ``pin`` changes its count by ``change``."""
        self.children: list[PciBus] = []
        """The secondary buses of the bridges on this bus, in the order they were plugged."""
        self.devices: dict[int, PciDevice] = {}
        self._irq_count = [0] * PCI_NUM_PINS
        self._irq_level: dict[int, bool] = {}
        self.io = _AddressSpace("io")
        self.memory = _AddressSpace("memory")
        self.pcie_slots: set[tuple[int, int]] = set()
        """On a root bus: the (chassis, slot) pairs of the PCIe slots below it (QEMU keeps
        them in one global list)."""
        self.automatic_ids = 0
        """On a root bus: how many buses below it were named ``pcie.N`` for want of an id."""

    @property
    def root(self) -> PciBus:
        bus = self
        while bus.parent is not None:
            bus = bus.parent
        return bus

    @property
    def number(self) -> int:
        """The bus number: 0 for a root bus, else its bridge's secondary bus number."""
        return 0 if self.bridge is None else self.bridge.secondary_bus_number

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
        device.realize(self)
        self.devices[devfn] = device
        device.on_irq = functools.partial(self._set_irq, devfn)
        device.on_mapping = self.update_mappings
        if self.bridge is not None:
            self.bridge.secondary_plugged(device)

    def attach(self, secondary: PciBus, devfn: int) -> None:
        """Link the secondary bus of the bridge being plugged at ``devfn``."""
        secondary.parent = self
        secondary.allow_0_address = self.allow_0_address
        secondary.upstream = functools.partial(self._bridge_irq, devfn)
        self.children.append(secondary)

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

    def find_bus_nr(self, number: int) -> PciBus | None:
        """The bus numbered ``number`` at or below this one (QEMU's pci_find_bus_nr): a
        bridge's secondary bus by its number, else the bus whose bridge's secondary to
        subordinate range holds it; a bridge in secondary bus reset hides its range.  Of
        bridges with overlapping ranges the one plugged last wins, as in QEMU."""
        if self.number == number:
            return self
        if self.bridge is not None and not self.bridge.forwards_bus(number):
            return None
        bus: PciBus | None = self
        while bus is not None:
            below = None
            for child in reversed(bus.children):
                if child.number == number:
                    return child
                assert child.bridge is not None
                if child.bridge.forwards_bus(number):
                    below = child
                    break
            bus = below
        return None

    # -- interrupts -----------------------------------------------------------------------------

    def _set_irq(self, devfn: int, level: bool) -> None:
        device = self.devices.get(devfn)
        if device is None or not device.intx_pin:
            return
        old = self._irq_level.get(devfn, False)
        if old == level:
            return
        self._irq_level[devfn] = level
        pin = (device.intx_pin - 1 + pci_slot(devfn)) % PCI_NUM_PINS
        self._change_irq_level(pin, 1 if level else -1)

    def _change_irq_level(self, pin: int, change: int) -> None:
        if self.bridge is not None:
            self.upstream(pin, change)
            return
        self._irq_count[pin] += change
        if pin < len(self.irqs):
            self.irqs[pin].set(self._irq_count[pin] > 0)

    def _bridge_irq(self, devfn: int, pin: int, change: int) -> None:
        """Bus interrupt ``pin`` of the secondary bus of the bridge at ``devfn``
        (pci_bridge's swizzle: that pin of the bridge's slot)."""
        self._change_irq_level((pin + pci_slot(devfn)) % PCI_NUM_PINS, change)

    # -- address spaces -------------------------------------------------------------------------

    def update_mappings(self) -> None:
        entries: list[_Entry] = []
        for device in self.devices.values():
            entries += device.bars.values()
            if device.is_bridge:
                entries += cast("PciBridge", device).windows
        self.io.rebuild([entry for entry in entries if entry.is_io])
        self.memory.rebuild([entry for entry in entries if not entry.is_io])

    def _decode(self, space: _AddressSpace, addr: int, size: int, what: str
                ) -> tuple[PciBar | None, int]:
        """(BAR, offset) taking an access at bus address ``addr``; (None, 0) where no BAR
        decodes it, (None, -1) where one does but refuses the access (logged)."""
        bar = space.find_bar(addr)
        if bar is None or bar.addr is None:
            return None, 0
        offset = addr - bar.addr
        if size not in bar.region.access_sizes or offset + size > bar.size:
            log.guest_error(f"PCI {space.name} {what} at 0x{addr:x} of size {size}: not a "
                            f"valid access to BAR{bar.index}")
            return None, -1
        return bar, offset

    def read(self, space: _AddressSpace, addr: int, size: int) -> int | None:
        """A read of the space at bus address ``addr``; None where no BAR decodes it."""
        bar, offset = self._decode(space, addr, size, "read")
        if bar is None:
            return 0 if offset < 0 else None
        return bar.region.mmio_read(offset, size)

    def write(self, space: _AddressSpace, addr: int, size: int, value: int) -> bool:
        """A write; False where no BAR decodes the address."""
        bar, offset = self._decode(space, addr, size, "write")
        if bar is None:
            return offset < 0
        bar.region.mmio_write(offset, size, value)
        return True

    def reset(self) -> None:
        """Reset every function on this bus (a bridge resets the bus behind it too)."""
        for device in self.devices.values():
            device.reset()
        self.update_mappings()

