"""SiFive test finisher, QEMU's ``riscv.sifive.test`` (hw/misc/sifive_test.c).

A 2- or 4-byte write at offset 0: the low 16 bits are a status, the high 16 bits a code.
``0x3333`` FAIL ends the VM with exit status ``code``, ``0x5555`` PASS with status 0,
``0x7777`` RESET requests a guest reset.  Linux reaches it through the ``syscon-poweroff``
(0x5555) and ``syscon-reboot`` (0x7777) nodes.  Reads return 0.  The board injects what each
request does (shutdown, exit status, reset).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kvmpy import log
from kvmpy.hw.core import SysBusDevice
from kvmpy.qom import register_type

FINISHER_FAIL = 0x3333
FINISHER_PASS = 0x5555
FINISHER_RESET = 0x7777


@dataclass
class SifiveTestState:
    """Stateless device."""


def _nothing(*_args: int) -> None:
    return None


@register_type("riscv.sifive.test", "sys-bus-device", description="SiFive test finisher")
class SifiveTest(SysBusDevice):
    access_sizes = (2, 4)
    name = "riscv.sifive.test"
    region_size = 0x1000

    def __init__(self, on_pass: Callable[[], None] = _nothing,
                 on_fail: Callable[[int], None] = _nothing,
                 on_reset: Callable[[], None] = _nothing) -> None:
        self.on_pass = on_pass
        self.on_fail = on_fail
        self.on_reset = on_reset
        self.state = SifiveTestState()

    def mmio_read(self, offset: int, size: int) -> int:
        return 0

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if offset == 0:
            status, code = value & 0xFFFF, (value >> 16) & 0xFFFF
            if status == FINISHER_FAIL:
                self.on_fail(code)
                return
            if status == FINISHER_PASS:
                self.on_pass()
                return
            if status == FINISHER_RESET:
                self.on_reset()
                return
        log.guest_error(f"sifive_test_write: write: addr=0x{offset:x} val=0x{value:016x}")
