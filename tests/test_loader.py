"""Loaders: good files load where they should, bad files give one line naming file and reason."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from kvmpy.errors import LoaderError
from kvmpy.loader import (
    ElfImage,
    LoadedBlob,
    load_dtb,
    load_elf,
    load_image,
    load_initrd,
    load_raw,
    parse_linux_image_header,
    read_file,
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
    loaders = [lambda: load_elf(str(path), ram), lambda: load_raw(str(path), ram, RAM_BASE),
               lambda: load_image(str(path), ram, RAM_BASE)]
    if kind != "empty":  # an empty initrd is loaded, as QEMU does (test_empty_initrd)
        loaders.append(lambda: load_initrd(str(path), ram, RAM_BASE))
    for loader in loaders:
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


# -- inputs that are not files, or do not fit: refused at once, never read without end --------

@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


@pytest.fixture
def sparse(tmp_path: Path) -> Path:
    """A 64 GiB file of zeros that takes no disk space: reading it whole would not end."""
    path = tmp_path / "sparse"
    with path.open("wb") as f:
        f.truncate(64 << 30)
    return path


def _kernel_loaders(ram: GuestRAM) -> dict[str, Callable[[str], object]]:
    return {
        "kernel": lambda p: load_image(p, ram, RAM_BASE),
        "firmware": lambda p: load_image(p, ram, RAM_BASE, what="firmware"),
        "elf": lambda p: load_elf(p, ram),
        "raw": lambda p: load_raw(p, ram, RAM_BASE),
        "file": lambda p: read_file(p, "file", ram.size),
    }


@pytest.mark.timeout(20)
@pytest.mark.parametrize("loader", ["kernel", "firmware", "elf", "raw", "file"])
def test_a_fifo_directory_or_char_device_is_refused(ram: GuestRAM, fifo: Path, tmp_path: Path,
                                                     loader: str) -> None:
    load = _kernel_loaders(ram)[loader]
    what = {"firmware": "firmware", "file": "file"}.get(loader, "kernel")
    for path, reason in [(str(fifo), "Is a FIFO"), (str(tmp_path), "Is a directory"),
                         ("/dev/zero", "character device is empty"),
                         ("/dev/null", "character device is empty")]:
        with pytest.raises(LoaderError) as info:
            load(path)
        assert str(info.value) == f"could not load {what} '{path}': {reason}"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("loader", ["kernel", "firmware", "raw", "file"])
def test_a_file_larger_than_ram_is_refused_unread(ram: GuestRAM, sparse: Path,
                                                  loader: str) -> None:
    what = {"firmware": "firmware", "file": "file"}.get(loader, "kernel")
    with pytest.raises(LoaderError) as info:
        _kernel_loaders(ram)[loader](str(sparse))
    assert str(info.value) == (f"could not load {what} '{sparse}': {64 << 30} bytes do not fit "
                               f"in guest RAM ({4 << 20} bytes)")


@pytest.mark.timeout(20)
def test_a_gzip_bomb_stops_at_the_size_of_ram(tmp_path: Path, ram: GuestRAM) -> None:
    bomb = tmp_path / "bomb.gz"
    bomb.write_bytes(gzip.compress(bytes(ram.size + 1)))
    assert bomb.stat().st_size < 16384
    for load in (lambda: load_image(str(bomb), ram, RAM_BASE),
                 lambda: load_raw(str(bomb), ram, RAM_BASE)):
        with pytest.raises(LoaderError) as info:
            load()
        assert str(info.value) == (f"could not load kernel '{bomb}': decompressed, it does not "
                                   f"fit in guest RAM ({4 << 20} bytes)")
    exact = tmp_path / "exact.gz"
    exact.write_bytes(gzip.compress(b"\x13" * ram.size))
    assert load_image(str(exact), ram, RAM_BASE) == LoadedBlob(RAM_BASE, ram.end)


def test_an_elf_larger_than_ram_loads_its_segments(tmp_path: Path, ram: GuestRAM) -> None:
    """A kernel with debug information may be larger than guest RAM (QEMU loads it): only
    its segments and symbols are read."""
    elf = build_elf(tmp_path, PROGRAM)
    with elf.open("r+b") as f:
        f.truncate(4 * ram.size)
    image = load_image(str(elf), ram, RAM_BASE + 0x10000)
    assert isinstance(image, ElfImage) and image.entry == RAM_BASE
    assert image.symbol("tohost") is not None


@pytest.mark.timeout(20)
def test_an_elf_segment_beyond_ram_is_refused_before_it_is_read(tmp_path: Path,
                                                               ram: GuestRAM) -> None:
    elf = build_elf(tmp_path, PROGRAM)
    data = bytearray(elf.read_bytes())
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    last_load = [phoff + i * phentsize for i in range(phnum)
                 if struct.unpack_from("<I", data, phoff + i * phentsize)[0] == 1][-1]
    # p_filesz and p_memsz: 64 GiB, in a file of a few KiB
    struct.pack_into("<QQ", data, last_load + 0x20, 64 << 30, 64 << 30)
    bad = tmp_path / "huge-segment.elf"
    bad.write_bytes(bytes(data))
    with pytest.raises(LoaderError, match=r"segment 0x80001000-0x1080000fff does not fit in RAM"):
        load_elf(str(bad), ram)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_an_initrd_that_measures_0_bytes_is_empty(ram: GuestRAM, device: str) -> None:
    """QEMU measures a file with lseek(SEEK_END): /dev/zero is 0 bytes, an empty initrd."""
    assert load_initrd(device, ram, RAM_BASE + 0x1000) == LoadedBlob(RAM_BASE + 0x1000,
                                                                    RAM_BASE + 0x1000)


def test_empty_initrd(tmp_path: Path, ram: GuestRAM) -> None:
    empty = tmp_path / "empty.cpio"
    empty.write_bytes(b"")
    assert load_initrd(str(empty), ram, RAM_BASE).size == 0


@pytest.mark.timeout(20)
def test_initrd_refusals(ram: GuestRAM, fifo: Path, tmp_path: Path, sparse: Path) -> None:
    for path, reason in [(fifo, "Is a FIFO"), (tmp_path, "Is a directory"),
                         (sparse, f"{64 << 30} bytes at 0x80001000 do not fit in RAM "
                                  "(0x80000000-0x803fffff)")]:
        with pytest.raises(LoaderError) as info:
            load_initrd(str(path), ram, RAM_BASE + 0x1000)
        assert str(info.value) == f"could not load ramdisk '{path}': {reason}"


@pytest.mark.timeout(20)
def test_dtb_refusals(fifo: Path, tmp_path: Path, sparse: Path) -> None:
    for path, message in [(fifo, f"Can't open dtb file {fifo}: Is a FIFO"),
                          (tmp_path, f"Can't open dtb file {tmp_path}: Is a directory"),
                          ("/dev/zero", "/dev/zero: not a device tree blob (bad magic)"),
                          (sparse, f"{sparse}: not a device tree blob (bad magic)")]:
        with pytest.raises(LoaderError) as info:
            load_dtb(str(path))
        assert str(info.value) == message


def test_elf_headers_in_the_page_below_ram_are_dropped(tmp_path: Path, ram: GuestRAM) -> None:
    """``ld -Ttext=0x80000000`` without -N: the first PT_LOAD starts one page below RAM with
    the ELF and program headers; QEMU loads the part in RAM and drops the rest, and so does
    kvmpy.  A segment that ends outside RAM is still refused."""
    if AS is None or LD is None:
        pytest.fail("riscv64-unknown-elf binutils missing: scripts/install-deps installs them")
    src, obj, elf = tmp_path / "t.S", tmp_path / "t.o", tmp_path / "t.elf"
    src.write_text(".globl _start\n_start: li a0, 0x1234\n1: j 1b\n")
    subprocess.run([AS, "-march=rv64gc", "-o", str(obj), str(src)], check=True)
    subprocess.run([LD, f"-Ttext={RAM_BASE:#x}", "-o", str(elf), str(obj)], check=True)
    data = elf.read_bytes()
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    paddr = min(struct.unpack_from("<Q", data, phoff + i * phentsize + 0x18)[0]
                for i in range(phnum)
                if struct.unpack_from("<I", data, phoff + i * phentsize)[0] == 1)  # PT_LOAD
    assert paddr == RAM_BASE - 0x1000  # what this test is about: headers below RAM
    ram.write(RAM_BASE + 8, b"\xff" * 8)
    image = load_elf(str(elf), ram)
    assert image.entry == RAM_BASE and image.low == RAM_BASE
    text_offset = RAM_BASE - paddr  # the file offset of .text in that segment
    assert ram.read(RAM_BASE, 8) == data[text_offset:text_offset + 8]
