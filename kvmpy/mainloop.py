"""The VMM's main loop: descriptors, timers and calls from other threads, on one thread.

QEMU's main loop (``util/main-loop.c``) in a few lines: :class:`MainLoop` offers the part of
asyncio's event-loop interface that kvmpy's chardevs, monitors, network back-ends and timers
use (``add_reader``/``add_writer`` and their removal, ``call_soon``, ``call_soon_threadsafe``,
``call_at``/``call_later``/``time``, ``add_signal_handler``, ``run_forever``/``stop``,
``is_closed``/``close``), with asyncio's semantics: so a back-end runs unchanged on this loop
or on an asyncio loop (its tests use either).  It exists because importing asyncio (and ssl
with it) costs ~20 ms, a fifth of a VM's start-up to its first instruction, for none of
asyncio's coroutine machinery.

One turn of :meth:`MainLoop.run_forever` is asyncio's ``_run_once``: wait in the selector (epoll)
until a descriptor is ready, the first timer is due or a call arrives (zero if calls are
queued), queue the ready descriptors' and due timers' callbacks, then run the callbacks
queued at that moment; ones queued while they run wait for the next turn.  A callback that
raises is logged (``kvmpy.mainloop``) and the loop goes on, as asyncio's default exception
handler does.  Signals arrive through ``signal.set_wakeup_fd`` on the wake-up pipe, as in
asyncio, so a handler runs on the loop, never inside an interrupted callback.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import logging
import os
import selectors
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

_log = logging.getLogger("kvmpy.mainloop")

_MAX_SELECT_TIMEOUT_S = 24 * 3600.0
"""asyncio's MAXIMUM_SELECT_TIMEOUT: epoll refuses longer waits."""


class Handle:
    """A queued callback (``call_soon``, a descriptor's reader or writer); :meth:`cancel`
    stops it from running (asyncio.Handle)."""

    __slots__ = ("_args", "_callback", "_cancelled")

    def __init__(self, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self._callback = callback
        self._args = args
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True

    def cancelled(self) -> bool:
        return self._cancelled

    def _run(self) -> None:
        try:
            self._callback(*self._args)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            _log.error("Exception in callback %r", self._callback, exc_info=True)

    def __repr__(self) -> str:
        state = " cancelled" if self._cancelled else ""
        return f"<{type(self).__name__}{state} {self._callback!r}>"


class TimerHandle(Handle):
    """A callback due at :meth:`when` on the loop's clock (asyncio.TimerHandle)."""

    __slots__ = ("_when",)

    def __init__(self, when: float, callback: Callable[..., object],
                 args: tuple[Any, ...]) -> None:
        super().__init__(callback, args)
        self._when = when

    def when(self) -> float:
        return self._when

    def __lt__(self, other: TimerHandle) -> bool:
        return self._when < other._when


class MainLoop:
    """One thread's event loop (build and run it on the thread that serves the VM)."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._ready: collections.deque[Handle] = collections.deque()
        self._scheduled: list[TimerHandle] = []
        self._closed = False
        self._stopping = False
        self._wake_lock = threading.Lock()
        self._signal_handlers: dict[int, Handle] = {}
        self._old_wakeup_fd = -1
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_r, selectors.EVENT_READ, (None, None))
        self._clock_resolution = time.get_clock_info("monotonic").resolution

    # -- time and calls --------------------------------------------------------------------

    def time(self) -> float:
        """The loop's clock: ``time.monotonic()``, in seconds."""
        return time.monotonic()

    def call_soon(self, callback: Callable[..., object], *args: Any) -> Handle:
        """Run ``callback(*args)`` on the next turn (from the loop's own thread)."""
        self._check_closed()
        handle = Handle(callback, args)
        self._ready.append(handle)
        return handle

    def call_soon_threadsafe(self, callback: Callable[..., object], *args: Any) -> Handle:
        """:meth:`call_soon` from any thread: the loop wakes up for it."""
        self._check_closed()
        handle = Handle(callback, args)
        self._ready.append(handle)  # deque.append is atomic
        self._wake()
        return handle

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> TimerHandle:
        """Run ``callback(*args)`` once :meth:`time` reaches ``when`` (loop thread only)."""
        self._check_closed()
        timer = TimerHandle(when, callback, args)
        heapq.heappush(self._scheduled, timer)
        return timer

    def call_later(self, delay: float, callback: Callable[..., object],
                   *args: Any) -> TimerHandle:
        return self.call_at(self.time() + delay, callback, *args)

    # -- descriptors -----------------------------------------------------------------------

    def add_reader(self, fd: int, callback: Callable[..., object], *args: Any) -> None:
        """Call ``callback(*args)`` whenever ``fd`` is readable; replaces an earlier reader.
        Raises as epoll does (PermissionError for a regular file, OSError for a bad fd)."""
        self._add(fd, selectors.EVENT_READ, Handle(callback, args))

    def add_writer(self, fd: int, callback: Callable[..., object], *args: Any) -> None:
        """Call ``callback(*args)`` whenever ``fd`` is writable; replaces an earlier writer."""
        self._add(fd, selectors.EVENT_WRITE, Handle(callback, args))

    def remove_reader(self, fd: int) -> bool:
        """Stop watching ``fd`` for reading; whether a reader was registered."""
        return self._remove(fd, selectors.EVENT_READ)

    def remove_writer(self, fd: int) -> bool:
        return self._remove(fd, selectors.EVENT_WRITE)

    def _add(self, fd: int, event: int, handle: Handle) -> None:
        self._check_closed()
        try:
            key = self._selector.get_key(fd)
        except KeyError:
            data = (handle, None) if event == selectors.EVENT_READ else (None, handle)
            self._selector.register(fd, event, data)
            return
        reader, writer = key.data
        if event == selectors.EVENT_READ:
            old, data = reader, (handle, writer)
        else:
            old, data = writer, (reader, handle)
        self._selector.modify(fd, key.events | event, data)
        if old is not None:
            old.cancel()

    def _remove(self, fd: int, event: int) -> bool:
        if self._closed:
            return False
        try:
            key = self._selector.get_key(fd)
        except KeyError:
            return False
        reader, writer = key.data
        mask = key.events & ~event
        if event == selectors.EVENT_READ:
            old, data = reader, (None, writer)
        else:
            old, data = writer, (reader, None)
        if mask:
            self._selector.modify(fd, mask, data)
        else:
            self._selector.unregister(fd)
        if old is None:
            return False
        old.cancel()
        return True

    # -- signals ---------------------------------------------------------------------------

    def add_signal_handler(self, signum: int, callback: Callable[..., object],
                           *args: Any) -> None:
        """Run ``callback(*args)`` on the loop when ``signum`` arrives (main thread only, as
        asyncio's)."""
        self._check_closed()
        if not self._signal_handlers:
            self._old_wakeup_fd = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self._signal_handlers[signum] = Handle(callback, args)
        try:
            signal.signal(signum, _ignore_signal)  # the wake-up fd carries it to the loop
            signal.siginterrupt(signum, False)
        except (OSError, ValueError):
            del self._signal_handlers[signum]
            if not self._signal_handlers:
                signal.set_wakeup_fd(self._old_wakeup_fd)
            raise

    def remove_signal_handler(self, signum: int) -> bool:
        if self._signal_handlers.pop(signum, None) is None:
            return False
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT
                      else signal.SIG_DFL)
        if not self._signal_handlers:
            signal.set_wakeup_fd(self._old_wakeup_fd)
        return True

    # -- running ---------------------------------------------------------------------------

    def run_forever(self) -> None:
        """Turn the loop until :meth:`stop`: the turn that sees the request is the last."""
        self._check_closed()
        try:
            while True:
                self._run_once()
                if self._stopping:
                    break
        finally:
            self._stopping = False

    def stop(self) -> None:
        """End :meth:`run_forever` after the current turn (from any thread)."""
        self._stopping = True
        self._wake()

    def _run_once(self) -> None:
        scheduled = self._scheduled
        while scheduled and scheduled[0]._cancelled:
            heapq.heappop(scheduled)
        if self._ready or self._stopping:
            timeout: float | None = 0.0
        elif scheduled:
            timeout = min(max(0.0, scheduled[0]._when - self.time()), _MAX_SELECT_TIMEOUT_S)
        else:
            timeout = None
        for key, mask in self._selector.select(timeout):
            if key.fd == self._wake_r:
                self._read_wakeups()
                continue
            reader, writer = key.data
            if mask & selectors.EVENT_READ and reader is not None:
                self._ready.append(reader)
            if mask & selectors.EVENT_WRITE and writer is not None:
                self._ready.append(writer)
        end = self.time() + self._clock_resolution
        while scheduled and scheduled[0]._when < end:
            self._ready.append(heapq.heappop(scheduled))
        for _ in range(len(self._ready)):
            handle = self._ready.popleft()
            if not handle._cancelled:
                handle._run()

    def _wake(self) -> None:
        with self._wake_lock:  # not after close: the descriptor number may be reused
            if self._closed:
                return
            with contextlib.suppress(OSError):  # a full pipe: the loop wakes anyway
                os.write(self._wake_w, b"\0")

    def _read_wakeups(self) -> None:
        while True:
            try:
                data = os.read(self._wake_r, 4096)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                return
            for signum in data:  # set_wakeup_fd writes signal numbers; _wake writes zeros
                handler = self._signal_handlers.get(signum) if signum else None
                if handler is not None:
                    self._ready.append(Handle(handler._callback, handler._args))

    # -- closing ---------------------------------------------------------------------------

    def is_closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Drop pending calls, restore signal handlers, release the descriptors; idempotent.
        Only on the loop's thread, when it no longer runs."""
        if self._closed:
            return
        if threading.current_thread() is threading.main_thread():
            for signum in list(self._signal_handlers):
                self.remove_signal_handler(signum)
        with self._wake_lock:
            self._closed = True
            self._ready.clear()
            self._scheduled.clear()
            self._selector.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _check_closed(self) -> None:
        if self._closed:
            raise RuntimeError("Event loop is closed")


def _ignore_signal(signum: int, frame: object) -> None:
    """The Python-level handler of a loop's signal: its number reaches the loop through the
    wake-up fd; nothing else happens in the interrupted code."""
