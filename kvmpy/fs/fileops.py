"""9P2000.L handlers for opening, reading and writing files, directories and locks."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
from collections.abc import Callable

from kvmpy.fs import hostio
from kvmpy.fs import protocol as p
from kvmpy.fs.core import DIR, FILE, PATH, U32, XATTR_CREATE, XATTR_READ, ServerCore
from kvmpy.fs.local import is_metadata_name
from kvmpy.fs.nodes import fail

# Guest open flags passed to the host (QEMU get_dotl_openflags drops O_CREAT, O_NOCTTY,
# O_ASYNC, O_DIRECT; O_NOATIME is dropped too because it needs file ownership).
_OPEN_FLAG_MAP = (
    (p.DOTL_TRUNC, os.O_TRUNC), (p.DOTL_APPEND, os.O_APPEND), (p.DOTL_DSYNC, os.O_DSYNC),
    (p.DOTL_DIRECTORY, os.O_DIRECTORY), (p.DOTL_SYNC, os.O_SYNC),
    (p.DOTL_NONBLOCK, os.O_NONBLOCK))
_WRITE_FLAGS = p.DOTL_ACCMODE | p.DOTL_TRUNC | p.DOTL_APPEND
_DT_TO_QT = {4: p.QTDIR, 10: p.QTSYMLINK}       # DT_DIR, DT_LNK
_READ_HEADER = struct.Struct("<IBHI")
_TREAD = struct.Struct("<IQI")
_TREAD_SIZE = p.HEADER_SIZE + _TREAD.size
"""size[4] type[1] tag[2] fid[4] offset[8] count[4]."""
_LOCK_TYPES = {p.LOCK_TYPE_RDLCK: fcntl.F_RDLCK, p.LOCK_TYPE_WRLCK: fcntl.F_WRLCK,
               p.LOCK_TYPE_UNLCK: fcntl.F_UNLCK}
_FLOCK = struct.Struct("hhqqi4x")                  # struct flock (Linux, 64-bit)


class FileOps(ServerCore):
    """Tlopen, Tlcreate, Tread, Twrite, Tfsync, Treaddir, Tlock, Tgetlock."""

    def _open_flags(self, flags: int) -> int:
        host = flags & p.DOTL_ACCMODE
        if host == 3:
            raise fail(errno.EINVAL)
        for dotl, flag in _OPEN_FLAG_MAP:
            if flags & dotl:
                host |= flag
        return host

    def _lopen(self, tag: int, r: p.Reader, room: int) -> bytes:
        fid = self._fid(r.u32())
        flags = r.u32()
        if fid.kind != PATH:
            raise fail(errno.EINVAL)
        if self.fsdev.readonly and flags & _WRITE_FLAGS:
            raise fail(errno.EROFS)
        host_flags = self._open_flags(flags)
        self.nodes.charge()
        fd = self.local.open(fid.node, host_flags)
        self.nodes.opened()
        fid.fd = fd
        st = os.fstat(fd)
        fid.kind = DIR if stat.S_ISDIR(st.st_mode) else FILE
        body = self._node_qid(fid.node) + U32.pack(self._iounit(st))
        return p.message(p.TLOPEN + 1, tag, body)

    def _lcreate(self, tag: int, r: p.Reader, room: int) -> bytes:
        fid = self._fid(r.u32())
        name = r.string()
        flags = r.u32()
        mode = r.u32()
        gid = r.u32()
        self._check_create_name(name)
        if fid.kind != PATH:
            raise fail(errno.EINVAL)
        host_flags = self._open_flags(flags) & ~os.O_DIRECTORY
        self.nodes.charge(2)
        pfd, fd = self.local.create(fid.node, name, host_flags, mode, fid.uid, gid)
        node = self.nodes.new(pfd, fid.node, name)
        node.refs += 1
        self.nodes.unref(fid.node)
        fid.node = node
        fid.fd = fd
        self.nodes.opened()
        fid.kind = FILE
        body = self._node_qid(node) + U32.pack(self._iounit(os.fstat(fd)))
        return p.message(p.TLCREATE + 1, tag, body)

    def _read(self, tag: int, r: p.Reader, room: int) -> bytes:
        fid = self._fid(r.u32())
        offset = r.u64()
        count = r.u32()
        limit = min(count, self._msize - p.READ_HEADER, room - p.READ_HEADER)
        limit = max(limit, 0)
        if fid.kind == FILE:
            if offset >= 1 << 63:
                raise fail(errno.EINVAL)
            view = self._view
            n = os.preadv(fid.fd, [view[p.READ_HEADER:p.READ_HEADER + limit]], offset)
            _READ_HEADER.pack_into(self._buf, 0, p.READ_HEADER + n, p.TREAD + 1, tag, n)
            return bytes(view[:p.READ_HEADER + n])
        if fid.kind == XATTR_READ:
            data = bytes(fid.xattr[offset:offset + limit]) if offset < len(fid.xattr) else b""
            return p.message(p.TREAD + 1, tag, U32.pack(len(data)) + data)
        if fid.kind == DIR:
            raise fail(errno.EISDIR)
        raise fail(errno.EINVAL)

    def read_direct(self, request: bytes | memoryview, room: int,
                    into: Callable[[int], list[memoryview]]) -> bytes | None:
        """A Tread of an open file answered without a copy: the data goes straight into the
        buffers ``into(limit)`` gives (the guest's, after the reply's header); returns the
        11-byte Rread header.  None for anything else, or when something is wrong with the
        request: :meth:`handle` then answers it, errors included."""
        try:
            if len(request) < _TREAD_SIZE or request[4] != p.TREAD:
                return None
            size, _, tag = p.parse_header(request)
            if not _TREAD_SIZE <= size <= len(request):
                return None
            fid_num, offset, count = _TREAD.unpack_from(request, p.HEADER_SIZE)
            fid = self.fids.get(fid_num)
            if fid is None or fid.kind != FILE or offset >= 1 << 63:
                return None
            self.nodes.trim()
            self.nodes.touch(fid.node)
            limit = max(0, min(count, self._msize - p.READ_HEADER, room - p.READ_HEADER))
            n = os.preadv(fid.fd, into(limit), offset) if limit else 0
            return _READ_HEADER.pack(p.READ_HEADER + n, p.TREAD + 1, tag, n)
        except Exception:  # handle() answers it, with the error it finds
            return None

    def _write(self, tag: int, r: p.Reader, room: int) -> bytes:
        fid = self._fid(r.u32())
        offset = r.u64()
        count = r.u32()
        data = r.raw(count)
        if fid.kind == FILE:
            if offset >= 1 << 63:
                raise fail(errno.EINVAL)
            n = os.pwrite(fid.fd, data, offset)
            if self.fsdev.writeout == "immediate" and n:
                hostio.sync_range(fid.fd, offset, n)
            return p.message(p.TWRITE + 1, tag, U32.pack(n))
        if fid.kind == XATTR_CREATE:
            # QEMU v9fs_xattr_write: bytes go at ``offset`` within the declared size.
            if offset > fid.xattr_size:
                raise fail(errno.ENOSPC)
            n = min(count, fid.xattr_size - offset)
            fid.xattr[offset:offset + n] = data[:n]
            fid.xattr_copied += n
            return p.message(p.TWRITE + 1, tag, U32.pack(n))
        if fid.kind == DIR:
            raise fail(errno.EISDIR)
        raise fail(errno.EINVAL)

    def _fsync(self, tag: int, r: p.Reader, room: int) -> bytes:
        fid = self._fid(r.u32())
        datasync = r.u32()
        if fid.fd < 0:
            raise fail(errno.EBADF)
        if datasync:
            os.fdatasync(fid.fd)
        else:
            os.fsync(fid.fd)
        return p.message(p.TFSYNC + 1, tag)

    def _readdir(self, tag: int, r: p.Reader, room: int) -> bytes:
        fid = self._fid(r.u32())
        offset = r.u64()
        count = r.u32()
        if fid.kind != DIR:
            raise fail(errno.EINVAL)
        if offset >= 1 << 63:
            raise fail(errno.EINVAL)
        limit = max(0, min(count, self._msize - p.READ_HEADER, room - p.READ_HEADER))
        hide = self.local.mapped_file
        mapped = self.local.mapped
        root_dev = self.local.root_dev
        at_root = fid.node is self.root
        parts: list[bytes] = []
        used = 0
        pos = offset
        full = False
        while not full:
            entries = self._dirs.read(fid.fd, pos)
            if not entries or entries[-1][1] == pos:
                break
            for ino, off, dtype, name in entries:
                size = 24 + len(name)
                if used + size > limit:
                    full = True
                    break
                pos = off
                if hide and is_metadata_name(name):
                    continue
                if mapped:
                    dtype = hostio.DT_UNKNOWN
                if at_root and name == b"..":
                    ino = self.root.ino           # not the inode of the share's parent
                qid = p.QID.pack(_DT_TO_QT.get(dtype, 0), 0,
                                  self.nodes.qid_path(root_dev, ino))
                parts.append(qid + struct.pack("<QBH", off, dtype, len(name)) + name)
                used += size
        data = b"".join(parts)
        return p.message(p.TREADDIR + 1, tag, U32.pack(len(data)) + data)

    def _lock(self, tag: int, r: p.Reader, room: int) -> bytes:
        """Open-file-description locks on the fid's host fd: each open fid is its own lock
        owner, so guest processes exclude each other and host processes; never blocks (a
        conflict answers BLOCKED and the Linux client retries)."""
        fid = self._fid(r.u32())
        ltype, _flags, start, length = r.u8(), r.u32(), r.u64(), r.u64()
        r.u32()
        r.string()
        if fid.kind != FILE:
            raise fail(errno.EBADF)
        htype = _LOCK_TYPES.get(ltype)
        if htype is None or start >= 1 << 63 or length >= 1 << 63:
            return p.message(p.TLOCK + 1, tag, bytes([p.LOCK_ERROR]))
        try:
            fcntl.fcntl(fid.fd, fcntl.F_OFD_SETLK, _FLOCK.pack(htype, os.SEEK_SET, start,
                                                                length, 0))
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return p.message(p.TLOCK + 1, tag, bytes([p.LOCK_BLOCKED]))
            raise
        return p.message(p.TLOCK + 1, tag, bytes([p.LOCK_SUCCESS]))

    def _getlock(self, tag: int, r: p.Reader, room: int) -> bytes:
        fid = self._fid(r.u32())
        ltype, start, length, proc_id = r.u8(), r.u64(), r.u64(), r.u32()
        client_id = r.string()
        if fid.kind != FILE:
            raise fail(errno.EBADF)
        htype = _LOCK_TYPES.get(ltype)
        if htype is None or htype == fcntl.F_UNLCK or start >= 1 << 63 or length >= 1 << 63:
            raise fail(errno.EINVAL)
        raw = fcntl.fcntl(fid.fd, fcntl.F_OFD_GETLK,
                          _FLOCK.pack(htype, os.SEEK_SET, start, length, 0))
        rtype, _whence, rstart, rlen, rpid = _FLOCK.unpack(raw)
        back = {fcntl.F_RDLCK: p.LOCK_TYPE_RDLCK, fcntl.F_WRLCK: p.LOCK_TYPE_WRLCK}
        if rtype == fcntl.F_UNLCK:
            body = struct.pack("<BQQI", p.LOCK_TYPE_UNLCK, start, length, proc_id)
        else:
            body = struct.pack("<BQQI", back.get(rtype, p.LOCK_TYPE_UNLCK), rstart, rlen,
                               rpid & 0xFFFFFFFF)
        return p.message(p.TGETLOCK + 1, tag, body + p.pack_string(client_id))
