"""The loader's plain ELF64 program-header reader against pyelftools: the same segments and
entry on every real ELF at hand, the same RAM contents once loaded, the same refusals of bad
program headers, and every file it does not read left to pyelftools (and its wording)."""

from __future__ import annotations

import io
import lzma
import struct
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from kvmpy.errors import LoaderError
from kvmpy.loader import ElfImage, ElfSegment, load_elf, load_image, read_elf64_loads
from kvmpy.memory import GuestRAM

ROOT = Path(__file__).resolve().parent.parent
OPENSBI = Path("/usr/lib/riscv64-linux-gnu/opensbi/generic")
ELF_FILES = sorted([*(ROOT / "benchmarks" / "cpu-workload").glob("*.elf"),
                    *(ROOT / "tests" / "guests").glob("*.elf")])
FIRMWARE = [OPENSBI / "fw_dynamic.elf", OPENSBI / "fw_jump.elf"]


def _vmlinux() -> bytes:
    """The bundled guest's kernel as an ELF (linked at physical address 0)."""
    return lzma.decompress((ROOT / "kvmpy" / "guests" / "vmlinux.xz").read_bytes())


def _pyelftools_loads(data: bytes) -> tuple[int, list[ElfSegment]]:
    elf = ELFFile(io.BytesIO(data))
    return int(elf["e_entry"]), [
        ElfSegment(seg["p_paddr"], seg["p_offset"], seg["p_filesz"], seg["p_memsz"])
        for seg in elf.iter_segments() if seg["p_type"] == "PT_LOAD" and seg["p_memsz"]]


def _real_elves() -> list[tuple[str, bytes]]:
    files = [(str(p.relative_to(ROOT)), p.read_bytes()) for p in ELF_FILES]
    files += [(str(p), p.read_bytes()) for p in FIRMWARE if p.exists()]
    return files


def test_the_real_elves_are_there() -> None:
    """What the comparisons below run on: the workload, the ISA tests, OpenSBI (opensbi is
    installed on these machines) and the bundled vmlinux."""
    names = [name for name, _ in _real_elves()]
    assert "benchmarks/cpu-workload/cpu.elf" in names and len(names) >= 8
    assert all(Path(p).exists() for p in FIRMWARE), "opensbi is not installed"


def test_the_plain_reader_agrees_with_pyelftools() -> None:
    for name, data in [*_real_elves(), ("vmlinux", _vmlinux())]:
        assert read_elf64_loads(io.BytesIO(data)) == _pyelftools_loads(data), name


def _load_both(path: Path, ram_base: int, ram_size: int) -> tuple[ElfImage, bytes, ElfImage,
                                                                   bytes]:
    images = []
    for symbols in (True, False):
        ram = GuestRAM(ram_base, ram_size)
        ram.write(ram_base, b"\xa5" * ram_size)  # bss must be zeroed over this
        image = load_elf(str(path), ram, symbols=symbols)
        images += [image, ram.read(ram_base, ram_size)]
        ram.close()
    return images[0], images[1], images[2], images[3]  # type: ignore[return-value]


@pytest.mark.parametrize("path", [*ELF_FILES, *FIRMWARE], ids=lambda p: p.name)
def test_both_paths_load_the_same_bytes(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"{path} is not installed")
    with_symbols, ram_a, plain, ram_b = _load_both(path, 0x8000_0000, 4 << 20)
    assert ram_a == ram_b
    assert (plain.entry, plain.low, plain.high) == \
        (with_symbols.entry, with_symbols.low, with_symbols.high)
    assert plain.symbols == {} and with_symbols.symbols  # symbols only when asked for


def test_both_paths_load_the_bundled_vmlinux_alike(tmp_path: Path) -> None:
    path = tmp_path / "vmlinux"
    path.write_bytes(_vmlinux())
    with_symbols, ram_a, plain, ram_b = _load_both(path, 0, 8 << 20)
    assert ram_a == ram_b and ram_a[:8] != b"\xa5" * 8
    assert (plain.entry, plain.low, plain.high) == \
        (with_symbols.entry, with_symbols.low, with_symbols.high)
    assert with_symbols.symbol("_start") == 0xFFFFFFFF80000000  # linked high, loaded at 0


def test_a_gzip_compressed_elf_takes_the_plain_path_too(tmp_path: Path) -> None:
    import gzip

    source = ROOT / "benchmarks" / "cpu-workload" / "cpu.elf"
    packed = tmp_path / "cpu.elf.gz"
    packed.write_bytes(gzip.compress(source.read_bytes()))
    ram = GuestRAM(0x8000_0000, 4 << 20)
    image = load_image(str(packed), ram, 0x8000_0000, symbols=False)
    assert isinstance(image, ElfImage) and image.symbols == {}
    assert image.entry == read_elf64_loads(io.BytesIO(source.read_bytes()))[0]  # type: ignore[index]


# -- bad program headers: the same refusal from both paths ---------------------------------------

def _two_load_elf() -> bytearray:
    """An ISA test: text and data in two PT_LOAD segments."""
    return bytearray((ROOT / "tests" / "guests" / "rv64i_alu.elf").read_bytes())


def _load_offsets(data: bytearray) -> list[int]:
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return [phoff + i * phentsize for i in range(phnum)
            if struct.unpack_from("<II", data, phoff + i * phentsize)[0] == 1]


def _no_loads(data: bytearray) -> None:
    for off in _load_offsets(data):
        struct.pack_into("<I", data, off, 6)  # PT_PHDR


def _filesz_over_memsz(data: bytearray) -> None:
    off = _load_offsets(data)[0]
    memsz, = struct.unpack_from("<Q", data, off + 0x28)
    struct.pack_into("<Q", data, off + 0x20, memsz + 1)


def _huge(data: bytearray) -> None:
    struct.pack_into("<QQ", data, _load_offsets(data)[-1] + 0x20, 64 << 30, 64 << 30)


def _below_ram(data: bytearray) -> None:
    struct.pack_into("<Q", data, _load_offsets(data)[0] + 0x18, 0x1000)


def _past_eof(data: bytearray) -> None:
    struct.pack_into("<Q", data, _load_offsets(data)[0] + 0x08, len(data))


def _overlap(data: bytearray) -> None:
    first, second = _load_offsets(data)[:2]
    paddr, = struct.unpack_from("<Q", data, first + 0x18)
    struct.pack_into("<Q", data, second + 0x18, paddr)


BAD_PROGRAM_HEADERS = {
    "no-loads": (_no_loads, "no loadable segments"),
    "filesz-over-memsz": (_filesz_over_memsz, "segment file size exceeds its memory size"),
    "huge": (_huge, "does not fit in RAM"),
    "below-ram": (_below_ram, "does not fit in RAM"),
    "past-eof": (_past_eof, "truncated segment at"),
    "overlap": (_overlap, "overlap"),
}


@pytest.mark.parametrize("case", sorted(BAD_PROGRAM_HEADERS))
def test_bad_program_headers_are_refused_alike(tmp_path: Path, case: str) -> None:
    spoil, reason = BAD_PROGRAM_HEADERS[case]
    data = _two_load_elf()
    assert len(_load_offsets(data)) == 2
    spoil(data)
    path = tmp_path / f"{case}.elf"
    path.write_bytes(bytes(data))
    assert read_elf64_loads(io.BytesIO(bytes(data))) is not None  # the plain path reads it
    messages = []
    for symbols in (True, False):
        with pytest.raises(LoaderError) as info:
            load_elf(str(path), GuestRAM(0x8000_0000, 4 << 20), symbols=symbols)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert reason in messages[0] and str(path) in messages[0]


# -- files the plain reader leaves to pyelftools ----------------------------------------------

def _foreign() -> dict[str, bytes]:
    good = bytes(_two_load_elf())
    big_endian = bytearray(good)
    big_endian[5] = 2
    class32 = bytearray(good)
    class32[4] = 1
    bad_class = bytearray(good)
    bad_class[4] = 7
    x86 = bytearray(good)
    struct.pack_into("<H", x86, 0x12, 62)  # EM_X86_64
    phentsize = bytearray(good)
    struct.pack_into("<H", phentsize, 0x36, 40)
    return {"/bin/true": Path("/bin/true").read_bytes(), "big-endian": bytes(big_endian),
            "class32": bytes(class32), "bad-class": bytes(bad_class), "x86": bytes(x86),
            "small-phentsize": bytes(phentsize), "cut-header": good[:40],
            "cut-program-headers": good[:70]}


@pytest.mark.parametrize("case", ["/bin/true", "big-endian", "class32", "bad-class", "x86",
                                  "small-phentsize", "cut-header", "cut-program-headers"])
def test_files_the_plain_reader_leaves_are_refused_as_before(tmp_path: Path, case: str) -> None:
    data = _foreign()[case]
    assert read_elf64_loads(io.BytesIO(data)) is None
    path = tmp_path / "f.elf"
    path.write_bytes(data)
    messages = []
    for symbols in (True, False):
        with pytest.raises(LoaderError) as info:
            load_elf(str(path), GuestRAM(0x8000_0000, 4 << 20), symbols=symbols)
        messages.append(str(info.value))
    assert messages[0] == messages[1] and "\n" not in messages[0]
    assert messages[0].startswith(f"could not load kernel '{path}': ")
