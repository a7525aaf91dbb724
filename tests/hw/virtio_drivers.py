"""Test drivers for the virtio transports, doing what Linux's drivers do, over the MMIO bus.

:class:`VirtioPciTestDriver` enumerates a function through ECAM the way Linux's PCI core
and virtio_pci driver do (size and place the BARs, enable decoding and bus mastering, walk
the vendor capabilities) and then drives either the modern interface (BAR4 through the
capabilities) or the legacy one (the I/O BAR), with the ring handling of
:class:`VirtioTestDriver`.  :func:`make_transport` puts a device behind any of the four
transports for tests that must hold on every one.
"""

from __future__ import annotations

from typing import Any

from kvmpy.hw.pci.gpex import GpexHost
from kvmpy.memory import GuestRAM, MmioBus

from .conftest import FakeIrq, VirtioTestDriver

ECAM, PIO, MMIO = 0x30000000, 0x3000000, 0x40000000
MMIO_BASE = 0x10001000
TRANSPORTS = ("mmio-legacy", "mmio-modern", "pci-legacy", "pci-modern")

# Where the driver places the function's BARs.
IO_BAR_ADDR, MSIX_BAR_ADDR, MODERN_BAR_ADDR = 0x1000, 0x40000000, 0x40100000


def host_bus(host: GpexHost) -> MmioBus:
    """The host bridge's windows on a bus, as the virt board maps them."""
    bus = MmioBus()
    bus.add(ECAM, 0x10000000, host.ecam)
    bus.add(PIO, 0x10000, host.io_window())
    bus.add(MMIO, 0x40000000, host.mmio_window(MMIO, "pcie-mmio"))
    return bus


class VirtioPciTestDriver(VirtioTestDriver):
    """virtio_pci_modern / virtio_pci_legacy against function ``devfn`` of bus 0."""

    def __init__(self, bus: Any, ram: GuestRAM, devfn: int, legacy: bool,
                 num: int = 16) -> None:
        super().__init__(bus, ram, 0, legacy, num)
        self.cfg = ECAM + (devfn << 12)
        self.caps: dict[int, tuple[int, int, int]] = {}
        self.notify_mult = 0
        self.enumerate()

    # -- configuration space --------------------------------------------------------------------

    def cfg_read(self, offset: int, size: int = 4) -> int:
        return int(self.bus.read(self.cfg + offset, size))

    def cfg_write(self, offset: int, value: int, size: int = 4) -> None:
        self.bus.write(self.cfg + offset, size, value)

    def bar_size(self, index: int) -> int:
        """Size a BAR the way the PCI core does (all ones, read back, restore)."""
        offset = 0x10 + 4 * index
        old = self.cfg_read(offset)
        self.cfg_write(offset, 0xFFFFFFFF)
        mask = self.cfg_read(offset)
        self.cfg_write(offset, old)
        mask &= ~0x3 if old & 1 else ~0xF
        high = 0
        if not old & 1 and old & 0x4:  # 64-bit: the upper half too
            self.cfg_write(offset + 4, 0xFFFFFFFF)
            high = self.cfg_read(offset + 4)
            self.cfg_write(offset + 4, 0)
        full = (high << 32 | (mask & 0xFFFFFFFF)) if high else mask & 0xFFFFFFFF
        width = 64 if high else 32
        return (~full + 1) & ((1 << width) - 1)

    def enumerate(self) -> None:
        for index, addr in ((0, IO_BAR_ADDR), (1, MSIX_BAR_ADDR), (4, MODERN_BAR_ADDR)):
            offset = 0x10 + 4 * index
            if self.cfg_read(offset) or self.bar_size(index):
                self.cfg_write(offset, addr | (self.cfg_read(offset) & 0xF))
        self.cfg_write(0x04, 0x7, 2)  # I/O, memory, bus master
        ptr = self.cfg_read(0x34, 1)
        while ptr:
            cap_id, nxt = self.cfg_read(ptr, 1), self.cfg_read(ptr + 1, 1)
            if cap_id == 0x09:
                cfg_type, bar = self.cfg_read(ptr + 3, 1), self.cfg_read(ptr + 4, 1)
                self.caps[cfg_type] = (bar, self.cfg_read(ptr + 8), self.cfg_read(ptr + 12))
                if cfg_type == 2:
                    self.notify_mult = self.cfg_read(ptr + 16)
            ptr = nxt

    def _region(self, cfg_type: int) -> int:
        bar, offset, _ = self.caps[cfg_type]
        assert bar == 4
        return MODERN_BAR_ADDR + offset

    # -- the register accessors the ring code and tests use --------------------------------------

    def io(self, offset: int, size: int) -> int:
        return int(self.bus.read(PIO + IO_BAR_ADDR + offset, size))

    def io_write(self, offset: int, size: int, value: int) -> None:
        self.bus.write(PIO + IO_BAR_ADDR + offset, size, value)

    def common(self, offset: int, size: int) -> int:
        return int(self.bus.read(self._region(1) + offset, size))

    def common_write(self, offset: int, size: int, value: int) -> None:
        self.bus.write(self._region(1) + offset, size, value)

    def status(self) -> int:
        return self.io(18, 1) if self.legacy else self.common(0x14, 1)

    def set_status(self, value: int) -> None:
        if self.legacy:
            self.io_write(18, 1, value)
        else:
            self.common_write(0x14, 1, value)

    def isr(self) -> int:
        return self.io(19, 1) if self.legacy else int(self.bus.read(self._region(3), 1))

    def config_read(self, offset: int, size: int) -> int:
        if self.legacy:
            return self.io(20 + offset, size)
        return int(self.bus.read(self._region(4) + offset, size))

    def config_write(self, offset: int, size: int, value: int) -> None:
        if self.legacy:
            self.io_write(20 + offset, size, value)
        else:
            self.bus.write(self._region(4) + offset, size, value)

    def notify(self, queue: int) -> None:
        if self.legacy:
            self.io_write(16, 2, queue)
        else:
            off = self.queues[queue]["notify_off"]
            self.bus.write(self._region(2) + off * self.notify_mult, 2, queue)

    def reset(self) -> None:
        self.set_status(0)

    # -- probing --------------------------------------------------------------------------------

    def probe(self, features: int | None = None, queues: int = 1) -> int:
        self.set_status(0)
        self.set_status(1)
        self.set_status(3)
        if self.legacy:
            offered = self.io(0, 4)
            # Never VIRTIO_F_BAD_FEATURE (bit 30): offered only to catch drivers that accept
            # everything.
            wanted = offered & ~(1 << 30) if features is None else features
            self.io_write(4, 4, wanted & 0xFFFFFFFF)
        else:
            self.common_write(0x00, 4, 0)
            offered = self.common(0x04, 4)
            self.common_write(0x00, 4, 1)
            offered |= self.common(0x04, 4) << 32
            wanted = offered if features is None else features
            for half in (0, 1):
                self.common_write(0x08, 4, half)
                self.common_write(0x0C, 4, wanted >> (32 * half) & 0xFFFFFFFF)
            self.set_status(0xB)
            assert self.status() & 8
        for index in range(queues):
            self.setup_queue(index)
        self.set_status(self.status() | 4)
        return offered

    def setup_queue(self, index: int) -> None:
        if self.legacy:
            self.io_write(14, 2, index)
            num = self.io(12, 2)
            desc = self._pages(-(-(16 * num + 2 * (3 + num)) // 4096) + 1 +
                               -(-(4 + 8 * num) // 4096))
            avail = desc + 16 * num
            used = (avail + 2 * (3 + num) + 4095) & ~4095
            self.io_write(8, 4, desc >> 12)
            notify_off = index
        else:
            num = self.num
            self.common_write(0x16, 2, index)
            assert self.common(0x18, 2) > 0
            self.common_write(0x18, 2, num)
            desc = self._pages(3)
            avail, used = desc + 4096, desc + 8192
            for reg, addr in ((0x20, desc), (0x28, avail), (0x30, used)):
                self.common_write(reg, 4, addr & 0xFFFFFFFF)
                self.common_write(reg + 4, 4, addr >> 32)
            notify_off = self.common(0x1E, 2)
            self.common_write(0x1C, 2, 1)
        self.queues[index] = {"desc": desc, "avail": avail, "used": used, "next": 0,
                              "avail_idx": 0, "seen": 0, "num": num, "notify_off": notify_off}


class MmioDriver(VirtioTestDriver):
    """VirtioTestDriver with the accessors the transport-independent tests use."""

    def status(self) -> int:
        return self.r(0x70)

    def set_status(self, value: int) -> None:
        self.w(0x70, value)

    def isr(self) -> int:
        value = self.r(0x60)
        self.w(0x64, value)  # the mmio driver acknowledges what it read
        return value

    def config_read(self, offset: int, size: int) -> int:
        return int(self.bus.read(self.base + 0x100 + offset, size))

    def config_write(self, offset: int, size: int, value: int) -> None:
        self.bus.write(self.base + 0x100 + offset, size, value)

    def reset(self) -> None:
        self.w(0x70, 0)


def make_transport(kind: str, ram: GuestRAM, device: Any) -> tuple[Any, Any, FakeIrq]:
    """(transport, driver, interrupt line) for ``device`` behind transport ``kind``."""
    legacy = kind.endswith("legacy")
    if kind.startswith("mmio"):
        from kvmpy.hw.virtio import VirtioMmio

        irq = FakeIrq(8)
        transport = VirtioMmio(irq, ram=ram, device=device, force_legacy=legacy)
        bus = MmioBus()
        bus.add(MMIO_BASE, transport.region_size, transport)
        return transport, MmioDriver(bus, ram, MMIO_BASE, legacy), irq
    lines = [FakeIrq(32 + i) for i in range(4)]
    host = GpexHost(lines)
    proxy = _proxy_for(device, ram)
    host.bus.plug(proxy, 1 << 3)
    driver = VirtioPciTestDriver(host_bus(host), ram, 1 << 3, legacy)
    return proxy, driver, lines[(0 + 1) % 4]  # INTA of slot 1 is bus line 1


def _proxy_for(device: Any, ram: GuestRAM) -> Any:
    """A virtio-pci proxy carrying an already built ``device``."""
    import kvmpy.hw.pci.virtio_pci  # noqa: F401  (registers the virtio-*-pci types)
    from kvmpy import qom

    for info in qom.object_class_get_list("virtio-pci"):
        cls = info.cls
        if not info.name.endswith("transitional") and \
                isinstance(device, cls._inner_class()):
            return cls(ram=ram, device=device)
    raise AssertionError(f"no virtio-pci type carries {type(device).__name__}")

