"""The 9P server's session in a VM state: the msize negotiated and the fids, each as its path
from the export root (the names it was walked by) and what it was opened as.

A restore walks each path again from the export root with the same checks a Twalk makes and
reopens the files that were open (access mode and append, never create or truncate).  A fid
whose file is gone, or cannot be opened again, is left out: the guest's next use of it gets
an error, as after the file was removed on the host.  Extended attribute fids are not carried
(a Txattrwalk/Txattrcreate pair is one exchange of the guest's).
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kvmpy import log
from kvmpy.fs import protocol as p
from kvmpy.fs.core import DIR, FILE, PATH, Fid
from kvmpy.fs.nodes import fail

if TYPE_CHECKING:
    from kvmpy.fs.core import ServerCore
    from kvmpy.fs.local import Node

MAX_PATH_DEPTH = 1 << 16
"""Names in one fid's path at most (a bound on what a state file may make the restore do)."""
MAX_NAME = 255
_KEPT_FLAGS = os.O_ACCMODE | os.O_APPEND


def node_path(node: Node) -> list[bytes]:
    """The names leading from the export root to ``node``."""
    names: list[bytes] = []
    while node.parent is not None:
        names.append(node.name)
        node = node.parent
    return names[::-1]


def server_state(server: ServerCore) -> dict[str, Any]:
    fids = []
    for num, fid in sorted(server.fids.items()):
        if fid.kind not in (PATH, FILE, DIR):
            continue
        flags = 0
        if fid.kind in (FILE, DIR) and fid.fd >= 0:
            try:
                flags = fcntl.fcntl(fid.fd, fcntl.F_GETFL) & _KEPT_FLAGS
            except OSError:
                continue
        fids.append({"fid": num, "path": node_path(fid.node), "uid": fid.uid,
                     "kind": fid.kind, "flags": flags})
    return {"msize": server.msize, "fids": fids}


def check_server_state(server: ServerCore, state: Any, where: str
                       ) -> Callable[[], None]:
    """Check a saved session completely (VmStateError); the function returned restores it,
    after a reset of the server's own session."""
    from kvmpy.hw.virtio.vmstate import U32, StateReader

    r = StateReader(state, where)
    msize = r.integer("msize", 0, server.max_msize)
    if msize and msize < p.MIN_MSIZE:
        raise r.fail("msize", f"{msize} is below the 9P minimum {p.MIN_MSIZE}")
    entries = []
    seen: set[int] = set()
    for fid in r.readers("fids", server.max_fids):
        num = fid.integer("fid", 0, U32 - 1)
        if num in seen:
            raise fid.fail("fid", f"{num} appears twice")
        seen.add(num)
        names = fid.items("path", MAX_PATH_DEPTH)
        for name in names:
            if not isinstance(name, bytes) or not name or len(name) > MAX_NAME or \
                    b"/" in name or b"\0" in name or name in (b".", b".."):
                raise fid.fail("path", f"{name!r} is not a file name")
        kind = fid.integer("kind", PATH, DIR)
        flags = fid.integer("flags", 0, U32)
        if flags & ~_KEPT_FLAGS or flags & os.O_ACCMODE == os.O_ACCMODE:
            raise fid.fail("flags", f"0x{flags:x} are not the open flags of a fid")
        entries.append((num, list(names), fid.integer("uid", 0, U32), kind, flags))

    def restore() -> None:
        server.reset()
        server.msize = msize
        for num, names, uid, kind, flags in entries:
            try:
                server.fids[num] = _reopen(server, names, uid, kind, flags)
            except OSError as exc:
                log.warn_report(f"9p: fid {num} ({b'/'.join(names).decode(errors='replace')})"
                                f" not restored: {os.strerror(exc.errno or errno.EIO)}")
    return restore


def _reopen(server: ServerCore, names: list[bytes], uid: int, kind: int, flags: int) -> Fid:
    cur = server.root
    cur.refs += 1
    try:
        for name in names:
            server.nodes.charge()
            fd = server.local.lookup(cur, name)
            nxt = server.nodes.new(fd, cur, name)
            nxt.refs += 1
            server.nodes.unref(cur)
            cur = nxt
        fid = Fid(cur, uid)
        if kind in (FILE, DIR):
            if server.fsdev.readonly and flags & os.O_ACCMODE != os.O_RDONLY:
                raise fail(errno.EROFS)
            server.nodes.charge()
            fid.fd = server.local.open(cur, flags | (os.O_DIRECTORY if kind == DIR else 0))
            server.nodes.opened()
            fid.kind = kind
    except OSError:
        server.nodes.unref(cur)
        raise
    return fid
