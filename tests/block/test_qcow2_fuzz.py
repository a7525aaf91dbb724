"""Property tests: random write/read sequences against a bytearray model (then ``qemu-img
check``), and damaged headers and tables, which must give a one-line ConfigError at open or
an OSError at access, never another exception and never a write to another file."""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmpy.block import Qcow2Image, create_image, open_image
from kvmpy.errors import ConfigError
from tests.block.conftest import check, need_qemu_img

SIZE = 1 << 20
EXAMPLES = int(os.environ.get("KVMPY_QCOW2_FUZZ_EXAMPLES", "300"))
"""Damaged images tried per run (raise it for a longer fuzzing session)."""

ops = st.lists(st.one_of(
    st.tuples(st.just("write"), st.integers(0, SIZE - 1), st.integers(1, 70_000),
              st.integers(0, 255)),
    st.tuples(st.just("read"), st.integers(0, SIZE - 1), st.integers(1, 70_000),
              st.just(0)),
    st.tuples(st.just("reopen"), st.just(0), st.just(0), st.just(0)),
), min_size=1, max_size=25)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops, cluster_bits=st.sampled_from([9, 12, 16]),
       refcount_order=st.sampled_from([0, 4, 6]), with_backing=st.booleans())
def test_random_io_matches_a_model(ops: list[tuple[str, int, int, int]], cluster_bits: int,
                                   refcount_order: int, with_backing: bool) -> None:
    need_qemu_img()
    with tempfile.TemporaryDirectory() as tmp:
        model = bytearray(SIZE)
        backing = None
        if with_backing:
            model[:] = bytes(range(256)) * (SIZE // 256)
            Path(tmp, "base.raw").write_bytes(model)
            backing = "base.raw"
        path = os.path.join(tmp, "t.qcow2")
        create_image(path, SIZE, cluster_bits=cluster_bits, refcount_order=refcount_order,
                     backing_file=backing, backing_format="raw" if backing else None)
        image = open_image(path, "qcow2")
        try:
            for kind, offset, length, byte in ops:
                length = min(length, SIZE - offset)
                if kind == "write":
                    image.pwrite(offset, bytes([byte]) * length)
                    model[offset:offset + length] = bytes([byte]) * length
                elif kind == "read":
                    assert image.pread(offset, length) == model[offset:offset + length]
                else:
                    image.close()
                    image = open_image(path, "qcow2")
            assert image.pread(0, SIZE) == model
        finally:
            image.close()
        result = check(Path(path))
        assert result.get("leaks", 0) == 0


def _fresh_image(tmp: str) -> tuple[str, str]:
    """A small image with data in it and a backing file: (image, backing)."""
    base = os.path.join(tmp, "base.raw")
    Path(base).write_bytes(b"\x5a" * 65536)
    path = os.path.join(tmp, "f.qcow2")
    create_image(path, 1 << 20, cluster_bits=12, backing_file="base.raw",
                 backing_format="raw")
    image = open_image(path, "qcow2")
    for offset in (0, 5000, 300_000, 700_000):
        image.pwrite(offset, b"\xa5" * 3000)
    image.close()
    return path, base


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damage=st.lists(st.tuples(st.integers(0, 8 * 4096 - 1), st.integers(0, 255)),
                       min_size=1, max_size=8),
       writable=st.booleans(), where=st.lists(st.integers(0, (1 << 20) - 1), max_size=6))
def test_damaged_images_fail_cleanly(damage: list[tuple[int, int]], writable: bool,
                                     where: list[int]) -> None:
    """Bytes of the header, refcount table, refcount block, L1 and L2 tables (the first
    eight 4 KiB clusters) replaced."""
    with tempfile.TemporaryDirectory() as tmp:
        path, base = _fresh_image(tmp)
        with open(path, "r+b") as f:
            for offset, value in damage:
                f.seek(offset)
                f.write(bytes([value]))
        sums = hashlib.sha256(Path(base).read_bytes()).hexdigest()
        try:
            image = open_image(path, "qcow2", read_only=not writable)
        except ConfigError as exc:
            assert "\n" not in str(exc) and str(exc)
            return
        try:
            for offset in where:
                try:
                    image.pread(offset, 5000)
                    if writable:
                        image.pwrite(offset, b"\x77" * 5000)
                except OSError:
                    pass
        finally:
            image.close()
        assert hashlib.sha256(Path(base).read_bytes()).hexdigest() == sums
        assert sorted(os.listdir(tmp)) == ["base.raw", "f.qcow2"]
        # a damaged image may grow, but not without bound
        assert os.path.getsize(path) < 64 << 20


def test_l2_entry_into_metadata_marks_the_image_corrupt(tmp_path: Path) -> None:
    """An L2 entry that points a guest cluster at the refcount table: the write is refused
    with EIO instead of overwriting metadata, and the image is marked corrupt as QEMU
    marks it (it can then only be opened read-only)."""
    path = str(tmp_path / "c.qcow2")
    create_image(path, 1 << 20, cluster_bits=12)
    image = open_image(path, "qcow2")
    image.pwrite(0, b"\x11" * 4096)
    assert isinstance(image, Qcow2Image)
    l2 = image.l1[0] & ((1 << 56) - 512)
    image.close()
    with open(path, "r+b") as f:
        f.seek(1 * 4096)
        reftable = f.read(4096)
        f.seek(l2)
        f.write(struct.pack(">Q", (1 << 63) | 4096))  # guest cluster 0 -> the refcount table
    image = open_image(path, "qcow2")
    with pytest.raises(OSError):
        image.pwrite(0, b"\x22" * 512)
    with pytest.raises(OSError):  # every later request fails too
        image.pread(8192, 512)
    image.close()
    with open(path, "rb") as f:
        f.seek(4096)
        assert f.read(4096) == reftable
        f.seek(72)
        assert struct.unpack(">Q", f.read(8))[0] & 2  # the corrupt bit
    with pytest.raises(ConfigError, match="Image is corrupt"):
        open_image(path, "qcow2")


# -- pointers aimed where they must not point, in an image with internal snapshots ----------

CS = 4096


def _snapshot_image(tmp: str) -> tuple[str, str, dict[str, list[int]]]:
    """An image with data, a backing file and two snapshots (one with a VM state); returns
    (image, backing, the file offsets of its table entries by kind)."""
    path, base = _fresh_image(tmp)
    image = open_image(path, "qcow2")
    assert isinstance(image, Qcow2Image)
    image.write_vmstate(0, bytes(range(256)) * 40)
    image.snapshot_create("one", 10240)
    image.pwrite(4096, b"\x33" * 9000)
    image.snapshot_create("two")
    image.pwrite(600_000, b"\x44" * 100)
    l2s = [entry & 0x00FFFFFFFFFFFE00 for entry in image.l1 if entry]
    sn = image.snapshots[0]
    with open(path, "rb") as f:
        f.seek(sn.l1_table_offset)
        sn_l2s = [e & 0x00FFFFFFFFFFFE00 for e in struct.unpack(f">{sn.l1_size}Q",
                                                                    f.read(sn.l1_size * 8))]
    places = {
        "header": [24, 36, 40, 48, 56, 60, 64],
        "reftable": [image.reftable_offset + 8 * i for i in range(2)],
        "refblock": [(image.reftable[0] & ~511) + 2 * i for i in range(12)],
        "l1": [image.l1_offset + 8 * i for i in range(len(image.l1))],
        "l2": [off + 8 * i for off in l2s for i in (0, 1, 72, 146, 256)],
        "snapshot table": [image.snapshots_offset + i for i in (0, 8, 12, 14, 32, 36, 40)],
        "snapshot l1": [sn.l1_table_offset + 8 * i for i in range(sn.l1_size)],
        "snapshot l2": [off + 8 * i for off in sn_l2s if off for i in (0, 1, 256, 300)],
    }
    image.close()
    return path, base, places


def _values(file_size: int) -> st.SearchStrategy[int]:
    return st.one_of(
        st.sampled_from([0, 1, 512, CS, 2 * CS, 3 * CS, file_size, file_size + CS,
                         (file_size + CS) | (1 << 63), 1 << 40, 1 << 55, (1 << 62) | CS,
                         (1 << 63) | CS, (1 << 64) - 1, 0xFFFFFFFF, 65535]),
        st.integers(0, (1 << 64) - 1))


@settings(max_examples=EXAMPLES // 2, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), writable=st.booleans())
def test_bad_pointers_fail_cleanly(data: st.DataObject, writable: bool) -> None:
    """A table entry, header field or snapshot table field replaced by a value pointing past
    the end of the file, into metadata, unaligned, or huge; then reads, writes, snapshot
    operations and a resize: a one-line ConfigError at open or OSErrors, nothing written to
    another file, the image never grown without bound."""
    with tempfile.TemporaryDirectory() as tmp:
        path, base, places = _snapshot_image(tmp)
        size = os.path.getsize(path)
        kind = data.draw(st.sampled_from(sorted(places)))
        where = data.draw(st.sampled_from(places[kind]))
        value = data.draw(_values(size))
        width = 2 if kind == "refblock" else 4 if (kind, where) in (
            ("header", 36), ("header", 56), ("header", 60)) else 8
        with open(path, "r+b") as f:
            f.seek(where)
            f.write((value % (1 << (8 * width))).to_bytes(width, "big"))
        sums = hashlib.sha256(Path(base).read_bytes()).hexdigest()
        try:
            image = open_image(path, "qcow2", read_only=not writable)
        except ConfigError as exc:
            assert "\n" not in str(exc) and str(exc)
            return
        assert isinstance(image, Qcow2Image)
        steps = [lambda: image.pread(0, 1 << 20),
                 lambda: image.read_vmstate(0, 10240, image.find_snapshot("one")),
                 lambda: image.pwrite(4096, b"\x55" * 70000),
                 lambda: image.pwrite(590_000, b"\x66" * 20000),
                 lambda: image.snapshot_create("three"),
                 lambda: image.snapshot_goto("one"),
                 lambda: [image.snapshot_delete(sn) for sn in image.snapshots[:1]],
                 lambda: image.write_vmstate(0, b"\x77" * 5000),
                 lambda: image.resize(2 << 20),
                 image.flush]
        try:
            for step in steps:
                with contextlib.suppress(OSError):
                    step()
        finally:
            image.close()
        assert hashlib.sha256(Path(base).read_bytes()).hexdigest() == sums
        assert sorted(os.listdir(tmp)) == ["base.raw", "f.qcow2"]
        assert os.path.getsize(path) < 64 << 20


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(links=st.lists(st.integers(0, 7), min_size=1, max_size=8))
def test_backing_chains_with_loops(links: list[int]) -> None:
    """Image i names image ``links[i]`` as its backing file (a chain, or a loop back into
    it): a loop is refused in one line, a chain opens."""
    with tempfile.TemporaryDirectory() as tmp:
        n = len(links)
        names = [os.path.join(tmp, f"i{i}.qcow2") for i in range(n)]
        for i, target in enumerate(links):
            backing = f"i{target}.qcow2" if target < n else None
            create_image(names[i], 1 << 20, cluster_bits=12, backing_file=backing,
                         backing_format="qcow2" if backing else None)
        seen, at, loops = set(), 0, False
        while True:
            if at in seen:
                loops = True
                break
            seen.add(at)
            if links[at] >= n:
                break
            at = links[at]
        try:
            image = open_image(names[0], "qcow2")
        except ConfigError as exc:
            assert loops and "\n" not in str(exc) and "loops back" in str(exc), exc
            return
        assert not loops
        assert image.pread(0, 4096) == bytes(4096)
        image.close()
