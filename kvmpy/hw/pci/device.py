"""A PCI function's configuration space, BARs and INTx pin (QEMU's hw/pci/pci.c ``PCIDevice``).

The 256-byte type 0 header follows the PCI Local Bus spec 3.0 §6.1: every byte has a write
mask (``wmask``, the bits the guest may set) and a write-1-to-clear mask (``w1cmask``, the
status error bits), as QEMU keeps them.  BARs are sized by the guest the usual way (write all
ones, read back the size mask) and mapped when the command register enables their space and
their address is valid, by QEMU's rules (``pci_bar_address``).  Capabilities go into the
first free bytes from 0x40 and are chained at the head of the list, as ``pci_add_capability``
does, so the layout is QEMU's byte for byte.

A PCI Express function (``express=True``) has the 4 KiB configuration space of PCIe Base spec
§7.2.2; past the 256 bytes of a conventional function it holds the extended capabilities
(:mod:`kvmpy.hw.pci.pcie`).

A device knows nothing of the bus it sits on: the bus hands it an ``on_irq`` callback for its
INTx pin and an ``on_mapping`` callback that is told when a BAR moves, and calls
:meth:`PciDevice.realize` once the device has its place.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from kvmpy.hw.core import Device
from kvmpy.hw.virtio.vmstate import Applier, StateReader
from kvmpy.qom import InvalidPropertyValue, Property, register_type

if TYPE_CHECKING:
    from kvmpy.hw.pci.bus import PciBus

# Type 0 header (PCI Local Bus spec 3.0 §6.1).
PCI_VENDOR_ID = 0x00
PCI_DEVICE_ID = 0x02
PCI_COMMAND = 0x04
PCI_STATUS = 0x06
PCI_REVISION_ID = 0x08
PCI_CLASS_PROG = 0x09
PCI_CLASS_DEVICE = 0x0A
PCI_CACHE_LINE_SIZE = 0x0C
PCI_HEADER_TYPE = 0x0E
PCI_BASE_ADDRESS_0 = 0x10
PCI_SUBSYSTEM_VENDOR_ID = 0x2C
PCI_SUBSYSTEM_ID = 0x2E
PCI_ROM_ADDRESS = 0x30
PCI_CAPABILITY_LIST = 0x34
PCI_INTERRUPT_LINE = 0x3C
PCI_INTERRUPT_PIN = 0x3D
PCI_CONFIG_HEADER_SIZE = 0x40
PCI_CONFIG_SPACE_SIZE = 0x100
PCIE_CONFIG_SPACE_SIZE = 0x1000

PCI_COMMAND_IO = 0x1
PCI_COMMAND_MEMORY = 0x2
PCI_COMMAND_MASTER = 0x4
PCI_COMMAND_SERR = 0x100
PCI_COMMAND_INTX_DISABLE = 0x400

PCI_STATUS_INTERRUPT = 0x08
PCI_STATUS_CAP_LIST = 0x10
PCI_STATUS_W1C = 0x0100 | 0x0800 | 0x1000 | 0x2000 | 0x4000 | 0x8000
"""Master data parity error, target/master aborts, system error, detected parity error."""

PCI_HEADER_TYPE_MULTI_FUNCTION = 0x80

PCI_BASE_ADDRESS_SPACE_IO = 0x1
PCI_BASE_ADDRESS_MEM_TYPE_64 = 0x4
PCI_BASE_ADDRESS_MEM_PREFETCH = 0x8
PCI_NUM_BARS = 6

PCI_VENDOR_ID_REDHAT_QUMRANET = 0x1AF4
PCI_SUBDEVICE_ID_QEMU = 0x1100

PCI_SLOT_MAX = 32
PCI_FUNC_MAX = 8

_U32 = 0xFFFFFFFF
_U64 = (1 << 64) - 1


def pci_slot(devfn: int) -> int:
    return devfn >> 3


def pci_func(devfn: int) -> int:
    return devfn & 7


class BarRegion(Protocol):
    """What a BAR maps: a window decoded by offset, like a device on the system bus."""

    @property
    def access_sizes(self) -> tuple[int, ...]: ...

    def mmio_read(self, offset: int, size: int) -> int: ...

    def mmio_write(self, offset: int, size: int, value: int) -> None: ...


@dataclass
class PciBar:
    """One BAR: its number, size (a power of two), type bits and what it maps."""

    index: int
    size: int
    type: int
    region: BarRegion
    addr: int | None = None
    """Where it is mapped now (bus address), or None."""

    @property
    def is_io(self) -> bool:
        return bool(self.type & PCI_BASE_ADDRESS_SPACE_IO)

    @property
    def is_64(self) -> bool:
        return not self.is_io and bool(self.type & PCI_BASE_ADDRESS_MEM_TYPE_64)

    @property
    def prefetchable(self) -> bool:
        return not self.is_io and bool(self.type & PCI_BASE_ADDRESS_MEM_PREFETCH)


_HEX = r"\s*([+-]?)(?:0[xX])?([0-9a-fA-F]+)"
_ADDR_RE = re.compile(_HEX + r"(?:\." + _HEX + r")?")


def _scan_hex(sign: str, digits: str) -> int:
    """C's ``%x``: a minus sign wraps the value around 32 bits."""
    value = int(digits, 16)
    return (-value) & 0xFFFFFFFF if sign == "-" else value


class PciAddrProperty(Property[int]):
    """``addr=SLOT[.FN]`` as QEMU's ``PCI_DEVFN`` property reads it (C's ``%x.%x``: hex
    slot 0-1f, function 0-7); -1 means "the first free slot"."""

    def parse(self, text: str) -> Any:
        match = _ADDR_RE.fullmatch(text)
        if match is None:
            raise InvalidPropertyValue(text)
        slot = _scan_hex(match.group(1), match.group(2))
        fn = _scan_hex(match.group(3), match.group(4)) if match.group(4) else 0
        if slot >= PCI_SLOT_MAX or fn >= PCI_FUNC_MAX:
            raise InvalidPropertyValue(text)
        return slot << 3 | fn


@dataclass
class PciState:
    """Everything the guest changed: the configuration bytes, the INTx pin's level and
    whether the slot powers the function."""

    config: bytes = b""
    irq_level: bool = False
    has_power: bool = True


@register_type("pci-device", "device", abstract=True, description="PCI device")
class PciDevice(Device):
    """Base of PCI functions.  Subclasses set the identity class attributes and add BARs and
    capabilities in ``__init__`` (after calling ``super().__init__()``)."""

    bus_type = "PCI"
    vendor_id: ClassVar[int] = 0
    device_id: ClassVar[int] = 0
    revision: ClassVar[int] = 0
    class_id: ClassVar[int] = 0
    """Base class and subclass (``0x0100`` SCSI controller); the prog-if byte is 0."""
    subsystem_vendor_id: ClassVar[int] = PCI_VENDOR_ID_REDHAT_QUMRANET
    subsystem_id: ClassVar[int] = PCI_SUBDEVICE_ID_QEMU
    is_bridge: ClassVar[bool] = False
    """A type 1 header (QEMU's ``PCIDeviceClass.is_bridge``): no subsystem IDs at 0x2c."""

    addr = PciAddrProperty(int, -1, "Slot and optional function number, example: 06.0 or 06")
    multifunction = Property(bool, False, "on/off")
    romfile = Property(str, "", "")
    rombar = Property(int, 1, "")

    def __init__(self, express: bool = False) -> None:
        """``express``: a PCI Express function, with a 4 KiB configuration space."""
        self.devfn = -1
        self.id = ""
        """The ``-device ...,id=`` name (shown by ``info pci``)."""
        self.config_size = PCIE_CONFIG_SPACE_SIZE if express else PCI_CONFIG_SPACE_SIZE
        """Bytes of configuration space: 256, or 4096 for a PCI Express function."""
        self.exp_cap = 0
        """Offset of the PCI Express capability (0: none)."""
        self.has_power = True
        """Off while the slot above has its power turned off (QEMU's ``has_power``): the
        function then answers no configuration cycle, decodes nothing and masters nothing."""
        size = self.config_size
        self.config = bytearray(size)
        self.wmask = bytearray(size)
        self.w1cmask = bytearray(size)
        self._used = bytearray(size)
        self.bars: dict[int, PciBar] = {}
        self.irq_level = False
        self.on_irq: Callable[[bool], None] = lambda level: None
        """Set by the bus: the INTx pin's level as the bus should see it."""
        self.on_mapping: Callable[[], None] = lambda: None
        """Set by the bus: a BAR was mapped, moved or unmapped."""
        self.allow_0_address = False
        """Set by the bus: whether a BAR at bus address 0 decodes (the machine's
        ``pci_allow_0_address``)."""
        self._init_header()

    # -- building the header --------------------------------------------------------------------

    def _init_header(self) -> None:
        c = self.config
        c[PCI_VENDOR_ID:PCI_VENDOR_ID + 2] = self.vendor_id.to_bytes(2, "little")
        c[PCI_DEVICE_ID:PCI_DEVICE_ID + 2] = self.device_id.to_bytes(2, "little")
        c[PCI_REVISION_ID] = self.revision
        c[PCI_CLASS_DEVICE:PCI_CLASS_DEVICE + 2] = self.class_id.to_bytes(2, "little")
        if not self.is_bridge:
            c[PCI_SUBSYSTEM_VENDOR_ID:PCI_SUBSYSTEM_VENDOR_ID + 2] = \
                self.subsystem_vendor_id.to_bytes(2, "little")
            c[PCI_SUBSYSTEM_ID:PCI_SUBSYSTEM_ID + 2] = self.subsystem_id.to_bytes(2, "little")
        if self.multifunction:
            c[PCI_HEADER_TYPE] |= PCI_HEADER_TYPE_MULTI_FUNCTION
        # QEMU's pci_init_wmask / pci_init_w1cmask.
        self.wmask[PCI_CACHE_LINE_SIZE] = 0xFF
        self.wmask[PCI_INTERRUPT_LINE] = 0xFF
        self._set(self.wmask, PCI_COMMAND, 2, PCI_COMMAND_IO | PCI_COMMAND_MEMORY |
                  PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE | PCI_COMMAND_SERR)
        self.wmask[PCI_CONFIG_HEADER_SIZE:] = b"\xff" * (self.config_size -
                                                         PCI_CONFIG_HEADER_SIZE)
        self._set(self.w1cmask, PCI_STATUS, 2, PCI_STATUS_W1C)
        self._used[:PCI_CONFIG_HEADER_SIZE] = b"\xff" * PCI_CONFIG_HEADER_SIZE

    @staticmethod
    def _set(buf: bytearray, offset: int, size: int, value: int) -> None:
        buf[offset:offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    @staticmethod
    def _get(buf: bytearray | bytes, offset: int, size: int) -> int:
        return int.from_bytes(buf[offset:offset + size], "little")

    def set_config(self, offset: int, size: int, value: int) -> None:
        """Set device-owned config bytes (identity, capability contents)."""
        self._set(self.config, offset, size, value)

    def get_config(self, offset: int, size: int) -> int:
        return self._get(self.config, offset, size)

    def register_bar(self, index: int, size: int, type_: int, region: BarRegion) -> PciBar:
        """QEMU's ``pci_register_bar``: the size must be a power of two (I/O at least 4,
        memory at least 16 bytes); the low type bits are read-only."""
        if size & (size - 1) or size < (4 if type_ & PCI_BASE_ADDRESS_SPACE_IO else 16):
            raise ValueError(f"BAR{index} size 0x{size:x} is not a valid BAR size")
        bar = PciBar(index, size, type_, region)
        self.bars[index] = bar
        offset = PCI_BASE_ADDRESS_0 + 4 * index
        mask = ~(size - 1)
        if bar.is_64:
            self._set(self.config, offset, 8, type_)
            self._set(self.wmask, offset, 8, mask & _U64)
        else:
            self._set(self.config, offset, 4, type_)
            self._set(self.wmask, offset, 4, mask & _U32)
        return bar

    def _find_space(self, size: int) -> int:
        start = PCI_CONFIG_HEADER_SIZE
        for i in range(PCI_CONFIG_HEADER_SIZE, PCI_CONFIG_SPACE_SIZE):
            if self._used[i]:
                start = i + 1
            elif i - start + 1 == size:
                return start
        raise ValueError(f"no room for a {size}-byte capability")

    def add_capability(self, cap_id: int, size: int) -> int:
        """QEMU's ``pci_add_capability`` with offset 0: the first free bytes from 0x40, put
        at the head of the list, read-only.  Returns the offset."""
        offset = self._find_space(size)
        c = self.config
        c[offset] = cap_id
        c[offset + 1] = c[PCI_CAPABILITY_LIST]
        c[PCI_CAPABILITY_LIST] = offset
        c[PCI_STATUS] |= PCI_STATUS_CAP_LIST
        aligned = (size + 3) & ~3
        self._used[offset:offset + aligned] = b"\xff" * aligned
        self.wmask[offset:offset + size] = bytes(size)
        return offset

    @property
    def express(self) -> bool:
        return self.config_size == PCIE_CONFIG_SPACE_SIZE

    def realize(self, bus: PciBus) -> None:
        """Called by ``bus`` once the function has its ``devfn`` there, before the guest can
        see it (the bus-dependent half of QEMU's realize); raises ConfigError to refuse."""

    # -- configuration access -------------------------------------------------------------------

    def config_read(self, offset: int, size: int) -> int:
        """A configuration read of ``size`` bytes (1, 2, 4) at ``offset``; the caller keeps
        it inside the configuration space."""
        return self._get(self.config, offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        """A configuration write, through the write masks (QEMU's pci_default_write_config)."""
        c, wmask, w1c = self.config, self.wmask, self.w1cmask
        old_command = self._get(c, PCI_COMMAND, 2)
        for i in range(size):
            addr = offset + i
            byte = (value >> (8 * i)) & 0xFF
            c[addr] = (c[addr] & ~wmask[addr]) | (byte & wmask[addr])
            c[addr] &= ~(byte & w1c[addr]) & 0xFF
        end = offset + size
        command = offset < PCI_COMMAND + 2 and end > PCI_COMMAND
        if command or (offset < PCI_BASE_ADDRESS_0 + 4 * PCI_NUM_BARS and
                       end > PCI_BASE_ADDRESS_0):
            self.update_mappings()
        if command:
            changed = old_command ^ self._get(c, PCI_COMMAND, 2)
            if changed & PCI_COMMAND_INTX_DISABLE:
                self._route_irq()

    # -- BAR mapping ----------------------------------------------------------------------------

    def bar_address(self, bar: PciBar) -> int | None:
        """Where ``bar`` decodes now, or None (QEMU's ``pci_bar_address``)."""
        if not self.has_power:
            return None
        command = self._get(self.config, PCI_COMMAND, 2)
        offset = PCI_BASE_ADDRESS_0 + 4 * bar.index
        if bar.is_io:
            if not command & PCI_COMMAND_IO:
                return None
            addr = self._get(self.config, offset, 4) & ~(bar.size - 1) & _U32
            last = addr + bar.size - 1
            return None if (addr == 0 and not self.allow_0_address) or last >= _U32 else addr
        if not command & PCI_COMMAND_MEMORY:
            return None
        raw = self._get(self.config, offset, 8 if bar.is_64 else 4)
        addr = raw & ~(bar.size - 1) & _U64
        last = addr + bar.size - 1
        if (addr == 0 and not self.allow_0_address) or last >= _U64 or \
                (not bar.is_64 and last >= _U32):
            return None
        return addr

    def update_mappings(self) -> None:
        if self._map_bars():
            self.on_mapping()

    def _map_bars(self) -> bool:
        """Place every BAR where the configuration says; True if one moved."""
        moved = False
        for bar in self.bars.values():
            addr = self.bar_address(bar)
            if addr != bar.addr:
                bar.addr = addr
                moved = True
        return moved

    # -- INTx -----------------------------------------------------------------------------------

    @property
    def intx_pin(self) -> int:
        """The interrupt pin (1 = INTA# ... 4 = INTD#; 0 = none)."""
        return self.config[PCI_INTERRUPT_PIN]

    def set_irq(self, level: bool) -> None:
        """The function drives its INTx pin (QEMU's pci_set_irq): the status bit follows the
        pin; the bus sees it unless the command register disables INTx."""
        level = bool(level)
        if level == self.irq_level:
            return
        self.irq_level = level
        if level:
            self.config[PCI_STATUS] |= PCI_STATUS_INTERRUPT
        else:
            self.config[PCI_STATUS] &= ~PCI_STATUS_INTERRUPT & 0xFF
        self._route_irq()

    def _route_irq(self) -> None:
        disabled = self._get(self.config, PCI_COMMAND, 2) & PCI_COMMAND_INTX_DISABLE
        self.on_irq(self.irq_level and not disabled)

    @property
    def bus_master(self) -> bool:
        return self.has_power and bool(self._get(self.config, PCI_COMMAND, 2) &
                                       PCI_COMMAND_MASTER)

    def set_power(self, on: bool) -> None:
        """The slot's power controller switched (QEMU's pci_set_power): unpowered, the
        function decodes nothing and is reset."""
        if on == self.has_power:
            return
        self.has_power = on
        self.update_mappings()
        if not on:
            self.reset()

    # -- reset and state ------------------------------------------------------------------------

    def reset(self) -> None:
        """QEMU's pci_do_device_reset: command and status bits the guest set are cleared,
        cache line size and interrupt line zeroed, BARs back to their type bits."""
        c = self.config
        command = self._get(c, PCI_COMMAND, 2) & ~self._get(self.wmask, PCI_COMMAND, 2)
        self._set(c, PCI_COMMAND, 2, command)
        status = self._get(c, PCI_STATUS, 2) & ~self._get(self.w1cmask, PCI_STATUS, 2)
        self._set(c, PCI_STATUS, 2, status)
        c[PCI_CACHE_LINE_SIZE] = 0
        c[PCI_INTERRUPT_LINE] = 0
        for bar in self.bars.values():
            self._set(c, PCI_BASE_ADDRESS_0 + 4 * bar.index, 8 if bar.is_64 else 4, bar.type)
        self.set_irq(False)
        self.update_mappings()

    def get_state(self) -> dict[str, Any]:
        return {"config": bytes(self.config), "irq_level": self.irq_level,
                "has_power": self.has_power}

    def prepare_state(self, state: dict[str, Any]) -> Applier:
        """Check ``state`` completely (VmStateError); the function returned assigns it."""
        return self.prepare_pci_state(StateReader(state, self.describe()))

    def prepare_pci_state(self, r: StateReader) -> Applier:
        """The configuration space (BAR addresses, command register, capabilities, bridge
        windows: everything the guest wrote), the INTx level and the slot's power.  The
        function's identity (vendor, device, class, header type) must be this one's."""
        config = r.blob("config", self.config_size)
        for offset, size, what in ((PCI_VENDOR_ID, 4, "vendor/device ID"),
                                   (PCI_REVISION_ID, 4, "revision/class"),
                                   (PCI_HEADER_TYPE, 1, "header type")):
            saved, mine = self._get(config, offset, size), self._get(self.config, offset, size)
            if saved != mine:
                raise r.fail("config", f"{what} 0x{saved:x}, this function has 0x{mine:x}")
        irq_level, has_power = r.flag("irq_level"), r.flag("has_power")

        def apply() -> None:
            self.config[:] = config
            self.irq_level = irq_level
            self.has_power = has_power
            self.update_mappings()
            self._route_irq()
        return apply

    def set_state(self, state: dict[str, Any]) -> None:
        self.prepare_state(state)()

    def describe(self) -> str:
        """``TYPE,id="ID"`` as QEMU names a device in its PCI messages."""
        return f"{self.type_name},id={self.id or '(null)'}"

