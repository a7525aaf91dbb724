"""A small 9P2000.L client for tests: encodes T-messages, decodes R-messages, written
independently of the server's codec (from Linux's net/9p/protocol.c layouts)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kvmpy.fs.server import Server

NOFID = 0xFFFFFFFF


class NinePError(Exception):
    def __init__(self, errno_value: int) -> None:
        super().__init__(errno_value)
        self.errno = errno_value


def s(value: bytes | str) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack("<H", len(raw)) + raw


def msg(mtype: int, tag: int, body: bytes) -> bytes:
    return struct.pack("<IBH", 7 + len(body), mtype, tag) + body


@dataclass
class Qid:
    type: int
    version: int
    path: int


class Cursor:
    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def take(self, fmt: str) -> tuple[int, ...]:
        st = struct.Struct("<" + fmt)
        out = st.unpack_from(self.data, self.pos)
        self.pos += st.size
        return tuple(int(x) for x in out)

    def one(self, fmt: str) -> int:
        return self.take(fmt)[0]

    def string(self) -> bytes:
        n = self.one("H")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def qid(self) -> Qid:
        t, v, p = self.take("BIQ")
        return Qid(t, v, p)


@dataclass
class Attr:
    valid: int
    qid: Qid
    mode: int
    uid: int
    gid: int
    nlink: int
    rdev: int
    size: int
    blksize: int
    blocks: int
    atime: tuple[int, int]
    mtime: tuple[int, int]
    ctime: tuple[int, int]


class Client:
    """Drives ``Server.handle`` with raw messages."""

    def __init__(self, server: Server, msize: int = 512 * 1024) -> None:
        self.server = server
        self.tag = 0
        self.room = msize

    def raw(self, data: bytes, room: int | None = None) -> bytes:
        return self.server.handle(data, self.room if room is None else room)

    def call(self, mtype: int, body: bytes, room: int | None = None) -> Cursor:
        self.tag = (self.tag + 1) % 0xFFFF
        reply = self.raw(msg(mtype, self.tag, body), room)
        size, rtype, rtag = struct.unpack_from("<IBH", reply)
        assert size == len(reply)
        assert rtag == self.tag
        if rtype == 7:
            raise NinePError(struct.unpack_from("<I", reply, 7)[0])
        assert rtype == mtype + 1, (rtype, mtype)
        return Cursor(reply, 7)

    # session
    def version(self, msize: int = 512 * 1024, version: bytes = b"9P2000.L") -> tuple[int, bytes]:
        c = self.call(100, struct.pack("<I", msize) + s(version))
        return c.one("I"), c.string()

    def attach(self, fid: int = 0, uid: int = 0, aname: bytes = b"") -> Qid:
        return self.call(104, struct.pack("<II", fid, NOFID) + s(b"root") + s(aname)
                         + struct.pack("<I", uid)).qid()

    def walk(self, fid: int, newfid: int, *names: bytes | str) -> list[Qid]:
        body = struct.pack("<IIH", fid, newfid, len(names)) + b"".join(s(n) for n in names)
        c = self.call(110, body)
        return [c.qid() for _ in range(c.one("H"))]

    def lopen(self, fid: int, flags: int) -> tuple[Qid, int]:
        c = self.call(12, struct.pack("<II", fid, flags))
        return c.qid(), c.one("I")

    def lcreate(self, fid: int, name: bytes | str, flags: int, mode: int,
                gid: int = 0) -> tuple[Qid, int]:
        c = self.call(14, struct.pack("<I", fid) + s(name) + struct.pack("<III", flags, mode, gid))
        return c.qid(), c.one("I")

    def read(self, fid: int, offset: int, count: int, room: int | None = None) -> bytes:
        c = self.call(116, struct.pack("<IQI", fid, offset, count), room)
        n = c.one("I")
        return c.data[c.pos:c.pos + n]

    def write(self, fid: int, offset: int, data: bytes) -> int:
        return self.call(118, struct.pack("<IQI", fid, offset, len(data)) + data).one("I")

    def clunk(self, fid: int) -> None:
        self.call(120, struct.pack("<I", fid))

    def remove(self, fid: int) -> None:
        self.call(122, struct.pack("<I", fid))

    def getattr(self, fid: int, mask: int = 0x7FF) -> Attr:
        c = self.call(24, struct.pack("<IQ", fid, mask))
        valid = c.one("Q")
        qid = c.qid()
        mode, uid, gid = c.take("III")
        nlink, rdev, size, blksize, blocks = c.take("QQQQQ")
        times = c.take("QQQQQQ")
        return Attr(valid, qid, mode, uid, gid, nlink, rdev, size, blksize, blocks,
                    (times[0], times[1]), (times[2], times[3]), (times[4], times[5]))

    def setattr(self, fid: int, valid: int, mode: int = 0, uid: int = 0, gid: int = 0,
                size: int = 0, atime: tuple[int, int] = (0, 0),
                mtime: tuple[int, int] = (0, 0)) -> None:
        self.call(26, struct.pack("<IIIIIQQQQQ", fid, valid, mode, uid, gid, size,
                                  atime[0], atime[1], mtime[0], mtime[1]))

    def readdir(self, fid: int, offset: int, count: int) -> list[tuple[Qid, int, int, bytes]]:
        c = self.call(40, struct.pack("<IQI", fid, offset, count))
        n = c.one("I")
        end = c.pos + n
        out = []
        while c.pos < end:
            qid = c.qid()
            off, dtype = c.take("QB")
            out.append((qid, off, dtype, c.string()))
        return out

    def readdir_all(self, fid: int, count: int = 8192) -> list[tuple[Qid, int, int, bytes]]:
        out: list[tuple[Qid, int, int, bytes]] = []
        offset = 0
        while True:
            part = self.readdir(fid, offset, count)
            if not part:
                return out
            out += part
            offset = part[-1][1]

    def mkdir(self, dfid: int, name: bytes | str, mode: int = 0o755, gid: int = 0) -> Qid:
        return self.call(72, struct.pack("<I", dfid) + s(name)
                         + struct.pack("<II", mode, gid)).qid()

    def mknod(self, dfid: int, name: bytes | str, mode: int, major: int = 0, minor: int = 0,
              gid: int = 0) -> Qid:
        return self.call(18, struct.pack("<I", dfid) + s(name)
                         + struct.pack("<IIII", mode, major, minor, gid)).qid()

    def symlink(self, dfid: int, name: bytes | str, target: bytes | str, gid: int = 0) -> Qid:
        return self.call(16, struct.pack("<I", dfid) + s(name) + s(target)
                         + struct.pack("<I", gid)).qid()

    def readlink(self, fid: int) -> bytes:
        return self.call(22, struct.pack("<I", fid)).string()

    def link(self, dfid: int, fid: int, name: bytes | str) -> None:
        self.call(70, struct.pack("<II", dfid, fid) + s(name))

    def rename(self, fid: int, dfid: int, name: bytes | str) -> None:
        self.call(20, struct.pack("<II", fid, dfid) + s(name))

    def renameat(self, olddir: int, oldname: bytes | str, newdir: int,
                 newname: bytes | str) -> None:
        self.call(74, struct.pack("<I", olddir) + s(oldname) + struct.pack("<I", newdir)
                  + s(newname))

    def unlinkat(self, dfid: int, name: bytes | str, flags: int = 0) -> None:
        self.call(76, struct.pack("<I", dfid) + s(name) + struct.pack("<I", flags))

    def statfs(self, fid: int) -> tuple[int, ...]:
        return self.call(8, struct.pack("<I", fid)).take("IIQQQQQQI")

    def fsync(self, fid: int, datasync: int = 0) -> None:
        self.call(50, struct.pack("<II", fid, datasync))

    def lock(self, fid: int, ltype: int, start: int = 0, length: int = 0, flags: int = 0,
             proc_id: int = 1) -> int:
        body = struct.pack("<IBIQQI", fid, ltype, flags, start, length, proc_id) + s(b"guest")
        return self.call(52, body).one("B")

    def getlock(self, fid: int, ltype: int, start: int = 0,
                length: int = 0) -> tuple[int, int, int, int, bytes]:
        c = self.call(54, struct.pack("<IBQQI", fid, ltype, start, length, 7) + s(b"guest"))
        t, st, ln, pid = c.take("BQQI")
        return t, st, ln, pid, c.string()

    def xattrwalk(self, fid: int, newfid: int, name: bytes | str) -> int:
        return self.call(30, struct.pack("<II", fid, newfid) + s(name)).one("Q")

    def xattrcreate(self, fid: int, name: bytes | str, size: int, flags: int = 0) -> None:
        self.call(32, struct.pack("<I", fid) + s(name) + struct.pack("<QI", size, flags))

    def flush(self, oldtag: int) -> None:
        self.call(108, struct.pack("<H", oldtag))

    # conveniences
    def get_xattr(self, fid: int, newfid: int, name: bytes | str) -> bytes:
        size = self.xattrwalk(fid, newfid, name)
        data = self.read(newfid, 0, size) if size else b""
        self.clunk(newfid)
        return data

    def set_xattr(self, fid: int, tmpfid: int, name: bytes | str, value: bytes,
                  flags: int = 0) -> None:
        self.walk(fid, tmpfid)
        self.xattrcreate(tmpfid, name, len(value), flags)
        if value:
            self.write(tmpfid, 0, value)
        self.clunk(tmpfid)
