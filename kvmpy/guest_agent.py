"""The QEMU guest agent protocol, host side: ``vm.guest`` runs programs and moves files in a guest.

The agent (kvmpy's ``kvmpy-ga`` in the bundled guest, or QEMU's ``qemu-ga``) listens on the
virtio-serial port named ``org.qemu.guest_agent.0``.  Requests are qga's JSON commands
(qga/qapi-schema.json): ``{"execute": NAME, "arguments": {...}, "id": N}``; each answer is one
line, ``{"return": ...}`` or ``{"error": {"class": ..., "desc": ...}}``, carrying the request's
id.  Before its first command, and after any timeout or garbled answer, the client
resynchronises as qga clients do: a 0xFF byte (the agent drops any partial request), then
``guest-sync-delimited`` with a random id, whose answer the agent precedes with 0xFF; everything
before that answer is stale and dropped.

``kvmpy.VM(..., agent=True)`` and ``kvmpy.ProcessVM(..., agent=True)`` add the port::

    -device virtio-serial-pci,id=kvmpy-ga-serial
    -device virtserialport,id=kvmpy-ga-port,chardev=kvmpy-ga,name=org.qemu.guest_agent.0

They come before the VM's other options, so that ports of one's own can go on the same bus:
``-device virtserialport,bus=kvmpy-ga-serial.0,chardev=...,name=...``.  In-process the chardev
``kvmpy-ga`` is a Python object (:class:`AgentChardev`); in the child process it is the unix
socket ``agent.sock`` in the VM's temporary directory.  A VM whose arguments already have
such a port on a ``-chardev socket,path=...`` gets a client on that socket.

Every call has a timeout; an agent that answers nothing, garbage, other ids or lines longer than
``max_line`` raises a :class:`GuestAgentError` subclass, never hangs.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import random
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from kvmpy.chardev.base import Chardev
from kvmpy.errors import KvmpyError

__all__ = [
    "AGENT_CHARDEV_ID",
    "AGENT_PORT_ID",
    "AGENT_PORT_NAME",
    "AGENT_SERIAL_ID",
    "AgentChardev",
    "ExecResult",
    "GuestAgent",
    "GuestAgentCommandError",
    "GuestAgentError",
    "GuestAgentProtocolError",
    "GuestAgentTimeout",
    "SocketTransport",
    "agent_device_args",
    "find_agent_socket",
]

AGENT_PORT_NAME = "org.qemu.guest_agent.0"
"""The port name qemu-ga and kvmpy-ga look for (``/dev/virtio-ports/org.qemu.guest_agent.0``)."""
AGENT_CHARDEV_ID = "kvmpy-ga"
AGENT_SERIAL_ID = "kvmpy-ga-serial"
AGENT_PORT_ID = "kvmpy-ga-port"

DEFAULT_TIMEOUT = 30.0
"""Seconds for one command's answer (``exec`` has its own timeout for the program)."""
MAX_LINE = 64 << 20
"""Longest answer accepted, in bytes: 16 MiB of captured stdout and stderr each is ~43 MiB
of base64."""
FILE_CHUNK = 1 << 20
"""Bytes per guest-file-read / guest-file-write."""
SHUTDOWN_MODES = ("powerdown", "reboot", "halt")
_SENTINEL = b"\xff"


class GuestAgentError(KvmpyError):
    """The guest agent could not be reached or did not answer as the protocol says."""


class GuestAgentTimeout(GuestAgentError, TimeoutError):
    """No (matching) answer within the timeout."""


class GuestAgentProtocolError(GuestAgentError):
    """The agent's answer is not a qga response: not JSON, not an object, too long."""


class GuestAgentCommandError(GuestAgentError):
    """The agent answered with an error object; ``error_class`` and ``desc`` are its fields."""

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        super().__init__(f"{command}: {desc} ({error_class})")
        self.command = command
        self.error_class = error_class
        self.desc = desc


class ExecResult(subprocess.CompletedProcess[bytes]):
    """A finished ``guest-exec``: ``returncode`` (negative: killed by that signal), ``stdout``,
    ``stderr``; ``stdout_truncated``/``stderr_truncated`` when the agent kept only the first
    16 MiB.  ``check_returncode()`` raises ``subprocess.CalledProcessError``."""

    def __init__(self, args: list[str], returncode: int, stdout: bytes, stderr: bytes,
                 stdout_truncated: bool = False, stderr_truncated: bool = False) -> None:
        super().__init__(args, returncode, stdout, stderr)
        self.stdout_truncated = stdout_truncated
        self.stderr_truncated = stderr_truncated


# ----------------------------------------------------------------------------------------------
# Transports: bytes to and from the port's chardev
# ----------------------------------------------------------------------------------------------

class Transport(Protocol):
    def send(self, data: bytes) -> None:
        """Queue ``data`` for the agent (never blocks for long)."""

    def recv(self, timeout: float) -> bytes | None:
        """Bytes from the agent; None when none came within ``timeout`` s.  Raises
        GuestAgentError once the channel is closed."""

    def close(self) -> None:
        """Release the channel."""


class AgentChardev(Chardev):
    """The port's chardev as a Python object (in-process VMs): what the guest writes is kept
    (at most ``limit`` bytes unread; beyond that the oldest are dropped and the next read
    reports it), what the host sends is delivered as the port accepts it."""

    def __init__(self, limit: int = 2 * MAX_LINE) -> None:
        super().__init__()
        self.id = AGENT_CHARDEV_ID
        self._cond = threading.Condition()
        self._data = bytearray()
        self._limit = limit
        self._overflowed = False
        self._closed = False

    # The device's side.
    def write(self, data: bytes) -> int:
        with self._cond:
            self._data += data
            if len(self._data) > self._limit:
                del self._data[:len(self._data) - self._limit]
                self._overflowed = True
            self._cond.notify_all()
        return len(data)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # The client's side.
    def send(self, data: bytes) -> None:
        if self._closed:
            raise GuestAgentError("the guest agent's chardev is closed (the VM has ended)")
        self.deliver(data)

    def recv(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._data:
                if self._closed:
                    raise GuestAgentError("the guest agent's chardev is closed "
                                          "(the VM has ended)")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            if self._overflowed:
                self._overflowed = False
                self._data.clear()
                raise GuestAgentProtocolError(
                    f"the guest wrote more than {self._limit} bytes on the agent port that "
                    "nobody read; dropped")
            data = bytes(self._data)
            self._data.clear()
            return data


class SocketTransport:
    """A client on the unix socket of a ``-chardev socket,server=on`` (connected on first use,
    retrying until the connect timeout while the VMM is still creating it)."""

    def __init__(self, path: str, connect_timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = path
        self._connect_timeout = connect_timeout
        self._sock: socket.socket | None = None
        self._closed = False

    def _socket(self) -> socket.socket:
        if self._closed:
            raise GuestAgentError(f"the guest agent socket {self.path} is closed")
        if self._sock is not None:
            return self._sock
        deadline = time.monotonic() + self._connect_timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(max(deadline - time.monotonic(), 0.1))
                sock.connect(self.path)
                self._sock = sock
                return sock
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                sock.close()
                if time.monotonic() >= deadline:
                    raise GuestAgentError(f"cannot connect to the guest agent socket "
                                          f"{self.path}: {exc.strerror}") from None
                time.sleep(0.05)
            except OSError as exc:
                sock.close()
                raise GuestAgentError(f"cannot connect to the guest agent socket {self.path}: "
                                      f"{exc}") from None

    def send(self, data: bytes) -> None:
        sock = self._socket()
        try:
            sock.settimeout(DEFAULT_TIMEOUT)
            sock.sendall(data)
        except OSError as exc:
            raise GuestAgentError(f"guest agent socket {self.path}: {exc}") from None

    def recv(self, timeout: float) -> bytes | None:
        sock = self._socket()
        sock.settimeout(max(timeout, 0.001))
        try:
            data = sock.recv(1 << 20)
        except TimeoutError:
            return None
        except OSError as exc:
            raise GuestAgentError(f"guest agent socket {self.path}: {exc}") from None
        if not data:
            raise GuestAgentError(f"the guest agent socket {self.path} was closed by the VMM")
        return data

    def close(self) -> None:
        self._closed = True
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


# ----------------------------------------------------------------------------------------------
# Finding and adding the port
# ----------------------------------------------------------------------------------------------

def agent_device_args(chardev_id: str = AGENT_CHARDEV_ID) -> list[str]:
    """The ``-device`` options of the agent port (its chardev is the caller's)."""
    return ["-device", f"virtio-serial-pci,id={AGENT_SERIAL_ID}",
            "-device", f"virtserialport,id={AGENT_PORT_ID},chardev={chardev_id},"
                       f"name={AGENT_PORT_NAME}"]


def _props(text: str) -> tuple[str, dict[str, str]]:
    driver, _, rest = text.partition(",")
    props: dict[str, str] = {}
    for item in rest.split(","):
        key, sep, value = item.partition("=")
        if sep:
            props[key] = value
    return driver, props


def find_agent_socket(args: Sequence[str]) -> str | None:
    """The unix socket path of the chardev behind a ``virtserialport`` named
    ``org.qemu.guest_agent.0`` in a command line, if there is one (simple ``key=value`` forms:
    commas inside values are not handled)."""
    chardevs: dict[str, str] = {}
    port_chardev = None
    for option, value in itertools.pairwise(args):
        if option == "-chardev":
            driver, props = _props(value)
            if driver == "socket" and "path" in props and "id" in props:
                chardevs[props["id"]] = props["path"]
        elif option == "-device":
            driver, props = _props(value)
            if driver in ("virtserialport", "virtconsole") \
                    and props.get("name") == AGENT_PORT_NAME:
                port_chardev = props.get("chardev")
    return chardevs.get(port_chardev) if port_chardev else None


# ----------------------------------------------------------------------------------------------
# The client
# ----------------------------------------------------------------------------------------------

class GuestAgent:
    """A qga client on one transport.  Thread-safe: one command at a time."""

    def __init__(self, transport: Transport, *, timeout: float = DEFAULT_TIMEOUT,
                 max_line: int = MAX_LINE) -> None:
        self.transport = transport
        self.timeout = timeout
        self.max_line = max_line
        self._buffer = bytearray()
        self._synced = False
        self._lock = threading.RLock()
        self._next_id = random.getrandbits(30)

    def close(self) -> None:
        self.transport.close()

    # -- bytes and lines -------------------------------------------------------------------

    def _fill(self, deadline: float) -> bool:
        """Read more into the buffer; False when the deadline passed first."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        data = self.transport.recv(remaining)
        if data is None:
            return False
        self._buffer += data
        return True

    def _line(self, deadline: float) -> bytes | None:
        """The next line (without its newline); None at the deadline."""
        start = 0
        while True:
            end = self._buffer.find(b"\n", start)
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[:end + 1]
                return line
            if len(self._buffer) > self.max_line:
                self._buffer.clear()
                self._synced = False
                raise GuestAgentProtocolError(
                    f"the guest agent sent a line longer than {self.max_line} bytes")
            start = len(self._buffer)
            if not self._fill(deadline):
                return None

    @staticmethod
    def _decode(line: bytes) -> Any:
        try:
            return json.loads(line.decode("utf-8", errors="replace"))
        except ValueError:
            return None

    # -- synchronisation -------------------------------------------------------------------

    def sync(self, timeout: float | None = None) -> None:
        """Resynchronise (0xFF, ``guest-sync-delimited``), dropping everything stale."""
        timeout = self.timeout if timeout is None else timeout
        with self._lock:
            self._synced = False
            token = random.getrandbits(53)
            request = json.dumps({"execute": "guest-sync-delimited",
                                  "arguments": {"id": token}}).encode()
            self.transport.send(_SENTINEL + request + b"\n")
            deadline = time.monotonic() + timeout
            stale = 0
            while True:
                index = self._buffer.find(_SENTINEL)
                if index < 0:
                    stale += len(self._buffer)
                    self._buffer.clear()
                    if not self._fill(deadline):
                        raise GuestAgentTimeout(
                            f"the guest agent did not answer guest-sync-delimited within "
                            f"{timeout} s ({stale} other bytes received)")
                    continue
                del self._buffer[:index + 1]
                try:
                    line = self._line(deadline)
                except GuestAgentProtocolError:
                    continue
                if line is None:
                    raise GuestAgentTimeout(f"the guest agent's answer to guest-sync-delimited "
                                            f"did not end within {timeout} s")
                answer = self._decode(line.lstrip(_SENTINEL))
                if isinstance(answer, dict) and answer.get("return") == token:
                    self._synced = True
                    return
                stale += len(line)

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Wait until the agent answers (it starts after the guest's kernel and init)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                self.sync(timeout=min(2.0, max(remaining, 0.01)))
                return
            except GuestAgentTimeout:
                if time.monotonic() >= deadline:
                    raise GuestAgentTimeout(
                        f"the guest agent did not answer within {timeout} s") from None

    # -- commands --------------------------------------------------------------------------

    def execute(self, command: str, arguments: Mapping[str, Any] | None = None,
                timeout: float | None = None) -> Any:
        """Run one qga command; its ``return`` value.  GuestAgentCommandError for an error
        answer, GuestAgentTimeout / GuestAgentProtocolError when there is no proper answer."""
        timeout = self.timeout if timeout is None else timeout
        with self._lock:
            if not self._synced:
                self.sync(timeout)
            self._next_id = (self._next_id + 1) & 0x3FFFFFFF
            request_id = self._next_id
            request: dict[str, Any] = {"execute": command, "id": request_id}
            if arguments:
                request["arguments"] = dict(arguments)
            try:
                self.transport.send(json.dumps(request).encode() + b"\n")
                return self._answer(command, request_id, timeout)
            except GuestAgentError:
                self._synced = False
                raise

    def _answer(self, command: str, request_id: int, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        ignored = 0
        while True:
            line = self._line(deadline)
            if line is None:
                extra = f" ({ignored} answers to other requests ignored)" if ignored else ""
                raise GuestAgentTimeout(f"{command}: no answer from the guest agent within "
                                        f"{timeout} s{extra}")
            if not line.strip(b" \t\r" + _SENTINEL):
                continue
            if line.startswith(_SENTINEL):  # a late answer to an earlier guest-sync-delimited
                ignored += 1
                continue
            answer = self._decode(line)
            if not isinstance(answer, dict) or not ("return" in answer or "error" in answer):
                raise GuestAgentProtocolError(
                    f"{command}: the guest agent answered something that is not a qga "
                    f"response: {line[:200]!r}")
            if answer.get("id", request_id) != request_id:
                ignored += 1
                continue
            if "error" in answer:
                error = answer["error"]
                if not isinstance(error, dict):
                    raise GuestAgentProtocolError(f"{command}: malformed error: {line[:200]!r}")
                raise GuestAgentCommandError(command, str(error.get("class", "GenericError")),
                                             str(error.get("desc", "")))
            return answer["return"]

    def ping(self, timeout: float | None = None) -> None:
        """``guest-ping``: returns when the agent answers."""
        self.execute("guest-ping", timeout=timeout)

    def info(self) -> dict[str, Any]:
        """``guest-info``: ``version`` and ``supported_commands``."""
        return self._dict(self.execute("guest-info"), "guest-info")

    def osinfo(self) -> dict[str, Any]:
        """``guest-get-osinfo``: kernel-release, kernel-version, machine, and os-release's id,
        name, pretty-name, version, version-id, ... when the guest has them."""
        return self._dict(self.execute("guest-get-osinfo"), "guest-get-osinfo")

    @staticmethod
    def _dict(value: Any, command: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise GuestAgentProtocolError(f"{command}: expected an object, got {value!r:.200}")
        return value

    def exec(self, argv: Sequence[str] | str, input: bytes | str | None = None,
             env: Mapping[str, str] | Sequence[str] | None = None,
             timeout: float = DEFAULT_TIMEOUT, capture_output: bool | str = True
             ) -> ExecResult:
        """Run ``argv`` in the guest and wait for it (``guest-exec`` + ``guest-exec-status``).

        ``argv[0]`` is searched in PATH when it has no slash.  ``input`` is the program's
        stdin (else /dev/null).  ``env`` replaces the whole environment (as qga does; without
        it the program inherits the agent's).  Raises GuestAgentTimeout when the program has
        not ended within ``timeout`` s (it is left running), GuestAgentCommandError when it
        cannot be started.  ``capture_output`` may also be a mode of qemu-ga 8.0 and later:
        ``"none"``, ``"stdout"``, ``"stderr"``, ``"separated"``, ``"merged"`` (stderr into
        stdout).
        """
        args = [argv] if isinstance(argv, str) else list(argv)
        if not args:
            raise ValueError("exec: argv is empty")
        arguments: dict[str, Any] = {"path": args[0], "arg": args[1:],
                                     "capture-output": capture_output}
        if env is not None:
            arguments["env"] = [f"{k}={v}" for k, v in env.items()] \
                if isinstance(env, Mapping) else list(env)
        if input is not None:
            data = input.encode() if isinstance(input, str) else bytes(input)
            arguments["input-data"] = base64.b64encode(data).decode()
        started = self._dict(self.execute("guest-exec", arguments), "guest-exec")
        pid = started.get("pid")
        if not isinstance(pid, int):
            raise GuestAgentProtocolError(f"guest-exec: no pid in {started!r:.200}")
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            status = self._dict(self.execute("guest-exec-status", {"pid": pid}),
                                "guest-exec-status")
            if status.get("exited"):
                return self._result(args, status)
            if time.monotonic() >= deadline:
                raise GuestAgentTimeout(f"exec {args!r}: still running after {timeout} s "
                                        f"(guest pid {pid})")
            time.sleep(min(delay, max(deadline - time.monotonic(), 0)))
            delay = min(delay * 2, 0.2)

    @staticmethod
    def _result(args: list[str], status: dict[str, Any]) -> ExecResult:
        if isinstance(status.get("exitcode"), int):
            returncode = int(status["exitcode"])
        elif isinstance(status.get("signal"), int):
            returncode = -int(status["signal"])
        else:
            raise GuestAgentProtocolError(f"guest-exec-status: exited without exitcode or "
                                          f"signal: {status!r:.200}")
        try:
            out = base64.b64decode(status.get("out-data", ""), validate=True)
            err = base64.b64decode(status.get("err-data", ""), validate=True)
        except (ValueError, TypeError) as exc:
            raise GuestAgentProtocolError(f"guest-exec-status: bad base64: {exc}") from None
        return ExecResult(args, returncode, out, err, bool(status.get("out-truncated")),
                          bool(status.get("err-truncated")))

    def read_file(self, path: str, chunk_size: int = FILE_CHUNK,
                  timeout: float = 120.0) -> bytes:
        """The whole file ``path`` of the guest (guest-file-open/read/close)."""
        handle = self.execute("guest-file-open", {"path": path, "mode": "r"})
        deadline = time.monotonic() + timeout
        data = bytearray()
        try:
            while True:
                chunk = self._dict(self.execute("guest-file-read",
                                                {"handle": handle, "count": chunk_size}),
                                   "guest-file-read")
                try:
                    data += base64.b64decode(chunk.get("buf-b64", ""), validate=True)
                except (ValueError, TypeError) as exc:
                    raise GuestAgentProtocolError(f"guest-file-read: bad base64: {exc}") \
                        from None
                if chunk.get("eof"):
                    return bytes(data)
                if time.monotonic() >= deadline:
                    raise GuestAgentTimeout(f"read_file {path}: not at its end after "
                                            f"{timeout} s ({len(data)} bytes read)")
        finally:
            with contextlib.suppress(GuestAgentError):
                self.execute("guest-file-close", {"handle": handle})

    def write_file(self, path: str, data: bytes, chunk_size: int = FILE_CHUNK) -> None:
        """Create or replace the guest file ``path`` with ``data`` (mode 0666, as qga)."""
        handle = self.execute("guest-file-open", {"path": path, "mode": "w"})
        try:
            view = memoryview(bytes(data))
            while view:
                piece = view[:chunk_size]
                written = self._dict(self.execute(
                    "guest-file-write",
                    {"handle": handle, "buf-b64": base64.b64encode(piece).decode()}),
                    "guest-file-write")
                count = written.get("count")
                if not isinstance(count, int) or not 0 < count <= len(piece):
                    raise GuestAgentProtocolError(f"guest-file-write: wrote {count!r} of "
                                                  f"{len(piece)} bytes")
                view = view[count:]
        except BaseException:
            with contextlib.suppress(GuestAgentError):
                self.execute("guest-file-close", {"handle": handle})
            raise
        self.execute("guest-file-close", {"handle": handle})

    def shutdown(self, mode: str = "powerdown") -> None:
        """``guest-shutdown``: powerdown, reboot or halt.  The agent does not answer; wait for
        the VM (``vm.wait()``) to see it happen."""
        if mode not in SHUTDOWN_MODES:
            raise ValueError(f"shutdown mode must be one of {', '.join(SHUTDOWN_MODES)}")
        with self._lock:
            if not self._synced:
                self.sync()
            request = {"execute": "guest-shutdown", "arguments": {"mode": mode}}
            self.transport.send(json.dumps(request).encode() + b"\n")
            self._synced = False
