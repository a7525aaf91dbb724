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

import errno
import fcntl
import os
import resource
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from kvmpy import log
from kvmpy.fs import hostio
from kvmpy.fs import protocol as p
from kvmpy.fs.fsdev import FsDev
from kvmpy.fs.local import XATTR_SIZE_MAX, Local, Node, is_metadata_name
from kvmpy.fs.nodes import NodeTable, fail

DEFAULT_MAX_MSIZE = 512 * 1024
DEFAULT_MAX_FIDS = 65536

# Kinds of fid
PATH, FILE, DIR, XATTR_READ, XATTR_CREATE = range(5)

# QEMU is_read_only_op: what a readonly=on export still answers.
_READ_ONLY_OPS = frozenset({
    p.TREADDIR, p.TSTATFS, p.TGETATTR, p.TXATTRWALK, p.TLOCK, p.TGETLOCK, p.TREADLINK,
    p.TVERSION, p.TLOPEN, p.TATTACH, p.TWALK, p.TCLUNK, p.TFSYNC, p.TREAD, p.TAUTH,
    p.TFLUSH})

# Guest open flags passed to the host (get_dotl_openflags drops O_CREAT, O_NOCTTY, O_ASYNC,
# O_DIRECT; O_NOATIME is dropped because it needs file ownership).
_OPEN_FLAG_MAP = (
    (p.DOTL_TRUNC, os.O_TRUNC), (p.DOTL_APPEND, os.O_APPEND), (p.DOTL_DSYNC, os.O_DSYNC),
    (p.DOTL_DIRECTORY, os.O_DIRECTORY), (p.DOTL_SYNC, os.O_SYNC),
    (p.DOTL_NONBLOCK, os.O_NONBLOCK))
_WRITE_FLAGS = p.DOTL_ACCMODE | p.DOTL_TRUNC | p.DOTL_APPEND

_DT_TO_QT = {4: p.QTDIR, 10: p.QTSYMLINK}       # DT_DIR, DT_LNK
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_READ_HEADER = struct.Struct("<IBHI")
_GETATTR = struct.Struct("<IIIQQQQQ" + "Q" * 10)
_STATFS = struct.Struct("<IIQQQQQQI")
_LOCK_TYPES = {p.LOCK_TYPE_RDLCK: fcntl.F_RDLCK, p.LOCK_TYPE_WRLCK: fcntl.F_WRLCK,
               p.LOCK_TYPE_UNLCK: fcntl.F_UNLCK}
_FLOCK = struct.Struct("hhqqi4x")                  # struct flock (Linux, 64-bit)


_fail = fail


@dataclass(eq=False)
class _Fid:
    node: Node
    uid: int
    kind: int = PATH
    fd: int = -1
    xattr: bytearray = field(default_factory=bytearray)
    xattr_name: bytes = b""
    xattr_flags: int = 0
    xattr_size: int = 0
    xattr_copied: int = 0


def _default_fd_budget() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 65536
    return max(64, soft // 2)


class Server:
    """A 9P2000.L server for one export (see the module docstring)."""

    def __init__(self, fsdev: FsDev, max_msize: int = DEFAULT_MAX_MSIZE) -> None:
        self.fsdev = fsdev
        self.max_msize = max(p.MIN_MSIZE, max_msize)
        self.max_fids = DEFAULT_MAX_FIDS
        self.local = Local(fsdev)
        root_st = os.fstat(self.local.root_fd)
        self.root = Node(self.local.root_fd, None, b"", refs=1, dev=root_st.st_dev,
                         ino=root_st.st_ino)
        self.nodes = NodeTable(self.root, _default_fd_budget(), fsdev.multidevs)
        self.msize = 0
        self.fids: dict[int, _Fid] = {}
        self._buf = bytearray(self.max_msize)
        self._view = memoryview(self._buf)
        self._dirs = hostio.DirReader()
        self._handlers: dict[int, Callable[[int, p.Reader, int], bytes]] = {
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

    # -- the interface -------------------------------------------------------------------

    def handle(self, request: bytes | memoryview, reply_room: int) -> bytes:
        """One whole T-message -> one whole R-message (see the module docstring)."""
        try:
            size, mtype, tag = p.parse_header(request)
        except p.ProtocolError:
            log.guest_error("9p: message shorter than its header")
            return p.lerror(p.NOTAG, errno.EINVAL)
        if size < p.HEADER_SIZE or size > len(request):
            log.guest_error(f"9p: message size {size} does not match its {len(request)} bytes")
            return p.lerror(tag, errno.EINVAL)
        handler = self._handlers.get(mtype)
        if handler is None:
            return p.lerror(tag, errno.EOPNOTSUPP)
        if self.fsdev.readonly and mtype not in _READ_ONLY_OPS:
            return p.lerror(tag, errno.EROFS)
        self.nodes.trim()
        try:
            reply = handler(tag, p.Reader(request, p.HEADER_SIZE, size), reply_room)
        except OSError as exc:
            return p.lerror(tag, exc.errno or errno.EIO)
        except p.ProtocolError:
            log.guest_error(f"9p: truncated message type {mtype}")
            return p.lerror(tag, errno.EINVAL)
        except (ValueError, OverflowError) as exc:
            log.guest_error(f"9p: bad argument in message type {mtype}: {exc}")
            return p.lerror(tag, errno.EINVAL)
        except Exception as exc:                # the guest must never crash the VMM
            log.guest_error(f"9p: message type {mtype} failed: {exc!r}")
            return p.lerror(tag, errno.EIO)
        if len(reply) > reply_room and len(reply) > 11:
            log.guest_error(f"9p: reply of {len(reply)} bytes exceeds {reply_room} posted")
            return p.lerror(tag, errno.ENOBUFS)
        return reply

    def reset(self) -> None:
        """Device reset: every fid clunked, msize back to unset."""
        for fid in list(self.fids.values()):
            self._release(fid)
        self.fids.clear()
        self.msize = 0

    def close(self) -> None:
        """Release every host fd."""
        self.reset()
        self.local.close()

    # -- helpers -------------------------------------------------------------------------

    @property
    def host_fds(self) -> int:
        """Host fds held for the guest (nodes and open files; the share root not counted)."""
        return self.nodes.host_fds

    @property
    def max_host_fds(self) -> int:
        return self.nodes.max_host_fds

    @max_host_fds.setter
    def max_host_fds(self, value: int) -> None:
        self.nodes.max_host_fds = value

    @property
    def _msize(self) -> int:
        return self.msize or self.max_msize

    def _fid(self, num: int) -> _Fid:
        fid = self.fids.get(num)
        if fid is None:
            raise _fail(errno.ENOENT)
        self.nodes.touch(fid.node)
        return fid

    def _check_new_fid(self, num: int) -> None:
        if num in self.fids or num == p.NOFID:
            raise _fail(errno.EINVAL)
        if len(self.fids) >= self.max_fids:
            raise _fail(errno.EMFILE)

    def _release(self, fid: _Fid) -> None:
        if fid.fd >= 0:
            self.nodes.closed(fid.fd)
            fid.fd = -1
        self.nodes.unref(fid.node)

    def _qid(self, st: os.stat_result, mode: int) -> bytes:
        qtype = p.QTDIR if stat.S_ISDIR(mode) else p.QTSYMLINK if stat.S_ISLNK(mode) else 0
        return struct.pack("<BIQ", qtype, 0, self.nodes.qid_path(st.st_dev, st.st_ino))

    def _node_qid(self, node: Node) -> bytes:
        if self.local.mapped:
            attr = self.local.getattr(node)
            return self._qid(attr.st, attr.mode)
        st = os.fstat(node.fd)
        return self._qid(st, st.st_mode)

    def _iounit(self, st: os.stat_result) -> int:
        room = self._msize - p.IOHDRSZ
        blksize = st.st_blksize
        iounit = room - room % blksize if blksize > 0 else 0
        return iounit or room

    @staticmethod
    def _check_name(name: bytes, dots: int = errno.EEXIST) -> None:
        """QEMU name_is_illegal -> ENOENT; '.' and '..' -> ``dots``; NUL -> EINVAL."""
        if not name or b"/" in name:
            raise _fail(errno.ENOENT)
        if b"\0" in name:
            raise _fail(errno.EINVAL)
        if name in (b".", b".."):
            raise _fail(dots)

    def _check_create_name(self, name: bytes) -> None:
        self._check_name(name)
        if self.local.mapped_file and is_metadata_name(name):
            raise _fail(errno.EINVAL)

    # -- session -------------------------------------------------------------------------

    def _version(self, tag: int, r: p.Reader, room: int) -> bytes:
        msize = r.u32()
        version = r.string()
        self.reset()
        msize = min(msize, self.max_msize)
        if version != p.VERSION_L:
            # The one version kvmpy speaks; anything else is answered "unknown" (QEMU).
            return p.message(p.TVERSION + 1, tag, _U32.pack(msize) + p.pack_string(b"unknown"))
        if msize < p.MIN_MSIZE:
            raise _fail(errno.EMSGSIZE)
        self.msize = msize
        return p.message(p.TVERSION + 1, tag, _U32.pack(msize) + p.pack_string(p.VERSION_L))

    def _attach(self, tag: int, r: p.Reader, room: int) -> bytes:
        fidnum = r.u32()
        r.u32()                                     # afid: no authentication (QEMU)
        r.string()                                  # uname
        r.string()                                  # aname: the export is the share root
        uid = r.u32()
        self._check_new_fid(fidnum)
        qid = self._node_qid(self.root)
        self.root.refs += 1
        self.fids[fidnum] = _Fid(self.root, 0 if uid == p.NOFID else uid)
        return p.message(p.TATTACH + 1, tag, qid)

    def _flush(self, tag: int, r: p.Reader, room: int) -> bytes:
        r.u16()              # requests are answered in order, so the old tag is done
        return p.message(p.TFLUSH + 1, tag)

    # -- walking -------------------------------------------------------------------------

    def _walk(self, tag: int, r: p.Reader, room: int) -> bytes:
        fidnum = r.u32()
        newfid = r.u32()
        nwname = r.u16()
        if nwname > p.MAXWELEM:
            raise _fail(errno.EINVAL)
        names = [r.string() for _ in range(nwname)]
        for name in names:
            if not name or b"/" in name:
                raise _fail(errno.ENOENT)
            if b"\0" in name:
                raise _fail(errno.EINVAL)
        fid = self._fid(fidnum)
        if newfid != fidnum:
            self._check_new_fid(newfid)
        cur = fid.node
        cur.refs += 1
        qids: list[bytes] = []
        try:
            for name in names:
                if name == b"..":
                    nxt = cur.parent if cur.parent is not None else cur
                    nxt.refs += 1
                elif name == b".":
                    nxt = cur
                    nxt.refs += 1
                else:
                    self.nodes.charge()
                    fd = self.local.lookup(cur, name)
                    try:
                        st = os.fstat(fd)
                    except OSError:
                        os.close(fd)
                        raise
                    nxt = self.nodes.new(fd, cur, name, st)
                    nxt.refs += 1
                    if not self.local.mapped:          # the fast path: one fstat per name
                        try:
                            qids.append(self._qid(st, st.st_mode))
                        except OSError:
                            self.nodes.unref(nxt)
                            raise
                        self.nodes.unref(cur)
                        cur = nxt
                        continue
                try:
                    qids.append(self._node_qid(nxt))
                except OSError:
                    self.nodes.unref(nxt)
                    raise
                self.nodes.unref(cur)
                cur = nxt
        except OSError:
            if not qids:
                self.nodes.unref(cur)
                raise
        if len(qids) < nwname:
            self.nodes.unref(cur)
        elif newfid == fidnum:
            self.nodes.unref(fid.node)
            fid.node = cur
        else:
            self.fids[newfid] = _Fid(cur, fid.uid)
        body = struct.pack("<H", len(qids)) + b"".join(qids)
        return p.message(p.TWALK + 1, tag, body)

    # -- opening and I/O -----------------------------------------------------------------

    def _open_flags(self, flags: int) -> int:
        host = flags & p.DOTL_ACCMODE
        if host == 3:
            raise _fail(errno.EINVAL)
        for dotl, flag in _OPEN_FLAG_MAP:
            if flags & dotl:
                host |= flag
        return host

    def _lopen(self, tag: int, r: p.Reader, room: int) -> bytes:
        fid = self._fid(r.u32())
        flags = r.u32()
        if fid.kind != PATH:
            raise _fail(errno.EINVAL)
        if self.fsdev.readonly and flags & _WRITE_FLAGS:
            raise _fail(errno.EROFS)
        host_flags = self._open_flags(flags)
        self.nodes.charge()
        fd = self.local.open(fid.node, host_flags)
        self.nodes.opened()
        fid.fd = fd
        st = os.fstat(fd)
        fid.kind = DIR if stat.S_ISDIR(st.st_mode) else FILE
        body = self._node_qid(fid.node) + _U32.pack(self._iounit(st))
        return p.message(p.TLOPEN + 1, tag, body)

    def _lcreate(self, tag: int, r: p.Reader, room: int) -> bytes:
        fid = self._fid(r.u32())
        name = r.string()
        flags = r.u32()
        mode = r.u32()
        gid = r.u32()
        self._check_create_name(name)
        if fid.kind != PATH:
            raise _fail(errno.EINVAL)
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
        body = self._node_qid(node) + _U32.pack(self._iounit(os.fstat(fd)))
        return p.message(p.TLCREATE + 1, tag, body)

    def _read(self, tag: int, r: p.Reader, room: int) -> bytes:
        fid = self._fid(r.u32())
        offset = r.u64()
        count = r.u32()
        limit = min(count, self._msize - p.READ_HEADER, room - p.READ_HEADER)
        limit = max(limit, 0)
        if fid.kind == FILE:
            if offset >= 1 << 63:
                raise _fail(errno.EINVAL)
            view = self._view
            n = os.preadv(fid.fd, [view[p.READ_HEADER:p.READ_HEADER + limit]], offset)
            _READ_HEADER.pack_into(self._buf, 0, p.READ_HEADER + n, p.TREAD + 1, tag, n)
            return bytes(view[:p.READ_HEADER + n])
        if fid.kind == XATTR_READ:
            data = bytes(fid.xattr[offset:offset + limit]) if offset < len(fid.xattr) else b""
            return p.message(p.TREAD + 1, tag, _U32.pack(len(data)) + data)
        if fid.kind == DIR:
            raise _fail(errno.EISDIR)
        raise _fail(errno.EINVAL)

    def _write(self, tag: int, r: p.Reader, room: int) -> bytes:
        fid = self._fid(r.u32())
        offset = r.u64()
        count = r.u32()
        data = r.raw(count)
        if fid.kind == FILE:
            if offset >= 1 << 63:
                raise _fail(errno.EINVAL)
            n = os.pwrite(fid.fd, data, offset)
            if self.fsdev.writeout == "immediate":
                os.fdatasync(fid.fd)
            return p.message(p.TWRITE + 1, tag, _U32.pack(n))
        if fid.kind == XATTR_CREATE:
            # QEMU v9fs_xattr_write: bytes go at ``offset`` within the declared size.
            if offset > fid.xattr_size:
                raise _fail(errno.ENOSPC)
            n = min(count, fid.xattr_size - offset)
            fid.xattr[offset:offset + n] = data[:n]
            fid.xattr_copied += n
            return p.message(p.TWRITE + 1, tag, _U32.pack(n))
        if fid.kind == DIR:
            raise _fail(errno.EISDIR)
        raise _fail(errno.EINVAL)

    def _clunk(self, tag: int, r: p.Reader, room: int) -> bytes:
        num = r.u32()
        fid = self._fid(num)
        del self.fids[num]
        try:
            if fid.kind == XATTR_CREATE:
                self._commit_xattr(fid)
        finally:
            self._release(fid)
        return p.message(p.TCLUNK + 1, tag)

    def _remove(self, tag: int, r: p.Reader, room: int) -> bytes:
        num = r.u32()
        fid = self._fid(num)
        del self.fids[num]                    # clunked even when the remove fails (9P)
        try:
            dirfd, name = self.local.locate(fid.node)
            is_dir = stat.S_ISDIR(os.fstat(fid.node.fd).st_mode)
            self.local.unlink(dirfd, name, is_dir)
            if fid.node.parent is not None:
                self.nodes.unlinked(fid.node.parent, name)
        finally:
            self._release(fid)
        return p.message(p.TREMOVE + 1, tag)

    def _fsync(self, tag: int, r: p.Reader, room: int) -> bytes:
        fid = self._fid(r.u32())
        datasync = r.u32()
        if fid.fd < 0:
            raise _fail(errno.EBADF)
        if datasync:
            os.fdatasync(fid.fd)
        else:
            os.fsync(fid.fd)
        return p.message(p.TFSYNC + 1, tag)

    # -- attributes ----------------------------------------------------------------------

    def _getattr(self, tag: int, r: p.Reader, room: int) -> bytes:
        fid = self._fid(r.u32())
        r.u64()                                     # request_mask: all basic fields are sent
        node = fid.node
        attr = self.local.getattr(node)
        st = attr.st
        body = _GETATTR.pack(
            attr.mode, attr.uid, attr.gid, st.st_nlink, attr.rdev, st.st_size,
            self._iounit(st), st.st_blocks,
            *_timespec(st.st_atime_ns), *_timespec(st.st_mtime_ns), *_timespec(st.st_ctime_ns),
            0, 0, 0, 0)
        return p.message(p.TGETATTR + 1, tag,
                         _U64.pack(p.STATS_BASIC) + self._qid(st, attr.mode) + body)

    def _setattr(self, tag: int, r: p.Reader, room: int) -> bytes:
        fid = self._fid(r.u32())
        valid = r.u32()
        mode, uid, gid = r.u32(), r.u32(), r.u32()
        size = r.u64()
        atime_sec, atime_nsec, mtime_sec, mtime_nsec = r.u64(), r.u64(), r.u64(), r.u64()
        times: tuple[int | None, int | None] | None = None
        if valid & (p.ATTR_ATIME | p.ATTR_MTIME):
            atime = mtime = None
            if valid & p.ATTR_ATIME:
                atime = _ns(atime_sec, atime_nsec) if valid & p.ATTR_ATIME_SET else -1
            if valid & p.ATTR_MTIME:
                mtime = _ns(mtime_sec, mtime_nsec) if valid & p.ATTR_MTIME_SET else -1
            times = (atime, mtime)
        if valid & p.ATTR_SIZE and size >= 1 << 63:
            raise _fail(errno.EFBIG)
        self.local.setattr(
            fid.node,
            mode=mode if valid & p.ATTR_MODE else None,
            uid=uid if valid & p.ATTR_UID else None,
            gid=gid if valid & p.ATTR_GID else None,
            size=size if valid & p.ATTR_SIZE else None,
            times=times)
        return p.message(p.TSETATTR + 1, tag)

    def _statfs(self, tag: int, r: p.Reader, room: int) -> bytes:
        fid = self._fid(r.u32())
        sf = hostio.fstatfs(fid.node.fd)
        bsize = max(1, sf["bsize"])
        factor = max(1, (self._msize - p.IOHDRSZ) // bsize)     # QEMU v9fs_fill_statfs
        body = _STATFS.pack(sf["type"], (bsize * factor) & 0xFFFFFFFF,
                            sf["blocks"] // factor, sf["bfree"] // factor,
                            sf["bavail"] // factor, sf["files"], sf["ffree"], sf["fsid"],
                            sf["namelen"] & 0xFFFFFFFF)
        return p.message(p.TSTATFS + 1, tag, body)

    # -- directories ---------------------------------------------------------------------

    def _readdir(self, tag: int, r: p.Reader, room: int) -> bytes:
        fid = self._fid(r.u32())
        offset = r.u64()
        count = r.u32()
        if fid.kind != DIR:
            raise _fail(errno.EINVAL)
        if offset >= 1 << 63:
            raise _fail(errno.EINVAL)
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
                qid = struct.pack("<BIQ", _DT_TO_QT.get(dtype, 0), 0,
                                  self.nodes.qid_path(root_dev, ino))
                parts.append(qid + struct.pack("<QBH", off, dtype, len(name)) + name)
                used += size
        data = b"".join(parts)
        return p.message(p.TREADDIR + 1, tag, _U32.pack(len(data)) + data)

    def _created(self, tag: int, mtype: int, parent: Node, name: bytes, pfd: int) -> bytes:
        try:
            st = os.fstat(pfd)
            mode = self.local.getattr(Node(pfd, parent, name)).mode if self.local.mapped \
                else st.st_mode
            return p.message(mtype + 1, tag, self._qid(st, mode))
        finally:
            os.close(pfd)

    def _dir_fid(self, num: int) -> _Fid:
        fid = self._fid(num)
        if fid.kind in (XATTR_READ, XATTR_CREATE):
            raise _fail(errno.EINVAL)
        return fid

    def _mkdir(self, tag: int, r: p.Reader, room: int) -> bytes:
        fid = self._dir_fid(r.u32())
        name = r.string()
        mode = r.u32()
        gid = r.u32()
        self._check_create_name(name)
        self.nodes.charge()
        pfd = self.local.mkdir(fid.node, name, mode, fid.uid, gid)
        return self._created(tag, p.TMKDIR, fid.node, name, pfd)

    def _mknod(self, tag: int, r: p.Reader, room: int) -> bytes:
        fid = self._dir_fid(r.u32())
        name = r.string()
        mode, major, minor, gid = r.u32(), r.u32(), r.u32(), r.u32()
        self._check_create_name(name)
        self.nodes.charge()
        pfd = self.local.mknod(fid.node, name, mode, os.makedev(major, minor), fid.uid, gid)
        return self._created(tag, p.TMKNOD, fid.node, name, pfd)

    def _symlink(self, tag: int, r: p.Reader, room: int) -> bytes:
        fid = self._dir_fid(r.u32())
        name = r.string()
        target = r.string()
        gid = r.u32()
        self._check_create_name(name)
        if not target or b"\0" in target:
            raise _fail(errno.EINVAL if target else errno.ENOENT)
        self.nodes.charge()
        pfd = self.local.symlink(fid.node, name, target, fid.uid, gid)
        return self._created(tag, p.TSYMLINK, fid.node, name, pfd)

    def _readlink(self, tag: int, r: p.Reader, room: int) -> bytes:
        fid = self._fid(r.u32())
        target = self.local.readlink(fid.node)
        return p.message(p.TREADLINK + 1, tag, p.pack_string(target[:0xFFFF]))

    def _link(self, tag: int, r: p.Reader, room: int) -> bytes:
        dfid = self._dir_fid(r.u32())
        fid = self._fid(r.u32())
        name = r.string()
        self._check_create_name(name)
        self.local.link(fid.node, dfid.node, name)
        return p.message(p.TLINK + 1, tag)

    def _rename(self, tag: int, r: p.Reader, room: int) -> bytes:
        fid = self._fid(r.u32())
        dfid = self._dir_fid(r.u32())
        name = r.string()
        self._check_name(name, errno.EISDIR)
        if self.local.mapped_file and is_metadata_name(name):
            raise _fail(errno.EINVAL)
        node = fid.node
        olddir, oldname = self.local.locate(node)
        parent = node.parent
        if parent is None:                        # locate() refuses the root already
            raise _fail(errno.EBUSY)
        self.local.rename(olddir, oldname, dfid.node.fd, name)
        self.nodes.renamed(parent, oldname, (node.dev, node.ino), dfid.node, name)
        return p.message(p.TRENAME + 1, tag)

    def _renameat(self, tag: int, r: p.Reader, room: int) -> bytes:
        olddir = self._dir_fid(r.u32())
        oldname = r.string()
        newdir = self._dir_fid(r.u32())
        newname = r.string()
        self._check_name(oldname, errno.EISDIR)
        self._check_name(newname, errno.EISDIR)
        if self.local.mapped_file and (is_metadata_name(oldname) or is_metadata_name(newname)):
            raise _fail(errno.EINVAL)
        st = os.stat(oldname, dir_fd=olddir.node.fd, follow_symlinks=False)
        self.local.rename(olddir.node.fd, oldname, newdir.node.fd, newname)
        self.nodes.renamed(olddir.node, oldname, (st.st_dev, st.st_ino), newdir.node, newname)
        return p.message(p.TRENAMEAT + 1, tag)

    def _unlinkat(self, tag: int, r: p.Reader, room: int) -> bytes:
        fid = self._dir_fid(r.u32())
        name = r.string()
        flags = r.u32()
        if name == b"..":
            raise _fail(errno.ENOTEMPTY)
        self._check_name(name, errno.EINVAL)
        if self.local.mapped_file and is_metadata_name(name):
            raise _fail(errno.EINVAL)
        if flags & ~p.AT_REMOVEDIR:
            raise _fail(errno.EINVAL)
        self.local.unlink(fid.node.fd, name, bool(flags & p.AT_REMOVEDIR))
        self.nodes.unlinked(fid.node, name)
        return p.message(p.TUNLINKAT + 1, tag)

    # -- locks ---------------------------------------------------------------------------

    def _lock(self, tag: int, r: p.Reader, room: int) -> bytes:
        """Open-file-description locks on the fid's host fd: each open fid is its own lock
        owner, so guest processes exclude each other and host processes; never blocks (a
        conflict answers BLOCKED and the Linux client retries)."""
        fid = self._fid(r.u32())
        ltype, _flags, start, length = r.u8(), r.u32(), r.u64(), r.u64()
        r.u32()
        r.string()
        if fid.kind != FILE:
            raise _fail(errno.EBADF)
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
            raise _fail(errno.EBADF)
        htype = _LOCK_TYPES.get(ltype)
        if htype is None or htype == fcntl.F_UNLCK or start >= 1 << 63 or length >= 1 << 63:
            raise _fail(errno.EINVAL)
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

    # -- xattrs --------------------------------------------------------------------------

    def _xattrwalk(self, tag: int, r: p.Reader, room: int) -> bytes:
        fid = self._fid(r.u32())
        newfid = r.u32()
        name = r.string()
        if b"\0" in name:
            raise _fail(errno.EINVAL)
        self._check_new_fid(newfid)
        value = self.local.getxattr(fid.node, name) if name else self.local.listxattr(fid.node)
        fid.node.refs += 1
        self.fids[newfid] = _Fid(fid.node, fid.uid, XATTR_READ, xattr=bytearray(value))
        return p.message(p.TXATTRWALK + 1, tag, _U64.pack(len(value)))

    def _xattrcreate(self, tag: int, r: p.Reader, room: int) -> bytes:
        fid = self._fid(r.u32())
        name = r.string()
        size = r.u64()
        flags = r.u32()
        if not name or b"\0" in name:
            raise _fail(errno.EINVAL)
        if size > XATTR_SIZE_MAX:
            raise _fail(errno.E2BIG)
        if flags & ~(os.XATTR_CREATE | os.XATTR_REPLACE):
            raise _fail(errno.EINVAL)
        if fid.kind != PATH:
            raise _fail(errno.EINVAL)
        fid.kind = XATTR_CREATE
        fid.xattr_name = name
        fid.xattr_flags = flags
        fid.xattr_size = size
        fid.xattr = bytearray(size)               # at most XATTR_SIZE_MAX
        fid.xattr_copied = 0
        return p.message(p.TXATTRCREATE + 1, tag)

    def _commit_xattr(self, fid: _Fid) -> None:
        """Clunk of a Txattrcreate fid: set the value written (QEMU v9fs_xattr_fid_clunk:
        a short value is EINVAL, an empty one removes the attribute)."""
        if fid.xattr_copied != fid.xattr_size:
            raise _fail(errno.EINVAL)
        if fid.xattr_size:
            self.local.setxattr(fid.node, fid.xattr_name, bytes(fid.xattr), fid.xattr_flags)
        else:
            self.local.removexattr(fid.node, fid.xattr_name)


def _timespec(ns: int) -> tuple[int, int]:
    """(tv_sec as u64, tv_nsec) of a host time; times before 1970 wrap as in C."""
    sec, nsec = divmod(ns, 1_000_000_000)
    return sec & 0xFFFFFFFFFFFFFFFF, nsec


def _ns(sec: int, nsec: int) -> int:
    if sec >= 1 << 62 or nsec >= 1_000_000_000:
        raise _fail(errno.EINVAL)
    return sec * 1_000_000_000 + nsec
