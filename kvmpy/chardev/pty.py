"""``-chardev pty``: a new pseudo-terminal; its name is printed as QEMU does.

``char device redirected to /dev/pts/N (label ID)`` goes to stderr at open.  kvmpy keeps the
terminal side open itself, so the pty stays valid while no one is attached (no EIO/hang-up
polling) and a program can attach, leave and come back; output written while no one reads is
kept by the kernel up to its buffer size and the rest is dropped, so the guest never blocks.
"""

from __future__ import annotations

import contextlib
import os
import tty

from kvmpy.chardev.common import READ_CHUNK, Backend, os_error_text
from kvmpy.errors import ConfigError
from kvmpy.log import stderr_line
from kvmpy.qom import register_type


@register_type("chardev-pty", "chardev", description="a new pseudo-terminal")
class PtyChardev(Backend):
    backend = "pty"

    def __init__(self) -> None:
        super().__init__()
        self._master: int | None = None
        self._slave: int | None = None
        self.path = ""
        self.label = ""
        """The name shown in the ``redirected`` line: the chardev id or ``serial0``."""

    def open(self) -> None:
        try:
            master, slave = os.openpty()
        except OSError as exc:
            raise ConfigError(f"Failed to create PTY: {os_error_text(exc)}") from exc
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self.path = os.ttyname(slave)
        self.open_logfile()
        label = self.label or self.id
        stderr_line(f"char device redirected to {self.path} (label {label})")

    def close(self) -> None:
        self.stop_watch()
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None
        self.close_logfile()

    def write(self, data: bytes) -> int:
        if self._master is None:
            return 0
        self.log_output(data)
        # Buffer full means no one is reading: drop, as QEMU does while disconnected.
        with contextlib.suppress(OSError):
            os.write(self._master, data)
        return len(data)

    def fileno(self) -> int | None:
        return self._master

    def on_readable(self) -> None:
        if self._master is None:
            return
        try:
            data = os.read(self._master, READ_CHUNK)
        except OSError:
            return
        if data:
            self.deliver(data)

    @property
    def filename(self) -> str:
        return f"pty:{self.path}"
