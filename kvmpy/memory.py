"""Guest-physical memory: RAM as one anonymous mmap, and the MMIO bus of device windows.

RAM is shared by everyone that needs it: Python devices see a ``memoryview``, the interpreter
core a pointer (:attr:`GuestRAM.host_address`), KVM the ``userspace_addr`` of a memory slot.
"""

from __future__ import annotations

import bisect
import ctypes
import mmap
import struct

from kvmpy import log
from kvmpy.errors import ConfigError, KvmpyError
from kvmpy.hw.core import MmioDevice

_FORMATS = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}
_MASKS = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFF_FFFF, 8: 0xFFFF_FFFF_FFFF_FFFF}


class GuestMemoryError(KvmpyError):
    """A host-side access (monitor, loader, library) outside guest RAM."""


class GuestRAM:
    """``size`` bytes of guest RAM at guest-physical ``base``, one anonymous private mmap.

    Pages are only backed when touched, so a large ``-m`` costs nothing until used.
    """

    def __init__(self, base: int, size: int, name: str = "ram") -> None:
        if size <= 0 or size % mmap.PAGESIZE:
            raise ConfigError(f"RAM size {size} is not a positive multiple of the page size")
        self.base = base
        self.size = size
        self.name = name
        try:
            self._mmap = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        except OSError as exc:
            raise ConfigError(f"cannot set up guest memory '{name}': {exc.strerror}") from exc
        self.view = memoryview(self._mmap)
        self._anchor = ctypes.c_char.from_buffer(self._mmap)
        self.host_address: int = ctypes.addressof(self._anchor)
        """Host virtual address of the first byte, for the interpreter core and KVM."""

    @property
    def end(self) -> int:
        return self.base + self.size

    def contains(self, gpa: int, size: int = 1) -> bool:
        return self.base <= gpa and gpa + size <= self.end

    def _offset(self, gpa: int, size: int) -> int:
        if size < 0 or not self.contains(gpa, size):
            raise GuestMemoryError(
                f"guest-physical range 0x{gpa:x}+0x{size:x} is outside RAM "
                f"0x{self.base:x}-0x{self.end - 1:x}"
            )
        return gpa - self.base

    def read(self, gpa: int, size: int) -> bytes:
        off = self._offset(gpa, size)
        return bytes(self.view[off:off + size])

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        off = self._offset(gpa, len(data))
        self.view[off:off + len(data)] = data

    def read_int(self, gpa: int, size: int) -> int:
        off = self._offset(gpa, size)
        return int(struct.unpack_from(_FORMATS[size], self.view, off)[0])

    def write_int(self, gpa: int, size: int, value: int) -> None:
        off = self._offset(gpa, size)
        struct.pack_into(_FORMATS[size], self.view, off, value & ((1 << (8 * size)) - 1))

    def clear(self) -> None:
        """Zero all of RAM (and give the pages back to the host)."""
        self._mmap.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        """Unmap RAM. Only valid once nothing (core, KVM) uses the mapping any more."""
        del self._anchor
        self.view.release()
        self._mmap.close()


class MmioRegion:
    """A device window ``[base, end)`` on the bus; ``sizes`` are its valid access widths."""

    __slots__ = ("base", "device", "end", "name", "size", "sizes")

    def __init__(self, base: int, size: int, device: MmioDevice, name: str) -> None:
        self.base = base
        self.size = size
        self.end = base + size
        self.device = device
        self.name = name
        self.sizes = frozenset(device.access_sizes)

    def __repr__(self) -> str:
        return f"MmioRegion({self.name!r}, 0x{self.base:x}+0x{self.size:x})"


class MmioBus:
    """Non-overlapping device windows; dispatches guest-physical accesses to device offsets.

    Overlaps are refused when the board is built.  An access to no device or with a width the
    device does not accept is a guest error: logged, reads return 0, writes are dropped.
    """

    def __init__(self) -> None:
        self._bases: list[int] = []
        self._regions: list[MmioRegion] = []
        self._last: MmioRegion | None = None
        """The region of the previous access: guests hit the same device in bursts."""

    @property
    def regions(self) -> tuple[MmioRegion, ...]:
        return tuple(self._regions)

    def add(self, base: int, size: int, device: MmioDevice, name: str | None = None) -> MmioRegion:
        region = MmioRegion(base, size, device, name or device.name)
        if size <= 0:
            raise ConfigError(f"MMIO region '{region.name}' has size {size}")
        i = bisect.bisect_right(self._bases, base)
        for other in self._regions[max(i - 1, 0):i + 1]:
            if base < other.end and other.base < region.end:
                raise ConfigError(
                    f"MMIO region '{region.name}' 0x{base:x}-0x{region.end - 1:x} overlaps "
                    f"'{other.name}' 0x{other.base:x}-0x{other.end - 1:x}"
                )
        self._bases.insert(i, base)
        self._regions.insert(i, region)
        return region

    def find(self, gpa: int) -> MmioRegion | None:
        i = bisect.bisect_right(self._bases, gpa) - 1
        if i >= 0:
            region = self._regions[i]
            if gpa < region.end:
                return region
        return None

    def _lookup(self, gpa: int, size: int, what: str) -> MmioRegion | None:
        """The region taking this access, or None after logging why it is refused."""
        region = self._last
        if region is None or not region.base <= gpa < region.end:
            region = self.find(gpa)
            if region is None:
                log.guest_error(f"Invalid {what} at addr 0x{gpa:x}, size {size}, "
                                "region '(null)', reason: rejected")
                return None
            self._last = region
        if size not in region.sizes or gpa + size > region.end:
            log.guest_error(f"Invalid {what} at addr 0x{gpa - region.base:x}, size {size}, "
                            f"region '{region.name}', reason: invalid size")
            return None
        return region

    def read(self, gpa: int, size: int) -> int:
        region = self._lookup(gpa, size, "read")
        if region is None:
            return 0
        return region.device.mmio_read(gpa - region.base, size) & _MASKS[size]

    def write(self, gpa: int, size: int, value: int) -> None:
        region = self._lookup(gpa, size, "write")
        if region is not None:
            region.device.mmio_write(gpa - region.base, size, value & _MASKS[size])
