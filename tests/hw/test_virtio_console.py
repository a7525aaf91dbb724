"""virtio-serial-device with a virtconsole: the multiport handshake Linux performs, output,
input through posted buffers (nothing lost), emergency write, command-line plugging."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from kvmpy.config import OptionSpec, VMConfig
from kvmpy.errors import ConfigError
from kvmpy.hw.virtio import VirtConsole, VirtioMmio, VirtioSerial, VirtSerialPort, plug_devices
from kvmpy.memory import GuestRAM, MmioBus

from .conftest import BufferChardev, VirtioTestDriver

BASE = 0x10008000
CTRL = struct.Struct("<IHH")
DEVICE_READY, PORT_ADD, PORT_READY, CONSOLE_PORT, PORT_OPEN, PORT_NAME = 0, 1, 3, 4, 6, 7


@pytest.fixture
def setup(make_irq: Any) -> tuple[VirtioTestDriver, VirtioSerial, BufferChardev, Any]:
    ram = GuestRAM(0x80000000, 1 << 20)
    serial = VirtioSerial(max_ports=2)
    chardev = BufferChardev()
    serial.add_port(VirtConsole(backend=chardev))
    transport = VirtioMmio(make_irq(8), ram=ram, device=serial)
    bus = MmioBus()
    bus.add(BASE, transport.region_size, transport)
    drv = VirtioTestDriver(bus, ram, BASE, legacy=True)
    return drv, serial, chardev, transport


def control_in(drv: VirtioTestDriver, buffers: list[tuple[int, int]]) -> list[tuple[int, ...]]:
    msgs = []
    for head, length in drv.new_used(2):
        addr = buffers[head][0]
        msgs.append((*CTRL.unpack(drv.ram.read(addr, 8)), length))
    return msgs


def handshake(drv: VirtioTestDriver) -> list[tuple[int, int]]:
    offered = drv.probe(queues=6)
    assert offered & 0b110 == 0b110  # MULTIPORT, EMERG_WRITE
    assert drv.bus.read(BASE + 0x104, 4) == 2  # max_nr_ports
    ctrl_bufs = []
    for _ in range(8):
        buf = drv.add_buffer(64, True)
        ctrl_bufs.append(buf)
        drv.post([(*buf, True)], queue=2, notify=False)
    drv.w(0x50, 2)
    return ctrl_bufs


def send_control(drv: VirtioTestDriver, port: int, event: int, value: int) -> None:
    buf = drv.add_buffer(CTRL.pack(port, event, value))
    drv.post([(*buf, False)], queue=3)


def test_linux_handshake_and_output(setup: Any) -> None:
    drv, _, chardev, transport = setup
    ctrl_bufs = handshake(drv)
    send_control(drv, 0, DEVICE_READY, 1)
    assert control_in(drv, ctrl_bufs) == [(0, PORT_ADD, 1, 8)]
    send_control(drv, 0, PORT_READY, 1)
    assert control_in(drv, ctrl_bufs) == [(0, CONSOLE_PORT, 1, 8), (0, PORT_OPEN, 1, 8)]
    send_control(drv, 0, PORT_OPEN, 1)
    assert transport.irq.level
    out = drv.add_buffer(b"Welcome to kvmpy\n")
    drv.post([(*out, False)], queue=1)
    assert bytes(chardev.output) == b"Welcome to kvmpy\n"
    assert drv.new_used(1) == [(0, 0)]


def test_input_waits_for_buffers_and_is_not_lost(setup: Any) -> None:
    drv, serial, chardev, _ = setup
    ctrl_bufs = handshake(drv)
    send_control(drv, 0, DEVICE_READY, 1)
    send_control(drv, 0, PORT_READY, 1)
    control_in(drv, ctrl_bufs)
    chardev.type(b"early")  # the guest has not opened the port: input waits
    assert chardev.pending == b"early"
    send_control(drv, 0, PORT_OPEN, 1)
    assert chardev.pending == b"early"  # still no receive buffers
    rx = [drv.add_buffer(4, True) for _ in range(3)]
    for buf in rx:
        drv.post([(*buf, True)], queue=0, notify=False)
    drv.w(0x50, 0)  # buffers posted: input flows
    assert chardev.pending == b""
    used = drv.new_used(0)
    assert [length for _, length in used] == [4, 1]
    assert drv.ram.read(rx[0][0], 4) + drv.ram.read(rx[1][0], 1) == b"early"
    chardev.type(b"0123456789")
    assert chardev.pending == b"456789"  # one 4-byte buffer was left
    assert drv.ram.read(rx[2][0], 4) == b"0123"
    big = drv.add_buffer(64, True)
    drv.post([(*big, True)], queue=0)
    assert chardev.pending == b""
    assert drv.new_used(0)[-1][1] == 6
    assert drv.ram.read(big[0], 6) == b"456789"
    assert serial.state.guest_connected == [0]


def test_guest_close_stops_input(setup: Any) -> None:
    drv, _, chardev, _ = setup
    ctrl_bufs = handshake(drv)
    send_control(drv, 0, DEVICE_READY, 1)
    send_control(drv, 0, PORT_READY, 1)
    send_control(drv, 0, PORT_OPEN, 1)
    send_control(drv, 0, PORT_OPEN, 0)
    control_in(drv, ctrl_bufs)
    drv.post([(*drv.add_buffer(8, True), True)], queue=0)
    chardev.type(b"x")
    assert chardev.pending == b"x"


def test_named_serial_port(make_irq: Any) -> None:
    ram = GuestRAM(0x80000000, 1 << 20)
    serial = VirtioSerial(max_ports=4)
    port = VirtSerialPort(backend=BufferChardev(), name="org.kvmpy.port1")
    serial.add_port(port)
    assert port.nr == 1  # port 0 is kept for a virtconsole
    transport = VirtioMmio(make_irq(), ram=ram, device=serial, force_legacy=False)
    bus = MmioBus()
    bus.add(BASE, transport.region_size, transport)
    drv = VirtioTestDriver(bus, ram, BASE, legacy=False)
    ctrl_bufs = handshake_n(drv, queues=6)
    send_control(drv, 0, DEVICE_READY, 1)
    send_control(drv, 1, PORT_READY, 1)
    msgs = control_in(drv, ctrl_bufs)
    assert msgs[0] == (1, PORT_ADD, 1, 8)
    assert msgs[1] == (1, PORT_NAME, 1, 8 + len(b"org.kvmpy.port1\0"))
    assert drv.ram.read(ctrl_bufs[1][0] + 8, 16) == b"org.kvmpy.port1\0"
    assert msgs[2] == (1, PORT_OPEN, 1, 8)
    # port 1 transmits on queue 2*(1+1)+1 = 5
    send_control(drv, 1, PORT_OPEN, 1)
    drv.post([(*drv.add_buffer(b"ping"), False)], queue=5)
    assert port.backend is not None and bytes(port.backend.output) == b"ping"


def handshake_n(drv: VirtioTestDriver, queues: int) -> list[tuple[int, int]]:
    drv.probe(queues=queues)
    bufs = []
    for _ in range(8):
        buf = drv.add_buffer(64, True)
        bufs.append(buf)
        drv.post([(*buf, True)], queue=2, notify=False)
    drv.w(0x50, 2)
    return bufs


def test_emergency_write(setup: Any) -> None:
    drv, _, chardev, _ = setup
    drv.probe(queues=6)
    drv.bus.write(BASE + 0x108, 4, ord("!"))
    assert bytes(chardev.output) == b"!"


def test_port_numbering_errors() -> None:
    serial = VirtioSerial(max_ports=2)
    # Messages as qemu-system-riscv64 7.2 prints them.
    with pytest.raises(ConfigError, match=r"^Port number 0 on virtio-serial devices reserved "
                       r"for virtconsole devices for backward compatibility\.$"):
        serial.add_port(VirtSerialPort(nr=0))
    serial.add_port(VirtSerialPort())
    with pytest.raises(ConfigError, match=r"^virtio-serial-bus: Out-of-range port id "
                       r"specified, max\. allowed: 1$"):
        serial.add_port(VirtSerialPort())  # full
    with pytest.raises(ConfigError, match=r"^virtio-serial-bus: A port already exists at id 1$"):
        serial.add_port(VirtSerialPort(nr=1))
    with pytest.raises(ConfigError, match="Out-of-range port id"):
        serial.add_port(VirtConsole(nr=5))
    with pytest.raises(ConfigError, match=r"^Maximum number of serial ports not specified$"):
        VirtioSerial(max_ports=0)
    with pytest.raises(ConfigError, match=r"^maximum ports supported: 511$"):
        VirtioSerial(max_ports=600)


def test_reset_forgets_guest_state(setup: Any) -> None:
    drv, serial, _, transport = setup
    ctrl_bufs = handshake(drv)
    send_control(drv, 0, DEVICE_READY, 1)
    send_control(drv, 0, PORT_READY, 1)
    send_control(drv, 0, PORT_OPEN, 1)
    control_in(drv, ctrl_bufs)
    transport.reset()
    assert serial.state.guest_connected == []
    assert serial.state.control_pending == []


def test_control_messages_wait_for_buffers(setup: Any) -> None:
    drv, serial, _, _ = setup
    drv.probe(queues=6)
    send_control(drv, 0, DEVICE_READY, 1)
    assert len(serial.state.control_pending) == 1
    buf = drv.add_buffer(64, True)
    drv.post([(*buf, True)], queue=2)
    assert serial.state.control_pending == []
    assert CTRL.unpack(drv.ram.read(buf[0], 8)) == (0, PORT_ADD, 1)


def test_control_messages_for_a_driver_without_buffers_are_bounded(
        setup: Any, guest_errors: Any) -> None:
    drv, serial, _, _ = setup
    drv.probe(queues=6)
    for _ in range(500):  # DEVICE_READY again and again, never a control receive buffer
        buf = drv.add_buffer(CTRL.pack(0, DEVICE_READY, 1))
        drv.post([(*buf, False)], queue=3)
        drv.buffers = drv.ram.base + 0x80000  # reuse the buffer area
    assert len(serial.state.control_pending) == 8 * (serial.max_ports + 1)
    assert any("dropped" in m for m in guest_errors.messages)


def test_bad_control_messages_are_logged(setup: Any, guest_errors: Any) -> None:
    drv, _, _, _ = setup
    handshake(drv)
    send_control(drv, 9, PORT_READY, 1)  # no such port
    send_control(drv, 0, DEVICE_READY, 0)  # driver failed
    drv.post([(*drv.add_buffer(b"abc"), False)], queue=3)  # short message
    assert len(guest_errors) == 3


def test_broken_receive_queue_marks_device_broken(setup: Any, guest_errors: Any) -> None:
    drv, _, chardev, transport = setup
    ctrl_bufs = handshake(drv)
    send_control(drv, 0, DEVICE_READY, 1)
    send_control(drv, 0, PORT_READY, 1)
    send_control(drv, 0, PORT_OPEN, 1)
    control_in(drv, ctrl_bufs)
    q = drv.queues[0]
    drv.ram.write(q["desc"], struct.pack("<QIHH", 0x1000, 8, 2, 0))  # outside RAM
    drv.ram.write_int(q["avail"] + 4, 2, 0)
    drv.ram.write_int(q["avail"] + 2, 2, 1)
    chardev.type(b"x")  # the malformed buffer is found when input arrives
    assert chardev.pending == b"x"
    assert transport.state.broken is True
    assert any("outside guest RAM" in m for m in guest_errors.messages)
    drv.w(0x50, 0)  # broken: ignored until reset
    assert chardev.pending == b"x"
    drv.w(0x70, 0)
    assert transport.state.broken is False


def test_plug_from_command_line(make_irq: Any) -> None:
    ram = GuestRAM(0x80000000, 1 << 20)
    chardev = BufferChardev()

    class System:
        config = VMConfig(devices=[OptionSpec("virtio-serial-device"),
                                   OptionSpec("virtconsole", {"chardev": "c0"})])
        chardevs = {"c0": chardev}

    slots = [VirtioMmio(make_irq(), ram=ram) for _ in range(2)]
    plugged = plug_devices(System(), slots)
    assert isinstance(plugged[0], VirtioSerial) and isinstance(plugged[1], VirtConsole)
    assert plugged[0].ports[0] is plugged[1]
    assert slots[0].mmio_read(8, 4) == 3


@pytest.mark.parametrize("devices, message", [
    ([OptionSpec("virtconsole")], "No 'virtio-serial-bus' bus found for device 'virtconsole'"),
    ([OptionSpec("virtio-serial-device"), OptionSpec("virtconsole", {"chardev": "nope"})],
     "Property 'virtconsole.chardev' can't find value 'nope'"),
    ([OptionSpec("virtio-serial-device"), OptionSpec("virtconsole", {"chardev": "c0"}),
      OptionSpec("virtserialport", {"chardev": "c0"})],
     "Property 'virtserialport.chardev' can't take value 'c0': Device 'c0' is in use"),
])
def test_plug_errors(make_irq: Any, devices: list[OptionSpec], message: str) -> None:
    class System:
        config = VMConfig(devices=devices)
        chardevs: dict[str, Any] = {"c0": BufferChardev()}

    with pytest.raises(ConfigError, match=message):
        plug_devices(System(), [VirtioMmio(make_irq(), ram=GuestRAM(0x80000000, 1 << 16))])


def test_host_connect_and_disconnect_reach_the_guest(setup: Any) -> None:
    from kvmpy.chardev.base import CHR_EVENT_CLOSED, CHR_EVENT_OPENED

    drv, serial, chardev, _ = setup
    ctrl_bufs = handshake(drv)
    chardev.notify_event(CHR_EVENT_CLOSED)  # before PORT_READY: nothing to tell
    send_control(drv, 0, DEVICE_READY, 1)
    send_control(drv, 0, PORT_READY, 1)
    control_in(drv, ctrl_bufs)
    chardev.notify_event(CHR_EVENT_CLOSED)
    chardev.notify_event(CHR_EVENT_OPENED)
    assert control_in(drv, ctrl_bufs) == [(0, PORT_OPEN, 0, 8), (0, PORT_OPEN, 1, 8)]
    assert serial.state.ports_ready == [0]


def test_vserport_change_follows_the_guest(make_irq: Any) -> None:
    """QEMU's set_guest_connected: one VSERPORT_CHANGE per PORT_OPEN message (repeats too),
    and a closing one for each open port when the device is reset; ports without an id are
    silent."""
    events: list[tuple[str, dict[str, Any]]] = []
    ram = GuestRAM(0x80000000, 1 << 20)
    serial = VirtioSerial(max_ports=4)
    named = VirtSerialPort(backend=BufferChardev(), name="org.qemu.guest_agent.0",
                           emit=lambda event, data: events.append((event, data)))
    named.id = "channel0"
    anonymous = VirtSerialPort(backend=BufferChardev(),
                               emit=lambda event, data: events.append((event, data)))
    serial.add_port(named)
    serial.add_port(anonymous)
    transport = VirtioMmio(make_irq(), ram=ram, device=serial, force_legacy=False)
    bus = MmioBus()
    bus.add(BASE, transport.region_size, transport)
    drv = VirtioTestDriver(bus, ram, BASE, legacy=False)
    handshake_n(drv, queues=8)
    send_control(drv, 0, DEVICE_READY, 1)
    for nr in (1, 2):
        send_control(drv, nr, PORT_READY, 1)
        send_control(drv, nr, PORT_OPEN, 1)
    assert events == [("VSERPORT_CHANGE", {"id": "channel0", "open": True})]
    send_control(drv, 1, PORT_OPEN, 0)
    send_control(drv, 1, PORT_OPEN, 0)
    send_control(drv, 1, PORT_OPEN, 1)
    assert [data["open"] for _, data in events] == [True, False, False, True]
    transport.reset()
    assert events[-1] == ("VSERPORT_CHANGE", {"id": "channel0", "open": False})
    assert len(events) == 5


def test_port_zero_is_open_for_a_driver_without_multiport(make_irq: Any) -> None:
    ram = GuestRAM(0x80000000, 1 << 20)
    serial = VirtioSerial(max_ports=2)
    chardev = BufferChardev()
    serial.add_port(VirtConsole(backend=chardev))
    transport = VirtioMmio(make_irq(), ram=ram, device=serial)
    bus = MmioBus()
    bus.add(BASE, transport.region_size, transport)
    drv = VirtioTestDriver(bus, ram, BASE, legacy=True)
    drv.probe(queues=2, features=0)
    rx = drv.add_buffer(16, True)
    drv.post([(*rx, True)], queue=0)
    chardev.type(b"hello")
    assert chardev.pending == b""
    assert drv.ram.read(rx[0], 5) == b"hello"
