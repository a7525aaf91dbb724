"""The migration wire format: the VM-state stream cut into frames, then the source's run state.

::

    wire   = "KVMPY-MIGRATION\\n", u32 wire version, frame*
    frame  = tag (1 byte), u32 length, payload
    tags   = "D" a piece of the VM-state stream (``docs/vmstate.md``)
             "G" the source's run state when it stopped, JSON: {"runstate": "running"}
             "E" the end: the source sent everything

The frames let the destination tell a complete migration from a stream cut short (a cancelled
or failed source just closes the channel), and carry QEMU's "global state" section: a
destination starts the guest only when the source was running.  The writer sends on the
migration thread, at most ``max-bandwidth`` bytes a second while limited, in 100 ms windows
as QEMU's rate limiter does.
"""

from __future__ import annotations

import io
import json
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from kvmpy.migration.uri import Channel, MigrationError

MAGIC = b"KVMPY-MIGRATION\n"
WIRE_VERSION = 1
_START = struct.Struct("<16sI")
_FRAME = struct.Struct("<cI")
FRAME_DATA = b"D"
FRAME_GLOBAL = b"G"
FRAME_END = b"E"
MAX_FRAME = 1 << 20
"""Largest frame a writer sends (a reader refuses a longer one as corrupt)."""
RATE_WINDOW_S = 0.1
"""QEMU's BUFFER_DELAY: the bandwidth budget is granted per 100 ms."""


class Cancelled(MigrationError):
    """The migration was cancelled while the writer waited or wrote."""


class FramedWriter(io.RawIOBase):
    """The file the VM-state saver writes to: buffers, frames and sends on ``channel``.

    ``bandwidth()`` gives the limit in bytes/s (0: none) and is read at each window, so
    ``migrate-set-parameters`` takes effect during a migration; ``limited`` is switched off
    for the final, stopped phase.  ``transferred`` counts bytes on the wire.
    """

    def __init__(self, channel: Channel, bandwidth: Callable[[], int],
                 cancel: threading.Event) -> None:
        super().__init__()
        self.channel = channel
        self.bandwidth = bandwidth
        self.cancel = cancel
        self.limited = True
        self.transferred = 0
        self._buffer = bytearray()
        self._window_start = time.monotonic()
        self._window_bytes = 0

    def writable(self) -> bool:
        return True

    def start(self) -> None:
        self._send(_START.pack(MAGIC, WIRE_VERSION))

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        self._buffer += view
        while len(self._buffer) >= self._chunk():
            chunk = self._chunk()
            self._frame(FRAME_DATA, self._buffer[:chunk])
            del self._buffer[:chunk]
        return size

    def flush(self) -> None:
        if self._buffer:
            self._frame(FRAME_DATA, self._buffer)
            self._buffer = bytearray()

    def finish(self, global_state: dict[str, Any]) -> None:
        """The end of a complete migration: the rest of the data, the run state, END."""
        self.flush()
        self._frame(FRAME_GLOBAL, json.dumps(global_state).encode())
        self._frame(FRAME_END, b"")

    def _chunk(self) -> int:
        limit = self.bandwidth() if self.limited else 0
        if limit <= 0:
            return MAX_FRAME
        return max(4096, min(MAX_FRAME, int(limit * RATE_WINDOW_S)))

    def _frame(self, tag: bytes, payload: bytes | bytearray) -> None:
        self._send(_FRAME.pack(tag, len(payload)) + payload)

    def _send(self, data: bytes | bytearray) -> None:
        if self.cancel.is_set():
            raise Cancelled("cancelled")
        self._throttle(len(data))
        try:
            self.channel.write(data)
        except MigrationError:
            if self.cancel.is_set():
                raise Cancelled("cancelled") from None
            raise
        self.transferred += len(data)

    def _throttle(self, size: int) -> None:
        limit = self.bandwidth() if self.limited else 0
        now = time.monotonic()
        if now - self._window_start >= RATE_WINDOW_S:
            self._window_start, self._window_bytes = now, 0
        if limit > 0 and self._window_bytes + size > limit * RATE_WINDOW_S \
                and self._window_bytes > 0:
            wait = self._window_start + RATE_WINDOW_S - now
            if wait > 0 and self.cancel.wait(wait):
                raise Cancelled("cancelled")
            self._window_start, self._window_bytes = time.monotonic(), 0
        self._window_bytes += size


class FramedReader(io.RawIOBase):
    """The file the VM-state loader reads from: the data frames of ``channel``, in order.

    The stream ends (reads return b"") at the END frame or when the channel closes; after
    the loader is done, :meth:`finish` reads what follows and says whether the source
    completed.
    """

    def __init__(self, channel: Channel) -> None:
        super().__init__()
        self.channel = channel
        self.received = 0
        self.global_state: dict[str, Any] | None = None
        self.ended = False
        self.complete = False
        self._left = 0  # bytes of the current data frame not read yet

    def readable(self) -> bool:
        return True

    def start(self) -> None:
        head = self._exact(_START.size, partial=True)
        if not MAGIC.startswith(head[:len(MAGIC)]):
            raise MigrationError("not a kvmpy migration stream")
        if len(head) < _START.size:
            raise MigrationError("the migration stream ended before it began")
        _, version = _START.unpack(head)
        if version > WIRE_VERSION:
            raise MigrationError(f"migration stream version {version} is newer than this "
                                 f"kvmpy reads (up to {WIRE_VERSION})")

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while self._left == 0:
            if self.ended or not self._next_frame():
                return 0
        want = min(len(view), self._left)
        data = self.channel.read(want)
        if not data:
            self.ended = True
            self._left = 0
            return 0
        view[:len(data)] = data
        self._left -= len(data)
        self.received += len(data)
        return len(data)

    def _next_frame(self) -> bool:
        """Reads frame headers until a data frame; False at the end of the stream."""
        head = self._exact(_FRAME.size)
        if head is None:
            self.ended = True
            return False
        tag, length = _FRAME.unpack(head)
        if length > MAX_FRAME:
            raise MigrationError(f"corrupt migration stream (a frame of {length} bytes)")
        if tag == FRAME_DATA:
            self._left = length
            return True
        payload = self._exact(length) if length else b""
        if payload is None:
            self.ended = True
            return False
        if tag == FRAME_GLOBAL:
            try:
                state = json.loads(payload)
            except (ValueError, RecursionError):
                raise MigrationError("corrupt migration stream (run state)") from None
            self.global_state = state if isinstance(state, dict) else {}
            return True
        if tag == FRAME_END:
            self.ended = self.complete = True
            return False
        raise MigrationError(f"corrupt migration stream (frame {tag!r})")

    def finish(self) -> dict[str, Any]:
        """After the load: skip unread data up to END; the source's run state.  A stream
        that stops before END did not come from a completed migration."""
        while not self.ended:
            if self._left:
                chunk = self.channel.read(min(self._left, 1 << 16))
                if not chunk:
                    break
                self._left -= len(chunk)
                continue
            self._next_frame()
        if not self.complete or self.global_state is None:
            raise MigrationError("the migration stream ended early")
        return self.global_state

    def _exact(self, size: int, partial: bool = False) -> Any:
        """``size`` bytes, or None if the stream ends first (``partial``: what came)."""
        out = bytearray()
        while len(out) < size:
            chunk = self.channel.read(size - len(out))
            if not chunk:
                return bytes(out) if partial else None
            out += chunk
        return bytes(out)
