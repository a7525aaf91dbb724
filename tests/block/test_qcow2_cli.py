"""``-drive`` errors for disk images, word for word as qemu-system-riscv64 7.2 prints them
(only the program name differs), each on one line."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.block.conftest import create
from tests.support import kvmpy_env

QEMU = shutil.which("qemu-system-riscv64")
HERE = Path(__file__).resolve().parent
"""Where the VMMs run: not the repository root, whose kvmpy (its core unbuilt under CI)
would shadow the installed one."""
MiB = 1 << 20


def _error_line(argv: list[str], program: str) -> str:
    done = subprocess.run([*argv, "-M", "virt", "-S", "-display", "none", "-monitor", "none",
                           "-serial", "none", "-nodefaults"], capture_output=True, text=True,
                          timeout=60, cwd=HERE, env=kvmpy_env())
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if "-drive" in line]
    assert len(lines) == 1, done.stderr
    return lines[0].replace(f"{program}: ", "", 1)


def _patch(path: Path, offset: int, fmt: str, value: int) -> Path:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))
    return path


def _cases(tmp: Path) -> list[str]:
    (tmp / "raw.img").write_bytes(bytes(MiB))
    feature = _patch(create(tmp / "feature.qcow2", MiB), 72, ">Q", 0x100)
    corrupt = _patch(create(tmp / "corrupt.qcow2", MiB), 72, ">Q", 0x2)
    version = _patch(create(tmp / "v4.qcow2", MiB), 4, ">I", 4)
    aes = _patch(create(tmp / "aes.qcow2", MiB), 32, ">I", 1)
    backing = create(tmp / "backed.qcow2", MiB, backing=create(tmp / "gone.qcow2", MiB))
    (tmp / "gone.qcow2").unlink()
    return [
        f"file={tmp}/missing.qcow2,format=qcow2,if=virtio",
        f"file={tmp}/missing.qcow2,if=virtio",
        f"file={tmp}/raw.img,format=vmdkx,if=virtio",
        f"file={tmp}/raw.img,format=qcow2,if=virtio",
        f"file={feature},if=virtio",
        f"file={corrupt},format=qcow2,if=virtio",
        f"file={version},if=none,id=d0",
        f"file={aes},if=virtio",
        f"file={backing},if=virtio",
        f"file={tmp},if=virtio",
        f"file={tmp}/raw.img,format=raw,if=virtio,force-share=on",
        f"file={tmp}/raw.img,format=raw,if=virtio,file.locking=maybe",
    ]


def test_drive_errors_match_qemu(tmp_path: Path) -> None:
    if QEMU is None:
        pytest.skip("qemu-system-riscv64 (the oracle) is not installed")
    for drive in _cases(tmp_path):
        argv = ["-drive", drive]
        if "if=none" in drive:
            argv += ["-device", "virtio-blk-pci,drive=d0"]
        ours = _error_line([sys.executable, "-m", "kvmpy", "-accel", "tcg", *argv], "kvmpy")
        theirs = _error_line([QEMU, *argv], "qemu-system-riscv64")
        assert ours == theirs


def _warning(argv: list[str]) -> list[str]:
    """The probing warning a VMM prints at start (it then runs on: stopped after it)."""
    proc = subprocess.Popen([*argv, "-M", "virt", "-S", "-display", "none", "-monitor",
                             "none", "-serial", "none", "-nodefaults"], cwd=HERE, env=kvmpy_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        for line in proc.stderr:
            if line.startswith("WARNING") or lines:
                lines.append(line.rstrip("\n"))
            if len(lines) == 3:
                break
    finally:
        proc.kill()
        proc.wait()
    return lines


def test_raw_probing_warns_as_qemu_and_guards_sector_0(tmp_path: Path) -> None:
    from kvmpy.block import open_image
    from kvmpy.block.drive import ProbedRawImage

    raw = tmp_path / "disk.img"
    raw.write_bytes(bytes(MiB))
    image = open_image(str(raw))
    assert isinstance(image, ProbedRawImage)
    image.pwrite(0, b"\x01" * 512)
    with pytest.raises(OSError):  # would turn the probed raw image into a qcow2 one
        image.pwrite(0, b"QFI\xfb" + bytes(508))
    image.close()
    assert raw.read_bytes()[:4] == b"\x01" * 4
    if QEMU is None:
        pytest.skip("qemu-system-riscv64 (the oracle) is not installed")
    drive = ["-drive", f"file={raw},if=virtio"]
    ours = _warning([sys.executable, "-m", "kvmpy", "-accel", "tcg", *drive])
    assert len(ours) == 3 and ours == _warning([QEMU, *drive])


def test_image_locks_are_qemus(tmp_path: Path) -> None:
    """Two writers of one image are refused, between kvmpy and QEMU both ways."""
    import time

    from kvmpy.block import open_image
    from kvmpy.errors import ConfigError
    from tests.block.conftest import qemu_img

    disk = create(tmp_path / "locked.qcow2", MiB)
    writer = open_image(str(disk), "qcow2")
    with pytest.raises(ConfigError, match='Failed to get "write" lock'):
        open_image(str(disk), "qcow2")
    with pytest.raises(ConfigError, match='Failed to get shared "write" lock'):
        open_image(str(disk), "qcow2", read_only=True)
    refused = qemu_img("info", disk, check=False)
    assert refused.returncode == 1 and 'Failed to get shared "write" lock' in refused.stderr
    from kvmpy.block import open_drive

    shared = open_drive({"file": str(disk), "format": "qcow2", "readonly": "on",
                         "force-share": "on"})  # lets the writer go on, as in QEMU
    shared.close()
    unlocked = open_drive({"file": str(disk), "format": "qcow2", "file.locking": "off"})
    unlocked.close()
    writer.close()
    reader = open_image(str(disk), "qcow2", read_only=True)
    open_image(str(disk), "qcow2", read_only=True).close()  # readers share
    reader.close()
    if QEMU is None:
        pytest.skip("qemu-system-riscv64 (the oracle) is not installed")
    qemu = subprocess.Popen([QEMU, "-M", "virt", "-S", "-display", "none", "-monitor", "none",
                             "-serial", "none", "-nodefaults", "-drive",
                             f"file={disk},if=virtio"], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        inode = f":{disk.stat().st_ino} "
        while not any(inode in line for line in Path("/proc/locks").read_text().splitlines()):
            assert qemu.poll() is None and time.monotonic() < deadline, \
                "QEMU never locked the image"
            time.sleep(0.1)
        with pytest.raises(ConfigError) as info:
            open_image(str(disk), "qcow2")
        assert str(info.value) == 'Failed to get "write" lock'
    finally:
        qemu.kill()
        qemu.wait()
