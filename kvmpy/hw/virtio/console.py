"""virtio console (id 3; virtio spec §5.3): QEMU's ``virtio-serial-device`` with its ports
``virtconsole`` and ``virtserialport`` (hw/char/virtio-serial-bus.c, hw/char/virtio-console.c).

The device offers MULTIPORT: queues are port 0 receive/transmit (0, 1), control
receive/transmit (2, 3), then receive/transmit of port n >= 1 at 2(n+1), 2(n+1)+1.  The
control protocol (``struct virtio_console_control``: id u32, event u16, value u16) goes:
driver DEVICE_READY -> device PORT_ADD for each port; driver PORT_READY(n) -> device
CONSOLE_PORT (for a virtconsole), PORT_NAME, PORT_OPEN (when the chardev has a peer); driver
PORT_OPEN(n, 0/1) says whether the guest has the port open, and the device sends PORT_OPEN
0/1 when the chardev's peer goes away or connects.

Each port is the frontend of a chardev: transmit buffers are written to it, and its input
fills the port's posted receive buffers (``can_receive`` = posted buffer space, so input
waits in the chardev rather than being dropped).
"""

from __future__ import annotations

import functools
import struct
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kvmpy import log
from kvmpy.chardev.base import CHR_EVENT_CLOSED, CHR_EVENT_OPENED, Chardev
from kvmpy.errors import ConfigError
from kvmpy.hw.core import Device
from kvmpy.hw.qdev import Bus
from kvmpy.hw.virtio.device import VirtioDevice
from kvmpy.hw.virtio.virtqueue import VirtqElement, Virtqueue, VirtqueueError
from kvmpy.hw.virtio.vmstate import Applier, StateReader
from kvmpy.qom import Property, register_type

VIRTIO_ID_CONSOLE = 3

VIRTIO_CONSOLE_F_SIZE = 0
VIRTIO_CONSOLE_F_MULTIPORT = 1
VIRTIO_CONSOLE_F_EMERG_WRITE = 2

VIRTIO_CONSOLE_DEVICE_READY = 0
VIRTIO_CONSOLE_PORT_ADD = 1
VIRTIO_CONSOLE_PORT_REMOVE = 2
VIRTIO_CONSOLE_PORT_READY = 3
VIRTIO_CONSOLE_CONSOLE_PORT = 4
VIRTIO_CONSOLE_RESIZE = 5
VIRTIO_CONSOLE_PORT_OPEN = 6
VIRTIO_CONSOLE_PORT_NAME = 7

CONTROL_RX = 2
CONTROL_TX = 3

_CONTROL = struct.Struct("<IHH")
_RX_PEEK_LIMIT = 4096
_PORT_CHARDEVS: weakref.WeakSet[Chardev] = weakref.WeakSet()
"""Chardevs already fronted by a port (a chardev has one frontend)."""
_TX_CHUNK = 64 * 1024


def rx_queue(nr: int) -> int:
    return 0 if nr == 0 else 2 * (nr + 1)


@register_type("virtserialport", "device", description="virtio serial port")
class VirtSerialPort(Device):
    """A port of a virtio-serial-device, fronting chardev ``chardev``."""

    user_creatable = True
    bus_type = "virtio-serial-bus"
    category = "Input devices"
    is_console = False

    chardev = Property(str, "", "ID of a chardev to use as a backend")
    nr = Property(int, -1, "port number (-1: first free)")
    name = Property(str, "", "port name shown to the guest")

    def __init__(self, backend: Chardev | None = None,
                 emit: Callable[[str, dict[str, Any]], None] | None = None,
                 **props: object) -> None:
        self.set_properties(props)
        self.backend = backend
        self.serial: VirtioSerial | None = None
        self.id = ""
        """The ``-device`` id: ``VSERPORT_CHANGE`` names the port by it."""
        self._emit = emit

    def set_guest_connected(self, connected: bool) -> None:
        """The guest opened or closed the port (or the device was reset while it was open):
        QMP hears of it as ``VSERPORT_CHANGE`` when the port has an id, as QEMU's
        virtio-console.c ``set_guest_connected``."""
        if self.id and self._emit is not None:
            self._emit("VSERPORT_CHANGE", {"id": self.id, "open": connected})

    @classmethod
    def backends(cls, system: Any, props: Mapping[str, str]) -> dict[str, Any]:
        emit = getattr(system, "emit", None)
        chardev_id = props.get("chardev")
        if not chardev_id:
            return {"emit": emit}
        chardev = getattr(system, "chardevs", {}).get(chardev_id)
        if chardev is None:
            raise ConfigError(f"Property '{cls.type_name}.chardev' can't find value "
                              f"'{chardev_id}'")
        if chardev in _PORT_CHARDEVS:
            raise ConfigError(f"Property '{cls.type_name}.chardev' can't take value "
                              f"'{chardev_id}': Device '{chardev_id}' is in use")
        _PORT_CHARDEVS.add(chardev)
        lock = getattr(system, "lock", None)
        if lock is not None:
            chardev.frontend_lock = lock  # input reaches the device under the big lock
        return {"backend": chardev, "emit": emit}


@register_type("virtconsole", "virtserialport", description="virtio console port")
class VirtConsole(VirtSerialPort):
    is_console = True


@dataclass
class VirtioSerialState:
    control_pending: list[bytes] = field(default_factory=list)
    """Control messages for the driver waiting for a control receive buffer."""
    guest_connected: list[int] = field(default_factory=list)
    """Ports the guest has open (PORT_OPEN 1)."""
    ports_ready: list[int] = field(default_factory=list)
    """Ports the driver has set up (PORT_READY 1): host open/close events go to these."""


MAX_PENDING_INPUT = 1 << 20
"""Bytes of a port's buffered input a state carries at most."""
CONTROL_PENDING_PER_PORT = 8
"""Control messages kept per port for a driver that has posted no control buffer yet (a
handshake needs a handful)."""


@register_type("virtio-serial-device", "virtio-device", description="virtio serial bus")
class VirtioSerial(VirtioDevice):
    category = "Input devices"
    device_id = VIRTIO_ID_CONSOLE

    max_ports = Property(int, 31, "maximum number of ports", name="max_ports")
    emergency_write = Property(bool, True, "emergency write (EMERG_WRITE feature)",
                               name="emergency-write")

    def __init__(self, **props: object) -> None:
        super().__init__()
        self.set_properties(props)
        if self.max_ports < 1:
            raise ConfigError("Maximum number of serial ports not specified")
        if self.max_ports > 511:
            raise ConfigError("maximum ports supported: 511")
        self.queue_sizes = (128, 128, 32, 32) + (128, 128) * (self.max_ports - 1)
        self.ports: dict[int, VirtSerialPort] = {}
        self.state = VirtioSerialState()

    # -- ports ----------------------------------------------------------------------------------

    def add_port(self, port: VirtSerialPort) -> None:
        """Attach a ``virtconsole``/``virtserialport`` (QEMU's port numbering)."""
        nr = port.nr
        if nr < 0:
            if port.is_console and 0 not in self.ports:
                nr = 0
            else:  # the first free id; when full, one past the last (reported below)
                nr = next(n for n in range(1, self.max_ports + 1) if n not in self.ports)
        elif nr == 0 and not port.is_console:
            raise ConfigError("Port number 0 on virtio-serial devices reserved for "
                              "virtconsole devices for backward compatibility.")
        if nr in self.ports:
            raise ConfigError(f"virtio-serial-bus: A port already exists at id {nr}")
        if nr >= self.max_ports:
            raise ConfigError(f"virtio-serial-bus: Out-of-range port id specified, max. "
                              f"allowed: {self.max_ports - 1}")
        port.nr = nr
        port.serial = self
        self.ports[nr] = port
        if port.backend is not None:
            port.backend.set_handlers(functools.partial(self._receive, nr),
                                      functools.partial(self._can_receive, nr),
                                      functools.partial(self._chardev_event, nr))

    def _chardev_event(self, nr: int, event: str) -> None:
        """The host side of port ``nr`` connected or went away (socket, pty)."""
        if nr in self.state.ports_ready and event in (CHR_EVENT_OPENED, CHR_EVENT_CLOSED):
            self._send_control(nr, VIRTIO_CONSOLE_PORT_OPEN, int(event == CHR_EVENT_OPENED))

    # -- virtio ---------------------------------------------------------------------------------

    def host_features(self) -> int:
        features = 1 << VIRTIO_CONSOLE_F_MULTIPORT
        if self.emergency_write:
            features |= 1 << VIRTIO_CONSOLE_F_EMERG_WRITE
        return features

    def config(self) -> bytes:
        # cols u16, rows u16, max_nr_ports u32, emerg_wr u32
        return struct.pack("<HHII", 0, 0, self.max_ports, 0)

    def write_config(self, offset: int, data: bytes) -> None:
        if offset == 8 and self.emergency_write:
            port = self.ports.get(0)
            if port is not None and port.backend is not None:
                port.backend.write(data[:1])

    def reset(self) -> None:
        super().reset()
        was_open = self.state.guest_connected
        self.state = VirtioSerialState()
        for nr in was_open:  # QEMU's guest_reset: the guest's side of each port is closed
            port = self.ports.get(nr)
            if port is not None:
                port.set_guest_connected(False)

    # -- snapshots ------------------------------------------------------------------------------

    def device_state(self) -> dict[str, Any]:
        s = self.state
        return {"control_pending": list(s.control_pending),
                "guest_connected": list(s.guest_connected), "ports_ready": list(s.ports_ready),
                "host_connected": sorted(nr for nr, port in self.ports.items()
                                         if port.backend is not None and port.backend.connected),
                "ports": sorted(self.ports),
                "input": {str(nr): _pending_input(port) for nr, port in sorted(self.ports.items())
                          if _pending_input(port)}}

    def prepare_device_state(self, r: StateReader) -> Applier:
        ports = r.ints("ports", self.max_ports, 0, self.max_ports - 1)
        if ports != sorted(self.ports):
            raise r.fail("ports", f"{ports}, this device has ports {sorted(self.ports)}")
        limit = CONTROL_PENDING_PER_PORT * (self.max_ports + 1)
        pending = r.items("control_pending", limit)
        for i, message in enumerate(pending):
            if not isinstance(message, bytes) or not _CONTROL.size <= len(message) <= 1 << 16:
                raise r.fail(f"control_pending[{i}]", "expected a control message")
        lists = {}
        for key in ("guest_connected", "ports_ready", "host_connected"):
            nrs = r.ints(key, self.max_ports, 0, self.max_ports - 1)
            if len(set(nrs)) != len(nrs) or not set(nrs) <= set(self.ports):
                raise r.fail(key, f"{nrs} names a port twice or a port that does not exist")
            lists[key] = nrs

        saved_input = r.reader("input")
        typed: dict[int, bytes] = {}
        for key in saved_input.state:
            if not key.isdigit() or int(key) not in self.ports:
                raise saved_input.fail(key, "no such port")
            typed[int(key)] = saved_input.blob(key, max_size=MAX_PENDING_INPUT)

        def apply() -> None:
            for nr, data in typed.items():
                backend = self.ports[nr].backend
                if backend is not None:  # taken when the guest next has room, as before
                    backend._pending = data + backend._pending
            self.state = VirtioSerialState(control_pending=list(pending),
                                           guest_connected=lists["guest_connected"],
                                           ports_ready=lists["ports_ready"])
            for nr, port in self.ports.items():
                if nr in self.state.guest_connected:  # QEMU's post_load
                    port.set_guest_connected(True)
                # A back-end that connected or went away since: the driver hears of it
                # with the next control message it takes (guest memory is not touched here).
                connected = port.backend is not None and port.backend.connected
                if nr in self.state.ports_ready and \
                        connected != (nr in lists["host_connected"]):
                    self.state.control_pending.append(
                        _CONTROL.pack(nr, VIRTIO_CONSOLE_PORT_OPEN, int(connected)))
        return apply

    def driver_ok(self) -> None:
        # A driver without MULTIPORT cannot say that it opened port 0: it is open once the
        # driver is up (QEMU's set_status).
        if not self.guest_features & (1 << VIRTIO_CONSOLE_F_MULTIPORT) and 0 in self.ports \
                and 0 not in self.state.guest_connected:
            self.state.guest_connected.append(0)

    def handle_queue(self, index: int) -> None:
        if self.state.control_pending and index != CONTROL_RX:
            self._flush_control()
        if index == CONTROL_TX:
            self._handle_control(self.queues[index])
        elif index == CONTROL_RX:
            self._flush_control()
        elif index % 2 == 0:
            port = self._port_of_queue(index)
            if port is not None and port.backend is not None:
                port.backend.accept_input()
        else:
            self._transmit(index)

    def _port_of_queue(self, index: int) -> VirtSerialPort | None:
        nr = 0 if index < 2 else index // 2 - 1
        return self.ports.get(nr)

    def _transmit(self, index: int) -> None:
        vq = self.queues[index]
        port = self._port_of_queue(index)
        used = False
        while (elem := vq.pop()) is not None:
            if port is not None and port.backend is not None:
                for view in vq.views(elem.out):
                    for start in range(0, len(view), _TX_CHUNK):
                        port.backend.write(bytes(view[start:start + _TX_CHUNK]))
            vq.push(elem, 0)
            used = True
        if used:
            self.notify(index)

    # -- receive --------------------------------------------------------------------------------

    def _guest_open(self, nr: int) -> bool:
        return nr in self.state.guest_connected

    def _can_receive(self, nr: int) -> int:
        """Space in the receive buffers the guest has posted (looked at, not consumed)."""
        if self.broken or not self._guest_open(nr):
            return 0
        vq = self.queues[rx_queue(nr)]
        start = vq.state.last_avail_idx
        room = 0
        try:
            while room < _RX_PEEK_LIMIT and (elem := vq.pop()) is not None:
                room += elem.in_size
        except VirtqueueError as exc:
            self.virtio_error(f"port {nr} receive queue: {exc}")
            room = 0
        vq.state.last_avail_idx = start
        return room

    def _receive(self, nr: int, data: bytes) -> None:
        vq = self.queues[rx_queue(nr)]
        used = False
        try:
            while data and (elem := vq.pop()) is not None:
                written = vq.write_in(elem, data)
                vq.push(elem, written)
                data = data[written:]
                used = True
        except VirtqueueError as exc:
            self.virtio_error(f"port {nr} receive queue: {exc}")
            return
        if data:
            log.guest_error(f"virtio-serial: port {nr} dropped {len(data)} input bytes")
        if used:
            self.notify(rx_queue(nr))

    # -- control --------------------------------------------------------------------------------

    def _send_control(self, port_id: int, event: int, value: int, extra: bytes = b"") -> None:
        """Queue a control message until the driver posts a buffer for it.  A driver that
        keeps asking without posting any (QEMU drops the message then) cannot make the
        queue grow without bound: past a few messages per port the new ones are dropped."""
        pending = self.state.control_pending
        if len(pending) >= CONTROL_PENDING_PER_PORT * (self.max_ports + 1):
            log.guest_error(f"virtio-serial: control message {event} for port {port_id} "
                            "dropped: the driver posts no control receive buffers")
            return
        pending.append(_CONTROL.pack(port_id, event, value) + extra)
        self._flush_control()

    def _flush_control(self) -> None:
        if not self.queues:
            return
        vq = self.queues[CONTROL_RX]
        pending = self.state.control_pending
        sent = False
        while pending and vq.usable and vq.state.ready:
            elem = vq.pop()
            if elem is None:
                break
            message = pending.pop(0)
            vq.push(elem, vq.write_in(elem, message))
            sent = True
        if sent:
            self.notify(CONTROL_RX)

    def _handle_control(self, vq: Virtqueue) -> None:
        used = False
        while (elem := vq.pop()) is not None:
            self._control_message(elem, vq.read_out(elem, _CONTROL.size))
            vq.push(elem, 0)
            used = True
        if used:
            self.notify(CONTROL_TX)

    def _control_message(self, elem: VirtqElement, data: bytes) -> None:
        if len(data) < _CONTROL.size:
            log.guest_error("virtio-serial: short control message")
            return
        port_id, event, value = _CONTROL.unpack(data)
        if event == VIRTIO_CONSOLE_DEVICE_READY:
            if not value:
                log.guest_error("virtio-serial: guest failed to initialise the device")
                return
            for nr in sorted(self.ports):
                self._send_control(nr, VIRTIO_CONSOLE_PORT_ADD, 1)
            return
        port = self.ports.get(port_id)
        if port is None:
            log.guest_error(f"virtio-serial: control message for unknown port {port_id}")
            return
        if event == VIRTIO_CONSOLE_PORT_READY:
            if not value:
                log.guest_error(f"virtio-serial: guest could not add port {port_id}")
                return
            if port.is_console:
                self._send_control(port_id, VIRTIO_CONSOLE_CONSOLE_PORT, 1)
            if port.name:
                self._send_control(port_id, VIRTIO_CONSOLE_PORT_NAME, 1,
                                   port.name.encode() + b"\0")
            if port_id not in self.state.ports_ready:
                self.state.ports_ready.append(port_id)
            if port.backend is not None and port.backend.connected:
                self._send_control(port_id, VIRTIO_CONSOLE_PORT_OPEN, 1)
        elif event == VIRTIO_CONSOLE_PORT_OPEN:
            connected = self.state.guest_connected
            if value and port_id not in connected:
                connected.append(port_id)
            elif not value and port_id in connected:
                connected.remove(port_id)
            port.set_guest_connected(bool(value))  # every message, as QEMU
            if value and port.backend is not None:
                port.backend.accept_input()


def _pending_input(port: VirtSerialPort) -> bytes:
    """Input the port's chardev holds for a guest that had no room for it yet."""
    return bytes(getattr(port.backend, "_pending", b""))[:MAX_PENDING_INPUT]


def serial_buses(device: object, dev_id: str) -> list[Bus]:
    """The ``virtio-serial-bus`` a new device carries, if it is (or carries) a
    virtio-serial device: ``ID.0`` when the device has an id (QEMU's bus naming)."""
    serial = device if isinstance(device, VirtioSerial) else getattr(device, "device", None)
    if not isinstance(serial, VirtioSerial):
        return []
    name = f"{dev_id}.0" if dev_id else "virtio-serial-bus.0"
    return [Bus(name, "virtio-serial-bus", "virtio-serial-bus", plug=serial.add_port)]
