"""The qcow2 image format (QEMU's docs/interop/qcow2.txt), versions 2 and 3.

A guest offset is found through two levels of tables: the L1 table (in memory, read at open)
points at L2 tables, whose 8-byte entries give the host offset of each data cluster, or say
that it is unallocated (read from the backing image, or zeros), all zeros (the v3 zero flag),
or compressed (deflate, or zstd when the header says so).  Every cluster of the file is
counted in the refcount blocks the refcount table points at.

Writes allocate clusters at the end of the file, or reuse clusters this process freed once a
flush (``fdatasync``) has made the removal of every pointer to them stable, so a cluster that
might still be referenced is never overwritten.  Metadata is written through (no dirty cache)
in an order that leaves a consistent image whenever the process dies:

* a new cluster's refcount is stored before anything points at it;
* a data cluster's contents (with the old contents copied in for a partial write: from the
  backing image, a compressed or shared cluster) are written before its L2 entry;
* a new L2 table or refcount block is written before the L1 or refcount table entry that
  points at it, and a grown refcount table before the header names it;
* refcounts are only decremented at a flush, after an ``fdatasync`` has made the removal of
  the last pointer to the cluster stable, and the cluster is reused only after a further one.

A crash can so leave leaked clusters (``qemu-img check`` reports them as leaks, and ``-r
leaks`` repairs them), never a cluster referenced without its refcount.  (A power failure may
reorder the writes since the last flush; waiting with the decrements at least keeps a cluster
still shared with a snapshot from losing a reference it has.)  A guest flush is an
``fdatasync``.  A table entry that points where it cannot (unaligned, into the header or other
metadata, past the end of the file) marks the image corrupt as QEMU does, and that request and
every later one fail with EIO; the guest sees an I/O error, the VMM goes on.

Internal snapshots (:mod:`kvmpy.block.qcow2_snapshot`) share clusters with the active image:
a cluster whose refcount is above 1 has no ``COPIED`` flag and is copied before it is written.
"""

from __future__ import annotations

import bisect
import errno
import heapq
import os
import struct
import threading
import zlib
from collections.abc import Callable

from kvmpy import log
from kvmpy.block import qcow2_snapshot as snap
from kvmpy.block.base import BlockImage
from kvmpy.block.lock import lock_image
from kvmpy.block.qcow2_header import (
    COMPRESSION_ZSTD,
    INCOMPAT_CORRUPT,
    INCOMPAT_DIRTY,
    MAX_L1_BYTES,
    OFF_AUTOCLEAR,
    OFF_INCOMPAT,
    OFF_L1,
    OFF_REFTABLE,
    OFF_SIZE,
    Header,
    Qcow2Error,
    get_refcount,
    parse_header,
    set_refcount,
)
from kvmpy.errors import ConfigError
from kvmpy.hostfile import NotAFileError, open_host_file

OFFSET_MASK = 0x00FFFFFFFFFFFE00
REFT_OFFSET_MASK = 0xFFFFFFFFFFFFFE00
COPIED = 1 << 63
COMPRESSED = 1 << 62
ZERO = 1
MAX_PENDING_RELEASES = 4096
AUTOCLEAR_SNAPSHOT_OP = 1 << 63
"""kvmpy's autoclear bit: a snapshot operation is under way (see ``_snapshot_op``)."""
CACHE_BYTES = 32 << 20
_Q = struct.Struct(">Q")

# Cluster kinds of a guest range (see _extents)
UNALLOCATED, ZEROS, DATA, COMPRESSED_DATA = range(4)


class Corruption(Exception):
    """Metadata that points where it cannot; the image gets marked corrupt."""


class Qcow2Image:
    """A qcow2 image open for the VM's lifetime, with the interface of ``RawImage``
    (``size``, ``read_only``, ``pread``/``pwrite``, ``readinto``/``writefrom``, ``flush``,
    ``close``).  ``backing`` opens the backing file (a path and a format or None); the
    default refuses images that have one.  With ``always_call_backing`` it is asked even when
    the header names none (``-blockdev``'s ``backing``), and may return None: no backing.
    The image is locked as QEMU locks it unless ``locking`` is off (``file.locking=off``);
    ``force_share`` is ``force-share=on``."""

    def __init__(self, path: str, read_only: bool = False,
                 backing: Callable[[str, str | None], BlockImage | None] | None = None,
                 *, always_call_backing: bool = False, locking: bool = True,
                 force_share: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self.fd = -1
        try:
            host = open_host_file(path, os.O_RDONLY if read_only else os.O_RDWR)
        except NotAFileError as exc:
            raise ConfigError(f"'file' driver requires '{path}' to be a regular file") from exc
        except OSError as exc:
            raise ConfigError(f"Could not open '{path}': {exc.strerror}") from exc
        self.fd = host.fd
        self.file_size = host.size
        self.backing: BlockImage | None = None
        self.lock = threading.RLock()
        self.broken = False
        self.pending_release: list[tuple[int, int]] = []
        """Host ranges whose reference goes at the next flush (see ``_release``)."""
        self.freed: list[int] = []
        """Clusters whose refcount dropped to 0: reusable after the next flush."""
        self.reusable: list[int] = []
        """A heap of freed clusters whose last pointer is stable on disk."""
        try:
            if host.kind == "file" and locking:
                lock_image(self.fd, not read_only, force_share)
            self._open(backing, always_call_backing)
        except BaseException:
            self.close()
            raise

    def _open(self, backing: Callable[[str, str | None], BlockImage | None] | None,
              always_call_backing: bool) -> None:
        try:
            h = parse_header(self.fd, not self.read_only)
        except OSError as exc:
            raise ConfigError(f"Could not read qcow2 header: {exc.strerror}") from exc
        self.header: Header = h
        self.size = h.size
        self.cluster_bits = cb = h.cluster_bits
        self.cs = 1 << cb
        self.l2_bits = cb - 3
        self.refcount_order = h.refcount_order
        self.rb_bits = cb + 3 - h.refcount_order  # log2(entries per refcount block)
        self.refcount_max = (1 << (1 << h.refcount_order)) - 1
        self.csize_shift = 62 - (cb - 8)
        self.csize_mask = (1 << (cb - 8)) - 1
        self.dirty = bool(h.incompatible & INCOMPAT_DIRTY)
        self.zstd_warned = False
        for offset, length, what in ((h.l1_table_offset, h.l1_size * 8,
                                      "Could not read L1 table"),
                                     (h.refcount_table_offset, h.refcount_table_clusters
                                      * self.cs, "Could not initialize refcount handling")):
            if offset + length > self.file_size:
                raise Qcow2Error(f"{what}: Input/output error")
        raw_l1 = self._pread_exact(h.l1_table_offset, h.l1_size * 8)
        self.l1: list[int] = list(struct.unpack(f">{h.l1_size}Q", raw_l1))
        self.l1_offset = h.l1_table_offset
        n = h.refcount_table_clusters * self.cs // 8
        self.reftable: list[int] = list(struct.unpack(f">{n}Q",
                                           self._pread_exact(h.refcount_table_offset, n * 8)))
        self.reftable_offset = h.refcount_table_offset
        self.l2_cache: dict[int, bytearray] = {}
        self.rb_cache: dict[int, bytearray] = {}
        self.cache_bytes = 0
        self.decompressed: tuple[int, bytes] | None = None
        self.snapshots: list[snap.Snapshot] = []
        self.snapshots_offset = h.snapshots_offset
        self.snapshots_size = 0
        if h.nb_snapshots:
            try:
                self.snapshots, self.snapshots_size = snap.read_table(
                    self._pread_exact, h.snapshots_offset, h.nb_snapshots, h.size)
            except OSError as exc:
                raise Qcow2Error(f"Failed to read snapshot table: {exc.strerror}") from exc
        self._scan()
        if h.backing_file or (always_call_backing and backing is not None):
            if backing is None:
                raise Qcow2Error(f"qcow2: '{self.path}' has a backing file")
            name = h.backing_file or ""
            if ":" in name.split("/", 1)[0] and not os.path.exists(name):
                raise Qcow2Error(f"Could not open backing file: backing file name '{name}' "
                                 "(a protocol or json: name) is not supported by kvmpy")
            full = name if not name or os.path.isabs(name) else \
                os.path.join(os.path.dirname(self.path), name)
            try:
                self.backing = backing(full, h.backing_format)
            except ConfigError as exc:
                raise Qcow2Error(f"Could not open backing file: {exc}") from exc
        if not self.read_only and h.version == 3 and h.autoclear:
            if h.autoclear & AUTOCLEAR_SNAPSHOT_OP and not self.dirty:
                self._finish_snapshot_op()
            # Features kvmpy does not keep up to date (bitmaps) are declared stale.
            self._pwrite(_Q.pack(0), OFF_AUTOCLEAR)
            h.autoclear = 0

    # -- file access ------------------------------------------------------------------------

    def _pread_exact(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset) if length else b""
        while len(data) < length:
            more = os.pread(self.fd, length - len(data), offset + len(data))
            if not more:
                return data + bytes(length - len(data))  # past the end: zeros
            data += more
        return data

    def _pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.pwrite(self.fd, view[done:], offset + done)
        self.file_size = max(self.file_size, offset + len(view))

    def _cache(self, cache: dict[int, bytearray], offset: int, data: bytearray) -> None:
        if self.cache_bytes + len(data) > CACHE_BYTES:
            self.l2_cache.clear()
            self.rb_cache.clear()
            self.cache_bytes = 0
        cache[offset] = data
        self.cache_bytes += len(data)

    def _scan(self) -> None:
        """The metadata clusters (for the overlap check) and where new clusters go: after
        the end of the file and after all metadata.  (A refcount past the end of the file
        is a leak from a crash: such a cluster is skipped when allocating.)"""
        cs, cb = self.cs, self.cluster_bits
        h = self.header
        meta = {0}
        meta.update(range(self.l1_offset >> cb, (self.l1_offset + len(self.l1) * 8 + cs - 1)
                          >> cb))
        meta.update(range(self.reftable_offset >> cb,
                          (self.reftable_offset >> cb) + h.refcount_table_clusters))
        # The snapshot table and the snapshots' L1 tables (those inside the file).
        if self.snapshots_size and self.snapshots_offset + self.snapshots_size \
                <= self.file_size:
            meta.update(range(self.snapshots_offset >> cb,
                              ((self.snapshots_offset + self.snapshots_size - 1) >> cb) + 1))
        for sn in self.snapshots:
            end = sn.l1_table_offset + sn.l1_size * 8
            if sn.l1_size and not sn.l1_table_offset % cs and end <= self.file_size:
                meta.update(range(sn.l1_table_offset >> cb, ((end - 1) >> cb) + 1))
        # A refcount block or L2 table must be inside the file and not sit on other
        # metadata; one that does is left out, and using it is a corruption.
        refblocks = set()
        for entry in self.reftable:
            off = entry & REFT_OFFSET_MASK
            if off and not off % cs and off < self.file_size and (off >> cb) not in meta:
                refblocks.add(off >> cb)
        meta |= refblocks
        l2s = set()
        for entry in self.l1:
            off = entry & OFFSET_MASK
            if off and not off % cs and off < self.file_size and (off >> cb) not in meta:
                l2s.add(off >> cb)
        meta |= l2s
        self.l2s, self.refblocks = l2s, refblocks
        self.meta = meta
        self.next_free = max(getattr(self, "next_free", 0), -(-self.file_size // cs),
                             max(meta) + 1)

    # -- corruption -------------------------------------------------------------------------

    def _corrupt(self, message: str) -> OSError:
        """Mark the image corrupt (QEMU's ``qcow2_signal_corruption``); every later request
        fails.  Returns the EIO to raise."""
        if not self.broken:
            self.broken = True
            log.stderr_line(f"kvmpy: qcow2: Marking image as corrupt: {message}; further "
                            "corruption events will be suppressed")
            if not self.read_only:
                try:
                    flags = self.header.incompatible | INCOMPAT_CORRUPT
                    if self.header.version == 3:
                        self._pwrite(_Q.pack(flags), OFF_INCOMPAT)
                        os.fdatasync(self.fd)
                except OSError:
                    pass
        log.guest_error(f"qcow2 {self.path}: {message}")
        return OSError(errno.EIO, f"qcow2: {message}")

    def _check_cluster(self, offset: int, what: str, write: bool) -> None:
        if offset % self.cs:
            raise Corruption(f"{what} offset {offset:#x} unaligned")
        if (offset >> self.cluster_bits) in self.meta:
            raise Corruption(f"{what} at {offset:#x} overlaps with metadata")
        if write and offset >= self.file_size:
            raise Corruption(f"{what} at {offset:#x} is past the end of the image file")

    # -- refcounts --------------------------------------------------------------------------

    def _refblock(self, index: int) -> tuple[int, bytearray]:
        """(offset, contents) of the refcount block covering block index ``index``,
        allocating it if there is none."""
        if index >= len(self.reftable):
            self._grow_reftable(index)
        off = self.reftable[index] & REFT_OFFSET_MASK
        if not off:
            off = self._new_refblock(index)
        block = self.rb_cache.get(off)
        if block is None:
            if (off >> self.cluster_bits) not in self.refblocks or off % self.cs \
                    or off >= self.file_size:
                raise Corruption(f"refcount block {index} offset {off:#x} invalid")
            block = bytearray(self._pread_exact(off, self.cs))
            self._cache(self.rb_cache, off, block)
        return off, block

    def _refcount(self, cluster: int) -> int:
        index = cluster >> self.rb_bits
        if index >= len(self.reftable) or not self.reftable[index] & REFT_OFFSET_MASK:
            return 0
        _, block = self._refblock(index)
        return get_refcount(block, cluster & ((1 << self.rb_bits) - 1), self.refcount_order)

    def _update_refcount(self, cluster: int, delta: int) -> None:
        index = cluster >> self.rb_bits
        if delta < 0 and (index >= len(self.reftable)
                          or not self.reftable[index] & REFT_OFFSET_MASK):
            if self.dirty:
                return
            # Nothing counts it: never allocate refcount structures to take a count down.
            raise Corruption(f"refcount of cluster {cluster} would become {delta}")
        off, block = self._refblock(index)
        slot = cluster & ((1 << self.rb_bits) - 1)
        value = get_refcount(block, slot, self.refcount_order) + delta
        if value < 0 or value > self.refcount_max:
            if self.dirty:  # lazy refcounts: stale counts are expected, qemu repairs them
                return
            if value > self.refcount_max:  # more references than the width can count
                raise OSError(errno.ERANGE, f"qcow2: refcount of cluster {cluster} would "
                              f"exceed {self.refcount_max}")
            raise Corruption(f"refcount of cluster {cluster} would become {value}")
        start, end = set_refcount(block, slot, self.refcount_order, value)
        self._pwrite(block[start:end], off + start)
        if value == 0:
            self.freed.append(cluster)
            self.meta.discard(cluster)
            self.l2s.discard(cluster)

    def _new_refblock(self, index: int) -> int:
        """Allocate the refcount block for block index ``index`` (its table entry is 0)."""
        cluster = self._take()
        off = cluster << self.cluster_bits
        block = bytearray(self.cs)
        if cluster >> self.rb_bits == index:  # it counts itself
            set_refcount(block, cluster & ((1 << self.rb_bits) - 1), self.refcount_order, 1)
            self._pwrite(block, off)
        else:
            self._pwrite(block, off)
            self._update_refcount(cluster, 1)
        self.meta.add(cluster)
        self.refblocks.add(cluster)
        self._cache(self.rb_cache, off, block)
        self.reftable[index] = off
        self._pwrite(_Q.pack(off), self.reftable_offset + index * 8)
        return off

    def _grow_reftable(self, index: int) -> None:
        """A refcount table with room for block ``index``: a new table and the refcount
        blocks for every new index, placed at the end and counting themselves, then the
        header switched to it (QEMU's ``qcow2_refcount_area``)."""
        old_n = len(self.reftable)
        start = self.next_free
        per_cluster = self.cs // 8
        hi = max(index, start >> self.rb_bits)
        while True:
            entries = max(hi + 1, old_n * 2)
            entries = -(-entries // per_cluster) * per_cluster
            table_clusters = entries // per_cluster
            end = start + table_clusters + (hi - old_n + 1)
            new_hi = max(hi, (end - 1) >> self.rb_bits)
            if new_hi == hi:
                break
            hi = new_hi
        if entries * 8 > 8 << 20:
            raise OSError(errno.EFBIG, "qcow2: refcount table too large")
        table = self.reftable + [0] * (entries - old_n)
        mask = (1 << self.rb_bits) - 1
        blocks_at = start + table_clusters
        for i in range(old_n, hi + 1):
            cluster = blocks_at + i - old_n
            block = bytearray(self.cs)
            for c in range(max(start, i << self.rb_bits), min(end, (i + 1) << self.rb_bits)):
                set_refcount(block, c & mask, self.refcount_order, 1)
            off = cluster << self.cluster_bits
            self._pwrite(block, off)
            self._cache(self.rb_cache, off, block)
            table[i] = off
            self.meta.add(cluster)
            self.refblocks.add(cluster)
        new_off = start << self.cluster_bits
        self._pwrite(struct.pack(f">{entries}Q", *table), new_off)
        self._pwrite(struct.pack(">QI", new_off, table_clusters), OFF_REFTABLE)
        old_off, old_clusters = self.reftable_offset, -(-old_n * 8 // self.cs)
        self.reftable, self.reftable_offset = table, new_off
        self.header.refcount_table_clusters = table_clusters
        self.meta.update(range(start, start + table_clusters))
        self.next_free = end
        for c in range(old_off >> self.cluster_bits, (old_off >> self.cluster_bits)
                       + old_clusters):
            self.meta.discard(c)
            if not self.dirty:
                self._update_refcount(c, -1)

    def _take(self) -> int:
        """A free cluster: one freed before the last flush, else the next one at the end
        of the image (skipping leaked ones)."""
        while self.reusable:
            cluster = heapq.heappop(self.reusable)
            if cluster not in self.meta and not self._refcount(cluster):
                offset = cluster << self.cluster_bits
                for cache in (self.l2_cache, self.rb_cache):
                    if cache.pop(offset, None) is not None:
                        self.cache_bytes -= self.cs
                return cluster
        return self._take_end()

    def _take_end(self) -> int:
        """The next free cluster at the end of the image (skipping leaked ones)."""
        while True:
            cluster = self.next_free
            self.next_free += 1
            if not self._refcount(cluster):
                return cluster

    def _alloc(self) -> int:
        """A new cluster at the end of the image, its refcount 1 on disk; its offset."""
        cluster = self._take()
        self._update_refcount(cluster, 1)
        return cluster << self.cluster_bits

    def _alloc_contiguous(self, clusters: int) -> int:
        """``clusters`` consecutive new clusters, refcounts 1 (one may be a reused one,
        more are taken at the end); the offset."""
        if clusters == 1:
            return self._alloc()
        start = self.next_free
        while True:
            busy = [c for c in range(start, start + clusters) if self._refcount(c)]
            if not busy:
                break
            start = busy[-1] + 1
        self.next_free = start + clusters
        for cluster in range(start, start + clusters):
            self._update_refcount(cluster, 1)
        return start << self.cluster_bits

    def _release(self, offset: int, length: int) -> None:
        """Drop one reference to the host clusters of ``[offset, offset + length)`` at the
        next flush, once the pointer that went away is stable on disk (a crash before
        leaks the clusters, never leaves a pointer to a cluster counted too low)."""
        if not self.dirty:
            self.pending_release.append((offset, length))
            if len(self.pending_release) >= MAX_PENDING_RELEASES:  # a guest that never flushes
                self._sync()

    def _apply_releases(self) -> None:
        pending, self.pending_release = self.pending_release, []
        for offset, length in pending:
            for c in range(offset >> self.cluster_bits,
                           ((offset + length - 1) >> self.cluster_bits) + 1):
                self._update_refcount(c, -1)

    def _sync(self) -> None:
        """``fdatasync``, then the releases it made safe, made stable in turn; the
        clusters that freed become reusable."""
        os.fdatasync(self.fd)
        if self.pending_release:
            self._apply_releases()
            os.fdatasync(self.fd)
        for cluster in self.freed:
            heapq.heappush(self.reusable, cluster)
        self.freed.clear()

    # -- L1 and L2 --------------------------------------------------------------------------

    def _l2_table(self, off: int) -> bytearray:
        table = self.l2_cache.get(off)
        if table is None:
            table = bytearray(self._pread_exact(off, self.cs))
            self._cache(self.l2_cache, off, table)
        return table

    def _l2_for_read(self, l1_index: int) -> int:
        """The offset of the L2 table for ``l1_index`` (0: none)."""
        if l1_index >= len(self.l1):
            return 0
        off = self.l1[l1_index] & OFFSET_MASK
        if off and ((off >> self.cluster_bits) not in self.l2s or off % self.cs
                    or off >= self.file_size):
            raise Corruption(f"L2 table offset {off:#x} unaligned or overlapping "
                             f"(L1 index: {l1_index:#x})")
        return off

    def _l2_for_write(self, l1_index: int) -> int:
        """The offset of a writable L2 table for ``l1_index``: allocated if missing,
        copied if shared with an internal snapshot (no COPIED flag)."""
        if l1_index >= len(self.l1):
            raise Corruption(f"write past the L1 table (index {l1_index:#x})")
        entry = self.l1[l1_index]
        old = self._l2_for_read(l1_index)
        if old and entry & COPIED:
            return old
        new = self._alloc()
        contents = self._l2_table(old) if old else bytearray(self.cs)
        copy = bytearray(contents)
        self._pwrite(copy, new)
        self.meta.add(new >> self.cluster_bits)
        self.l2s.add(new >> self.cluster_bits)
        self._cache(self.l2_cache, new, copy)
        self.l1[l1_index] = new | COPIED
        self._pwrite(_Q.pack(new | COPIED), self.l1_offset + l1_index * 8)
        if old:
            self._release(old, self.cs)  # still in a snapshot's L1 table: stays metadata
        return new

    def _entry(self, guest: int) -> tuple[int, int, int]:
        """(L2 table offset or 0, index in it, entry) of the cluster at ``guest``."""
        cluster = guest >> self.cluster_bits
        l1_index, l2_index = cluster >> self.l2_bits, cluster & ((1 << self.l2_bits) - 1)
        table_off = self._l2_for_read(l1_index)
        if not table_off:
            return 0, l2_index, 0
        return table_off, l2_index, _Q.unpack_from(self._l2_table(table_off), l2_index * 8)[0]

    def _kind(self, entry: int) -> tuple[int, int]:
        """(kind, host offset) of an L2 entry."""
        if entry & COMPRESSED:
            return COMPRESSED_DATA, entry & ((1 << self.csize_shift) - 1)
        host = entry & OFFSET_MASK
        if entry & ZERO:
            return ZEROS, host
        if not host:
            return UNALLOCATED, 0
        self._check_cluster(host, "data cluster", False)
        return DATA, host

    def _decompress(self, entry: int) -> bytes:
        host = entry & ((1 << self.csize_shift) - 1)
        if self.decompressed is not None and self.decompressed[0] == entry:
            return self.decompressed[1]
        sectors = ((entry >> self.csize_shift) & self.csize_mask) + 1
        length = sectors * 512 - (host & 511)
        if host >= self.file_size or (host >> self.cluster_bits) in self.meta:
            raise Corruption(f"compressed cluster at {host:#x} is outside the image data")
        data = self._pread_exact(host, length)
        try:
            if self.header.compression_type == COMPRESSION_ZSTD:
                try:
                    out = _zstd_decompress(data, self.cs)
                except OSError as exc:
                    if not self.zstd_warned:
                        self.zstd_warned = True
                        log.stderr_line(f"kvmpy: {self.path}: {exc.strerror}; reads of "
                                        "compressed clusters fail")
                    raise
            else:
                inflater = zlib.decompressobj(-15)
                out = inflater.decompress(data, self.cs)
        except zlib.error as exc:
            raise OSError(errno.EIO, f"qcow2: bad compressed cluster at {host:#x}: {exc}") \
                from exc
        if len(out) != self.cs:
            raise OSError(errno.EIO, f"qcow2: compressed cluster at {host:#x} is short")
        self.decompressed = (entry, out)
        return out

    # -- reads ------------------------------------------------------------------------------

    def _read(self, offset: int, buffers: list[memoryview]) -> None:
        """Fill ``buffers`` (consecutive) from guest offset ``offset``; host-contiguous data
        clusters go in one ``preadv``."""
        starts = []
        length = 0
        for buf in buffers:
            starts.append(length)
            length += len(buf)
        pos = 0
        while pos < length:
            guest = offset + pos
            inner = guest & (self.cs - 1)
            n = min(self.cs - inner, length - pos)
            _, _, entry = self._entry(guest)
            kind, host = self._kind(entry)
            if kind == DATA:
                while pos + n < length:
                    _, _, nxt = self._entry(offset + pos + n)
                    nkind, nhost = self._kind(nxt)
                    if nkind != DATA or nhost != host + inner + n:
                        break
                    n += min(self.cs, length - pos - n)
            out = _slices(buffers, starts, pos, n)
            if kind == DATA:
                got = _preadv_all(self.fd, out, host + inner)
                if got < n:
                    _fill(out, got, bytes(n - got))
            elif kind == COMPRESSED_DATA:
                _fill(out, 0, self._decompress(entry)[inner:inner + n])
            elif kind == UNALLOCATED and self.backing is not None:
                self._backing_read(guest, out)
            else:
                _fill(out, 0, bytes(n))
            pos += n

    def _backing_read(self, offset: int, out: list[memoryview]) -> None:
        total = sum(map(len, out))
        avail = 0 if self.backing is None else max(0, min(total, self.backing.size - offset))
        if avail and self.backing is not None:
            self.backing.readinto(offset, _slices(out, _starts(out), 0, avail))
        if avail < total:
            _fill(out, avail, bytes(total - avail))

    # -- writes -----------------------------------------------------------------------------

    def _write(self, offset: int, data: memoryview) -> None:
        pos, length = 0, len(data)
        while pos < length:
            guest = offset + pos
            inner = guest & (self.cs - 1)
            n = min(self.cs - inner, length - pos)
            _, _, entry = self._entry(guest)
            kind, host = self._kind(entry)
            if kind == DATA and entry & COPIED:  # in place; contiguous clusters at once
                self._check_cluster(host, "data cluster", True)
                while pos + n < length:
                    _, _, nxt = self._entry(offset + pos + n)
                    nkind, nhost = self._kind(nxt)
                    if nkind != DATA or not nxt & COPIED or nhost != host + inner + n:
                        break
                    self._check_cluster(nhost, "data cluster", True)
                    n += min(self.cs, length - pos - n)
                self._pwrite(data[pos:pos + n], host + inner)
            else:
                self._write_cluster(guest - inner, inner, data[pos:pos + n])
            pos += n

    def _write_cluster(self, base: int, inner: int, data: memoryview) -> None:
        _, _, entry = self._entry(base)
        kind, host = self._kind(entry)
        if kind == DATA and entry & COPIED:
            self._check_cluster(host, "data cluster", True)
            self._pwrite(data, host + inner)
            return
        if kind == ZEROS and host and entry & COPIED:  # preallocated zeros: in place
            self._check_cluster(host, "data cluster", True)
            cluster = bytearray(self.cs)
            cluster[inner:inner + len(data)] = data
            self._pwrite(cluster, host)
            self._set_l2(base, host | COPIED)
            return
        full = inner == 0 and len(data) == self.cs
        old_contents: bytes | None = None
        if not full:
            if kind == DATA:
                old_contents = self._pread_exact(host, self.cs)
            elif kind == COMPRESSED_DATA:
                old_contents = self._decompress(entry)
            elif kind == UNALLOCATED and self.backing is not None \
                    and base < self.backing.size:
                buf = bytearray(self.cs)
                self._backing_read(base, [memoryview(buf)])
                old_contents = bytes(buf)
        new = self._alloc()
        if old_contents is None and not full and new + self.cs <= self.file_size:
            old_contents = bytes(self.cs)  # a reused cluster: its old bytes must go
        if old_contents is None:
            self._pwrite(data, new + inner)
            if new + self.cs > self.file_size:  # the whole cluster inside the file
                os.ftruncate(self.fd, new + self.cs)
                self.file_size = new + self.cs
        else:
            cluster = bytearray(old_contents)
            cluster[inner:inner + len(data)] = data
            self._pwrite(cluster, new)
        self._set_l2(base, new | COPIED)
        if kind == DATA or (kind == ZEROS and host):
            self._release(host, self.cs)
        elif kind == COMPRESSED_DATA:
            coff = entry & ((1 << self.csize_shift) - 1)
            sectors = ((entry >> self.csize_shift) & self.csize_mask) + 1
            self._release(coff, sectors * 512 - (coff & 511))

    def _set_l2(self, guest: int, entry: int) -> None:
        cluster = guest >> self.cluster_bits
        l1_index, l2_index = cluster >> self.l2_bits, cluster & ((1 << self.l2_bits) - 1)
        table_off = self._l2_for_write(l1_index)
        table = self._l2_table(table_off)
        _Q.pack_into(table, l2_index * 8, entry)
        self._pwrite(table[l2_index * 8:l2_index * 8 + 8], table_off + l2_index * 8)

    # -- the image interface ----------------------------------------------------------------

    def _guard(self, fn: Callable[[], None]) -> None:
        with self.lock:
            if self.broken:
                raise OSError(errno.EIO, "qcow2: image is marked corrupt")
            try:
                fn()
            except Corruption as exc:
                raise self._corrupt(str(exc)) from None
            except OSError as exc:
                log.guest_error(f"qcow2 {self.path}: I/O error: {exc}")
                raise

    def readinto(self, offset: int, buffers: list[memoryview]) -> None:
        """Fill ``buffers`` (guest RAM) from guest offset ``offset``."""
        views = [buf if buf.format == "B" else buf.cast("B") for buf in buffers]
        self._guard(lambda: self._read(offset, views))

    def writefrom(self, offset: int, buffers: list[memoryview]) -> None:
        """Write ``buffers`` (guest RAM) at guest offset ``offset``."""
        if self.read_only:
            raise OSError(errno.EROFS, "read-only image")
        data = memoryview(b"".join(buffers)) if len(buffers) != 1 else buffers[0]
        self._guard(lambda: self._write(offset, data))

    def pread(self, offset: int, length: int) -> bytes:
        out = bytearray(length)
        self.readinto(offset, [memoryview(out)])
        return bytes(out)

    def pwrite(self, offset: int, data: bytes) -> None:
        self.writefrom(offset, [memoryview(data)])

    def resize(self, size: int) -> None:
        """Grow the virtual disk to ``size`` bytes (QEMU's ``qcow2_co_truncate`` without
        preallocation).  A bigger L1 table is written at the end of the file first, the
        header then points at it, and the size changes last; shrinking is refused."""
        if self.read_only:
            raise OSError(errno.EROFS, "read-only image")
        if size < self.size:
            raise OSError(errno.ENOTSUP, "qcow2: shrinking an image is not supported")
        if self.snapshots and self.header.version < 3:
            raise OSError(errno.ENOTSUP, "Can't resize a v2 image which has snapshots")
        self.discard_vmstate()  # what the disk grows over must read as zeros
        self._guard(lambda: self._grow_l1(size))

    def _grow_l1(self, size: int) -> None:
        self._ensure_l1(self.l1_needed(size), exact=False)
        self._set_size(size)

    def l1_needed(self, size: int) -> int:
        """L1 entries a disk of ``size`` bytes needs (QEMU's ``size_to_l1``)."""
        return -(-size // (1 << (self.cluster_bits + self.l2_bits)))

    def _set_size(self, size: int) -> None:
        self._pwrite(struct.pack(">Q", size), OFF_SIZE)
        self.size = self.header.size = size

    def _ensure_l1(self, needed: int, exact: bool) -> None:
        """An active L1 table of at least ``needed`` entries (QEMU's
        ``qcow2_grow_l1_table``): the bigger table is written into new clusters first, the
        header then points at it, and the old table's clusters are given back."""
        if needed <= len(self.l1):
            return
        entries = needed if exact else max(needed, len(self.l1) * 3 // 2)
        if entries * 8 > MAX_L1_BYTES:
            raise OSError(errno.EFBIG, "qcow2: L1 table too large")
        clusters = -(-(entries * 8) // self.cs)
        new_off = self._alloc_contiguous(clusters)
        start = new_off >> self.cluster_bits
        table = self.l1 + [0] * (entries - len(self.l1))
        self._pwrite(struct.pack(f">{entries}Q", *table).ljust(clusters * self.cs, b"\0"),
                     new_off)
        os.fdatasync(self.fd)
        self._pwrite(struct.pack(">IQ", entries, new_off), OFF_L1)
        old_off, old_clusters = self.l1_offset, -(-(len(self.l1) * 8) // self.cs)
        self.l1, self.l1_offset = table, new_off
        self.header.l1_size, self.header.l1_table_offset = entries, new_off
        self.meta.update(range(start, start + clusters))
        for c in range(old_off >> self.cluster_bits,
                       (old_off >> self.cluster_bits) + old_clusters):
            self.meta.discard(c)
            self._release(c << self.cluster_bits, self.cs)

    def flush(self) -> None:
        """``fdatasync`` (see :meth:`_sync`); a guest flush."""
        if self.read_only or self.fd < 0:
            return
        with self.lock:
            if self.broken:
                self.pending_release.clear()
                os.fdatasync(self.fd)
                return
            self._guard(self._sync)

    # -- internal snapshots and the VM state area -------------------------------------------

    @property
    def vmstate_offset(self) -> int:
        """Where the VM state starts: the first L1 index the disk does not use."""
        return self.l1_needed(self.size) << (self.cluster_bits + self.l2_bits)

    def write_vmstate(self, pos: int, data: bytes | bytearray | memoryview) -> None:
        """Write VM state bytes at ``pos`` of the VM state area (through the active L1
        table, grown as needed)."""
        if self.read_only:
            raise OSError(errno.EROFS, "read-only image")
        start = self.vmstate_offset + pos
        view = memoryview(data).cast("B")

        def write() -> None:
            per_l1 = self.cluster_bits + self.l2_bits
            self._ensure_l1(((start + len(view) - 1) >> per_l1) + 1, exact=False)
            self._write(start, view)
        if len(view):
            self._guard(write)

    def discard_vmstate(self) -> None:
        """Empty the active image's VM state area (what a failed save, or a snapshot
        gone back to, left there)."""
        if self.read_only:
            raise OSError(errno.EROFS, "read-only image")

        def discard() -> None:
            per_l1 = 1 << (self.cluster_bits + self.l2_bits)
            for index in range(self.l1_needed(self.size), len(self.l1)):
                if self.l1[index] & OFFSET_MASK:
                    self._discard(index * per_l1, per_l1)
        self._guard(discard)

    def read_vmstate(self, pos: int, length: int, sn: snap.Snapshot | None = None) -> bytes:
        """``length`` bytes at ``pos`` of the VM state area: the active image's, or that
        of snapshot ``sn`` (read through its own L1 table, the active image unchanged)."""
        out = bytearray(length)
        self.readinto_vmstate(pos, memoryview(out), sn)
        return bytes(out)

    def readinto_vmstate(self, pos: int, out: memoryview, sn: snap.Snapshot | None = None
                         ) -> None:
        """:meth:`read_vmstate` into ``out`` (bytes), without a copy in between."""
        if sn is None:
            self._guard(lambda: self._read(self.vmstate_offset + pos, [out]))
        else:
            self._guard(lambda: self._read_snapshot(sn, self.vmstate_offset + pos, out))

    def _read_snapshot(self, sn: snap.Snapshot, offset: int, out: memoryview) -> None:
        l1 = snap.read_l1(self, sn)
        per_l1 = self.cluster_bits + self.l2_bits
        pos = 0
        while pos < len(out):
            guest = offset + pos
            inner = guest & (self.cs - 1)
            n = min(self.cs - inner, len(out) - pos)
            l1_index = guest >> per_l1
            l2_off = l1[l1_index] & OFFSET_MASK if l1_index < len(l1) else 0
            kind, entry, host = UNALLOCATED, 0, 0
            if l2_off:
                self._check_l2(l2_off, l1_index)
                index = (guest >> self.cluster_bits) & ((1 << self.l2_bits) - 1)
                entry = _Q.unpack_from(self._l2_table(l2_off), index * 8)[0]
                kind, host = self._kind(entry)
            piece = out[pos:pos + n]
            if kind == DATA:
                got = _preadv_all(self.fd, [piece], host + inner)
                piece[got:] = bytes(n - got)
            elif kind == COMPRESSED_DATA:
                piece[:] = self._decompress(entry)[inner:inner + n]
            else:
                piece[:] = bytes(n)
            pos += n

    def _check_l2(self, off: int, l1_index: int) -> None:
        """An L2 table of a snapshot: aligned, inside the file, on no other metadata."""
        cluster = off >> self.cluster_bits
        if off % self.cs or off + self.cs > self.file_size or \
                (cluster in self.meta and cluster not in self.l2s):
            raise Corruption(f"L2 table offset {off:#x} unaligned or overlapping "
                             f"(L1 index: {l1_index:#x})")

    def _check_range(self, offset: int, length: int) -> None:
        """Host clusters a table points at: starting inside the file (the last one may end
        past it, as compressed data and a last data cluster may) and no metadata."""
        if ((offset + length - 1) >> self.cluster_bits) << self.cluster_bits \
                >= self.file_size:
            raise Corruption(f"cluster at {offset:#x} is past the end of the image file")
        for cluster in range(offset >> self.cluster_bits,
                             ((offset + length - 1) >> self.cluster_bits) + 1):
            if cluster in self.meta:
                raise Corruption(f"cluster at {offset:#x} overlaps with metadata")

    def _compressed_range(self, entry: int) -> tuple[int, int]:
        host = entry & ((1 << self.csize_shift) - 1)
        sectors = ((entry >> self.csize_shift) & self.csize_mask) + 1
        return host, sectors * 512 - (host & 511)

    def _add_refcount_range(self, offset: int, length: int, addend: int) -> None:
        for cluster in range(offset >> self.cluster_bits,
                             ((offset + length - 1) >> self.cluster_bits) + 1):
            self._update_refcount(cluster, addend)

    def _discard(self, offset: int, length: int) -> None:
        """Drop the active image's clusters in ``[offset, offset + length)`` (whole
        clusters): zero clusters in v3, unallocated in v2, as QEMU's discard leaves them."""
        end = offset + length
        guest = offset - offset % self.cs
        while guest < end:
            _, _, entry = self._entry(guest)
            if entry & (OFFSET_MASK | COMPRESSED):
                self._set_l2(guest, ZERO if self.header.version >= 3 else 0)
                if entry & COMPRESSED:
                    self._release(*self._compressed_range(entry))
                else:
                    self._release(entry & OFFSET_MASK, self.cs)
            guest += self.cs

    def _snapshot_op(self, fn: Callable[[], None]) -> None:
        if self.read_only:
            raise OSError(errno.EROFS, "read-only image")
        if self.refcount_max < 2:
            raise OSError(errno.ERANGE, "qcow2: 1-bit refcounts cannot count a snapshot")
        if self.dirty:
            raise OSError(errno.ENOTSUP, "qcow2: snapshots of an image with lazy refcounts "
                          "need 'qemu-img check -r all' first")

        def marked() -> None:
            self._sync()  # refcounts up to date before they are read and changed
            # Between the refcount passes of a snapshot operation the COPIED flags lag
            # behind the refcounts; a crash there is repaired when kvmpy next opens the
            # image (v3: a kvmpy autoclear bit, which QEMU clears and ignores).
            if self.header.version == 3:
                self._pwrite(_Q.pack(self.header.autoclear | AUTOCLEAR_SNAPSHOT_OP),
                             OFF_AUTOCLEAR)
                os.fdatasync(self.fd)
            fn()
            if self.header.version == 3:
                os.fdatasync(self.fd)
                self._pwrite(_Q.pack(self.header.autoclear), OFF_AUTOCLEAR)
        self._guard(marked)

    def _finish_snapshot_op(self) -> None:
        """The COPIED flags of the active image set from the refcounts, after a snapshot
        operation that did not end (QEMU's ``qcow2_update_snapshot_refcount(..., 0)``)."""
        log.stderr_line(f"kvmpy: qcow2: '{self.path}': repairing the COPIED flags an "
                        "interrupted snapshot operation left")
        try:
            snap.update_refcounts(self, self.l1, 0, None)
        except Corruption as exc:
            raise Qcow2Error(f"qcow2: '{self.path}': {exc}") from None
        except OSError as exc:
            raise Qcow2Error(f"qcow2: '{self.path}': repairing the COPIED flags failed: "
                             f"{exc.strerror or exc}") from None

    def find_snapshot(self, id_or_name: str) -> snap.Snapshot | None:
        """By id, then by name (as ``qemu-img snapshot`` looks them up)."""
        return snap.find(self.snapshots, id_or_name)

    def snapshot_named(self, name: str) -> snap.Snapshot | None:
        """By name only (as the monitor's ``savevm``/``loadvm``/``delvm`` look them up)."""
        return next((sn for sn in self.snapshots if sn.name == name), None)

    def snapshot_create(self, name: str, vm_state_size: int = 0, vm_clock_nsec: int = 0,
                        icount: int = snap.NO_ICOUNT) -> snap.Snapshot:
        """Take an internal snapshot; a VM state, if any, was written with
        :meth:`write_vmstate` first (``vm_state_size`` bytes)."""
        made: list[snap.Snapshot] = []
        self._snapshot_op(lambda: made.append(snap.create(self, name, vm_state_size,
                                                          vm_clock_nsec, icount)))
        return made[0]

    def snapshot_goto(self, snapshot: str | snap.Snapshot) -> None:
        """The disk as a snapshot (given by id or name, or found before) left it
        (``qemu-img snapshot -a``)."""
        sn = self.find_snapshot(snapshot) if isinstance(snapshot, str) else snapshot
        if sn is None or sn not in self.snapshots:
            raise OSError(errno.ENOENT, f"qcow2: no snapshot '{snapshot}'")
        self._snapshot_op(lambda: snap.goto(self, sn))

    def snapshot_delete(self, sn: snap.Snapshot) -> None:
        self._snapshot_op(lambda: snap.delete(self, sn))

    def close(self) -> None:
        if self.fd >= 0 and not self.read_only:
            try:
                self.flush()
            except OSError as exc:
                log.stderr_line(f"kvmpy: qcow2: flushing '{self.path}' failed: {exc.strerror}")
        if self.backing is not None:
            self.backing.close()
            self.backing = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _starts(buffers: list[memoryview]) -> list[int]:
    starts, pos = [], 0
    for buf in buffers:
        starts.append(pos)
        pos += len(buf)
    return starts


def _slices(buffers: list[memoryview], starts: list[int], pos: int, n: int
            ) -> list[memoryview]:
    """The pieces of ``buffers`` (starting at ``starts``) that hold bytes
    ``[pos, pos + n)`` of their concatenation."""
    out = []
    i = bisect.bisect_right(starts, pos) - 1
    end = pos + n
    while pos < end and i < len(buffers):
        buf = buffers[i]
        lo = pos - starts[i]
        hi = min(len(buf), end - starts[i])
        if hi > lo:
            out.append(buf[lo:hi])
            pos = starts[i] + hi
        i += 1
    return out


def _fill(out: list[memoryview], skip: int, data: bytes) -> None:
    """Copy ``data`` into ``out`` (viewed as one range) from byte ``skip`` on."""
    done = 0
    for view in out:
        if skip >= len(view):
            skip -= len(view)
            continue
        n = min(len(view) - skip, len(data) - done)
        view[skip:skip + n] = data[done:done + n]
        done += n
        skip = 0
        if done >= len(data):
            return


def _preadv_all(fd: int, out: list[memoryview], offset: int) -> int:
    """``preadv`` until everything is read or the file ends; returns the bytes read."""
    total = sum(map(len, out))
    done = 0
    while done < total:
        rest = out if not done else _slices(out, _starts(out), done, total - done)
        got = os.preadv(fd, rest[:1024], offset + done)
        if got <= 0:
            break
        done += got
    return done


def _zstd_decompress(data: bytes, size: int) -> bytes:
    try:
        import zstandard  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise OSError(errno.ENOTSUP, "qcow2: zstd-compressed clusters need the Python "
                      "'zstandard' module") from None
    out: bytes = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return out[:size]
