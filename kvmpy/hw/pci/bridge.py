"""A PCI-to-PCI bridge: the type 1 header and the bus behind it (QEMU's hw/pci/pci_bridge.c,
PCI-to-PCI Bridge Architecture spec 1.2 §3.2).

- Bus numbers: primary, secondary and subordinate are the guest's to write.  Configuration
  cycles for the secondary bus number reach the bus behind the bridge; numbers up to the
  subordinate one go further down (:meth:`PciBus.find_bus_nr`); a bridge holding its
  secondary bus in reset (bridge control bit 6) forwards none.
- Windows: I/O base/limit (4 KiB granules, 16-bit decode), memory base/limit (1 MiB) and
  prefetchable base/limit with the upper 32 bits (64-bit decode).  With I/O or memory decode
  enabled in the command register the bridge forwards the accesses inside each window to the
  secondary bus, where its functions' BARs decode them; a BAR behind the bridge is reachable
  only through a window.  A window with limit below base is closed.
- Bridge control: the bits QEMU lets the guest write; a 0 -> 1 write of secondary bus reset
  resets every function behind the bridge.  VGA forwarding (bit 3) is writable but no VGA
  device exists here to forward to.
- INTx of the functions behind the bridge goes up through the bridge's slot
  (:class:`PciBus`).
"""

from __future__ import annotations

from typing import ClassVar

from kvmpy.hw.pci.bus import BridgeWindow, PciBus
from kvmpy.hw.pci.device import (
    PCI_COMMAND,
    PCI_COMMAND_IO,
    PCI_COMMAND_MEMORY,
    PCI_HEADER_TYPE,
    PCI_HEADER_TYPE_MULTI_FUNCTION,
    PCI_STATUS,
    PciDevice,
)
from kvmpy.hw.pci.pcie import get, put, set_bits
from kvmpy.qom import register_type

PCI_CLASS_BRIDGE_PCI = 0x0604
PCI_HEADER_TYPE_BRIDGE = 1
PCI_CAP_ID_SSVID = 0x0D
PCI_CAP_ID_VNDR = 0x09

# Type 1 header (PCI-to-PCI Bridge Architecture spec 1.2 §3.2; linux/pci_regs.h names).
PCI_PRIMARY_BUS = 0x18
PCI_SECONDARY_BUS = 0x19
PCI_SUBORDINATE_BUS = 0x1A
PCI_SEC_LATENCY_TIMER = 0x1B
PCI_IO_BASE = 0x1C
PCI_IO_LIMIT = 0x1D
PCI_SEC_STATUS = 0x1E
PCI_MEMORY_BASE = 0x20
PCI_MEMORY_LIMIT = 0x22
PCI_PREF_MEMORY_BASE = 0x24
PCI_PREF_MEMORY_LIMIT = 0x26
PCI_PREF_BASE_UPPER32 = 0x28
PCI_PREF_LIMIT_UPPER32 = 0x2C
PCI_IO_BASE_UPPER16 = 0x30
PCI_IO_LIMIT_UPPER16 = 0x32
PCI_ROM_ADDRESS1 = 0x38
PCI_BRIDGE_CONTROL = 0x3E

PCI_IO_RANGE_TYPE_32 = 0x01
PCI_IO_RANGE_MASK = 0xF0
PCI_MEMORY_RANGE_MASK = 0xFFF0
PCI_PREF_RANGE_TYPE_64 = 0x01
PCI_PREF_RANGE_MASK = 0xFFF0
PCI_STATUS_66MHZ = 0x0020
PCI_STATUS_FAST_BACK = 0x0080

PCI_BRIDGE_CTL_PARITY = 0x001
PCI_BRIDGE_CTL_SERR = 0x002
PCI_BRIDGE_CTL_ISA = 0x004
PCI_BRIDGE_CTL_VGA = 0x008
PCI_BRIDGE_CTL_VGA_16BIT = 0x010
PCI_BRIDGE_CTL_MASTER_ABORT = 0x020
PCI_BRIDGE_CTL_BUS_RESET = 0x040
PCI_BRIDGE_CTL_FAST_BACK = 0x080
PCI_BRIDGE_CTL_DISCARD = 0x100
PCI_BRIDGE_CTL_SEC_DISCARD = 0x200
PCI_BRIDGE_CTL_DISCARD_STATUS = 0x400
PCI_BRIDGE_CTL_DISCARD_SERR = 0x800
PCI_BRIDGE_CTL_WRITABLE = 0xBFF ^ PCI_BRIDGE_CTL_DISCARD_STATUS
"""pci_init_mask_bridge: every defined bit but discard status (write 1 to clear)."""

_U64 = (1 << 64) - 1


def _overlaps(offset: int, size: int, start: int, length: int) -> bool:
    return offset < start + length and start < offset + size


@register_type("base-pci-bridge", "pci-device", abstract=True, description="PCI bridge")
class PciBridge(PciDevice):
    """Base of bridges: the type 1 header masks (QEMU's pci_init_mask_bridge and
    pci_bridge_initfn) and the secondary bus, named by the bridge's ``id`` or else
    ``pcie.N`` (QEMU's automatic bus names) when it is plugged."""

    is_bridge = True
    class_id = PCI_CLASS_BRIDGE_PCI
    category = "Controller/Bridge/Hub devices"
    secondary_bus_type: ClassVar[str] = "pcie"
    """The secondary bus's type name, lowercased as QEMU spells automatic bus names."""

    def __init__(self, express: bool = False) -> None:
        super().__init__(express)
        self.windows: list[BridgeWindow] = []
        """Where the bridge forwards accesses now (the memory windows, then I/O)."""
        self.secondary_bus = PciBus("", bridge=self)
        self._init_type1()

    def _init_type1(self) -> None:
        c, wmask = self.config, self.wmask
        # pci_init_mask_bridge: bus numbers, latency timer, windows, bridge control.
        wmask[PCI_PRIMARY_BUS:PCI_PRIMARY_BUS + 4] = b"\xff" * 4
        wmask[PCI_IO_BASE] = wmask[PCI_IO_LIMIT] = PCI_IO_RANGE_MASK
        for offset in (PCI_MEMORY_BASE, PCI_MEMORY_LIMIT, PCI_PREF_MEMORY_BASE,
                       PCI_PREF_MEMORY_LIMIT):
            put(wmask, offset, 2, PCI_MEMORY_RANGE_MASK)
        wmask[PCI_PREF_BASE_UPPER32:PCI_PREF_BASE_UPPER32 + 8] = b"\xff" * 8
        set_bits(c, PCI_PREF_MEMORY_BASE, 2, PCI_PREF_RANGE_TYPE_64)
        set_bits(c, PCI_PREF_MEMORY_LIMIT, 2, PCI_PREF_RANGE_TYPE_64)
        put(wmask, PCI_BRIDGE_CONTROL, 2, PCI_BRIDGE_CTL_WRITABLE)
        put(self.w1cmask, PCI_BRIDGE_CONTROL, 2, PCI_BRIDGE_CTL_DISCARD_STATUS)
        # pci_bridge_initfn.
        set_bits(c, PCI_STATUS, 2, PCI_STATUS_66MHZ | PCI_STATUS_FAST_BACK)
        c[PCI_HEADER_TYPE] = c[PCI_HEADER_TYPE] & PCI_HEADER_TYPE_MULTI_FUNCTION | \
            PCI_HEADER_TYPE_BRIDGE
        put(c, PCI_SEC_STATUS, 2, PCI_STATUS_66MHZ | PCI_STATUS_FAST_BACK)

    def ssvid_init(self, svid: int, ssid: int) -> int:
        """pci_bridge_ssvid_init: the subsystem IDs a type 1 header has no room for."""
        pos = self.add_capability(PCI_CAP_ID_SSVID, 8)
        put(self.config, pos + 4, 2, svid)
        put(self.config, pos + 6, 2, ssid)
        return pos

    # -- placement ------------------------------------------------------------------------------

    def realize(self, bus: PciBus) -> None:
        name = self.id
        if not name:
            root = bus.root
            name = f"{self.secondary_bus_type}.{root.automatic_ids}"
            root.automatic_ids += 1
        self.secondary_bus.name = name
        bus.attach(self.secondary_bus, self.devfn)

    def secondary_plugged(self, device: PciDevice) -> None:
        """A function was plugged on the secondary bus (QEMU's hot-plug handler's plug)."""

    @property
    def secondary_bus_number(self) -> int:
        return self.config[PCI_SECONDARY_BUS]

    def forwards_bus(self, number: int) -> bool:
        """pci_secondary_bus_in_range: configuration cycles for bus ``number`` go through."""
        c = self.config
        return not get(c, PCI_BRIDGE_CONTROL, 2) & PCI_BRIDGE_CTL_BUS_RESET and \
            c[PCI_SECONDARY_BUS] <= number <= c[PCI_SUBORDINATE_BUS]

    # -- windows --------------------------------------------------------------------------------

    def io_window(self) -> tuple[int, int]:
        """(base, limit) of the I/O window (pci_bridge_get_base/limit)."""
        def read(low: int, upper16: int) -> int:
            value = (self.config[low] & PCI_IO_RANGE_MASK) << 8
            if self.config[low] & PCI_IO_RANGE_TYPE_32:
                value |= get(self.config, upper16, 2) << 16
            return value

        return read(PCI_IO_BASE, PCI_IO_BASE_UPPER16), \
            read(PCI_IO_LIMIT, PCI_IO_LIMIT_UPPER16) | 0xFFF

    def memory_window(self) -> tuple[int, int]:
        base = (get(self.config, PCI_MEMORY_BASE, 2) & PCI_MEMORY_RANGE_MASK) << 16
        limit = (get(self.config, PCI_MEMORY_LIMIT, 2) & PCI_MEMORY_RANGE_MASK) << 16
        return base, limit | 0xFFFFF

    def prefetchable_window(self) -> tuple[int, int]:
        def read(low: int, upper32: int) -> int:
            word = get(self.config, low, 2)
            value = (word & PCI_PREF_RANGE_MASK) << 16
            if word & PCI_PREF_RANGE_TYPE_64:
                value |= get(self.config, upper32, 4) << 32
            return value

        return read(PCI_PREF_MEMORY_BASE, PCI_PREF_BASE_UPPER32), \
            read(PCI_PREF_MEMORY_LIMIT, PCI_PREF_LIMIT_UPPER32) | 0xFFFFF

    def _compute_windows(self) -> list[BridgeWindow]:
        command = get(self.config, PCI_COMMAND, 2)
        sec = self.secondary_bus
        windows = []
        if command & PCI_COMMAND_MEMORY:
            for base, limit in (self.prefetchable_window(), self.memory_window()):
                if limit >= base:
                    windows.append(BridgeWindow(base, (limit + 1 - base) & _U64, sec.memory))
        if command & PCI_COMMAND_IO:
            base, limit = self.io_window()
            if limit >= base:
                windows.append(BridgeWindow(base, limit + 1 - base, sec.io))
        return [window for window in windows if window.size]

    def _map_bars(self) -> bool:
        moved = super()._map_bars()
        windows = self._compute_windows()
        if windows != self.windows:
            self.windows = windows
            moved = True
        return moved

    # -- configuration writes and reset ---------------------------------------------------------

    def config_write(self, offset: int, size: int, value: int) -> None:
        """pci_bridge_write_config: the windows follow the command, base and limit
        registers; a 0 -> 1 secondary bus reset resets the bus behind."""
        old_control = get(self.config, PCI_BRIDGE_CONTROL, 2)
        super().config_write(offset, size, value)
        if (_overlaps(offset, size, PCI_IO_BASE, 2) or
                _overlaps(offset, size, PCI_MEMORY_BASE, 20) or
                _overlaps(offset, size, PCI_BRIDGE_CONTROL, 2)):
            self.update_mappings()
        control = get(self.config, PCI_BRIDGE_CONTROL, 2)
        if ~old_control & control & PCI_BRIDGE_CTL_BUS_RESET:
            self.secondary_bus.reset()

    def reset(self) -> None:
        """pci_do_device_reset, pci_bridge_reset, and every function behind the bridge."""
        super().reset()
        c = self.config
        c[PCI_PRIMARY_BUS:PCI_SEC_LATENCY_TIMER + 1] = bytes(4)
        c[PCI_IO_BASE] &= ~PCI_IO_RANGE_MASK & 0xFF
        c[PCI_IO_LIMIT] &= ~PCI_IO_RANGE_MASK & 0xFF
        for offset in (PCI_MEMORY_BASE, PCI_MEMORY_LIMIT, PCI_PREF_MEMORY_BASE,
                       PCI_PREF_MEMORY_LIMIT):
            put(c, offset, 2, get(c, offset, 2) & ~PCI_MEMORY_RANGE_MASK)
        c[PCI_PREF_BASE_UPPER32:PCI_PREF_LIMIT_UPPER32 + 4] = bytes(8)
        put(c, PCI_BRIDGE_CONTROL, 2, 0)
        self.secondary_bus.reset()
        self.update_mappings()

    def disable_base_limit(self) -> None:
        """pci_bridge_disable_base_limit: every window closed (base above limit)."""
        c = self.config
        c[PCI_IO_BASE] |= PCI_IO_RANGE_MASK
        c[PCI_IO_LIMIT] &= ~PCI_IO_RANGE_MASK & 0xFF
        for base, limit in ((PCI_MEMORY_BASE, PCI_MEMORY_LIMIT),
                            (PCI_PREF_MEMORY_BASE, PCI_PREF_MEMORY_LIMIT)):
            put(c, base, 2, get(c, base, 2) | PCI_MEMORY_RANGE_MASK)
            put(c, limit, 2, get(c, limit, 2) & ~PCI_MEMORY_RANGE_MASK)
        c[PCI_PREF_BASE_UPPER32:PCI_PREF_LIMIT_UPPER32 + 4] = bytes(8)
        self.update_mappings()
