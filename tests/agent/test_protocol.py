"""The host side of the guest agent protocol against scripted peers: the resynchronisation
qga clients do, and an agent that answers nothing, garbage, other ids or endless lines gives a
clear exception within its timeout, never a hang.  (The real agents are in the other tests.)"""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kvmpy.guest_agent import (
    AgentChardev,
    GuestAgent,
    GuestAgentCommandError,
    GuestAgentError,
    GuestAgentProtocolError,
    GuestAgentTimeout,
    SocketTransport,
    find_agent_socket,
)

Handler = Callable[[dict[str, object], bool], bytes | None]
"""A scripted agent: (request, preceded by 0xFF) -> bytes to send back (None: close)."""


class FakeAgent:
    """A peer on a unix socket that parses the client's requests (dropping 0xFF bytes, as qga
    does) and answers what ``handler`` says."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.handler = handler
        self.received = bytearray()
        self.requests: list[dict[str, object]] = []
        self._server = socket.socket(socket.AF_UNIX)
        self._server.bind(str(path))
        self._server.listen(1)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self._server.accept()
        decoder = json.JSONDecoder()
        pending = ""
        resync = False
        with conn:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                self.received += chunk
                for byte in chunk:
                    if byte == 0xFF:
                        pending, resync = "", True
                        continue
                    pending += chr(byte)
                    try:
                        request, _end = decoder.raw_decode(pending.lstrip())
                    except ValueError:
                        continue
                    pending = ""
                    self.requests.append(request)
                    answer = self.handler(request, resync)
                    resync = False
                    if answer is None:
                        return
                    conn.sendall(answer)

    def close(self) -> None:
        self._server.close()
        self._thread.join(5)


def good_answer(request: dict[str, object], resync: bool) -> bytes:
    """A correct agent: sync-delimited answered after 0xFF, other commands echo their id."""
    args = request.get("arguments") or {}
    assert isinstance(args, dict)
    if request["execute"] == "guest-sync-delimited":
        return b"\xff" + json.dumps({"return": args["id"]}).encode() + b"\n"
    return json.dumps({"return": {}, "id": request.get("id")}).encode() + b"\n"


StartAgent = Callable[..., tuple[GuestAgent, "FakeAgent"]]


@pytest.fixture
def agent_on(tmp_path: Path) -> Iterator[StartAgent]:
    fakes: list[FakeAgent] = []
    clients: list[GuestAgent] = []

    def start(handler: Handler, timeout: float = 1.0,
              max_line: int = 1 << 20) -> tuple[GuestAgent, FakeAgent]:
        path = tmp_path / f"agent{len(fakes)}.sock"
        fakes.append(FakeAgent(path, handler))
        client = GuestAgent(SocketTransport(str(path), connect_timeout=5), timeout=timeout,
                            max_line=max_line)
        clients.append(client)
        return client, fakes[-1]

    yield start
    for client in clients:
        client.close()
    for fake in fakes:
        fake.close()


def test_first_command_resynchronises_with_a_sentinel_byte(agent_on: StartAgent) -> None:
    client, fake = agent_on(good_answer)
    client.ping()
    client.ping()
    assert fake.received[:1] == b"\xff", "0xFF must precede guest-sync-delimited"
    assert [r["execute"] for r in fake.requests] == ["guest-sync-delimited", "guest-ping",
                                                     "guest-ping"]


def test_stale_answers_before_the_sync_answer_are_dropped(agent_on: StartAgent) -> None:
    def stale_first(request: dict[str, object], resync: bool) -> bytes:
        if request["execute"] == "guest-sync-delimited":
            return (b'{"return": {"pid": 7}}\n' b'garbage\n' b'\xff{"return": 1}\n'
                    + b"half a line from before" + good_answer(request, resync))
        # A late answer to an earlier sync, and one to another request, before the right one.
        return (b'\xff{"return": 2}\n' + json.dumps({"return": {"a": 1}, "id": -5}).encode()
                + b"\n" + json.dumps({"return": {"b": 2}, "id": request["id"]}).encode() + b"\n")

    client, _ = agent_on(stale_first)
    assert client.info() == {"b": 2}


def test_an_error_answer_raises_with_its_class_and_text(agent_on: StartAgent) -> None:
    def error(request: dict[str, object], resync: bool) -> bytes:
        if request["execute"] == "guest-file-open":
            return json.dumps({"error": {"class": "GenericError",
                                         "desc": "failed to open file '/x' (mode: 'r'): "
                                                 "No such file or directory"},
                               "id": request["id"]}).encode() + b"\n"
        return good_answer(request, resync)

    client, _ = agent_on(error)
    with pytest.raises(GuestAgentCommandError) as info:
        client.read_file("/x")
    assert info.value.error_class == "GenericError"
    assert "No such file or directory" in info.value.desc


def test_a_silent_agent_times_out(agent_on: StartAgent) -> None:
    client, _ = agent_on(lambda request, resync: b"")
    with pytest.raises(GuestAgentTimeout, match="guest-sync-delimited"):
        client.ping()
    with pytest.raises(GuestAgentTimeout, match=r"did not answer within 0\.5 s"):
        client.wait_ready(timeout=0.5)


def test_an_agent_answering_only_other_ids_times_out(agent_on: StartAgent) -> None:
    def wrong_ids(request: dict[str, object], resync: bool) -> bytes:
        if request["execute"] == "guest-sync-delimited":
            return b"\xff" + json.dumps({"return": 12345}).encode() + b"\n"
        return json.dumps({"return": {}, "id": -1}).encode() + b"\n"

    client, _ = agent_on(wrong_ids)
    with pytest.raises(GuestAgentTimeout):
        client.ping()

    def wrong_command_ids(request: dict[str, object], resync: bool) -> bytes:
        if request["execute"] == "guest-sync-delimited":
            return good_answer(request, resync)
        return json.dumps({"return": {}, "id": -1}).encode() * 3 + b"\n"

    client, _ = agent_on(wrong_command_ids)
    with pytest.raises(GuestAgentProtocolError):  # three objects on one line: not a response
        client.ping()


def test_garbage_and_endless_lines_are_protocol_errors(agent_on: StartAgent) -> None:
    def garbage(request: dict[str, object], resync: bool) -> bytes:
        if request["execute"] == "guest-sync-delimited":
            return good_answer(request, resync)
        return b"\x00\x01 this is not json\n"

    client, fake = agent_on(garbage)
    with pytest.raises(GuestAgentProtocolError, match="not a qga response"):
        client.ping()
    # The next command resynchronises first.
    with pytest.raises(GuestAgentProtocolError):
        client.ping()
    assert [r["execute"] for r in fake.requests] == ["guest-sync-delimited", "guest-ping"] * 2

    def endless(request: dict[str, object], resync: bool) -> bytes:
        if request["execute"] == "guest-sync-delimited":
            return good_answer(request, resync)
        return b"x" * 100_000

    client, _ = agent_on(endless, max_line=10_000)
    with pytest.raises(GuestAgentProtocolError, match="longer than 10000 bytes"):
        client.ping()


def test_a_closed_channel_is_an_error_not_a_hang(agent_on: StartAgent) -> None:
    def close_on_ping(request: dict[str, object], resync: bool) -> bytes | None:
        if request["execute"] == "guest-ping":
            return None
        return good_answer(request, resync)

    client, _ = agent_on(close_on_ping, timeout=10)
    with pytest.raises(GuestAgentError, match="closed"):
        client.ping()


def test_exec_maps_signals_to_negative_return_codes(agent_on: StartAgent) -> None:
    polls = []

    def exec_agent(request: dict[str, object], resync: bool) -> bytes:
        name = request["execute"]
        if name == "guest-exec":
            args = request["arguments"]
            assert isinstance(args, dict)
            assert args["path"] == "sleep" and args["arg"] == ["5"]
            assert base64.b64decode(str(args["input-data"])) == b"in"
            assert args["env"] == ["A=1"]
            value: object = {"pid": 42}
        elif name == "guest-exec-status":
            polls.append(1)
            value = {"exited": len(polls) > 2, "signal": 9,
                     "err-data": base64.b64encode(b"killed").decode()}
        else:
            return good_answer(request, resync)
        return json.dumps({"return": value, "id": request["id"]}).encode() + b"\n"

    client, _ = agent_on(exec_agent)
    result = client.exec(["sleep", "5"], input=b"in", env={"A": "1"})
    assert (result.returncode, result.stdout, result.stderr) == (-9, b"", b"killed")
    assert len(polls) == 3


def test_the_in_process_chardev_keeps_output_until_read_and_reports_its_end() -> None:
    chardev = AgentChardev(limit=100)
    received: list[bytes] = []
    chardev.set_handlers(received.append, lambda: 1000)
    chardev.send(b"request")
    assert received == [b"request"]
    assert chardev.recv(0.01) is None
    chardev.write(b"answer\n")
    assert chardev.recv(0.01) == b"answer\n"
    chardev.write(b"x" * 150)
    with pytest.raises(GuestAgentProtocolError, match="more than 100 bytes"):
        chardev.recv(0.01)
    chardev.close()
    with pytest.raises(GuestAgentError, match="closed"):
        chardev.recv(1)


def test_an_agent_port_of_ones_own_is_found_on_the_command_line() -> None:
    args = ["-chardev", "socket,id=qga0,path=/tmp/x/qga.sock,server=on,wait=off",
            "-device", "virtio-serial-pci", "-chardev", "socket,id=other,path=/tmp/o.sock",
            "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"]
    assert find_agent_socket(args) == "/tmp/x/qga.sock"
    assert find_agent_socket([*args[:-1], "virtserialport,chardev=qga0,name=other"]) is None
