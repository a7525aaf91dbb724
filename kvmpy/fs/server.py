"""The 9P2000.L file server: one T-message in, one R-message out.

Replies follow QEMU 7.2's ``hw/9pfs/9p.c`` (error numbers, the read-only export's EROFS, the
partial-walk rule, Rlerror for everything unsupported) and Linux's ``net/9p`` client.
Errors are host errno values, which on Linux are the numbers the Linux client expects.

Qid paths: a file on the share's own device gets its inode number; a file on another device
mounted inside the share gets ``1 << 63 | prefix << 48 | (inode & (1 << 48) - 1)``, with one
15-bit prefix per (device, inode >> 48) pair seen, kept for the life of the server (QEMU's
``multidevs=remap`` suffix map, also for the default ``warn``, whose collisions kvmpy has
no reason to keep; ``multidevs=forbid`` answers ENODEV as QEMU).  Qid versions are 0.
Readdir entries carry the inode number from the directory (as QEMU does without remap).

Resources the guest controls are bounded: at most ``max_fids`` fids (EMFILE beyond, default
65536) and about ``max_host_fds`` host descriptors (default half of RLIMIT_NOFILE): past it,
the O_PATH fds of the least recently used walked files are closed and reopened on demand;
only when open files alone fill the budget does an open or walk fail (ENFILE).  Read and
readdir counts are clamped to msize and the reply room, xattr values to 64 KiB.  Nothing is
allocated from a size field the message does not back.
"""

from __future__ import annotations

from kvmpy.fs import protocol as p
from kvmpy.fs.core import DEFAULT_MAX_FIDS, DEFAULT_MAX_MSIZE
from kvmpy.fs.fileops import FileOps
from kvmpy.fs.fsdev import FsDev
from kvmpy.fs.metaops import MetaOps

__all__ = ["DEFAULT_MAX_FIDS", "DEFAULT_MAX_MSIZE", "Server"]


class Server(FileOps, MetaOps):
    """A 9P2000.L server for one export (see the module docstring).

    ``handle(request, reply_room)`` answers one T-message; ``reset()`` clunks every fid and
    forgets the msize (device reset); ``close()`` releases every host fd."""

    def __init__(self, fsdev: FsDev, max_msize: int = DEFAULT_MAX_MSIZE) -> None:
        super().__init__(fsdev, max_msize)
        self._handlers = {
            p.TVERSION: self._version, p.TATTACH: self._attach, p.TWALK: self._walk,
            p.TLOPEN: self._lopen, p.TLCREATE: self._lcreate, p.TREAD: self._read,
            p.TWRITE: self._write, p.TCLUNK: self._clunk, p.TREMOVE: self._remove,
            p.TGETATTR: self._getattr, p.TSETATTR: self._setattr, p.TREADDIR: self._readdir,
            p.TMKDIR: self._mkdir, p.TMKNOD: self._mknod, p.TSYMLINK: self._symlink,
            p.TREADLINK: self._readlink, p.TLINK: self._link, p.TRENAME: self._rename,
            p.TRENAMEAT: self._renameat, p.TUNLINKAT: self._unlinkat,
            p.TSTATFS: self._statfs, p.TFSYNC: self._fsync, p.TLOCK: self._lock,
            p.TGETLOCK: self._getlock, p.TXATTRWALK: self._xattrwalk,
            p.TXATTRCREATE: self._xattrcreate, p.TFLUSH: self._flush,
        }
