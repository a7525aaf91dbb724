"""Image locking compatible with QEMU 7.2 (block/file-posix.c), so that kvmpy and QEMU (or
two kvmpy processes) do not write one qcow2 image at the same time.

QEMU takes shared open-file-description locks on single bytes: ``100 + bit`` for each
permission it holds and ``200 + bit`` for each it does not share with others, and before
that tests whether another process's bytes conflict.  A writer holds ``write`` and ``resize``,
a reader ``consistent read``; both refuse to share ``write`` and ``resize`` (as QEMU's
``-drive`` does without ``force-share``).  The locks go away with the descriptor.
"""

from __future__ import annotations

import errno
import fcntl
import struct

from kvmpy.errors import ConfigError

PERM_BASE = 100
SHARED_BASE = 200
CONSISTENT_READ, WRITE, RESIZE = 0, 1, 3
NAMES = {CONSISTENT_READ: "consistent read", WRITE: "write", 2: "write unchanged",
         RESIZE: "resize"}
_FLOCK = struct.Struct("hhxxxxqqixxxx")  # struct flock on 64-bit Linux


def _conflicts(fd: int, byte: int) -> bool:
    """Whether another open file description holds a lock on ``byte``."""
    probe = _FLOCK.pack(fcntl.F_WRLCK, 0, byte, 1, 0)
    result = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, probe)
    return bool(_FLOCK.unpack(result)[0] != fcntl.F_UNLCK)


def lock_image(fd: int, write: bool, force_share: bool = False) -> None:
    """Lock the image open as ``fd`` for reading or writing; a conflict is QEMU's error.
    ``force_share`` (a reader's ``force-share=on``) lets others write."""
    held = (WRITE, RESIZE) if write else (CONSISTENT_READ,)
    unshared: tuple[int, ...] = () if force_share else (WRITE, RESIZE)
    byte = 0
    try:
        for bit in held:
            if _conflicts(fd, SHARED_BASE + bit):
                raise ConfigError(f'Failed to get "{NAMES[bit]}" lock')
        for bit in unshared:
            if _conflicts(fd, PERM_BASE + bit):
                raise ConfigError(f'Failed to get shared "{NAMES[bit]}" lock')
        for byte in [PERM_BASE + b for b in held] + [SHARED_BASE + b for b in unshared]:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(fcntl.F_RDLCK, 0, byte, 1, 0))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            raise ConfigError(f"Failed to lock byte {byte}") from exc
        # No OFD locks here (an old kernel, some network file systems): QEMU goes on too.
