"""The virtio devices behind every transport: virtio-mmio (legacy and modern) and virtio-pci
(the transitional proxy's legacy I/O interface and its modern capabilities).  The same device
classes, driven the way Linux drives each transport, must behave the same."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest

from kvmpy.hw.virtio import RawImage, VirtConsole, VirtioBlk, VirtioRng, VirtioSerial
from kvmpy.memory import GuestRAM

from .conftest import BufferChardev
from .virtio_drivers import TRANSPORTS, make_transport

RAM_BASE = 0x80000000
VIRTIO_F_VERSION_1 = 1 << 32
VIRTIO_F_BAD_FEATURE = 1 << 30


@pytest.fixture(params=TRANSPORTS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def ram() -> GuestRAM:
    return GuestRAM(RAM_BASE, 1 << 20)


def test_rng_fills_buffers_and_interrupts(kind: str, ram: GuestRAM) -> None:
    _, drv, irq = make_transport(kind, ram, VirtioRng(entropy=lambda n: bytes(range(1, n + 1))))
    offered = drv.probe()
    assert bool(offered & VIRTIO_F_VERSION_1) is kind.endswith("modern")
    assert bool(offered & VIRTIO_F_BAD_FEATURE) is (kind == "pci-legacy")
    addr, length = drv.add_buffer(32, writable=True)
    head = drv.post([(addr, length, True)])
    assert drv.used_elem(0) == (head, 32)
    assert ram.read(addr, 32) == bytes(range(1, 33))
    assert irq.level is True
    assert drv.isr() & 1
    assert irq.level is False  # read-to-clear (pci) / acknowledged (mmio)


def test_indirect_descriptors(kind: str, ram: GuestRAM) -> None:
    _, drv, _ = make_transport(kind, ram, VirtioRng(entropy=lambda n: b"\xAA" * n))
    drv.probe()
    a1, _ = drv.add_buffer(4, True)
    a2, _ = drv.add_buffer(4, True)
    table, _ = drv.add_buffer(struct.pack("<QIHHQIHH", a1, 4, 3, 1, a2, 4, 2, 0), False)
    ram.write(drv.desc, struct.pack("<QIHH", table, 32, 4, 0))
    ram.write_int(drv.avail + 4, 2, 0)
    ram.write_int(drv.avail + 2, 2, 1)
    drv.notify(0)
    assert drv.used_elem(0) == (0, 8)
    assert ram.read(a1, 4) + ram.read(a2, 4) == b"\xAA" * 8


def test_indirect_table_longer_than_qemus_limit_is_refused(kind: str, ram: GuestRAM) -> None:
    """An indirect table's length is the guest's u32: a chain past 1024 descriptors (QEMU's
    VIRTQUEUE_MAX_SIZE) breaks the device instead of being walked under the big lock."""
    rng = VirtioRng(entropy=lambda n: b"\xAA" * n)
    _, drv, _ = make_transport(kind, ram, rng)
    drv.probe()
    count = 2000
    entries = b"".join(struct.pack("<QIHH", 0, 0, 1, i + 1) for i in range(count - 1))
    table, _ = drv.add_buffer(entries + struct.pack("<QIHH", 0, 0, 0, 0), False)
    ram.write(drv.desc, struct.pack("<QIHH", table, 16 * count, 4, 0))
    ram.write_int(drv.avail + 4, 2, 0)
    ram.write_int(drv.avail + 2, 2, 1)
    drv.notify(0)
    assert rng.broken
    assert ram.read_int(drv.used + 2, 2) == 0  # nothing returned


def test_event_idx_steers_interrupts(kind: str, ram: GuestRAM) -> None:
    _, drv, irq = make_transport(kind, ram, VirtioRng())
    assert drv.probe() >> 29 & 1
    num = drv.queues[0]["num"]
    used_event = drv.avail + 4 + 2 * num

    def request() -> None:
        addr, length = drv.add_buffer(8, True)
        drv.post([(addr, length, True)])

    request()
    assert irq.level
    drv.isr()
    ram.write_int(used_event, 2, 2)  # interrupt me when used idx passes 2
    request()
    assert not irq.level
    request()
    assert irq.level


def test_blk_requests_and_config(kind: str, ram: GuestRAM, tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(range(256)) * 16)  # 8 sectors
    blk = VirtioBlk(image=RawImage(str(disk)), serial="kvmpy-disk")
    _, drv, _ = make_transport(kind, ram, blk)
    offered = drv.probe()
    assert offered & 0x6E54 == 0x6E54  # SEG_MAX GEOMETRY BLK_SIZE FLUSH TOPOLOGY WCE ...
    assert bool(offered & (1 << 7)) is kind.endswith("legacy")  # SCSI: legacy only
    assert drv.config_read(0, 4) == 8  # capacity
    assert drv.config_read(20, 4) == 512  # blk_size
    assert drv.config_read(0xF0, 4) == 0xFFFFFFFF  # beyond the config space

    def request(kind_: int, sector: int, data: bytes | None, inlen: int) -> tuple[int, bytes]:
        chain = [(*drv.add_buffer(struct.pack("<IIQ", kind_, 0, sector), False), False)]
        if data is not None:
            chain.append((*drv.add_buffer(data, False), False))
        buf = drv.add_buffer(inlen, True) if inlen else None
        if buf is not None:
            chain.append((*buf, True))
        status = drv.add_buffer(1, True)
        chain.append((*status, True))
        drv.post(chain)
        return ram.read(status[0], 1)[0], ram.read(buf[0], inlen) if buf else b""

    assert request(0, 1, None, 512) == (0, bytes(range(256)) * 2)
    assert request(1, 2, b"\x5A" * 1024, 0)[0] == 0
    assert disk.read_bytes()[1024:2048] == b"\x5A" * 1024
    assert request(8, 0, None, 20) == (0, b"kvmpy-disk" + bytes(10))
    assert request(0, 8, None, 512)[0] == 1  # past the end
    # CONFIG_WCE: the writeback byte is the one writable config field.
    drv.config_write(32, 1, 0)
    assert drv.config_read(32, 1) == 0 and blk.state.writeback == 0
    drv.reset()
    assert drv.config_read(32, 1) == 1


def test_status_zero_resets(kind: str, ram: GuestRAM) -> None:
    transport, drv, irq = make_transport(kind, ram, VirtioRng())
    drv.probe()
    addr, length = drv.add_buffer(8, True)
    drv.post([(addr, length, True)])
    assert irq.level
    drv.reset()
    assert irq.level is False
    assert drv.status() == 0
    assert transport.vqs[0].state.last_avail_idx == 0
    assert transport.vqs[0].state.desc == 0


def test_malformed_chain_breaks_the_device_until_reset(kind: str, ram: GuestRAM,
                                                       guest_errors: Any) -> None:
    transport, drv, irq = make_transport(kind, ram, VirtioRng())
    drv.probe()
    ram.write(drv.desc, struct.pack("<QIHH", 0x1000, 16, 2, 0))  # outside RAM
    ram.write_int(drv.avail + 4, 2, 0)
    ram.write_int(drv.avail + 2, 2, 1)
    drv.notify(0)
    assert any("outside guest RAM" in m for m in guest_errors.messages)
    assert transport.state.broken
    if kind.endswith("modern"):
        assert drv.status() & 0x40  # NEEDS_RESET, with a config interrupt
        assert irq.level and drv.isr() & 2
    drv.notify(0)  # ignored while broken
    assert drv.used_idx() == 0
    drv.reset()
    assert transport.state.broken is False


@pytest.mark.parametrize("desc", [
    struct.pack("<QIHH", RAM_BASE + 0x40000, 8, 3, 0),  # next points to itself: loop
    struct.pack("<QIHH", RAM_BASE + 0x40000, 8, 1, 99),  # next beyond the table
    struct.pack("<QIHH", RAM_BASE + 0x40000, 15, 4, 0),  # indirect length not 16*n
])
def test_bad_descriptors_are_logged(kind: str, ram: GuestRAM, guest_errors: Any,
                                    desc: bytes) -> None:
    _, drv, _ = make_transport(kind, ram, VirtioRng())
    drv.probe()
    ram.write(drv.desc, desc)
    ram.write_int(drv.avail + 4, 2, 0)
    ram.write_int(drv.avail + 2, 2, 1)
    drv.notify(0)
    assert len(guest_errors) == 1
    assert drv.used_idx() == 0


def test_serial_console_output(kind: str, ram: GuestRAM) -> None:
    serial = VirtioSerial(max_ports=2)
    chardev = BufferChardev()
    serial.add_port(VirtConsole(backend=chardev))
    _, drv, _ = make_transport(kind, ram, serial)
    offered = drv.probe(queues=6)
    assert offered & 0b110 == 0b110  # MULTIPORT, EMERG_WRITE
    assert drv.config_read(4, 4) == 2  # max_nr_ports
    drv.config_write(8, 4, ord("!"))  # emergency write
    out = drv.add_buffer(b"Welcome to kvmpy\n")
    drv.post([(*out, False)], queue=1)
    assert bytes(chardev.output) == b"!Welcome to kvmpy\n"


def test_blk_partial_last_sector_and_scattered_reads(kind: str, ram: GuestRAM,
                                                     tmp_path: Path) -> None:
    disk = tmp_path / "odd.img"
    disk.write_bytes(bytes(range(256)) * 16 + b"tail" * 25)  # 8 sectors and 100 bytes
    _, drv, _ = make_transport(kind, ram, VirtioBlk(image=RawImage(str(disk))))
    drv.probe()
    assert drv.config_read(0, 4) == 9  # QEMU rounds the capacity up
    header = drv.add_buffer(struct.pack("<IIQ", 0, 0, 7), False)
    pieces = [drv.add_buffer(n, True) for n in (100, 412, 300, 212)]  # sectors 7 and 8
    status = drv.add_buffer(1, True)
    drv.post([(*header, False), *((a, n, True) for a, n in pieces), (*status, True)])
    assert ram.read(status[0], 1) == b"\0"
    data = b"".join(ram.read(a, n) for a, n in pieces)
    assert data == (bytes(range(256)) * 2 + b"tail" * 25 + bytes(412))


def test_queues_are_live_from_the_start(kind: str, ram: GuestRAM) -> None:
    # A driver need not reset the device before setting it up: what it writes into the
    # queue registers is what the device uses, from the first plug on.
    transport, _, _ = make_transport(kind, ram, VirtioSerial(max_ports=2))
    assert len(transport.vqs) == len(transport.state.queues) == 6
    assert all(vq.state is qs for vq, qs in zip(transport.vqs, transport.state.queues,
                                                strict=True))
