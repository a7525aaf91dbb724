"""Whatever a guest does to a device window or to its virtqueues, the VMM must not raise:
random accesses (any offset, any width, any value) and random guest memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmpy.hw.char.serial import SerialMM
from kvmpy.hw.cpu import HartPort
from kvmpy.hw.intc.aclint import AclintMtimer, AclintSwi, CounterTime
from kvmpy.hw.intc.plic import SiFivePlic
from kvmpy.hw.misc.sifive_test import SifiveTest
from kvmpy.hw.rtc.goldfish_rtc import GoldfishRtc
from kvmpy.hw.virtio import RawImage, VirtioBlk, VirtioMmio, VirtioRng, VirtioSerial
from kvmpy.hw.virtio.console import VirtConsole
from kvmpy.memory import GuestRAM, MmioBus

from .conftest import BufferChardev

RAM_BASE = 0x80000000
RAM_SIZE = 1 << 16

ops = st.lists(st.tuples(st.booleans(), st.integers(0, 0x1FFF), st.sampled_from([1, 2, 4, 8]),
                         st.integers(0, (1 << 64) - 1)), max_size=200)


class Hart:
    def set_irq(self, irq: int, level: bool) -> None:
        pass

    def get_reg(self, name: str) -> int:
        return 0

    def set_reg(self, name: str, value: int) -> None:
        pass


def devices(tmp: Path) -> tuple[list[Any], GuestRAM, BufferChardev]:
    harts = [HartPort(i) for i in range(2)]
    for h in harts:
        h.attach(Hart())
    plic = SiFivePlic([line for h in harts for line in (h.irq_line(11), h.irq_line(9))],
                      hart_config="MS,MS")
    ram = GuestRAM(RAM_BASE, RAM_SIZE)
    chardev = BufferChardev()
    image = tmp / "fuzz.img"
    if not image.exists():
        image.write_bytes(bytes(8192))
    serial = VirtioSerial(max_ports=2)
    serial.add_port(VirtConsole(backend=BufferChardev()))
    return [
        plic, AclintSwi([h.irq_line(3) for h in harts]),
        AclintSwi([h.irq_line(1) for h in harts], sswi=True),
        AclintMtimer(harts, CounterTime()), SifiveTest(), GoldfishRtc(plic.irq_in(11)),
        SerialMM(plic.irq_in(10), chardev),
        VirtioMmio(plic.irq_in(1), ram=ram),
        VirtioMmio(plic.irq_in(2), ram=ram, device=VirtioRng()),
        VirtioMmio(plic.irq_in(3), ram=ram, device=VirtioBlk(image=RawImage(str(image))),
                   force_legacy=False),
        VirtioMmio(plic.irq_in(4), ram=ram, device=serial),
    ], ram, chardev


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(accesses=ops, memory=st.binary(min_size=0, max_size=4096), typed=st.binary(max_size=64))
def test_random_accesses_never_raise(tmp_path: Path, accesses: list[tuple[bool, int, int, int]],
                                     memory: bytes, typed: bytes) -> None:
    devs, ram, chardev = devices(tmp_path)
    # Guest memory full of noise, repeated so that queues placed anywhere read it.
    noise = (memory or b"\xff") * (RAM_SIZE // max(len(memory), 1) + 1)
    ram.write(RAM_BASE, noise[:RAM_SIZE])
    bus = MmioBus()
    bases = []
    for i, dev in enumerate(devs):
        base = 0x1000_0000 + i * 0x100_0000
        bus.add(base, min(dev.region_size, 0x100_0000), dev)
        bases.append(base)
    for write, offset, size, value in accesses:
        for base in bases:
            if write:
                bus.write(base + offset, size, value)
            else:
                bus.read(base + offset, size)
    # Place every queue in the noise and notify it: descriptors, rings and indexes are junk.
    for index in (8, 10):  # legacy rng, legacy virtio-serial
        for queue in range(6):
            bus.write(bases[index] + 0x30, 4, queue)
            bus.write(bases[index] + 0x40, 4, (RAM_BASE >> 12) + queue)
            bus.write(bases[index] + 0x50, 4, queue)
    blk = bases[9]  # modern virtio-blk
    for reg, offset in ((0x80, 0x100), (0x90, 0x2000), (0xA0, 0x4000)):
        bus.write(blk + reg, 4, RAM_BASE + offset)
        bus.write(blk + reg + 4, 4, 0)
    bus.write(blk + 0x44, 4, 1)
    bus.write(blk + 0x50, 4, 0)
    chardev.type(typed)
    devs[10].device.state.guest_connected.append(0)
    devs[10].device.ports[0].backend.type(typed)
    for dev in devs:
        state = dev.get_state()
        dev.reset()
        dev.set_state(state)


NUM = 8
DESC, AVAIL, USED, DATA = RAM_BASE + 0x1000, RAM_BASE + 0x2000, RAM_BASE + 0x3000, RAM_BASE + 0x4000

descriptor = st.tuples(
    st.one_of(st.integers(DATA, RAM_BASE + RAM_SIZE - 1), st.integers(0, (1 << 64) - 1)),
    st.one_of(st.integers(0, 600), st.integers(0, (1 << 32) - 1)),
    st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7]),
    st.integers(0, NUM + 1))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=st.lists(descriptor, min_size=NUM, max_size=NUM),
       heads=st.lists(st.integers(0, NUM + 1), min_size=NUM, max_size=NUM),
       posted=st.integers(0, NUM + 2), data=st.binary(min_size=16, max_size=64),
       which=st.sampled_from(["rng", "blk", "serial-control", "serial-tx", "serial-rx"]))
def test_random_virtqueues_never_raise(tmp_path: Path, table: list[tuple[int, int, int, int]],
                                       heads: list[int], posted: int, data: bytes,
                                       which: str) -> None:
    import struct

    ram = GuestRAM(RAM_BASE, RAM_SIZE)
    image = tmp_path / "q.img"
    if not image.exists():
        image.write_bytes(bytes(8192))
    port_chardev = BufferChardev()
    if which == "rng":
        device: Any = VirtioRng()
    elif which == "blk":
        device = VirtioBlk(image=RawImage(str(image)))
    else:
        device = VirtioSerial(max_ports=2)
        device.add_port(VirtConsole(backend=port_chardev))
    queue = {"rng": 0, "blk": 0, "serial-control": 3, "serial-tx": 1, "serial-rx": 0}[which]
    transport = VirtioMmio(ram=ram, device=device, force_legacy=False)
    for i, (addr, length, flags, nxt) in enumerate(table):
        ram.write(DESC + 16 * i, struct.pack("<QIHH", addr, length, flags, nxt))
    for i, head in enumerate(heads):
        ram.write_int(AVAIL + 4 + 2 * i, 2, head)
    ram.write_int(AVAIL + 2, 2, posted)
    ram.write(DATA, data * (0x1000 // len(data)))  # request headers / control messages
    transport.mmio_write(0x70, 4, 0xB)
    transport.mmio_write(0x30, 4, queue)
    transport.mmio_write(0x38, 4, NUM)
    for reg, addr in ((0x80, DESC), (0x90, AVAIL), (0xA0, USED)):
        transport.mmio_write(reg, 4, addr)
    transport.mmio_write(0x44, 4, 1)
    transport.mmio_write(0x70, 4, 0xF)
    if which == "serial-rx":
        device.state.guest_connected.append(0)
        port_chardev.type(data)
    transport.mmio_write(0x50, 4, queue)
    transport.mmio_write(0x50, 4, queue)
    assert transport.get_state() is not None
