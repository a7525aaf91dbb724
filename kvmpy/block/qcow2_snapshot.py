"""Internal snapshots of a qcow2 image (docs/interop/qcow2.txt, "Snapshots"), as QEMU 7.2's
block/qcow2-snapshot.c keeps them.

A snapshot is a copy of the active L1 table plus one more reference on every cluster it
reaches; clusters so shared lose ``QCOW_OFLAG_COPIED`` and are copied before the active image
writes them.  The snapshot table (one entry per snapshot: id, name, date, VM clock, VM state
size, and extra data with the 64-bit VM state size, the disk size and the icount) is
rewritten whole into new clusters, and the header switched to it, on every change.

The VM state of a snapshot lives in the image's address space right after the virtual disk
(from the first L1 index the disk does not use), written through the active L1 table before
the snapshot is taken and dropped from the active table afterwards, so only the snapshot
keeps it.  Every step is ordered as in QEMU: references are added before anything points at
the new copy, and dropped only after the last pointer is gone, so a crash leaks clusters and
never loses one.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvmpy.block.qcow2_header import MAX_L1_BYTES, Qcow2Error

if TYPE_CHECKING:
    from kvmpy.block.qcow2 import Qcow2Image

ENTRY = struct.Struct(">QIHHIIQII")  # 40 bytes: QCowSnapshotHeader
EXTRA = struct.Struct(">QQQ")  # vm_state_size_large, disk_size, icount
MAX_EXTRA_DATA = 1024
MAX_SNAPSHOTS = 65536
MAX_TABLE_BYTES = 1024 * MAX_SNAPSHOTS
NO_ICOUNT = (1 << 64) - 1
OFF_NB_SNAPSHOTS = 60  # nb_snapshots (u32), then snapshots_offset (u64)
OFFSET_MASK = 0x00FFFFFFFFFFFE00
COPIED = 1 << 63
COMPRESSED = 1 << 62
ZERO = 1


@dataclass
class Snapshot:
    """One snapshot table entry.  ``icount`` is :data:`NO_ICOUNT` when there is none."""

    id_str: str
    name: str
    l1_table_offset: int
    l1_size: int
    vm_state_size: int
    date_sec: int
    date_nsec: int
    vm_clock_nsec: int
    disk_size: int
    icount: int = NO_ICOUNT
    extra_data_size: int = EXTRA.size
    unknown_extra: bytes = b""


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def read_table(read: Callable[[int, int], bytes], offset: int, count: int, disk_size: int
               ) -> tuple[list[Snapshot], int]:
    """The ``count`` entries at ``offset`` (QEMU's ``qcow2_do_read_snapshots``, with its
    messages); ``read(offset, length)`` reads the image file.  Returns the entries and the
    table's length in bytes."""
    snapshots = []
    pos = offset
    length = 0
    for i in range(count):
        pos = (pos + 7) & ~7
        length = (length + 7) & ~7
        (l1_off, l1_size, id_len, name_len, date_sec, date_nsec, clock, vm_size,
         extra_size) = ENTRY.unpack(read(pos, ENTRY.size))
        pos += ENTRY.size
        if extra_size > MAX_EXTRA_DATA:
            raise Qcow2Error(f"Too much extra metadata in snapshot table entry {i}")
        known = min(EXTRA.size, extra_size)
        extra = read(pos, known) + bytes(EXTRA.size - known)
        pos += known
        large, disk, icount = EXTRA.unpack(extra)
        if extra_size >= 8:
            vm_size = large
        if extra_size < 16:
            disk = disk_size
        if extra_size < 24:
            icount = NO_ICOUNT
        unknown = b""
        if extra_size > EXTRA.size:
            unknown = read(pos, extra_size - EXTRA.size)
            pos += extra_size - EXTRA.size
        id_str = _text(read(pos, id_len))
        pos += id_len
        name = _text(read(pos, name_len))
        pos += name_len
        length += ENTRY.size + extra_size + id_len + name_len
        if length > MAX_TABLE_BYTES:
            raise Qcow2Error("Snapshot table is too big")
        snapshots.append(Snapshot(id_str, name, l1_off, l1_size, vm_size, date_sec,
                                  date_nsec, clock, disk, icount, extra_size, unknown))
    return snapshots, pos - offset if count else 0


def encode_table(snapshots: list[Snapshot]) -> bytes:
    """The snapshot table as QEMU's ``qcow2_write_snapshots`` writes it."""
    out = bytearray()
    for sn in snapshots:
        out += bytes(-len(out) % 8)
        ident = sn.id_str.encode("utf-8", "surrogateescape")
        name = sn.name.encode("utf-8", "surrogateescape")
        extra_size = max(EXTRA.size, sn.extra_data_size)
        # A VM state too big for 32 bits reads as a disk-only snapshot in old versions.
        small = sn.vm_state_size if sn.vm_state_size <= 0xFFFFFFFF else 0
        out += ENTRY.pack(sn.l1_table_offset, sn.l1_size, len(ident), len(name),
                          sn.date_sec, sn.date_nsec, sn.vm_clock_nsec, small, extra_size)
        out += EXTRA.pack(sn.vm_state_size, sn.disk_size, sn.icount)
        out += sn.unknown_extra[:extra_size - EXTRA.size]
        out += ident + name
    if len(out) > MAX_TABLE_BYTES:
        raise OSError(27, "qcow2: snapshot table too big")  # EFBIG
    return bytes(out)


def new_id(snapshots: list[Snapshot]) -> str:
    """QEMU's ``find_new_snapshot_id``: one more than the largest numeric id."""
    best = 0
    for sn in snapshots:
        digits = ""
        for ch in sn.id_str.lstrip():
            if not ch.isdigit():
                break
            digits += ch
        best = max(best, int(digits) if digits else 0)
    return str(best + 1)


def find(snapshots: list[Snapshot], id_or_name: str) -> Snapshot | None:
    """By id first, then by name (QEMU's ``find_snapshot_by_id_or_name``)."""
    for sn in snapshots:
        if sn.id_str == id_or_name:
            return sn
    for sn in snapshots:
        if sn.name == id_or_name:
            return sn
    return None


# -- operations on an open image (called with the image's lock held) ------------------------


def check_l1(img: Qcow2Image, sn: Snapshot) -> None:
    """QEMU's ``qcow2_validate_table`` for a snapshot's L1 table, and inside the file."""
    if sn.l1_size > MAX_L1_BYTES // 8:
        raise OSError(27, "qcow2: Snapshot L1 table too large")
    end = sn.l1_table_offset + sn.l1_size * 8
    if sn.l1_table_offset % img.cs or end > img.file_size:
        raise OSError(22, "qcow2: Snapshot L1 table offset invalid")


def read_l1(img: Qcow2Image, sn: Snapshot) -> list[int]:
    check_l1(img, sn)
    raw = img._pread_exact(sn.l1_table_offset, sn.l1_size * 8)
    return list(struct.unpack(f">{sn.l1_size}Q", raw))


def update_refcounts(img: Qcow2Image, l1: list[int], addend: int,
                     l1_offset: int | None) -> list[int]:
    """QEMU's ``qcow2_update_snapshot_refcount``: add ``addend`` (-1, 0, 1) to the
    refcount of every cluster ``l1`` reaches, and set ``QCOW_OFLAG_COPIED`` exactly where a
    refcount is then 1.  Changed L2 tables are written back; with ``addend >= 0`` a changed
    L1 table is written to ``l1_offset`` (None: the active table, kept in memory too).
    Returns the L1 table with its new flags."""
    from kvmpy.block.qcow2 import Corruption

    cb = img.cluster_bits
    out = list(l1)
    modified = False
    for i, raw in enumerate(l1):
        if not raw:
            continue
        l2_off = raw & OFFSET_MASK
        if l2_off % img.cs or l2_off + img.cs > img.file_size or \
                ((l2_off >> cb) in img.meta and (l2_off >> cb) not in img.l2s):
            raise Corruption(f"L2 table offset {l2_off:#x} unaligned or invalid (L1 index: "
                             f"{i:#x})")
        table = img._l2_table(l2_off)
        changed = False
        for j in range(img.cs // 8):
            old = struct.unpack_from(">Q", table, j * 8)[0]
            entry = old & ~COPIED
            refcount = 0
            if entry & COMPRESSED:
                if addend:
                    host, length = img._compressed_range(entry)
                    img._check_range(host, length)
                    img._add_refcount_range(host, length, addend)
                refcount = 2  # compressed clusters are never modified
            elif entry & OFFSET_MASK:
                host = entry & OFFSET_MASK
                if host % img.cs:
                    raise Corruption(f"Cluster allocation offset {host:#x} unaligned "
                                     f"(L2 offset: {l2_off:#x}, L2 index: {j:#x})")
                img._check_range(host, img.cs)
                if addend:
                    img._update_refcount(host >> cb, addend)
                refcount = img._refcount(host >> cb)
            if refcount == 1:
                entry |= COPIED
            if entry != old:
                struct.pack_into(">Q", table, j * 8, entry)
                changed = True
        if changed:
            img._pwrite(table, l2_off)
        if addend:
            img._update_refcount(l2_off >> cb, addend)
        new = l2_off | (COPIED if img._refcount(l2_off >> cb) == 1 else 0)
        if new != raw:
            out[i] = new
            modified = True
    if addend >= 0 and modified:
        data = struct.pack(f">{len(out)}Q", *out)
        if l1_offset is None:
            img.l1 = out
            img._pwrite(data, img.l1_offset)
        else:
            img._pwrite(data, l1_offset)
        os.fdatasync(img.fd)
    return out


def write_table(img: Qcow2Image, snapshots: list[Snapshot]) -> None:
    """The new table in new clusters, made stable, then the header switched to it and the
    old table's clusters given back (QEMU's ``qcow2_write_snapshots``)."""
    data = encode_table(snapshots)
    offset = 0
    if data:
        clusters = -(-len(data) // img.cs)
        offset = img._alloc_contiguous(clusters)
        img._pwrite(data + bytes(clusters * img.cs - len(data)), offset)
    os.fdatasync(img.fd)
    img._pwrite(struct.pack(">IQ", len(snapshots), offset), OFF_NB_SNAPSHOTS)
    os.fdatasync(img.fd)
    old_offset, old_size = img.snapshots_offset, img.snapshots_size
    img.snapshots, img.snapshots_offset, img.snapshots_size = snapshots, offset, len(data)
    img.header.nb_snapshots, img.header.snapshots_offset = len(snapshots), offset
    if old_size and old_offset % img.cs == 0 and old_offset + old_size <= img.file_size:
        first, last = old_offset >> img.cluster_bits, (old_offset + old_size - 1) >> \
            img.cluster_bits
        for cluster in range(first, last + 1):
            img.meta.discard(cluster)
        img._release(old_offset, old_size)
    img._scan()


def create(img: Qcow2Image, name: str, vm_state_size: int, vm_clock_nsec: int,
           icount: int = NO_ICOUNT, now: float | None = None) -> Snapshot:
    """Take snapshot ``name`` of the active image; its VM state (``vm_state_size`` bytes)
    has been written with :meth:`Qcow2Image.write_vmstate`."""
    if len(img.snapshots) >= MAX_SNAPSHOTS:
        raise OSError(27, "qcow2: too many snapshots")
    stamp = time.time() if now is None else now
    l1 = list(img.l1)
    clusters = -(-(len(l1) * 8) // img.cs)
    l1_offset = img._alloc_contiguous(clusters) if l1 else 0
    copy = struct.pack(f">{len(l1)}Q", *[entry & ~COPIED for entry in l1])
    img._pwrite(copy + bytes(clusters * img.cs - len(copy)), l1_offset)
    img.meta.update(range(l1_offset >> img.cluster_bits,
                          (l1_offset >> img.cluster_bits) + clusters))
    update_refcounts(img, img.l1, 1, None)
    sn = Snapshot(new_id(img.snapshots), name, l1_offset, len(l1), vm_state_size,
                  int(stamp), int(stamp % 1 * 1e6) * 1000, vm_clock_nsec, img.size, icount)
    write_table(img, [*img.snapshots, sn])
    if vm_state_size:  # only the snapshot needs it now
        img._discard(img.vmstate_offset, vm_state_size)
    return sn


def goto(img: Qcow2Image, sn: Snapshot) -> None:
    """Make the snapshot's disk the active one (QEMU's ``qcow2_snapshot_goto``): the
    snapshot's clusters gain a reference before the active L1 table is overwritten, the old
    active clusters lose theirs after."""
    sn_l1 = read_l1(img, sn)
    if sn.disk_size != img.size:
        img._set_size(sn.disk_size)
    img._ensure_l1(max(sn.l1_size, img.l1_needed(sn.disk_size)), exact=True)
    sn_l1 += [0] * (len(img.l1) - len(sn_l1))
    update_refcounts(img, sn_l1[:sn.l1_size], 1, sn.l1_table_offset)
    img._pwrite(struct.pack(f">{len(sn_l1)}Q", *sn_l1), img.l1_offset)
    os.fdatasync(img.fd)
    old = img.l1
    img.l1 = sn_l1
    img._scan()
    update_refcounts(img, old, -1, img.l1_offset)
    update_refcounts(img, img.l1, 0, None)
    img._scan()


def delete(img: Qcow2Image, sn: Snapshot) -> None:
    """Drop snapshot ``sn`` (QEMU's ``qcow2_snapshot_delete``): out of the table first,
    then its references, then the flags of the active image."""
    sn_l1 = read_l1(img, sn)
    write_table(img, [other for other in img.snapshots if other is not sn])
    update_refcounts(img, sn_l1, -1, sn.l1_table_offset)
    if sn.l1_size:
        first = sn.l1_table_offset >> img.cluster_bits
        for cluster in range(first, first + -(-(sn.l1_size * 8) // img.cs)):
            img.meta.discard(cluster)
        img._release(sn.l1_table_offset, sn.l1_size * 8)
    update_refcounts(img, img.l1, 0, None)
    img._scan()
