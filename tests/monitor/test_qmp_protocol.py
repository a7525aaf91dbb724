"""QMP framing and commands on an in-memory chardev, against a machine with a scripted vCPU."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from kvmpy.chardev.base import CHR_EVENT_CLOSED, CHR_EVENT_OPENED, Chardev
from kvmpy.monitor.qmp import MAX_MESSAGE_BYTES, QmpMonitor
from kvmpy.system import System

from ..test_system import make  # the scripted machine and accelerator


class Pipe(Chardev):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.peer = False

    @property
    def connected(self) -> bool:
        return self.peer

    def write(self, data: bytes) -> int:
        self.out += data
        return len(data)

    def messages(self) -> list[dict[str, Any]]:
        lines = bytes(self.out).split(b"\r\n")
        self.out.clear()
        return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture
def running() -> Iterator[tuple[System, Pipe, QmpMonitor]]:
    system = make()
    thread = threading.Thread(target=system.run, args=(False,))
    ready = threading.Event()
    system_run = system.run
    thread = threading.Thread(target=lambda: system_run(False, ready.set))
    thread.start()
    assert ready.wait(10)
    pipe = Pipe()
    monitor = QmpMonitor(pipe)
    done = threading.Event()

    def start() -> None:
        monitor.start(system)
        done.set()

    system.call_soon(start)
    assert done.wait(5)
    try:
        yield system, pipe, monitor
    finally:
        system.call_soon(system.quit)
        thread.join(10)


def on_loop(system: System, fn: Any) -> None:
    done = threading.Event()

    def call() -> None:
        fn()
        done.set()

    system.call_soon(call)
    assert done.wait(5)


def talk(system: System, pipe: Pipe, data: bytes) -> list[dict[str, Any]]:
    on_loop(system, lambda: pipe.deliver(data))
    return pipe.messages()


def connect(system: System, pipe: Pipe) -> dict[str, Any]:
    pipe.peer = True
    on_loop(system, lambda: pipe.notify_event(CHR_EVENT_OPENED))
    (greeting,) = pipe.messages()
    return greeting


def negotiate(system: System, pipe: Pipe) -> None:
    connect(system, pipe)
    assert talk(system, pipe, b'{"execute": "qmp_capabilities"}\n') == [{"return": {}}]


def test_greeting_and_negotiation(running: tuple[System, Pipe, QmpMonitor]) -> None:
    system, pipe, _ = running
    greeting = connect(system, pipe)
    assert greeting["QMP"]["capabilities"] == ["oob"]
    assert set(greeting["QMP"]["version"]["qemu"]) == {"major", "minor", "micro"}
    before = talk(system, pipe, b'{"execute": "query-status"}\n')
    assert before == [{"error": {"class": "CommandNotFound", "desc":
                                 "Expecting capabilities negotiation with 'qmp_capabilities'"}}]
    assert talk(system, pipe, b'{"execute": "qmp_capabilities", "id": 7}') == \
        [{"return": {}, "id": 7}]
    status = talk(system, pipe, b'{"execute": "query-status", "id": "q1"}')
    assert status == [{"return": {"status": "running", "singlestep": False, "running": True},
                       "id": "q1"}]


def test_partial_reads_and_several_commands_per_chunk(
        running: tuple[System, Pipe, QmpMonitor]) -> None:
    system, pipe, _ = running
    negotiate(system, pipe)
    message = b'{"execute": "query-name", "id": 1}{"execute": "query-target", "id": 2}\n'
    replies: list[dict[str, Any]] = []
    for i in range(len(message)):
        replies += talk(system, pipe, message[i:i + 1])
    assert replies == [{"return": {}, "id": 1}, {"return": {"arch": "riscv64"}, "id": 2}]


@pytest.mark.parametrize(("data", "desc"), [
    (b'{"execute": }\n', "JSON parse error"),
    (b'[1, 2]\n', "QMP input must be a JSON object"),
    (b'{"arguments": {}}\n', "QMP input lacks member 'execute'"),
    (b'{"execute": 3}\n', "QMP input member 'execute' must be a string"),
    (b'{"execute": "stop", "bogus": 1}\n', "QMP input member 'bogus' is unexpected"),
    (b'{"execute": "nosuchcmd"}\n', "The command nosuchcmd has not been found"),
    (b'{"execute": "pmemsave", "arguments": {"val": 0, "size": 1}}\n',
     "Parameter 'filename' is missing"),
    (b'{"execute": "stop", "arguments": {"x": 1}}\n', "Parameter 'x' is unexpected"),
    (b'{"execute": "pmemsave", "arguments": {"val": "a", "size": 1, "filename": "f"}}\n',
     "Invalid parameter type for 'val', expected: integer"),
    (b'\xff\xfe garbage\n', "JSON parse error"),
])
def test_bad_input_gets_an_error_and_the_session_goes_on(
        running: tuple[System, Pipe, QmpMonitor], data: bytes, desc: str) -> None:
    system, pipe, _ = running
    negotiate(system, pipe)
    replies = talk(system, pipe, data)  # garbage may hold several bad tokens, as for QEMU
    assert replies and all(desc in reply["error"]["desc"] for reply in replies)
    assert talk(system, pipe, b'{"execute": "query-status"}\n')[0]["return"]["running"]


def test_oversized_input_is_dropped(running: tuple[System, Pipe, QmpMonitor]) -> None:
    system, pipe, _ = running
    negotiate(system, pipe)
    replies = talk(system, pipe, b'{"execute": "' + b"x" * (MAX_MESSAGE_BYTES + 10))
    assert replies[-1]["error"]["desc"] == "JSON token size limit exceeded"
    assert talk(system, pipe, b'\n{"execute": "query-status"}\n')[-1]["return"]["running"]


def test_disconnect_resets_the_session(running: tuple[System, Pipe, QmpMonitor]) -> None:
    system, pipe, _ = running
    negotiate(system, pipe)
    talk(system, pipe, b'{"execute": "query-sta')
    on_loop(system, lambda: pipe.notify_event(CHR_EVENT_CLOSED))
    connect(system, pipe)
    reply = talk(system, pipe, b'{"execute": "query-status"}\n')
    assert reply[0]["error"]["class"] == "CommandNotFound"


def test_stop_cont_events_and_state_errors(running: tuple[System, Pipe, QmpMonitor]) -> None:
    system, pipe, _ = running
    negotiate(system, pipe)
    replies = talk(system, pipe, b'{"execute": "stop"}\n')
    assert [r.get("event") for r in replies] == ["STOP", None]
    assert talk(system, pipe, b'{"execute": "query-status"}')[0]["return"]["status"] == "paused"
    replies = talk(system, pipe, b'{"execute": "cont"}\n')
    assert [r.get("event") for r in replies] == ["RESUME", None]
    assert set(replies[0]["timestamp"]) == {"seconds", "microseconds"}
    replies = talk(system, pipe, b'{"execute": "system_reset"}\n')
    assert replies[0]["event"] == "RESET"
    assert replies[0]["data"] == {"guest": False, "reason": "host-qmp-system-reset"}
    system.status = "shutdown"
    (reply,) = talk(system, pipe, b'{"execute": "cont"}\n')
    assert reply["error"] == {"class": "GenericError",
                              "desc": "Resetting the Virtual Machine is required"}


def test_queries(running: tuple[System, Pipe, QmpMonitor], tmp_path: Any) -> None:
    system, pipe, _ = running
    negotiate(system, pipe)
    (cpus,) = talk(system, pipe, b'{"execute": "query-cpus-fast"}\n')
    assert cpus["return"][0]["qom-path"] == "/machine/soc0/harts[0]"
    assert cpus["return"][0]["thread-id"] > 0
    (cmds,) = talk(system, pipe, b'{"execute": "query-commands"}\n')
    names = {c["name"] for c in cmds["return"]}
    assert {"qmp_capabilities", "query-status", "stop", "cont", "system_reset", "quit",
            "human-monitor-command", "pmemsave", "memsave", "query-machines"} <= names
    (machines,) = talk(system, pipe, b'{"execute": "query-machines"}\n')
    assert "scripted" in {m["name"] for m in machines["return"]}
    assert system.ram is not None
    system.ram.write(0x8000_0000, b"kvmpy!")
    target = tmp_path / "mem.bin"
    request = {"execute": "pmemsave",
               "arguments": {"val": 0x8000_0000, "size": 6, "filename": str(target)}}
    assert talk(system, pipe, json.dumps(request).encode())[0] == {"return": {}}
    assert target.read_bytes() == b"kvmpy!"
    request["arguments"]["val"] = 0x7FFF_FFFE  # QEMU: unassigned memory reads as zeros
    assert talk(system, pipe, json.dumps(request).encode())[0] == {"return": {}}
    assert target.read_bytes() == b"\0\0kvmp"
    hmp = {"execute": "human-monitor-command", "arguments": {"command-line": "info status"}}
    assert talk(system, pipe, json.dumps(hmp).encode())[0]["return"] == \
        "VM status: running\r\n"


def test_quit_sends_shutdown_then_reply(running: tuple[System, Pipe, QmpMonitor]) -> None:
    system, pipe, _ = running
    negotiate(system, pipe)
    replies = talk(system, pipe, b'{"execute": "quit"}\n')
    assert replies[0]["event"] == "SHUTDOWN"
    assert replies[0]["data"] == {"guest": False, "reason": "host-qmp-quit"}
    assert replies[-1] == {"return": {}}
