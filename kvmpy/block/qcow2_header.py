"""The qcow2 header and its extensions (docs/interop/qcow2.txt), read and written.

:func:`parse_header` checks a header the way QEMU 7.2's ``qcow2_do_open`` does, in the same
order and with the same one-line messages (``Unsupported qcow2 version 4``, ``Unsupported
qcow2 feature(s): Unknown incompatible feature: 100``); features kvmpy does not implement
(encryption, external data files, extended L2 entries) are refused with a message that says
so.  :func:`create_image` writes a new, empty image the way ``qemu-img create -f qcow2`` lays
it out: header, refcount table, one refcount block, L1 table.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from kvmpy.errors import ConfigError

MAGIC = 0x514649FB  # "QFI\xfb"
MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21
MAX_REFTABLE_BYTES = 8 << 20
MAX_L1_BYTES = 32 << 20
MAX_SNAPSHOTS = 65536
SNAPSHOT_HEADER_SIZE = 40

INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
INCOMPAT_KNOWN = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | \
    INCOMPAT_COMPRESSION | INCOMPAT_EXTL2
COMPAT_LAZY_REFCOUNTS = 1 << 0

EXT_END = 0
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_DATA_FILE = 0x44415441

COMPRESSION_ZLIB = 0
COMPRESSION_ZSTD = 1

V2_HEADER = struct.Struct(">IIQIIQIIQQIIQ")  # 72 bytes
V3_TAIL = struct.Struct(">QQQII")  # 32 bytes: features, refcount_order, header_length
OFF_INCOMPAT = 72
OFF_AUTOCLEAR = 88
OFF_REFTABLE = 48  # refcount_table_offset (u64), then refcount_table_clusters (u32)
OFF_L1 = 36  # l1_size (u32), then l1_table_offset (u64)
OFF_SIZE = 24


class Qcow2Error(ConfigError):
    """An image kvmpy cannot open as qcow2; the text is QEMU's where QEMU refuses it too."""


@dataclass
class Header:
    version: int
    backing_file_offset: int
    backing_file_size: int
    cluster_bits: int
    size: int
    crypt_method: int
    l1_size: int
    l1_table_offset: int
    refcount_table_offset: int
    refcount_table_clusters: int
    nb_snapshots: int
    snapshots_offset: int
    incompatible: int = 0
    compatible: int = 0
    autoclear: int = 0
    refcount_order: int = 4
    header_length: int = 72
    compression_type: int = COMPRESSION_ZLIB
    backing_file: str | None = None
    backing_format: str | None = None
    feature_names: dict[tuple[int, int], str] = field(default_factory=dict)

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits


def _read(fd: int, offset: int, length: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) < length:
        data += bytes(length - len(data))  # past the end of the file reads as zeros
    return data


def _validate_table(offset: int, entries: int, entry_len: int, max_bytes: int,
                    cluster_size: int, name: str) -> None:
    """QEMU's ``qcow2_validate_table``."""
    if entries > max_bytes // entry_len:
        raise Qcow2Error(f"{name} too large")
    if (1 << 63) - 1 - entries * entry_len < offset or offset % cluster_size:
        raise Qcow2Error(f"{name} offset invalid")


def _unsupported(names: dict[tuple[int, int], str], mask: int) -> str:
    """QEMU's ``report_unsupported_feature``: the named bits, then the rest in hex."""
    parts = []
    for (kind, bit), name in names.items():
        if kind == 0 and mask & (1 << bit):
            parts.append(name)
            mask &= ~(1 << bit)
    if mask:
        parts.append(f"Unknown incompatible feature: {mask:x}")
    return "Unsupported qcow2 feature(s): " + ", ".join(parts)


def parse_header(fd: int, writable: bool) -> Header:
    """Read and check the header of the image open as ``fd``; raises :class:`Qcow2Error`."""
    raw = _read(fd, 0, V2_HEADER.size + V3_TAIL.size + 8)
    fields = V2_HEADER.unpack_from(raw)
    if fields[0] != MAGIC:
        raise Qcow2Error("Image is not in qcow2 format")
    h = Header(*fields[1:])
    if h.version not in (2, 3):
        raise Qcow2Error(f"Unsupported qcow2 version {h.version}")
    if not MIN_CLUSTER_BITS <= h.cluster_bits <= MAX_CLUSTER_BITS:
        raise Qcow2Error(f"Unsupported cluster size: 2^{h.cluster_bits}")
    if h.version == 3:
        (h.incompatible, h.compatible, h.autoclear, h.refcount_order,
         h.header_length) = V3_TAIL.unpack_from(raw, V2_HEADER.size)
        if h.header_length < 104:
            raise Qcow2Error("qcow2 header too short")
        if h.header_length > 104:
            h.compression_type = raw[104]
    if h.header_length > h.cluster_size:
        raise Qcow2Error("qcow2 header exceeds cluster size")
    if h.backing_file_offset > h.cluster_size:
        raise Qcow2Error("Invalid backing file offset")
    ext_end = h.backing_file_offset or h.cluster_size
    if h.compression_type not in (COMPRESSION_ZLIB, COMPRESSION_ZSTD):
        raise Qcow2Error(f"qcow2: unknown compression type: {h.compression_type}")
    if h.compression_type == COMPRESSION_ZLIB and h.incompatible & INCOMPAT_COMPRESSION:
        raise Qcow2Error("qcow2: Compression type incompatible feature bit must not be set")
    if h.compression_type != COMPRESSION_ZLIB and not h.incompatible & INCOMPAT_COMPRESSION:
        raise Qcow2Error("qcow2: Compression type incompatible feature bit must be set")
    data_file = _read_extensions(fd, h, ext_end)
    if h.incompatible & ~INCOMPAT_KNOWN:
        raise Qcow2Error(_unsupported(h.feature_names, h.incompatible & ~INCOMPAT_KNOWN))
    if h.incompatible & INCOMPAT_CORRUPT and writable:
        raise Qcow2Error("qcow2: Image is corrupt; cannot be opened read/write")
    if h.incompatible & INCOMPAT_EXTL2:
        raise Qcow2Error("qcow2: extended L2 entries (subclusters) are not supported by "
                         "kvmpy; convert the image with 'qemu-img convert -O qcow2'")
    if h.refcount_order > 6:
        raise Qcow2Error("Reference count entry width too large; may not exceed 64 bits")
    if h.crypt_method == 1:
        raise Qcow2Error("Use of AES-CBC encrypted qcow2 images is no longer supported in "
                         "system emulators")
    if h.crypt_method:
        raise Qcow2Error("qcow2: encrypted (LUKS) images are not supported by kvmpy")
    if h.refcount_table_clusters == 0:
        raise Qcow2Error("Image does not contain a reference count table")
    _validate_table(h.refcount_table_offset, h.refcount_table_clusters, h.cluster_size,
                    MAX_REFTABLE_BYTES, h.cluster_size, "Reference count table")
    _validate_table(h.snapshots_offset, h.nb_snapshots, SNAPSHOT_HEADER_SIZE,
                    SNAPSHOT_HEADER_SIZE * MAX_SNAPSHOTS, h.cluster_size, "Snapshot table")
    _validate_table(h.l1_table_offset, h.l1_size, 8, MAX_L1_BYTES, h.cluster_size,
                    "Active L1 table")
    l2_bits = h.cluster_bits - 3
    l1_needed = -(-h.size // (1 << (h.cluster_bits + l2_bits)))
    if l1_needed > 0x7FFFFFFF:
        raise Qcow2Error("Image is too big")
    if h.l1_size < l1_needed:
        raise Qcow2Error("L1 table is too small")
    if h.incompatible & INCOMPAT_DATA_FILE or data_file:
        raise Qcow2Error("qcow2: images with an external data file are not supported by "
                         "kvmpy")
    if h.backing_file_offset:
        length = h.backing_file_size
        if length > min(1023, h.cluster_size - h.backing_file_offset):
            raise Qcow2Error("Backing file name too long")
        name = _read(fd, h.backing_file_offset, length)
        h.backing_file = name.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    return h


def _read_extensions(fd: int, h: Header, end: int) -> bytes | None:
    """Header extensions up to ``end`` (QEMU's ``qcow2_read_extensions``); returns the
    external data file name if one is given."""
    offset = h.header_length
    data_file = None
    while offset + 8 <= end:
        kind, length = struct.unpack(">II", _read(fd, offset, 8))
        offset += 8
        if kind == EXT_END:
            break
        if length > end - offset:
            raise Qcow2Error("Header extension too large")
        data = _read(fd, offset, length)
        if kind == EXT_BACKING_FORMAT:
            if length >= 16:
                raise Qcow2Error(f"ERROR: ext_backing_format: len={length} too large "
                                 "(>=16)")
            h.backing_format = data.decode("ascii", "replace")
        elif kind == EXT_FEATURE_TABLE:
            for pos in range(0, length - length % 48, 48):
                name = data[pos + 2:pos + 48].split(b"\0", 1)[0]
                h.feature_names.setdefault((data[pos], data[pos + 1]),
                                           name.decode("utf-8", "replace"))
        elif kind == EXT_DATA_FILE:
            data_file = data
        offset += (length + 7) & ~7
    return data_file


def create_image(path: str, size: int, *, cluster_bits: int = 16, refcount_order: int = 4,
                 backing_file: str | None = None, backing_format: str | None = None,
                 version: int = 3) -> None:
    """Write a new empty qcow2 image at ``path`` (replacing any file there), laid out as
    ``qemu-img create`` does: header, refcount table, refcount block, L1 table."""
    cs = 1 << cluster_bits
    l1_size = max(1, -(-size // (cs * (cs // 8))))
    l1_clusters = -(-(l1_size * 8) // cs)
    reftable_off, refblock_off, l1_off = cs, 2 * cs, 3 * cs
    used = 3 + l1_clusters
    refblock_entries = cs * 8 >> refcount_order
    if used > refblock_entries:
        raise ValueError("image too large for one initial refcount block")
    ext = b""
    if backing_format:
        fmt = backing_format.encode()
        ext += struct.pack(">II", EXT_BACKING_FORMAT, len(fmt)) + fmt
        ext += bytes(-len(ext) % 8)
    ext += struct.pack(">II", EXT_END, 0)
    header_length = 112 if version == 3 else 72
    backing = (backing_file or "").encode()
    backing_off = header_length + len(ext) if backing else 0
    if backing_off + len(backing) > cs or len(backing) > 1023:
        raise ValueError("backing file name too long")
    header = V2_HEADER.pack(MAGIC, version, backing_off, len(backing), cluster_bits, size, 0,
                            l1_size, l1_off, reftable_off, 1, 0, 0)
    if version == 3:
        header += V3_TAIL.pack(0, 0, 0, refcount_order, header_length) + bytes(8)
    elif refcount_order != 4:
        raise ValueError("version 2 images have 16-bit refcounts")
    first = bytearray(cs)
    blob = header + ext + backing
    first[:len(blob)] = blob
    refblock = bytearray(cs)
    for cluster in range(used):
        set_refcount(refblock, cluster, refcount_order, 1)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.pwrite(fd, bytes(first), 0)
        os.pwrite(fd, struct.pack(">Q", refblock_off) + bytes(cs - 8), reftable_off)
        os.pwrite(fd, bytes(refblock), refblock_off)
        os.pwrite(fd, bytes(l1_clusters * cs), l1_off)
    finally:
        os.close(fd)


def get_refcount(block: bytes | bytearray, index: int, order: int) -> int:
    """Entry ``index`` of a refcount block of ``2**order``-bit entries (sub-byte entries
    count from the least significant bit; wider ones are big-endian)."""
    bits = 1 << order
    if bits < 8:
        byte, shift = divmod(index * bits, 8)
        return (block[byte] >> shift) & ((1 << bits) - 1)
    width = bits // 8
    return int.from_bytes(block[index * width:(index + 1) * width], "big")


def set_refcount(block: bytearray, index: int, order: int, value: int) -> tuple[int, int]:
    """Store ``value`` in entry ``index``; returns the changed byte range (start, end)."""
    bits = 1 << order
    if bits < 8:
        byte, shift = divmod(index * bits, 8)
        mask = ((1 << bits) - 1) << shift
        block[byte] = (block[byte] & ~mask) | ((value << shift) & mask)
        return byte, byte + 1
    width = bits // 8
    block[index * width:(index + 1) * width] = value.to_bytes(width, "big")
    return index * width, (index + 1) * width
