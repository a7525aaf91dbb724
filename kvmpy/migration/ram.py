"""Guest RAM in a VM-state stream: which pages to send, RAM records, and loading them.

A RAM record carries a range of pages with a bitmap (bit set: the page's 4 KiB follow;
clear: the page is zero).  Packed records (streams) hold only the data of pages whose bit is
set; sparse records (a save to a regular file) hold a slot for every page of the range, with
zero pages left as holes and the data page-aligned in the file, so that a restore can map it
copy-on-write instead of reading it.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kvmpy.memory import PAGE_SHIFT, PAGE_SIZE
from kvmpy.migration.errors import VmStateError
from kvmpy.migration.stream import RECORD, TAG_RAM, StreamReader, StreamWriter

if TYPE_CHECKING:
    from kvmpy.memory import GuestRAM

RAM_HEAD = struct.Struct("<QII")
"""gpa of the first page, number of pages, flags."""
RAM_SPARSE = 1
MAX_PAGES_PER_PACKED = 256
_CHUNK_PAGES = 16
_ZERO_PAGE = bytes(PAGE_SIZE)
_ZERO_CHUNK = bytes(PAGE_SIZE * _CHUNK_PAGES)


def nonzero_pages(ram: GuestRAM) -> list[int]:
    """Numbers of the RAM pages that are not all zero (64 KiB at a time, then per page)."""
    mm = ram._mmap
    pages: list[int] = []
    chunk = PAGE_SIZE * _CHUNK_PAGES
    size = ram.size
    for off in range(0, size, chunk):
        end = min(off + chunk, size)
        if mm[off:end] == _ZERO_CHUNK[:end - off]:
            continue
        for page_off in range(off, end, PAGE_SIZE):
            if mm[page_off:page_off + PAGE_SIZE] != _ZERO_PAGE:
                pages.append(page_off >> PAGE_SHIFT)
    return pages


_EXPAND = [bytes((b >> i) & 1 for i in range(8)) for b in range(256)]


def bitmap_runs(bitmap: bytes, count: int) -> list[tuple[int, int]]:
    """Runs ``(first, length)`` of set bits among the first ``count`` bits of ``bitmap``."""
    flags = b"".join([_EXPAND[b] for b in bitmap])[:count]
    runs: list[tuple[int, int]] = []
    pos = flags.find(1)
    while pos >= 0:
        end = flags.find(0, pos)
        if end < 0:
            end = count
        runs.append((pos, end - pos))
        pos = flags.find(1, end)
    return runs


def _runs(pages: list[int], limit: int) -> list[tuple[int, int]]:
    """Consecutive runs ``(first, count)`` of sorted ``pages``, at most ``limit`` long."""
    runs: list[tuple[int, int]] = []
    for page in pages:
        if runs and runs[-1][0] + runs[-1][1] == page and runs[-1][1] < limit:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((page, 1))
    return runs


def write_pages(writer: StreamWriter, ram: GuestRAM, pages: list[int],
                zero_check: bool = True) -> tuple[int, int]:
    """Packed RAM records for ``pages`` (sorted): each page's current data, or a zero bit
    when it is zero.  Returns (pages sent, data bytes)."""
    view = ram.view
    sent = data_bytes = 0
    for first, count in _runs(pages, MAX_PAGES_PER_PACKED):
        bitmap = bytearray((count + 7) // 8)
        parts = []
        for i in range(count):
            off = (first + i) << PAGE_SHIFT
            page = view[off:off + PAGE_SIZE]
            if zero_check and page == _ZERO_PAGE:
                continue
            bitmap[i >> 3] |= 1 << (i & 7)
            parts.append(bytes(page))
        payload = RAM_HEAD.pack(ram.base + (first << PAGE_SHIFT), count, 0) + bytes(bitmap)
        payload += b"".join(parts)
        writer.record(TAG_RAM, payload)
        sent += count
        data_bytes += PAGE_SIZE * len(parts)
    return sent, data_bytes


def write_sparse(writer: StreamWriter, ram: GuestRAM, pages: list[int]) -> tuple[int, int]:
    """One sparse RAM record from the first to the last of ``pages`` (sorted, non-zero);
    the others in between are zero.  The data starts at a page-aligned offset of the file."""
    if not pages:
        return 0, 0
    first, last = pages[0], pages[-1]
    count = last - first + 1
    bitmap = bytearray((count + 7) // 8)
    for page in pages:
        i = page - first
        bitmap[i >> 3] |= 1 << (i & 7)
    meta = RAM_HEAD.pack(ram.base + (first << PAGE_SHIFT), count, RAM_SPARSE) + bytes(bitmap)
    data_at = writer.offset + RECORD.size + len(meta) + 4
    pad = -data_at % PAGE_SIZE
    length = len(meta) + 4 + pad + count * PAGE_SIZE
    head = RECORD.pack(TAG_RAM, RAM_SPARSE, length)
    crc = zlib.crc32(meta, zlib.crc32(head))
    writer.write(head + meta + struct.pack("<I", pad))
    writer.skip(pad)
    view = ram.view
    at = first
    for run_first, run_count in _runs(pages, 1 << 30):
        writer.skip((run_first - at) * PAGE_SIZE)
        data = view[run_first << PAGE_SHIFT:(run_first + run_count) << PAGE_SHIFT]
        crc = zlib.crc32(data, crc)
        writer.write(data)
        at = run_first + run_count
    writer.skip((first + count - at) * PAGE_SIZE)
    writer.write(struct.pack("<I", crc))
    writer.records += 1
    return len(pages), len(pages) * PAGE_SIZE


@dataclass
class PendingRam:
    """RAM records read and checked, not yet applied: applied all at once at the end."""

    maps: list[tuple[int, int, int]] = field(default_factory=list)
    """(file offset, gpa, size) of sparse records to map from the file (their zero slots
    are holes: zero pages)."""
    pages: dict[int, bytes | None] = field(default_factory=dict)
    """page number -> data (None: zero), the last record for a page wins."""

    def apply(self, ram: GuestRAM, fd: int | None) -> None:
        ram.clear()
        for file_offset, gpa, size in self.maps:
            if fd is None:
                raise VmStateError("vmstate: internal error: mapped RAM without a file")
            try:
                ram.map_file(fd, file_offset, gpa, size)
            except OSError as exc:
                raise VmStateError(f"vmstate: cannot map saved RAM: {exc.strerror}") from exc
        view = ram.view
        for page, data in self.pages.items():
            off = page << PAGE_SHIFT
            if data is None:
                if self.maps:
                    view[off:off + PAGE_SIZE] = _ZERO_PAGE
            else:
                view[off:off + PAGE_SIZE] = data


def read_ram_record(reader: StreamReader, ram: GuestRAM, flags: int, length: int,
                    head: bytes, pending: PendingRam, map_fd: int | None,
                    verify: bool = True) -> None:
    """Read one RAM record (after its 16-byte header) into ``pending``.

    ``map_fd``: the stream is that regular file, and sparse records are to be mapped from it
    (their present pages are read only to check the CRC, and only when ``verify``)."""
    meta = reader.read(RAM_HEAD.size)
    gpa, count, rflags = RAM_HEAD.unpack(meta)
    sparse = bool(rflags & RAM_SPARSE)
    if rflags & ~RAM_SPARSE or flags != rflags:
        raise VmStateError("vmstate: corrupt stream (RAM record flags)")
    if (count == 0 or gpa % PAGE_SIZE or not ram.contains(gpa, count * PAGE_SIZE)):
        raise VmStateError(f"vmstate: corrupt stream (RAM record 0x{gpa:x}+{count} pages "
                           f"outside RAM 0x{ram.base:x}-0x{ram.end - 1:x})")
    nbm = (count + 7) // 8
    bitmap = reader.read(nbm)
    meta += bitmap
    present_runs = bitmap_runs(bitmap, count)
    npresent = sum(n for _, n in present_runs)
    crc = zlib.crc32(meta, zlib.crc32(head))
    first = (gpa - ram.base) >> PAGE_SHIFT
    if not sparse:
        if length != RAM_HEAD.size + nbm + npresent * PAGE_SIZE:
            raise VmStateError("vmstate: corrupt stream (RAM record length)")
        data = reader.read(npresent * PAGE_SIZE)
        crc = zlib.crc32(data, crc)
        reader.check_crc(crc, TAG_RAM)
        pos = 0
        for i in range(count):
            if bitmap[i >> 3] >> (i & 7) & 1:
                pending.pages[first + i] = data[pos:pos + PAGE_SIZE]
                pos += PAGE_SIZE
            else:
                pending.pages[first + i] = None
        return
    (pad,) = struct.unpack("<I", reader.read(4))
    if pad >= PAGE_SIZE or length != RAM_HEAD.size + nbm + 4 + pad + count * PAGE_SIZE:
        raise VmStateError("vmstate: corrupt stream (RAM record length)")
    reader.skip(pad)
    if map_fd is not None:
        data_at = reader.inp.tell()
        if data_at % PAGE_SIZE:
            raise VmStateError("vmstate: corrupt stream (RAM data not page-aligned)")
        for run_first, run_count in present_runs:
            if verify:
                data = os.pread(map_fd, run_count * PAGE_SIZE, data_at + run_first * PAGE_SIZE)
                if len(data) != run_count * PAGE_SIZE:
                    raise VmStateError("vmstate: truncated stream")
                crc = zlib.crc32(data, crc)
        reader.skip(count * PAGE_SIZE)
        if verify:
            reader.check_crc(crc, TAG_RAM)
        else:
            reader.read(4)
        if pending.pages:
            for page in [p for p in pending.pages if first <= p < first + count]:
                del pending.pages[page]
        pending.maps.append((data_at, gpa, count * PAGE_SIZE))
        return
    at = 0
    for run_first, run_count in present_runs:
        reader.skip((run_first - at) * PAGE_SIZE)
        for i in range(at, run_first):
            pending.pages[first + i] = None
        data = reader.read(run_count * PAGE_SIZE)
        crc = zlib.crc32(data, crc)
        for k in range(run_count):
            pending.pages[first + run_first + k] = data[k * PAGE_SIZE:(k + 1) * PAGE_SIZE]
        at = run_first + run_count
    reader.skip((count - at) * PAGE_SIZE)
    for i in range(at, count):
        pending.pages[first + i] = None
    reader.check_crc(crc, TAG_RAM)
