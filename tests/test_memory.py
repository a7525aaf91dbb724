"""Guest RAM and the MMIO bus: bounds, overlaps, guest errors that never stop the VMM."""

import logging

import pytest

from kvmpy import log
from kvmpy.errors import ConfigError
from kvmpy.hw.core import MmioDevice
from kvmpy.memory import GuestMemoryError, GuestRAM, MmioBus


class Recorder(MmioDevice):
    access_sizes = (4,)

    def __init__(self, name: str = "rec") -> None:
        self.name = name
        self.log: list[tuple[str, int, int, int]] = []

    def mmio_read(self, offset: int, size: int) -> int:
        self.log.append(("r", offset, size, 0))
        return 0xFFFF_FFFF_1234_5678

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        self.log.append(("w", offset, size, value))


def test_ram_typed_access_and_bounds() -> None:
    ram = GuestRAM(0x8000_0000, 1 << 20)
    try:
        ram.write_int(0x8000_0000, 8, 0x1122334455667788)
        assert ram.read_int(0x8000_0004, 4) == 0x11223344
        assert ram.read(0x8000_0000, 2) == b"\x88\x77"
        ram.write_int(0x800F_FFFF, 1, 0x1FF)
        assert ram.read_int(0x800F_FFFF, 1) == 0xFF
        for gpa, size in [(0x7FFF_FFFF, 1), (0x800F_FFFE, 4), (0x8010_0000, 1)]:
            with pytest.raises(GuestMemoryError):
                ram.read(gpa, size)
        assert ram.host_address != 0
        ram.clear()
        assert ram.read_int(0x8000_0000, 8) == 0
    finally:
        ram.close()


def test_ram_size_must_be_page_multiple() -> None:
    with pytest.raises(ConfigError):
        GuestRAM(0, 1000)


def test_bus_dispatches_offsets_and_masks_values() -> None:
    bus = MmioBus()
    dev = Recorder()
    bus.add(0x1000_0000, 0x100, dev)
    assert bus.read(0x1000_0010, 4) == 0x1234_5678
    bus.write(0x1000_0004, 4, 0xAABB_CCDD)
    assert dev.log == [("r", 0x10, 4, 0), ("w", 4, 4, 0xAABB_CCDD)]


@pytest.mark.parametrize(("base", "size"), [
    (0x1000_0000, 0x100), (0x0FFF_FF00, 0x101), (0x1000_00FF, 1), (0x0F00_0000, 0x2000_0000),
])
def test_bus_refuses_overlaps(base: int, size: int) -> None:
    bus = MmioBus()
    bus.add(0x1000_0000, 0x100, Recorder("a"))
    with pytest.raises(ConfigError, match="overlaps 'a'"):
        bus.add(base, size, Recorder("b"))


def test_adjacent_windows_are_fine() -> None:
    bus = MmioBus()
    bus.add(0x1000, 0x100, Recorder("a"))
    bus.add(0x1100, 0x100, Recorder("b"))
    bus.add(0x0F00, 0x100, Recorder("c"))
    assert [r.name for r in bus.regions] == ["c", "a", "b"]
    region = bus.find(0x10FF)
    assert region is not None and region.name == "a"


def test_unassigned_and_wrong_width_are_logged_guest_errors(
        caplog: pytest.LogCaptureFixture) -> None:
    bus = MmioBus()
    dev = Recorder()
    bus.add(0x1000, 0x100, dev)
    logger = log.logger("guest_errors")
    old = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        with caplog.at_level(logging.DEBUG, logger="kvmpy.guest_errors"):
            assert bus.read(0x5000, 4) == 0
            bus.write(0x1000, 1, 0xFF)
            assert bus.read(0x10FE, 4) == 0
    finally:
        logger.setLevel(old)
    assert dev.log == []
    messages = [r.getMessage() for r in caplog.records]
    assert any("0x5000" in m and "rejected" in m for m in messages)
    assert sum("invalid size" in m for m in messages) == 2


def test_guest_errors_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    bus = MmioBus()
    logger = log.logger("guest_errors")
    old = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        with caplog.at_level(logging.DEBUG, logger="kvmpy.guest_errors"):
            for _ in range(10_000):
                bus.read(0x5000, 4)
    finally:
        logger.setLevel(old)
    assert len(caplog.records) <= 200
