"""``-blockdev`` node graphs (QEMU's syntax, as libvirt writes them): file/raw/qcow2 nodes,
inline or by node name, explicit and null backing, and QEMU's errors word for word."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kvmpy.block.blockdev import open_blockdev, parse_blockdev
from kvmpy.errors import ConfigError
from tests.block.conftest import check, create, qemu_io
from tests.support import kvmpy_env

MiB = 1 << 20
QEMU = shutil.which("qemu-system-riscv64")
HERE = Path(__file__).resolve().parent
"""Where the VMMs run: not the repository root, whose kvmpy (its core unbuilt under CI)
would shadow the installed one."""


def libvirt_chain(tmp: Path) -> list[str]:
    """base.raw <- mid.qcow2 <- top.qcow2, each layer a storage and a format node."""
    (tmp / "base.raw").write_bytes(b"\x01" * (2 * MiB))
    mid = create(tmp / "mid.qcow2", 2 * MiB, backing=tmp / "base.raw", backing_fmt="raw")
    qemu_io(mid, "write -P 0x02 64k 64k")
    top = create(tmp / "top.qcow2", 2 * MiB, backing=mid)
    qemu_io(top, "write -P 0x03 128k 64k")
    nodes = []
    for index, (path, fmt, backing) in enumerate([
            (top, "qcow2", "libvirt-2-format"), (mid, "qcow2", "libvirt-3-format"),
            (tmp / "base.raw", "raw", None)], start=1):
        nodes.append(json.dumps({"driver": "file", "filename": str(path),
                                 "node-name": f"libvirt-{index}-storage",
                                 "auto-read-only": True, "discard": "unmap"}))
        fmt_node = {"node-name": f"libvirt-{index}-format", "read-only": index > 1,
                    "driver": fmt, "file": f"libvirt-{index}-storage"}
        if fmt == "qcow2":
            fmt_node["backing"] = backing
        nodes.append(json.dumps(fmt_node))
    return nodes


def test_libvirt_backing_chain(tmp_path: Path) -> None:
    image = open_blockdev(libvirt_chain(tmp_path), "libvirt-1-format")
    assert image is not None
    expected = bytearray(b"\x01" * (2 * MiB))
    expected[64 * 1024:128 * 1024] = b"\x02" * 65536
    expected[128 * 1024:192 * 1024] = b"\x03" * 65536
    assert image.pread(0, 2 * MiB) == expected
    image.pwrite(70_000, b"\x04" * 100)
    expected[70_000:70_100] = b"\x04" * 100
    assert image.pread(0, 2 * MiB) == expected
    image.close()
    check(tmp_path / "top.qcow2")
    qemu_io(tmp_path / "mid.qcow2", "read -P 0x02 64k 64k")  # the backing is untouched


def test_null_backing_and_inline_keyval(tmp_path: Path) -> None:
    (tmp_path / "base.raw").write_bytes(b"\x01" * MiB)
    create(tmp_path / "top.qcow2", MiB, backing=tmp_path / "base.raw", backing_fmt="raw")
    top = tmp_path / "top.qcow2"
    image = open_blockdev([f"driver=qcow2,node-name=d0,file.driver=file,file.filename={top}"],
                          "d0")
    assert image is not None and image.pread(0, 512) == b"\x01" * 512  # the header's
    image.close()
    image = open_blockdev([f"driver=qcow2,node-name=d0,backing=,file.driver=file,"
                           f"file.filename={top}"], "d0")
    assert image is not None and image.pread(0, 512) == bytes(512)  # '' is null in keyval
    image.close()
    null = json.dumps({"driver": "qcow2", "node-name": "d0", "backing": None,
                       "file": {"driver": "file", "filename": str(tmp_path / "top.qcow2")}})
    image = open_blockdev([null], "d0")
    assert image is not None and image.pread(0, 512) == bytes(512)
    image.close()


def test_parse_errors() -> None:
    with pytest.raises(ConfigError, match="Parameter 'bogus' is unexpected"):
        parse_blockdev('{"driver": "file", "node-name": "f", "filename": "x", "bogus": 1}')
    with pytest.raises(ConfigError, match="not supported by kvmpy"):
        parse_blockdev("driver=vmdk,node-name=v,file=f")


def _error_line(argv: list[str], program: str) -> str:
    done = subprocess.run([*argv, "-M", "virt", "-S", "-display", "none", "-monitor", "none",
                           "-serial", "none", "-nodefaults"], capture_output=True, text=True,
                          timeout=60, cwd=HERE, env=kvmpy_env())
    assert done.returncode == 1, done.stderr
    return done.stderr.strip().splitlines()[-1].replace(f"{program}: ", "", 1)


def test_cli_errors_match_qemu(tmp_path: Path) -> None:
    if QEMU is None:
        pytest.skip("qemu-system-riscv64 (the oracle) is not installed")
    image = create(tmp_path / "t.qcow2", MiB)
    dev = ["-device", "virtio-blk-pci,drive=d0"]
    cases = [
        ["-blockdev", "node-name=d0"],
        ["-blockdev", "driver=qcow2,node-name=d0"],
        ["-blockdev", "driver=qcow2,node-name=d0,file=nope", *dev],
        ["-blockdev", "driver=qcow2,node-name=d0,file.driver=file,"
                      f"file.filename={tmp_path}/missing", *dev],
        ["-blockdev", "driver=foo,node-name=d0"],
        ["-blockdev", f"driver=file,node-name=f0,filename={image}",
         "-blockdev", f"driver=file,node-name=f0,filename={image}"],
        ["-blockdev", json.dumps({"driver": "qcow2", "node-name": "d0", "bogus": 1,
                                  "file": {"driver": "file", "filename": str(image)}})],
        ["-blockdev", '{"driver":"qcow2",'],
        ["-blockdev", json.dumps({"driver": "qcow2", "node-name": "d0",
                                  "file": {"driver": "file", "filename": str(image)}}),
         "-device", "virtio-blk-pci,drive=d1"],
    ]
    for argv in cases:
        ours = _error_line([sys.executable, "-m", "kvmpy", "-accel", "tcg", *argv], "kvmpy")
        assert ours == _error_line([QEMU, *argv], "qemu-system-riscv64")
