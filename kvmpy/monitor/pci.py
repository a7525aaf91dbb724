"""QMP ``query-pci`` and HMP ``info pci``, as QEMU 7.2 builds and prints them.

``query-pci`` follows hw/pci/pci.c ``qmp_query_pci``: one entry per host bridge's root bus,
one ``PciDeviceInfo`` (qapi/pci.json) per function, read from its configuration space: class
and IDs, the interrupt pin and line, the subsystem IDs of a type 0 (or CardBus) header, the
windows of a PCI-PCI bridge and the functions on the bus its secondary bus number finds, and
every BAR with its current bus address (all ones while it is unmapped, QEMU's
``PCI_BAR_UNMAPPED``).  ``info pci`` prints that data as
monitor/hmp-cmds.c ``hmp_info_pci`` does.  A machine without PCI has no host bridge: the list
is empty and ``info pci`` prints nothing, as QEMU's ``-M spike``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kvmpy.hw.pci.bridge import (
    PCI_IO_BASE,
    PCI_IO_BASE_UPPER16,
    PCI_IO_LIMIT,
    PCI_IO_LIMIT_UPPER16,
    PCI_MEMORY_BASE,
    PCI_MEMORY_LIMIT,
    PCI_PREF_BASE_UPPER32,
    PCI_PREF_LIMIT_UPPER32,
    PCI_PREF_MEMORY_BASE,
    PCI_PREF_MEMORY_LIMIT,
    PCI_PRIMARY_BUS,
    PCI_SECONDARY_BUS,
    PCI_SUBORDINATE_BUS,
)
from kvmpy.hw.pci.bus import PciBus
from kvmpy.hw.pci.device import (
    PCI_CLASS_DEVICE,
    PCI_DEVICE_ID,
    PCI_HEADER_TYPE,
    PCI_HEADER_TYPE_MULTI_FUNCTION,
    PCI_INTERRUPT_LINE,
    PCI_INTERRUPT_PIN,
    PCI_SUBSYSTEM_ID,
    PCI_SUBSYSTEM_VENDOR_ID,
    PCI_VENDOR_ID,
    PciBar,
    PciDevice,
    pci_func,
    pci_slot,
)
from kvmpy.hw.pci.gpex import GpexHost
from kvmpy.monitor.qobject import qdict_order

if TYPE_CHECKING:
    from kvmpy.system import System

# Header types and the type 1 (bridge) and type 2 (CardBus) registers (PCI-to-PCI bridge
# spec 1.2 §3.2; linux/pci_regs.h).
PCI_HEADER_TYPE_NORMAL = 0
PCI_HEADER_TYPE_BRIDGE = 1
PCI_HEADER_TYPE_CARDBUS = 2
PCI_CB_SUBSYSTEM_VENDOR_ID = 0x40
PCI_CB_SUBSYSTEM_ID = 0x42

PCI_BAR_UNMAPPED = (1 << 64) - 1
_U64 = (1 << 64) - 1

PCI_CLASS_DESCRIPTIONS = {
    0x0001: "VGA controller",
    0x0100: "SCSI controller",
    0x0101: "IDE controller",
    0x0102: "Floppy controller",
    0x0103: "IPI controller",
    0x0104: "RAID controller",
    0x0106: "SATA controller",
    0x0107: "SAS controller",
    0x0180: "Storage controller",
    0x0200: "Ethernet controller",
    0x0201: "Token Ring controller",
    0x0202: "FDDI controller",
    0x0203: "ATM controller",
    0x0280: "Network controller",
    0x0300: "VGA controller",
    0x0301: "XGA controller",
    0x0302: "3D controller",
    0x0380: "Display controller",
    0x0400: "Video controller",
    0x0401: "Audio controller",
    0x0402: "Phone",
    0x0403: "Audio controller",
    0x0480: "Multimedia controller",
    0x0500: "RAM controller",
    0x0501: "Flash controller",
    0x0580: "Memory controller",
    0x0600: "Host bridge",
    0x0601: "ISA bridge",
    0x0602: "EISA bridge",
    0x0603: "MC bridge",
    0x0604: "PCI bridge",
    0x0605: "PCMCIA bridge",
    0x0606: "NUBUS bridge",
    0x0607: "CARDBUS bridge",
    0x0608: "RACEWAY bridge",
    0x0680: "Bridge",
    0x0700: "Serial port",
    0x0701: "Parallel port",
    0x0800: "Interrupt controller",
    0x0801: "DMA controller",
    0x0802: "Timer",
    0x0803: "RTC",
    0x0900: "Keyboard",
    0x0901: "Pen",
    0x0902: "Mouse",
    0x0A00: "Dock station",
    0x0B00: "i386 cpu",
    0x0C00: "Firewire controller",
    0x0C01: "Access bus controller",
    0x0C02: "SSA controller",
    0x0C03: "USB controller",
    0x0C04: "Fibre channel controller",
    0x0C05: "SMBus",
}
"""hw/pci/pci.c ``pci_class_descriptions``: base class and subclass -> name."""


def host_buses(system: System) -> list[PciBus]:
    """The root buses of the machine's PCI host bridges (none on a board without PCI)."""
    devices = getattr(system.machine, "devices", None)
    if not isinstance(devices, dict):
        return []
    return [host.bus for host in devices.values() if isinstance(host, GpexHost)]


# -- query-pci --------------------------------------------------------------------------------

def query_pci(system: System) -> list[dict[str, Any]]:
    """``query-pci``: a ``PciInfo`` per root bus (bus number 0 for each, as gpex's), keys in
    QEMU's wire order."""
    with system.lock:  # a consistent snapshot while vCPUs may write configuration space
        info = [{"bus": 0, "devices": _bus_devices(bus, 0)} for bus in host_buses(system)]
    result: list[dict[str, Any]] = qdict_order(info)
    return result


def _word(device: PciDevice, offset: int) -> int:
    return device.get_config(offset, 2)


def _bus_devices(bus: PciBus, bus_number: int) -> list[dict[str, Any]]:
    """qmp_query_pci_devices: the functions of ``bus``, reported as bus ``bus_number``."""
    return [_device_info(device, bus, bus_number) for _, device in sorted(bus.devices.items())]


def _device_info(device: PciDevice, bus: PciBus, bus_number: int) -> dict[str, Any]:
    """qmp_query_pci_device; members in qapi/pci.json's order (``qdict_order`` sorts them)."""
    config = device.config
    class_id = _word(device, PCI_CLASS_DEVICE)
    class_info: dict[str, Any] = {}
    if class_id in PCI_CLASS_DESCRIPTIONS:
        class_info["desc"] = PCI_CLASS_DESCRIPTIONS[class_id]
    class_info["class"] = class_id
    ids: dict[str, Any] = {"device": _word(device, PCI_DEVICE_ID),
                           "vendor": _word(device, PCI_VENDOR_ID)}
    header_type = config[PCI_HEADER_TYPE] & ~PCI_HEADER_TYPE_MULTI_FUNCTION
    if header_type == PCI_HEADER_TYPE_NORMAL:
        ids["subsystem"] = _word(device, PCI_SUBSYSTEM_ID)
        ids["subsystem-vendor"] = _word(device, PCI_SUBSYSTEM_VENDOR_ID)
    elif header_type == PCI_HEADER_TYPE_CARDBUS:
        ids["subsystem"] = _word(device, PCI_CB_SUBSYSTEM_ID)
        ids["subsystem-vendor"] = _word(device, PCI_CB_SUBSYSTEM_VENDOR_ID)
    info: dict[str, Any] = {"bus": bus_number, "slot": pci_slot(device.devfn),
                            "function": pci_func(device.devfn), "class_info": class_info,
                            "id": ids}
    pin = config[PCI_INTERRUPT_PIN]
    if pin:
        info["irq"] = config[PCI_INTERRUPT_LINE]
    info["irq_pin"] = pin
    info["qdev_id"] = device.id
    if header_type == PCI_HEADER_TYPE_BRIDGE:
        info["pci_bridge"] = _bridge_info(device, bus)
    info["regions"] = [_region(bar) for _, bar in sorted(device.bars.items())]
    return info


def _region(bar: PciBar) -> dict[str, Any]:
    """qmp_query_pci_regions: the address is QAPI's int64, so an unmapped BAR reads -1."""
    address = PCI_BAR_UNMAPPED if bar.addr is None else bar.addr
    region: dict[str, Any] = {"bar": bar.index, "type": "io" if bar.is_io else "memory",
                              "address": _int64(address), "size": bar.size}
    if not bar.is_io:
        region["prefetch"] = bar.prefetchable
        region["mem_type_64"] = bar.is_64
    return region


def _bridge_info(device: PciDevice, bus: PciBus) -> dict[str, Any]:
    """qmp_query_pci_bridge: ``devices`` are those of the bus the secondary bus number finds
    from the bridge's own bus, left out while that number is 0 or finds none."""
    config = device.config
    secondary = config[PCI_SECONDARY_BUS]
    info: dict[str, Any] = {"bus": {
        "number": config[PCI_PRIMARY_BUS], "secondary": secondary,
        "subordinate": config[PCI_SUBORDINATE_BUS],
        "io_range": _range(*_io_window(device)),
        "memory_range": _range(*_memory_window(device)),
        "prefetchable_range": _range(*_prefetchable_window(device))}}
    child = bus.find_bus_nr(secondary) if secondary else None
    if child is not None:
        info["devices"] = _bus_devices(child, secondary)
    return info


def _range(base: int, limit: int) -> dict[str, Any]:
    return {"base": _int64(base), "limit": _int64(limit)}


def _int64(value: int) -> int:
    """A 64-bit bus address as QAPI's ``int`` (int64) carries it."""
    return value - (1 << 64) if value >> 63 else value


def _io_window(device: PciDevice) -> tuple[int, int]:
    """hw/pci/pci_bridge.c pci_bridge_get_base/limit for I/O (PCI-PCI bridge spec §3.2.5.6)."""
    def read(low: int, upper16: int) -> int:
        value = (device.config[low] & 0xF0) << 8
        if device.config[low] & 0x01:  # PCI_IO_RANGE_TYPE_32
            value |= _word(device, upper16) << 16
        return value

    base = read(PCI_IO_BASE, PCI_IO_BASE_UPPER16)
    return base, read(PCI_IO_LIMIT, PCI_IO_LIMIT_UPPER16) | 0xFFF


def _memory_window(device: PciDevice) -> tuple[int, int]:
    base = (_word(device, PCI_MEMORY_BASE) & 0xFFF0) << 16
    limit = (_word(device, PCI_MEMORY_LIMIT) & 0xFFF0) << 16
    return base, limit | 0xFFFFF


def _prefetchable_window(device: PciDevice) -> tuple[int, int]:
    def read(low: int, upper32: int) -> int:
        word = _word(device, low)
        value = (word & 0xFFF0) << 16
        if word & 0x01:  # PCI_PREF_RANGE_TYPE_64
            value |= device.get_config(upper32, 4) << 32
        return value

    base = read(PCI_PREF_MEMORY_BASE, PCI_PREF_BASE_UPPER32)
    limit = read(PCI_PREF_MEMORY_LIMIT, PCI_PREF_LIMIT_UPPER32) | 0xFFFFF
    return base, limit


# -- info pci ---------------------------------------------------------------------------------

def info_pci(system: System) -> str:
    """``info pci``: hmp_info_pci's text for ``query-pci``'s data (no trailing newline)."""
    lines: list[str] = []
    for bus in query_pci(system):
        for device in bus["devices"]:
            lines += format_device(device)
    return "\n".join(lines)


def format_device(dev: dict[str, Any]) -> list[str]:
    """hmp_info_pci_device: the lines for one ``PciDeviceInfo`` (and a bridge's children)."""
    class_info, ids = dev["class_info"], dev["id"]
    name = class_info.get("desc", f"Class {class_info['class']:04d}")
    lines = [f"  Bus {dev['bus']:2d}, device {dev['slot']:3d}, function {dev['function']}:",
             f"    {name}: PCI device {ids['vendor']:04x}:{ids['device']:04x}"]
    if "subsystem-vendor" in ids and "subsystem" in ids:
        lines.append(f"      PCI subsystem {ids['subsystem-vendor']:04x}:"
                     f"{ids['subsystem']:04x}")
    if "irq" in dev:
        pin = chr((ord("A") + dev["irq_pin"] - 1) & 0xFF)  # C's (char) cast
        lines.append(f"      IRQ {dev['irq']}, pin {pin}")
    bridge = dev.get("pci_bridge")
    if bridge is not None:
        lines += _format_bridge(bridge["bus"])
    for region in dev["regions"]:
        lines.append(f"      BAR{region['bar']}: {format_region(region)}")
    lines.append(f"      id \"{dev['qdev_id']}\"")
    if bridge is not None:
        for child in bridge.get("devices", []):
            lines += format_device(child)
    return lines


def format_region(region: dict[str, Any]) -> str:
    """One BAR line after ``BARn: ``; the address is printed unsigned and the bracket holds
    its last byte, wrapping as QEMU's uint64_t arithmetic does for an unmapped BAR."""
    addr = region["address"] & _U64
    last = (addr + region["size"] - 1) & _U64
    if region["type"] == "io":
        return f"I/O at 0x{addr:04x} [0x{last:04x}]."
    bits = 64 if region["mem_type_64"] else 32
    prefetch = " prefetchable" if region["prefetch"] else ""
    return f"{bits} bit{prefetch} memory at 0x{addr:08x} [0x{last:08x}]."


def _format_bridge(bus: dict[str, Any]) -> list[str]:
    def window(name: str, width: int) -> str:
        base, limit = bus[name]["base"] & _U64, bus[name]["limit"] & _U64
        return f"[0x{base:0{width}x}, 0x{limit:0{width}x}]"

    return [f"      BUS {bus['number']}.",
            f"      secondary bus {bus['secondary']}.",
            f"      subordinate bus {bus['subordinate']}.",
            f"      IO range {window('io_range', 4)}",
            f"      memory range {window('memory_range', 8)}",
            f"      prefetchable memory range {window('prefetchable_range', 8)}"]
