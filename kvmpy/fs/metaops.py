"""9P2000.L handlers for attributes, names, links and extended attributes."""

from __future__ import annotations

import errno
import os
import struct

from kvmpy.fs import hostio
from kvmpy.fs import protocol as p
from kvmpy.fs.core import PATH, U64, XATTR_CREATE, XATTR_READ, Fid, ServerCore
from kvmpy.fs.local import XATTR_SIZE_MAX, Node, is_metadata_name
from kvmpy.fs.nodes import fail

_GETATTR = struct.Struct("<IIIQQQQQ" + "Q" * 10)
_STATFS = struct.Struct("<IIQQQQQQI")


class MetaOps(ServerCore):
    """Tgetattr, Tsetattr, Tstatfs, Tmkdir, Tmknod, Tsymlink, Treadlink, Tlink, Trename,
    Trenameat, Tunlinkat, Txattrwalk, Txattrcreate."""

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
                         U64.pack(p.STATS_BASIC) + self._qid(st, attr.mode) + body)

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
            raise fail(errno.EFBIG)
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

    def _created(self, tag: int, mtype: int, parent: Node, name: bytes, pfd: int) -> bytes:
        try:
            st = os.fstat(pfd)
            mode = self.local.getattr(Node(pfd, parent, name)).mode if self.local.mapped \
                else st.st_mode
            return p.message(mtype + 1, tag, self._qid(st, mode))
        finally:
            os.close(pfd)

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
            raise fail(errno.EINVAL if target else errno.ENOENT)
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
            raise fail(errno.EINVAL)
        node = fid.node
        olddir, oldname = self.local.locate(node)
        parent = node.parent
        if parent is None:                        # locate() refuses the root already
            raise fail(errno.EBUSY)
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
            raise fail(errno.EINVAL)
        st = os.stat(oldname, dir_fd=olddir.node.fd, follow_symlinks=False)
        self.local.rename(olddir.node.fd, oldname, newdir.node.fd, newname)
        self.nodes.renamed(olddir.node, oldname, (st.st_dev, st.st_ino), newdir.node, newname)
        return p.message(p.TRENAMEAT + 1, tag)

    def _unlinkat(self, tag: int, r: p.Reader, room: int) -> bytes:
        fid = self._dir_fid(r.u32())
        name = r.string()
        flags = r.u32()
        if name == b"..":
            raise fail(errno.ENOTEMPTY)
        self._check_name(name, errno.EINVAL)
        if self.local.mapped_file and is_metadata_name(name):
            raise fail(errno.EINVAL)
        if flags & ~p.AT_REMOVEDIR:
            raise fail(errno.EINVAL)
        self.local.unlink(fid.node.fd, name, bool(flags & p.AT_REMOVEDIR))
        self.nodes.unlinked(fid.node, name)
        return p.message(p.TUNLINKAT + 1, tag)

    def _xattrwalk(self, tag: int, r: p.Reader, room: int) -> bytes:
        fid = self._fid(r.u32())
        newfid = r.u32()
        name = r.string()
        if b"\0" in name:
            raise fail(errno.EINVAL)
        self._check_new_fid(newfid)
        value = self.local.getxattr(fid.node, name) if name else self.local.listxattr(fid.node)
        fid.node.refs += 1
        self.fids[newfid] = Fid(fid.node, fid.uid, XATTR_READ, xattr=bytearray(value))
        return p.message(p.TXATTRWALK + 1, tag, U64.pack(len(value)))

    def _xattrcreate(self, tag: int, r: p.Reader, room: int) -> bytes:
        fid = self._fid(r.u32())
        name = r.string()
        size = r.u64()
        flags = r.u32()
        if not name or b"\0" in name:
            raise fail(errno.EINVAL)
        if size > XATTR_SIZE_MAX:
            raise fail(errno.E2BIG)
        if flags & ~(os.XATTR_CREATE | os.XATTR_REPLACE):
            raise fail(errno.EINVAL)
        if fid.kind != PATH:
            raise fail(errno.EINVAL)
        fid.kind = XATTR_CREATE
        fid.xattr_name = name
        fid.xattr_flags = flags
        fid.xattr_size = size
        fid.xattr = bytearray(size)               # at most XATTR_SIZE_MAX
        fid.xattr_copied = 0
        return p.message(p.TXATTRCREATE + 1, tag)


def _timespec(ns: int) -> tuple[int, int]:
    """(tv_sec as u64, tv_nsec) of a host time; times before 1970 wrap as in C."""
    sec, nsec = divmod(ns, 1_000_000_000)
    return sec & 0xFFFFFFFFFFFFFFFF, nsec


def _ns(sec: int, nsec: int) -> int:
    if sec >= 1 << 62 or nsec >= 1_000_000_000:
        raise fail(errno.EINVAL)
    return sec * 1_000_000_000 + nsec
