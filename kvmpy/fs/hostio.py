"""Thin wrappers of the Linux calls Python's ``os`` lacks; each raises ``OSError``.

``openat2`` (Linux 5.6) confines a lookup beneath a directory fd; ``getdents64`` gives the
directory offsets (``d_off``) that stay valid across calls; ``fchownat(AT_EMPTY_PATH)`` and
``fstatfs`` work on ``O_PATH`` descriptors.  They decide nothing.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
from typing import NoReturn

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

SYS_OPENAT2 = 437                         # the same number on every architecture
_SYS_GETDENTS64 = {"x86_64": 217, "aarch64": 61, "riscv64": 61, "ppc64le": 202,
                   "s390x": 220, "loongarch64": 61}
SYS_GETDENTS64 = _SYS_GETDENTS64.get(platform.machine(), -1)

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
AT_EMPTY_PATH = 0x1000
AT_SYMLINK_NOFOLLOW = 0x100

DT_UNKNOWN = 0


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def _raise(name: str) -> NoReturn:
    err = ctypes.get_errno()
    raise OSError(err, f"{name}: {os.strerror(err)}")


def _probe_openat2() -> bool:
    """Whether the kernel (and any seccomp filter) lets openat2 through."""
    how = _OpenHow(os.O_PATH | os.O_CLOEXEC, 0, RESOLVE_BENEATH)
    fd = int(_syscall(SYS_OPENAT2, -100, b".", ctypes.byref(how), ctypes.sizeof(how)))
    if fd < 0:
        return False
    os.close(fd)
    return True


HAVE_OPENAT2 = _probe_openat2()


def openat2(dirfd: int, name: bytes, flags: int, mode: int = 0,
            resolve: int = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) -> int:
    """``openat2(dirfd, name, {flags, mode, resolve})``; on a kernel without it, ``openat``
    with ``O_NOFOLLOW`` (the callers pass single, checked path components)."""
    if HAVE_OPENAT2:
        how = _OpenHow(flags | os.O_CLOEXEC, mode if flags & (os.O_CREAT | os.O_TMPFILE) else 0,
                       resolve)
        fd = int(_syscall(SYS_OPENAT2, dirfd, name, ctypes.byref(how), ctypes.sizeof(how)))
        if fd < 0:
            _raise("openat2")
        return fd
    return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dirfd)


def fchown_empty(fd: int, uid: int, gid: int) -> None:
    """``fchownat(fd, "", uid, gid, AT_EMPTY_PATH)``: works on O_PATH fds and symlinks."""
    if _libc.fchownat(fd, b"", uid, gid, AT_EMPTY_PATH) != 0:
        _raise("fchownat")


SYNC_FILE_RANGE_WAIT_BEFORE = 1
SYNC_FILE_RANGE_WRITE = 2
SYNC_FILE_RANGE_WAIT_AFTER = 4
_libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64,
                                  ctypes.c_uint]


def sync_range(fd: int, offset: int, count: int) -> None:
    """Write ``count`` bytes at ``offset`` out to the device and wait (QEMU's
    writeout=immediate: sync_file_range with WAIT_BEFORE | WRITE | WAIT_AFTER)."""
    flags = SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER
    if _libc.sync_file_range(fd, offset, count, flags) != 0:
        _raise("sync_file_range")


class _Statfs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("f_bsize", ctypes.c_long),
                ("f_blocks", ctypes.c_ulong), ("f_bfree", ctypes.c_ulong),
                ("f_bavail", ctypes.c_ulong), ("f_files", ctypes.c_ulong),
                ("f_ffree", ctypes.c_ulong), ("f_fsid", ctypes.c_int * 2),
                ("f_namelen", ctypes.c_long), ("f_frsize", ctypes.c_long),
                ("f_flags", ctypes.c_long), ("f_spare", ctypes.c_long * 4)]


def fstatfs(fd: int) -> dict[str, int]:
    """``fstatfs(fd)`` as a dict of the ``struct statfs`` fields 9P needs."""
    buf = _Statfs()
    if _libc.fstatfs(fd, ctypes.byref(buf)) != 0:
        _raise("fstatfs")
    fsid = (buf.f_fsid[0] & 0xFFFFFFFF) | (buf.f_fsid[1] & 0xFFFFFFFF) << 32
    return {"type": buf.f_type & 0xFFFFFFFF, "bsize": buf.f_bsize, "blocks": buf.f_blocks,
            "bfree": buf.f_bfree, "bavail": buf.f_bavail, "files": buf.f_files,
            "ffree": buf.f_ffree, "fsid": fsid, "namelen": buf.f_namelen}


_DIRENT = struct.Struct("<QQHB")          # d_ino, d_off, d_reclen, d_type, then d_name


class DirReader:
    """Reads a directory fd with ``getdents64`` into one reusable buffer."""

    def __init__(self, size: int = 64 * 1024) -> None:
        self._buf = ctypes.create_string_buffer(size)
        self._size = size

    def read(self, fd: int, offset: int) -> list[tuple[int, int, int, bytes]]:
        """Entries ``(d_ino, d_off, d_type, name)`` from directory offset ``offset``;
        an empty list at the end.  ``d_off`` of an entry is where the next one starts."""
        if SYS_GETDENTS64 < 0:
            return _read_portable(fd, offset)
        os.lseek(fd, offset, os.SEEK_SET)
        n = int(_syscall(SYS_GETDENTS64, fd, self._buf, self._size))
        if n < 0:
            _raise("getdents64")
        raw = ctypes.string_at(self._buf, n)      # only the bytes the kernel filled
        out: list[tuple[int, int, int, bytes]] = []
        pos = 0
        while pos < n:
            ino, off, reclen, dtype = _DIRENT.unpack_from(raw, pos)
            name_end = raw.index(b"\0", pos + 19, pos + reclen)
            out.append((ino, off, dtype, raw[pos + 19:name_end]))
            pos += reclen
        return out


def _read_portable(fd: int, offset: int) -> list[tuple[int, int, int, bytes]]:
    """Fallback for an architecture without a known getdents64 number: offsets are indices
    into the listing, which is stable while the directory does not change."""
    with os.scandir(fd) as it:
        names = [(e.inode(), e.name) for e in it]
    entries: list[tuple[int, int, int, bytes]] = [(0, 1, 4, b"."), (0, 2, 4, b"..")]
    for i, (ino, name) in enumerate(names):
        entries.append((ino, i + 3, DT_UNKNOWN, os.fsencode(name)))
    return entries[offset:offset + 256]
