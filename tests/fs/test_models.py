"""Security models (mapped-xattr, mapped-file, none) and readonly=on, seen from the host."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import struct
from pathlib import Path

import pytest

from tests.fs.client import NinePError
from tests.fs.conftest import Env

O_RDONLY, O_WRONLY, O_RDWR, O_CREAT, O_TRUNC, O_APPEND = 0, 1, 2, 0o100, 0o1000, 0o2000
O_DIRECTORY = 0o200000

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the models need root to compare "
                                "host ownership with the guest's")


def err(call: object, *args: object) -> int:
    assert callable(call)
    with pytest.raises(NinePError) as exc:
        call(*args)
    return exc.value.errno


def xattr_meta(path: Path) -> dict[str, int]:
    out = {}
    for key, fmt in (("uid", "=I"), ("gid", "=I"), ("mode", "=I"), ("rdev", "=Q")):
        with contextlib.suppress(OSError):
            out[key] = struct.unpack(fmt, os.getxattr(path, f"user.virtfs.{key}",
                                                      follow_symlinks=False))[0]
    return out


def file_meta(path: Path) -> dict[str, int]:
    meta = path.parent / ".virtfs_metadata" / path.name
    out = {}
    for line in meta.read_text().splitlines():
        key, _, value = line.partition("=")
        out[key.removeprefix("virtfs.")] = int(value)
    return out


def create_everything(env: Env, model: str) -> None:
    c = env.client(model=model, fmode=0o604, dmode=0o710)
    c.attach(1, uid=1000)
    c.walk(1, 2)
    _qid, _ = c.lcreate(2, "file", O_RDWR | O_CREAT, 0o640, gid=2000)
    c.write(2, 0, b"data")
    c.mkdir(1, "dir", 0o751, gid=2001)
    c.symlink(1, "link", "/etc/passwd", gid=2002)
    c.mknod(1, "dev", stat.S_IFCHR | 0o620, 4, 64, gid=2003)
    c.mknod(1, "fifo", stat.S_IFIFO | 0o600, gid=2004)
    # The guest's view.
    expect = {"file": (stat.S_IFREG | 0o640, 2000, 0x00),
              "dir": (stat.S_IFDIR | 0o751, 2001, 0x80),
              "link": (stat.S_IFLNK | 0o777, 2002, 0x02), "dev": (stat.S_IFCHR | 0o620, 2003, 0),
              "fifo": (stat.S_IFIFO | 0o600, 2004, 0)}
    for i, (name, (mode, gid, qtype)) in enumerate(expect.items()):
        c.walk(1, 10 + i, name)
        attr = c.getattr(10 + i)
        assert (attr.mode, attr.uid, attr.gid, attr.qid.type) == (mode, 1000, gid, qtype), name
    assert c.getattr(13).rdev == os.makedev(4, 64)
    assert c.readlink(12) == b"/etc/passwd"
    # The host's view: plain files and a directory with the configured modes.
    for name in ("file", "link", "dev", "fifo"):
        st = os.lstat(env.share / name)
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o604, name
        assert st.st_uid == 0
    st = os.lstat(env.share / "dir")
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o710
    assert (env.share / "link").read_bytes() == b"/etc/passwd"
    # Changes go to the metadata, never to the host file.
    c.setattr(10, 0x1 | 0x2 | 0x4, mode=0o600, uid=7, gid=8)
    attr = c.getattr(10)
    assert (attr.mode, attr.uid, attr.gid) == (stat.S_IFREG | 0o600, 7, 8)
    st = os.stat(env.share / "file")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o604, 0, 0)
    # Readdir of a mapped export gives DT_UNKNOWN (the host type would be wrong).
    c.walk(1, 20)
    c.lopen(20, O_RDONLY | O_DIRECTORY)
    entries = {e[3]: e for e in c.readdir_all(20)}
    assert set(entries) == {b".", b"..", b"file", b"dir", b"link", b"dev", b"fifo"}
    assert all(e[2] == 0 for e in entries.values())
    # A mapped symlink is a file to the host: opening it cannot reach /etc/passwd.
    c.walk(1, 21, "link")
    assert c.readlink(21) == b"/etc/passwd"


def test_mapped_xattr_round_trip(env: Env) -> None:
    create_everything(env, "mapped-xattr")
    assert xattr_meta(env.share / "file") == {
        "uid": 7, "gid": 8, "mode": stat.S_IFREG | 0o600}
    assert xattr_meta(env.share / "dir") == {"uid": 1000, "gid": 2001,
                                              "mode": stat.S_IFDIR | 0o751}
    assert xattr_meta(env.share / "dev")["rdev"] == os.makedev(4, 64)
    assert xattr_meta(env.share / "link")["mode"] == stat.S_IFLNK | 0o777


def test_mapped_xattr_hides_and_protects_its_attributes(env: Env) -> None:
    c = env.client(model="mapped-xattr")
    c.walk(0, 1)
    c.lcreate(1, "f", O_RDWR | O_CREAT, 0o644)
    c.walk(0, 2, "f")
    assert b"user.virtfs" not in c.get_xattr(2, 3, "")
    assert err(c.xattrwalk, 2, 3, "user.virtfs.uid") == errno.ENODATA
    c.walk(2, 3)
    c.xattrcreate(3, "user.virtfs.uid", 4)
    c.write(3, 0, b"\0\0\0\0")
    assert err(c.clunk, 3) == errno.EACCES
    c.set_xattr(2, 3, "user.mine", b"v")
    assert c.get_xattr(2, 3, "") == b"user.mine\0"
    assert c.getattr(2).uid == 0


def test_mapped_xattr_files_made_by_the_host_show_host_attributes(env: Env) -> None:
    (env.share / "host").write_bytes(b"h")
    os.chmod(env.share / "host", 0o651)
    os.chown(env.share / "host", 12, 34)
    c = env.client(model="mapped-xattr")
    c.walk(0, 1, "host")
    attr = c.getattr(1)
    assert (attr.mode, attr.uid, attr.gid) == (stat.S_IFREG | 0o651, 12, 34)
    # A guest chown stores metadata and leaves the host owner alone.
    c.setattr(1, 0x2, uid=99)
    assert c.getattr(1).uid == 99 and os.stat(env.share / "host").st_uid == 12


def test_mapped_file_round_trip(env: Env) -> None:
    create_everything(env, "mapped-file")
    assert file_meta(env.share / "file") == {"uid": 7, "gid": 8, "mode": stat.S_IFREG | 0o600}
    assert file_meta(env.share / "dev")["rdev"] == os.makedev(4, 64)
    assert file_meta(env.share / "dir")["mode"] == stat.S_IFDIR | 0o751
    assert not any(k.startswith("user.virtfs") for k in os.listxattr(env.share / "file"))


def test_mapped_file_metadata_is_hidden_and_follows_renames(env: Env) -> None:
    c = env.client(model="mapped-file")
    c.mkdir(0, "d", 0o700)
    c.walk(0, 1, "d")
    c.walk(1, 2)
    c.lcreate(2, "f", O_RDWR | O_CREAT, 0o640, gid=5)
    assert (env.share / "d" / ".virtfs_metadata" / "f").exists()
    assert err(c.walk, 1, 3, ".virtfs_metadata") == errno.ENOENT
    assert err(c.walk, 0, 3, ".virtfs_metadata_root") == errno.ENOENT
    assert err(c.mkdir, 1, ".virtfs_metadata") == errno.EINVAL
    assert err(c.renameat, 1, "f", 1, ".virtfs_metadata") == errno.EINVAL
    assert err(c.unlinkat, 1, ".virtfs_metadata", 0x200) == errno.EINVAL
    c.walk(1, 4)
    c.lopen(4, O_RDONLY | O_DIRECTORY)
    assert {e[3] for e in c.readdir_all(4)} == {b".", b"..", b"f"}
    # Rename carries the metadata; unlink removes it.
    c.renameat(1, "f", 0, "g")
    assert (env.share / ".virtfs_metadata" / "g").exists()
    assert not (env.share / "d" / ".virtfs_metadata" / "f").exists()
    c.walk(0, 5, "g")
    assert c.getattr(5).gid == 5 and c.getattr(5).mode == stat.S_IFREG | 0o640
    c.link(1, 5, "h")
    c.walk(1, 6, "h")
    assert c.getattr(6).gid == 5
    c.unlinkat(1, "h")
    assert not (env.share / "d" / ".virtfs_metadata" / "h").exists()
    # A directory that only holds metadata is empty to the guest and can be removed.
    c.unlinkat(0, "d", 0x200)
    assert not (env.share / "d").exists()
    # The root's metadata lives in .virtfs_metadata_root.
    c.setattr(0, 0x2, uid=321)
    assert c.getattr(0).uid == 321
    assert "virtfs.uid=321" in (env.share / ".virtfs_metadata_root").read_text()
    c.walk(0, 7)
    c.lopen(7, O_RDONLY | O_DIRECTORY)
    assert {e[3] for e in c.readdir_all(7)} == {b".", b"..", b"g"}


def test_security_model_none_sets_modes(env: Env) -> None:
    c = env.client(model="none")
    c.walk(0, 1)
    c.lcreate(1, "f", O_RDWR | O_CREAT, 0o612)
    assert stat.S_IMODE(os.stat(env.share / "f").st_mode) == 0o612
    c.setattr(1, 0x2, uid=77)
    assert os.stat(env.share / "f").st_uid == 77


def _tree(root: Path) -> dict[str, tuple[int, int, bytes]]:
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        data = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
        out[str(path.relative_to(root))] = (st.st_mode, st.st_mtime_ns, data)
    return out


def test_readonly_refuses_every_mutation(env: Env) -> None:
    (env.share / "f").write_bytes(b"content")
    (env.share / "d").mkdir()
    os.setxattr(env.share / "f", "user.a", b"1")
    before = _tree(env.share)
    c = env.client(readonly=True)
    c.walk(0, 1, "f")
    c.walk(0, 2, "d")
    c.walk(0, 3)
    for flags in (O_WRONLY, O_RDWR, O_RDONLY | O_TRUNC, O_RDONLY | O_APPEND):
        assert err(c.lopen, 1, flags) == errno.EROFS
    mutations = [
        (c.lcreate, (3, "new", O_RDWR | O_CREAT, 0o644)), (c.mkdir, (0, "new")),
        (c.mknod, (0, "new", 0o100644)), (c.symlink, (0, "new", "f")), (c.link, (0, 1, "new")),
        (c.rename, (1, 0, "new")), (c.renameat, (0, "f", 0, "new")),
        (c.unlinkat, (0, "f")), (c.unlinkat, (0, "d", 0x200)), (c.remove, (1,)),
        (c.setattr, (1, 0x1, 0o777)), (c.setattr, (1, 0x8, 0, 0, 0, 0)),
        (c.setattr, (1, 0x20)), (c.xattrcreate, (1, "user.b", 1)),
    ]
    for call, args in mutations:
        assert err(call, *args) == errno.EROFS, call
    # Reads still work.
    c.walk(0, 4, "f")
    c.lopen(4, O_RDONLY)
    assert c.read(4, 0, 100) == b"content"
    assert err(c.write, 4, 0, b"x") == errno.EROFS
    assert c.get_xattr(4, 5, "user.a") == b"1"
    assert c.lock(4, 0) == 0
    c.fsync(4)
    c.statfs(0)
    assert _tree(env.share) == before


def test_mapped_file_metadata_found_after_a_rename_through_another_fid(env: Env) -> None:
    c = env.client(model="mapped-file")
    c.walk(0, 1)
    c.lcreate(1, "f", O_RDWR | O_CREAT, 0o640, gid=77)
    c.mkdir(0, "d", 0o700)
    c.walk(0, 2, "d")
    c.walk(0, 3, "f")
    c.renameat(0, "f", 2, "g")
    attr = c.getattr(3)               # the fid walked before the move
    assert (attr.mode, attr.gid) == (stat.S_IFREG | 0o640, 77)
    c.setattr(3, 0x4, gid=78)
    assert "virtfs.gid=78" in (env.share / "d" / ".virtfs_metadata" / "g").read_text()


# struct posix_acl_xattr_header + entries: USER_OBJ rw-, GROUP_OBJ r--, OTHER r--
ACL_0644 = struct.pack("<I", 2) + struct.pack("<HHI", 1, 6, 0xFFFFFFFF) \
    + struct.pack("<HHI", 4, 4, 0xFFFFFFFF) + struct.pack("<HHI", 32, 4, 0xFFFFFFFF)


def test_mapped_xattr_keeps_posix_acls_in_user_virtfs(env: Env) -> None:
    (env.share / "f").write_bytes(b"")
    os.chmod(env.share / "f", 0o600)
    c = env.client(model="mapped-xattr")
    c.walk(0, 1, "f")
    c.set_xattr(1, 2, "system.posix_acl_access", ACL_0644)
    assert os.getxattr(env.share / "f", "user.virtfs.system.posix_acl_access") == ACL_0644
    assert "system.posix_acl_access" not in os.listxattr(env.share / "f")
    assert stat.S_IMODE(os.stat(env.share / "f").st_mode) == 0o600
    assert c.get_xattr(1, 2, "system.posix_acl_access") == ACL_0644
    assert c.get_xattr(1, 2, "") == b"system.posix_acl_access\0"
    c.set_xattr(1, 2, "system.posix_acl_access", b"")
    c.set_xattr(1, 2, "system.posix_acl_default", b"")   # absent: still no error (QEMU)
    assert c.get_xattr(1, 2, "") == b""
    assert err(c.xattrwalk, 1, 2, "system.posix_acl_other") == errno.EOPNOTSUPP


def test_passthrough_acls_are_host_acls_and_none_has_none(env: Env) -> None:
    (env.share / "f").write_bytes(b"")
    os.chmod(env.share / "f", 0o600)
    c = env.client()
    c.walk(0, 1, "f")
    c.set_xattr(1, 2, "system.posix_acl_access", ACL_0644)
    assert stat.S_IMODE(os.stat(env.share / "f").st_mode) == 0o644
    n = env.client(model="none")
    n.walk(0, 1, "f")
    assert err(n.xattrwalk, 1, 2, "system.posix_acl_access") == errno.EOPNOTSUPP
    assert n.get_xattr(1, 2, "") == b""
