"""virtio-mmio transport (legacy and modern) with virtio-rng and virtio-blk behind it,
driven the way Linux's virtio_mmio driver does, through a guest RAM and the MMIO bus.
What every transport must do alike is in test_virtio_transports.py."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest

import kvmpy.hw.intc  # noqa: F401  (registers riscv.sifive.plic)
from kvmpy.config import OptionSpec, VMConfig
from kvmpy.errors import ConfigError
from kvmpy.hw.core import device_help
from kvmpy.hw.virtio import RawImage, VirtioBlk, VirtioMmio, VirtioRng, plug_devices
from kvmpy.memory import GuestRAM, MmioBus

from .conftest import VirtioTestDriver

BASE = 0x10001000
RAM_BASE = 0x80000000


@pytest.fixture
def ram() -> GuestRAM:
    return GuestRAM(RAM_BASE, 1 << 20)


def make(ram: GuestRAM, make_irq: Any, device: Any, legacy: bool = True,
         ) -> tuple[VirtioMmio, MmioBus, Any]:
    transport = VirtioMmio(make_irq(8), ram=ram, device=device, force_legacy=legacy)
    bus = MmioBus()
    bus.add(BASE, transport.region_size, transport)
    return transport, bus, VirtioTestDriver(bus, ram, BASE, legacy)


def test_empty_slot(make_irq: Any, ram: GuestRAM) -> None:
    transport = VirtioMmio(make_irq(1), ram=ram)
    assert transport.mmio_read(0, 4) == 0x74726976
    assert transport.mmio_read(4, 4) == 1
    assert transport.mmio_read(8, 4) == 0
    assert transport.mmio_read(0xC, 4) == 0x554D4551
    assert transport.mmio_read(0x34, 4) == 0
    transport.mmio_write(0x70, 4, 0xF)  # ignored
    assert transport.mmio_read(0x70, 4) == 0
    assert VirtioMmio(force_legacy=False).mmio_read(4, 4) == 2
    assert transport.region_size == 0x200


@pytest.mark.parametrize("legacy", [True, False])
def test_rng_fills_buffers(make_irq: Any, ram: GuestRAM, legacy: bool) -> None:
    rng = VirtioRng(entropy=lambda n: bytes(range(1, n + 1)))
    transport, bus, drv = make(ram, make_irq, rng, legacy)
    offered = drv.probe()
    assert bus.read(BASE + 8, 4) == 4
    assert bool(offered >> 32 & 1) is (not legacy)  # VERSION_1 only in modern mode
    assert offered & (1 << 28)  # indirect descriptors
    addr, length = drv.add_buffer(32, writable=True)
    head = drv.post([(addr, length, True)])
    assert drv.used_idx() == 1
    assert drv.used_elem(0) == (head, 32)
    assert ram.read(addr, 32) == bytes(range(1, 33))
    assert transport.irq.level is True
    assert bus.read(BASE + 0x60, 4) == 1
    bus.write(BASE + 0x64, 4, 1)
    assert transport.irq.level is False


def test_rng_uses_urandom_by_default(make_irq: Any, ram: GuestRAM) -> None:
    _, _, drv = make(ram, make_irq, VirtioRng())
    drv.probe()
    addr, length = drv.add_buffer(64, writable=True)
    drv.post([(addr, length, True)])
    assert drv.used_elem(0)[1] == 64
    assert ram.read(addr, 64) != bytes(64)


def test_no_interrupt_flag_suppresses_irq(make_irq: Any, ram: GuestRAM) -> None:
    transport, _, drv = make(ram, make_irq, VirtioRng())
    drv.probe(features=1 << 28)  # no EVENT_IDX: the avail flags decide
    ram.write_int(drv.avail, 2, 1)  # VRING_AVAIL_F_NO_INTERRUPT
    addr, length = drv.add_buffer(8, writable=True)
    drv.post([(addr, length, True)])
    assert drv.used_idx() == 1
    assert transport.irq.level is False


def test_event_idx(make_irq: Any, ram: GuestRAM) -> None:
    transport, bus, drv = make(ram, make_irq, VirtioRng())
    assert drv.probe() >> 29 & 1  # offered, and accepted by the driver
    q = drv.queues[0]
    used_event = q["avail"] + 4 + 2 * drv.num
    avail_event = q["used"] + 4 + 8 * drv.num

    def request() -> None:
        addr, length = drv.add_buffer(8, True)
        drv.post([(addr, length, True)])

    request()
    assert transport.irq.level  # the first completion always interrupts
    assert ram.read_int(avail_event, 2) == 1  # "notify me after avail idx 1"
    bus.write(BASE + 0x64, 4, 1)
    ram.write_int(used_event, 2, 2)  # driver: interrupt me when used idx passes 2
    request()
    assert not transport.irq.level  # used idx 2: not past used_event yet
    request()
    assert transport.irq.level  # used idx 3
    assert ram.read_int(avail_event, 2) == 3
    assert drv.used_idx() == 3


def test_modern_feature_word_is_qemus(make_irq: Any, ram: GuestRAM) -> None:
    # qemu-system-riscv64 7.2, virtio-rng-device: legacy 0x39000000, modern 0x30000000 and
    # 0x101 in the high word (VERSION_1, RING_RESET - which kvmpy does not offer).
    _legacy, lbus, _ = make(ram, make_irq, VirtioRng())
    assert lbus.read(BASE + 0x10, 4) == 0x39000000
    _modern, mbus, _ = make(ram, make_irq, VirtioRng(), legacy=False)
    assert mbus.read(BASE + 0x10, 4) == 0x30000000
    mbus.write(BASE + 0x14, 4, 1)
    assert mbus.read(BASE + 0x10, 4) == 0x1


def test_blk_read_write_flush_getid(make_irq: Any, ram: GuestRAM, tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(range(256)) * 16)  # 4 KiB = 8 sectors
    blk = VirtioBlk(image=RawImage(str(disk)), serial="kvmpy-disk")
    transport, bus, drv = make(ram, make_irq, blk)
    offered = drv.probe()
    assert offered & 0xFFFFFFFF == 0x31006ED4  # QEMU 7.2's legacy virtio-blk feature word
    assert not offered & (1 << 5)  # not RO
    assert bus.read(BASE + 0x100, 4) == 8  # capacity in sectors
    assert bus.read(BASE + 0x104, 4) == 0
    assert bus.read(BASE + 0x114, 4) == 512  # blk_size
    assert bus.read(BASE + 0x100, 1) == 8
    assert bus.read(BASE + 0x1F0, 4) == 0xFFFFFFFF  # beyond the config space

    def request(kind: int, sector: int, data: bytes | None, inlen: int) -> tuple[int, bytes]:
        hdr = drv.add_buffer(struct.pack("<IIQ", kind, 0, sector), False)
        chain = [(*hdr, False)]
        if data is not None:
            chain.append((*drv.add_buffer(data, False), False))
        buf = drv.add_buffer(inlen, True) if inlen else None
        if buf is not None:
            chain.append((*buf, True))
        status = drv.add_buffer(1, True)
        chain.append((*status, True))
        before = drv.used_idx()
        drv.post(chain)
        assert drv.used_idx() == before + 1
        got = ram.read(buf[0], inlen) if buf is not None else b""
        return ram.read(status[0], 1)[0], got

    status, data = request(0, 1, None, 512)
    assert status == 0 and data == bytes(range(256)) * 2
    status, _ = request(1, 2, b"\x5A" * 1024, 0)
    assert status == 0
    assert disk.read_bytes()[1024:2048] == b"\x5A" * 1024
    assert request(4, 0, None, 0)[0] == 0
    status, ident = request(8, 0, None, 20)
    assert status == 0 and ident == b"kvmpy-disk" + bytes(10)
    assert request(0, 8, None, 512)[0] == 1  # past the end: IOERR
    assert request(0, 0, None, 100)[0] == 1  # not a whole sector
    assert request(11, 0, None, 0)[0] == 2  # DISCARD without its segment: UNSUPP
    assert request(2, 0, None, 0)[0] == 2  # SCSI commands: UNSUPP (QEMU's scsi=off)
    assert request(13, 0, struct.pack("<QII", 2, 2, 0), 0)[0] == 0  # WRITE_ZEROES
    assert disk.read_bytes()[1024:2048] == bytes(1024)
    assert request(11, 0, struct.pack("<QII", 0, 8, 0), 0)[0] == 0  # DISCARD: advisory
    assert request(11, 0, struct.pack("<QII", 0, 1, 1), 0)[0] == 2  # UNMAP flag on discard
    assert request(13, 0, struct.pack("<QII", 7, 2, 0), 0)[0] == 1  # past the end
    assert transport.irq.level is True


def test_blk_write_cache_toggle(make_irq: Any, ram: GuestRAM, tmp_path: Path) -> None:
    disk = tmp_path / "wce.img"
    disk.write_bytes(bytes(4096))
    blk = VirtioBlk(image=RawImage(str(disk)))
    _, bus, drv = make(ram, make_irq, blk)
    drv.probe()
    assert bus.read(BASE + 0x120, 1) == 1  # writeback
    bus.write(BASE + 0x120, 1, 0)
    assert bus.read(BASE + 0x120, 1) == 0
    assert blk.state.writeback == 0
    bus.write(BASE + 0x100, 4, 0)  # capacity is read-only: ignored
    assert bus.read(BASE + 0x100, 4) == 8
    bus.write(BASE + 0x70, 4, 0)
    assert bus.read(BASE + 0x120, 1) == 1  # reset restores writeback


def test_blk_read_only(make_irq: Any, ram: GuestRAM, tmp_path: Path) -> None:
    disk = tmp_path / "ro.img"
    disk.write_bytes(bytes(1024))
    blk = VirtioBlk(image=RawImage(str(disk), read_only=True))
    _, _, drv = make(ram, make_irq, blk)
    assert drv.probe() & (1 << 5)


def test_status_zero_resets(make_irq: Any, ram: GuestRAM) -> None:
    transport, bus, drv = make(ram, make_irq, VirtioRng())
    drv.probe()
    addr, length = drv.add_buffer(8, True)
    drv.post([(addr, length, True)])
    assert transport.irq.level
    bus.write(BASE + 0x70, 4, 0)
    assert transport.irq.level is False
    assert bus.read(BASE + 0x70, 4) == 0
    assert bus.read(BASE + 0x40, 4) == 0  # queue address forgotten
    assert transport.vqs[0].state.last_avail_idx == 0


def test_queue_pfn_zero_resets_legacy(make_irq: Any, ram: GuestRAM) -> None:
    _transport, bus, drv = make(ram, make_irq, VirtioRng())
    drv.probe()
    bus.write(BASE + 0x40, 4, 0)
    assert bus.read(BASE + 0x70, 4) == 0


def test_avail_index_running_ahead(make_irq: Any, ram: GuestRAM, guest_errors: Any) -> None:
    _, _, drv = make(ram, make_irq, VirtioRng())
    drv.probe()
    ram.write_int(drv.avail + 2, 2, 100)
    drv.w(0x50, 0)
    assert "ahead" in guest_errors.messages[0]


def test_register_mistakes_are_logged(make_irq: Any, ram: GuestRAM, guest_errors: Any) -> None:
    _transport, bus, _drv = make(ram, make_irq, VirtioRng())
    assert bus.read(BASE + 0x00, 2) == 0  # registers are 32-bit
    bus.write(BASE + 0x70, 1, 1)
    assert bus.read(BASE + 0x44, 4) == 0  # QueueReady is modern-only
    bus.write(BASE + 0x80, 4, 1)  # QueueDescLow is modern-only
    bus.write(BASE + 0x00, 4, 1)  # read-only
    assert bus.read(BASE + 0x50, 4) == 0  # write-only
    assert bus.read(BASE + 0xF0, 4) == 0  # no register
    bus.write(BASE + 0x38, 4, 4096)  # QueueNum above 1024
    bus.write(BASE + 0x3C, 4, 3)  # QueueAlign not a power of 2
    bus.write(BASE + 0x30, 4, 5)
    bus.write(BASE + 0x38, 4, 16)  # queue 5 does not exist
    assert bus.read(BASE + 0x34, 4) == 0
    bus.read(BASE + 0x100, 8)  # 8-byte config access
    bus.write(BASE + 0x50, 4, 7)  # notify of a queue that does not exist
    assert bus.read(BASE + 0x200, 4) == 0  # outside the window (bus)
    assert len(guest_errors) == 13
    _modern, mbus, _ = make(ram, make_irq, VirtioRng(), legacy=False)
    guest_errors.clear()
    mbus.write(BASE + 0x28, 4, 4096)  # GuestPageSize is legacy-only
    mbus.write(BASE + 0x40, 4, 1)
    assert len(guest_errors) == 2


def test_state_roundtrip(make_irq: Any, ram: GuestRAM) -> None:
    transport, bus, drv = make(ram, make_irq, VirtioRng(), legacy=False)
    drv.probe()
    addr, length = drv.add_buffer(8, True)
    drv.post([(addr, length, True)])
    saved = transport.get_state()
    transport.reset()
    assert bus.read(BASE + 0x70, 4) == 0
    transport.set_state(saved)
    assert bus.read(BASE + 0x70, 4) == 0xF
    assert transport.irq.level
    addr, length = drv.add_buffer(8, True)
    drv.post([(addr, length, True)])
    assert drv.used_idx() == 2


def test_plug_devices_from_the_command_line(make_irq: Any, ram: GuestRAM,
                                            tmp_path: Path) -> None:
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(4096))

    class System:
        config = VMConfig(devices=[OptionSpec("virtio-rng-device"),
                                   OptionSpec("virtio-blk-device", {"drive": "hd0"})])

    System.config.drives = [OptionSpec("", {"id": "hd0", "file": str(disk),  # type: ignore
                                            "format": "raw", "if": "none"})]
    slots = [VirtioMmio(make_irq(i), ram=ram) for i in range(8)]
    plugged = plug_devices(System(), list(reversed(slots)))
    assert [type(d) for d in plugged] == [VirtioRng, VirtioBlk]
    assert slots[7].device is plugged[0] and slots[6].device is plugged[1]
    assert slots[7].mmio_read(8, 4) == 4 and slots[6].mmio_read(8, 4) == 2


@pytest.mark.parametrize("spec, message", [
    (OptionSpec("nosuch"), "'nosuch' is not a valid device model name"),
    (OptionSpec("riscv.sifive.plic"), "expects a pluggable device type"),
    (OptionSpec("virtio-rng-device", {"bogus": "1"}),
     "Property 'virtio-rng-device.bogus' not found"),
    (OptionSpec("virtio-blk-device", {"drive": "nope"}), "can't find value 'nope'"),
    (OptionSpec("virtio-blk-device"), "drive property not set"),
    (OptionSpec("virtio-blk-device", {"drive": "hd0", "queue-size": "3"}), "must be a power"),
    (OptionSpec("virtio-blk-device", {"drive": "hd0", "queue-size": "2"}), "must be > 2"),
])
def test_plug_devices_errors(make_irq: Any, ram: GuestRAM, spec: OptionSpec,
                             message: str, tmp_path: Path) -> None:
    disk = tmp_path / "e.img"
    disk.write_bytes(bytes(4096))

    class System:
        config = VMConfig(devices=[spec])

    System.config.drives = [OptionSpec("", {"id": "hd0", "file": str(disk)})]  # type: ignore

    with pytest.raises(ConfigError, match=message) as info:
        plug_devices(System(), [VirtioMmio(make_irq(), ram=ram)])
    assert info.value.option is not None


def test_more_devices_than_slots(make_irq: Any, ram: GuestRAM) -> None:
    class System:
        config = VMConfig(devices=[OptionSpec("virtio-rng-device")] * 2)

    with pytest.raises(ConfigError, match="No 'virtio-bus' bus found"):
        plug_devices(System(), [VirtioMmio(make_irq(), ram=ram)])


def test_missing_image_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Could not open"):
        RawImage(str(tmp_path / "missing.img"))


def test_device_help_lists_virtio_devices() -> None:
    text = device_help()
    assert 'name "virtio-blk-device", bus virtio-bus' in text
    assert 'name "virtio-rng-device", bus virtio-bus' in text
    assert "riscv.sifive.plic" not in text  # not user-creatable


def test_big_buffers_are_bounded_or_zero_copy(make_irq: Any, tmp_path: Path) -> None:
    ram = GuestRAM(RAM_BASE, 4 << 20)
    _, _, drv = make(ram, make_irq, VirtioRng(entropy=lambda n: b"\x01" * n))
    drv.probe()
    drv.post([(RAM_BASE + (1 << 20), 3 << 20, True)])  # a 3 MiB entropy request
    assert drv.used_elem(0)[1] == 64 * 1024  # served in 64 KiB pieces

    disk = tmp_path / "big.img"
    disk.write_bytes(bytes(range(256)) * 8192)  # 2 MiB
    ram2 = GuestRAM(RAM_BASE, 4 << 20)
    _, _, drv2 = make(ram2, make_irq, VirtioBlk(image=RawImage(str(disk))))
    drv2.probe()
    hdr = drv2.add_buffer(struct.pack("<IIQ", 0, 0, 0), False)
    status = drv2.add_buffer(1, True)
    drv2.post([(*hdr, False), (RAM_BASE + (2 << 20), 2 << 20, True), (*status, True)])
    assert drv2.used_elem(0)[1] == (2 << 20) + 1
    assert ram2.read(status[0], 1) == b"\x00"
    assert ram2.read(RAM_BASE + (2 << 20), 2 << 20) == disk.read_bytes()


def test_device_help_is_laid_out_like_qemus() -> None:
    import shutil
    import subprocess

    import kvmpy.hw.pci.gpex
    import kvmpy.hw.pci.root_port
    import kvmpy.hw.pci.virtio_pci
    import kvmpy.hw.virtio.mmio  # noqa: F401

    text = device_help()
    qemu = shutil.which("qemu-system-riscv64")
    if qemu is None:
        pytest.skip("qemu-system-riscv64 (the oracle) is not installed")
    theirs = subprocess.run([qemu, "-device", "help"], capture_output=True, text=True,
                            timeout=30, check=True).stdout
    ours_names = {line.split('"')[1] for line in text.splitlines() if line.startswith("name")}
    # QEMU's output restricted to the devices kvmpy has: same categories, lines and order.
    blocks = []
    for block in theirs.strip().split("\n\n"):
        header, *lines = block.splitlines()
        kept = [line for line in lines if line.split('"')[1] in ours_names]
        if kept:
            blocks.append("\n".join([header, *kept]))
    assert text == "\n\n".join(blocks)


def test_snapshot_keeps_the_file_untouched(tmp_path: Path) -> None:
    disk = tmp_path / "snap.img"
    original = bytes(range(256)) * 1024  # 256 KiB
    disk.write_bytes(original)
    image = RawImage(str(disk), snapshot=True)
    image.pwrite(65536 - 10, b"X" * 20)  # straddles two 64 KiB chunks
    image.pwrite(200000, b"hello")
    assert image.pread(65536 - 12, 24) == original[65524:65526] + b"X" * 20 + \
        original[65546:65548]
    buf = bytearray(10)
    image.readinto(199998, [memoryview(buf)])
    assert bytes(buf) == original[199998:200000] + b"hello" + original[200005:200008]
    image.flush()
    image.close()
    assert disk.read_bytes() == original


@pytest.mark.parametrize("drive, message", [
    ({"id": "hd0", "file": "x.img", "format": "vmdkx"}, "Unknown driver 'vmdkx'"),
    ({"id": "hd0"}, "'file' is required"),
    ({"id": "hd0", "file": "x.img", "readonly": "maybe"}, "expects 'on' or 'off'"),
    ({"id": "hd0", "file": "/nonexistent/x.img"}, "Could not open"),
])
def test_drive_errors(make_irq: Any, ram: GuestRAM, drive: dict[str, str],
                      message: str) -> None:
    class System:
        config = VMConfig(devices=[OptionSpec("virtio-blk-device", {"drive": "hd0"})])

    System.config.drives = [OptionSpec("", drive, "-drive X")]  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=message) as info:
        plug_devices(System(), [VirtioMmio(make_irq(), ram=ram)])
    assert info.value.option == "-drive X"  # QEMU blames the -drive option


def test_global_snapshot_option(make_irq: Any, ram: GuestRAM, tmp_path: Path) -> None:
    disk = tmp_path / "g.img"
    disk.write_bytes(bytes(4096))

    class System:
        config = VMConfig(devices=[OptionSpec("virtio-blk-device", {"drive": "hd0"})])

    System.config.drives = [OptionSpec("", {"id": "hd0", "file": str(disk)})]  # type: ignore
    System.config.snapshot = True
    (blk,) = plug_devices(System(), [VirtioMmio(make_irq(), ram=ram)])
    assert isinstance(blk, VirtioBlk)
    blk.image.pwrite(0, b"x" * 512)  # into the temporary overlay
    assert blk.image.pread(0, 512) == b"x" * 512
    assert disk.read_bytes() == bytes(4096)
