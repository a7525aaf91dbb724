"""The guest must never reach a host file outside the share.

The ``env`` fixture checks after each test that the canary tree beside the share is unchanged
and that no reply carried the canary's secret.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmpy.fs import hostio
from tests.fs.client import Client, NinePError, msg
from tests.fs.conftest import SECRET, Env

O_RDONLY, O_WRONLY, O_RDWR, O_CREAT, O_TRUNC, O_DIRECTORY = 0, 1, 2, 0o100, 0o1000, 0o200000
QTSYMLINK = 0x02


@pytest.fixture(autouse=True, params=["openat2", "openat"])
def lookup_call(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) and with the
    openat(O_NOFOLLOW) path older kernels take."""
    if request.param == "openat2" and not hostio.HAVE_OPENAT2:
        pytest.skip("this kernel has no openat2")
    monkeypatch.setattr(hostio, "HAVE_OPENAT2", request.param == "openat2")
    return str(request.param)


def err(call: object, *args: object) -> int:
    assert callable(call)
    with pytest.raises(NinePError) as exc:
        call(*args)
    return exc.value.errno


def plant_links(env: Env) -> None:
    os.symlink(env.outside, env.share / "out-abs")
    os.symlink("../outside", env.share / "out-rel")
    os.symlink(env.outside / "canary.txt", env.share / "canary-link")
    os.symlink("/", env.share / "slash")


def test_walk_never_follows_a_symlink(env: Env) -> None:
    plant_links(env)
    c = env.client()
    for link in ("out-abs", "out-rel", "slash"):
        qids = c.walk(0, 1, link, "canary.txt")
        assert len(qids) == 1 and qids[0].type == QTSYMLINK    # stops at the link
        assert len(c.walk(0, 1, link, "dir", "inner.txt")) == 1
        c.walk(0, 1, link)
        assert c.getattr(1).qid.type == QTSYMLINK
        for flags in (O_RDONLY, O_RDONLY | O_DIRECTORY, O_RDWR):
            assert err(c.lopen, 1, flags) == errno.ELOOP
        assert err(c.walk, 1, 2, "canary.txt") == errno.ENOTDIR
        c.clunk(1)
    c.walk(0, 1, "canary-link")
    assert err(c.lopen, 1, O_RDONLY) == errno.ELOOP
    assert err(c.lopen, 1, O_WRONLY | O_TRUNC) == errno.ELOOP
    assert c.readlink(1) == str(env.outside / "canary.txt").encode()


def test_operations_on_a_symlink_fid_stay_on_the_link(env: Env) -> None:
    plant_links(env)
    c = env.client()
    c.walk(0, 1, "canary-link")
    c.walk(0, 2, "out-abs")
    # Size, mode and xattrs of a symlink are refused (ELOOP for size and mode, as QEMU's
    # O_NOFOLLOW opens); times and owner apply to the link itself (lutimes / lchown).
    assert err(c.setattr, 1, 0x8, 0, 0, 0, 0) == errno.ELOOP
    assert err(c.setattr, 1, 0x1, 0o777) == errno.ELOOP
    c.setattr(1, 0x10 | 0x20 | 0x80 | 0x100, atime=(5, 0), mtime=(6, 0))
    c.setattr(1, 0x2 | 0x4, uid=4242, gid=4242)
    st = os.lstat(env.share / "canary-link")
    assert st.st_mtime == 6 and st.st_uid == 4242
    assert err(c.xattrwalk, 1, 3, "user.x") == errno.EOPNOTSUPP
    c.walk(1, 3)
    c.xattrcreate(3, "user.x", 1)
    c.write(3, 0, b"x")
    assert err(c.clunk, 3) == errno.EOPNOTSUPP
    # Creating through a symlinked directory fails: the link is not a directory here.
    assert err(c.lcreate, 2, "new", O_RDWR | O_CREAT, 0o644) == errno.ENOTDIR
    assert err(c.mkdir, 2, "newdir") == errno.ENOTDIR
    assert err(c.symlink, 2, "ln", "x") == errno.ENOTDIR
    assert err(c.mknod, 2, "nod", 0o10644) == errno.ENOTDIR
    assert err(c.link, 2, 1, "hard") == errno.ENOTDIR
    assert err(c.renameat, 0, "canary-link", 2, "moved") == errno.ENOTDIR
    assert err(c.renameat, 2, "canary.txt", 0, "stolen") == errno.ENOTDIR
    assert err(c.unlinkat, 2, "canary.txt") == errno.ENOTDIR
    assert err(c.rename, 1, 2, "moved") == errno.ENOTDIR
    # A hard link of the symlink is a link to the symlink, not to its target.
    c.link(0, 1, "hard")
    assert os.path.islink(env.share / "hard")
    c.walk(0, 4, "hard")
    assert err(c.lopen, 4, O_RDONLY) == errno.ELOOP


def test_dotdot_never_leaves_the_root(env: Env) -> None:
    (env.share / "a").mkdir()
    c = env.client()
    root = c.getattr(0).qid
    qids = c.walk(0, 1, "..", "..", "..")
    assert all(q == root for q in qids)
    assert c.getattr(1).qid == root
    assert len(c.walk(0, 2, "..", "outside", "canary.txt")) == 1
    qids = c.walk(0, 3, "a", "..", "..", "..")
    assert qids[1:] == [root, root, root]
    c.walk(0, 4, "a")
    c.walk(4, 4, "..", "..")
    assert c.getattr(4).qid == root
    # A fid attached once more, or cloned, has the same root.
    c.attach(5)
    assert c.walk(5, 6, "..") == [root]


def test_readdir_of_the_root_does_not_show_the_parent_inode(env: Env) -> None:
    c = env.client()
    c.walk(0, 1)
    c.lopen(1, O_RDONLY | O_DIRECTORY)
    entries = {e[3]: e[0].path for e in c.readdir(1, 0, 4096)}
    assert entries[b".."] == entries[b"."] == os.stat(env.share).st_ino


def test_dotdot_uses_the_walked_parent_not_the_host_path(env: Env) -> None:
    (env.share / "a").mkdir()
    (env.share / "a" / "b").mkdir()
    (env.share / "marker").write_bytes(b"share")
    c = env.client()
    c.walk(0, 1, "a", "b")
    # The host moves b to the top; ".." from the fid still leads to the directory it was
    # walked from.
    os.rename(env.share / "a" / "b", env.share / "b2")
    qids = c.walk(1, 2, "..")
    assert qids[0].path == os.stat(env.share / "a").st_ino


@pytest.mark.parametrize("name", [
    "/etc/passwd", "/", "../outside", "a/b", "..//..", "x/../..", "outside/../../canary.txt",
    str(os.sep) + "tmp",
])
def test_names_with_a_slash_are_refused_everywhere(env: Env, name: str) -> None:
    (env.share / "f").write_bytes(b"f")
    c = env.client()
    c.walk(0, 1, "f")
    assert err(c.walk, 0, 2, name) == errno.ENOENT
    assert err(c.walk, 0, 2, "f", name) == errno.ENOENT     # all names checked first
    c.walk(0, 2)
    assert err(c.lcreate, 2, name, O_RDWR | O_CREAT, 0o644) == errno.ENOENT
    assert err(c.mkdir, 0, name) == errno.ENOENT
    assert err(c.mknod, 0, name, 0o100644) == errno.ENOENT
    assert err(c.symlink, 0, name, "target") == errno.ENOENT
    assert err(c.link, 0, 1, name) == errno.ENOENT
    assert err(c.rename, 1, 0, name) == errno.ENOENT
    assert err(c.renameat, 0, "f", 0, name) == errno.ENOENT
    assert err(c.renameat, 0, name, 0, "g") == errno.ENOENT
    assert err(c.unlinkat, 0, name) == errno.ENOENT
    assert err(c.unlinkat, 0, name, 0x200) == errno.ENOENT
    assert (env.share / "f").read_bytes() == b"f"


@pytest.mark.parametrize("name", [b"canary.txt\0", b"\0", b"f\0/../../x", b"a\0b"])
def test_names_with_nul_are_refused(env: Env, name: bytes) -> None:
    (env.share / "f").write_bytes(b"f")
    c = env.client()
    c.walk(0, 1, "f")
    assert err(c.walk, 0, 2, name) in (errno.EINVAL, errno.ENOENT)
    c.walk(0, 2)
    assert err(c.lcreate, 2, name, O_RDWR | O_CREAT, 0o644) in (errno.EINVAL, errno.ENOENT)
    assert err(c.mkdir, 0, name) in (errno.EINVAL, errno.ENOENT)
    assert err(c.symlink, 0, name, "t") in (errno.EINVAL, errno.ENOENT)
    assert err(c.symlink, 0, "ok", b"t\0x") == errno.EINVAL
    assert err(c.link, 0, 1, name) in (errno.EINVAL, errno.ENOENT)
    assert err(c.renameat, 0, "f", 0, name) in (errno.EINVAL, errno.ENOENT)
    assert err(c.unlinkat, 0, name) in (errno.EINVAL, errno.ENOENT)
    assert err(c.xattrwalk, 1, 3, b"user.a\0b") == errno.EINVAL
    assert sorted(os.listdir(env.share)) == ["f"]


def test_a_symlink_swapped_in_after_the_walk_is_not_followed(env: Env) -> None:
    (env.share / "f").write_bytes(b"original")
    (env.share / "d").mkdir()
    c = env.client()
    c.walk(0, 1, "f")
    c.walk(0, 2, "d")
    c.walk(0, 3, "d")
    # The host (or a racing guest) replaces both names with symlinks to the outside.
    os.rename(env.share / "f", env.share / "f.old")
    os.symlink(env.outside / "canary.txt", env.share / "f")
    os.rename(env.share / "d", env.share / "d.old")
    os.symlink(env.outside, env.share / "d")
    c.lopen(1, O_RDWR)
    assert c.read(1, 0, 100) == b"original"
    c.write(1, 0, b"ORIGINAL")
    assert (env.share / "f.old").read_bytes() == b"ORIGINAL"
    c.lcreate(2, "created", O_RDWR | O_CREAT, 0o644)
    assert (env.share / "d.old" / "created").exists()
    c.mkdir(3, "subdir")
    assert (env.share / "d.old" / "subdir").is_dir()
    c.setattr(3, 0x1, mode=0o700)
    c.walk(0, 4, "d")
    assert err(c.lopen, 4, O_RDONLY | O_DIRECTORY) == errno.ELOOP


def test_a_directory_swapped_for_a_symlink_during_a_walk_stops_the_walk(env: Env) -> None:
    (env.share / "a").mkdir()
    (env.share / "a" / "dir").mkdir()
    os.rename(env.share / "a", env.share / "a.old")
    os.symlink(env.outside, env.share / "a")
    c = env.client()
    assert len(c.walk(0, 1, "a", "dir", "inner.txt")) == 1


def test_oversized_counts_are_clamped_or_refused(env: Env) -> None:
    (env.share / "f").write_bytes(b"x" * 100_000)
    c = env.client(msize=8192)
    c.walk(0, 1, "f")
    c.lopen(1, O_RDWR)
    assert len(c.read(1, 0, 0xFFFFFFFF)) == 8192 - 11
    assert len(c.read(1, 0, 0xFFFFFFFF, room=0)) == 0
    assert err(c.read, 1, 1 << 63, 10) == errno.EINVAL
    # A Twrite whose count exceeds the bytes it carries is refused, not read past.
    body = struct.pack("<IQI", 1, 0, 0xFFFFFFFF) + b"abc"
    assert err(c.call, 118, body) == errno.EINVAL
    assert (env.share / "f").read_bytes()[:3] == b"xxx"
    c.walk(0, 2)
    c.lopen(2, O_RDONLY | O_DIRECTORY)
    reply = c.raw(msg(40, 9, struct.pack("<IQI", 2, 0, 0xFFFFFFFF)))
    assert len(reply) <= 8192
    assert err(c.xattrcreate, 1, "user.a", 1 << 40) == errno.E2BIG
    # Writing past the declared xattr size is cut at the size.
    c.walk(0, 3, "f")
    c.xattrcreate(3, "user.a", 2)
    assert c.write(3, 0, b"abcdef") == 2
    c.clunk(3)
    assert os.getxattr(env.share / "f", "user.a") == b"ab"


def test_msize_abuse(env: Env) -> None:
    server = env.server(max_msize=65536)
    c = Client(server, 1 << 30)
    assert err(c.version, 0) == errno.EMSGSIZE
    assert err(c.version, 100) == errno.EMSGSIZE
    assert c.version(0xFFFFFFFF) == (65536, b"9P2000.L")
    c.attach(0)
    (env.share / "big").write_bytes(b"y" * 200_000)
    c.walk(0, 1, "big")
    c.lopen(1, O_RDONLY)
    assert len(c.read(1, 0, 0xFFFFFFFF)) == 65536 - 11
    assert c.version(4096) == (4096, b"9P2000.L")
    c.attach(0)
    c.walk(0, 1, "big")
    c.lopen(1, O_RDONLY)
    assert len(c.read(1, 0, 0xFFFFFFFF)) == 4096 - 11


def test_fid_reuse_and_clunked_fids(env: Env) -> None:
    (env.share / "f").write_bytes(b"f")
    c = env.client()
    assert err(c.attach, 0) == errno.EINVAL
    c.walk(0, 1, "f")
    assert err(c.walk, 0, 1, "f") == errno.EINVAL
    assert err(c.walk, 0, 1) == errno.EINVAL
    assert err(c.xattrwalk, 0, 1, "") == errno.EINVAL
    assert err(c.walk, 0, 0xFFFFFFFF) == errno.EINVAL
    c.clunk(1)
    for call, args in ((c.getattr, (1,)), (c.lopen, (1, 0)), (c.read, (1, 0, 10)),
                       (c.write, (1, 0, b"x")), (c.walk, (1, 2)), (c.clunk, (1,)),
                       (c.remove, (1,)), (c.readlink, (1,)), (c.statfs, (1,)),
                       (c.mkdir, (1, "x")), (c.fsync, (1,))):
        assert err(call, *args) == errno.ENOENT
    assert err(c.lopen, 77, 0) == errno.ENOENT
    assert (env.share / "f").read_bytes() == b"f"


def test_fid_and_fd_caps(env: Env) -> None:
    for i in range(10):
        (env.share / f"f{i}").write_bytes(b"%d" % i)
    server = env.server()
    server.max_fids = 10
    c = Client(server)
    c.version()
    c.attach(0)
    for i in range(1, 10):
        c.walk(0, i)
    assert err(c.walk, 0, 10) == errno.EMFILE
    assert err(c.attach, 10) == errno.EMFILE
    for i in range(1, 10):
        c.clunk(i)
    # Node fds are reclaimed to stay in the budget; open files are not.
    server.max_host_fds = 4
    opened = []
    for i in range(1, 10):
        try:
            c.walk(0, i, f"f{i}")
            c.lopen(i, O_RDONLY)
        except NinePError as exc:
            assert exc.errno == errno.ENFILE
            break
        opened.append(i)
    assert len(opened) == 4
    for i in opened:
        assert c.read(i, 0, 10) == b"%d" % i
        assert c.getattr(i).size == 1
    c.clunk(opened[0])
    c.walk(0, 9, "f9")


def test_reclaimed_node_fds_come_back_only_for_the_same_inode(env: Env) -> None:
    for i in range(40):
        (env.share / f"f{i}").write_bytes(b"%d" % i)
    (env.share / "d").mkdir()
    (env.share / "d" / "inner").write_bytes(b"inner")
    server = env.server()
    c = Client(server)
    c.version()
    c.attach(0)
    server.max_host_fds = 8
    c.walk(0, 100, "d", "inner")
    for i in range(40):
        c.walk(0, i + 1, f"f{i}")
    assert server.nodes.reclaimed > 0
    assert server.host_fds <= 8
    for i in range(40):                       # every fid still reaches its file
        assert c.getattr(i + 1).qid.path == os.stat(env.share / f"f{i}").st_ino
    # A guest rename is followed; a name the host swapped for a symlink is not reopened.
    c.renameat(0, "f0", 0, "g0")
    os.rename(env.share / "f1", env.share / "f1.old")
    os.symlink(env.outside / "canary.txt", env.share / "f1")
    os.rename(env.share / "d", env.share / "d.old")
    os.symlink(env.outside, env.share / "d")
    for i in range(2, 40):
        c.getattr(i + 1)                      # push f0, f1 and d out of the budget
    assert c.getattr(1).qid.path == os.stat(env.share / "g0").st_ino
    assert err(c.getattr, 2) in (errno.ESTALE, errno.ELOOP)
    assert err(c.lopen, 2, O_RDONLY) in (errno.ESTALE, errno.ELOOP)
    assert err(c.getattr, 100) in (errno.ESTALE, errno.ELOOP, errno.ENOTDIR)


def test_deep_walks_release_their_fds(env: Env) -> None:
    path = env.share
    names = [f"d{i}" for i in range(16)]
    for name in names:
        path = path / name
    path.mkdir(parents=True)
    before = len(os.listdir("/proc/self/fd"))
    server = env.server()
    c = Client(server)
    c.version()
    c.attach(0)
    for i in range(1, 30):
        assert len(c.walk(0, i, *names)) == 16
    for i in range(1, 30):
        c.walk(i, i, "..", "..")
    for i in range(1, 30):
        c.clunk(i)
    assert server.host_fds == 0
    assert len(os.listdir("/proc/self/fd")) == before + 1          # the root
    assert err(c.walk, 0, 1, "missing") == errno.ENOENT
    c.walk(0, 1, *names[:3], "missing")
    assert server.host_fds == 0


def test_malformed_messages(env: Env) -> None:
    c = env.client()
    server = c.server
    for data in (b"", b"\x07", b"\x07\0\0\0\x64", b"\x07\0\0\0\x64\x01"):
        reply = server.handle(data, 8192)
        assert struct.unpack("<IBHI", reply) == (11, 7, 0xFFFF, errno.EINVAL)
    # The size field claims more than was given.
    reply = server.handle(struct.pack("<IBH", 1000, 120, 5) + b"\0\0\0\0", 8192)
    assert struct.unpack("<IBHI", reply) == (11, 7, 5, errno.EINVAL)
    reply = server.handle(struct.pack("<IBH", 3, 120, 5) + b"\0\0\0\0", 8192)
    assert struct.unpack("<IBHI", reply) == (11, 7, 5, errno.EINVAL)
    # A body cut short.
    reply = server.handle(struct.pack("<IBH", 9, 110, 6) + b"\0\0", 8192)
    assert struct.unpack("<IBHI", reply) == (11, 7, 6, errno.EINVAL)
    # A string running past the end.
    body = struct.pack("<IIH", 0, 1, 1) + struct.pack("<H", 500) + b"abc"
    reply = server.handle(msg(110, 7, body), 8192)
    assert struct.unpack("<IBHI", reply) == (11, 7, 7, errno.EINVAL)
    # Unknown and R-message types.
    for mtype in (0, 1, 7, 101, 111, 255):
        reply = server.handle(msg(mtype, 8, b"\0" * 40), 8192)
        assert struct.unpack("<IBHI", reply) == (11, 7, 8, errno.EOPNOTSUPP)
    assert c.getattr(0).qid.type == 0x80        # still serving


_TYPES = [8, 12, 14, 16, 18, 20, 22, 24, 26, 30, 32, 40, 50, 52, 54, 70, 72, 74, 76, 100,
          102, 104, 108, 110, 116, 118, 120, 122]
_NAMES = [b"f", b"d", b"..", b".", b"out-abs", b"out-rel", b"canary-link", b"slash",
          b"canary.txt", b"", b"x", b"/etc", b"a\0", b".virtfs_metadata"]


@st.composite
def _messages(draw: st.DrawFn) -> bytes:
    mtype = draw(st.sampled_from(_TYPES))
    parts = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.integers(0, 4))
        if kind == 0:
            parts.append(struct.pack("<I", draw(st.integers(0, 6))))         # a fid
        elif kind == 1:
            name = draw(st.sampled_from(_NAMES))
            parts.append(struct.pack("<H", len(name)) + name)
        elif kind == 2:
            parts.append(struct.pack("<Q", draw(st.integers(0, (1 << 64) - 1))))
        elif kind == 3:
            parts.append(struct.pack("<I", draw(st.integers(0, (1 << 32) - 1))))
        else:
            parts.append(draw(st.binary(max_size=12)))
    body = b"".join(parts)
    if draw(st.booleans()):
        return msg(mtype, draw(st.integers(0, 0xFFFF)), body)
    size = draw(st.integers(0, len(body) + 20))
    return struct.pack("<IBH", size, mtype, 3) + body


def _fuzz_share(env: Env) -> None:
    plant_links(env)
    (env.share / "f").write_bytes(b"file")
    (env.share / "d").mkdir()


@pytest.mark.parametrize(("model", "fd_budget"), [
    ("passthrough", 0), ("mapped-xattr", 0), ("mapped-file", 0), ("passthrough", 3),
    ("mapped-file", 3)])
def test_fuzzed_messages_never_escape_or_raise(env: Env, model: str, fd_budget: int) -> None:
    _fuzz_share(env)
    client = env.client(model=model)
    server = client.server
    if fd_budget:                        # node fds reclaimed and reopened all the time
        server.max_host_fds = fd_budget

    @settings(max_examples=400, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
    @given(st.lists(_messages(), min_size=1, max_size=12), st.integers(0, 70000))
    def run(messages: list[bytes], room: int) -> None:
        server.reset()
        client.version()
        client.attach(0)
        for fid, name in ((1, "f"), (2, "d"), (3, "out-abs")):
            with contextlib.suppress(NinePError):    # an earlier example may have removed it
                client.walk(0, fid, name)
        for data in messages:
            reply = client.raw(data, room)
            size, rtype, _tag = struct.unpack_from("<IBH", reply)
            assert size == len(reply) >= 7
            assert rtype % 2 == 1
            assert len(reply) <= max(room, 11)
            assert SECRET not in reply
        # Whatever failed on the way, a reset gives every host fd back.
        server.reset()
        assert server.host_fds == 0
        assert len(os.listdir("/proc/self/fd")) == fds_before

    server.reset()
    fds_before = len(os.listdir("/proc/self/fd"))
    run()


@given(st.binary(max_size=64))
@settings(max_examples=300, deadline=None, database=None)
def test_random_bytes_get_an_answer(data: bytes) -> None:
    import tempfile

    from kvmpy.fs import FsDev, Server
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(FsDev(id="f", path=tmp, security_model="passthrough"))
        try:
            reply = server.handle(data, 8192)
            size, rtype, _tag = struct.unpack_from("<IBH", reply)
            assert size == len(reply) and rtype % 2 == 1
        finally:
            server.close()


@pytest.mark.parametrize("model", ["passthrough", "none", "mapped-xattr", "mapped-file"])
def test_only_user_and_acl_xattrs_reach_the_host(env: Env, model: str) -> None:
    (env.share / "f").write_bytes(b"")
    os.setxattr(env.share / "f", "trusted.host", b"t")
    c = env.client(model=model)
    c.walk(0, 1, "f")
    for name in ("security.capability", "trusted.x", "security.selinux", "system.foo",
                 "btrfs.compression", "nonamespace"):
        assert err(c.xattrwalk, 1, 2, name) == errno.EOPNOTSUPP
        c.walk(1, 2)
        c.xattrcreate(2, name, 1)
        c.write(2, 0, b"x")
        assert err(c.clunk, 2) == errno.EOPNOTSUPP
    assert err(c.xattrwalk, 1, 2, "trusted.host") == errno.EOPNOTSUPP
    c.set_xattr(1, 2, "user.ok", b"1")
    assert c.get_xattr(1, 2, "") == b"user.ok\0"
    assert sorted(os.listxattr(env.share / "f")) == ["trusted.host", "user.ok"]


def test_a_host_lease_does_not_stall_open(env: Env) -> None:
    import fcntl
    import signal
    (env.share / "leased").write_bytes(b"x")
    previous = signal.signal(signal.SIGIO, signal.SIG_IGN)    # the lease break notice
    holder = os.open(env.share / "leased", os.O_RDONLY)
    try:
        fcntl.fcntl(holder, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        c = env.client()
        c.walk(0, 1, "leased")
        # Without O_NONBLOCK this open would wait for the lease-break time (45 s).
        assert err(c.lopen, 1, O_WRONLY) == errno.EAGAIN
        fcntl.fcntl(holder, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        c.lopen(1, O_WRONLY)
        c.write(1, 0, b"y")                       # blocking mode again: a plain write
    finally:
        os.close(holder)
        signal.signal(signal.SIGIO, previous)
    assert (env.share / "leased").read_bytes() == b"y"
