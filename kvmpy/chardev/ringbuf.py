"""``-chardev ringbuf,size=N``: output kept in memory, QEMU's ``ringbuf``/``memory`` backend.

The newest ``size`` bytes are kept (older ones are overwritten).  :meth:`read` takes them out
(QMP ``ringbuf-read``); :meth:`write_input` hands input to the frontend (``ringbuf-write``).
Tests and the library use it as a console buffer.
"""

from __future__ import annotations

import threading

from kvmpy.chardev.common import Backend
from kvmpy.errors import ConfigError
from kvmpy.qom import Property, register_type


@register_type("chardev-ringbuf", "chardev", description="output kept in a memory ring buffer")
class RingbufChardev(Backend):
    backend = "ringbuf"

    size = Property("size", 65536, "buffer size in bytes, a power of two")

    def __init__(self) -> None:
        super().__init__()
        self._buf = bytearray()
        self._lock = threading.Lock()
        self.total_written = 0

    def open(self) -> None:
        size = int(self.size)
        if size <= 0 or size & (size - 1):
            raise ConfigError("size of ringbuf chardev must be power of two")
        self.open_logfile()

    def close(self) -> None:
        self.close_logfile()

    def write(self, data: bytes) -> int:
        self.log_output(data)
        with self._lock:
            self._buf += data
            overflow = len(self._buf) - int(self.size)
            if overflow > 0:
                del self._buf[:overflow]
            self.total_written += len(data)
        return len(data)

    def read(self, size: int | None = None) -> bytes:
        """Take up to ``size`` bytes (all when None) of buffered output, oldest first."""
        with self._lock:
            count = len(self._buf) if size is None else min(size, len(self._buf))
            data = bytes(self._buf[:count])
            del self._buf[:count]
        return data

    def peek(self) -> bytes:
        """The buffered output, left in place."""
        with self._lock:
            return bytes(self._buf)

    def write_input(self, data: bytes) -> None:
        """Input for the frontend, as if typed."""
        self.deliver(data)


@register_type("chardev-memory", "chardev-ringbuf", description="synonym for ringbuf")
class MemoryChardev(RingbufChardev):
    backend = "memory"
