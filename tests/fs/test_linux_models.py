"""The bundled Linux as the client of the mapped security models: what the guest does with
owners, modes, device nodes and symlinks lands in metadata, never in host ownership."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.fs_linux.guest import MOUNT_OPTIONS, boot, export_args, ok, sh

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="compares host owners (needs root)")

GUEST_SCRIPT = (
    "cd /mnt/{tag} && mkdir d && echo data > d/f && chown 1234:5678 d/f && chmod 4751 d/f && "
    "ln -s /etc/passwd d/link && mknod d/null c 1 3 && mkfifo d/fifo && "
    "mv d/f d/g && ln d/g d/hard && mkdir d/sub && rmdir d/sub && "
    "stat -c '%n %u %g %a %F' d/g d/link d/null d/fifo d && readlink d/link && "
    "stat -c '%t:%T' d/null && ls -a d | cat && cat d/g"
)


def _expect(out: str) -> None:
    lines = out.splitlines()
    assert lines[:5] == [
        "d/g 1234 5678 4751 regular file",
        "d/link 0 0 777 symbolic link",
        "d/null 0 0 644 character special file",
        "d/fifo 0 0 644 fifo",
        "d 0 0 755 directory",
    ]
    assert lines[5] == "/etc/passwd"
    assert lines[6] == "1:3"
    assert sorted(lines[7:-1]) == sorted([".", "..", "fifo", "g", "hard", "link", "null"])
    assert lines[-1] == "data"


def _host_files_are_plain(root: Path) -> None:
    for name in ("g", "hard", "link", "null", "fifo"):
        st = os.lstat(root / "d" / name)
        assert stat.S_ISREG(st.st_mode), name
        assert (st.st_uid, st.st_gid) == (0, 0)
        assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID)
    assert (root / "d" / "link").read_bytes() == b"/etc/passwd"


def test_mapped_models_under_linux(tmp_path: Path) -> None:
    xattr_dir, file_dir = tmp_path / "mx", tmp_path / "mf"
    xattr_dir.mkdir()
    file_dir.mkdir()
    vm = boot("kvmpy", [
        *export_args("virtio-9p-pci", "mx", xattr_dir, "mx", security_model="mapped-xattr"),
        *export_args("virtio-9p-pci", "mf", file_dir, "mf", security_model="mapped-file")])
    try:
        ok(vm, "umask 022 && mkdir -p /mnt/mx /mnt/mf && "
               f"mount -t 9p -o {MOUNT_OPTIONS} mx /mnt/mx && "
               f"mount -t 9p -o {MOUNT_OPTIONS} mf /mnt/mf")
        for tag, root in (("mx", xattr_dir), ("mf", file_dir)):
            _expect(ok(vm, "umask 022 && " + GUEST_SCRIPT.format(tag=tag)))
            _host_files_are_plain(root)
        assert os.getxattr(xattr_dir / "d" / "g", "user.virtfs.uid") == \
            (1234).to_bytes(4, "little")
        meta = (file_dir / "d" / ".virtfs_metadata" / "g").read_text()
        assert "virtfs.uid=1234" in meta and "virtfs.gid=5678" in meta
        assert f"virtfs.mode={stat.S_IFREG | 0o4751}" in meta
        # The guest cannot see or reach the metadata, and removing the tree removes it.
        out = sh(vm, "ls /mnt/mf/d/.virtfs_metadata")
        assert not out.endswith("status=0\n")
        ok(vm, "rm -r /mnt/mx/d /mnt/mf/d")
        assert os.listdir(xattr_dir) == []
        # As QEMU, the parent keeps its (now empty) metadata directory.
        assert os.listdir(file_dir) == [".virtfs_metadata"]
        assert os.listdir(file_dir / ".virtfs_metadata") == []
        ok(vm, "umount /mnt/mx /mnt/mf")
        vm.console.send("poweroff\n")
        assert vm.wait(60) == 0
    finally:
        if vm.is_running():
            vm.kill()
