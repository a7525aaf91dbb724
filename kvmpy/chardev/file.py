"""``-chardev file,path=OUT[,input-path=IN][,append=on]``: output to a file, as QEMU.

The output file is created with mode 0666 (less the umask) and truncated unless ``append=on``.
An ``input-path`` file is read once to its end and delivered as input.
"""

from __future__ import annotations

import os

from kvmpy.chardev.common import FdBackend, os_error_text
from kvmpy.errors import ConfigError
from kvmpy.qom import Property, register_type


@register_type("chardev-file", "chardev", description="output to a file")
class FileChardev(FdBackend):
    backend = "file"

    path = Property(str, "", "output file")
    input_path = Property(str, "", "input file")
    append = Property(bool, False, "append to the output file instead of truncating it")

    def open(self) -> None:
        if not self.path:
            raise ConfigError("chardev: file: no filename given")
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if self.append else os.O_TRUNC)
        self._out = self._open(self.path, flags)
        if self.input_path:
            self._in = self._open(self.input_path, os.O_RDONLY)
        self.open_logfile()

    @staticmethod
    def _open(path: str, flags: int) -> int:
        try:
            return os.open(path, flags | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise ConfigError(f"Could not open '{path}': {os_error_text(exc)}") from exc

    def close(self) -> None:
        self.stop_watch()
        for fd in (self._out, self._in):
            if fd is not None:
                os.close(fd)
        self._out = self._in = None
        self.close_logfile()

    def _end_of_input(self) -> None:
        if self._in is not None:
            os.close(self._in)
        self._in = None
