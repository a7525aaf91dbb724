"""The socket backend with real clients and servers: unix and TCP, server and client mode."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvmpy import qom
from kvmpy.chardev import CHR_EVENT_CLOSED, CHR_EVENT_OPENED, SocketChardev
from kvmpy.errors import ConfigError


def recv_exactly(sock: socket.socket, size: int, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


class AsyncioHost:
    """A chardev host on a real asyncio loop, which the test runs in small steps."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def add_reader(self, fd: int, callback: Any) -> None:
        self.loop.add_reader(fd, callback)

    def remove_reader(self, fd: int) -> None:
        self.loop.remove_reader(fd)

    def run_for(self, seconds: float) -> None:
        self.loop.run_until_complete(asyncio.sleep(seconds))


@pytest.fixture
def aio_host() -> Iterator[AsyncioHost]:
    host = AsyncioHost()
    yield host
    host.loop.close()


def server(props: dict[str, str]) -> SocketChardev:
    chardev: SocketChardev = qom.object_new("chardev-socket", {"id": "s", "server": "on",
                                                               "wait": "off", **props})
    chardev.open()
    return chardev


def test_unix_server_serves_clients_one_after_another(tmp_path: Path, host: Any,
                                                      frontend: Any) -> None:
    path = str(tmp_path / "console.sock")
    chardev = server({"path": path})
    chardev.set_handlers(frontend.receive, frontend.can_receive, frontend.event)
    chardev.attach_loop(host)
    assert not chardev.connected
    assert chardev.filename == f"disconnected:unix:{path},server=on"
    assert chardev.write(b"nobody listens") == len(b"nobody listens")  # dropped
    for round_ in range(3):
        client = socket.socket(socket.AF_UNIX)
        client.connect(path)
        host.run_until(lambda: chardev.connected)
        assert frontend.events[-1] == CHR_EVENT_OPENED
        client.sendall(f"hello {round_}".encode())
        host.run_until(lambda r=round_: frontend.data.endswith(f"hello {r}".encode()))
        chardev.write(b"from guest")
        assert recv_exactly(client, 10) == b"from guest"
        client.close()
        host.run_until(lambda: not chardev.connected)
        assert frontend.events[-1] == CHR_EVENT_CLOSED
    assert frontend.events == [CHR_EVENT_OPENED, CHR_EVENT_CLOSED] * 3
    chardev.close()
    assert not Path(path).exists()


def test_second_client_waits_until_the_first_leaves(tmp_path: Path, host: Any,
                                                    frontend: Any) -> None:
    path = str(tmp_path / "s.sock")
    chardev = server({"path": path})
    chardev.set_handlers(frontend.receive, frontend.can_receive, frontend.event)
    chardev.attach_loop(host)
    first = socket.socket(socket.AF_UNIX)
    first.connect(path)
    host.run_until(lambda: chardev.connected)
    second = socket.socket(socket.AF_UNIX)
    second.connect(path)  # queued in the backlog
    second.sendall(b"queued")
    for _ in range(5):
        host.poll()
    assert frontend.data == b""
    first.close()
    host.run_until(lambda: frontend.data == b"queued")
    assert frontend.events == [CHR_EVENT_OPENED, CHR_EVENT_CLOSED, CHR_EVENT_OPENED]
    second.close()
    chardev.close()


def test_tcp_server_on_any_free_port(host: Any, frontend: Any) -> None:
    chardev = server({"host": "127.0.0.1", "port": "0", "nodelay": "on"})
    assert isinstance(chardev.address, tuple)
    port = chardev.address[1]
    assert port > 0
    chardev.set_handlers(frontend.receive, frontend.can_receive, frontend.event)
    chardev.attach_loop(host)
    client = socket.create_connection(("127.0.0.1", port))
    client.sendall(b"tcp in")
    host.run_until(lambda: frontend.data == b"tcp in")
    assert chardev.filename.startswith(f"tcp:127.0.0.1:{port},server=on <-> 127.0.0.1:")
    chardev.write(b"tcp out")
    assert recv_exactly(client, 7) == b"tcp out"
    client.close()
    chardev.close()


def test_wait_on_blocks_until_a_client_connects(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "w.sock")
    clients: list[socket.socket] = []

    def connect_later() -> None:
        for _ in range(100):
            try:
                sock = socket.socket(socket.AF_UNIX)
                sock.connect(path)
                clients.append(sock)
                return
            except OSError:
                time.sleep(0.05)

    thread = threading.Thread(target=connect_later)
    thread.start()
    chardev: SocketChardev = qom.object_new("chardev-socket",
                                            {"id": "w", "path": path, "server": "on"})
    chardev.option = f"-serial unix:{path},server=on"
    chardev.open()  # returns only once the client is there
    thread.join()
    assert chardev.connected
    assert capsys.readouterr().err == (
        f"kvmpy: -serial unix:{path},server=on: info: kvmpy waiting for connection on: "
        f"disconnected:unix:{path},server=on\n")
    clients[0].close()
    chardev.close()


def test_client_mode(tmp_path: Path, host: Any, frontend: Any) -> None:
    path = str(tmp_path / "peer.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)
    chardev: SocketChardev = qom.object_new("chardev-socket", {"id": "c", "path": path})
    chardev.open()
    peer, _ = listener.accept()
    chardev.set_handlers(frontend.receive, frontend.can_receive, frontend.event)
    assert chardev.connected  # connected before the frontend came: no event, the state says
    chardev.attach_loop(host)
    peer.sendall(b"to client")
    host.run_until(lambda: frontend.data == b"to client")
    chardev.write(b"from client")
    assert recv_exactly(peer, 11) == b"from client"
    peer.close()
    host.run_until(lambda: not chardev.connected)
    assert frontend.events == [CHR_EVENT_CLOSED]
    chardev.close()
    listener.close()


def test_inherited_connected_fd(host: Any, frontend: Any) -> None:
    ours, theirs = socket.socketpair()
    chardev: SocketChardev = qom.object_new("chardev-socket",
                                            {"id": "mon", "fd": str(ours.detach())})
    chardev.open()
    chardev.set_handlers(frontend.receive, frontend.can_receive, frontend.event)
    chardev.attach_loop(host)
    theirs.sendall(b'{"execute": "qmp_capabilities"}')
    host.run_until(lambda: frontend.data.endswith(b"}"))
    chardev.write(b"{}")
    assert recv_exactly(theirs, 2) == b"{}"
    theirs.close()
    chardev.close()


@pytest.mark.parametrize(("props", "message"), [
    ({"path": "/nonexistent/x.sock"}, "Failed to connect to '/nonexistent/x.sock': No such "
                                      "file or directory"),
    ({"path": "/x/" + "p" * 120}, "UNIX socket path '/x/" + "p" * 120 + "' is too long"),
    ({}, "Unable to parse FD number "),
    ({"host": "localhost", "port": "x", "server": "on", "wait": "off"},
     "address resolution failed for localhost:x: Servname not supported for ai_socktype"),
    ({"path": "/nonexistent/dir/s.sock", "server": "on", "wait": "off"},
     "Failed to bind socket to /nonexistent/dir/s.sock: No such file or directory"),
    ({"fd": "x"}, "Unable to parse FD number x"),
])
def test_socket_errors(props: dict[str, str], message: str) -> None:
    chardev = qom.object_new("chardev-socket", {"id": "s", **props})
    with pytest.raises(ConfigError) as info:
        chardev.open()
    assert str(info.value) == message


def test_tcp_client_refused() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    chardev = qom.object_new("chardev-socket", {"id": "s", "host": "127.0.0.1",
                                                "port": str(port)})
    with pytest.raises(ConfigError, match=f"Failed to connect to '127.0.0.1:{port}': "
                                          "Connection refused"):
        chardev.open()


def test_unix_server_replaces_a_stale_socket_but_not_a_file(tmp_path: Path) -> None:
    stale = tmp_path / "stale.sock"
    old = socket.socket(socket.AF_UNIX)
    old.bind(str(stale))
    old.close()
    server({"path": str(stale)}).close()
    regular = tmp_path / "regular"
    regular.write_text("keep me")
    with pytest.raises(ConfigError, match="Failed to bind socket"):
        server({"path": str(regular)})
    assert regular.read_text() == "keep me"


def test_client_reconnects(tmp_path: Path, frontend: Any, aio_host: AsyncioHost) -> None:
    """``reconnect=1``: a client that starts before its server, and comes back after a drop."""
    path = str(tmp_path / "later.sock")

    def run_until(condition: Any, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "condition not reached in time"
            aio_host.run_for(0.05)

    chardev: SocketChardev = qom.object_new("chardev-socket",
                                            {"id": "c", "path": path, "reconnect": "1"})
    chardev.open()  # no server yet: not an error with reconnect
    assert not chardev.connected
    chardev.set_handlers(frontend.receive, frontend.can_receive, frontend.event)
    chardev.attach_loop(aio_host)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)
    listener.settimeout(10)
    try:
        run_until(lambda: chardev.connected)
        peer, _ = listener.accept()
        peer.close()
        run_until(lambda: CHR_EVENT_CLOSED in frontend.events)
        run_until(lambda: chardev.connected)
        peer, _ = listener.accept()
        peer.sendall(b"again")
        run_until(lambda: frontend.data == b"again")
        assert frontend.events == [CHR_EVENT_OPENED, CHR_EVENT_CLOSED, CHR_EVENT_OPENED]
        peer.close()
    finally:
        chardev.close()
        listener.close()


def test_a_peer_that_stops_reading_never_blocks_the_writer(tmp_path: Path, frontend: Any,
                                                            aio_host: AsyncioHost) -> None:
    """Output the peer does not take is buffered and sent when it reads again, in order;
    every write returns at once (a QMP client that stops reading must not freeze kvmpy)."""
    path = str(tmp_path / "qmp.sock")
    chardev = server({"path": path})
    chardev.set_handlers(frontend.receive, frontend.can_receive, frontend.event)
    chardev.attach_loop(aio_host)
    client = socket.socket(socket.AF_UNIX)
    client.connect(path)
    try:
        while not chardev.connected:
            aio_host.run_for(0.01)
        chunks = [bytes([i % 251]) * 65536 for i in range(64)]  # 4 MiB, far above the buffer
        slowest = 0.0
        for chunk in chunks:
            start = time.monotonic()
            assert chardev.write(chunk) == len(chunk)
            slowest = max(slowest, time.monotonic() - start)
        assert slowest < 0.5
        expected = b"".join(chunks)
        received = bytearray()
        client.setblocking(False)
        deadline = time.monotonic() + 20
        while len(received) < len(expected):
            assert time.monotonic() < deadline, f"only {len(received)} bytes arrived"
            aio_host.run_for(0.001)
            with contextlib.suppress(BlockingIOError):
                received += client.recv(1 << 20)
        assert bytes(received) == expected
    finally:
        client.close()
        chardev.close()
