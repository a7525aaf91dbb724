"""Loaders for what goes into guest RAM: ELF files, RISC-V Linux ``Image``, raw blobs, initrd, DTB.

Every failure is a :class:`~kvmpy.errors.LoaderError` whose message names the file and the
reason in one line; nothing here raises anything else for a bad file.  Every read is bounded
by the room the file must fit in (:mod:`kvmpy.hostfile` opens it and measures it first): a
directory, a FIFO, ``/dev/zero`` or a file larger than guest RAM is refused at once, never read
without end.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, NamedTuple

from kvmpy.errors import LoaderError
from kvmpy.hostfile import HostFile, open_host_file
from kvmpy.memory import GuestRAM

EM_RISCV = 243
ELFCLASS64 = 2
ELFDATA2LSB = 1
PT_LOAD = 1
FDT_MAGIC = 0xD00DFEED
IMAGE_MAGIC2 = b"RSC\x05"
IMAGE_MAGIC = b"RISCV\x00\x00\x00"
ELF_MAGIC = b"\x7fELF"
GZIP_MAGIC = b"\x1f\x8b"
DTB_MAX_SIZE = 1 << 24
"""Bytes of a ``-dtb`` file read at most (a device tree is kilobytes)."""

__all__ = [
    "ElfImage",
    "ElfSegment",
    "LinuxImageHeader",
    "LoadedBlob",
    "load_dtb",
    "load_elf",
    "load_image",
    "load_initrd",
    "load_raw",
    "parse_linux_image_header",
    "read_elf64_loads",
    "read_file",
]


@contextlib.contextmanager
def _opened(path: str, what: str) -> Iterator[tuple[BinaryIO, HostFile]]:
    """The file for reading and its size; ``could not load kernel 'X': Is a directory``."""
    try:
        host = open_host_file(path)
    except OSError as exc:
        raise LoaderError(f"could not load {what} '{path}': "
                          f"{exc.strerror or os.strerror(exc.errno or 0)}") from None
    with os.fdopen(host.fd, "rb") as f:
        try:
            yield f, host
        except OSError as exc:
            raise LoaderError(f"could not load {what} '{path}': "
                              f"{exc.strerror or exc}") from None


def _too_large(path: str, what: str, size: int, limit: int) -> LoaderError:
    return LoaderError(f"could not load {what} '{path}': {size} bytes do not fit in guest RAM "
                       f"({limit} bytes)")


def _read_contents(f: BinaryIO, host: HostFile, path: str, what: str, limit: int) -> bytes:
    """At most ``limit`` bytes, gzip data decompressed; refuses an empty file or device."""
    if host.size == 0:
        raise LoaderError(f"could not load {what} '{path}': {host.kind} is empty")
    if host.size > limit:  # compressed or not: gzip does not shrink what does not fit
        raise _too_large(path, what, host.size, limit)
    data = f.read(host.size)
    if data[:2] == GZIP_MAGIC:
        import gzip  # only for a compressed file
        import zlib

        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as unzipped:
                data = unzipped.read(limit + 1)
        except (OSError, EOFError, zlib.error) as exc:
            raise LoaderError(f"could not load {what} '{path}': bad gzip data ({exc})"
                              ) from None
        if len(data) > limit:
            raise LoaderError(f"could not load {what} '{path}': decompressed, it does not fit "
                              f"in guest RAM ({limit} bytes)")
    return data


def read_file(path: str, what: str, limit: int) -> bytes:
    """The whole file, or a LoaderError such as ``could not load kernel 'X': Is a directory``.

    gzip-compressed files are decompressed (distribution kernels are often shipped that way).
    ``limit`` bounds the file and its decompressed contents (bytes): the guest RAM it may fill.
    """
    with _opened(path, what) as (f, host):
        return _read_contents(f, host, path, what, limit)


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
    """An ELF file loaded into RAM. ``low``/``high`` bound its PT_LOAD segments (high exclusive);
    ``symbols``: name to value, empty when the loader was not asked for them."""

    path: str
    entry: int
    low: int
    high: int
    symbols: dict[str, int] = field(default_factory=dict)

    def symbol(self, name: str) -> int | None:
        """Address of ``name`` (``tohost``, ``fromhost``), or None when the ELF lacks it."""
        return self.symbols.get(name)


def is_elf(data: bytes) -> bool:
    return data[:4] == ELF_MAGIC


class ElfSegment(NamedTuple):
    """A PT_LOAD program header's placement: ``filesz`` bytes at file ``offset`` go to
    guest-physical ``paddr``, followed by zeros up to ``memsz`` (ELF gABI, "Program Header")."""

    paddr: int
    offset: int
    filesz: int
    memsz: int


_ELF64_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_ELF64_PHDR = struct.Struct("<IIQQQQQQ")
_PN_XNUM = 0xFFFF


def read_elf64_loads(stream: BinaryIO) -> tuple[int, list[ElfSegment]] | None:
    """The entry point and the PT_LOAD segments with memory (file order) of a little-endian
    64-bit RISC-V ELF whose header and program header table are whole, read with two reads;
    None for any other file (another class, byte order or machine, an odd header table, a
    short file), which the full parser (pyelftools) then reads or refuses with its reason.

    Only the ELF header and the program headers: what QEMU's ``load_elf`` reads to load.
    """
    stream.seek(0)
    header = stream.read(_ELF64_EHDR.size)
    if len(header) != _ELF64_EHDR.size:
        return None
    (ident, _type, machine, _version, entry, phoff, _shoff, _flags, _ehsize, phentsize,
     phnum, *_) = _ELF64_EHDR.unpack(header)
    if (ident[:4] != ELF_MAGIC or ident[4] != ELFCLASS64 or ident[5] != ELFDATA2LSB
            or machine != EM_RISCV or phnum == _PN_XNUM
            or (phnum and phentsize != _ELF64_PHDR.size)):
        return None
    stream.seek(phoff)
    table = stream.read(phnum * _ELF64_PHDR.size)
    if len(table) != phnum * _ELF64_PHDR.size:
        return None
    loads = []
    for p_type, _pflags, offset, _vaddr, paddr, filesz, memsz, _align in \
            _ELF64_PHDR.iter_unpack(table):
        if p_type == PT_LOAD and memsz != 0:
            loads.append(ElfSegment(paddr, offset, filesz, memsz))
    return entry, loads


def load_elf(path: str, ram: GuestRAM, what: str = "kernel",
             data: bytes | None = None, symbols: bool = True) -> ElfImage:
    """Copy the PT_LOAD segments of a 64-bit RISC-V ELF into RAM (bss zeroed).

    The file is parsed where it lies (or from ``data``, its decompressed bytes): only the
    headers, the symbol tables and segments that fit in ``ram`` are read, so a kernel with
    debug information may be larger than guest RAM, as with QEMU.  ``symbols=False``: the
    symbol tables are not read (:attr:`ElfImage.symbols` stays empty), nor any section
    header: only what QEMU's loader reads to load a kernel or firmware.
    """
    if data is not None:
        return _load_elf_from(io.BytesIO(data), path, ram, what, symbols)
    with _opened(path, what) as (f, host):
        if host.size == 0:
            raise LoaderError(f"could not load {what} '{path}': {host.kind} is empty")
        return _load_elf_from(f, path, ram, what, symbols)


def _load_elf_from(stream: BinaryIO, path: str, ram: GuestRAM, what: str,
                   symbols: bool) -> ElfImage:
    def error(reason: str) -> LoaderError:
        return LoaderError(f"could not load {what} '{path}': {reason}")

    if stream.read(4) != ELF_MAGIC:
        raise error("not an ELF file")
    stream.seek(0)
    # pyelftools takes ~20 ms to import: only for the symbols, or a file the plain reader
    # leaves to it (it also words the refusals of a foreign or malformed ELF)
    plain = None if symbols else read_elf64_loads(stream)
    if plain is not None:
        entry, loads = plain
        found = _load_segments(stream, loads, ram, error)
        return _elf_image(path, entry, loads, found, ram, {})
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    try:
        elf = ELFFile(stream)
        if elf.elfclass != 64 or elf["e_machine"] != "EM_RISCV":
            raise error(f"not a 64-bit RISC-V ELF (class {elf.elfclass}, machine "
                        f"{elf['e_machine']})")
        loads = [ElfSegment(seg["p_paddr"], seg["p_offset"], seg["p_filesz"], seg["p_memsz"])
                 for seg in elf.iter_segments()
                 if seg["p_type"] == "PT_LOAD" and seg["p_memsz"] != 0]
        found = _load_segments(stream, loads, ram, error)
        table: dict[str, int] = {}
        for section in elf.iter_sections() if symbols else ():
            if isinstance(section, SymbolTableSection):
                for sym in section.iter_symbols():
                    if sym.name and sym["st_shndx"] != "SHN_UNDEF":
                        table.setdefault(sym.name, sym["st_value"])
        entry = int(elf["e_entry"])
    except (ELFError, struct.error, ValueError, KeyError, IndexError) as exc:
        raise error(f"malformed ELF ({exc})") from None
    return _elf_image(path, entry, loads, found, ram, table)


def _load_segments(stream: BinaryIO, loads: list[ElfSegment], ram: GuestRAM,
                   error: Callable[[str], LoaderError]) -> list[bytes]:
    """Checks ``loads`` (sorted here by address) against each other and RAM, then reads the
    file part of each that lies in RAM; the bodies, in ``loads``' new order."""
    if not loads:
        raise error("no loadable segments")
    loads.sort(key=lambda seg: seg.paddr)
    for seg in loads:
        if seg.filesz > seg.memsz:
            raise error("segment file size exceeds its memory size")
    for a, b in itertools.pairwise(loads):
        if a.paddr + a.memsz > b.paddr:
            raise error(f"segments at 0x{a.paddr:x} and 0x{b.paddr:x} overlap")
    for seg in loads:
        addr, memsz = seg.paddr, seg.memsz
        # The part of a segment below RAM is dropped, as QEMU's ROM loader drops writes
        # to unbacked addresses (`ld -Ttext=0x80000000` without -N puts the ELF headers
        # in the page below RAM); its end must be in RAM.
        if addr + memsz <= ram.base or not ram.contains(max(addr, ram.base),
                                                        addr + memsz - max(addr, ram.base)):
            raise error(f"segment 0x{addr:x}-0x{addr + memsz - 1:x} does not fit in RAM "
                        f"0x{ram.base:x}-0x{ram.end - 1:x}")
    # Bounded now: each segment's part in RAM fits, and its file part in its memory part.
    bodies = []
    for seg in loads:
        skip = min(max(ram.base - seg.paddr, 0), seg.filesz)
        stream.seek(seg.offset + skip)
        body = stream.read(seg.filesz - skip)
        if len(body) != seg.filesz - skip:
            raise error(f"truncated segment at 0x{seg.paddr:x}")
        bodies.append(body)
    return bodies


def _elf_image(path: str, entry: int, loads: list[ElfSegment], bodies: list[bytes],
               ram: GuestRAM, symbols: dict[str, int]) -> ElfImage:
    """Writes the checked segments to RAM (bss zeroed)."""
    for seg, body in zip(loads, bodies, strict=True):
        start, end = max(seg.paddr, ram.base), seg.paddr + seg.memsz
        ram.write(start, body + bytes(end - start - len(body)))
    low = max(loads[0].paddr, ram.base)
    high = max(seg.paddr + seg.memsz for seg in loads)
    return ElfImage(path, entry, low, high, symbols)


def load_image(path: str, ram: GuestRAM, addr: int, what: str = "kernel",
               symbols: bool = True) -> ElfImage | LoadedBlob:
    """QEMU's ``riscv_load_kernel`` and ``riscv_find_and_load_firmware``: an ELF goes to its
    own addresses; anything else (decompressed first when gzip) is copied raw to ``addr``.
    ``symbols``: as for :func:`load_elf`."""
    with _opened(path, what) as (f, host):
        if host.size == 0:
            raise LoaderError(f"could not load {what} '{path}': {host.kind} is empty")
        head = f.read(4)
        f.seek(0)
        if head == ELF_MAGIC:
            return _load_elf_from(f, path, ram, what, symbols)
        data = _read_contents(f, host, path, what, ram.size)
    if is_elf(data):  # a compressed ELF
        return load_elf(path, ram, what, data=data, symbols=symbols)
    return load_raw(path, ram, addr, what, data=data)


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
        data = read_file(path, what, ram.size)
    end = addr + len(data)
    top = ram.end if limit is None else min(limit, ram.end)
    if addr < ram.base or end > top:
        raise LoaderError(f"could not load {what} '{path}': {len(data)} bytes at 0x{addr:x} "
                          f"do not fit in RAM (0x{ram.base:x}-0x{top - 1:x})")
    ram.write(addr, data)
    return LoadedBlob(addr, end)


def load_initrd(path: str, ram: GuestRAM, addr: int) -> LoadedBlob:
    """QEMU's ``riscv_load_initrd``: the file verbatim at ``addr`` (a compressed initramfs stays
    compressed). An empty file or device (``/dev/zero`` measures 0 bytes) is an empty initrd,
    as in QEMU 7.2; the guest then finds none."""
    what = "ramdisk"
    with _opened(path, what) as (f, host):
        room = max(ram.end - addr, 0)
        if host.size > room:
            raise LoaderError(f"could not load {what} '{path}': {host.size} bytes at "
                              f"0x{addr:x} do not fit in RAM (0x{ram.base:x}-0x{ram.end - 1:x})")
        data = f.read(host.size)
    return load_raw(path, ram, addr, what=what, data=data)


def load_dtb(path: str) -> bytes:
    """Read and sanity-check a flattened device tree blob (at most DTB_MAX_SIZE bytes)."""
    try:
        host = open_host_file(path)
        with os.fdopen(host.fd, "rb") as f:
            data = f.read(min(host.size, DTB_MAX_SIZE))
    except OSError as exc:
        raise LoaderError(f"Can't open dtb file {path}: {exc.strerror or exc}") from None
    if len(data) < 40 or struct.unpack_from(">I", data, 0)[0] != FDT_MAGIC:
        raise LoaderError(f"{path}: not a device tree blob (bad magic)")
    total = struct.unpack_from(">I", data, 4)[0]
    if total > len(data) or total < 40:
        raise LoaderError(f"{path}: truncated device tree blob ({len(data)} of {total} bytes)")
    return data[:total]
