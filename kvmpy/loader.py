"""Loaders for what goes into guest RAM: ELF files, RISC-V Linux ``Image``, raw blobs, initrd, DTB.

Every failure is a :class:`~kvmpy.errors.LoaderError` whose message names the file and the
reason in one line; nothing here raises anything else for a bad file.
"""

from __future__ import annotations

import gzip
import itertools
import os
import stat
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from kvmpy.errors import LoaderError
from kvmpy.memory import GuestRAM

EM_RISCV = 243
PT_LOAD = 1
FDT_MAGIC = 0xD00DFEED
IMAGE_MAGIC2 = b"RSC\x05"
IMAGE_MAGIC = b"RISCV\x00\x00\x00"
MAX_FILE_SIZE = 1 << 34

__all__ = [
    "ElfImage",
    "LinuxImageHeader",
    "LoadedBlob",
    "load_dtb",
    "load_elf",
    "load_initrd",
    "load_raw",
    "parse_linux_image_header",
    "read_file",
]


def _read_bounded(path: str, what: str) -> bytes:
    """The file's bytes; refuses directories and files beyond MAX_FILE_SIZE before reading."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(21, "Is a directory")
            if st.st_size > MAX_FILE_SIZE:
                raise LoaderError(f"could not load {what} '{path}': file too large")
            return f.read()
    except IsADirectoryError as exc:
        raise LoaderError(f"could not load {what} '{path}': {exc.strerror}") from None
    except OSError as exc:
        raise LoaderError(f"could not load {what} '{path}': {exc.strerror or exc}") from None


def read_file(path: str, what: str) -> bytes:
    """The whole file, or a LoaderError such as ``could not load kernel 'X': Is a directory``.

    gzip-compressed files are decompressed (distribution kernels are often shipped that way).
    """
    data = _read_bounded(path, what)
    if not data:
        raise LoaderError(f"could not load {what} '{path}': file is empty")
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise LoaderError(f"could not load {what} '{path}': bad gzip data ({exc})") from None
    return data


@dataclass(frozen=True)
class LoadedBlob:
    """A contiguous range ``[start, end)`` of guest-physical memory filled from a file."""

    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass
class ElfImage:
    """An ELF file loaded into RAM. ``low``/``high`` bound its PT_LOAD segments (high exclusive)."""

    path: str
    entry: int
    low: int
    high: int
    symbols: dict[str, int] = field(default_factory=dict)

    def symbol(self, name: str) -> int | None:
        """Address of ``name`` (``tohost``, ``fromhost``), or None when the ELF lacks it."""
        return self.symbols.get(name)


def is_elf(data: bytes) -> bool:
    return data[:4] == b"\x7fELF"


def load_elf(path: str, ram: GuestRAM, what: str = "kernel",
             data: bytes | None = None,
             writer: Callable[[int, bytes], None] | None = None) -> ElfImage:
    """Copy the PT_LOAD segments of a 64-bit RISC-V ELF into RAM (bss zeroed).

    ``writer(gpa, bytes)`` may be given to place segments outside RAM (a ROM); by default every
    segment must fit in ``ram``.
    """
    import io

    if data is None:
        data = read_file(path, what)
    if not is_elf(data):
        raise LoaderError(f"could not load {what} '{path}': not an ELF file")
    try:
        elf = ELFFile(io.BytesIO(data))
        if elf.elfclass != 64 or elf["e_machine"] != "EM_RISCV":
            raise LoaderError(f"could not load {what} '{path}': not a 64-bit RISC-V ELF "
                              f"(class {elf.elfclass}, machine {elf['e_machine']})")
        segments: list[tuple[int, bytes, int]] = []
        for seg in elf.iter_segments():
            if seg["p_type"] != "PT_LOAD" or seg["p_memsz"] == 0:
                continue
            body = seg.data()
            if len(body) != seg["p_filesz"]:
                raise LoaderError(f"could not load {what} '{path}': truncated segment at "
                                  f"0x{seg['p_paddr']:x}")
            if seg["p_filesz"] > seg["p_memsz"]:
                raise LoaderError(f"could not load {what} '{path}': segment file size exceeds "
                                  "its memory size")
            segments.append((seg["p_paddr"], body, seg["p_memsz"]))
        symbols: dict[str, int] = {}
        for section in elf.iter_sections():
            if isinstance(section, SymbolTableSection):
                for sym in section.iter_symbols():
                    if sym.name and sym["st_shndx"] != "SHN_UNDEF":
                        symbols.setdefault(sym.name, sym["st_value"])
        entry = int(elf["e_entry"])
    except (ELFError, struct.error, ValueError, KeyError, IndexError) as exc:
        raise LoaderError(f"could not load {what} '{path}': malformed ELF ({exc})") from None
    if not segments:
        raise LoaderError(f"could not load {what} '{path}': no loadable segments")
    segments.sort(key=lambda s: s[0])
    for (a, _, asz), (b, _, _) in itertools.pairwise(segments):
        if a + asz > b:
            raise LoaderError(f"could not load {what} '{path}': segments at 0x{a:x} and "
                              f"0x{b:x} overlap")
    for addr, _body, memsz in segments:
        if writer is None and not ram.contains(addr, memsz):
            raise LoaderError(
                f"could not load {what} '{path}': segment 0x{addr:x}-0x{addr + memsz - 1:x} "
                f"does not fit in RAM 0x{ram.base:x}-0x{ram.end - 1:x}")
    for addr, body, memsz in segments:
        image = body + bytes(memsz - len(body))
        (writer or ram.write)(addr, image)
    low = segments[0][0]
    high = max(addr + memsz for addr, _, memsz in segments)
    return ElfImage(path, entry, low, high, symbols)


@dataclass(frozen=True)
class LinuxImageHeader:
    """The 64-byte RISC-V Linux ``Image`` header (Linux: riscv/boot-image-header.rst)."""

    text_offset: int
    image_size: int
    flags: int
    version: int
    efi_stub: bool

    @property
    def big_endian(self) -> bool:
        return bool(self.flags & 1)


def parse_linux_image_header(data: bytes) -> LinuxImageHeader | None:
    """The header when ``data`` starts with one (magic2 ``RSC\\x05`` or the old ``RISCV``)."""
    if len(data) < 64:
        return None
    if data[56:60] != IMAGE_MAGIC2 and data[48:56] != IMAGE_MAGIC:
        return None
    text_offset, image_size, flags = struct.unpack_from("<QQQ", data, 8)
    version = struct.unpack_from("<I", data, 32)[0]
    return LinuxImageHeader(text_offset, image_size, flags, version, data[:2] == b"MZ")


def load_raw(path: str, ram: GuestRAM, addr: int, what: str = "kernel",
             data: bytes | None = None, limit: int | None = None) -> LoadedBlob:
    """Copy a file verbatim to ``addr``; it must fit below ``limit`` (default: end of RAM)."""
    if data is None:
        data = read_file(path, what)
    end = addr + len(data)
    top = ram.end if limit is None else min(limit, ram.end)
    if addr < ram.base or end > top:
        raise LoaderError(f"could not load {what} '{path}': {len(data)} bytes at 0x{addr:x} "
                          f"do not fit in RAM (0x{ram.base:x}-0x{top - 1:x})")
    ram.write(addr, data)
    return LoadedBlob(addr, end)


def load_initrd(path: str, ram: GuestRAM, addr: int) -> LoadedBlob:
    """Load an initial ramdisk at ``addr`` (compressed initramfs images are loaded as they are)."""
    data = _read_bounded(path, "initial ram disk")
    if not data:
        raise LoaderError(f"could not load initial ram disk '{path}': file is empty")
    return load_raw(path, ram, addr, what="initial ram disk", data=data)


def load_dtb(path: str) -> bytes:
    """Read and sanity-check a flattened device tree blob."""
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 24)
    except OSError as exc:
        raise LoaderError(f"Can't open dtb file {path}: {exc.strerror or exc}") from None
    if len(data) < 40 or struct.unpack_from(">I", data, 0)[0] != FDT_MAGIC:
        raise LoaderError(f"{path}: not a device tree blob (bad magic)")
    total = struct.unpack_from(">I", data, 4)[0]
    if total > len(data) or total < 40:
        raise LoaderError(f"{path}: truncated device tree blob ({len(data)} of {total} bytes)")
    return data[:total]
