"""``-netdev stream``, ``dgram`` and ``socket`` on loopback and UNIX sockets, on a real asyncio
main loop: frames cross between two back-ends as they would between two VMs, a server takes
the next peer after one leaves, a full NIC pauses reading without losing frames, and a peer
that sends garbage loses its connection, not the VMM."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kvmpy.errors import ConfigError, NotBuiltError
from kvmpy.net.base import NetBackend
from kvmpy.net.stream import DgramNetdev, SocketNetdev, StreamNetdev


class Nic:
    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.room = True

    def receive(self, frame: bytes) -> bool:
        if not self.room:
            return False
        self.frames.append(frame)
        return True


class LoopSystem:
    """The parts of System a back-end uses, on a real asyncio loop in a thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.lock = threading.RLock()
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the loop and wait for it."""
        done: list[Any] = []
        event = threading.Event()

        def call() -> None:
            done.append(fn())
            event.set()

        self.loop.call_soon_threadsafe(call)
        assert event.wait(5)
        return done[0]

    def add_reader(self, fd: int, cb: Callable[[], None]) -> None:
        self.loop.add_reader(fd, cb)

    def remove_reader(self, fd: int) -> None:
        self.loop.remove_reader(fd)

    def call_soon(self, fn: Callable[[], None]) -> None:
        self.loop.call_soon_threadsafe(fn)

    def emit(self, event: str, data: dict[str, Any]) -> None:
        self.events.append((event, data))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


@pytest.fixture
def system() -> Iterator[LoopSystem]:
    s = LoopSystem()
    yield s
    s.stop()


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        deadline.wait(0.01)
    raise AssertionError("timed out")


def started(system: LoopSystem, backend: NetBackend) -> Nic:
    nic = Nic()
    backend.attach(nic, "nic")
    system.run(lambda: backend.start(system))
    return nic


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def frame(n: int, size: int = 60) -> bytes:
    return bytes([n]) * size


def test_stream_pair_over_tcp(system: LoopSystem) -> None:
    port = free_port()
    server = StreamNetdev("s", {"addr.type": "inet", "addr.host": "127.0.0.1",
                                "addr.port": str(port), "server": "on"})
    server_nic = started(system, server)
    client = StreamNetdev("c", {"addr.type": "inet", "addr.host": "127.0.0.1",
                                "addr.port": str(port)})
    client_nic = started(system, client)
    wait_for(lambda: server.conn is not None)
    assert server.info().startswith("tcp:127.0.0.1:")
    assert client.info() == f"tcp:127.0.0.1:{port}"
    client.transmit(frame(1))
    client.transmit(frame(2, 1500))
    server.transmit(frame(3))
    wait_for(lambda: len(server_nic.frames) == 2 and len(client_nic.frames) == 1)
    assert server_nic.frames == [frame(1), frame(2, 1500)]
    assert client_nic.frames == [frame(3)]
    assert [e for e, _ in system.events] == ["NETDEV_STREAM_CONNECTED"] * 2
    # The client leaves: the server waits for the next one.
    system.run(client.close)
    wait_for(lambda: server.conn is None)
    assert system.events[-1] == ("NETDEV_STREAM_DISCONNECTED", {"netdev-id": "s"})
    server.transmit(frame(4))  # nobody there: dropped, nothing breaks
    again = StreamNetdev("c2", {"addr.type": "inet", "addr.host": "127.0.0.1",
                                "addr.port": str(port)})
    again_nic = started(system, again)
    wait_for(lambda: server.conn is not None)
    server.transmit(frame(5))
    wait_for(lambda: again_nic.frames == [frame(5)])
    system.run(again.close)
    system.run(server.close)


def test_stream_over_unix_and_a_full_nic(system: LoopSystem, tmp_path: Path) -> None:
    path = str(tmp_path / "net.sock")
    server = StreamNetdev("s", {"addr.type": "unix", "addr.path": path, "server": "on"})
    server_nic = started(system, server)
    peer = socket.socket(socket.AF_UNIX)
    peer.connect(path)
    wait_for(lambda: server.conn is not None)
    assert server.info() == f"unix:{path}"
    server_nic.room = False
    peer.sendall(b"".join(struct.pack(">I", 60) + frame(n) for n in range(1, 6)))
    threading.Event().wait(0.2)
    assert server_nic.frames == []
    server_nic.room = True
    server.nic_ready()
    wait_for(lambda: len(server_nic.frames) == 5)
    assert server_nic.frames == [frame(n) for n in range(1, 6)]
    # A length beyond any frame ends the connection, not the back-end.
    peer.sendall(struct.pack(">I", 1 << 30))
    wait_for(lambda: server.conn is None)
    peer.close()
    system.run(server.close)


def test_dgram_pair_and_socket_udp(system: LoopSystem) -> None:
    pa, pb = free_port(), free_port()
    a = DgramNetdev("a", {"local.type": "inet", "local.host": "127.0.0.1",
                          "local.port": str(pa), "remote.type": "inet",
                          "remote.host": "127.0.0.1", "remote.port": str(pb)})
    b = SocketNetdev("b", {"udp": f"127.0.0.1:{pa}", "localaddr": f"127.0.0.1:{pb}"})
    a_nic, b_nic = started(system, a), started(system, b)
    assert a.info() == f"udp=127.0.0.1:{pa}/127.0.0.1:{pb}"
    assert b.info() == f"socket: udp=127.0.0.1:{pb}/127.0.0.1:{pa}"
    a.transmit(frame(7))
    b.transmit(frame(8))
    wait_for(lambda: b_nic.frames == [frame(7)] and a_nic.frames == [frame(8)])
    system.run(a.close)
    system.run(b.close)


def test_socket_listen_and_connect(system: LoopSystem) -> None:
    port = free_port()
    listener = SocketNetdev("l", {"listen": f"127.0.0.1:{port}"})
    l_nic = started(system, listener)
    assert listener.info() == "socket: wait"
    connector = SocketNetdev("c", {"connect": f"127.0.0.1:{port}"})
    started(system, connector)
    wait_for(lambda: listener.conn is not None)
    connector.transmit(frame(9))
    wait_for(lambda: l_nic.frames == [frame(9)])
    assert listener.info().startswith("socket: connection from 127.0.0.1:")
    system.run(connector.close)
    system.run(listener.close)


def test_a_stream_client_without_a_server_waits_unconnected(system: LoopSystem) -> None:
    port = free_port()
    client = StreamNetdev("c", {"addr.type": "inet", "addr.host": "127.0.0.1",
                                "addr.port": str(port)})
    started(system, client)
    assert client.info() == "connection error"
    client.transmit(frame(1))  # dropped
    system.run(client.close)


@pytest.mark.parametrize(("cls", "props", "message"), [
    (StreamNetdev, {}, "Parameter 'addr' is missing"),
    (StreamNetdev, {"addr.host": "x"}, "Parameter 'addr.type' is missing"),
    (StreamNetdev, {"addr.type": "inet", "addr.host": "127.0.0.1"},
     "Parameter 'addr.port' is missing"),
    (StreamNetdev, {"addr.type": "vsock"}, "Parameter 'addr.type' does not accept value"),
    (StreamNetdev, {"addr.type": "unix", "addr.path": "/x", "foo": "1"},
     "Invalid parameter 'foo'"),
    (DgramNetdev, {"remote.type": "inet", "remote.host": "127.0.0.1", "remote.port": "9"},
     "dgram requires local= parameter"),
    (DgramNetdev, {"local.type": "inet", "local.host": "127.0.0.1", "local.port": "9"},
     "type=inet or type=unix requires remote parameter"),
    (SocketNetdev, {}, "exactly one of"),
    (SocketNetdev, {"connect": "127.0.0.1:1"}, "can't connect socket: Connection refused"),
    (SocketNetdev, {"connect": "nocolon"}, "doesn't contain ':'"),
])
def test_configuration_errors(cls: type[NetBackend], props: dict[str, str],
                              message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        cls("n", props)


def test_port_in_use_is_one_line(system: LoopSystem) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match="Failed to bind socket: Address already in use"):
            StreamNetdev("s", {"addr.type": "inet", "addr.host": "127.0.0.1",
                               "addr.port": str(port), "server": "on"})


def test_multicast_is_not_built() -> None:
    with pytest.raises(NotBuiltError):
        SocketNetdev("m", {"mcast": "230.0.0.1:1234"})
