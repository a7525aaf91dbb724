"""kvmpy-ga, the bundled guest's agent, built for this host and driven over its stdin/stdout
(``-p -``): the same C the guest runs, so its protocol handling and its answers to malformed
requests are checked without booting a guest.  Built with -Wall -Wextra -Werror."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvmpy.guest_agent import GuestAgent, GuestAgentCommandError, GuestAgentError

SOURCE = Path(__file__).resolve().parents[2] / "scripts" / "guest" / "kvmpy-ga.c"
CC = shutil.which("gcc") or shutil.which("cc")


@pytest.fixture(scope="module")
def agent_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not SOURCE.is_file():
        pytest.skip("scripts/guest/kvmpy-ga.c is not next to the tests")
    if CC is None:
        pytest.skip("no C compiler on this host")
    binary = tmp_path_factory.mktemp("kvmpy-ga") / "kvmpy-ga"
    result = subprocess.run([CC, "-Os", "-Wall", "-Wextra", "-Werror", "-o", str(binary),
                             str(SOURCE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # warning-free
    return binary


class PipeTransport:
    """The agent's stdin and stdout as a guest agent channel."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self.proc = proc
        self._in = proc.stdin
        self._out = proc.stdout.fileno()

    def send(self, data: bytes) -> None:
        self._in.write(data)
        self._in.flush()

    def recv(self, timeout: float) -> bytes | None:
        ready, _, _ = select.select([self._out], [], [], timeout)
        if not ready:
            return None
        data = os.read(self._out, 1 << 20)
        if not data:
            raise GuestAgentError("the agent exited")
        return data

    def close(self) -> None:
        self._in.close()


@pytest.fixture
def agent(agent_binary: Path, tmp_path: Path) -> Iterator[tuple[GuestAgent, PipeTransport]]:
    # Started with SIGCHLD ignored (which exec keeps): the agent must still see its
    # children's exit statuses.
    proc = subprocess.Popen([str(agent_binary), "-p", "-"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
                            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                            preexec_fn=lambda: signal.signal(signal.SIGCHLD, signal.SIG_IGN))
    transport = PipeTransport(proc)
    client = GuestAgent(transport, timeout=10)
    yield client, transport
    transport.close()
    try:
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else b""


def raw(transport: PipeTransport, data: bytes, timeout: float = 10) -> dict[str, Any]:
    """Send raw bytes, return the next answer line as JSON."""
    transport.send(data)
    buffer = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buffer:
        chunk = transport.recv(max(deadline - time.monotonic(), 0))
        assert chunk is not None, f"no answer to {data[:80]!r}"
        buffer += chunk
    line, _, rest = buffer.partition(b"\n")
    assert rest == b"", f"more than one answer: {buffer!r}"
    answer: dict[str, Any] = json.loads(line.lstrip(b"\xff"))
    return answer


def desc(answer: dict[str, Any]) -> str:
    assert "error" in answer, answer
    return str(answer["error"]["desc"])


def test_sync_delimited_answer_starts_with_the_sentinel(agent: tuple[GuestAgent, PipeTransport]
                                                       ) -> None:
    _, transport = agent
    transport.send(b'\xff{"execute": "guest-sync-delimited", "arguments": {"id": 77}}')
    data = b""
    while not data.endswith(b"\n"):
        data += transport.recv(10) or b""
    assert data == b'\xff{"return": 77}\n'


def test_malformed_requests_get_qga_errors_and_the_agent_goes_on(
        agent: tuple[GuestAgent, PipeTransport]) -> None:
    client, transport = agent
    cases = {
        b"[1, 2]": "QMP input must be a JSON object",
        b'{"execute": 5}': "QMP input member 'execute' must be a string",
        b'{"arguments": {}}': "QMP input lacks member 'execute'",
        b'{"execute": "guest-ping", "arguments": []}':
            "QMP input member 'arguments' must be an object",
        b'{"execute": "guest-ping", "extra": 1}': "QMP input member 'extra' is unexpected",
        b'{"execute": "guest-ping", "arguments": {"x": 1}}': "Parameter 'x' is unexpected",
        b'{"execute": "guest-exec"}': "Parameter 'path' is missing",
        b'{"execute": "guest-exec", "arguments": {"path": 1}}':
            "Invalid parameter type for 'path', expected: string",
        b'{"execute": "guest-exec", "arguments": {"path": "a", "arg": ["b", 2]}}':
            "Invalid parameter type for 'arg[1]', expected: string",
        b'{"execute": "guest-exec", "arguments": {"path": "a\\u0000b"}}':
            "Parameter 'path' contains a NUL character",
        b'{"execute": "guest-exec", "arguments": {"path": "cat", "input-data": "@@"}}':
            "Base64 data contains invalid characters",
        b'{"execute": "guest-exec-status", "arguments": {"pid": 1.5}}':
            "Invalid parameter type for 'pid', expected: integer",
        b'{"execute": "guest-exec-status", "arguments": {"pid": 99999999}}':
            "Invalid parameter 'pid'",
        b'{"execute": "guest-file-read", "arguments": {"handle": 5}}':
            "handle '5' has not been found",
        b'{"execute": "guest-file-open", "arguments": {"path": "x", "mode": "rw"}}':
            "invalid file open mode 'rw'",
        b'{"execute": "guest-shutdown", "arguments": {"mode": "sleep"}}':
            "mode is invalid (valid values are: halt|powerdown|reboot",
        b'{"execute": "guest-ping", "bad"}': "JSON parse error, missing : in object pair",
        b'{"a": "\\ud800"}': "JSON parse error, invalid UTF-16 surrogate pair",
        b'{"a": "\\q"}': "JSON parse error, invalid escape sequence in string",
        b'{"a": tru}': "JSON parse error, invalid token",
        b"[" * 40 + b"]" * 40: "JSON nesting depth limit exceeded",
        b'{"a": [' + b"1," * 70000 + b"1]}": "JSON token count limit exceeded",
        b"stray\n": "JSON parse error, stray characters",
    }
    for request, expected in cases.items():
        assert desc(raw(transport, request)) == expected, request[:60]
    unknown = raw(transport, b'{"execute": "guest-fsfreeze-freeze", "id": [1, {"k": null}]}')
    assert unknown == {"error": {"class": "CommandNotFound",
                                 "desc": "The command guest-fsfreeze-freeze has not been found"},
                       "id": [1, {"k": None}]}
    # A partial request is dropped by 0xFF; an oversized one is refused without being kept.
    transport.send(b'{"execute": "guest-pi')
    assert raw(transport, b'\xff{"execute": "guest-ping", "id": 3}') == {"return": {}, "id": 3}
    big = b'{"execute": "guest-ping", "id": "' + b"x" * (25 << 20) + b'"}'
    assert desc(raw(transport, big, timeout=60)) == "JSON token size limit exceeded"
    client.ping()


def test_exec_files_and_info(agent: tuple[GuestAgent, PipeTransport], tmp_path: Path) -> None:
    client, _ = agent
    result = client.exec(["sh", "-c", "cat; echo err >&2; exit 3"], input=b"in\x00put")
    assert (result.returncode, result.stdout, result.stderr) == (3, b"in\x00put", b"err\n")
    assert client.exec(["sh", "-c", "kill -TERM $$"]).returncode == -15
    assert client.exec(["env"], env={"A": "1", "B": "x y"}).stdout == b"A=1\nB=x y\n"
    streams = ["sh", "-c", "echo o; echo e >&2"]
    for mode, out, err in [("none", b"", b""), ("stdout", b"o\n", b""), ("stderr", b"", b"e\n"),
                           ("separated", b"o\n", b"e\n"), ("merged", b"o\ne\n", b""),
                           (False, b"", b"")]:
        result = client.exec(streams, capture_output=mode)
        assert (result.stdout, result.stderr) == (out, err), mode
    with pytest.raises(GuestAgentCommandError, match="does not accept value 'both'"):
        client.exec(streams, capture_output="both")
    with pytest.raises(GuestAgentCommandError) as info:
        client.exec(["/nonexistent/program"])
    assert info.value.desc == ("Failed to execute child process \u201c/nonexistent/program\u201d "
                               "(No such file or directory)")
    big = client.exec(["head", "-c", str(17 << 20), "/dev/zero"])
    assert (len(big.stdout), big.stdout_truncated) == (16 << 20, True)
    data = os.urandom(300_000)
    client.write_file(str(tmp_path / "f.bin"), data, chunk_size=65536)
    assert (tmp_path / "f.bin").read_bytes() == data
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o666
    assert client.read_file(str(tmp_path / "f.bin"), chunk_size=100_000) == data
    info_ = client.info()
    assert info_["version"].startswith("kvmpy-ga ")
    names = {c["name"]: c["success-response"] for c in info_["supported_commands"]}
    assert names["guest-exec"] is True and names["guest-shutdown"] is False
    assert client.osinfo()["kernel-release"] == os.uname().release
