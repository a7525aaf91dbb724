"""What every kvmpy backend shares: QEMU's ``logfile``, ``info chardev`` names, main-loop wiring.

Backends whose input descriptor changes while they run (a socket server between clients, stdin
at end of file) register with the main loop themselves: the System calls ``attach_loop(host)``
and the backend keeps exactly one reader registered for its current ``fileno()``.
"""

from __future__ import annotations

import errno
import os
import select
from collections.abc import Callable
from typing import IO, Any, ClassVar, Protocol

from kvmpy.chardev.base import Chardev
from kvmpy.errors import ConfigError
from kvmpy.qom import Property

READ_CHUNK = 4096


class LoopHost(Protocol):
    """The part of the System a backend needs: readers on the main loop."""

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None: ...

    def remove_reader(self, fd: int) -> object: ...


def os_error_text(exc: OSError) -> str:
    return exc.strerror or os.strerror(exc.errno or errno.EIO)


def write_all(fd: int, data: bytes) -> int:
    """Write everything to a (possibly non-blocking) descriptor; returns bytes written."""
    view = memoryview(data)
    done = 0
    while done < len(view):
        try:
            done += os.write(fd, view[done:])
        except BlockingIOError:
            poller = select.poll()  # not select(): descriptors may be numbered past 1023
            poller.register(fd, select.POLLOUT)
            poller.poll(1000)
        except InterruptedError:
            continue
    return done


class Backend(Chardev):
    """Base of kvmpy's backends: ``backend`` is the ``-chardev`` name (``socket``, ``stdio``)."""

    backend: ClassVar[str]
    logappend = Property(bool, False, "append to the log file instead of truncating it")

    def __init__(self) -> None:
        super().__init__()
        self._host: LoopHost | None = None
        self._watched: int | None = None
        self._log: IO[Any] | None = None
        self.option = ""
        """The command-line option this backend came from, for messages (``-serial pty``)."""

    # -- main loop ------------------------------------------------------------------------

    def attach_loop(self, host: LoopHost) -> None:
        """Called by the System when the main loop starts: watch ``fileno()`` from now on."""
        self._host = host
        self._watched = None
        self.update_watch()

    def update_watch(self) -> None:
        """Re-register the main-loop reader after ``fileno()`` changed (or went away)."""
        fd = self.fileno()
        if fd == self._watched or self._host is None:
            return
        if self._watched is not None:
            self._host.remove_reader(self._watched)
            self._watched = None
        if fd is None:
            return
        try:
            self._host.add_reader(fd, self.on_readable)
        except PermissionError:
            # epoll refuses regular files and /dev/null (``kvmpy < input.txt``): they are
            # always readable, so read them to the end now; the frontend buffers the input.
            while self.fileno() == fd:
                self.on_readable()
            return
        self._watched = fd

    def stop_watch(self) -> None:
        if self._watched is not None and self._host is not None:
            self._host.remove_reader(self._watched)
        self._watched = None

    # -- logfile --------------------------------------------------------------------------

    def open_logfile(self) -> None:
        if not self.logfile:
            return
        mode = "ab" if self.logappend else "wb"
        try:
            self._log = open(self.logfile, mode, buffering=0)  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise ConfigError(f"Could not open '{self.logfile}': {os_error_text(exc)}") from exc

    def log_output(self, data: bytes) -> None:
        if self._log is not None:
            try:
                self._log.write(data)
            except OSError:
                self._log = None

    def close_logfile(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- QEMU's ``info chardev`` ---------------------------------------------------------

    @property
    def filename(self) -> str:
        """What ``info chardev`` shows after the label (``stdio``, ``pty:/dev/pts/3``)."""
        return self.backend


class FdBackend(Backend):
    """A backend over one input and one output file descriptor (stdio, file)."""

    def __init__(self) -> None:
        super().__init__()
        self._in: int | None = None
        self._out: int | None = None

    def write(self, data: bytes) -> int:
        if self._out is None:
            return 0
        self.log_output(data)
        try:
            return write_all(self._out, data)
        except OSError:
            return 0

    def fileno(self) -> int | None:
        return self._in

    def on_readable(self) -> None:
        if self._in is None:
            return
        try:
            data = os.read(self._in, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            # End of input: stop polling, keep writing output.
            self.stop_watch()
            self._end_of_input()
            return
        self.deliver(data)

    def _end_of_input(self) -> None:
        """The input descriptor reached its end; by default it is not ours to close."""
        self._in = None
