"""Opening the host files a VM is given (kernel, initrd, firmware, device tree, drives).

Two promises. Opening never blocks: ``open(2)`` of a FIFO waits for a writer, and QEMU 7.2
waits with it; kvmpy refuses FIFOs, sockets and directories at once. And the size is known
before anything is read, measured as QEMU measures it (``get_image_size`` in hw/core/loader.c,
``raw_getlength`` in block/file-posix.c): ``st_size`` for a regular file, ``lseek(SEEK_END)``
for a device, so ``/dev/zero`` and ``/dev/null`` are 0 bytes long and a disk is its full size.
Callers read at most that many bytes.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

__all__ = ["HostFile", "NotAFileError", "open_host_file"]


class NotAFileError(OSError):
    """A directory, FIFO or socket where a file or a device was expected."""


@dataclass(frozen=True)
class HostFile:
    """An open descriptor (blocking, close-on-exec) and what it holds."""

    fd: int
    size: int
    """Bytes, as QEMU measures them (see the module's docstring)."""
    kind: str
    """``file``, ``block device`` or ``character device``."""


def _refusal(mode: int) -> tuple[int, str] | None:
    """(errno, strerror) when ``mode`` is neither a regular file nor a device."""
    if stat.S_ISDIR(mode):
        return errno.EISDIR, "Is a directory"
    if stat.S_ISFIFO(mode):
        return errno.EINVAL, "Is a FIFO"
    if stat.S_ISSOCK(mode):
        return errno.EINVAL, "Is a socket"
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode) or stat.S_ISCHR(mode)):
        return errno.EINVAL, "Not a file or a device"
    return None


def open_host_file(path: str, flags: int = os.O_RDONLY) -> HostFile:
    """Open ``path`` with ``flags`` (``os.O_RDONLY``, ``os.O_RDWR``) and measure it.

    Raises :class:`NotAFileError` for a directory, FIFO or socket, and the plain ``OSError`` of
    ``open(2)`` or ``lseek(2)`` otherwise (ENOENT, EACCES, ESPIPE for a terminal).
    """
    # O_NONBLOCK only for the open itself: a FIFO would otherwise wait here for a writer.
    try:
        fd = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC)
    except IsADirectoryError:  # opened for writing
        raise NotAFileError(errno.EISDIR, "Is a directory", path) from None
    try:
        st = os.fstat(fd)
        mode = st.st_mode
        refusal = _refusal(mode)
        if refusal is not None:
            raise NotAFileError(*refusal, path)
        if stat.S_ISREG(mode):
            size, kind = st.st_size, "file"
        else:
            size = os.lseek(fd, 0, os.SEEK_END)
            os.lseek(fd, 0, os.SEEK_SET)
            kind = "block device" if stat.S_ISBLK(mode) else "character device"
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return HostFile(fd, size, kind)
