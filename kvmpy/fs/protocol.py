"""9P2000.L wire format: message numbers, constants and a bounds-checked codec.

Numbers and layouts follow Linux's ``include/net/9p/9p.h`` and ``net/9p/protocol.c``: every
message is ``size[4] type[1] tag[2] body``, little-endian, strings are ``len[2] bytes``.
A decoder never reads past the message: running out of bytes raises :class:`ProtocolError`,
which the server answers with ``Rlerror(EINVAL)``.
"""

from __future__ import annotations

import struct

# Message types (9p.h enum p9_msg_t); an R-message is its T-message + 1.
TLERROR = 6
RLERROR = 7
TSTATFS = 8
TLOPEN = 12
TLCREATE = 14
TSYMLINK = 16
TMKNOD = 18
TRENAME = 20
TREADLINK = 22
TGETATTR = 24
TSETATTR = 26
TXATTRWALK = 30
TXATTRCREATE = 32
TREADDIR = 40
TFSYNC = 50
TLOCK = 52
TGETLOCK = 54
TLINK = 70
TMKDIR = 72
TRENAMEAT = 74
TUNLINKAT = 76
TVERSION = 100
TAUTH = 102
TATTACH = 104
TFLUSH = 108
TWALK = 110
TREAD = 116
TWRITE = 118
TCLUNK = 120
TREMOVE = 122

NOTAG = 0xFFFF
NOFID = 0xFFFFFFFF
MAXWELEM = 16
HEADER_SIZE = 7
IOHDRSZ = 24          # 9p.h P9_IOHDRSZ: the header room a Twrite/Rread needs
READ_HEADER = 11      # size[4] type[1] tag[2] count[4]
MIN_MSIZE = 4096      # QEMU's P9_MIN_MSIZE
VERSION_L = b"9P2000.L"

# Qid types (9p.h p9_qid_t)
QTDIR = 0x80
QTSYMLINK = 0x02
QTFILE = 0x00

# Tgetattr request/valid mask (9p.h P9_STATS_*)
STATS_BASIC = 0x000007FF

# Tsetattr valid bits (9p.h P9_ATTR_*)
ATTR_MODE = 1 << 0
ATTR_UID = 1 << 1
ATTR_GID = 1 << 2
ATTR_SIZE = 1 << 3
ATTR_ATIME = 1 << 4
ATTR_MTIME = 1 << 5
ATTR_CTIME = 1 << 6
ATTR_ATIME_SET = 1 << 7
ATTR_MTIME_SET = 1 << 8

# Tlock / Tgetlock (9p.h)
LOCK_TYPE_RDLCK = 0
LOCK_TYPE_WRLCK = 1
LOCK_TYPE_UNLCK = 2
LOCK_SUCCESS = 0
LOCK_BLOCKED = 1
LOCK_ERROR = 2
LOCK_FLAGS_BLOCK = 1

# Open flags as the Linux client sends them (9p.h P9_DOTL_*), which are the generic Linux values.
DOTL_ACCMODE = 0o3
DOTL_CREATE = 0o100
DOTL_EXCL = 0o200
DOTL_NOCTTY = 0o400
DOTL_TRUNC = 0o1000
DOTL_APPEND = 0o2000
DOTL_NONBLOCK = 0o4000
DOTL_DSYNC = 0o10000
DOTL_FASYNC = 0o20000
DOTL_DIRECT = 0o40000
DOTL_LARGEFILE = 0o100000
DOTL_DIRECTORY = 0o200000
DOTL_NOFOLLOW = 0o400000
DOTL_NOATIME = 0o1000000
DOTL_CLOEXEC = 0o2000000
DOTL_SYNC = 0o4000000

AT_REMOVEDIR = 0x200

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_HEADER = struct.Struct("<IBH")
QID = struct.Struct("<BIQ")          # type[1] version[4] path[8]


class ProtocolError(Exception):
    """A message that does not parse (too short, a string running past the end)."""


class Reader:
    """Reads a message body field by field; every read checks the bounds."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes | memoryview, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def _take(self, n: int) -> int:
        pos = self.pos
        if pos + n > self.end:
            raise ProtocolError("message too short")
        self.pos = pos + n
        return pos

    def u8(self) -> int:
        return int(_U8.unpack_from(self.data, self._take(1))[0])

    def u16(self) -> int:
        return int(_U16.unpack_from(self.data, self._take(2))[0])

    def u32(self) -> int:
        return int(_U32.unpack_from(self.data, self._take(4))[0])

    def u64(self) -> int:
        return int(_U64.unpack_from(self.data, self._take(8))[0])

    def string(self) -> bytes:
        n = self.u16()
        pos = self._take(n)
        return bytes(self.data[pos:pos + n])

    def raw(self, n: int) -> memoryview:
        pos = self._take(n)
        return memoryview(self.data)[pos:pos + n]


def pack_string(value: bytes) -> bytes:
    """``len[2] bytes``; the caller keeps ``value`` under 64 KiB."""
    return _U16.pack(len(value)) + value


def message(mtype: int, tag: int, body: bytes = b"") -> bytes:
    """A whole message: header + body."""
    return _HEADER.pack(HEADER_SIZE + len(body), mtype, tag) + body


def parse_header(data: bytes | memoryview) -> tuple[int, int, int]:
    """(size, type, tag) of a message; ProtocolError when under 7 bytes."""
    if len(data) < HEADER_SIZE:
        raise ProtocolError("message too short")
    size, mtype, tag = _HEADER.unpack_from(data, 0)
    return int(size), int(mtype), int(tag)


def lerror(tag: int, errno_value: int) -> bytes:
    return message(RLERROR, tag, _U32.pack(errno_value))
