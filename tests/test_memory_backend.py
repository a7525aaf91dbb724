"""``-object memory-backend-file|memfd`` as guest RAM (``-machine memory-backend=ID``), as
libvirt passes it: RAM is a mapping of the file or memfd (shared with ``share=on``), and the
refusals are QEMU's lines (the texts below were taken from qemu-system-riscv64 7.2)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kvmpy.cli.parser import parse_command_line
from kvmpy.errors import ConfigError
from kvmpy.process import ProcessVM
from tests.net.test_guest_network import guest, sh

__all__ = ["guest"]

MiB = 1 << 20
MARKER = 0x12345678
# At DRAM's start (where -bios none jumps): store MARKER 4 KiB further on, then spin.
PROGRAM = struct.pack("<5I",
                      0x00001297,  # auipc t0, 1          t0 = 0x80001000
                      0x12345337,  # lui   t1, 0x12345
                      0x67830313,  # addi  t1, t1, 0x678
                      0x0062A023,  # sw    t1, 0(t0)
                      0x0000006F)  # j     .


def _kvmpy_error(*args: str) -> str:
    """The one line kvmpy prints for a refused command line (after the program name)."""
    proc = subprocess.run([sys.executable, "-m", "kvmpy", "-M", "virt", "-bios", "none",
                           "-display", "none", "-accel", "tcg", *args],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0].split(": ", 1)[1]


def test_file_backend_shared_ram_is_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ram"
    path.write_bytes(PROGRAM + bytes(64 * MiB - len(PROGRAM)))
    vm = ProcessVM(["-M", "virt,memory-backend=pc.ram", "-m", "64M", "-bios", "none",
                    "-accel", "tcg", "-object",
                    f"memory-backend-file,id=pc.ram,size=64M,mem-path={path},share=on"])
    vm.launch()
    try:
        deadline = time.monotonic() + 30
        with open(path, "rb", buffering=0) as f:  # a buffered read would keep old bytes
            while True:  # the guest ran the program it found in the file and wrote to it
                if struct.unpack("<I", os.pread(f.fileno(), 4, 0x1000))[0] == MARKER:
                    break
                assert time.monotonic() < deadline, "the guest's store never reached the file"
                time.sleep(0.1)
    finally:
        vm.kill()
    assert path.stat().st_size == 64 * MiB


def test_file_backend_private_ram_leaves_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ram"
    path.write_bytes(PROGRAM + bytes(64 * MiB - len(PROGRAM)))
    vm = ProcessVM(["-M", "virt,memory-backend=pc.ram", "-m", "64M", "-bios", "none",
                    "-accel", "tcg", "-object",
                    f'{{"qom-type":"memory-backend-file","id":"pc.ram","size":{64 * MiB},'
                    f'"mem-path":"{path}","share":false}}'])
    vm.launch()
    try:
        vm.hmp("stop")
        # the guest ran the file's program (its store is in guest RAM) ...
        assert vm.hmp("xp /1wx 0x80001000").split()[-1] == f"0x{MARKER:08x}"
    finally:
        vm.kill()
    # ... but its writes stayed private
    assert path.read_bytes()[0x1000:0x1004] == bytes(4)


def test_file_backend_directory_makes_an_unlinked_file(tmp_path: Path) -> None:
    vm = ProcessVM(["-M", "virt,memory-backend=pc.ram", "-m", "64M", "-bios", "none", "-S",
                    "-accel", "tcg", "-object",
                    f"memory-backend-file,id=pc.ram,size=64M,mem-path={tmp_path},share=on"])
    vm.launch()
    try:
        assert vm.hmp("info status").strip() == "VM status: paused (prelaunch)"
        assert list(tmp_path.iterdir()) == []
    finally:
        vm.kill()


def test_memfd_backend_boots_the_bundled_guest(guest: Any) -> None:
    vm = guest("-object", "memory-backend-memfd,id=pc.ram,size=256M",
               "-M", "virt,memory-backend=pc.ram")
    assert sh(vm, "echo $((6*7))").strip() == "42"
    pid = vm.get_pid()
    assert pid is not None
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert "/memfd:memory-backend-memfd" in maps


def test_refusals_are_qemus(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^Parameter 'mem-path' is missing$"):
        parse_command_line(["-object", "memory-backend-file,id=pc.ram,size=64M",
                            "-M", "virt,memory-backend=pc.ram"])
    with pytest.raises(ConfigError, match=r"^Machine memory size does not match the size of "
                       r"the memory backend$"):
        parse_command_line(["-object", f"memory-backend-file,id=m,size=64M,mem-path={tmp_path}",
                            "-m", "128M", "-M", "virt,memory-backend=m"])
    small = tmp_path / "small"
    small.write_bytes(bytes(MiB))
    assert _kvmpy_error(
        "-object", f"memory-backend-file,id=pc.ram,size=64M,mem-path={small}",
        "-M", "virt,memory-backend=pc.ram", "-m", "64M",
    ) == "backing store size 0x100000 does not match 'size' option 0x4000000"
    assert _kvmpy_error(
        "-object", "memory-backend-file,id=pc.ram,size=64M,mem-path=/proc/nope/x",
        "-M", "virt,memory-backend=pc.ram", "-m", "64M",
    ) == "can't open backing store /proc/nope/x for guest RAM: No such file or directory"
    assert _kvmpy_error(
        "-object", "memory-backend-file,id=pc.ram,size=64M,mem-path=/sys/x",
        "-M", "virt,memory-backend=pc.ram", "-m", "64M",
    ) == "can't open backing store /sys/x for guest RAM: Permission denied"
    assert not os.path.exists("/sys/x")


def test_memfd_hugetlb_without_reserved_pages_is_refused_as_qemu() -> None:
    if Path("/proc/sys/vm/nr_hugepages").read_text().strip() != "0":
        pytest.skip("this host reserves huge pages: hugetlb=on would work")
    assert _kvmpy_error(
        "-object", "memory-backend-memfd,id=pc.ram,size=64M,hugetlb=on",
        "-M", "virt,memory-backend=pc.ram", "-m", "64M",
    ) == "unable to map backing store for guest RAM: Cannot allocate memory"


def test_save_and_restore_with_shared_file_ram(tmp_path: Path) -> None:
    from kvmpy import VM

    path = tmp_path / "ram"
    path.write_bytes(PROGRAM + bytes(64 * MiB - len(PROGRAM)))
    args = ["-M", "virt,memory-backend=pc.ram", "-m", "64M", "-bios", "none", "-accel", "tcg",
            "-display", "none", "-object",
            f"memory-backend-file,id=pc.ram,size=64M,mem-path={path},share=on"]
    state = tmp_path / "state"
    with VM(args) as vm:
        deadline = time.monotonic() + 30
        while vm.memory.read(0x80001000, 4) != struct.pack("<I", MARKER):
            assert time.monotonic() < deadline, "the guest never stored its marker"
            time.sleep(0.1)
        vm.save(state)
    with open(path, "r+b") as f:  # the host changes the RAM file while the VM is down
        f.seek(0x1000)
        f.write(b"\xee" * 8)
        f.seek(0x2000)
        f.write(b"\xdd" * 8)
    vm = VM.restore(state, start_paused=True)
    try:
        # the saved RAM is back, in the file too (one shared mapping, not a private copy)
        assert vm.memory.read(0x80001000, 8) == struct.pack("<I", MARKER) + bytes(4)
        assert vm.memory.read(0x80002000, 8) == bytes(8)
        data = path.read_bytes()
        assert data[0x1000:0x1008] == struct.pack("<I", MARKER) + bytes(4)
        assert data[0x2000:0x2008] == bytes(8)
        vm.memory.write(0x80003000, b"restored")
        assert path.read_bytes()[0x3000:0x3008] == b"restored"
    finally:
        vm.kill()
