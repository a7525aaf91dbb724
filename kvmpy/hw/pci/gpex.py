"""QEMU's generic PCIe host bridge (``gpex-pcihost``, hw/pci-host/gpex.c), as the virt board
maps it: an ECAM configuration window, an I/O port window and memory windows, with the
root bus ``pcie.0`` behind them and the host bridge function (``gpex-root``, 1b36:0008) at
00:00.0.

- ECAM (PCI Express Base spec §7.2.2): bus << 20 | devfn << 12 | register.  Bus 0 is the
  root bus; other numbers reach the buses behind bridges as the guest numbered them
  (:meth:`PciBus.find_bus_nr`).  Where no function answers (a bus no bridge forwards, an
  empty slot, past a conventional function's 256 bytes, a function whose slot has no power)
  reads are all ones and writes are dropped.
- The I/O window maps bus I/O addresses from 0; the memory windows map bus addresses equal to
  the CPU's.  An address no BAR decodes reads all ones and ignores writes (QEMU's
  ``allow-unmapped-accesses``, the PC behaviour Linux expects).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kvmpy.hw.core import MmioDevice
from kvmpy.hw.irq import IrqLine
from kvmpy.hw.pci.bridge import PciBridge
from kvmpy.hw.pci.bus import PciBus
from kvmpy.hw.pci.device import PciDevice, pci_func, pci_slot
from kvmpy.hw.virtio.vmstate import Applier, StateReader, apply_all
from kvmpy.qom import register_type

PCIE_MMCFG_BUS_SHIFT = 20
PCIE_MMCFG_DEVFN_SHIFT = 12
PCI_CLASS_BRIDGE_HOST = 0x0600
PCI_VENDOR_ID_REDHAT = 0x1B36
PCI_DEVICE_ID_REDHAT_PCIE_HOST = 0x0008


@register_type("gpex-root", "pci-device", description="QEMU generic PCIe host bridge")
class GpexRoot(PciDevice):
    """The host bridge's PCI function at 00:00.0 (conventional, no BARs)."""

    category = "Controller/Bridge/Hub devices"
    desc = "QEMU generic PCIe host bridge"
    vendor_id = PCI_VENDOR_ID_REDHAT
    device_id = PCI_DEVICE_ID_REDHAT_PCIE_HOST
    class_id = PCI_CLASS_BRIDGE_HOST

    def __init__(self, **props: Any) -> None:
        self.set_properties(props)
        super().__init__()


def _ones(size: int) -> int:
    return (1 << (8 * size)) - 1


class EcamWindow(MmioDevice):
    """The configuration window; it stands for the whole host bridge on the system bus, so a
    system reset of this window resets every function on the bus."""

    access_sizes = (1, 2, 4)
    name = "pcie-mmcfg-mmio"

    def __init__(self, bus: PciBus) -> None:
        self.bus = bus
        self.state = None

    def _target(self, offset: int, size: int) -> tuple[PciDevice, int] | None:
        bus = self.bus if offset >> PCIE_MMCFG_BUS_SHIFT == 0 else \
            self.bus.find_bus_nr(offset >> PCIE_MMCFG_BUS_SHIFT & 0xFF)
        if bus is None:
            return None
        device = bus.device_at(offset >> PCIE_MMCFG_DEVFN_SHIFT & 0xFF)
        register = offset & ((1 << PCIE_MMCFG_DEVFN_SHIFT) - 1)
        if device is None or register + size > device.config_size or not device.has_power:
            return None
        return device, register

    def mmio_read(self, offset: int, size: int) -> int:
        target = self._target(offset, size)
        if target is None:
            return _ones(size)
        device, register = target
        return device.config_read(register, size)

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        target = self._target(offset, size)
        if target is not None:
            device, register = target
            device.config_write(register, size, value)

    def reset(self) -> None:
        self.bus.reset()

    # -- snapshots: the window stands for the host bridge and every function behind it ------

    def functions(self) -> dict[str, PciDevice]:
        """Every function below the host bridge by a name that does not depend on the
        guest's bus numbering: the slot.function path from the root bus and the type,
        ``01.0/00.0 virtio-blk-pci`` for a function behind the root port at 01.0."""
        found: dict[str, PciDevice] = {}

        def walk(bus: PciBus, prefix: str) -> None:
            for devfn in sorted(bus.devices):
                device = bus.devices[devfn]
                path = f"{prefix}{pci_slot(devfn):02x}.{pci_func(devfn):x}"
                found[f"{path} {device.type_name}"] = device
                if isinstance(device, PciBridge):
                    walk(device.secondary_bus, path + "/")
        walk(self.bus, "")
        return found

    def drain(self) -> None:
        for device in self.functions().values():
            drain = getattr(device, "drain", None)
            if drain is not None:
                drain()

    def get_state(self) -> dict[str, Any]:
        return {"functions": {name: device.get_state()
                              for name, device in self.functions().items()}}

    def prepare_state(self, state: dict[str, Any]) -> Applier:
        """Check every function's state (the set of functions must be this bridge's)
        before any is assigned."""
        r = StateReader(state, "gpex-pcihost")
        saved = r.reader("functions")
        functions = self.functions()
        missing = sorted(functions.keys() - saved.state.keys())
        extra = sorted(saved.state.keys() - functions.keys())
        if missing or extra:
            raise r.fail("functions", f"not this machine's PCI functions (missing: "
                         f"{', '.join(missing) or 'none'}; unknown: {', '.join(extra) or 'none'})")
        return apply_all([functions[name].prepare_state(saved.get(name)) for name in functions])

    def set_state(self, state: dict[str, Any]) -> None:
        self.prepare_state(state)()


class PciWindow(MmioDevice):
    """A CPU window onto one of the bus's spaces: bus address = offset + ``bus_base``."""

    access_sizes = (1, 2, 4, 8)

    def __init__(self, bus: PciBus, io: bool, bus_base: int, name: str) -> None:
        self.bus = bus
        self.space = bus.io if io else bus.memory
        self.bus_base = bus_base
        self.name = name
        self.state = None

    def mmio_read(self, offset: int, size: int) -> int:
        value = self.bus.read(self.space, self.bus_base + offset, size)
        return _ones(size) if value is None else value

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        self.bus.write(self.space, self.bus_base + offset, size, value)

    def get_state(self) -> dict[str, Any]:
        return {}  # what decodes here is in the host bridge's state (the ECAM window)

    def set_state(self, state: dict[str, Any]) -> None:
        StateReader(state, self.name)


class GpexHost:
    """The host bridge: the root bus, its host function, and the windows to map.

    ``irqs`` are the four INTx outputs (the virt board wires them to PLIC 32-35);
    ``allow_0_address`` is the machine's (the virt board's is on).
    """

    def __init__(self, irqs: Sequence[IrqLine], allow_0_address: bool = True) -> None:
        self.bus = PciBus("pcie.0", irqs, allow_0_address)
        self.root = GpexRoot()
        self.bus.plug(self.root, 0)
        self.ecam = EcamWindow(self.bus)

    def io_window(self) -> PciWindow:
        return PciWindow(self.bus, True, 0, "gpex_ioport_window")

    def mmio_window(self, base: int, name: str) -> PciWindow:
        return PciWindow(self.bus, False, base, name)
