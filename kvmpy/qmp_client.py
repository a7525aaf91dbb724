"""A small synchronous QMP client, enough for :class:`kvmpy.ProcessVM` (no extra dependency).

Tools written for QEMU can use ``qemu.qmp`` against kvmpy just as well.
"""

from __future__ import annotations

import json
import socket
import time
from collections import deque
from typing import Any

from kvmpy.errors import KvmpyError


class QMPError(KvmpyError):
    """The server answered a command with an error (``error_class`` as QEMU's)."""

    def __init__(self, desc: str, error_class: str = "GenericError") -> None:
        super().__init__(desc)
        self.error_class = error_class


class QMPClient:
    """One connection to a QMP server over a unix or tcp socket."""

    def __init__(self, address: str | tuple[str, int]) -> None:
        self.address = address
        self._sock: socket.socket | None = None
        self._buffer = b""
        self.events: deque[dict[str, Any]] = deque()
        self.greeting: dict[str, Any] = {}
        self._next_id = 0

    def connect(self, timeout: float = 15.0) -> dict[str, Any]:
        """Connect, read the greeting and negotiate capabilities."""
        family = socket.AF_UNIX if isinstance(self.address, str) else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(self.address)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self.greeting = self._read_message(timeout)
        if "QMP" not in self.greeting:
            raise QMPError(f"unexpected greeting: {self.greeting}")
        self.execute("qmp_capabilities")
        return self.greeting

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _read_message(self, timeout: float | None) -> dict[str, Any]:
        if self._sock is None:
            raise QMPError("not connected")
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("no QMP message in time")
                self._sock.settimeout(remaining)
            else:
                self._sock.settimeout(None)
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("QMP connection closed")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        return message

    def execute(self, command: str, arguments: dict[str, Any] | None = None,
                timeout: float = 30.0) -> Any:
        """Run a command; returns its ``return`` value or raises QMPError."""
        if self._sock is None:
            raise QMPError("not connected")
        self._next_id += 1
        msg_id = f"kvmpy-{self._next_id}"
        request: dict[str, Any] = {"execute": command, "id": msg_id}
        if arguments:
            request["arguments"] = arguments
        self._sock.sendall(json.dumps(request).encode() + b"\n")
        while True:
            message = self._read_message(timeout)
            if "event" in message:
                self.events.append(message)
                continue
            if message.get("id") != msg_id:
                continue
            if "error" in message:
                raise QMPError(message["error"]["desc"], message["error"]["class"])
            return message.get("return")

    def pull_event(self, timeout: float | None = 0.0) -> dict[str, Any] | None:
        """The next event, waiting up to ``timeout`` s (None: forever)."""
        if self.events:
            return self.events.popleft()
        try:
            while True:
                message = self._read_message(timeout)
                if "event" in message:
                    return message
        except TimeoutError:
            return None
