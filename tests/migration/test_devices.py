"""Device state of the virtio transports and devices and of PCI: a device's state taken out,
put into a fresh device over a copy of guest RAM, and the fresh device carrying on where the
first stopped (the next descriptor, the next request); states that cannot be accepted are
refused with one line and leave the device as it was."""

from __future__ import annotations

import copy
import os
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kvmpy.hw.core import device_new
from kvmpy.hw.pci import GpexHost, PcieRootPort
from kvmpy.hw.virtio import RawImage, VirtioBlk, VirtioMmio, VirtioRng, VirtioSerial
from kvmpy.hw.virtio.console import VirtConsole
from kvmpy.memory import GuestRAM, MmioBus
from kvmpy.migration import VmStateError
from tests.hw.conftest import BufferChardev, FakeIrq
from tests.hw.virtio_drivers import (
    MMIO_BASE,
    TRANSPORTS,
    MmioDriver,
    VirtioPciTestDriver,
    _proxy_for,
    host_bus,
)

RAM_BASE = 0x80000000
RAM_SIZE = 1 << 20
SECTORS = 64


def pattern(n: int) -> bytes:
    """``n`` bytes that differ from one call to the next (an entropy source for tests)."""
    pattern.counter += 1  # type: ignore[attr-defined]
    seed = pattern.counter  # type: ignore[attr-defined]
    return bytes((seed * 7 + i) & 0xFF for i in range(n))


pattern.counter = 0  # type: ignore[attr-defined]


class Machine:
    """One transport (``kind``) carrying ``device`` over ``ram``, and the driver using it;
    ``top`` is what the state core walks (the virtio-mmio window or the host bridge's)."""

    def __init__(self, kind: str, ram: GuestRAM, device: Any,
                 driver: Any | None = None) -> None:
        self.kind, self.ram, self.device = kind, ram, device
        legacy = kind.endswith("legacy")
        if kind.startswith("mmio"):
            self.transport: Any = VirtioMmio(FakeIrq(8), ram=ram, device=device,
                                             force_legacy=legacy)
            bus = MmioBus()
            bus.add(MMIO_BASE, self.transport.region_size, self.transport)
            self.top: Any = self.transport
        else:
            self.host = GpexHost([FakeIrq(32 + i) for i in range(4)])
            self.transport = _proxy_for(device, ram)
            self.host.bus.plug(self.transport, 1 << 3)
            self.top = self.host.ecam
            bus = host_bus(self.host)
        if driver is not None:  # the guest's driver carries on, over the new bus and RAM
            self.driver = copy.copy(driver)
            self.driver.queues = copy.deepcopy(driver.queues)
            self.driver.bus, self.driver.ram = bus, ram
        elif kind.startswith("mmio"):
            self.driver = MmioDriver(bus, ram, MMIO_BASE, legacy)
        else:
            self.driver = VirtioPciTestDriver(bus, ram, 1 << 3, legacy)

    def save(self) -> dict[str, Any]:
        drain = getattr(self.top, "drain", None)
        if drain is not None:
            drain()
        return dict(self.top.get_state())

    def restore_into(self, device: Any, state: dict[str, Any]) -> Machine:
        """A new machine over a copy of this one's RAM, with ``state`` loaded."""
        ram = GuestRAM(RAM_BASE, RAM_SIZE)
        ram.write(RAM_BASE, self.ram.read(RAM_BASE, RAM_SIZE))
        other = Machine(self.kind, ram, device, self.driver)
        other.top.set_state(state)
        return other


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(b"".join(bytes([sector]) * 512 for sector in range(SECTORS)))
    return path


def blk_request(drv: Any, kind: int, sector: int, data: bytes | None = None,
                notify: bool = True) -> tuple[int, int]:
    """A read (``kind`` 0) or write (1) of one sector; returns (data, status) addresses."""
    header = drv.add_buffer(struct.pack("<IIQ", kind, 0, sector))
    buffer = drv.add_buffer(512 if data is None else data)
    status = drv.add_buffer(1)
    drv.post([(*header, False), (*buffer, kind == 0), (*status, True)], notify=notify)
    return buffer[0], status[0]


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_blk_carries_on_with_the_next_request(kind: str, disk: Path) -> None:
    ram = GuestRAM(RAM_BASE, RAM_SIZE)
    first = Machine(kind, ram, VirtioBlk(image=RawImage(str(disk))))
    first.driver.probe()
    first.driver.config_write(32, 1, 0)  # write cache off: a flag the state carries
    done = [blk_request(first.driver, 0, sector) for sector in (3, 4)]
    assert first.driver.used_idx() == 2
    state = first.save()

    second = first.restore_into(VirtioBlk(image=RawImage(str(disk))), state)
    assert second.save() == state
    assert second.device.state.writeback == 0
    assert [second.ram.read(addr, 512) for addr, _ in done] == [bytes([3]) * 512,
                                                                bytes([4]) * 512]
    data, status = blk_request(second.driver, 0, 9)
    assert second.driver.used_idx() == 3
    assert second.ram.read(data, 512) == bytes([9]) * 512
    assert second.ram.read_int(status, 1) == 0
    head, _length = second.driver.used_elem(2)
    assert head == 6  # the third chain: descriptors 6, 7, 8
    _, status = blk_request(second.driver, 1, 5, b"w" * 512)
    assert second.ram.read_int(status, 1) == 0
    assert disk.read_bytes()[5 * 512:6 * 512] == b"w" * 512
    # The first machine's device saw nothing of that.
    assert first.driver.used_idx() == 2


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_rng_queue_continues_mid_stream(kind: str) -> None:
    ram = GuestRAM(RAM_BASE, RAM_SIZE)
    first = Machine(kind, ram, VirtioRng(entropy=pattern))
    first.driver.probe()
    for _ in range(3):
        addr, length = first.driver.add_buffer(16)
        first.driver.post([(addr, length, True)])
    state = first.save()
    queue = state["queues"][0] if kind.startswith("mmio") else \
        state["functions"]["01.0 " + first.transport.type_name]["queues"][0]
    assert (queue["last_avail_idx"], queue["used_idx"]) == (3, 3)

    second = first.restore_into(VirtioRng(entropy=pattern), state)
    addr, length = second.driver.add_buffer(16)
    second.driver.post([(addr, length, True)])
    assert second.driver.used_idx() == 4
    assert second.driver.used_elem(3) == (3, 16)
    assert second.ram.read(addr, 16) != bytes(16)
    assert second.transport.state.queues[0].last_avail_idx == 4


def test_interrupt_status_and_registers_come_back(disk: Path) -> None:
    ram = GuestRAM(RAM_BASE, RAM_SIZE)
    first = Machine("mmio-modern", ram, VirtioRng(entropy=pattern))
    first.driver.probe()
    addr, length = first.driver.add_buffer(8)
    first.driver.post([(addr, length, True)])
    assert first.transport.irq.level
    first.driver.w(0x30, 0)  # queue select, feature selectors as the driver left them
    first.driver.w(0x14, 1)
    state = first.save()
    second = first.restore_into(VirtioRng(entropy=pattern), state)
    assert second.transport.irq.level
    assert second.driver.r(0x60) == 1 and second.driver.r(0x70) == 0xF
    assert second.driver.r(0x10) == first.driver.r(0x10)  # the same feature word selected
    assert second.device.guest_features == first.device.guest_features


# -- refused states -------------------------------------------------------------------------

def _mutations(kind: str) -> list[tuple[str, Callable[[dict[str, Any]], None]]]:
    def at(state: dict[str, Any]) -> dict[str, Any]:
        if kind.startswith("mmio"):
            return state
        function: dict[str, Any] = state["functions"]["01.0 virtio-blk-pci"]
        return function

    def set_in(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
        def mutate(state: dict[str, Any]) -> None:
            target: Any = at(state)
            for key in path[:-1]:
                target = target[key]
            if value is KeyError:
                del target[path[-1]]
            else:
                target[path[-1]] = value
        return mutate

    cases = [
        ("status is no integer", set_in(["status"], "15")),
        ("status out of range", set_in(["status"], 0x100)),
        ("a bool where an int goes", set_in(["isr"], True)),
        ("missing key", set_in(["queue_sel"], KeyError)),
        ("queue selector out of range", set_in(["queue_sel"], 1024)),
        ("queue too large", set_in(["queues", 0, "num"], 1025)),
        ("another queue size", set_in(["queues", 0, "num_default"], 128)),
        ("a queue too many", lambda s: at(s)["queues"].append(at(s)["queues"][0])),
        ("ring index out of range", set_in(["queues", 0, "last_avail_idx"], 1 << 16)),
        ("alignment no power of 2", set_in(["queues", 0, "align"], 3000)),
        ("another device", set_in(["device", "type"], "virtio-rng-device")),
        ("another disk", set_in(["device", "device", "capacity"], SECTORS + 1)),
        ("writeback flag", set_in(["device", "device", "writeback"], 2)),
        ("device state missing", set_in(["device"], None)),
        ("features no integer", set_in(["device", "guest_features"], [1])),
        ("not a dict", set_in(["queues", 0], "queue")),
    ]
    if kind.startswith("pci"):
        fn = "01.0 virtio-blk-pci"

        def fn_set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
            def mutate(state: dict[str, Any]) -> None:
                state["functions"][fn][key] = value
            return mutate

        def pci_set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
            def mutate(state: dict[str, Any]) -> None:
                state["functions"][fn]["pci"][key] = value
            return mutate

        cases += [
            ("queue vector past the MSI-X table", fn_set("queue_vectors", [7])),
            ("config vector past the table", fn_set("config_vector", 2)),
            ("vectors for a queue too many", fn_set("queue_vectors", [0xFFFF, 0xFFFF])),
            ("MSI-X table of another size", lambda s: s["functions"][fn]["msix"].update(
                table=bytes(48))),
            ("configuration space of another size", pci_set("config", bytes(4096))),
            ("another PCI identity", lambda s: s["functions"][fn]["pci"].update(
                config=b"\x00\x00" + s["functions"][fn]["pci"]["config"][2:])),
            ("a function this machine lacks", lambda s: s["functions"].update(
                {"02.0 virtio-rng-pci": {}})),
            ("a function missing", lambda s: s["functions"].pop("00.0 gpex-root")),
            ("INTx level no bool", pci_set("irq_level", 1)),
        ]
    return cases


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_states_that_cannot_be_accepted_change_nothing(kind: str, disk: Path) -> None:
    ram = GuestRAM(RAM_BASE, RAM_SIZE)
    machine = Machine(kind, ram, VirtioBlk(image=RawImage(str(disk))))
    machine.driver.probe()
    blk_request(machine.driver, 0, 1)
    good = machine.save()
    for what, mutate in _mutations(kind):
        bad = copy.deepcopy(good)
        mutate(bad)
        before = machine.save()
        with pytest.raises(VmStateError) as info:
            machine.top.set_state(bad)
        assert "\n" not in str(info.value), what
        assert machine.save() == before, what
    machine.top.set_state(good)
    assert machine.save() == good


# -- PCI: the host bridge carries every function ----------------------------------------------

def test_functions_behind_a_root_port_are_keyed_by_their_path(disk: Path) -> None:
    def build() -> tuple[GpexHost, PcieRootPort, Any, GuestRAM]:
        ram = GuestRAM(RAM_BASE, RAM_SIZE)
        host = GpexHost([FakeIrq(32 + i) for i in range(4)])
        port: PcieRootPort = device_new("pcie-root-port", {"chassis": "1"})
        host.bus.plug(port, 1 << 3)
        rng = device_new("virtio-rng-pci", {}, ram=ram, pcie_port=True)
        port.secondary_bus.plug(rng, 0)
        return host, port, rng, ram

    host, port, rng, _ = build()
    bus = host_bus(host)
    ecam = 0x30000000
    bus.write(ecam + (8 << 12) + 0x18, 4, 0x010100)  # the port forwards bus 1
    bus.write(ecam + (8 << 12) + 0x20, 4, 0x40104000)  # memory window 1 MiB at 0x40100000
    bus.write(ecam + (8 << 12) + 0x04, 2, 0x2)
    fn = ecam + (1 << 20)
    bus.write(fn + 0x20, 4, 0x40100000 | 0xC)  # BAR4 (64-bit prefetchable), memory decode
    bus.write(fn + 0x24, 4, 0)
    bus.write(fn + 0x04, 2, 0x6)
    assert rng.bars[4].addr == 0x40100000
    state = host.ecam.get_state()
    assert sorted(state["functions"]) == ["00.0 gpex-root", "01.0 pcie-root-port",
                                          "01.0/00.0 virtio-rng-pci"]

    other_host, other_port, other_rng, _ = build()
    other_host.ecam.set_state(state)
    assert other_host.ecam.get_state() == state
    assert other_rng.bars[4].addr == 0x40100000
    other_bus = host_bus(other_host)
    # Configuration cycles reach bus 1 as the guest numbered it, accesses go through the
    # window to the function's BAR: the common configuration's device feature select.
    assert other_bus.read(fn, 4) == bus.read(fn, 4)
    other_bus.write(0x40100000, 4, 1)
    assert other_bus.read(0x40100000, 4) == 1
    assert [(w.addr, w.size) for w in other_port.windows] == \
        [(w.addr, w.size) for w in port.windows]


# -- virtio-serial ------------------------------------------------------------------------------

def test_serial_ports_open_state_and_pending_control_messages() -> None:
    def build() -> tuple[VirtioSerial, list[tuple[str, Any]]]:
        events: list[tuple[str, Any]] = []
        serial = VirtioSerial(max_ports=2)
        port = VirtConsole(backend=BufferChardev(),
                           emit=lambda event, data: events.append((event, data)))
        port.id = "con0"
        serial.add_port(port)
        return serial, events

    serial, _ = build()
    ram = GuestRAM(RAM_BASE, RAM_SIZE)
    first = Machine("mmio-modern", ram, serial)
    first.driver.probe(queues=4)
    control = struct.pack("<IHH", 0, 0, 1)  # DEVICE_READY: the device answers PORT_ADD
    addr, length = first.driver.add_buffer(control)
    first.driver.post([(addr, length, False)], queue=3)
    assert serial.state.control_pending  # no control receive buffer posted yet
    open_msg = struct.pack("<IHH", 0, 6, 1)  # PORT_OPEN 0: the guest opened the console
    addr, length = first.driver.add_buffer(open_msg)
    first.driver.post([(addr, length, False)], queue=3)
    serial.ports[0].backend.type(b"typed ahead")  # the guest has no receive buffer yet
    state = first.save()
    assert state["device"]["device"]["guest_connected"] == [0]
    assert state["device"]["device"]["input"] == {"0": b"typed ahead"}

    restored, events = build()
    second = first.restore_into(restored, state)
    assert events == [("VSERPORT_CHANGE", {"id": "con0", "open": True})]  # QEMU's post_load
    assert restored.state.control_pending == serial.state.control_pending
    # The pending PORT_ADD reaches the driver once it posts a control receive buffer.
    addr, length = second.driver.add_buffer(64)
    second.driver.post([(addr, length, True)], queue=2)
    assert second.driver.used_idx(2) == 1
    assert second.ram.read(addr, 8) == struct.pack("<IHH", 0, 1, 1)
    # The input typed ahead at the source reaches the guest with its next receive buffer,
    # then what is typed into the new console.
    addr, length = second.driver.add_buffer(16)
    second.driver.post([(addr, length, True)], queue=0)
    assert second.ram.read(addr, 11) == b"typed ahead"
    assert second.driver.used_elem(0, queue=0)[1] == 11
    addr, length = second.driver.add_buffer(16)
    second.driver.post([(addr, length, True)], queue=0)
    restored.ports[0].backend.type(b"hello")
    assert second.ram.read(addr, 5) == b"hello"

    bad = copy.deepcopy(state)
    bad["device"]["device"]["guest_connected"] = [1]  # no port 1 on this device
    with pytest.raises(VmStateError):
        second.top.set_state(bad)
    bad = copy.deepcopy(state)
    bad["device"]["device"]["control_pending"] = ["PORT_ADD"]
    with pytest.raises(VmStateError):
        second.top.set_state(bad)
    bad = copy.deepcopy(state)
    bad["device"]["device"]["input"] = {"1": b"x"}
    with pytest.raises(VmStateError):
        second.top.set_state(bad)


# -- virtio-net ---------------------------------------------------------------------------------

def test_net_filter_tables_are_checked() -> None:
    nic = device_new("virtio-net-device", {})
    good = nic.get_state()
    for mutate in (lambda d: d.update(mac="52:54:00:12:34"),
                   lambda d: d["rx_filter"].update(mac_table=["52:54:00:12:34:56", 7]),
                   lambda d: d["rx_filter"].update(first_multi=3),
                   lambda d: d["rx_filter"].update(vlans=[0] * 127),
                   lambda d: d["rx_filter"].update(promisc="yes"),
                   lambda d: d.update(curr_guest_offloads=1 << 40),
                   lambda d: d.update(status=8)):
        bad = copy.deepcopy(good)
        mutate(bad["device"])
        with pytest.raises(VmStateError):
            nic.set_state(bad)
        assert nic.get_state() == good
    good["device"]["rx_filter"]["mac_table"] = ["52:54:00:12:34:57"]
    good["device"]["rx_filter"]["first_multi"] = 1
    nic.set_state(good)
    assert nic.state.rx_filter.accepts(bytes.fromhex("525400123457") + bytes(10),
                                       nic.state.mac)


# -- virtio-9p ----------------------------------------------------------------------------------

def _ninep(share: Path) -> Any:
    from kvmpy.fs import FsDev, Server
    from kvmpy.hw.virtio.ninep import VirtioNineP

    server = Server(FsDev(id="fs0", path=str(share), security_model="none"))
    device = VirtioNineP(server=server, mount_tag="share")
    return device


def _nine_request(drv: Any, message: bytes, room: int = 4096) -> tuple[int, int]:
    request = drv.add_buffer(message)
    reply = drv.add_buffer(room)
    drv.post([(*request, False), (*reply, True)])
    return reply


def _wait_used(drv: Any, count: int) -> None:
    deadline = time.monotonic() + 30
    while drv.used_idx() < count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert drv.used_idx() == count


def test_ninep_fids_are_reopened_by_path(tmp_path: Path) -> None:
    from tests.fs.client import msg, s

    share = tmp_path / "share"
    (share / "dir").mkdir(parents=True)
    (share / "dir" / "file.txt").write_bytes(b"first contents")
    (share / "gone.txt").write_bytes(b"soon removed")
    device = _ninep(share)
    ram = GuestRAM(RAM_BASE, RAM_SIZE)
    first = Machine("mmio-modern", ram, device)
    first.driver.probe()
    walk = struct.pack("<IIH", 0, 1, 2) + s("dir") + s("file.txt")
    for i, message in enumerate([
            msg(100, 1, struct.pack("<I", 8192) + s("9P2000.L")),
            msg(104, 2, struct.pack("<II", 0, 0xFFFFFFFF) + s("root") + s("")
                + struct.pack("<I", 0)),
            msg(110, 3, walk),
            msg(12, 4, struct.pack("<II", 1, os.O_RDWR)),
            msg(110, 5, struct.pack("<IIH", 0, 2, 1) + s("gone.txt"))]):
        _nine_request(first.driver, message)
        _wait_used(first.driver, i + 1)
    state = first.save()
    session = state["device"]["device"]["server"]
    assert session["msize"] == 8192
    assert {f["fid"]: f["path"] for f in session["fids"]} == \
        {0: [], 1: [b"dir", b"file.txt"], 2: [b"gone.txt"]}
    device.close()
    (share / "gone.txt").unlink()

    restored = _ninep(share)
    second = first.restore_into(restored, state)
    assert sorted(restored.server.fids) == [0, 1]  # the removed file's fid is left out
    assert restored.server.msize == 8192
    reply = _nine_request(second.driver, msg(116, 6, struct.pack("<IQI", 1, 0, 100)))
    _wait_used(second.driver, 6)
    size, rtype = struct.unpack("<IB", second.ram.read(reply[0], 5))
    assert rtype == 117
    assert second.ram.read(reply[0] + 11, size - 11) == b"first contents"
    reply = _nine_request(second.driver, msg(118, 7, struct.pack("<IQI", 1, 0, 6) + b"SECOND"))
    _wait_used(second.driver, 7)
    assert (share / "dir" / "file.txt").read_bytes() == b"SECONDcontents"
    restored.close()

    for bad_path in ([b".."], [b"a/b"], ["dir"], [b""]):
        bad = copy.deepcopy(state)
        bad["device"]["device"]["server"]["fids"][1]["path"] = bad_path
        other = _ninep(share)
        machine = Machine("mmio-modern", GuestRAM(RAM_BASE, RAM_SIZE), other)
        with pytest.raises(VmStateError):
            machine.top.set_state(bad)
        other.close()


def test_ninep_drain_waits_for_the_request_in_flight(tmp_path: Path) -> None:
    from tests.fs.client import msg, s

    share = tmp_path / "share"
    share.mkdir()
    device = _ninep(share)
    gate = threading.Event()
    served = device.server.handle

    def slow(request: bytes, room: int) -> bytes:
        gate.wait(30)
        return served(request, room)

    device.server.handle = slow  # the host call takes a while
    ram = GuestRAM(RAM_BASE, RAM_SIZE)
    machine = Machine("mmio-modern", ram, device)
    machine.driver.probe()
    _nine_request(machine.driver, msg(100, 1, struct.pack("<I", 8192) + s("9P2000.L")))
    assert machine.driver.used_idx() == 0
    threading.Timer(0.2, gate.set).start()
    machine.transport.drain()
    assert gate.is_set()
    assert machine.driver.used_idx() == 1  # answered before drain returned
    device.close()


# -- dirty pages ----------------------------------------------------------------------------

def _dirty_pages(ram: GuestRAM) -> set[int]:
    bitmap = int.from_bytes(ram.collect_dirty(), "little")
    return {RAM_BASE + (i << 12) for i in range(ram.size >> 12) if bitmap >> i & 1}


@pytest.mark.parametrize("kind", ["mmio-modern", "pci-legacy"])
def test_device_writes_mark_guest_pages_dirty(kind: str, disk: Path) -> None:
    ram = GuestRAM(RAM_BASE, RAM_SIZE)
    machine = Machine(kind, ram, VirtioBlk(image=RawImage(str(disk))))
    machine.driver.probe()
    blk_request(machine.driver, 0, 1)  # logging off: nothing is recorded, nothing fails
    ram.start_dirty_log()
    assert _dirty_pages(ram) == set()
    machine.driver.buffers = RAM_BASE + 0x90000 - 16  # the read's data spans two pages
    data, status = blk_request(machine.driver, 0, 2)
    used = machine.driver.queues[0]["used"]
    dirty = _dirty_pages(ram)
    # The buffers the device filled (in place, through the disk image's readinto), the used
    # ring; the request the driver wrote itself is the driver's business (a vCPU store).
    assert {data & ~0xFFF, (data + 511) & ~0xFFF, status & ~0xFFF, used & ~0xFFF} <= dirty
    assert len(dirty) <= 5
    ram.stop_dirty_log()


def test_ninep_replies_mark_guest_pages_dirty(tmp_path: Path) -> None:
    from tests.fs.client import msg, s

    share = tmp_path / "share"
    share.mkdir()
    (share / "big").write_bytes(b"z" * 20000)
    device = _ninep(share)
    ram = GuestRAM(RAM_BASE, RAM_SIZE)
    machine = Machine("mmio-modern", ram, device)
    machine.driver.probe()
    for i, message in enumerate([
            msg(100, 1, struct.pack("<I", 65536) + s("9P2000.L")),
            msg(104, 2, struct.pack("<II", 0, 0xFFFFFFFF) + s("root") + s("")
                + struct.pack("<I", 0)),
            msg(110, 3, struct.pack("<IIH", 0, 1, 1) + s("big")),
            msg(12, 4, struct.pack("<II", 1, os.O_RDONLY))]):
        _nine_request(machine.driver, message)
        _wait_used(machine.driver, i + 1)
    ram.start_dirty_log()
    reply = _nine_request(machine.driver, msg(116, 5, struct.pack("<IQI", 1, 0, 20000)),
                          room=20011)
    _wait_used(machine.driver, 5)
    machine.transport.drain()
    assert ram.read(reply[0] + 11, 20000) == b"z" * 20000  # read straight into the buffers
    dirty = _dirty_pages(ram)
    assert {page for page in range(reply[0] & ~0xFFF, reply[0] + 20011, 0x1000)} <= dirty
    ram.stop_dirty_log()
    device.close()


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_drain_serves_requests_whose_notify_has_not_arrived(kind: str, disk: Path) -> None:
    """A request posted (its notification still on the way) is done once, before the
    state is taken: the restored device does not do it again."""
    ram = GuestRAM(RAM_BASE, RAM_SIZE)
    first = Machine(kind, ram, VirtioBlk(image=RawImage(str(disk))))
    first.driver.probe()
    _, status = blk_request(first.driver, 1, 7, b"A" * 512, notify=False)
    state = first.save()
    assert first.driver.used_idx() == 1 and first.ram.read_int(status, 1) == 0
    assert disk.read_bytes()[7 * 512:8 * 512] == b"A" * 512
    second = first.restore_into(VirtioBlk(image=RawImage(str(disk))), state)
    disk.write_bytes(disk.read_bytes()[:7 * 512] + b"B" * 512 + disk.read_bytes()[8 * 512:])
    second.driver.notify(0)  # the notification arrives after the restore
    assert second.driver.used_idx() == 1
    assert disk.read_bytes()[7 * 512:8 * 512] == b"B" * 512  # not written a second time


class _Loop:
    """The main loop's part: callbacks run when the test says (``run``)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.later: list[Callable[[], None]] = []

    def call_soon(self, fn: Callable[[], None]) -> None:
        self.later.append(fn)

    def run(self) -> None:
        while self.later:
            self.later.pop(0)()


def _network(loop: _Loop) -> Any:
    from kvmpy.net.base import NetBackend

    class Network(NetBackend):
        """The host side of the link: what the NIC sends is kept in ``sent``."""

        def __init__(self) -> None:
            super().__init__("n0", {})
            self.sent: list[bytes] = []
            self.start(loop)

        def _output(self, frame: bytes) -> None:
            self.sent.append(frame)

    return Network()


def test_net_frames_between_nic_and_network_are_not_lost() -> None:
    frames = [bytes.fromhex("525400123456") + bytes(6) + b"\x08\x00" + bytes([i]) * 50
              for i in range(3)]
    loop = _Loop()
    source_net = _network(loop)
    nic = device_new("virtio-net-device", {"mac": "52:54:00:12:34:56"}, backend=source_net)
    ram = GuestRAM(RAM_BASE, RAM_SIZE)
    first = Machine("mmio-modern", ram, nic)
    first.driver.probe(queues=3)
    for frame in frames[:2]:  # no receive buffer posted: the frames wait in the back-end
        source_net.deliver(frame)
    header, packet = bytes(12), b"guest frame"
    addr, length = first.driver.add_buffer(header + packet)
    first.driver.post([(addr, length, False)], queue=1)  # sent; the loop has not run yet
    assert first.driver.used_idx(1) == 1 and source_net.sent == []
    state = first.save()
    assert source_net.sent == [packet]  # drained out before the state was taken
    assert state["device"]["device"]["rx_backlog"] == frames[:2]

    loop = _Loop()
    target_net = _network(loop)
    restored = device_new("virtio-net-device", {"mac": "52:54:00:12:34:56"},
                          backend=target_net,
                          schedule=lambda deadline, fn: loop.call_soon(fn))
    second = first.restore_into(restored, state)
    assert second.save()["device"] == state["device"]  # the load itself is what was saved
    loop.run()
    rarp = target_net.sent.pop()  # the NIC says where it is now
    assert rarp[:14] == b"\xff" * 6 + frames[0][:6] + b"\x80\x35" and len(rarp) == 60
    # The guest is asked to announce itself (it negotiated GUEST_ANNOUNCE): a config
    # interrupt with the announce bit in the status, which it acknowledges.
    assert second.transport.state.isr & 2
    assert second.driver.config_read(6, 2) == 3  # link up, announce
    ack = second.driver.add_buffer(bytes([3, 0]))
    ack_status = second.driver.add_buffer(1)
    second.driver.post([(*ack, False), (*ack_status, True)], queue=2)
    assert second.ram.read_int(ack_status[0], 1) == 0 and second.driver.config_read(6, 2) == 1
    target_net.deliver(frames[2])  # arrives at the new back-end
    buffers = [second.driver.add_buffer(128) for _ in range(3)]
    for addr, length in buffers:
        second.driver.post([(addr, length, True)], queue=0)
    loop.run()
    assert second.driver.used_idx(0) == 3
    assert [second.ram.read(addr + 12, 64) for addr, _ in buffers] == frames
