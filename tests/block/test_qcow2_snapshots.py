"""Internal snapshots written by kvmpy, checked with QEMU's tools: ``qemu-img snapshot -l``
lists them, ``qemu-img check`` finds no error and no leak, ``qemu-img snapshot -a`` and
``qemu-img convert -l`` see the disk each snapshot kept; and snapshots ``qemu-img`` made are
reverted to and deleted by kvmpy."""

from __future__ import annotations

import errno
import os
import random
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmpy.block import Qcow2Image, create_image, open_image
from kvmpy.block.qcow2_snapshot import NO_ICOUNT
from kvmpy.errors import ConfigError
from tests.block.conftest import check, create, qemu_img, qemu_io

MiB = 1 << 20


def _open(path: Path) -> Qcow2Image:
    image = open_image(str(path), "qcow2")
    assert isinstance(image, Qcow2Image)
    return image


def _clean(path: Path) -> None:
    """No corruption and no leak."""
    result = check(path)
    assert result.get("leaks", 0) == 0, result


def _snapshot_contents(path: Path, name: str, tmp: Path) -> bytes:
    out = tmp / f"{name}.raw"
    qemu_img("convert", "-l", f"snapshot.name={name}", "-O", "raw", path, out)
    return out.read_bytes()


@pytest.mark.parametrize(("version", "cluster_bits", "refcount_order"),
                         [(3, 16, 4), (2, 16, 4), (3, 9, 6), (3, 12, 2)],
                         ids=["v3-64k", "v2-64k", "v3-512-rc64", "v3-4k-rc4"])
def test_snapshots_qemu_img_reads(tmp_path: Path, version: int, cluster_bits: int,
                                  refcount_order: int) -> None:
    path = tmp_path / "s.qcow2"
    create_image(str(path), 2 * MiB, cluster_bits=cluster_bits,
                 refcount_order=refcount_order, version=version)
    qemu_io(path, "write -P 0x41 0 1M")
    image = _open(path)
    state = os.urandom(300_000)  # bigger than the L1 table covers with 512-byte clusters
    image.write_vmstate(0, state)
    first = image.snapshot_create("first", len(state), 3_723_456_000_000)
    assert (first.id_str, first.name, first.icount) == ("1", "first", NO_ICOUNT)
    image.pwrite(4096, b"\x42" * 8192)  # copied on write: the snapshot keeps 0x41
    image.pwrite(MiB + 100, b"\x43" * 5000)
    image.snapshot_create("second")
    image.pwrite(0, b"\x44" * 512)
    image.flush()
    assert image.read_vmstate(0, len(state), first) == state
    assert image.read_vmstate(0, 4096) == bytes(4096)  # only the snapshot keeps it
    image.close()
    _clean(path)
    listing = qemu_img("snapshot", "-l", path).stdout.splitlines()
    assert listing[1].split() == ["ID", "TAG", "VM", "SIZE", "DATE", "VM", "CLOCK", "ICOUNT"]
    assert listing[2].split()[:4] == ["1", "first", "293", "KiB"]
    assert listing[2].split()[-1] == "01:02:03.456"
    assert listing[3].split()[:4] == ["2", "second", "0", "B"]
    disk1 = _snapshot_contents(path, "first", tmp_path)
    assert disk1 == b"\x41" * MiB + bytes(MiB)
    disk2 = _snapshot_contents(path, "second", tmp_path)
    assert disk2[4096:12288] == b"\x42" * 8192 and disk2[:512] == b"\x41" * 512
    assert disk2[MiB + 100:MiB + 5100] == b"\x43" * 5000
    qemu_io(path, "read -P 0x44 0 512", "read -P 0x42 4k 8k")

    image = _open(path)  # back to "first", through kvmpy
    image.snapshot_goto("first")
    assert image.pread(0, 2 * MiB) == disk1
    image.snapshot_delete(image.find_snapshot("second"))  # type: ignore[arg-type]
    image.close()
    _clean(path)
    qemu_io(path, "read -P 0x41 0 1M", "read -P 0 1M 1M")
    image = _open(path)
    image.snapshot_delete(image.find_snapshot("1"))  # type: ignore[arg-type]
    image.close()
    _clean(path)
    assert "Snapshot list" not in qemu_img("snapshot", "-l", path).stdout
    qemu_img("snapshot", "-c", "again", path)  # QEMU goes on with what kvmpy left
    _clean(path)


def test_refcounts_too_narrow_refuse_cleanly(tmp_path: Path) -> None:
    """1-bit refcounts cannot count a second reference; 2-bit ones run out at the third
    snapshot: the snapshot is refused, the image stays consistent (leaks at most)."""
    for order, snapshots in ((0, 0), (1, 2)):
        path = tmp_path / f"n{order}.qcow2"
        create_image(str(path), MiB, cluster_bits=12, refcount_order=order)
        image = _open(path)
        image.pwrite(0, b"\x71" * 8192)
        for i in range(snapshots):
            image.snapshot_create(f"s{i}")
        with pytest.raises(OSError) as error:
            image.snapshot_create("one too many")
        assert error.value.errno == errno.ERANGE
        image.pwrite(0, b"\x72" * 100)
        assert image.pread(0, 200) == b"\x72" * 100 + b"\x71" * 100
        image.close()
        check(path)
        assert len(qemu_img("snapshot", "-l", path).stdout.splitlines()) == \
            (snapshots + 2 if snapshots else 0)


def test_qemu_img_snapshots_are_reverted_and_deleted(tmp_path: Path) -> None:
    path = create(tmp_path / "q.qcow2", 4 * MiB)
    qemu_io(path, "write -P 0x11 0 3M")
    qemu_img("snapshot", "-c", "disk-only", path)
    qemu_io(path, "write -P 0x22 64k 64k", "write -c -P 0x33 3M 64k")  # compressed
    qemu_img("snapshot", "-c", "later", path)
    qemu_io(path, "write -P 0x44 0 4M")
    image = _open(path)
    sn = image.find_snapshot("disk-only")
    assert sn is not None and sn.vm_state_size == 0 and sn.disk_size == 4 * MiB
    image.snapshot_goto("disk-only")
    assert image.pread(0, 3 * MiB) == b"\x11" * (3 * MiB)
    image.pwrite(0, b"\x55" * 100)
    image.snapshot_goto("2")  # by id
    assert image.pread(64 * 1024, 64 * 1024) == b"\x22" * 65536
    assert image.pread(3 * MiB, 65536) == b"\x33" * 65536
    image.snapshot_delete(image.find_snapshot("disk-only"))  # type: ignore[arg-type]
    image.close()
    _clean(path)
    qemu_io(path, "read -P 0x11 0 64k", "read -P 0x22 64k 64k", "read -P 0x33 3M 64k")
    qemu_img("snapshot", "-d", "later", path)
    _clean(path)


def test_freed_clusters_are_reused_after_a_flush(tmp_path: Path) -> None:
    """savevm/delvm cycles do not grow the image without bound."""
    path = tmp_path / "r.qcow2"
    create_image(str(path), 8 * MiB)
    image = _open(path)
    image.pwrite(0, os.urandom(2 * MiB))
    sizes = []
    for i in range(6):
        image.write_vmstate(0, os.urandom(MiB))
        sn = image.snapshot_create(f"s{i}", MiB)
        image.pwrite(0, os.urandom(2 * MiB))  # copies every shared cluster
        image.snapshot_goto(sn.name)
        image.snapshot_delete(sn)
        image.flush()
        sizes.append(os.path.getsize(path))
    image.close()
    _clean(path)
    assert sizes[-1] == sizes[2], sizes


def test_a_snapshot_of_a_resized_disk(tmp_path: Path) -> None:
    path = tmp_path / "g.qcow2"
    create_image(str(path), MiB, cluster_bits=9)  # the VM state right after the disk
    image = _open(path)
    image.pwrite(0, b"\x61" * MiB)
    image.write_vmstate(0, b"state")
    image.snapshot_create("small", 5)
    image.snapshot_goto("small")  # the VM state is in the active image too, as in QEMU
    image.resize(3 * MiB)
    assert image.pread(MiB, 2 * MiB) == bytes(2 * MiB)  # none of it shows in the disk
    image.pwrite(2 * MiB, b"\x62" * MiB)
    image.snapshot_goto("small")
    assert image.size == MiB and image.pread(0, MiB) == b"\x61" * MiB
    image.close()
    _clean(path)
    assert "virtual size: 1 MiB" in qemu_img("info", path).stdout


def test_snapshot_table_errors_are_qemus(tmp_path: Path) -> None:
    path = create(tmp_path / "e.qcow2", MiB)
    qemu_img("snapshot", "-c", "one", path)
    with open(path, "rb") as f:
        f.seek(64)
        table = struct.unpack(">Q", f.read(8))[0]
    with open(path, "r+b") as f:
        f.seek(table + 36)  # extra_data_size
        f.write(struct.pack(">I", 2000))
    with pytest.raises(ConfigError) as error:
        open_image(str(path), "qcow2")
    assert str(error.value) == "Too much extra metadata in snapshot table entry 0"


# -- a model of the disk and its snapshots, against random operations ---------------------------

OPS = st.lists(st.tuples(st.sampled_from(["write", "save", "goto", "delete", "reopen"]),
                         st.integers(0, 63), st.integers(1, 20000), st.integers(0, 255)),
               min_size=1, max_size=25)


@settings(max_examples=int(os.environ.get("KVMPY_FUZZ_EXAMPLES", "40")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(ops=OPS, cluster_bits=st.sampled_from([9, 12, 16]))
def test_random_snapshot_operations(tmp_path_factory: pytest.TempPathFactory,
                                    ops: list[tuple[str, int, int, int]],
                                    cluster_bits: int) -> None:
    path = tmp_path_factory.mktemp("model") / "m.qcow2"
    size = 256 * 1024
    create_image(str(path), size, cluster_bits=cluster_bits)
    disk = bytearray(size)
    saved: dict[str, tuple[bytes, bytes]] = {}
    image = _open(path)
    rng = random.Random(len(ops))
    for kind, where, length, value in ops:
        if kind == "write":
            offset = where * 4096 % size
            data = bytes([value]) * min(length, size - offset)
            image.pwrite(offset, data)
            disk[offset:offset + len(data)] = data
        elif kind == "save":
            name = f"s{value % 4}"
            if name in saved:
                sn = image.find_snapshot(name)
                assert sn is not None
                image.snapshot_delete(sn)
            state = rng.randbytes(length)
            image.write_vmstate(0, state)
            image.snapshot_create(name, len(state))
            saved[name] = (bytes(disk), state)
        elif kind == "goto" and saved:
            name = sorted(saved)[value % len(saved)]
            image.snapshot_goto(name)
            disk[:] = saved[name][0]
            sn = image.find_snapshot(name)
            assert sn is not None and image.read_vmstate(0, sn.vm_state_size, sn) == \
                saved[name][1]
        elif kind == "delete" and saved:
            name = sorted(saved)[value % len(saved)]
            sn = image.find_snapshot(name)
            assert sn is not None
            image.snapshot_delete(sn)
            del saved[name]
        elif kind == "reopen":
            image.close()
            image = _open(path)
        if where % 3 == 0:
            image.flush()
        assert image.pread(0, size) == bytes(disk)
    assert sorted(sn.name for sn in image.snapshots) == sorted(saved)
    image.close()
    _clean(path)
    for name, (contents, _) in saved.items():
        assert _snapshot_contents(path, name, path.parent) == contents


def test_compressed_data_at_the_end_of_the_file(tmp_path: Path) -> None:
    """Compressed data ends the file mid-sector: its last sector is partly past the end,
    as QEMU writes it, and counts like any other."""
    path = create(tmp_path / "c.qcow2", MiB)
    qemu_io(path, "write -c -P 0x12 0 64k")
    assert os.path.getsize(path) % 512
    image = _open(path)
    image.snapshot_create("a")
    image.pwrite(100, b"\x13")
    image.snapshot_delete(image.snapshots[0])
    image.close()
    _clean(path)
    qemu_io(path, "read -P 0x12 0 100", "read -P 0x13 100 1", "read -P 0x12 101 65435")
