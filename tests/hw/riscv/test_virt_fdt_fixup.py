"""fixup_chosen on the generated tree (not parsed again) writes the blob the parse of that
tree's own blob gives, byte for byte; a user's -dtb still goes through the parser."""

from __future__ import annotations

import fdt
import pytest

from kvmpy.errors import LoaderError
from kvmpy.hw.riscv import virt_fdt
from kvmpy.hw.riscv.virt_fdt import fixup_chosen

from .conftest import build_board


@pytest.mark.parametrize(("cmdline", "bootargs", "initrd"), [
    ("", None, None),
    ("console=ttyS0", "console=ttyS0", None),
    ("", "root=/dev/vda", (0x8400_0000, 0x8420_0000)),
    ("console=ttyS0 earlycon", "console=ttyS0 earlycon", (0x1_8000_0000, 0x1_8010_0000)),
])
def test_the_tree_and_its_blob_fix_up_alike(monkeypatch: pytest.MonkeyPatch, cmdline: str,
                                            bootargs: str | None,
                                            initrd: tuple[int, int] | None) -> None:
    system, machine = build_board(cpus=2, bios="none")
    system.close()
    assert machine.fdt_builder is not None  # the generated tree (no -dtb)
    builder = machine.fdt_builder
    if cmdline:
        builder.setprop("/chosen", "bootargs", cmdline)
    results = []
    for source in (builder.to_dtb(), builder.to_fdt()):
        monkeypatch.setattr("os.urandom", lambda n: bytes(range(n)))
        results.append(fixup_chosen(source, "fdt", bootargs=bootargs, initrd=initrd))
    assert results[0] == results[1]
    chosen = fdt.parse_dtb(results[1]).get_node("/chosen")
    assert virt_fdt.prop_bytes(chosen.get_property("rng-seed")) == bytes(range(32))
    if initrd is not None:
        assert chosen.get_property("linux,initrd-end").value == initrd[1] & 0xFFFFFFFF


def test_a_malformed_blob_is_still_refused() -> None:
    with pytest.raises(LoaderError, match=r"user\.dtb: malformed device tree blob"):
        fixup_chosen(b"\xd0\x0d\xfe\xed" + bytes(60), "user.dtb", bootargs="x", initrd=None)
