"""A PCI Express root port on the generic host bridge, device-level: configuration cycles by
bus number, accesses forwarded through the bridge's windows, INTx up through the port, the
slot's power, resets and state (the byte-for-byte comparisons with QEMU are in
tests/hw/riscv/test_pcie_root_port.py)."""

from __future__ import annotations

from typing import Any

import pytest

from kvmpy.hw.core import device_new
from kvmpy.hw.pci import GpexHost, PcieRootPort
from kvmpy.memory import GuestRAM

from .conftest import FakeIrq
from .virtio_drivers import ECAM, MMIO, MODERN_BAR_ADDR, PIO, VirtioPciTestDriver, host_bus

RAM_BASE = 0x80000000
EXP = 0x54
SLTCTL = EXP + 0x18


@pytest.fixture
def ram() -> GuestRAM:
    return GuestRAM(RAM_BASE, 1 << 20)


@pytest.fixture
def lines() -> list[FakeIrq]:
    return [FakeIrq(32 + i) for i in range(4)]


@pytest.fixture
def host(lines: list[FakeIrq]) -> GpexHost:
    return GpexHost(lines)


def root_port(host_or_port: Any, devfn: int, chassis: int, **props: str) -> PcieRootPort:
    port: PcieRootPort = device_new("pcie-root-port", {"chassis": str(chassis), **props})
    bus = host_or_port.bus if isinstance(host_or_port, GpexHost) else \
        host_or_port.secondary_bus
    bus.plug(port, devfn)
    return port


def endpoint(ram: GuestRAM, port: PcieRootPort, devfn: int = 0,
             name: str = "virtio-rng-pci", **props: str) -> Any:
    dev = device_new(name, props, ram=ram, pcie_port=True,
                     deliver_msi=lambda a, d: ram.write_int(a, 4, d))
    port.secondary_bus.plug(dev, devfn)
    return dev


def cfg(bus: Any, number: int, devfn: int, offset: int, size: int = 4) -> int:
    return int(bus.read(ECAM + (number << 20 | devfn << 12 | offset), size))


def cfg_w(bus: Any, number: int, devfn: int, offset: int, value: int, size: int = 4) -> None:
    bus.write(ECAM + (number << 20 | devfn << 12 | offset), size, value)


def number(bus: Any, devfn: int, secondary: int, subordinate: int, on: int = 0) -> None:
    cfg_w(bus, on, devfn, 0x18, subordinate << 16 | secondary << 8 | on)


def open_windows(bus: Any, devfn: int, on: int = 0) -> None:
    """I/O 0x1000-0x1fff, memory 0x40000000-0x401fffff, prefetchable 4 GiB + 2 MiB;
    memory and I/O decode on."""
    cfg_w(bus, on, devfn, 0x1C, 0x1010, 2)
    cfg_w(bus, on, devfn, 0x20, 0x40104000)
    cfg_w(bus, on, devfn, 0x24, 0x00110001)
    cfg_w(bus, on, devfn, 0x28, 1)
    cfg_w(bus, on, devfn, 0x2C, 1)
    cfg_w(bus, on, devfn, 0x04, 0x3, 2)


def test_configuration_cycles_follow_the_bus_numbers(host: GpexHost, ram: GuestRAM) -> None:
    a = root_port(host, 1 << 3, 1)
    b = root_port(a, 0, 2)
    endpoint(ram, b)
    bus = host_bus(host)
    assert cfg(bus, 1, 0, 0) == 0xFFFFFFFF  # not numbered yet
    number(bus, 8, 1, 2)
    assert cfg(bus, 1, 0, 0) == 0x000C1B36  # port b on a's secondary bus
    assert cfg(bus, 2, 0, 0) == 0xFFFFFFFF  # b not numbered
    number(bus, 0, 2, 2, on=1)
    assert cfg(bus, 2, 0, 0) == 0x10441AF4  # modern-only virtio-rng behind both ports
    assert cfg(bus, 2, 0, 0x100) == 0  # a PCIe function: 4 KiB of configuration space
    assert cfg(bus, 3, 0, 0) == 0xFFFFFFFF  # past a's subordinate
    cfg_w(bus, 0, 8, 0x3E, 0x40, 2)  # secondary bus reset on a: its range is hidden...
    assert cfg(bus, 2, 0, 0) == 0xFFFFFFFF
    assert cfg(bus, 1, 0, 0) == 0x000C1B36  # ...but its own secondary number still answers
    cfg_w(bus, 0, 8, 0x3E, 0, 2)
    assert cfg(bus, 1, 0, 0x18) == 0  # the reset cleared b's bus numbers
    cfg_w(bus, 9, 0, 0x00, 0x1234)  # a bus no bridge forwards: dropped
    number(bus, 8, 0x11, 0)
    assert cfg(bus, 0x11, 0, 0) == 0x000C1B36  # the secondary number past the subordinate


def test_bars_behind_a_port_decode_only_through_its_windows(host: GpexHost,
                                                            ram: GuestRAM) -> None:
    port = root_port(host, 1 << 3, 1)
    dev = endpoint(ram, port, name="virtio-rng-pci-transitional")  # with an I/O BAR too
    bus = host_bus(host)
    number(bus, 8, 1, 1)
    cfg_w(bus, 1, 0, 0x10, 0x1001)  # legacy I/O BAR
    cfg_w(bus, 1, 0, 0x14, 0x40000000)  # MSI-X BAR
    cfg_w(bus, 1, 0, 0x20, 0)  # BAR4 at 4 GiB (64-bit prefetchable)
    cfg_w(bus, 1, 0, 0x24, 1)
    cfg_w(bus, 1, 0, 0x04, 0x3, 2)
    assert dev.bars[1].addr == 0x40000000  # the function decodes it on its bus...
    msix_ctrl = MMIO + 0x0C  # vector 0's control word: masked
    assert bus.read(msix_ctrl, 4) == 0xFFFFFFFF  # ...but the port forwards nothing yet
    open_windows(bus, 8)
    assert bus.read(msix_ctrl, 4) == 1
    assert bus.read(PIO + 0x1000 + 12, 2) == 8  # legacy queue size through the I/O window
    assert port.windows and dev.bars[4].addr == 1 << 32
    assert port.secondary_bus.memory.find_bar(1 << 32) is dev.bars[4]
    cfg_w(bus, 0, 8, 0x04, 0x1, 2)  # port: memory decode off
    assert bus.read(msix_ctrl, 4) == 0xFFFFFFFF
    assert bus.read(PIO + 0x1000 + 12, 2) == 8
    cfg_w(bus, 0, 8, 0x04, 0x3, 2)
    cfg_w(bus, 1, 0, 0x14, 0x40200000)  # the BAR moved out of the window
    assert bus.read(MMIO + 0x20000C, 4) == 0xFFFFFFFF
    cfg_w(bus, 1, 0, 0x14, 0x40000000)
    cfg_w(bus, 0, 8, 0x20, 0x3FF04010)  # limit below base: the window closes
    assert bus.read(msix_ctrl, 4) == 0xFFFFFFFF


def test_a_virtio_device_behind_a_port_works(host: GpexHost, ram: GuestRAM,
                                             lines: list[FakeIrq]) -> None:
    """A driver through the windows, the interrupt on INTA of the port's slot."""
    port = root_port(host, 2 << 3, 1)
    dev = endpoint(ram, port)
    bus = host_bus(host)
    number(bus, 2 << 3, 1, 1)
    open_windows(bus, 2 << 3)
    drv = VirtioPciTestDriver(bus, ram, 1 << 8, legacy=False)  # bus 1, devfn 0
    assert dev.bars[4].addr == MODERN_BAR_ADDR
    drv.probe()
    addr, length = drv.add_buffer(16, True)
    drv.post([(addr, length, True)])
    assert drv.new_used() == [(0, 16)]
    assert [line.level for line in lines] == [False, False, True, False]  # slot 2 -> INTC
    assert drv.isr() == 1
    assert [line.level for line in lines] == [False] * 4


def test_intx_is_swizzled_at_every_bridge(host: GpexHost, ram: GuestRAM,
                                          lines: list[FakeIrq]) -> None:
    """pci_bridge_map_irq: (pin + slot) % 4 on the secondary bus, then again with the
    bridge's slot on the bus above."""
    a = root_port(host, 1 << 3, 1, multifunction="on")
    b = root_port(host, 1 << 3 | 1, 2)
    c = root_port(a, 0, 3)
    d1 = endpoint(ram, b, 0)
    d2 = endpoint(ram, b, 3 << 3)
    d3 = endpoint(ram, c, 0)
    d1.set_irq(True)
    assert [line.level for line in lines] == [False, True, False, False]  # 0 + slot 1
    d2.set_irq(True)  # slot 3 behind b: 3, then + 1
    assert [line.level for line in lines] == [True, True, False, False]
    d3.set_irq(True)  # 0 behind c, 0 behind a, + 1
    d1.set_irq(False)
    assert lines[1].level  # still driven by d3
    d3.set_irq(False)
    assert [line.level for line in lines] == [True, False, False, False]
    bus = host_bus(host)
    number(bus, 1 << 3 | 1, 1, 1)
    cfg_w(bus, 1, 3 << 3, 0x04, 0x400, 2)  # INTx disable on d2
    assert [line.level for line in lines] == [False] * 4


def test_the_port_pulses_intx_for_a_slot_command(host: GpexHost,
                                                 lines: list[FakeIrq]) -> None:
    """A slot control write completes at once; with hot-plug and command completed
    interrupts enabled the port raises INTx, and (as QEMU) drops it in the same write."""
    port = root_port(host, 1 << 3, 1)
    bus = host_bus(host)
    cfg_w(bus, 0, 8, SLTCTL, 0x30, 2)  # HPIE | CCIE
    assert lines[1].history == [True, False]
    assert cfg(bus, 0, 8, SLTCTL + 2, 2) & 0x10  # command completed
    assert port.hpev_notified
    cfg_w(bus, 0, 8, SLTCTL + 2, 0x10, 2)  # the driver acknowledges
    assert not port.hpev_notified and not cfg(bus, 0, 8, SLTCTL + 2, 2) & 0x10


def test_the_slot_powers_what_is_behind_it(host: GpexHost, ram: GuestRAM) -> None:
    """Reset powers the slot when function 0 is there, else not (QEMU's slot reset); a
    function without power answers no configuration cycle."""
    empty_port = root_port(host, 1 << 3, 1)
    dev = endpoint(ram, empty_port, 3 << 3)
    bus = host_bus(host)
    number(bus, 8, 1, 1)
    assert not dev.has_power and cfg(bus, 1, 3 << 3, 0) == 0xFFFFFFFF
    assert cfg(bus, 0, 8, SLTCTL, 2) & 0x700 == 0x700  # power off, indicator off
    cfg_w(bus, 0, 8, SLTCTL, 0x1C0, 2)  # power on
    assert dev.has_power and cfg(bus, 1, 3 << 3, 0) == 0x10441AF4
    port = root_port(host, 2 << 3, 2)
    endpoint(ram, port, 3 << 3)
    first = endpoint(ram, port, 0)
    assert first.has_power and cfg(bus, 0, 16, SLTCTL, 4) == 0x004001C0
    assert cfg(bus, 0, 16, EXP + 0x10) >> 16 == 0x2011  # link active, x1 at 2.5 GT/s


def test_reset_closes_the_windows_and_resets_what_is_behind(host: GpexHost,
                                                            ram: GuestRAM) -> None:
    port = root_port(host, 1 << 3, 1)
    dev = endpoint(ram, port)
    bus = host_bus(host)
    number(bus, 8, 1, 1)
    open_windows(bus, 8)
    VirtioPciTestDriver(bus, ram, 1 << 8, legacy=False).probe()
    assert dev.state.status and port.windows
    host.ecam.reset()
    assert cfg(bus, 0, 8, 0x18) == 0 and cfg(bus, 0, 8, 0x1C) == 0xF0 and not port.windows
    assert dev.state.status == 0 and dev.bars[4].addr is None


def test_state_round_trip(host: GpexHost, ram: GuestRAM) -> None:
    port = root_port(host, 1 << 3, 1)
    bus = host_bus(host)
    number(bus, 8, 1, 1)
    open_windows(bus, 8)
    cfg_w(bus, 0, 8, SLTCTL, 0x30, 2)
    other_host = GpexHost([FakeIrq(32 + i) for i in range(4)])
    other = root_port(other_host, 1 << 3, 1)
    other.set_state(port.get_state())
    assert other.config == port.config and other.hpev_notified
    assert [(w.addr, w.size) for w in other.windows] == [(w.addr, w.size) for w in port.windows]


# -- whatever the guest writes ------------------------------------------------------------------

def _expected_lines(bus: Any, up: int = 0, want: list[bool] | None = None) -> list[bool]:
    """Which root lines the functions at and below ``bus`` drive (``up``: the swizzle the
    bridges above add)."""
    want = [False] * 4 if want is None else want
    for devfn, dev in bus.devices.items():
        if dev.irq_level and dev.intx_pin and not dev.get_config(4, 2) & 0x400:
            want[(dev.intx_pin - 1 + (devfn >> 3) + up) % 4] = True
        if dev.is_bridge:
            _expected_lines(dev.secondary_bus, (up + (devfn >> 3)) % 4, want)
    return want


@pytest.mark.parametrize("seed", range(4))
def test_random_bridge_programming_never_raises(ram: GuestRAM, lines: list[FakeIrq],
                                                seed: int, guest_errors: Any) -> None:
    """Random configuration writes of every size to ports and functions on any bus number,
    accesses through the windows wherever they went, resets, snapshots: no exception, and
    the interrupt lines always what the functions drive through the swizzles."""
    import random

    rng = random.Random(seed)
    host = GpexHost(lines)
    a = root_port(host, 1 << 3, 1, multifunction="on")
    b = root_port(host, 1 << 3 | 1, 2)
    c = root_port(a, 0, 3)
    functions = [endpoint(ram, a, 1 << 3), endpoint(ram, b), endpoint(ram, c),
                 endpoint(ram, b, 2 << 3, "virtio-rng-pci-transitional")]
    bus = host_bus(host)
    number(bus, 8, 1, 2)
    number(bus, 9, 3, 3)
    number(bus, 0, 2, 2, on=1)
    for _ in range(4000):
        choice = rng.random()
        size = rng.choice((1, 2, 4))
        value = rng.choice((0, 0xFFFFFFFF, rng.getrandbits(32), 0x40, 0x0101))
        if choice < 0.6:
            number_ = rng.choice((0, 0, 1, 2, 3, rng.randrange(256)))
            devfn = rng.choice((8, 9, 0, 8, 16, rng.randrange(256)))
            offset = rng.choice((rng.randrange(0x40), rng.randrange(0x100),
                                 rng.randrange(0x1000))) & ~(size - 1)
            if rng.random() < 0.6:
                cfg_w(bus, number_, devfn, offset, value & ((1 << 8 * size) - 1), size)
            else:
                cfg(bus, number_, devfn, offset, size)
        elif choice < 0.9:
            addr = rng.choice((PIO + rng.randrange(0x10000 - 8),
                               MMIO + rng.randrange(0x400000), MMIO + rng.randrange(1 << 30)))
            if rng.random() < 0.5:
                bus.write(addr, size, value & ((1 << 8 * size) - 1))
            else:
                bus.read(addr, size)
        elif choice < 0.97:
            rng.choice(functions).set_irq(rng.random() < 0.5)
        elif choice < 0.99:
            port = rng.choice((a, b, c))
            port.set_state(port.get_state())
        else:
            host.ecam.reset()
        assert [line.level for line in lines] == _expected_lines(host.bus)
