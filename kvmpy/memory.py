"""Guest-physical memory: RAM as one mmap (anonymous, or of a memory backend's file or
memfd), and the MMIO bus of device windows.

RAM is shared by everyone that needs it: Python devices see a ``memoryview``, the interpreter
core a pointer (:attr:`GuestRAM.host_address`), KVM the ``userspace_addr`` of a memory slot.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import errno
import mmap
import os
import re
import struct
from typing import Protocol

from kvmpy import log
from kvmpy.errors import ConfigError, KvmpyError
from kvmpy.hw.core import MmioDevice

_FORMATS = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}
_MASKS = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFF_FFFF, 8: 0xFFFF_FFFF_FFFF_FFFF}


PAGE_SIZE = 4096
PAGE_SHIFT = 12


class GuestMemoryError(KvmpyError):
    """A host-side access (monitor, loader, library) outside guest RAM."""


class DirtyLog(Protocol):
    """An accelerator's log of guest writes to one RAM region (bitmaps: bit n of byte n // 8,
    least significant first, is page n; KVM's layout)."""

    def start_dirty_log(self) -> None: ...

    def collect_dirty(self) -> bytes:
        """Pages written since the last call (or the start), and clear the log."""
        ...

    def stop_dirty_log(self) -> None: ...


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long)
_MAP_FAILED = ctypes.c_void_p(-1).value
_MAP_FIXED = 0x10
_MADV_POPULATE_WRITE = 23


def _map_fixed(address: int, size: int, fd: int, offset: int) -> None:
    """Replace ``[address, address+size)`` of this process by a private mapping of ``fd`` at
    ``offset`` (``fd`` -1: anonymous zero pages)."""
    flags = mmap.MAP_PRIVATE | _MAP_FIXED | (mmap.MAP_ANONYMOUS if fd < 0 else 0)
    got = _libc.mmap(address, size, mmap.PROT_READ | mmap.PROT_WRITE, flags, fd,
                     max(offset, 0))
    if got == _MAP_FAILED or got != address:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def bitmap_or(a: bytes, b: bytes) -> bytes:
    """Two page bitmaps merged (the shorter one is padded with zeros)."""
    n = max(len(a), len(b))
    return (int.from_bytes(a, "little") | int.from_bytes(b, "little")).to_bytes(n, "little")


_BIT_INDEXES = [tuple(i for i in range(8) if b >> i & 1) for b in range(256)]
_NONZERO = re.compile(rb"[^\x00]")


def bitmap_pages(bitmap: bytes | bytearray, limit: int | None = None) -> list[int]:
    """The page numbers whose bits are set (below ``limit``), ascending."""
    pages: list[int] = []
    indexes = _BIT_INDEXES
    for match in _NONZERO.finditer(bytes(bitmap)):
        base = match.start() * 8
        pages.extend(base + i for i in indexes[match.group()[0]])
    if limit is not None:
        while pages and pages[-1] >= limit:
            pages.pop()
    return pages


def _pack_flags(flags: bytes | bytearray) -> bytes:
    """One byte per page (0 or 1) to a bitmap (bit n of byte n // 8, least significant first)."""
    padded = bytes(flags) + bytes(-len(flags) % 8)
    words = struct.unpack(f"<{len(padded) // 8}Q", padded)
    return bytes(((w * 0x0102040810204080) >> 56) & 0xFF for w in words)


class GuestRAM:
    """``size`` bytes of guest RAM at guest-physical ``base``, one anonymous private mmap
    (or, with ``fd``, a mapping of that file: MAP_SHARED with ``shared``, else MAP_PRIVATE).

    Pages are only backed when touched, so a large ``-m`` costs nothing until used.
    """

    def __init__(self, base: int, size: int, name: str = "ram", *, fd: int | None = None,
                 shared: bool = False) -> None:
        if size <= 0 or size % mmap.PAGESIZE:
            raise ConfigError(f"RAM size {size} is not a positive multiple of the page size")
        self.base = base
        self.size = size
        self.name = name
        self.fd_backed = fd is not None
        """RAM is a mapping of a file or memfd (``-object memory-backend-file|memfd``)."""
        self.shared = shared and fd is not None
        """The mapping is MAP_SHARED: guest writes reach the file."""
        self.discard_data = False
        """Drop the file's pages at :meth:`close` (``memory-backend-file,discard-data=on``)."""
        try:
            if fd is None:
                self._mmap = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            else:
                flags = mmap.MAP_SHARED if shared else mmap.MAP_PRIVATE
                self._mmap = mmap.mmap(fd, size, flags=flags,
                                       prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            if fd is not None:
                raise ConfigError("unable to map backing store for guest RAM: "
                                  f"{exc.strerror}") from exc
            raise ConfigError(f"cannot set up guest memory '{name}': {exc.strerror}") from exc
        self.view = memoryview(self._mmap)
        self._anchor = ctypes.c_char.from_buffer(self._mmap)
        self.host_address: int = ctypes.addressof(self._anchor)
        """Host virtual address of the first byte, for the interpreter core and KVM."""
        self.file_ranges: list[tuple[int, int]] = []
        """``(offset, size)`` parts of RAM mapped copy-on-write from a file (:meth:`map_file`):
        their pages hold the file's data until written, even when not yet resident."""
        self._dirty: bytearray | None = None
        self._dirty_log: DirtyLog | None = None

    @property
    def pages(self) -> int:
        return self.size >> PAGE_SHIFT

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
        if self._dirty is not None:
            self.mark_dirty(gpa, len(data))

    def read_int(self, gpa: int, size: int) -> int:
        off = self._offset(gpa, size)
        return int(struct.unpack_from(_FORMATS[size], self.view, off)[0])

    def write_int(self, gpa: int, size: int, value: int) -> None:
        off = self._offset(gpa, size)
        struct.pack_into(_FORMATS[size], self.view, off, value & ((1 << (8 * size)) - 1))
        if self._dirty is not None:
            self.mark_dirty(gpa, size)

    def clear(self) -> None:
        """Zero all of RAM (and give the pages back to the host)."""
        if self.shared:  # the file itself is zeroed: holes where the filesystem can
            try:
                self._mmap.madvise(mmap.MADV_REMOVE)
            except OSError:
                self.view[:] = bytes(self.size)
        elif self.file_ranges or self.fd_backed:  # MADV_DONTNEED brings back the file's pages
            _map_fixed(self.host_address, self.size, -1, 0)
            self.file_ranges = []
        else:
            self._mmap.madvise(mmap.MADV_DONTNEED)
        self.mark_dirty(self.base, self.size)

    def map_file(self, fd: int, file_offset: int, gpa: int, size: int) -> None:
        """Map ``size`` bytes of file ``fd`` at ``file_offset`` (page-aligned) copy-on-write
        over RAM at ``gpa``: the guest sees the file's data, its writes stay private, and
        every VM mapping the same file shares the pages it has not written.  Only while no
        vCPU runs.  Shared RAM (a memory backend with ``share=on``) stays one mapping of its
        backend: the data is read into it instead."""
        off = self._offset(gpa, size)
        if off % PAGE_SIZE or size % PAGE_SIZE or file_offset % PAGE_SIZE:
            raise GuestMemoryError(f"map_file: 0x{gpa:x}+0x{size:x} at file offset "
                                   f"0x{file_offset:x} is not page-aligned")
        if self.shared:
            done = 0
            while done < size:
                got = os.preadv(fd, [self.view[off + done:off + size]], file_offset + done)
                if got <= 0:
                    raise OSError(errno.EIO, "short read")
                done += got
            self.mark_dirty(gpa, size)
            return
        _map_fixed(self.host_address + off, size, fd, file_offset)
        self.file_ranges.append((off, size))
        self.mark_dirty(gpa, size)

    def preallocate(self) -> None:
        """Back every page now (``prealloc=on``), without changing its contents."""
        try:
            self._mmap.madvise(_MADV_POPULATE_WRITE)
        except OSError:  # before Linux 5.14: touch each page
            view = self.view
            for off in range(0, self.size, PAGE_SIZE):
                view[off] = view[off]

    # -- dirty logging (live migration) ----------------------------------------------------

    @property
    def dirty_logging(self) -> bool:
        return self._dirty is not None

    def mark_dirty(self, gpa: int, size: int) -> None:
        """Device writes into guest RAM call this (a no-op unless dirty logging is on)."""
        dirty = self._dirty
        if dirty is None or size <= 0:
            return
        first = max(gpa - self.base, 0) >> PAGE_SHIFT
        last = min((gpa - self.base + size - 1) >> PAGE_SHIFT, len(dirty) - 1)
        if first <= last:
            dirty[first:last + 1] = b"\1" * (last - first + 1)

    def start_dirty_log(self, accel_log: DirtyLog | None = None) -> None:
        """Log written pages from now on: those written by devices (:meth:`mark_dirty`) and,
        through ``accel_log``, those the guest writes."""
        if self._dirty is not None:
            return
        if accel_log is not None:
            accel_log.start_dirty_log()
        self._dirty_log = accel_log
        self._dirty = bytearray(self.pages)

    def collect_dirty(self) -> bytes:
        """Bitmap of the pages written since the last call (or the start), log cleared.

        With an accelerator log, call it while no vCPU is inside ``run()`` for the
        interpreter (the VM paused, or :func:`kvmpy.migration.vcpus_held`)."""
        dirty = self._dirty
        if dirty is None:
            raise GuestMemoryError("dirty logging is off")
        self._dirty = bytearray(self.pages)
        nbytes = (self.pages + 7) // 8
        bitmap = _pack_flags(dirty)[:nbytes]
        if self._dirty_log is not None:
            bitmap = bitmap_or(bitmap, self._dirty_log.collect_dirty()[:nbytes])
        return bitmap

    def stop_dirty_log(self) -> None:
        if self._dirty is None:
            return
        self._dirty = None
        log_, self._dirty_log = self._dirty_log, None
        if log_ is not None:
            log_.stop_dirty_log()

    def close(self) -> None:
        """Unmap RAM. Only valid once nothing (core, KVM) uses the mapping any more."""
        if self.discard_data and self.shared:
            with contextlib.suppress(OSError):  # as QEMU: discarding is an optimisation
                self._mmap.madvise(mmap.MADV_REMOVE)
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
