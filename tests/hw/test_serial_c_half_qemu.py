"""The 16550 with its C half against qemu-system-riscv64 7.2 (the oracle): the same UART
access sequence replayed on QEMU's -M virt (tests/hw/guests/mmio_probe.elf) and on kvmpy's
virt devices, where each UART access goes to the C half first, as an accelerator sends it.
Every value read and the interrupt pins after every access must match."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kvmpy.hw.char import uart_fast
from kvmpy.hw.char.serial import SerialMM

from .test_qemu_oracle import (
    MIP_MASK,
    PLIC,
    UART,
    Access,
    compare,
    kvmpy_virt,
    needs_qemu,
    plic_enable,
    plic_prio,
    r,
    replay_on_qemu,
    uart,
    w,
)

pytestmark = [
    needs_qemu,
    pytest.mark.skipif(not uart_fast.available(),
                       reason="the C device models are not built (python kvmpy/hw/_build.py)"),
]


def b(reg: int) -> Access:
    return r(uart(reg), 1)


def wb(reg: int, value: int) -> Access:
    return w(uart(reg), value, 1)


CONSOLE = [
    w(plic_prio(10), 1), w(plic_enable(1), 1 << 10),
    b(5), wb(0, 0x6B), b(5), wb(0, 0x76), b(5), w(uart(0), 0x4D, 4),   # polled output
    wb(1, 0x02), r(PLIC + 0x1000), b(2),                                 # THRI: Python
    wb(0, 0x21), b(5),
    wb(1, 0x00), b(2), wb(0, 0x0A), b(5),                                # polled again
    wb(3, 0x83), wb(0, 0x01), wb(1, 0x00), b(5), b(0), b(1), wb(3, 0x03),  # divisor latch
    wb(4, 0x18), wb(0, 0x55), b(5), wb(0, 0x56), b(5), b(5), b(0), b(5),  # loopback, overrun
    wb(1, 0x05), wb(0, 0x57), wb(0, 0x58), r(PLIC + 0x1000), b(2), b(5), b(2), b(0),
    wb(1, 0x00), wb(4, 0x08), wb(2, 0x07), b(2), b(5), wb(0, 0x2E), b(5), wb(2, 0x00),
    b(5), wb(7, 0x5A), b(7), b(6), b(4), b(3),
]


def replay_with_c_half(accesses: list[Access]) -> tuple[list[tuple[int, int]], int]:
    """As test_qemu_oracle.replay_on_kvmpy, the UART's accesses offered to its C half
    first; also how many the C half completed."""
    from kvmpy.hw import _cdev  # type: ignore[attr-defined]

    bus, pins, _ram = kvmpy_virt()
    region = bus.find(UART)
    assert region is not None
    serial: Any = region.device
    assert isinstance(serial, SerialMM)
    handler = serial.c_mmio()
    assert handler is not None
    ffi = _cdev.ffi
    fn = ffi.cast("int (*)(void *, uint64_t, uint32_t, int, uint64_t *)", handler.function)
    opaque = ffi.cast("void *", handler.opaque)
    cell = ffi.new("uint64_t *")
    results, in_c = [], 0
    try:
        for op, gpa, size, value in accesses:
            got = 0
            cell[0] = value
            if region.base <= gpa < region.end and fn(opaque, gpa - UART, size, op == "w",
                                                      cell):
                in_c += 1
                got = int(cell[0]) if op == "r" else 0
            elif op == "r":
                handler.flush()
                got = bus.read(gpa, size)
            else:
                handler.flush()
                bus.write(gpa, size, value)
            results.append((got, pins.mip & MIP_MASK))
    finally:
        handler.detach()
    return results, in_c


def test_console_sequence_same_as_qemu(tmp_path: Path) -> None:
    ours, in_c = replay_with_c_half(CONSOLE)
    assert in_c >= 15  # polled output, LSR polls (also under DLAB and loopback)
    compare("uart_c_half", CONSOLE, replay_on_qemu(CONSOLE, tmp_path), ours)
