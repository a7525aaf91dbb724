"""Loaders: good files load where they should, bad files give one line naming file and reason."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from kvmpy.errors import LoaderError
from kvmpy.loader import (
    load_dtb,
    load_elf,
    load_initrd,
    load_raw,
    parse_linux_image_header,
)
from kvmpy.memory import GuestRAM

RAM_BASE = 0x8000_0000
AS = shutil.which("riscv64-unknown-elf-as")
LD = shutil.which("riscv64-unknown-elf-ld")


@pytest.fixture
def ram() -> GuestRAM:
    return GuestRAM(RAM_BASE, 4 << 20)


def build_elf(tmp_path: Path, body: str, base: int = RAM_BASE) -> Path:
    if AS is None or LD is None:
        pytest.fail("riscv64-unknown-elf binutils missing: scripts/install-deps installs them")
    src = tmp_path / "t.S"
    src.write_text(body)
    obj = tmp_path / "t.o"
    elf = tmp_path / "t.elf"
    script = tmp_path / "t.ld"
    script.write_text(f"""
PHDRS {{ text PT_LOAD; data PT_LOAD; }}
SECTIONS {{
  . = {base:#x};
  .text : {{ *(.text) }} :text
  . = ALIGN(0x1000);
  .data : {{ *(.data) }} :data
  .bss : {{ *(.bss) }} :data
}}
""")
    subprocess.run([AS, "-march=rv64gc", "-o", str(obj), str(src)], check=True)
    subprocess.run([LD, "-T", str(script), "-o", str(elf), str(obj)], check=True)
    return elf


PROGRAM = """
    .globl _start
_start:
    li a0, 1
    j _start
    .section .data
    .globl tohost
    .align 3
tohost: .dword 0
fromhost: .dword 0
    .section .bss
    .align 3
buf: .space 4096
"""


def test_elf_segments_entry_and_symbols(tmp_path: Path, ram: GuestRAM) -> None:
    elf = build_elf(tmp_path, PROGRAM)
    ram.write(RAM_BASE + 0x3000, b"\xff" * 16)
    image = load_elf(str(elf), ram)
    assert image.entry == RAM_BASE
    assert image.low == RAM_BASE
    tohost = image.symbol("tohost")
    assert tohost is not None and image.low < tohost < image.high
    assert image.symbol("fromhost") == tohost + 8
    assert image.symbol("nonexistent") is None
    assert ram.read_int(RAM_BASE, 4) != 0


def test_elf_outside_ram_is_refused(tmp_path: Path, ram: GuestRAM) -> None:
    elf = build_elf(tmp_path, PROGRAM, base=0x1000_0000)
    with pytest.raises(LoaderError, match=r"does not fit in RAM"):
        load_elf(str(elf), ram)


def test_truncated_elf(tmp_path: Path, ram: GuestRAM) -> None:
    elf = build_elf(tmp_path, PROGRAM)
    data = elf.read_bytes()
    for cut in (20, 64, 200, len(data) // 2):
        bad = tmp_path / f"cut{cut}.elf"
        bad.write_bytes(data[:cut])
        with pytest.raises(LoaderError) as info:
            load_elf(str(bad), ram)
        assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_wrong_machine_elf(tmp_path: Path, ram: GuestRAM) -> None:
    with pytest.raises(LoaderError, match="not a 64-bit RISC-V ELF"):
        load_elf("/bin/true", ram)


def test_overlapping_segments(tmp_path: Path, ram: GuestRAM) -> None:
    elf = build_elf(tmp_path, PROGRAM)
    data = bytearray(elf.read_bytes())
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads = [phoff + i * phentsize for i in range(phnum)
             if struct.unpack_from("<I", data, phoff + i * phentsize)[0] == 1]
    assert len(loads) >= 2
    first_paddr, = struct.unpack_from("<Q", data, loads[0] + 0x18)
    for off in (0x10, 0x18):
        struct.pack_into("<Q", data, loads[1] + off, first_paddr)
    bad = tmp_path / "overlap.elf"
    bad.write_bytes(bytes(data))
    with pytest.raises(LoaderError, match="overlap"):
        load_elf(str(bad), ram)


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "unreadable"])
def test_unloadable_files(tmp_path: Path, ram: GuestRAM, kind: str) -> None:
    path = tmp_path / "f"
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "unreadable":
        path.write_bytes(b"x")
        path.chmod(0)
        if os.access(path, os.R_OK):
            path.chmod(0o600)
            path = tmp_path / "missing-because-root-reads-everything"
    for loader in (lambda: load_elf(str(path), ram), lambda: load_raw(str(path), ram, RAM_BASE),
                   lambda: load_initrd(str(path), ram, RAM_BASE)):
        with pytest.raises(LoaderError) as info:
            loader()
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_raw_and_gzip_and_fit(tmp_path: Path, ram: GuestRAM) -> None:
    raw = tmp_path / "raw.bin"
    raw.write_bytes(b"abcd" * 10)
    blob = load_raw(str(raw), ram, RAM_BASE + 0x1000)
    assert (blob.start, blob.size) == (RAM_BASE + 0x1000, 40)
    assert ram.read(RAM_BASE + 0x1000, 4) == b"abcd"
    gz = tmp_path / "raw.gz"
    gz.write_bytes(gzip.compress(b"wxyz" * 4))
    load_raw(str(gz), ram, RAM_BASE)
    assert ram.read(RAM_BASE, 4) == b"wxyz"
    bad_gz = tmp_path / "bad.gz"
    bad_gz.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(LoaderError, match="bad gzip"):
        load_raw(str(bad_gz), ram, RAM_BASE)
    with pytest.raises(LoaderError, match="do not fit in RAM"):
        load_raw(str(raw), ram, ram.end - 8)


def test_initrd_is_loaded_verbatim_even_when_compressed(tmp_path: Path, ram: GuestRAM) -> None:
    data = gzip.compress(b"070701" + bytes(100))
    initrd = tmp_path / "initrd.gz"
    initrd.write_bytes(data)
    blob = load_initrd(str(initrd), ram, RAM_BASE + 0x10000)
    assert ram.read(blob.start, blob.size) == data


def linux_header(efi: bool = False, old_magic: bool = False) -> bytes:
    header = bytearray(64)
    header[0:2] = b"MZ" if efi else b"\x13\x00"
    struct.pack_into("<QQQI", header, 8, 0x200000, 0x1234000, 0, 2)
    if old_magic:
        header[48:56] = b"RISCV\0\0\0"
    header[56:60] = b"RSC\x05"
    return bytes(header)


def test_linux_image_header() -> None:
    hdr = parse_linux_image_header(linux_header())
    assert hdr is not None
    assert (hdr.text_offset, hdr.image_size, hdr.version, hdr.efi_stub) == \
        (0x200000, 0x1234000, 2, False)
    efi = parse_linux_image_header(linux_header(efi=True, old_magic=True))
    assert efi is not None and efi.efi_stub
    assert parse_linux_image_header(b"\0" * 64) is None
    assert parse_linux_image_header(b"short") is None


def test_dtb(tmp_path: Path) -> None:
    good = tmp_path / "good.dtb"
    body = struct.pack(">IIIIIIIIII", 0xD00DFEED, 48, 40, 44, 48, 17, 16, 0, 4, 0) + bytes(8)
    good.write_bytes(body)
    assert load_dtb(str(good)) == body
    for name, content, reason in [("magic.dtb", b"\0" * 64, "bad magic"),
                                  ("short.dtb", body[:20], "bad magic"),
                                  ("trunc.dtb", body[:44], "truncated")]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(LoaderError, match=reason):
            load_dtb(str(path))
    with pytest.raises(LoaderError, match="Can't open dtb file"):
        load_dtb(str(tmp_path / "nope.dtb"))
