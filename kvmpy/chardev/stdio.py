"""``-chardev stdio``: the terminal kvmpy runs in, in raw mode, restored on every way out.

Raw mode is QEMU's (``qemu_chr_set_echo_stdio``): no echo, no line editing, no CR/LF input
translation, no flow control; output post-processing stays on so ``\\n`` still moves to column 0.
With ``signal=off`` (what ``mon:stdio`` and ``-nographic`` use) Ctrl-C is an ordinary byte for
the guest instead of SIGINT for kvmpy.

The saved terminal state is restored by :meth:`StdioChardev.close`, at interpreter exit
(``atexit``), and on SIGTERM/SIGHUP/SIGQUIT when nobody else handles them (the signal is then
re-raised with its default action, so the exit status still tells how the process ended).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import termios
import threading
from types import FrameType
from typing import Any

from kvmpy.chardev.common import FdBackend
from kvmpy.errors import ConfigError
from kvmpy.qom import Property, register_type

_saved: dict[int, list[Any]] = {}
_guard = threading.Lock()
_hooks_installed = False
_in_use = False
_FATAL_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def restore_terminals() -> None:
    """Put every terminal kvmpy changed back the way it found it (idempotent)."""
    with _guard:
        items = list(_saved.items())
        _saved.clear()
    for fd, attrs in items:
        with contextlib.suppress(OSError, termios.error):
            termios.tcsetattr(fd, termios.TCSADRAIN, attrs)


def _restore_and_reraise(signum: int, frame: FrameType | None) -> None:
    restore_terminals()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(restore_terminals)
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in _FATAL_SIGNALS:
        if signal.getsignal(signum) == signal.SIG_DFL:
            signal.signal(signum, _restore_and_reraise)


def make_raw(fd: int, allow_signals: bool) -> None:
    """QEMU's raw mode for a terminal; the previous state is saved for restore_terminals()."""
    attrs = termios.tcgetattr(fd)
    with _guard:
        _saved.setdefault(fd, [list(a) if isinstance(a, list) else a for a in attrs])
    _install_hooks()
    iflag, oflag, cflag, lflag = attrs[0], attrs[1], attrs[2], attrs[3]
    iflag &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
               | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON)
    oflag |= termios.OPOST
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.IEXTEN)
    if not allow_signals:
        lflag &= ~termios.ISIG
    cflag &= ~(termios.CSIZE | termios.PARENB)
    cflag |= termios.CS8
    cc = list(attrs[6])
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, attrs[4], attrs[5], cc])


@register_type("chardev-stdio", "chardev", description="standard input and output")
class StdioChardev(FdBackend):
    backend = "stdio"

    signal = Property(bool, True, "deliver signals such as SIGINT from ^C to kvmpy")

    def __init__(self, infd: int | None = None, outfd: int | None = None) -> None:
        super().__init__()
        self._infd_arg = infd
        self._outfd_arg = outfd
        self._raw_fd: int | None = None

    def open(self) -> None:
        global _in_use
        with _guard:
            if _in_use:
                raise ConfigError("cannot use stdio by multiple character devices")
            _in_use = True
        self._in = self._infd_arg if self._infd_arg is not None else sys.stdin.fileno()
        self._out = self._outfd_arg if self._outfd_arg is not None else sys.stdout.fileno()
        if os.isatty(self._in):
            make_raw(self._in, allow_signals=self.signal)
            self._raw_fd = self._in
        self.open_logfile()

    def close(self) -> None:
        global _in_use
        if self._out is None:
            return
        self.stop_watch()
        if self._raw_fd is not None:
            with _guard:
                attrs = _saved.pop(self._raw_fd, None)
            if attrs is not None:
                with contextlib.suppress(OSError, termios.error):
                    termios.tcsetattr(self._raw_fd, termios.TCSADRAIN, attrs)
            self._raw_fd = None
        self._in = self._out = None
        self.close_logfile()
        with _guard:
            _in_use = False

