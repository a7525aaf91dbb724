"""Every 9P2000.L message against a passthrough export, checked on the host side."""

from __future__ import annotations

import errno
import os
import stat
import struct

import pytest

from tests.fs.client import NinePError
from tests.fs.conftest import Env

O_RDONLY, O_WRONLY, O_RDWR = 0, 1, 2
O_CREAT, O_TRUNC, O_APPEND, O_DIRECTORY = 0o100, 0o1000, 0o2000, 0o200000
QTDIR, QTSYMLINK, QTFILE = 0x80, 0x02, 0x00


def errno_of(exc: pytest.ExceptionInfo[NinePError]) -> int:
    return exc.value.errno


def test_version_negotiates_msize_and_resets(env: Env) -> None:
    c = env.client(max_msize=512 * 1024)
    assert c.version(1 << 30) == (512 * 1024, b"9P2000.L")
    assert c.version(8192) == (8192, b"9P2000.L")
    assert c.version(65536, b"9P2000.u")[1] == b"unknown"
    assert c.version(65536, b"9P2000")[1] == b"unknown"
    with pytest.raises(NinePError) as exc:
        c.version(4095)
    assert errno_of(exc) == errno.EMSGSIZE
    c.version(65536)
    # Tversion clunks every fid: fid 0 is gone until the next attach.
    with pytest.raises(NinePError) as exc:
        c.getattr(0)
    assert errno_of(exc) == errno.ENOENT
    qid = c.attach(0)
    assert qid.type == QTDIR
    assert qid.path == os.stat(env.share).st_ino


def test_auth_is_not_supported(env: Env) -> None:
    c = env.client()
    with pytest.raises(NinePError) as exc:
        c.call(102, struct.pack("<I", 5) + b"\0\0\0\0" + struct.pack("<I", 0))
    assert errno_of(exc) == errno.EOPNOTSUPP
    with pytest.raises(NinePError) as exc:
        c.call(124, struct.pack("<I", 0))            # 9P2000 Tstat: not in .L
    assert errno_of(exc) == errno.EOPNOTSUPP


def test_walk_open_read_getattr(env: Env) -> None:
    (env.share / "d").mkdir()
    (env.share / "d" / "f").write_bytes(b"0123456789")
    c = env.client()
    qids = c.walk(0, 1, "d", "f")
    st = os.stat(env.share / "d" / "f")
    assert [q.type for q in qids] == [QTDIR, QTFILE]
    assert qids[1].path == st.st_ino and qids[1].version == 0
    qid, iounit = c.lopen(1, O_RDONLY)
    assert qid == qids[1]
    assert 0 < iounit <= 512 * 1024 - 24
    assert c.read(1, 0, 4) == b"0123"
    assert c.read(1, 8, 100) == b"89"
    assert c.read(1, 100, 100) == b""
    attr = c.getattr(1)
    assert attr.valid == 0x7FF
    assert attr.size == 10 and attr.nlink == 1
    assert attr.mode == st.st_mode and attr.uid == st.st_uid and attr.gid == st.st_gid
    assert attr.mtime == (int(st.st_mtime), st.st_mtime_ns % 10**9)
    assert attr.qid == qids[1]


def test_partial_walk_returns_the_qids_walked(env: Env) -> None:
    (env.share / "a").mkdir()
    c = env.client()
    qids = c.walk(0, 1, "a", "missing", "x")
    assert len(qids) == 1 and qids[0].type == QTDIR
    with pytest.raises(NinePError) as exc:       # newfid is not created by a partial walk
        c.getattr(1)
    assert errno_of(exc) == errno.ENOENT
    with pytest.raises(NinePError) as exc:       # the first name failing is an error
        c.walk(0, 1, "missing")
    assert errno_of(exc) == errno.ENOENT
    with pytest.raises(NinePError) as exc:
        c.walk(0, 1, *["a"] * 17)
    assert errno_of(exc) == errno.EINVAL
    assert len(c.walk(0, 1, *["."] * 16)) == 16


def test_walk_clone_and_in_place(env: Env) -> None:
    (env.share / "a").mkdir()
    c = env.client()
    assert c.walk(0, 1) == []
    assert c.getattr(1).qid == c.getattr(0).qid
    c.walk(1, 1, "a")                             # newfid == fid: walks the fid itself
    assert c.getattr(1).qid.path == os.stat(env.share / "a").st_ino
    c.walk(1, 1, "..")
    assert c.getattr(1).qid == c.getattr(0).qid


def test_lcreate_write_read_fsync(env: Env) -> None:
    c = env.client()
    c.walk(0, 1)
    qid, _ = c.lcreate(1, "new", O_RDWR | O_CREAT, 0o640, gid=0)
    assert qid.type == QTFILE
    assert c.write(1, 0, b"hello") == 5
    assert c.write(1, 5, b" world") == 6
    c.fsync(1)
    c.fsync(1, datasync=1)
    assert c.read(1, 0, 100) == b"hello world"
    path = env.share / "new"
    assert path.read_bytes() == b"hello world"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert qid.path == path.stat().st_ino
    with pytest.raises(NinePError) as exc:        # an opened fid cannot be opened again
        c.lopen(1, O_RDONLY)
    assert errno_of(exc) == errno.EINVAL
    c.walk(0, 2)
    with pytest.raises(NinePError) as exc:
        c.lcreate(2, "new", O_RDWR | O_CREAT, 0o640)
    assert errno_of(exc) == errno.EEXIST


def test_open_flags_truncate_and_append(env: Env) -> None:
    (env.share / "f").write_bytes(b"abcdef")
    c = env.client()
    c.walk(0, 1, "f")
    c.lopen(1, O_WRONLY | O_TRUNC)
    assert (env.share / "f").read_bytes() == b""
    c.walk(0, 2, "f")
    c.lopen(2, O_WRONLY | O_APPEND)
    c.write(2, 0, b"xy")
    c.write(2, 0, b"z")
    assert (env.share / "f").read_bytes() == b"xyz"


def test_readdir_across_calls_with_stable_offsets(env: Env) -> None:
    names = {f"file-{i:04d}-{'x' * (i % 40)}".encode() for i in range(300)}
    for name in names:
        (env.share / name.decode()).write_bytes(b"")
    (env.share / "sub").mkdir()
    os.symlink("file-0001", env.share / "link")
    c = env.client()
    c.walk(0, 1)
    c.lopen(1, O_RDONLY | O_DIRECTORY)
    entries = c.readdir_all(1, count=512)          # many small calls
    got = [e[3] for e in entries]
    assert len(got) == len(set(got))
    assert set(got) == names | {b".", b"..", b"sub", b"link"}
    by_name = {e[3]: e for e in entries}
    assert by_name[b"sub"][0].type == QTDIR and by_name[b"sub"][2] == 4     # DT_DIR
    assert by_name[b"link"][0].type == QTSYMLINK and by_name[b"link"][2] == 10
    assert by_name[b"sub"][0].path == os.stat(env.share / "sub").st_ino
    # Restarting from an offset returned earlier continues right after that entry.
    middle = entries[100][1]
    again = c.readdir(1, middle, 4096)
    assert [e[3] for e in again] == got[101:101 + len(again)]
    # One big call returns the same listing.
    assert [e[3] for e in c.readdir(1, 0, 512 * 1024 - 11)] == got
    # A count below one entry returns none, never a partial entry.
    assert c.readdir(1, 0, 10) == []


def test_readdir_needs_an_open_directory(env: Env) -> None:
    (env.share / "f").write_bytes(b"x")
    c = env.client()
    with pytest.raises(NinePError) as exc:
        c.readdir(0, 0, 4096)
    assert errno_of(exc) == errno.EINVAL
    c.walk(0, 1, "f")
    c.lopen(1, O_RDONLY)
    with pytest.raises(NinePError) as exc:
        c.readdir(1, 0, 4096)
    assert errno_of(exc) == errno.EINVAL


def test_mkdir_mknod_symlink_readlink(env: Env) -> None:
    c = env.client()
    qid = c.mkdir(0, "dir", 0o751)
    assert qid.type == QTDIR
    assert stat.S_IMODE(os.stat(env.share / "dir").st_mode) == 0o751
    c.walk(0, 1, "dir")
    qid = c.symlink(1, "ln", "../some/where")
    assert qid.type == QTSYMLINK
    assert os.readlink(env.share / "dir" / "ln") == "../some/where"
    c.walk(1, 2, "ln")
    assert c.readlink(2) == b"../some/where"
    with pytest.raises(NinePError) as exc:
        c.readlink(1)
    assert errno_of(exc) == errno.EINVAL
    c.mknod(1, "fifo", stat.S_IFIFO | 0o600)
    assert stat.S_ISFIFO(os.lstat(env.share / "dir" / "fifo").st_mode)
    c.mknod(1, "chr", stat.S_IFCHR | 0o600, 1, 3)
    st = os.lstat(env.share / "dir" / "chr")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    c.walk(1, 3, "chr")
    assert c.getattr(3).rdev == os.makedev(1, 3)
    with pytest.raises(NinePError) as exc:
        c.mkdir(0, "dir")
    assert errno_of(exc) == errno.EEXIST
    for bad, code in ((".", errno.EEXIST), ("..", errno.EEXIST), ("", errno.ENOENT)):
        with pytest.raises(NinePError) as exc:
            c.mkdir(0, bad)
        assert errno_of(exc) == code


def test_special_files_are_never_opened(env: Env) -> None:
    c = env.client()
    c.mknod(0, "fifo", stat.S_IFIFO | 0o666)
    c.mknod(0, "null", stat.S_IFCHR | 0o666, 1, 3)
    for i, name in enumerate(("fifo", "null")):
        c.walk(0, 10 + i, name)
        for flags in (O_RDONLY, O_WRONLY, O_RDWR):
            with pytest.raises(NinePError) as exc:
                c.lopen(10 + i, flags)
            assert errno_of(exc) == errno.ENXIO


def test_link_rename_renameat_unlinkat_remove(env: Env) -> None:
    (env.share / "a").write_bytes(b"A")
    (env.share / "d").mkdir()
    c = env.client()
    c.walk(0, 1, "a")
    c.walk(0, 2, "d")
    c.link(2, 1, "hard")
    assert os.stat(env.share / "d" / "hard").st_ino == os.stat(env.share / "a").st_ino
    assert c.getattr(1).nlink == 2
    c.rename(1, 2, "moved")
    assert not (env.share / "a").exists()
    assert (env.share / "d" / "moved").read_bytes() == b"A"
    # The fid follows its file: it can be renamed again from its new place.
    c.rename(1, 0, "back")
    assert (env.share / "back").read_bytes() == b"A"
    c.renameat(0, "back", 2, "again")
    assert (env.share / "d" / "again").read_bytes() == b"A"
    c.unlinkat(2, "hard")
    assert not (env.share / "d" / "hard").exists()
    c.mkdir(2, "sub")
    with pytest.raises(NinePError) as exc:
        c.unlinkat(2, "sub")
    assert errno_of(exc) == errno.EISDIR
    c.unlinkat(2, "sub", 0x200)
    assert not (env.share / "d" / "sub").exists()
    with pytest.raises(NinePError) as exc:
        c.unlinkat(0, "d", 0x200)
    assert errno_of(exc) == errno.ENOTEMPTY
    c.walk(2, 3, "again")
    c.remove(3)
    assert not (env.share / "d" / "again").exists()
    with pytest.raises(NinePError) as exc:       # Tremove clunked the fid
        c.getattr(3)
    assert errno_of(exc) == errno.ENOENT
    with pytest.raises(NinePError) as exc:
        c.unlinkat(2, ".")
    assert errno_of(exc) == errno.EINVAL
    with pytest.raises(NinePError) as exc:
        c.unlinkat(2, "..")
    assert errno_of(exc) == errno.ENOTEMPTY
    with pytest.raises(NinePError) as exc:
        c.renameat(0, "d", 0, "..")
    assert errno_of(exc) == errno.EISDIR
    with pytest.raises(NinePError) as exc:
        c.remove(0)                                # the root cannot be removed
    assert errno_of(exc) == errno.EBUSY


def test_remove_of_a_fid_whose_name_was_reused_removes_nothing(env: Env) -> None:
    (env.share / "f").write_bytes(b"old")
    c = env.client()
    c.walk(0, 1, "f")
    os.rename(env.share / "f", env.share / "g")
    (env.share / "f").write_bytes(b"new")
    with pytest.raises(NinePError) as exc:
        c.remove(1)
    assert errno_of(exc) == errno.ENOENT
    assert (env.share / "f").read_bytes() == b"new"


def test_setattr(env: Env) -> None:
    (env.share / "f").write_bytes(b"0123456789")
    c = env.client()
    c.walk(0, 1, "f")
    c.setattr(1, 0x1, mode=0o604)
    assert stat.S_IMODE(os.stat(env.share / "f").st_mode) == 0o604
    c.setattr(1, 0x8, size=4)
    assert (env.share / "f").read_bytes() == b"0123"
    c.setattr(1, 0x8, size=1 << 20)                 # sparse growth
    st = os.stat(env.share / "f")
    assert st.st_size == 1 << 20 and st.st_blocks * 512 < 1 << 20
    c.setattr(1, 0x10 | 0x20 | 0x80 | 0x100, atime=(1000, 5), mtime=(2000, 7))
    st = os.stat(env.share / "f")
    assert st.st_atime_ns == 1000 * 10**9 + 5 and st.st_mtime_ns == 2000 * 10**9 + 7
    c.setattr(1, 0x20)                               # MTIME without MTIME_SET: now
    assert os.stat(env.share / "f").st_mtime > 2000
    assert os.stat(env.share / "f").st_atime_ns == 1000 * 10**9 + 5
    c.setattr(1, 0x2 | 0x4, uid=1234, gid=4321)
    st = os.stat(env.share / "f")
    assert (st.st_uid, st.st_gid) == (1234, 4321)
    c.setattr(1, 0x4, gid=55)
    assert os.stat(env.share / "f").st_uid == 1234
    with pytest.raises(NinePError) as exc:
        c.setattr(0, 0x8, size=0)
    assert errno_of(exc) == errno.EISDIR


def test_passthrough_create_owner_is_the_attach_uid_and_given_gid(env: Env) -> None:
    c = env.client()
    c.attach(5, uid=1001)
    c.walk(5, 6)
    c.lcreate(6, "owned", O_RDWR | O_CREAT, 0o600, gid=2002)
    st = os.stat(env.share / "owned")
    assert (st.st_uid, st.st_gid) == (1001, 2002)
    c.mkdir(5, "owned-dir", 0o700, gid=2003)
    st = os.stat(env.share / "owned-dir")
    assert (st.st_uid, st.st_gid) == (1001, 2003)
    c.symlink(5, "owned-link", "x", gid=2004)
    st = os.lstat(env.share / "owned-link")
    assert (st.st_uid, st.st_gid) == (1001, 2004)


def test_statfs(env: Env) -> None:
    c = env.client(msize=65536)
    ftype, bsize, blocks, bfree, bavail, files, ffree, _fsid, namelen = c.statfs(0)
    host = os.statvfs(env.share)
    assert bsize % host.f_bsize == 0 and bsize <= 65536
    factor = bsize // host.f_bsize
    assert abs(blocks - host.f_blocks // factor) <= 1
    assert files == host.f_files and namelen == host.f_namemax
    assert ftype != 0 and bfree >= bavail and ffree <= files


def test_xattrs(env: Env) -> None:
    (env.share / "f").write_bytes(b"")
    c = env.client()
    c.walk(0, 1, "f")
    c.set_xattr(1, 9, "user.color", b"blue")
    assert os.getxattr(env.share / "f", "user.color") == b"blue"
    assert c.get_xattr(1, 8, "user.color") == b"blue"
    listing = c.get_xattr(1, 8, "")
    assert b"user.color\0" in listing
    # A value written in pieces.
    c.walk(1, 9)
    c.xattrcreate(9, "user.big", 6)
    c.write(9, 0, b"abc")
    c.write(9, 3, b"def")
    c.clunk(9)
    assert os.getxattr(env.share / "f", "user.big") == b"abcdef"
    # XATTR_CREATE on an existing name fails at clunk; an empty value removes it.
    c.walk(1, 9)
    c.xattrcreate(9, "user.color", 1, flags=1)
    c.write(9, 0, b"x")
    with pytest.raises(NinePError) as exc:
        c.clunk(9)
    assert errno_of(exc) == errno.EEXIST
    c.set_xattr(1, 9, "user.color", b"")
    assert "user.color" not in os.listxattr(env.share / "f")
    with pytest.raises(NinePError) as exc:
        c.xattrwalk(1, 8, "user.missing")
    assert errno_of(exc) == errno.ENODATA
    # A short value is refused at clunk, and nothing is set.
    c.walk(1, 9)
    c.xattrcreate(9, "user.short", 10)
    c.write(9, 0, b"abc")
    with pytest.raises(NinePError) as exc:
        c.clunk(9)
    assert errno_of(exc) == errno.EINVAL
    assert "user.short" not in os.listxattr(env.share / "f")
    with pytest.raises(NinePError) as exc:
        c.xattrcreate(1, "user.huge", 65537)
    assert errno_of(exc) == errno.E2BIG


def test_locks_exclude_between_fids_and_never_block(env: Env) -> None:
    (env.share / "f").write_bytes(b"x" * 100)
    c = env.client()
    c.walk(0, 1, "f")
    c.lopen(1, O_RDWR)
    c.walk(0, 2, "f")
    c.lopen(2, O_RDWR)
    assert c.lock(1, 1, 0, 10) == 0                  # WRLCK: success
    assert c.lock(2, 1, 5, 10, flags=1) == 1         # conflict: BLOCKED, even if BLOCK asked
    assert c.lock(2, 0, 20, 0) == 0                  # a disjoint range is fine
    ltype, start, length, _pid, client = c.getlock(2, 1, 0, 10)
    assert (ltype, start, length) == (1, 0, 10)
    assert client == b"guest"
    assert c.getlock(1, 1, 50, 5)[:3] == (0, 20, 0)  # fid 2's read lock from 20 to EOF
    assert c.getlock(1, 1, 0, 10)[0] == 2            # its own lock: no conflict -> UNLCK
    assert c.lock(1, 2, 0, 10) == 0                  # unlock
    assert c.lock(2, 1, 5, 10) == 0
    c.clunk(2)                                       # closing the fid releases its locks
    assert c.lock(1, 1, 0, 0) == 0


def test_flush_and_clunk(env: Env) -> None:
    c = env.client()
    c.flush(1234)                                    # an unknown tag: Rflush at once
    c.walk(0, 1)
    c.clunk(1)
    with pytest.raises(NinePError) as exc:
        c.clunk(1)
    assert errno_of(exc) == errno.ENOENT


def test_large_file_reads_at_msize_boundaries(env: Env) -> None:
    msize = 65536
    data = os.urandom(3 * msize + 123)
    (env.share / "big").write_bytes(data)
    c = env.client(msize=msize)
    c.walk(0, 1, "big")
    _, iounit = c.lopen(1, O_RDONLY)
    assert iounit <= msize - 24
    # A count above msize - 11 is clamped: the reply never exceeds msize.
    chunk = c.read(1, 0, 1 << 20)
    assert len(chunk) == msize - 11 and chunk == data[:msize - 11]
    # The reply room the guest posted also limits the count.
    assert c.read(1, 0, 100000, room=1000) == data[:989]
    out = bytearray()
    while len(out) < len(data):
        part = c.read(1, len(out), iounit)
        assert part
        out += part
    assert bytes(out) == data
    assert c.read(1, len(data), iounit) == b""


def test_sparse_file_reads_zeros(env: Env) -> None:
    path = env.share / "sparse"
    with open(path, "wb") as f:
        f.seek(10 << 20)
        f.write(b"end")
    c = env.client()
    c.walk(0, 1, "sparse")
    c.lopen(1, O_RDONLY)
    assert c.read(1, 5 << 20, 4096) == bytes(4096)
    assert c.read(1, (10 << 20) - 2, 10) == b"\0\0end"
    assert c.getattr(1).blocks * 512 < 1 << 20


def test_writes_land_in_sparse_holes(env: Env) -> None:
    c = env.client()
    c.walk(0, 1)
    c.lcreate(1, "holes", O_RDWR | O_CREAT, 0o600)
    c.write(1, 1 << 30, b"far")
    st = os.stat(env.share / "holes")
    assert st.st_size == (1 << 30) + 3 and st.st_blocks * 512 < 1 << 20


def test_reset_and_close_release_every_fd(env: Env) -> None:
    before = len(os.listdir("/proc/self/fd"))
    (env.share / "d").mkdir()
    (env.share / "d" / "f").write_bytes(b"x")
    server = env.server()
    from tests.fs.client import Client
    c = Client(server)
    c.version()
    c.attach(0)
    for i in range(1, 50):
        c.walk(0, i, "d", "f")
        c.lopen(i, O_RDONLY)
    assert len(os.listdir("/proc/self/fd")) > before
    server.reset()
    assert server.fids == {}
    with pytest.raises(NinePError):
        c.getattr(0)
    server.close()
    env.servers.remove(server)
    assert len(os.listdir("/proc/self/fd")) == before


def test_fids_follow_renames_made_through_other_fids(env: Env) -> None:
    (env.share / "a").write_bytes(b"A")
    (env.share / "d").mkdir()
    c = env.client()
    c.walk(0, 1, "a")                 # the guest's dentry fid for "a"
    c.walk(0, 2, "d")
    c.renameat(0, "a", 2, "b")        # mv a d/b (Linux sends Trenameat)
    c.link(0, 1, "hard")              # ln d/b hard, with the fid walked before the move
    assert os.stat(env.share / "hard").st_ino == os.stat(env.share / "d" / "b").st_ino
    c.rename(1, 0, "c")               # and the fid can still name its file
    assert (env.share / "c").read_bytes() == b"A"
    assert not (env.share / "d" / "b").exists()
    # A file replaced by a rename loses its name: removing through its old fid removes
    # nothing else.
    (env.share / "x").write_bytes(b"X")
    c.walk(0, 3, "x")
    c.renameat(0, "c", 0, "x")
    with pytest.raises(NinePError) as exc:
        c.remove(3)
    assert errno_of(exc) == errno.ENOENT
    assert (env.share / "x").read_bytes() == b"A"
    # Renaming a name onto itself changes nothing.
    c.walk(0, 4, "x")
    c.renameat(0, "x", 0, "x")
    c.link(0, 4, "x2")
    assert os.path.samefile(env.share / "x", env.share / "x2")


def test_qid_paths_of_another_device_are_remapped(env: Env) -> None:
    import subprocess
    mnt = env.share / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "none", str(mnt)], capture_output=True,
                      check=False).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (mnt / "a").write_bytes(b"a")
        (mnt / "b").write_bytes(b"b")
        c = env.client()
        qa = c.walk(0, 1, "mnt", "a")[1]
        qb = c.walk(0, 2, "mnt", "b")[1]
        qm = c.walk(0, 3, "mnt")[0]
        for q, path in ((qa, mnt / "a"), (qb, mnt / "b"), (qm, mnt)):
            assert q.path == 1 << 63 | (os.stat(path).st_ino & ((1 << 48) - 1))
        assert len({qa.path, qb.path, qm.path}) == 3
        assert c.getattr(1).qid == qa                    # stable
        assert c.getattr(2).qid == qb
        from kvmpy.fs import FsDev, Server
        from tests.fs.client import Client
        forbid = Server(FsDev(id="f", path=str(env.share), security_model="passthrough",
                              multidevs="forbid"))
        env.servers.append(forbid)
        f = Client(forbid)
        f.version()
        f.attach(0)
        with pytest.raises(NinePError) as exc:
            f.walk(0, 1, "mnt")
        assert errno_of(exc) == errno.ENODEV
        for fid in (1, 2, 3):
            c.clunk(fid)
        for server in env.servers:
            server.close()
        env.servers.clear()
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_times_before_1970_and_xattr_pieces_out_of_order(env: Env) -> None:
    (env.share / "old").write_bytes(b"")
    os.utime(env.share / "old", ns=(-1_500_000_000, -2_000_000_000))
    c = env.client()
    c.walk(0, 1, "old")
    attr = c.getattr(1)
    assert attr.atime == ((1 << 64) - 2, 500_000_000)
    assert attr.mtime == ((1 << 64) - 2, 0)
    c.walk(0, 2, "old")
    c.xattrcreate(2, "user.v", 6)
    assert c.write(2, 3, b"def") == 3
    assert c.write(2, 0, b"abc") == 3
    with pytest.raises(NinePError) as exc:
        c.write(2, 7, b"x")
    assert errno_of(exc) == errno.ENOSPC
    c.clunk(2)
    assert os.getxattr(env.share / "old", "user.v") == b"abcdef"


def test_writeout_immediate_writes_through(env: Env) -> None:
    from kvmpy.fs import FsDev, Server
    from tests.fs.client import Client
    server = Server(FsDev(id="f", path=str(env.share), security_model="passthrough",
                          writeout="immediate"))
    env.servers.append(server)
    c = Client(server)
    c.version()
    c.attach(0)
    c.walk(0, 1)
    c.lcreate(1, "synced", O_RDWR | O_CREAT, 0o644)
    assert c.write(1, 4096, b"x" * 5000) == 5000
    assert c.write(1, 0, b"") == 0
    assert (env.share / "synced").read_bytes() == bytes(4096) + b"x" * 5000


def test_setattr_of_a_symlink_as_qemu(env: Env) -> None:
    """Mode and size changes on a symlink fid answer ELOOP (QEMU opens and chmods with
    O_NOFOLLOW) and leave the link's target alone; times change the link itself."""
    (env.share / "target").write_text("data")
    os.chmod(env.share / "target", 0o644)
    os.symlink("target", env.share / "link")
    c = env.client()
    c.walk(0, 1, "link")
    for valid, kwargs in ((0x1, {"mode": 0o600}), (0x8, {"size": 1})):
        with pytest.raises(NinePError) as exc:
            c.setattr(1, valid, **kwargs)  # type: ignore[arg-type]
        assert errno_of(exc) == errno.ELOOP
    assert (env.share / "target").read_text() == "data"
    assert stat.S_IMODE(os.stat(env.share / "target").st_mode) == 0o644
    target_mtime = os.stat(env.share / "target").st_mtime_ns
    c.setattr(1, 0x20 | 0x100, mtime=(12345, 0))  # MTIME | MTIME_SET
    assert os.lstat(env.share / "link").st_mtime_ns == 12345 * 10**9
    assert os.stat(env.share / "target").st_mtime_ns == target_mtime
