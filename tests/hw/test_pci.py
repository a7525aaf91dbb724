"""PCI configuration space, BARs, INTx and MSI-X semantics (PCI Local Bus spec 3.0, as QEMU's
hw/pci keeps them), on the generic host bridge with virtio-pci functions."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from kvmpy.errors import ConfigError
from kvmpy.hw.core import device_new
from kvmpy.hw.pci.gpex import GpexHost
from kvmpy.hw.virtio import VirtioRng
from kvmpy.memory import GuestRAM

from .conftest import FakeIrq
from .virtio_drivers import ECAM, MMIO, MODERN_BAR_ADDR, PIO, VirtioPciTestDriver, host_bus

RAM_BASE = 0x80000000


@pytest.fixture
def ram() -> GuestRAM:
    return GuestRAM(RAM_BASE, 1 << 20)


def rng_pci(ram: GuestRAM, name: str = "virtio-rng-pci", **props: str) -> Any:
    return device_new(name, props, ram=ram, deliver_msi=lambda a, d: ram.write_int(a, 4, d))


@pytest.fixture
def host() -> GpexHost:
    return GpexHost([FakeIrq(32 + i) for i in range(4)])


def cfg(bus: Any, devfn: int, offset: int, size: int = 4) -> int:
    return int(bus.read(ECAM + (devfn << 12) + offset, size))


def cfg_w(bus: Any, devfn: int, offset: int, value: int, size: int = 4) -> None:
    bus.write(ECAM + (devfn << 12) + offset, size, value)


def test_bar_sizing_reads_back_the_size_masks(host: GpexHost, ram: GuestRAM) -> None:
    host.bus.plug(rng_pci(ram), 8)
    bus = host_bus(host)
    for offset in range(0x10, 0x28, 4):
        cfg_w(bus, 8, offset, 0xFFFFFFFF)
    # BAR0 I/O 32 bytes, BAR1 4 KiB, BAR4/5 64-bit prefetchable 16 KiB, the rest unused.
    assert [cfg(bus, 8, o) for o in range(0x10, 0x28, 4)] == \
        [0xFFFFFFE1, 0xFFFFF000, 0, 0, 0xFFFFC00C, 0xFFFFFFFF]


def test_command_and_status_write_semantics(host: GpexHost, ram: GuestRAM) -> None:
    dev = rng_pci(ram)
    host.bus.plug(dev, 8)
    bus = host_bus(host)
    cfg_w(bus, 8, 0x04, 0xFFFF, 2)
    assert cfg(bus, 8, 0x04, 2) == 0x0507  # IO MEM MASTER SERR INTX_DISABLE
    dev.config[0x07] |= 0x80  # a detected parity error
    cfg_w(bus, 8, 0x06, 0x8000, 2)  # write one to clear
    assert not cfg(bus, 8, 0x06, 2) & 0x8000
    cfg_w(bus, 8, 0x00, 0x12345678)  # identity is read-only
    assert cfg(bus, 8, 0x00) == 0x10051AF4
    cfg_w(bus, 8, 0x3C, 0x55, 1)  # interrupt line is the guest's
    assert cfg(bus, 8, 0x3C) == 0x0155


def test_bars_decode_only_when_enabled_and_valid(host: GpexHost, ram: GuestRAM) -> None:
    dev = rng_pci(ram)
    host.bus.plug(dev, 8)
    bus = host_bus(host)
    cfg_w(bus, 8, 0x20, MODERN_BAR_ADDR)  # BAR4 low
    assert dev.bars[4].addr is None  # memory decode off
    assert bus.read(MODERN_BAR_ADDR + 0x12, 2) == 0xFFFF  # nothing there: all ones
    cfg_w(bus, 8, 0x04, 0x2, 2)
    assert dev.bars[4].addr == MODERN_BAR_ADDR
    assert bus.read(MODERN_BAR_ADDR + 0x12, 2) == 1  # common cfg num_queues
    cfg_w(bus, 8, 0x20, 0)  # address 0 decodes on virt (its pci_allow_0_address)
    assert dev.bars[4].addr == 0
    dev.allow_0_address = False  # a machine without it
    dev.update_mappings()
    assert dev.bars[4].addr is None
    cfg_w(bus, 8, 0x14, 0xFFFFE000)  # BAR1 (32-bit) below the top of 4 GiB: mapped
    assert dev.bars[1].addr == 0xFFFFE000
    cfg_w(bus, 8, 0x14, 0xFFFFF000)  # ending at 0xffffffff: QEMU's 32-bit wrap guard
    assert dev.bars[1].addr is None
    cfg_w(bus, 8, 0x10, 0x1001)  # BAR0 I/O needs I/O decode
    assert dev.bars[0].addr is None
    cfg_w(bus, 8, 0x04, 0x3, 2)
    assert dev.bars[0].addr == 0x1000
    assert bus.read(PIO + 0x1000 + 12, 2) == 8  # legacy queue size of virtio-rng


def test_intx_swizzle_and_disable(ram: GuestRAM) -> None:
    lines = [FakeIrq(32 + i) for i in range(4)]
    host = GpexHost(lines)
    devs = {slot: rng_pci(ram) for slot in (1, 2, 5)}
    for slot, dev in devs.items():
        host.bus.plug(dev, slot << 3)
    devs[2].set_irq(True)
    assert [line.level for line in lines] == [False, False, True, False]  # (0 + 2) % 4
    devs[5].set_irq(True)  # INTA of slot 5 -> line 1
    assert [line.level for line in lines] == [False, True, True, False]
    bus = host_bus(host)
    cfg_w(bus, 2 << 3, 0x04, 0x400, 2)  # INTx disable: the line drops, the status bit stays
    assert lines[2].level is False
    assert cfg(bus, 2 << 3, 0x06, 2) & 0x08
    cfg_w(bus, 2 << 3, 0x04, 0, 2)
    assert lines[2].level is True
    devs[1].set_irq(True)  # slot 1 shares line 1 with slot 5
    devs[5].set_irq(False)
    assert lines[1].level is True  # still driven by slot 1


def test_reset_returns_to_power_on(host: GpexHost, ram: GuestRAM) -> None:
    dev = rng_pci(ram)
    host.bus.plug(dev, 8)
    drv = VirtioPciTestDriver(host_bus(host), ram, 8, legacy=False)
    drv.probe()
    assert dev.bars[4].addr == MODERN_BAR_ADDR
    host.ecam.reset()
    assert cfg(drv.bus, 8, 0x04, 2) == 0
    assert cfg(drv.bus, 8, 0x20) == 0x0C and dev.bars[4].addr is None
    assert dev.state.status == 0


def test_non_transitional_identity(host: GpexHost, ram: GuestRAM) -> None:
    dev = rng_pci(ram, "virtio-rng-pci-non-transitional")
    host.bus.plug(dev, 8)
    bus = host_bus(host)
    assert cfg(bus, 8, 0x00) == 0x10441AF4  # 0x1040 + virtio id 4
    assert cfg(bus, 8, 0x08) & 0xFF == 1  # revision 1
    assert cfg(bus, 8, 0x2C) == 0x11001AF4  # subsystem stays QEMU's default
    assert 0 not in dev.bars


def test_pci_config_capability_window(host: GpexHost, ram: GuestRAM) -> None:
    dev = rng_pci(ram)
    host.bus.plug(dev, 8)
    bus = host_bus(host)
    cap = dev.cfg_cap
    cfg_w(bus, 8, cap + 4, 4, 1)  # BAR4
    cfg_w(bus, 8, cap + 8, 0x12)  # common cfg num_queues
    cfg_w(bus, 8, cap + 12, 2)
    assert cfg(bus, 8, cap + 16, 2) == 1
    cfg_w(bus, 8, cap + 8, 0x14)  # device_status through the window
    cfg_w(bus, 8, cap + 12, 1)
    cfg_w(bus, 8, cap + 16, 1, 1)
    assert dev.state.status == 1


def test_msix_delivery_mask_and_pending(host: GpexHost, ram: GuestRAM) -> None:
    dev = rng_pci(ram)
    host.bus.plug(dev, 8)
    drv = VirtioPciTestDriver(host_bus(host), ram, 8, legacy=False)
    bus, cap = drv.bus, dev.msix.cap
    assert cfg(bus, 8, cap, 4) == 0x00018411  # 2 vectors, disabled
    target = RAM_BASE + 0x8000
    bus.write(MMIO + 0x10, 4, target & 0xFFFFFFFF)  # vector 1: address, data, unmasked
    bus.write(MMIO + 0x14, 4, target >> 32)
    bus.write(MMIO + 0x18, 4, 0xC0FFEE)
    bus.write(MMIO + 0x1C, 4, 0)
    cfg_w(bus, 8, cap + 2, 0xC000, 2)  # enable, function masked
    drv.probe()
    drv.common_write(0x16, 2, 0)
    drv.common_write(0x1A, 2, 1)  # queue 0 -> vector 1
    assert drv.common(0x1A, 2) == 1
    drv.common_write(0x1A, 2, 7)  # past the table: VIRTIO_NO_VECTOR
    assert drv.common(0x1A, 2) == 0xFFFF
    drv.common_write(0x1A, 2, 1)
    addr, length = drv.add_buffer(8, True)
    drv.post([(addr, length, True)])
    assert ram.read_int(target, 4) == 0  # masked: pending
    assert bus.read(MMIO + 0x800, 4) == 0b10
    cfg_w(bus, 8, cap + 2, 0x8000, 2)  # unmask the function: the message goes out
    assert ram.read_int(target, 4) == 0xC0FFEE
    assert bus.read(MMIO + 0x800, 4) == 0


def test_state_roundtrip(host: GpexHost, ram: GuestRAM) -> None:
    dev = rng_pci(ram)
    host.bus.plug(dev, 8)
    drv = VirtioPciTestDriver(host_bus(host), ram, 8, legacy=False)
    drv.probe()
    state = dev.get_state()
    other_host = GpexHost([FakeIrq(32 + i) for i in range(4)])
    other = rng_pci(ram)
    other_host.bus.plug(other, 8)
    other.set_state(state)
    assert other.config == dev.config
    assert other.bars[4].addr == MODERN_BAR_ADDR
    assert other.state == dev.state


@pytest.mark.parametrize(("text", "devfn"), [("5", 40), ("05.0", 40), ("0x1f", 248),
                                             ("0x1.0x1", 9), ("1f.7", 255), ("+2.1", 17),
                                             (" 3", 24)])
def test_addr_property_reads_like_qemu(ram: GuestRAM, text: str, devfn: int) -> None:
    assert rng_pci(ram, addr=text).addr == devfn


@pytest.mark.parametrize("text", ["20", "1.8", "x", "-1", "1.0.0", "1.", "1 "])
def test_addr_property_errors(ram: GuestRAM, text: str) -> None:
    with pytest.raises(ConfigError, match=rf"Property 'virtio-rng-pci.addr' doesn't take "
                       rf"value '{text}'"):
        rng_pci(ram, addr=text)


def test_inner_device_properties_reach_the_device(ram: GuestRAM) -> None:
    dev = rng_pci(ram, period="100", indirect_desc="off")
    assert isinstance(dev.device, VirtioRng)
    assert dev.device.period == 100 and dev.device.indirect_desc is False


def test_unmapped_windows_read_ones(host: GpexHost) -> None:
    bus = host_bus(host)
    assert bus.read(ECAM + (1 << 20), 4) == 0xFFFFFFFF  # bus 1: nothing
    assert bus.read(ECAM + 0x100, 4) == 0xFFFFFFFF  # past a conventional function
    assert bus.read(PIO + 0x40, 2) == 0xFFFF
    assert bus.read(MMIO + 0x123450, 4) == 0xFFFFFFFF
    bus.write(ECAM + (7 << 15), 4, 1)  # an empty slot: dropped
    assert struct.pack("<I", cfg(bus, 0, 0)) == bytes.fromhex("361b0800")


@pytest.mark.parametrize(("vectors", "bar", "pba", "table_size"), [
    ("200", 0x1000, 0xC80, 200), ("255", 0x2000, 0xFF0, 255), ("2048", 0x10000, 0x8000, 2048),
    ("65537", 0x1000, 0x800, 1)])  # QEMU passes the count as 16 bits
def test_msix_bar_layout_is_qemus(ram: GuestRAM, vectors: str, bar: int, pba: int,
                                  table_size: int) -> None:
    dev = rng_pci(ram, vectors=vectors)
    assert dev.bars[1].size == bar
    assert dev.get_config(dev.msix.cap + 8, 4) == pba | 1
    assert dev.get_config(dev.msix.cap + 2, 2) == table_size - 1


def test_too_many_msix_vectors_warn_and_leave_msix_out(
        ram: GuestRAM, capsys: pytest.CaptureFixture[str]) -> None:
    dev = rng_pci(ram, vectors="2049")
    assert dev.msix is None and 1 not in dev.bars
    assert "warning: unable to init msix vectors to 2049" in capsys.readouterr().err
