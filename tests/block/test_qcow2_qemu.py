"""qcow2 against QEMU's own tools: images qemu-img makes are written by kvmpy and pass
``qemu-img check`` and ``qemu-img compare`` against a raw file written the same way; what
qemu-io / ``qemu-img convert -c`` wrote reads back identically; backing chains, internal
snapshots, ``snapshot=on`` and the open-time errors."""

from __future__ import annotations

import hashlib
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from kvmpy.block import Qcow2Image, open_drive, open_image
from kvmpy.errors import ConfigError
from tests.block.conftest import QEMU_IO, check, compare, create, qemu_img, qemu_io

MiB = 1 << 20


def random_writes(image: object, raw: Path, size: int, seed: int, count: int = 120) -> None:
    """The same random writes (odd sizes and offsets, zeros too) to the image and a raw
    file; reads are checked along the way."""
    rng = random.Random(seed)
    model = bytearray(size)
    for _ in range(count):
        offset = rng.randrange(size)
        n = min(rng.choice([1, 100, 512, 4096, 65536, 200_000]), size - offset)
        data = bytes([rng.randrange(256)]) * n if rng.random() < 0.8 else bytes(n)
        image.pwrite(offset, data)  # type: ignore[attr-defined]
        model[offset:offset + n] = data
        probe = rng.randrange(size - 4096)
        assert image.pread(probe, 4096) == model[probe:probe + 4096]  # type: ignore[attr-defined]
    raw.write_bytes(model)


V3_SHAPES = [(cs, bits) for cs in (512, 4096, 65536, 2 * MiB) for bits in (1, 8, 16, 64)] + \
    [(4096, bits) for bits in (2, 4, 32)]


@pytest.mark.parametrize(("cluster_size", "refcount_bits"), V3_SHAPES,
                         ids=[f"cs{c}-rc{b}" for c, b in V3_SHAPES])
def test_v3_written_by_kvmpy_passes_qemu_img(tmp_path: Path, cluster_size: int,
                                             refcount_bits: int) -> None:
    size = 6 * MiB
    path = create(tmp_path / "disk.qcow2", size, f"cluster_size={cluster_size}",
                  f"refcount_bits={refcount_bits}")
    image = open_image(str(path), "qcow2")
    random_writes(image, tmp_path / "disk.raw", size, cluster_size + refcount_bits)
    image.close()
    check(path)
    compare(path, tmp_path / "disk.raw")


def test_refcount_table_grows(tmp_path: Path) -> None:
    """512-byte clusters with 64-bit refcounts: 64 clusters per refcount block, 4096 per
    table cluster; filling 8 MiB needs new refcount blocks and a bigger table."""
    size = 8 * MiB
    path = create(tmp_path / "disk.qcow2", size, "cluster_size=512", "refcount_bits=64")
    image = open_image(str(path), "qcow2")
    assert isinstance(image, Qcow2Image)
    before = image.header.refcount_table_clusters
    chunk = bytes(range(256)) * 256
    for offset in range(0, size, len(chunk)):
        image.pwrite(offset, chunk)
    image.close()
    with path.open("rb") as f:
        f.seek(56)
        after = struct.unpack(">I", f.read(4))[0]
    assert after > before
    assert check(path).get("leaks", 0) == 0
    (tmp_path / "disk.raw").write_bytes(chunk * (size // len(chunk)))
    compare(path, tmp_path / "disk.raw")


def test_v2_written_by_kvmpy_passes_qemu_img(tmp_path: Path) -> None:
    for cluster_size in (512, 65536):
        path = create(tmp_path / f"v2-{cluster_size}.qcow2", 4 * MiB, "compat=0.10",
                      f"cluster_size={cluster_size}")
        image = open_image(str(path), "qcow2")
        random_writes(image, tmp_path / "v2.raw", 4 * MiB, cluster_size)
        image.close()
        check(path)
        compare(path, tmp_path / "v2.raw")


def test_reads_what_qemu_io_wrote(tmp_path: Path) -> None:
    path = create(tmp_path / "disk.qcow2", 16 * MiB)
    qemu_io(path, "write -P 0xab 0 1M", "write -P 0x5a 1536k 100k", "write -z 64k 128k",
            "write -P 0x11 8M 4k", "discard 8M 64k", "write -P 0x22 15M 1M")
    qemu_img("convert", "-O", "raw", path, tmp_path / "ref.raw")
    image = open_image(str(path))
    reference = (tmp_path / "ref.raw").read_bytes()
    assert image.pread(0, 16 * MiB) == reference
    # scattered into many buffers (guest pages, odd sizes) across every kind of cluster
    for size in (4096, 1000, 70_000):
        buffers = [memoryview(bytearray(size)) for _ in range(16 * MiB // size)]
        image.readinto(0, buffers)
        joined = b"".join(bytes(b) for b in buffers)
        assert joined == reference[:len(joined)]
    image.close()


def test_compressed_clusters_read_and_overwritten(tmp_path: Path) -> None:
    rng = random.Random(7)
    data = bytearray()
    for _ in range(64):  # compressible and incompressible clusters
        data += bytes([rng.randrange(256)]) * 32768 + rng.randbytes(32768)
    (tmp_path / "src.raw").write_bytes(data)
    path = tmp_path / "c.qcow2"
    qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", tmp_path / "src.raw", path)
    info = qemu_img("check", path).stdout
    assert "compressed clusters" in info and ", 0.00% compressed" not in info
    image = open_image(str(path))
    assert image.pread(0, len(data)) == data
    image.pwrite(100_000, b"\xee" * 5000)  # inside a compressed cluster: copied out
    image.pwrite(2 * MiB, b"\xdd" * 65536)  # a whole compressed cluster replaced
    image.close()
    data[100_000:105_000] = b"\xee" * 5000
    data[2 * MiB:2 * MiB + 65536] = b"\xdd" * 65536
    (tmp_path / "expected.raw").write_bytes(data)
    assert check(path).get("leaks", 0) == 0
    compare(path, tmp_path / "expected.raw")


def test_backing_chain_three_deep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """raw base <- qcow2 <- qcow2 <- qcow2 (top), named relative to each image's
    directory; writes in the top copy the rest of a cluster from below."""
    size = 4 * MiB
    sub = tmp_path / "images"
    sub.mkdir()
    base = sub / "base.raw"
    rng = random.Random(3)
    model = bytearray(rng.randbytes(size))
    base.write_bytes(model)
    mid1 = create(sub / "mid1.qcow2", size, backing=base, backing_fmt="raw")
    qemu_io(mid1, "write -P 0x61 64k 192k")
    model[64 * 1024:256 * 1024] = b"\x61" * (192 * 1024)
    mid2 = create(sub / "mid2.qcow2", size, "cluster_size=4096", backing=mid1)
    qemu_io(mid2, "write -P 0x62 1M 10k")
    model[MiB:MiB + 10240] = b"\x62" * 10240
    top = create(sub / "top.qcow2", size, "cluster_size=16384", backing=mid2)
    sums = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (base, mid1, mid2)}
    monkeypatch.chdir(tmp_path)  # the names are relative to images/, not to the cwd
    image = open_image("images/top.qcow2")
    assert image.pread(0, size) == model
    for offset, n, byte in ((100, 10, 1), (65536 + 7, 70000, 2), (MiB + 5000, 9000, 3),
                            (size - 100, 100, 4)):
        image.pwrite(offset, bytes([byte]) * n)
        model[offset:offset + n] = bytes([byte]) * n
    assert image.pread(0, size) == model
    buffers = [memoryview(bytearray(3000)) for _ in range(size // 3000)]
    image.readinto(0, buffers)
    assert b"".join(bytes(b) for b in buffers) == model[:len(buffers) * 3000]
    image.close()
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sums} == sums
    check(top)
    (tmp_path / "expected.raw").write_bytes(model)
    compare(top, tmp_path / "expected.raw")


def test_backing_loop_is_refused(tmp_path: Path) -> None:
    a = create(tmp_path / "a.qcow2", MiB)
    b = create(tmp_path / "b.qcow2", MiB, backing=a)
    qemu_img("rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", a)
    with pytest.raises(ConfigError, match="loops back"):
        open_image(str(b))


def test_internal_snapshot_is_kept(tmp_path: Path) -> None:
    """Clusters shared with an internal snapshot (no COPIED flag) are copied on write."""
    path = create(tmp_path / "s.qcow2", 2 * MiB)
    qemu_io(path, "write -P 0x41 0 1M")
    qemu_img("snapshot", "-c", "before", path)
    image = open_image(str(path))
    image.pwrite(4096, b"\x42" * 8192)
    image.pwrite(MiB + 4096, b"\x43" * 100)
    image.close()
    check(path)
    qemu_io(path, "read -P 0x42 4k 8k", "read -P 0x41 12k 1012k", "read -P 0x43 1052672 100")
    qemu_img("snapshot", "-a", "before", path)
    qemu_io(path, "read -P 0x41 0 1M", "read -P 0 1M 1M")
    check(path)


def test_snapshot_on_leaves_the_image_alone(tmp_path: Path) -> None:
    for fmt in ("qcow2", "raw"):
        path = tmp_path / f"disk.{fmt}"
        qemu_img("create", "-q", "-f", fmt, path, str(MiB))
        before = path.read_bytes()
        image = open_drive({"file": str(path), "format": fmt, "snapshot": "on"})
        image.pwrite(1000, b"temporary" * 100)
        assert image.pread(1000, 900) == b"temporary" * 100
        image.close()
        assert path.read_bytes() == before
    assert not list(Path(os.environ.get("TMPDIR", "/var/tmp")).glob("vl.*.qcow2.nope"))


def test_dirty_image_stays_repairable(tmp_path: Path) -> None:
    path = create(tmp_path / "d.qcow2", 2 * MiB, "lazy_refcounts=on")
    qemu_io(path, "write -P 0x33 0 64k")
    with path.open("r+b") as f:
        f.seek(72)
        f.write(struct.pack(">Q", 1))
    image = open_image(str(path))
    image.pwrite(65536, b"\x34" * 65536)
    image.close()
    qemu_img("check", "-r", "all", path)
    qemu_io(path, "read -P 0x33 0 64k", "read -P 0x34 64k 64k")
    check(path)


def _patched(tmp_path: Path, offset: int, fmt: str, value: int, *options: str) -> Path:
    path = create(tmp_path / "p.qcow2", MiB, *options)
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))
    return path


OPEN_ERRORS = [
    ((4, ">I", 4), "Unsupported qcow2 version 4"),
    ((20, ">I", 8), "Unsupported cluster size: 2^8"),
    ((20, ">I", 22), "Unsupported cluster size: 2^22"),
    ((72, ">Q", 0x100), "Unsupported qcow2 feature(s): Unknown incompatible feature: 100"),
    ((72, ">Q", 0x2), "qcow2: Image is corrupt; cannot be opened read/write"),
    ((100, ">I", 72), "qcow2 header too short"),
    ((96, ">I", 7), "Reference count entry width too large; may not exceed 64 bits"),
    ((56, ">I", 0), "Image does not contain a reference count table"),
    ((40, ">Q", 0x10001), "Active L1 table offset invalid"),
    ((36, ">I", 0), "L1 table is too small"),
    ((0, ">I", 0x12345678), "Image is not in qcow2 format"),
]


@pytest.mark.parametrize(("patch", "message"), OPEN_ERRORS, ids=[m for _, m in OPEN_ERRORS])
def test_open_errors_are_qemus(tmp_path: Path, patch: tuple[int, str, int],
                               message: str) -> None:
    path = _patched(tmp_path, *patch)
    with pytest.raises(ConfigError) as info:
        open_image(str(path), "qcow2")
    assert str(info.value) == message
    # qemu-io, opening it read/write, says the same (after the file name)
    done = subprocess.run([QEMU_IO or "qemu-io", "-f", "qcow2", "-c", "quit", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert message in done.stderr


def test_refused_features_say_so(tmp_path: Path) -> None:
    ext = create(tmp_path / "e.qcow2", MiB, "extended_l2=on")
    with pytest.raises(ConfigError, match="extended L2"):
        open_image(str(ext))
    data = create(tmp_path / "d.qcow2", MiB, "data_file=d.data")
    with pytest.raises(ConfigError, match="external data file"):
        open_image(str(data))
    corrupt = _patched(tmp_path, 72, ">Q", 0x2)
    image = open_image(str(corrupt), read_only=True)  # a corrupt image may be read
    assert image.pread(0, 512) == bytes(512)
    image.close()


def test_resize_grows_the_l1_table(tmp_path: Path) -> None:
    path = create(tmp_path / "g.qcow2", MiB, "cluster_size=512")
    qemu_io(path, "write -P 0x44 0 1M")
    image = open_image(str(path))
    assert isinstance(image, Qcow2Image)
    old_l1 = len(image.l1)
    image.resize(64 * MiB)
    image.pwrite(64 * MiB - 5000, b"\x45" * 5000)
    assert len(image.l1) > old_l1
    image.close()
    check(path)
    assert '"virtual-size": 67108864' in qemu_img("info", "--output=json", path).stdout
    qemu_io(path, "read -P 0x44 0 1M", "read -P 0 1M 1M", "read -P 0x45 67103864 5000")


def test_zstd_compressed_clusters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src.raw"
    src.write_bytes(b"\x12" * MiB + random.Random(1).randbytes(MiB))
    path = tmp_path / "z.qcow2"
    qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "compression_type=zstd",
             src, path)
    monkeypatch.setitem(sys.modules, "zstandard", None)  # as if it were not installed
    image = open_image(str(path))
    with pytest.raises(OSError, match="zstandard"):
        image.pread(0, 512)
    image.close()
    monkeypatch.undo()
    pytest.importorskip("zstandard", reason="the Python 'zstandard' module reads zstd "
                        "clusters and is not installed")
    image = open_image(str(path))
    assert image.pread(0, 2 * MiB) == src.read_bytes()
    image.close()


def test_readonly_drive_refuses_writes(tmp_path: Path) -> None:
    path = create(tmp_path / "ro.qcow2", MiB)
    before = path.read_bytes()
    image = open_drive({"file": str(path), "format": "qcow2", "readonly": "on"})
    assert image.read_only
    with pytest.raises(OSError):
        image.pwrite(0, b"x" * 512)
    image.close()
    assert path.read_bytes() == before
