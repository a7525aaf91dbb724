"""Host access for the ``local`` fsdriver, confined to the shared directory.

Every file the guest reaches is held as an ``O_PATH | O_NOFOLLOW`` descriptor (a
:class:`Node`) that was opened relative to its parent's descriptor, one validated path
component at a time, with ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`` where the kernel has
it.  No host path string is ever built from guest names, so neither ``..``, an absolute name nor
a symlink (stored and returned, never followed) leads out of the share, and a name swapped for a
symlink after a walk changes nothing: the node still is the inode that was walked.

Security models (QEMU's ``security_model=``; ``hw/9pfs/9p-local.c``):

* ``passthrough``: files carry the guest's uid/gid/mode (needs root); ``none`` is the same with
  ownership failures ignored.
* ``mapped-xattr``: host files are created with ``fmode``/``dmode`` and owned by the VMM; the
  guest's uid, gid, mode (with its file type) and rdev live in ``user.virtfs.{uid,gid,mode,rdev}``
  (host-endian binary, as QEMU).  Symlinks and device nodes are regular host files.
* ``mapped-file``: the same four values as ``virtfs.uid=N`` lines in
  ``<dir>/.virtfs_metadata/<name>`` (``.virtfs_metadata_root`` for the root), hidden from the guest.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import struct
import time
from collections.abc import Iterator
from typing import NamedTuple, Protocol

from kvmpy.fs import hostio
from kvmpy.fs.fsdev import FsDev

METADATA_DIR = b".virtfs_metadata"
METADATA_ROOT = b".virtfs_metadata_root"
XATTR_PREFIX = b"user.virtfs."
XATTR_SIZE_MAX = 65536

_O_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_MAPPED_XATTR_FORMAT = {b"uid": "=I", b"gid": "=I", b"mode": "=I", b"rdev": "=Q"}


class Reopener(Protocol):
    """Gives a node whose fd was reclaimed a new one (see :class:`kvmpy.fs.nodes.NodeTable`)."""

    def reopen(self, node: Node) -> int: ...


class Node:
    """A host file the guest reached: an O_PATH fd, and the directory node and name it was
    reached by (for name-based calls and ``..``).  Shared by fids; ``refs`` counts holders
    (fids and child nodes).

    With a ``pool``, the fd may be closed to stay within the fd budget; reading ``fd`` then
    opens the same name again beneath the parent and checks it is still the same inode
    (``dev``, ``ino``), else ESTALE."""

    __slots__ = ("_fd", "dev", "ino", "name", "parent", "pool", "refs", "stamp")

    def __init__(self, fd: int, parent: Node | None, name: bytes, refs: int = 0,
                 dev: int = 0, ino: int = 0, pool: Reopener | None = None) -> None:
        self._fd = fd
        self.parent = parent
        self.name = name
        self.refs = refs
        self.dev = dev
        self.ino = ino
        self.pool = pool
        self.stamp = 0

    @property
    def fd(self) -> int:
        fd = self._fd
        if fd >= 0 or self.pool is None:
            return fd
        return self.pool.reopen(self)

    @property
    def raw_fd(self) -> int:
        """The fd as held now (-1 when reclaimed), without reopening."""
        return self._fd

    @raw_fd.setter
    def raw_fd(self, fd: int) -> None:
        self._fd = fd


class Attr(NamedTuple):
    """A file's attributes as the guest sees them (mapped models replace four fields)."""

    st: os.stat_result
    mode: int
    uid: int
    gid: int
    rdev: int


def proc_path(fd: int) -> str:
    """``/proc/self/fd/N``: names the inode behind an O_PATH fd without resolving a path
    (a trailing symlink there is the link itself, never its target)."""
    return f"/proc/self/fd/{fd}"


def is_metadata_name(name: bytes) -> bool:
    return name in (METADATA_DIR, METADATA_ROOT)


class Local:
    """The host side of one export: file operations under one security model."""

    def __init__(self, fsdev: FsDev) -> None:
        self.fsdev = fsdev
        self.model = fsdev.security_model
        self.mapped_xattr = self.model == "mapped-xattr"
        self.mapped_file = self.model == "mapped-file"
        self.mapped = self.mapped_xattr or self.mapped_file
        self.root_fd = os.open(fsdev.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.root_dev = os.fstat(self.root_fd).st_dev

    def close(self) -> None:
        if self.root_fd >= 0:
            os.close(self.root_fd)
            self.root_fd = -1

    # -- lookups -------------------------------------------------------------------------

    def lookup(self, parent: Node, name: bytes) -> int:
        """An O_PATH fd for ``name`` inside ``parent`` (a single checked component)."""
        if self.mapped_file and is_metadata_name(name):
            raise OSError(errno.ENOENT, "no such file")
        return hostio.openat2(parent.fd, name, _O_PATH_FLAGS)

    @staticmethod
    def locate(node: Node) -> tuple[int, bytes]:
        """(parent dir fd, name) that still names ``node``'s inode; ENOENT if it was
        renamed or removed behind our back, EBUSY for the root."""
        if node.parent is None:
            raise OSError(errno.EBUSY, "the root has no name")
        try:
            st = os.stat(node.name, dir_fd=node.parent.fd, follow_symlinks=False)
        except OSError:
            raise OSError(errno.ENOENT, "stale name") from None
        mine = os.fstat(node.fd)
        if (st.st_dev, st.st_ino) != (mine.st_dev, mine.st_ino):
            raise OSError(errno.ENOENT, "stale name")
        return node.parent.fd, node.name

    # -- attributes ----------------------------------------------------------------------

    def getattr(self, node: Node) -> Attr:
        st = os.fstat(node.fd)
        attr = Attr(st, st.st_mode, st.st_uid, st.st_gid, st.st_rdev)
        if self.mapped_xattr:
            if stat.S_ISLNK(st.st_mode):
                return attr                  # host symlinks cannot carry user.* xattrs
            return _apply(attr, _get_xattr_meta(node.fd))
        if self.mapped_file:
            pfd, name = self._meta_target(node)
            try:
                with self._meta_dir(pfd, create=False) as mdir:
                    return _apply(attr, _read_meta_file(mdir, name))
            except OSError:
                return attr
        return attr

    @staticmethod
    def _meta_target(node: Node) -> tuple[int | None, bytes]:
        """(parent dir fd, name) whose mapped-file metadata describes ``node``; None for the
        root, whose metadata is ``.virtfs_metadata_root`` in the share itself."""
        if node.parent is None:
            return None, METADATA_ROOT
        return node.parent.fd, node.name

    @contextlib.contextmanager
    def _meta_dir(self, pfd: int | None, create: bool) -> Iterator[int]:
        """The directory holding the metadata files of ``pfd``'s entries."""
        if pfd is None:
            yield self.root_fd
            return
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(METADATA_DIR, 0o700, dir_fd=pfd)
        fd = hostio.openat2(pfd, METADATA_DIR, _O_PATH_FLAGS | os.O_DIRECTORY)
        try:
            yield fd
        finally:
            os.close(fd)

    def _write_meta(self, pfd: int | None, name: bytes, values: dict[bytes, int]) -> None:
        if pfd is None:
            name = METADATA_ROOT
        with self._meta_dir(pfd, create=True) as mdir:
            current = _read_meta_file(mdir, name)
            current.update(values)
            text = b"".join(b"virtfs.%s=%d\n" % (key, current[key])
                            for key in _MAPPED_XATTR_FORMAT if key in current)
            fd = hostio.openat2(mdir, name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK,
                                0o600)
            try:
                os.write(fd, text)
            finally:
                os.close(fd)

    def set_meta(self, node: Node, values: dict[bytes, int]) -> None:
        """Store mapped uid/gid/mode/rdev values for ``node`` (mapped models only)."""
        if self.mapped_xattr:
            if stat.S_ISLNK(os.fstat(node.fd).st_mode):
                raise OSError(errno.EOPNOTSUPP, "no xattrs on host symlinks")
            _set_xattr_meta(node.fd, values)
        else:
            pfd, name = self._meta_target(node)
            self._write_meta(pfd, name, values)

    def setattr(self, node: Node, *, mode: int | None = None, uid: int | None = None,
                gid: int | None = None, size: int | None = None,
                times: tuple[int | None, int | None] | None = None) -> None:
        """Apply the changes given; times are (atime_ns, mtime_ns) with None = leave alone
        and ``-1`` = now.  Order as QEMU's v9fs_setattr: mode, times, owner, size."""
        st = os.fstat(node.fd)
        path = proc_path(node.fd)
        if mode is not None:
            if self.mapped:
                old = self.getattr(node).mode
                self.set_meta(node, {b"mode": stat.S_IFMT(old) | (mode & 0o7777)})
            elif stat.S_ISLNK(st.st_mode):  # QEMU's fchmodat_nofollow: a link has no mode
                raise OSError(errno.ELOOP, "is a symlink")
            else:
                os.chmod(path, mode & 0o7777)
        if times is not None:
            now = time.time_ns()
            atime, mtime = times
            a = st.st_atime_ns if atime is None else (now if atime == -1 else atime)
            m = st.st_mtime_ns if mtime is None else (now if mtime == -1 else mtime)
            os.utime(path, ns=(a, m))
        if uid is not None or gid is not None:
            self._chown(node, uid, gid)
        if size is not None:
            if stat.S_ISDIR(st.st_mode):
                raise OSError(errno.EISDIR, "is a directory")
            if stat.S_ISLNK(st.st_mode):  # QEMU opens it O_NOFOLLOW to truncate
                raise OSError(errno.ELOOP, "is a symlink")
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            os.truncate(path, size)

    def _chown(self, node: Node, uid: int | None, gid: int | None) -> None:
        if self.mapped:
            values = {}
            if uid is not None:
                values[b"uid"] = uid
            if gid is not None:
                values[b"gid"] = gid
            self.set_meta(node, values)
            return
        hostio.fchown_empty(node.fd, -1 if uid is None else uid, -1 if gid is None else gid)

    # -- creation ------------------------------------------------------------------------

    def _post_create(self, dirfd: int, name: bytes, fd: int, mode: int, uid: int, gid: int,
                     chmod: bool, rdev: int | None) -> None:
        """Give a new host file the guest's ownership and mode (QEMU local_post_create_*)."""
        if self.mapped:
            values = {b"uid": uid, b"gid": gid, b"mode": mode}
            if rdev is not None:
                values[b"rdev"] = rdev
            if self.mapped_xattr:
                _set_xattr_meta(fd, values)
            else:
                self._write_meta(dirfd, name, values)
            return
        try:
            hostio.fchown_empty(fd, uid, gid)
        except OSError:
            if self.model != "none":
                raise
        if chmod:
            os.chmod(proc_path(fd), mode & 0o7777)

    @staticmethod
    def _undo(dirfd: int, name: bytes, is_dir: bool = False) -> None:
        try:
            if is_dir:
                os.rmdir(name, dir_fd=dirfd)
            else:
                os.unlink(name, dir_fd=dirfd)
        except OSError:
            pass

    def _finish(self, parent: Node, name: bytes, mode: int, uid: int, gid: int,
                is_dir: bool = False, chmod: bool = True, rdev: int | None = None) -> int:
        """The O_PATH fd of a file just created, with its metadata set; on failure the
        file is removed again."""
        try:
            pfd = hostio.openat2(parent.fd, name, _O_PATH_FLAGS)
        except OSError:
            self._undo(parent.fd, name, is_dir)
            raise
        try:
            self._post_create(parent.fd, name, pfd, mode, uid, gid, chmod, rdev)
        except OSError:
            os.close(pfd)
            self._undo(parent.fd, name, is_dir)
            raise
        return pfd

    def create(self, parent: Node, name: bytes, flags: int, mode: int, uid: int,
               gid: int) -> tuple[int, int]:
        """Create and open a regular file: (O_PATH fd, open fd)."""
        host_mode = self.fsdev.fmode if self.mapped else mode & 0o7777
        fd = hostio.openat2(parent.fd, name, flags | os.O_CREAT | os.O_EXCL, host_mode)
        try:
            if self.mapped:
                os.fchmod(fd, host_mode)         # exactly fmode, whatever the umask
            pfd = self._finish(parent, name, stat.S_IFREG | (mode & 0o7777), uid, gid)
        except OSError:
            os.close(fd)
            raise
        return pfd, fd

    def mkdir(self, parent: Node, name: bytes, mode: int, uid: int, gid: int) -> int:
        host_mode = self.fsdev.dmode if self.mapped else mode & 0o7777
        os.mkdir(name, host_mode, dir_fd=parent.fd)
        if self.mapped:
            os.chmod(name, host_mode, dir_fd=parent.fd, follow_symlinks=False)
        return self._finish(parent, name, stat.S_IFDIR | (mode & 0o7777), uid, gid, True)

    def mknod(self, parent: Node, name: bytes, mode: int, rdev: int, uid: int,
              gid: int) -> int:
        if self.mapped:
            self._create_regular(parent, name, b"")
            return self._finish(parent, name, mode, uid, gid, rdev=rdev)
        os.mknod(name, mode, rdev, dir_fd=parent.fd)
        return self._finish(parent, name, mode, uid, gid)

    def _create_regular(self, parent: Node, name: bytes, content: bytes) -> None:
        fd = hostio.openat2(parent.fd, name, os.O_CREAT | os.O_EXCL | os.O_WRONLY,
                            self.fsdev.fmode)
        try:
            os.fchmod(fd, self.fsdev.fmode)
            if content:
                os.write(fd, content)
        except OSError:
            self._undo(parent.fd, name)
            raise
        finally:
            os.close(fd)

    def symlink(self, parent: Node, name: bytes, target: bytes, uid: int, gid: int) -> int:
        if self.mapped:
            self._create_regular(parent, name, target)
            return self._finish(parent, name, stat.S_IFLNK | 0o777, uid, gid)
        os.symlink(target, name, dir_fd=parent.fd)
        return self._finish(parent, name, stat.S_IFLNK | 0o777, uid, gid, chmod=False)

    def readlink(self, node: Node) -> bytes:
        st = os.fstat(node.fd)
        if stat.S_ISLNK(st.st_mode):
            return os.readlink(b"", dir_fd=node.fd)
        if self.mapped and stat.S_ISREG(st.st_mode) and stat.S_ISLNK(self.getattr(node).mode):
            fd = os.open(proc_path(node.fd), os.O_RDONLY | os.O_CLOEXEC)
            try:
                return os.pread(fd, 4096, 0)
            finally:
                os.close(fd)
        raise OSError(errno.EINVAL, "not a symlink")

    def link(self, node: Node, dparent: Node, name: bytes) -> None:
        dirfd, oldname = self.locate(node)
        os.link(oldname, name, src_dir_fd=dirfd, dst_dir_fd=dparent.fd, follow_symlinks=False)
        if self.mapped_file:
            try:
                with self._meta_dir(dirfd, create=False) as mdir:
                    values = _read_meta_file(mdir, oldname)
                if values:
                    self._write_meta(dparent.fd, name, values)
            except OSError:
                pass

    def rename(self, olddir: int, oldname: bytes, newdir: int, newname: bytes) -> None:
        os.rename(oldname, newname, src_dir_fd=olddir, dst_dir_fd=newdir)
        if self.mapped_file:
            try:
                with self._meta_dir(olddir, create=False) as src, \
                        self._meta_dir(newdir, create=True) as dst:
                    os.rename(oldname, newname, src_dir_fd=src, dst_dir_fd=dst)
            except OSError:
                pass

    def unlink(self, dirfd: int, name: bytes, rmdir: bool) -> None:
        if self.mapped_file and rmdir:
            try:
                sub = hostio.openat2(dirfd, name, os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                sub = -1
            if sub >= 0:
                try:
                    _remove_meta_dir(sub)
                finally:
                    os.close(sub)
        if rmdir:
            os.rmdir(name, dir_fd=dirfd)
        else:
            os.unlink(name, dir_fd=dirfd)
        if self.mapped_file:
            try:
                with self._meta_dir(dirfd, create=False) as mdir:
                    os.unlink(name, dir_fd=mdir)
            except OSError:
                pass

    # -- opening -------------------------------------------------------------------------

    @staticmethod
    def open(node: Node, flags: int) -> int:
        """Open the inode behind ``node`` for I/O.  Symlinks -> ELOOP; device nodes, FIFOs
        and sockets are refused (ENXIO) so a guest can neither reach host devices nor block
        the server."""
        mode = os.fstat(node.fd).st_mode
        if stat.S_ISLNK(mode):
            raise OSError(errno.ELOOP, "is a symlink")
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise OSError(errno.ENXIO, "special file")
        # O_NONBLOCK so that a host lease on the file cannot stall the server in open()
        # (QEMU openat_file); dropped again unless the guest asked for it.
        fd = os.open(proc_path(node.fd), flags | os.O_CLOEXEC | os.O_NONBLOCK)
        if not flags & os.O_NONBLOCK:
            try:
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
            except OSError:
                os.close(fd)
                raise
        return fd

    # -- xattrs --------------------------------------------------------------------------

    def _host_xattr(self, name: bytes, reserved_errno: int) -> bytes:
        """The host name of guest xattr ``name``.  As QEMU's xattr tables (9p-xattr.c):
        only ``user.*`` and ``system.posix_acl_*`` exist for the guest (``security.*`` or
        ``trusted.*`` on a host file would be host privileges), mapped-xattr keeps POSIX
        ACLs in ``user.virtfs.system.posix_acl_*`` and reserves ``user.virtfs.*``, and
        ``none`` has no ACLs."""
        if name.startswith(b"user."):
            if self.mapped_xattr and name.startswith(XATTR_PREFIX):
                raise OSError(reserved_errno, os.strerror(reserved_errno))
            return name
        if name.startswith(_ACL_PREFIX) and self.model != "none":
            if not self.mapped_xattr:
                return name
            if name in _MAPPED_ACLS:
                return XATTR_PREFIX + name
        raise OSError(errno.EOPNOTSUPP, "unsupported xattr namespace")

    def _guest_xattr(self, host: bytes) -> bytes | None:
        """The name the guest sees for host xattr ``host`` (None: hidden)."""
        if self.mapped_xattr:
            if host.startswith(XATTR_PREFIX):
                rest = host[len(XATTR_PREFIX):]
                return rest if rest in _MAPPED_ACLS else None
            return host if host.startswith(b"user.") else None
        if host.startswith(b"user."):
            return host
        if host.startswith(_ACL_PREFIX) and self.model != "none":
            return host
        return None

    @staticmethod
    def _xattr_target(node: Node) -> str:
        if stat.S_ISLNK(os.fstat(node.fd).st_mode):
            raise OSError(errno.EOPNOTSUPP, "no xattrs on symlinks")
        return proc_path(node.fd)

    def getxattr(self, node: Node, name: bytes) -> bytes:
        host = self._host_xattr(name, errno.ENODATA)
        return os.getxattr(self._xattr_target(node), host)

    def listxattr(self, node: Node) -> bytes:
        out = []
        for text in os.listxattr(self._xattr_target(node)):
            name = self._guest_xattr(os.fsencode(text))
            if name is not None:
                out.append(name + b"\0")
        return b"".join(out)

    def setxattr(self, node: Node, name: bytes, value: bytes, flags: int) -> None:
        host = self._host_xattr(name, errno.EACCES)
        os.setxattr(self._xattr_target(node), host, value, flags)

    def removexattr(self, node: Node, name: bytes) -> None:
        host = self._host_xattr(name, errno.EACCES)
        try:
            os.removexattr(self._xattr_target(node), host)
        except OSError as exc:
            # QEMU mp_pacl_removexattr: removing an absent mapped ACL is not an error.
            if not (exc.errno == errno.ENODATA and host != name):
                raise


_ACL_PREFIX = b"system.posix_acl_"
_MAPPED_ACLS = (b"system.posix_acl_access", b"system.posix_acl_default")


def _get_xattr_meta(fd: int) -> dict[bytes, int]:
    values = {}
    path = proc_path(fd)
    for key, fmt in _MAPPED_XATTR_FORMAT.items():
        try:
            raw = os.getxattr(path, XATTR_PREFIX + key)
        except OSError:
            continue
        if len(raw) == struct.calcsize(fmt):
            values[key] = int(struct.unpack(fmt, raw)[0])
    return values


def _set_xattr_meta(fd: int, values: dict[bytes, int]) -> None:
    path = proc_path(fd)
    for key, value in values.items():
        os.setxattr(path, XATTR_PREFIX + key,
                    struct.pack(_MAPPED_XATTR_FORMAT[key], value & _MASKS[key]))


_MASKS = {b"uid": 0xFFFFFFFF, b"gid": 0xFFFFFFFF, b"mode": 0xFFFFFFFF,
          b"rdev": 0xFFFFFFFFFFFFFFFF}


def _read_meta_file(dirfd: int, name: bytes) -> dict[bytes, int]:
    """The ``virtfs.key=N`` lines of a mapped-file metadata file ({} when there is none)."""
    try:
        fd = hostio.openat2(dirfd, name, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return {}
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return {}
        text = os.read(fd, 4096)
    finally:
        os.close(fd)
    values = {}
    for line in text.splitlines():
        key, _, value = line.partition(b"=")
        if key.startswith(b"virtfs.") and key[7:] in _MAPPED_XATTR_FORMAT:
            try:
                values[key[7:]] = int(value)
            except ValueError:
                continue
    return values


def _remove_meta_dir(dirfd: int) -> None:
    """Remove ``<dir>/.virtfs_metadata`` when the directory holds nothing else, so that a
    directory the guest sees as empty can be removed (QEMU local_unlinkat_common)."""
    with os.scandir(dirfd) as entries:            # stops at the first other entry
        if any(os.fsencode(e.name) != METADATA_DIR for e in entries):
            return
    try:
        mfd = hostio.openat2(dirfd, METADATA_DIR, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        for name in os.listdir(mfd):
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=mfd)
    finally:
        os.close(mfd)
    with contextlib.suppress(OSError):
        os.rmdir(METADATA_DIR, dir_fd=dirfd)


def _apply(attr: Attr, values: dict[bytes, int]) -> Attr:
    if not values:
        return attr
    return Attr(attr.st, values.get(b"mode", attr.mode), values.get(b"uid", attr.uid),
                values.get(b"gid", attr.gid), values.get(b"rdev", attr.rdev))
