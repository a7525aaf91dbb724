"""The C half of the 16550 (``uart_fast.c``) as the ``ns16550a`` model drives it.

The C half answers LSR reads and takes THR writes that raise no interrupt, from any vCPU
thread (its contract is in ``uart_fast.h``).  This wrapper owns it: it pushes the model's LSR
and the allowed accesses after each Python operation (only when they changed), hands the
buffered output to the chardev in order, and runs the flusher thread that sends output
buffered in C within :data:`FLUSH_DELAY_MS` even while no vCPU comes back to Python (a KVM
vCPU loops in C; a guest that prints and then sleeps).

Optional: without the built module (``kvmpy/hw/_build.py``), :func:`available` is False and
the UART runs in Python alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

_cdev: Any = None
_loaded = False

CAPACITY = 4096
"""Output bytes the C half holds; a THR write that finds it full goes to Python."""
FLUSH_DELAY_MS = 2
"""How long the first byte of a burst may wait in C before it goes out (more bytes join it)."""

FAST_LSR = 1
FAST_THR = 2


def available() -> bool:
    """Whether the C half is built (loaded on first ask, when a UART is attached to an
    accelerator that calls C: a process that never runs a guest does not load it)."""
    global _cdev, _loaded
    if not _loaded:
        _loaded = True
        try:
            from kvmpy.hw import _cdev as module  # type: ignore[attr-defined]
        except ImportError:  # not built (or built for another Python): Python alone
            module = None
        _cdev = module
    return _cdev is not None


class UartFast:
    """One UART's C half.  ``write`` sends output to the chardev (it is called with the
    output lock held, from vCPU threads and the flusher thread)."""

    def __init__(self, regshift: int, write: Callable[[bytes], object]) -> None:
        if not available():
            raise RuntimeError("the C device models (kvmpy.hw._cdev) are not built")
        ffi, lib = _cdev.ffi, _cdev.lib
        c = lib.uart_fast_new(regshift, CAPACITY)
        if c == ffi.NULL:
            raise MemoryError("uart_fast_new")
        self._c: Any = ffi.gc(c, lib.uart_fast_free)
        self._lib: Any = lib
        self._take_thr = lib.uart_fast_take_thr
        self._take_output = lib.uart_fast_take_output
        self._buf: Any = ffi.new("uint8_t[]", CAPACITY)
        self._view = ffi.buffer(self._buf)
        self._pending: Any = lib.uart_fast_pending_word(c)
        self._write = write
        self._pushed = -1
        self.out_lock = threading.Lock()
        """Held while output goes to the chardev, so that C's bytes and the model's own
        keep their order whichever thread sends them."""
        self.function = int(ffi.cast("uintptr_t", ffi.addressof(lib, "uart_fast_mmio")))
        self.opaque = int(ffi.cast("uintptr_t", c))
        self._closed = False
        self._thread = threading.Thread(target=self._flusher, name="serial-out", daemon=True)
        self._thread.start()

    def push(self, lsr: int, mode: int) -> None:
        """The model's LSR and the accesses C may complete (FAST_* bits)."""
        key = lsr | mode << 8
        if key != self._pushed:
            self._lib.uart_fast_set(self._c, lsr, mode)
            self._pushed = key

    def take_thr(self) -> int:
        """The last byte C stored in THR since the previous call, or -1."""
        return int(self._take_thr(self._c))

    def flush(self) -> None:
        """Send what C buffered (cheap when nothing is: one read of its count)."""
        if self._pending[0]:
            with self.out_lock:
                self._send_buffered()

    def write(self, data: bytes) -> None:
        """Send the model's own output, after what C buffered before it."""
        with self.out_lock:
            self._send_buffered()
            self._write(data)

    def _send_buffered(self) -> None:
        n = self._take_output(self._c, self._buf, CAPACITY)
        if n:
            self._write(self._view[0:n])

    def pending(self) -> int:
        return int(self._lib.uart_fast_pending(self._c))

    def _flusher(self) -> None:
        wait, c = self._lib.uart_fast_wait_output, self._c
        while wait(c, FLUSH_DELAY_MS):
            self.flush()

    def close(self) -> None:
        """C takes no more accesses; the flusher ends; everything buffered is sent."""
        if self._closed:
            return
        self._closed = True
        self.push(0, 0)
        self._lib.uart_fast_close(self._c)
        if self._thread is not threading.current_thread():
            self._thread.join()
        with self.out_lock:
            self._send_buffered()
