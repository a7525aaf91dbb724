"""kvmpy's QMP server driven by QEMU's own client library (``qemu.qmp``), with QEMU as the oracle.

The kvmpy command line runs as a child with ``-qmp unix:...``, ``-qmp tcp:...``, ``-mon
mode=control`` or ``-qmp-pretty``; the async ``QMPClient`` and the legacy
``QEMUMonitorProtocol`` talk to it exactly as they talk to QEMU.  Where an exchange is cheap to
repeat, it runs on ``qemu-system-riscv64`` too and the replies are compared.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import ExecInterruptedError, ExecuteError, QMPClient
from qemu.qmp.legacy import QEMUMonitorProtocol

from ..lifecycle.helpers import (
    COUNTER,
    COUNTER_GPA,
    POWEROFF,
    REBOOT,
    free_tcp_port,
    kvmpy_command,
    kvmpy_env,
    qemu_binary,
    wait_for_port,
    wait_for_socket,
    write_payload,
)

BASE = ["-M", "virt", "-bios", "none", "-display", "none", "-nodefaults"]
ISSUE_COMMANDS = {"qmp_capabilities", "query-status", "stop", "cont", "system_reset", "quit",
                  "query-cpus-fast", "query-version", "query-commands", "query-machines",
                  "query-name", "human-monitor-command", "pmemsave", "memsave"}

Launcher = Callable[..., tuple[subprocess.Popen[bytes], str]]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launcher]:
    """``launch(*args, vmm="kvmpy"|"qemu", qmp="-qmp")`` -> (process, unix socket path)."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str, vmm: str = "kvmpy", qmp: str = "-qmp") -> tuple[
            subprocess.Popen[bytes], str]:
        path = str(tmp_path / f"{vmm}-{len(procs)}.sock")
        if vmm == "qemu":
            binary = qemu_binary()
            if binary is None:
                pytest.skip("qemu-system-riscv64 (the oracle) is not installed")
            command = [binary]
        else:
            command = kvmpy_command()
        command += [*BASE, *args]
        if qmp:
            command += [qmp, f"unix:{path},server=on,wait=off"]
        proc = subprocess.Popen(command, env=kvmpy_env(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(proc)
        if qmp:
            wait_for_socket(path, proc)
        return proc, path

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()


async def quit(client: QMPClient) -> None:
    """QMP ``quit``; the VMM may be gone before its reply is read (as QEMU can be)."""
    with contextlib.suppress(ExecInterruptedError):
        await client.execute("quit")


async def disconnect(client: QMPClient) -> None:
    """Hang up; after ``quit`` the server has already gone (EOFError), as QEMU's has."""
    with contextlib.suppress(EOFError):
        await client.disconnect()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


async def next_event(client: QMPClient, name: str, timeout: float = 20.0) -> dict[str, Any]:
    async def find() -> dict[str, Any]:
        async for event in client.events:
            if event["event"] == name:
                return dict(event)
        raise AssertionError("event stream ended")

    return await asyncio.wait_for(find(), timeout)


# -- the async client ------------------------------------------------------------------------

def test_greeting_negotiation_and_every_command(launch: Launcher, tmp_path: Path) -> None:
    proc, path = launch("-S", "-name", "lifecycle-vm", "-smp", "2")
    dump = tmp_path / "mrom.bin"
    vdump = tmp_path / "mrom-virt.bin"

    async def session() -> dict[str, Any]:
        client = QMPClient("kvmpy")
        await client.connect(path)  # reads the greeting and runs qmp_capabilities
        greeting = client.greeting._raw
        out: dict[str, Any] = {"greeting": greeting}
        for name in ("query-status", "query-version", "query-name", "query-cpus-fast",
                     "query-machines", "query-commands"):
            out[name] = await client.execute(name)
        out["hmp"] = await client.execute("human-monitor-command",
                                          {"command-line": "xp /4xw 0x1000"})
        out["pmemsave"] = await client.execute("pmemsave", {"val": 0x1000, "size": 16,
                                                            "filename": str(dump)})
        out["memsave"] = await client.execute("memsave", {"val": 0x1000, "size": 16,
                                                          "filename": str(vdump),
                                                          "cpu-index": 1})
        await client.execute("cont")
        out["running"] = await client.execute("query-status")
        await client.execute("stop")
        await client.execute("system_reset")
        out["paused"] = await client.execute("query-status")
        await quit(client)
        out["shutdown"] = await next_event(client, "SHUTDOWN")
        await disconnect(client)
        return out

    out = run(session())
    qmp = out["greeting"]["QMP"]
    assert qmp["capabilities"] == ["oob"]
    assert set(qmp["version"]) == {"qemu", "package"}
    assert set(qmp["version"]["qemu"]) == {"major", "minor", "micro"}
    assert out["query-status"] == {"status": "prelaunch", "singlestep": False, "running": False}
    assert out["query-version"] == qmp["version"]
    assert out["query-name"] == {"name": "lifecycle-vm"}
    cpus = out["query-cpus-fast"]
    assert [c["cpu-index"] for c in cpus] == [0, 1]
    assert cpus[1] == {"thread-id": cpus[1]["thread-id"], "props": {"core-id": 1},
                       "qom-path": "/machine/soc0/harts[1]", "cpu-index": 1,
                       "target": "riscv64"}
    assert all(c["thread-id"] > 0 for c in cpus)
    assert "virt" in {m["name"] for m in out["query-machines"]}
    assert {c["name"] for c in out["query-commands"]} >= ISSUE_COMMANDS
    # The MROM reset vector of QEMU 7.2's virt board: auipc t0,0; addi a2,t0,40; ...
    assert out["hmp"] == "0000000000001000: 0x00000297 0x02828613 0xf1402573 0x0202b583\r\n"
    assert dump.read_bytes() == bytes.fromhex("97020000 13868202 7325 40f1 83b50202"
                                              .replace(" ", ""))
    assert vdump.read_bytes() == dump.read_bytes()  # satp is bare: virtual == physical
    assert out["running"]["status"] == "running"
    assert out["paused"]["status"] == "paused"
    assert out["shutdown"]["data"] == {"guest": False, "reason": "host-qmp-quit"}
    assert proc.wait(30) == 0


def test_events_with_reasons(launch: Launcher, tmp_path: Path) -> None:
    _, path = launch("-kernel", write_payload(tmp_path, "counter", COUNTER))

    async def session() -> list[dict[str, Any]]:
        client = QMPClient("kvmpy")
        await client.connect(path)
        events = []
        await client.execute("stop")
        await client.execute("cont")
        await client.execute("system_reset")
        for _ in range(3):
            event = await asyncio.wait_for(client.events.get(), 10)
            events.append(dict(event))
        await disconnect(client)
        return events

    events = run(session())
    assert [e["event"] for e in events] == ["STOP", "RESUME", "RESET"]
    assert "data" not in events[0] and "data" not in events[1]
    assert events[2]["data"] == {"guest": False, "reason": "host-qmp-system-reset"}
    for event in events:
        assert set(event["timestamp"]) == {"seconds", "microseconds"}
        assert abs(event["timestamp"]["seconds"] - time.time()) < 60


@pytest.mark.parametrize("vmm", ["kvmpy", "qemu"])
def test_guest_poweroff_and_reset_events_as_qemu(launch: Launcher, tmp_path: Path,
                                                 vmm: str) -> None:
    """sifive_test writes: the same events on kvmpy and on QEMU."""
    proc, path = launch("-S", "-kernel", write_payload(tmp_path, "reboot", REBOOT), vmm=vmm)

    async def reboot() -> dict[str, Any]:
        client = QMPClient(vmm)
        await client.connect(path)
        await client.execute("cont")
        event = await next_event(client, "RESET")
        await quit(client)
        await disconnect(client)
        return event

    assert run(reboot())["data"] == {"guest": True, "reason": "guest-reset"}
    proc.wait(30)

    proc, path = launch("-S", "-kernel", write_payload(tmp_path, "off", POWEROFF), vmm=vmm)

    async def poweroff() -> dict[str, Any] | None:
        client = QMPClient(vmm)
        await client.connect(path)
        with contextlib.suppress(ExecInterruptedError):  # QEMU 7.2 may exit before replying
            await client.execute("cont")
        try:
            event: dict[str, Any] | None = await next_event(
                client, "SHUTDOWN", timeout=20.0 if vmm == "kvmpy" else 3.0)
        except (TimeoutError, EOFError):
            event = None  # QEMU 7.2's sifive_test calls exit() without an event
        with contextlib.suppress(EOFError):  # the server goes away: the VMM has ended
            await disconnect(client)
        return event

    event = run(poweroff())
    assert proc.wait(30) == 0
    if vmm == "kvmpy":  # as QEMU 8 and later: the event first, then the exit
        assert event is not None
        assert event["data"] == {"guest": True, "reason": "guest-shutdown"}


def test_errors_through_the_client(launch: Launcher) -> None:
    _, path = launch("-S")

    async def session() -> list[tuple[str, str]]:
        client = QMPClient("kvmpy")
        await client.connect(path)
        errors = []
        for name, args in [("no-such-command", None), ("stop", {"bogus": 1}),
                           ("pmemsave", {"val": 0}),
                           ("pmemsave", {"val": "0", "size": 1, "filename": "x"}),
                           ("memsave", {"val": 0, "size": 1, "filename": "/nonexistent/x"}),
                           ("memsave", {"val": 0x10, "size": 4, "filename": os.devnull}),
                           ("memsave", {"val": 0, "size": 1, "filename": "x",
                                        "cpu-index": 9})]:
            with pytest.raises(ExecuteError) as info:
                await client.execute(name, args)
            errors.append((info.value.error_class, info.value.error.error.desc))
        await quit(client)
        await disconnect(client)
        return errors

    assert run(session()) == [
        ("CommandNotFound", "The command no-such-command has not been found"),
        ("GenericError", "Parameter 'bogus' is unexpected"),
        ("GenericError", "Parameter 'size' is missing"),
        ("GenericError", "Invalid parameter type for 'val', expected: integer"),
        ("GenericError", "Could not open '/nonexistent/x': No such file or directory"),
        ("GenericError", "Invalid addr 0x0000000000000010/size 4 specified"),
        ("GenericError", "Parameter 'cpu-index' expects a CPU number"),
    ]


# -- the legacy synchronous client, tcp, -mon ------------------------------------------------

def legacy_session(address: str | tuple[str, int]) -> None:
    qmp = QEMUMonitorProtocol(address)
    greeting = qmp.connect(negotiate=True)
    assert "QMP" in greeting
    assert qmp.cmd("query-status")["status"] == "prelaunch"
    assert qmp.cmd_raw("query-name") == {"return": {}}
    assert qmp.cmd_obj({"execute": "cont", "id": "c1"}) == {"return": {}, "id": "c1"}
    event = qmp.pull_event(wait=10.0)
    assert event is not None and event["event"] == "RESUME"
    reply = qmp.cmd_raw("nosuch")
    assert reply["error"]["class"] == "CommandNotFound"
    with pytest.raises(ExecuteError):
        qmp.cmd("nosuch")
    qmp.cmd("quit")
    assert qmp.pull_event(wait=10.0)["event"] == "SHUTDOWN"
    with contextlib.suppress(EOFError):  # the server has gone, as QEMU's after quit
        qmp.close()


def test_legacy_client_on_unix_socket(launch: Launcher) -> None:
    proc, path = launch("-S")
    legacy_session(path)
    assert proc.wait(30) == 0


def test_legacy_client_on_tcp(launch: Launcher) -> None:
    port = free_tcp_port()
    proc, _ = launch("-S", "-qmp", f"tcp:127.0.0.1:{port},server=on,wait=off", qmp="")
    wait_for_port(port, proc)
    legacy_session(("127.0.0.1", port))
    assert proc.wait(30) == 0


def test_mon_mode_control(launch: Launcher, tmp_path: Path) -> None:
    path = str(tmp_path / "mon.sock")
    proc, _ = launch("-S", "-chardev", f"socket,id=qmp0,path={path},server=on,wait=off",
                     "-mon", "chardev=qmp0,mode=control", qmp="")
    wait_for_socket(path, proc)
    legacy_session(path)
    assert proc.wait(30) == 0


# -- raw bytes: pretty output, framing abuse, QEMU's replies ---------------------------------

class Raw:
    """A raw QMP connection: bytes in, JSON messages out."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.buffer = b""

    def read_text(self, quiet: float = 0.3) -> bytes:
        """Everything received until the server has been quiet for ``quiet`` s."""
        data = b""
        self.sock.settimeout(quiet)
        try:
            while True:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            pass
        self.sock.settimeout(10)
        return data

    def messages(self, count: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        decoder = json.JSONDecoder()
        while len(out) < count:
            text = self.buffer.decode().lstrip()
            try:
                obj, end = decoder.raw_decode(text)
            except json.JSONDecodeError:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    raise ConnectionError("closed") from None
                self.buffer += chunk
                continue
            self.buffer = text[end:].encode()
            out.append(obj)
        return out

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


def _normalise(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: ("T" if k == "timestamp" else "V" if k == "version" else _normalise(v))
                for k, v in obj.items()}
    return obj


EXCHANGE = [
    b'{"execute": "query-status"}',
    b'{"execute": "qmp_capabilities", "arguments": {"enable": ["foo"]}}',
    b'{"execute": "qmp_capabilities", "arguments": {"enable": "oob"}}',
    b'{"execute": "qmp_capabilities"}',
    b'{"execute": "qmp_capabilities"}',
    b'{"exec-oob": "query-status"}',
    b'{"exec-oob": "query-status", "execute": "query-status"}',
    b'{"execute": "query-status", "control": {}}',
    b'garbage\n',
    b'@\n',
    b'{bad}\n',
    b'{"execute": "query-status",}\n',
    b'{"execute": "query-status" "id"}\n',
    b'[1, 2]\n',
    b'{"foo": 1}\n',
    b'{"execute": 1}\n',
    b'{"execute": "stop", "arguments": []}\n',
    b'{"execute": "nope", "id": "a"}\n',
    b'{"arguments": {}}\n',
    b'{"execute": "query-status", "id": 1}{"execute": "query-name", "id": [2]}',
    b'{"execute": "stop"}',
    b'{"execute": "pmemsave", "arguments": {"val": 1, "size": 4, "filename": "/dev/null"}}',
    b'{"execute": "human-monitor-command", "arguments": {"command-line": "nosuch"}}',
    b'{"execute": "human-monitor-command", "arguments": {"command-line": "xp /4xw 0x1000"}}',
    b'{"execute": "human-monitor-command", "arguments": {"command-line": "xp /4xw 0x1"}}',
    b'{"execute": "human-monitor-command", "arguments": {"command-line": "xp /3dw 0x1000"}}',
    b'{"execute": "human-monitor-command", "arguments": {"command-line": "xp /4zw 0"}}',
    b'{"execute": "human-monitor-command", "arguments": {"command-line": "info status"}}',
    b'{"execute": "human-monitor-command", "arguments": {"command-line": "info status", '
    b'"cpu-index": 5}}',
    b'{"execute": "human-monitor-command", "arguments": {"command-line": "xp /2dg 0x1000"}}',
    b'{"execute": "human-monitor-command", "arguments": {"command-line": "xp /4c 0x1000"}}',
    b'{"execute": "human-monitor-command", "arguments": {"command-line": "cpu 3"}}',
    b'{"execute": "cont", "id": "c"}',
    b'{"execute": "system_reset"}',
]


def _read_through(raw: Raw, tag: str) -> bytes:
    """Bytes received up to the reply carrying id ``tag`` (that reply left out)."""
    decoder = json.JSONDecoder()
    data = b""
    while True:
        chunk = raw.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError(f"closed before {tag}: {data!r}")
        data += chunk
        text, offset = data.decode(), 0
        while True:
            start = len(text) - len(text[offset:].lstrip())
            try:
                obj, end = decoder.raw_decode(text, start)
            except json.JSONDecodeError:
                break
            if isinstance(obj, dict) and obj.get("id") == tag:
                return text[:start].encode()
            offset = end


def exchange(launch: Launcher, vmm: str, pretty: bool = False) -> list[Any]:
    """Each message of :data:`EXCHANGE` and the bytes it got back.  A ``query-name`` tagged
    ``sync-N`` follows each message, so the replies are cut apart whatever the load."""
    proc, path = launch("-S", vmm=vmm, qmp="-qmp-pretty" if pretty else "-qmp")
    raw = Raw(path)
    greeting = b""
    while not greeting.endswith(b"}\r\n") or greeting.count(b"{") != greeting.count(b"}"):
        greeting += raw.sock.recv(1 << 16)
    out: list[Any] = [greeting]
    for n, message in enumerate(EXCHANGE):
        raw.send(message + b'{"execute": "query-name", "id": "sync-%d"}' % n)
        out.append(_read_through(raw, f"sync-{n}"))
    raw.close()
    proc.kill()
    return out


def _messages(data: bytes) -> list[Any]:
    decoder = json.JSONDecoder()
    text, out = data.decode(), []
    while text.strip():
        obj, end = decoder.raw_decode(text.lstrip())
        text = text.lstrip()[end:]
        out.append(_normalise(obj))
    return out


def test_replies_match_qemu(launch: Launcher) -> None:
    """The same bytes to kvmpy and to QEMU 7.2: the same replies, errors and events."""
    ours = exchange(launch, "kvmpy")
    theirs = exchange(launch, "qemu")
    for message, mine, reference in zip([b"(greeting)", *EXCHANGE], ours, theirs, strict=True):
        assert _messages(mine) == _messages(reference), message
        assert mine.endswith(b"\r\n") or not mine


def test_pretty_output_is_qemus(launch: Launcher) -> None:
    """-qmp-pretty: the same indentation and line ends as QEMU's pretty JSON writer."""
    ours = exchange(launch, "kvmpy", pretty=True)
    theirs = exchange(launch, "qemu", pretty=True)
    assert b"\n" in ours[0].rstrip()
    for mine, reference in zip(ours, theirs, strict=True):
        assert _messages(mine) == _messages(reference)
        layout = [line.split(b":")[0] for line in mine.split(b"\n")]
        assert layout == [line.split(b":")[0] for line in reference.split(b"\n")]


def _counter(raw: Raw, tmp_path: Path, n: int) -> int:
    target = tmp_path / f"counter{n}.bin"
    request = {"execute": "pmemsave", "id": n,
               "arguments": {"val": COUNTER_GPA, "size": 8, "filename": str(target)}}
    raw.send(json.dumps(request).encode())
    while raw.messages(1)[0].get("id") != n:
        pass
    return int.from_bytes(target.read_bytes(), "little")


def test_framing_abuse_leaves_the_guest_running(launch: Launcher, tmp_path: Path) -> None:
    """Partial writes, garbage, an oversized message, deep nesting, abrupt disconnects and
    reconnects: each client gets errors or a fresh session; the guest keeps counting."""
    proc, path = launch("-kernel", write_payload(tmp_path, "counter", COUNTER))
    raw = Raw(path)
    assert "QMP" in raw.messages(1)[0]
    raw.send(b'{"execute": "qmp_capabilities"}\n')
    assert raw.messages(1) == [{"return": {}}]
    before = _counter(raw, tmp_path, 1)

    message = b'{"execute": "query-status", "id": "slow"}'
    for i in range(len(message)):  # one byte at a time
        raw.send(message[i:i + 1])
        time.sleep(0.002)
    assert raw.messages(1)[0]["id"] == "slow"

    raw.send(b'\x00\xff garbage }}}\n{"execute": "query-name", "id": "g"}')
    replies = _messages(_read_through(raw, "g"))
    assert replies and all("error" in m for m in replies)

    raw.send(b"[" * 2000 + b"]" * 2000 + b'\n{"execute": "query-name", "id": "n"}')
    assert {"class": "GenericError", "desc": "JSON nesting depth limit exceeded"} in \
        [m.get("error") for m in _messages(_read_through(raw, "n"))]

    started = time.monotonic()
    chunk = b"x" * (1 << 20)
    raw.send(b'{"execute": "query-status", "arguments": {"x": "')
    for _ in range(65):  # past QEMU's 64 MiB limit on one message
        raw.send(chunk)
    raw.send(b'"}}\n{"execute": "query-status", "id": "after"}\n')
    replies = []
    while not any(r.get("id") == "after" for r in replies):
        replies += raw.messages(1)
    assert {"class": "GenericError", "desc": "JSON token size limit exceeded"} in \
        [r.get("error") for r in replies]
    assert time.monotonic() - started < 60

    raw.send(b'{"execute": "query-sta')  # and hang up in the middle of a message
    raw.close()
    for n in range(3):  # reconnect: a fresh greeting, negotiation required again
        raw = Raw(path)
        assert "QMP" in raw.messages(1)[0]
        raw.send(b'{"execute": "query-status"}\n')
        assert raw.messages(1)[0]["error"]["class"] == "CommandNotFound"
        raw.send(b'{"execute": "qmp_capabilities"}\n{"execute": "query-status"}\n')
        assert raw.messages(2)[1]["return"]["status"] == "running"
        if n < 2:
            raw.sock.shutdown(socket.SHUT_RDWR)
            raw.close()

    after = _counter(raw, tmp_path, 2)
    time.sleep(0.2)
    assert _counter(raw, tmp_path, 3) > after > before
    raw.send(b'{"execute": "quit"}\n')
    raw.close()
    assert proc.wait(30) == 0
    assert proc.stdout is not None
    assert b"Traceback" not in proc.stdout.read()


def test_one_client_at_a_time(launch: Launcher) -> None:
    """As QEMU: a second client waits until the first has gone, then gets its greeting."""
    _, path = launch("-S")
    first = Raw(path)
    assert "QMP" in first.messages(1)[0]
    second = Raw(path)
    assert second.read_text(0.5) == b""
    first.close()
    assert "QMP" in second.messages(1)[0]
    second.close()


def test_server_survives_client_vanishing_with_unread_events(launch: Launcher,
                                                             tmp_path: Path) -> None:
    proc, path = launch("-kernel", write_payload(tmp_path, "counter", COUNTER))
    raw = Raw(path)
    raw.messages(1)
    raw.send(b'{"execute": "qmp_capabilities"}\n')
    for _ in range(100):
        raw.send(b'{"execute": "stop"}\n{"execute": "cont"}\n')
    raw.close()  # hundreds of replies and events never read
    legacy = QEMUMonitorProtocol(path)
    legacy.connect(negotiate=True)
    assert legacy.cmd("query-status")["status"] == "running"
    legacy.cmd("quit")
    with contextlib.suppress(EOFError):
        legacy.close()
    assert proc.wait(30) == 0


def test_pids_in_query_cpus_fast_are_threads_of_the_vmm(launch: Launcher) -> None:
    proc, path = launch("-S", "-smp", "2")
    qmp = QEMUMonitorProtocol(path)
    qmp.connect()
    tids = {c["thread-id"] for c in qmp.cmd("query-cpus-fast")}
    assert tids <= {int(t) for t in os.listdir(f"/proc/{proc.pid}/task")}
    qmp.cmd("quit")
    with contextlib.suppress(EOFError):
        qmp.close()


def test_mon_pretty_on(launch: Launcher, tmp_path: Path) -> None:
    path = str(tmp_path / "pretty.sock")
    proc, _ = launch("-S", "-chardev", f"socket,id=qmp0,path={path},server=on,wait=off",
                     "-mon", "chardev=qmp0,mode=control,pretty=on", qmp="")
    wait_for_socket(path, proc)
    raw = Raw(path)
    assert raw.read_text().startswith(b'{\r\n    "QMP": {\r\n        "version": {\r\n')
    raw.send(b'{"execute": "qmp_capabilities"}')
    assert raw.read_text() == b'{\r\n    "return": {\r\n    }\r\n}\r\n'
    raw.close()
