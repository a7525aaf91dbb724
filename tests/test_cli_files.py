"""Files on the command line that are not files, or do not fit: one line and status 1 at once,
or QEMU's behaviour where QEMU accepts them; never a hang or a read without end.

Each case runs the whole command in a child with a deadline and a cap on its address space,
so a regression fails here instead of hanging the suite or eating the machine's memory. Where
QEMU 7.2 answers (it hangs on a FIFO), its answer is checked too.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kvmpy.registry_init import load_types
from kvmpy.system import find_accel_class

from .support import kvmpy_env

QEMU = shutil.which("qemu-system-riscv64")
ADDRESS_SPACE_CAP = 3 << 30
"""Far above what kvmpy maps for a 128 MiB guest, far below the 64 GiB sparse file."""
SPARSE_SIZE = 64 << 30


def _tcg_missing() -> bool:
    load_types()
    return find_accel_class("tcg") is None


pytestmark = pytest.mark.skipif(_tcg_missing(), reason="the tcg accelerator is not in this tree")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``k.bin`` (a raw kernel), ``fifo``, ``dir/`` and ``sparse`` (64 GiB of nothing)."""
    root = tmp_path_factory.mktemp("files")
    (root / "k.bin").write_bytes(os.urandom(4096))
    os.mkfifo(root / "fifo")
    (root / "dir").mkdir()
    with (root / "sparse").open("wb") as f:
        f.truncate(SPARSE_SIZE)
    return root


def _cap_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_CAP, ADDRESS_SPACE_CAP))


def run(program: list[str], args: list[str], cwd: Path, monitor_input: str = "quit\n"
        ) -> subprocess.CompletedProcess[str]:
    """The VM stopped before its first instruction (-S), its monitor told to quit."""
    return subprocess.run(
        [*program, "-M", "virt", "-m", "128M", "-S", "-display", "none", "-serial", "none",
         "-monitor", "stdio", *args], input=monitor_input, capture_output=True, text=True,
        timeout=60, cwd=cwd, check=False, preexec_fn=_cap_address_space,
        env=kvmpy_env() if program[0] == sys.executable else None)


KVMPY = [sys.executable, "-m", "kvmpy", "-accel", "tcg"]

# (arguments, kvmpy's line, QEMU 7.2's line or None where QEMU hangs)
REFUSED = [
    (["-kernel", "/dev/zero"], "could not load kernel '/dev/zero': character device is empty",
     "could not load kernel '/dev/zero'"),
    (["-kernel", "dir"], "could not load kernel 'dir': Is a directory",
     "could not load kernel 'dir'"),
    (["-kernel", "fifo"], "could not load kernel 'fifo': Is a FIFO", None),
    (["-kernel", "sparse"], f"could not load kernel 'sparse': {SPARSE_SIZE} bytes do not fit in "
                            "guest RAM (134217728 bytes)", "could not load kernel 'sparse'"),
    (["-bios", "/dev/zero"], "could not load firmware '/dev/zero': character device is empty",
     "could not load firmware '/dev/zero'"),
    (["-bios", "fifo"], "could not load firmware 'fifo': Is a FIFO", None),
    (["-bios", "sparse"], f"could not load firmware 'sparse': {SPARSE_SIZE} bytes do not fit in "
                          "guest RAM (134217728 bytes)", "could not load firmware 'sparse'"),
    (["-kernel", "k.bin", "-initrd", "fifo"], "could not load ramdisk 'fifo': Is a FIFO", None),
    (["-kernel", "k.bin", "-initrd", "sparse"],
     f"could not load ramdisk 'sparse': {SPARSE_SIZE} bytes at 0x84200000 do not fit in RAM "
     "(0x80000000-0x87ffffff)", None),  # QEMU tries to read all 64 GiB
    (["-kernel", "k.bin", "-dtb", "fifo"], "Can't open dtb file fifo: Is a FIFO", None),
    (["-drive", "if=none,id=d0,format=raw,file=fifo,readonly=on", "-device",
      "virtio-blk-device,drive=d0"],
     "-drive if=none,id=d0,format=raw,file=fifo,readonly=on: 'file' driver requires 'fifo' to be "
     "a regular file", None),
    (["-drive", "if=none,id=d0,format=raw,file=dir", "-device", "virtio-blk-device,drive=d0"],
     "-drive if=none,id=d0,format=raw,file=dir: 'file' driver requires 'dir' to be a regular "
     "file", "-drive if=none,id=d0,format=raw,file=dir: 'file' driver requires 'dir' to be a "
             "regular file"),
]


@pytest.mark.parametrize(("args", "ours", "qemus"), REFUSED,
                         ids=[" ".join(case[0]) for case in REFUSED])
def test_refused_in_one_line(files: Path, args: list[str], ours: str, qemus: str | None) -> None:
    proc = run(KVMPY, args, files)
    assert (proc.returncode, proc.stderr.splitlines()[-1]) == (1, f"kvmpy: {ours}")
    assert "Traceback" not in proc.stderr
    if QEMU is not None and qemus is not None:
        theirs = run([QEMU], args, files)
        assert (theirs.returncode, theirs.stderr.splitlines()[-1]) == \
            (1, f"qemu-system-riscv64: {qemus}")


ACCEPTED = [
    ["-kernel", "k.bin", "-initrd", "/dev/zero"],  # an empty initrd
    ["-kernel", "k.bin", "-initrd", "/dev/null"],
    ["-kernel", "k.bin", "-drive", "if=none,id=d0,format=raw,file=/dev/zero", "-device",
     "virtio-blk-device,drive=d0"],                 # a disk of 0 bytes
]


@pytest.mark.parametrize("args", ACCEPTED, ids=[" ".join(case) for case in ACCEPTED])
def test_accepted_as_qemu_accepts(files: Path, args: list[str]) -> None:
    for program in ([[QEMU]] if QEMU else []) + [KVMPY]:
        proc = run(program, args, files, monitor_input="info status\nquit\n")
        assert proc.returncode == 0, proc.stderr
        assert "VM status: paused (prelaunch)" in proc.stdout
