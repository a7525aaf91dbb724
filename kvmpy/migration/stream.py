"""The framing of a VM-state stream: a magic and version, then checksummed records.

::

    stream  = magic "KVMPYVM\\n", u32 format version, u32 0, record*, END record
    record  = tag (4 bytes), u32 flags, u64 payload length, payload, u32 CRC-32

The CRC-32 covers the 16-byte record header and the payload; for a RAM record it covers the
header, the RAM record's own header and bitmap, and the data of the pages it carries (not the
padding, nor the slots of zero pages, which a file leaves as holes).  See ``docs/vmstate.md``.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from typing import BinaryIO

from kvmpy.migration.errors import VmStateError

MAGIC = b"KVMPYVM\n"
FORMAT_VERSION = 1
"""Bumped whenever a reader of the previous version could not read what is written."""

TAG_HEADER = b"HEAD"
TAG_RAM = b"RAM\0"
TAG_STATE = b"STAT"
TAG_END = b"END\0"

MAX_META_RECORD = 64 << 20
"""Largest non-RAM record accepted (a guard against a corrupt length, not a real limit)."""

_START = struct.Struct("<8sII")
RECORD = struct.Struct("<4sIQ")
_CRC = struct.Struct("<I")
ZEROS = bytes(1 << 16)


def crc_zeros(crc: int, n: int) -> int:
    """CRC-32 continued over ``n`` zero bytes."""
    while n > 0:
        k = min(n, len(ZEROS))
        crc = zlib.crc32(ZEROS[:k] if k < len(ZEROS) else ZEROS, crc)
        n -= k
    return crc


class StreamWriter:
    """Writes records to ``out``, counting bytes; ``sparse``: ``out`` is a regular file, so
    gaps can be left as holes with a seek (RAM data at page-aligned file offsets)."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.written = 0
        self.records = 0
        self.sparse = False
        self.base = 0
        try:
            fd = out.fileno()
            self.sparse = os.path.isfile(f"/proc/self/fd/{fd}") and out.seekable()
            self.base = out.tell() if self.sparse else 0
        except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
            self.sparse = False

    @property
    def offset(self) -> int:
        """Absolute offset in ``out`` of the next byte (for page alignment)."""
        return self.base + self.written

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            n = self.out.write(view)
            if n is None:  # a non-blocking stream that took nothing
                raise VmStateError("vmstate: the output stream does not accept data")
            view = view[n:]
            self.written += n

    def skip(self, n: int) -> None:
        """``n`` zero bytes: a hole in a sparse file, written zeros otherwise."""
        if n <= 0:
            return
        if self.sparse:
            self.out.seek(n, os.SEEK_CUR)
            self.written += n
            return
        while n > 0:
            k = min(n, len(ZEROS))
            self.write(memoryview(ZEROS)[:k])
            n -= k

    def start(self) -> None:
        self.write(_START.pack(MAGIC, FORMAT_VERSION, 0))

    def record(self, tag: bytes, payload: bytes, flags: int = 0) -> None:
        head = RECORD.pack(tag, flags, len(payload))
        crc = zlib.crc32(payload, zlib.crc32(head))
        self.write(head + payload + _CRC.pack(crc))
        self.records += 1

    def end(self) -> None:
        self.record(TAG_END, struct.pack("<Q", self.records + 1))
        flush = getattr(self.out, "flush", None)
        if flush is not None:
            flush()
        if self.sparse:  # a hole at the very end still needs the file to reach it
            self.out.truncate(self.offset)


class StreamReader:
    """Reads records from ``inp``; every short read or bad field is a VmStateError."""

    def __init__(self, inp: BinaryIO) -> None:
        self.inp = inp
        self.read_bytes = 0
        self.records = 0
        self.seekable = False
        try:
            self.seekable = bool(inp.seekable())
        except (AttributeError, ValueError, OSError):
            self.seekable = False

    def read(self, n: int) -> bytes:
        if n == 0:
            return b""
        chunks = []
        left = n
        while left:
            chunk = self.inp.read(left)
            if not chunk:
                raise VmStateError("vmstate: truncated stream")
            chunks.append(chunk)
            left -= len(chunk)
        self.read_bytes += n
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def readinto(self, buf: memoryview) -> None:
        pos = 0
        while pos < len(buf):
            n = self.inp.readinto(buf[pos:])  # type: ignore[attr-defined]
            if not n:
                raise VmStateError("vmstate: truncated stream")
            pos += n
        self.read_bytes += len(buf)

    def skip(self, n: int) -> None:
        if n <= 0:
            return
        if self.seekable:
            here = self.inp.tell()
            end = self.inp.seek(0, os.SEEK_END)
            if here + n > end:
                raise VmStateError("vmstate: truncated stream")
            self.inp.seek(here + n)
            self.read_bytes += n
            return
        while n > 0:
            k = min(n, 1 << 20)
            self.read(k)
            n -= k

    def start(self) -> None:
        head = self.read_start()
        magic, version, reserved = _START.unpack(head)
        if magic != MAGIC:
            raise VmStateError("vmstate: not a kvmpy VM state (bad magic)")
        if reserved:
            raise VmStateError("vmstate: corrupt stream (start)")
        if version > FORMAT_VERSION:
            raise VmStateError(f"vmstate: format version {version} is newer than this kvmpy "
                               f"reads (up to {FORMAT_VERSION})")
        if version < 1:
            raise VmStateError(f"vmstate: unknown format version {version}")

    def read_start(self) -> bytes:
        try:
            return self.read(_START.size)
        except VmStateError:
            raise VmStateError("vmstate: not a kvmpy VM state (too short)") from None

    def record_head(self) -> tuple[bytes, int, int, bytes]:
        """(tag, flags, length, raw header) of the next record."""
        head = self.read(RECORD.size)
        tag, flags, length = RECORD.unpack(head)
        self.records += 1
        return tag, flags, length, head

    def payload(self, tag: bytes, length: int, head: bytes) -> bytes:
        """The checked payload of a non-RAM record."""
        if length > MAX_META_RECORD:
            raise VmStateError(f"vmstate: corrupt stream (record {tag!r} of {length} bytes)")
        payload = self.read(length)
        self.check_crc(zlib.crc32(payload, zlib.crc32(head)), tag)
        return payload

    def check_crc(self, crc: int, tag: bytes) -> None:
        (want,) = _CRC.unpack(self.read(_CRC.size))
        if want != crc:
            name = tag.rstrip(b"\0").decode("ascii", "replace")
            raise VmStateError(f"vmstate: corrupt stream (checksum of a {name} record)")
