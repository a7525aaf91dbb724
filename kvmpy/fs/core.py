"""The core of the 9P2000.L server: message dispatch, fids, qids, session and walks.

The message handlers live in :mod:`kvmpy.fs.fileops` (opening, I/O, directories, locks) and
:mod:`kvmpy.fs.metaops` (attributes, names, links, xattrs); :class:`kvmpy.fs.server.Server`
puts them together.
"""

from __future__ import annotations

import errno
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
from kvmpy.fs.local import Local, Node, is_metadata_name
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

U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")

Handler = Callable[[int, p.Reader, int], bytes]


@dataclass(eq=False)
class Fid:
    """One fid of the session: the node it names, and what it was opened as."""

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


class ServerCore:
    """State and helpers shared by the handlers; see :class:`kvmpy.fs.server.Server`."""

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
        self.fids: dict[int, Fid] = {}
        self._buf = bytearray(self.max_msize)
        self._view = memoryview(self._buf)
        self._dirs = hostio.DirReader()
        self._handlers: dict[int, Handler] = {}

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
        try:
            self.nodes.trim()
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

    def _fid(self, num: int) -> Fid:
        fid = self.fids.get(num)
        if fid is None:
            raise fail(errno.ENOENT)
        self.nodes.touch(fid.node)
        return fid

    def _check_new_fid(self, num: int) -> None:
        if num in self.fids or num == p.NOFID:
            raise fail(errno.EINVAL)
        if len(self.fids) >= self.max_fids:
            raise fail(errno.EMFILE)

    def _release(self, fid: Fid) -> None:
        if fid.fd >= 0:
            self.nodes.closed(fid.fd)
            fid.fd = -1
        self.nodes.unref(fid.node)

    def _qid(self, st: os.stat_result, mode: int) -> bytes:
        qtype = p.QTDIR if stat.S_ISDIR(mode) else p.QTSYMLINK if stat.S_ISLNK(mode) else 0
        return p.QID.pack(qtype, 0, self.nodes.qid_path(st.st_dev, st.st_ino))

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
            raise fail(errno.ENOENT)
        if b"\0" in name:
            raise fail(errno.EINVAL)
        if name in (b".", b".."):
            raise fail(dots)

    def _check_create_name(self, name: bytes) -> None:
        self._check_name(name)
        if self.local.mapped_file and is_metadata_name(name):
            raise fail(errno.EINVAL)

    def _version(self, tag: int, r: p.Reader, room: int) -> bytes:
        msize = r.u32()
        version = r.string()
        self.reset()
        msize = min(msize, self.max_msize)
        if version != p.VERSION_L:
            # The one version kvmpy speaks; anything else is answered "unknown" (QEMU).
            return p.message(p.TVERSION + 1, tag, U32.pack(msize) + p.pack_string(b"unknown"))
        if msize < p.MIN_MSIZE:
            raise fail(errno.EMSGSIZE)
        self.msize = msize
        return p.message(p.TVERSION + 1, tag, U32.pack(msize) + p.pack_string(p.VERSION_L))

    def _attach(self, tag: int, r: p.Reader, room: int) -> bytes:
        fidnum = r.u32()
        r.u32()                                     # afid: no authentication (QEMU)
        r.string()                                  # uname
        r.string()                                  # aname: the export is the share root
        uid = r.u32()
        self._check_new_fid(fidnum)
        qid = self._node_qid(self.root)
        self.root.refs += 1
        self.fids[fidnum] = Fid(self.root, 0 if uid == p.NOFID else uid)
        return p.message(p.TATTACH + 1, tag, qid)

    def _flush(self, tag: int, r: p.Reader, room: int) -> bytes:
        r.u16()              # requests are answered in order, so the old tag is done
        return p.message(p.TFLUSH + 1, tag)

    def _walk(self, tag: int, r: p.Reader, room: int) -> bytes:
        fidnum = r.u32()
        newfid = r.u32()
        nwname = r.u16()
        if nwname > p.MAXWELEM:
            raise fail(errno.EINVAL)
        names = [r.string() for _ in range(nwname)]
        for name in names:
            if not name or b"/" in name:
                raise fail(errno.ENOENT)
            if b"\0" in name:
                raise fail(errno.EINVAL)
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
            self.fids[newfid] = Fid(cur, fid.uid)
        body = struct.pack("<H", len(qids)) + b"".join(qids)
        return p.message(p.TWALK + 1, tag, body)

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

    def _dir_fid(self, num: int) -> Fid:
        fid = self._fid(num)
        if fid.kind in (XATTR_READ, XATTR_CREATE):
            raise fail(errno.EINVAL)
        return fid

    def _commit_xattr(self, fid: Fid) -> None:
        """Clunk of a Txattrcreate fid: set the value written (QEMU v9fs_xattr_fid_clunk:
        a short value is EINVAL, an empty one removes the attribute)."""
        if fid.xattr_copied != fid.xattr_size:
            raise fail(errno.EINVAL)
        if fid.xattr_size:
            self.local.setxattr(fid.node, fid.xattr_name, bytes(fid.xattr), fid.xattr_flags)
        else:
            self.local.removexattr(fid.node, fid.xattr_name)
