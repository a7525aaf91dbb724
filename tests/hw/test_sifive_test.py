"""sifive_test finisher: pass, fail with a code, reset, and ignored writes."""

from __future__ import annotations

from typing import Any

from kvmpy.hw.misc.sifive_test import SifiveTest
from kvmpy.memory import MmioBus


def make() -> tuple[SifiveTest, list[tuple[str, int]]]:
    events: list[tuple[str, int]] = []
    dev = SifiveTest(on_pass=lambda: events.append(("pass", 0)),
                     on_fail=lambda code: events.append(("fail", code)),
                     on_reset=lambda: events.append(("reset", 0)))
    return dev, events


def test_pass_fail_reset() -> None:
    dev, events = make()
    dev.mmio_write(0, 4, 0x5555)
    dev.mmio_write(0, 4, 0x00033333)
    dev.mmio_write(0, 4, 0xFFFF3333)
    dev.mmio_write(0, 4, 0x7777)
    dev.mmio_write(0, 2, 0x5555)  # syscon regmaps may use 16-bit writes
    assert events == [("pass", 0), ("fail", 3), ("fail", 0xFFFF), ("reset", 0), ("pass", 0)]


def test_reads_return_zero() -> None:
    dev, _ = make()
    assert dev.mmio_read(0, 4) == 0
    assert dev.mmio_read(0x10, 2) == 0


def test_other_values_and_offsets_are_logged(guest_errors: Any) -> None:
    dev, events = make()
    dev.mmio_write(0, 4, 0x1234)
    dev.mmio_write(4, 4, 0x5555)
    assert events == []
    assert len(guest_errors) == 2


def test_bus_widths(guest_errors: Any) -> None:
    dev, events = make()
    bus = MmioBus()
    bus.add(0x100000, dev.region_size, dev)
    bus.write(0x100000, 1, 0x55)
    bus.write(0x100000, 8, 0x5555)
    assert events == []
    bus.write(0x100000, 4, 0x5555)
    assert events == [("pass", 0)]
    assert len(guest_errors) == 2


def test_default_callbacks_do_nothing() -> None:
    SifiveTest().mmio_write(0, 4, 0x5555)
