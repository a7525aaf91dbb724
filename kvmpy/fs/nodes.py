"""The live nodes of one 9P server: reference counts, the host fds they cost, the names that
reach them (for rename and unlink fix-ups) and the qid paths of their inodes."""

from __future__ import annotations

import errno
import os

from kvmpy import log
from kvmpy.fs import hostio
from kvmpy.fs.local import Node

_O_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_LOW48 = (1 << 48) - 1
_MAX_PREFIXES = 1 << 15


def fail(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class NodeTable:
    """Owns every node's O_PATH fd; counts host fds against ``max_host_fds``.

    A node is referenced by fids and by its children; when the last reference goes, its fd is
    closed and its parent loses one reference.  The root node (``parent is None``) belongs to
    the caller and is never closed here.

    When the budget is reached, the fds of the least recently used named nodes are closed
    (QEMU reclaims open fds the same way, v9fs_reclaim_fd); a node opens its name again when
    next used (:meth:`reopen`)."""

    def __init__(self, root: Node, max_host_fds: int, multidevs: str) -> None:
        self.root = root
        self.max_host_fds = max_host_fds
        self.host_fds = 0
        self.multidevs = multidevs
        # (parent dev, parent ino, name) -> the live nodes reached by that name
        self._named: dict[tuple[int, int, bytes], list[Node]] = {}
        self._prefixes: dict[tuple[int, int], int] = {}
        self._multidev_reported = False
        self._holding: set[Node] = set()          # nodes whose fd is open (root excluded)
        self._clock = 0
        self.reclaimed = 0                         # fds closed to stay within the budget

    # -- host fd budget ------------------------------------------------------------------

    def charge(self, count: int = 1) -> None:
        """Make room for ``count`` more host fds (reclaiming node fds); ENFILE if there is
        none.  Callers read node fds only after this, never keep one across it."""
        if self.host_fds + count > self.max_host_fds:
            self._reclaim(self.host_fds + count - self.max_host_fds)
            if self.host_fds + count > self.max_host_fds:
                raise fail(errno.ENFILE)

    def trim(self) -> None:
        """Back within the budget after reopens; called between messages, when no caller
        holds a node's fd number."""
        if self.host_fds > self.max_host_fds:
            self._reclaim(self.host_fds - self.max_host_fds)

    def _reclaim(self, need: int) -> None:
        candidates = sorted((n for n in self._holding if n.name), key=lambda n: n.stamp)
        count = min(len(candidates), max(need, self.max_host_fds // 4))
        for node in candidates[:count]:
            os.close(node.raw_fd)
            node.raw_fd = -1
            self._holding.discard(node)
            self.host_fds -= 1
            self.reclaimed += 1

    def reopen(self, node: Node) -> int:
        """Open a reclaimed node's name again beneath its parent (ancestors first), checking
        each is still the inode it was; ESTALE otherwise."""
        chain = []
        cur: Node | None = node
        while cur is not None and cur.raw_fd < 0:
            chain.append(cur)
            cur = cur.parent
        for item in reversed(chain):
            parent = item.parent
            if parent is None or not item.name:
                raise fail(errno.ESTALE)
            fd = hostio.openat2(parent.raw_fd, item.name, _O_PATH_FLAGS)
            try:
                st = os.fstat(fd)
            except OSError:
                os.close(fd)
                raise
            if (st.st_dev, st.st_ino) != (item.dev, item.ino):
                os.close(fd)
                raise fail(errno.ESTALE)
            item.raw_fd = fd
            self.touch(item)
            self._holding.add(item)
            self.host_fds += 1
        return node.raw_fd

    def touch(self, node: Node) -> None:
        """Mark ``node`` as used now (the fids' operations call this)."""
        self._clock += 1
        node.stamp = self._clock

    def opened(self) -> None:
        """One more host fd outside the nodes (an open file of a fid)."""
        self.host_fds += 1

    def closed(self, fd: int) -> None:
        os.close(fd)
        self.host_fds -= 1

    # -- nodes ---------------------------------------------------------------------------

    def new(self, fd: int, parent: Node, name: bytes, st: os.stat_result | None = None) -> Node:
        """A node for ``fd`` (whose ``fstat`` is ``st`` when the caller has it), reached as
        ``name`` in ``parent``, with no references yet; it owns ``fd`` from here on."""
        if st is None:
            try:
                st = os.fstat(fd)
            except OSError:
                os.close(fd)
                raise
        self.host_fds += 1
        parent.refs += 1
        node = Node(fd, parent, name, dev=st.st_dev, ino=st.st_ino, pool=self)
        self._named.setdefault((parent.dev, parent.ino, name), []).append(node)
        self._holding.add(node)
        self.touch(node)
        return node

    @staticmethod
    def ref(node: Node) -> Node:
        node.refs += 1
        return node

    def unref(self, node: Node | None) -> None:
        while node is not None:
            node.refs -= 1
            if node.refs > 0 or node.parent is None:
                return
            self._forget_name(node)
            if node.raw_fd >= 0:
                os.close(node.raw_fd)
                node.raw_fd = -1
                self._holding.discard(node)
                self.host_fds -= 1
            node = node.parent

    def _forget_name(self, node: Node) -> None:
        if node.parent is None:
            return
        key = (node.parent.dev, node.parent.ino, node.name)
        nodes = self._named.get(key)
        if nodes is None or node not in nodes:
            return
        nodes.remove(node)
        if not nodes:
            del self._named[key]

    def renamed(self, olddir: Node, oldname: bytes, ident: tuple[int, int], newdir: Node,
                newname: bytes) -> None:
        """After a rename on the host (QEMU v9fs_fix_path): the nodes of the moved inode
        (``ident`` = dev, ino) follow it; the nodes of the file it replaced lose their name."""
        if (olddir.dev, olddir.ino, oldname) == (newdir.dev, newdir.ino, newname):
            return
        self.unlinked(newdir, newname)
        for node in self._named.pop((olddir.dev, olddir.ino, oldname), []):
            if (node.dev, node.ino) != ident:
                node.name = b""
                continue
            old_parent = node.parent
            newdir.refs += 1
            node.parent = newdir
            node.name = newname
            self._named.setdefault((newdir.dev, newdir.ino, newname), []).append(node)
            self.unref(old_parent)

    def unlinked(self, dirnode: Node, name: bytes) -> None:
        """After ``name`` left ``dirnode``: no name reaches its nodes any more."""
        for node in self._named.pop((dirnode.dev, dirnode.ino, name), []):
            node.name = b""

    # -- qid paths -----------------------------------------------------------------------

    def qid_path(self, dev: int, ino: int) -> int:
        """Inode numbers of the share's own device as they are; others remapped to
        ``1 << 63 | prefix << 48 | low 48 bits of the inode`` with one prefix per
        (device, high inode bits), as QEMU's multidevs=remap (qid_path_suffixmap)."""
        if dev == self.root.dev and ino < 1 << 63:
            return ino
        if self.multidevs == "forbid":
            if not self._multidev_reported:
                self._multidev_reported = True
                log.warn_report("9p: Multiple devices detected in same VirtFS export. Access "
                                "of guest to additional devices is (partly) denied due to "
                                "virtfs option 'multidevs=forbid' being effective.")
            raise fail(errno.ENODEV)
        key = (dev, ino >> 48)
        prefix = self._prefixes.get(key)
        if prefix is None:
            if len(self._prefixes) >= _MAX_PREFIXES:
                log.guest_error("9p: too many devices under the share; qid paths may collide")
                return ino & 0xFFFFFFFFFFFFFFFF
            prefix = len(self._prefixes)
            self._prefixes[key] = prefix
        return 1 << 63 | prefix << 48 | (ino & _LOW48)
