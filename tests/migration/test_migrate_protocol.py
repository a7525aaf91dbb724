"""The migration wire format and URIs without a VM: frames round-trip, a stream cut short or
corrupt is told apart from a complete one, bad URIs get QEMU's words."""

from __future__ import annotations

import os
import socket
import struct
import threading

import pytest

from kvmpy.migration.protocol import MAX_FRAME, FramedReader, FramedWriter
from kvmpy.migration.uri import Channel, MigrationError, SocketChannel, parse


class BytesChannel(Channel):
    """A channel over bytes in memory (what was written, or what is to be read)."""

    def __init__(self, data: bytes = b"") -> None:
        self.data = bytearray(data)
        self.pos = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.data += data

    def read(self, size: int) -> bytes:
        chunk = bytes(self.data[self.pos:self.pos + size])
        self.pos += len(chunk)
        return chunk

    def close(self) -> None:
        pass


def written(payload: bytes, runstate: str = "running", complete: bool = True) -> bytes:
    channel = BytesChannel()
    writer = FramedWriter(channel, lambda: 0, threading.Event())
    writer.start()
    writer.write(payload)
    if complete:
        writer.finish({"runstate": runstate})
    else:
        writer.flush()
    assert writer.transferred == len(channel.data)
    return bytes(channel.data)


def read_all(wire: bytes) -> tuple[bytes, FramedReader]:
    reader = FramedReader(BytesChannel(wire))
    reader.start()
    return reader.read(), reader


def test_round_trip_across_frames() -> None:
    payload = os.urandom(3 * MAX_FRAME + 12345)
    data, reader = read_all(written(payload, "paused"))
    assert data == payload
    assert reader.finish() == {"runstate": "paused"}


def test_the_reader_skips_what_the_loader_left() -> None:
    reader = FramedReader(BytesChannel(written(b"x" * 100_000)))
    reader.start()
    assert reader.read(10) == b"x" * 10
    assert reader.finish() == {"runstate": "running"}


def test_a_stream_cut_short_is_not_a_complete_migration() -> None:
    wire = written(os.urandom(200_000), complete=False)
    data, reader = read_all(wire[:-1000])
    assert len(data) < 200_000
    with pytest.raises(MigrationError, match="ended early"):
        reader.finish()


@pytest.mark.parametrize(("wire", "message"), [
    (b"", "the migration stream ended before it began"),
    (b"garbage\n", "not a kvmpy migration stream"),
    (b"KVMPY-MIG", "the migration stream ended before it began"),
    (b"KVMPY-MIGRATION\n" + struct.pack("<I", 99), "migration stream version 99 is newer"),
])
def test_a_stream_that_is_not_one(wire: bytes, message: str) -> None:
    with pytest.raises(MigrationError, match=message):
        FramedReader(BytesChannel(wire)).start()


@pytest.mark.parametrize(("frame", "message"), [
    (struct.pack("<cI", b"D", MAX_FRAME + 1), "a frame of"),
    (struct.pack("<cI", b"Z", 0), "frame b'Z'"),
    (struct.pack("<cI", b"G", 3) + b"[[[", "run state"),
])
def test_a_corrupt_frame_is_refused(frame: bytes, message: str) -> None:
    reader = FramedReader(BytesChannel(written(b"", complete=False)[:20] + frame))
    reader.start()
    with pytest.raises(MigrationError, match=message):
        reader.read()


def test_a_cancelled_writer_stops() -> None:
    cancel = threading.Event()
    writer = FramedWriter(BytesChannel(), lambda: 0, cancel)
    writer.start()
    cancel.set()
    with pytest.raises(MigrationError):
        writer.write(b"x" * (MAX_FRAME + 1))


def test_over_a_socket() -> None:
    left, right = socket.socketpair()
    payload = os.urandom(2 * MAX_FRAME)

    def send() -> None:
        writer = FramedWriter(SocketChannel(left), lambda: 0, threading.Event())
        writer.start()
        writer.write(payload)
        writer.finish({"runstate": "running"})
        left.close()

    thread = threading.Thread(target=send)
    thread.start()
    reader = FramedReader(SocketChannel(right))
    reader.start()
    assert reader.readall() == payload
    assert reader.finish() == {"runstate": "running"}
    thread.join()
    right.close()


@pytest.mark.parametrize(("uri", "message"), [
    ("foo:bar", "Parameter 'uri' expects a valid migration protocol"),
    ("nocolon", "Parameter 'uri' expects a valid migration protocol"),
    ("tcp:127.0.0.1", "error parsing address '127.0.0.1'"),
    ("tcp:host:", "error parsing address 'host:'"),
    ("tcp:[::1", "error parsing IPv6 address '[::1'"),
    ("unix:", "invalid Unix socket address"),
])
def test_bad_uris(uri: str, message: str) -> None:
    with pytest.raises(MigrationError) as info:
        parse(uri)
    assert str(info.value) == message


def test_uris() -> None:
    assert parse("tcp:[::1]:4444").host == "::1"
    assert parse("tcp::4444,to=4450").port == "4444"
    assert parse("exec:cat > f").command == "cat > f"
    assert parse("fd:mig").fd_name == "mig"
    with pytest.raises(MigrationError) as info:
        parse("x:y", incoming=True)
    assert str(info.value) == "unknown migration protocol: x:y"


def test_connect_with_a_descriptor_past_1023() -> None:
    """A long-lived process (a test run, libvirt's many domains) numbers descriptors past
    select()'s limit: connecting to the destination must still work."""
    import resource
    import socket

    from kvmpy.migration.uri import _connect

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"the hard descriptor limit here is {hard}, below 2048")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
    try:
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen(1)
            plain = socket.socket()
            high = os.dup2(plain.fileno(), 1500)
            plain.close()
            with socket.socket(fileno=high) as client:
                _connect(client, server.getsockname(), lambda: False)
                peer, _ = server.accept()
                with peer:
                    client.sendall(b"x")
                    assert peer.recv(1) == b"x"
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
