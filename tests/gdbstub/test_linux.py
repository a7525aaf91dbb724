"""gdb on the bundled Linux kernel: ``break start_kernel``, ``continue``, ``bt``, as on QEMU 7.2.

gdb needs the kernel's symbols: ``vmlinux`` of the same build as the bundled Image, either
``kvmpy/guests/vmlinux.xz`` (a symbols-only copy, when the guest bundle ships one) or the build
tree of ``scripts/build-guest`` (``build/guest/linux-build/vmlinux``).  Without one, or when
it is from another build than the Image, the test is skipped and says why.
"""

from __future__ import annotations

import lzma
import re
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

import kvmpy

from .conftest import needs_gdb, needs_qemu, run_gdb, vmm

pytestmark = [needs_gdb, pytest.mark.timeout(600)]

GUESTS = Path(kvmpy.__file__).parent / "guests"
BUILD_TREE = Path(kvmpy.__file__).resolve().parents[1] / "build/guest/linux-build/vmlinux"


def kernel_files(tmp: Path) -> tuple[Path, Path]:
    """(Image, vmlinux) of the bundled guest, unpacked in ``tmp``; skips when absent."""
    image_xz = GUESTS / "Image.xz"
    if not image_xz.exists():
        pytest.skip("the bundled guest is not built (scripts/build-guest)")
    image = tmp / "Image"
    image.write_bytes(lzma.decompress(image_xz.read_bytes()))
    shipped = GUESTS / "vmlinux.xz"
    if shipped.exists():
        vmlinux = tmp / "vmlinux"
        vmlinux.write_bytes(lzma.decompress(shipped.read_bytes()))
    elif BUILD_TREE.exists():
        vmlinux = BUILD_TREE
    else:
        pytest.skip("no vmlinux for the bundled kernel: kvmpy/guests ships none and the "
                    "build tree of scripts/build-guest is not on this machine")
    if not same_build(image, vmlinux):
        pytest.skip(f"{vmlinux} is from another build than the bundled Image")
    return image, vmlinux


def same_build(image: Path, vmlinux: Path) -> bool:
    """start_kernel's first bytes in vmlinux are at the same offset of the Image."""
    with vmlinux.open("rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        if symtab is None:
            return False
        start = symtab.get_symbol_by_name("_start")
        target = symtab.get_symbol_by_name("start_kernel")
        if not start or not target:
            return False
        addr = int(target[0]["st_value"])
        code = b""
        for segment in elf.iter_segments():
            vaddr, size = int(segment["p_vaddr"]), int(segment["p_filesz"])
            if segment["p_type"] == "PT_LOAD" and vaddr <= addr < vaddr + size:
                code = segment.data()[addr - vaddr:addr - vaddr + 64]
        offset = addr - int(start[0]["st_value"])
    data = image.read_bytes()
    return bool(code) and data[offset:offset + len(code)] == code


SESSION = ["break start_kernel", "continue", "bt", "info registers pc", "x/4i $pc", "kill"]


def session(which: str, image: Path, vmlinux: Path) -> str:
    args = ["-M", "virt", "-m", "256M", "-nographic", "-kernel", str(image),
            "-append", "console=ttyS0"]
    with vmm(which, args) as v:
        return run_gdb(v.port, vmlinux, SESSION, timeout=300)


def test_break_start_kernel(tmp_path: Path) -> None:
    image, vmlinux = kernel_files(tmp_path)
    text = session("kvmpy", image, vmlinux)
    assert re.search(r"Breakpoint 1, (0x[0-9a-f]+ in )?start_kernel \(\)", text), text
    assert "#0  " in text and "start_kernel" in text.split("#0  ")[1].splitlines()[0]


@needs_qemu
def test_break_start_kernel_matches_qemu(tmp_path: Path) -> None:
    image, vmlinux = kernel_files(tmp_path)
    assert session("kvmpy", image, vmlinux) == session("qemu", image, vmlinux)
