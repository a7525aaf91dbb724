"""The bundled Linux as a 9P client of kvmpy's virtio-9p, on virtio-9p-pci and
virtio-9p-device (and, as the reference, on qemu-system-riscv64 with the same command line).

One boot per transport: three exports (a tree read and written by the guest, a read-only one,
one with security_model=mapped-xattr), mounted with msize=512000, then every check.  And a
host directory as the guest's root file system (``root=TAG rootfstype=9p``).
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import kvmpy.guests as guests

from ..support import kvmpy_env
from .guest import (
    MOUNT_OPTIONS,
    boot,
    busybox_from_bundle,
    export_args,
    ok,
    sh,
    vmm_binary,
)

CASES = [("kvmpy", "virtio-9p-pci"), ("kvmpy", "virtio-9p-device"), ("qemu", "virtio-9p-pci")]
BIG = 4 << 20
SPARSE = 16 << 20
HOST_XATTR = ("user.kvmpy", b"host-value")


def _xattrs_supported(path: Path) -> bool:
    probe = path / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


def make_tree(root: Path) -> None:
    """A multi-MiB file, many small files, symbolic and hard links, a sparse file, xattrs,
    an empty file and a name with spaces."""
    rng = random.Random(9)
    root.mkdir()
    (root / "big.bin").write_bytes(rng.randbytes(BIG))
    for d in range(10):
        sub = root / "small" / f"dir{d}"
        sub.mkdir(parents=True)
        for f in range(50):
            (sub / f"f{f}.txt").write_bytes(rng.randbytes(rng.randrange(0, 3000)))
    (root / "link_rel").symlink_to("small/dir0/f0.txt")
    (root / "link_dangling").symlink_to("/nonexistent/target")
    (root / "link_dir").symlink_to("small")
    (root / "hard_a").write_bytes(b"hard link data\n")
    os.link(root / "hard_a", root / "hard_b")
    with open(root / "sparse.img", "wb") as f:
        f.write(b"head")
        f.seek(3 << 20)
        f.write(rng.randbytes(5000))
        f.truncate(SPARSE)
    (root / "empty").write_bytes(b"")
    (root / "name with spaces.txt").write_text("spaces\n")
    (root / "xattr.txt").write_text("has attributes\n")
    os.setxattr(root / "xattr.txt", HOST_XATTR[0], HOST_XATTR[1])


def host_md5s(root: Path) -> dict[str, str]:
    sums = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if not path.is_symlink():
                sums["./" + str(path.relative_to(root))] = \
                    hashlib.md5(path.read_bytes()).hexdigest()
    return sums


def guest_md5s(output: str) -> dict[str, str]:
    sums = {}
    for line in output.splitlines():
        if line.strip():
            assert "  " in line, repr(line)
            digest, name = line.split("  ", 1)
            sums[name] = digest
    return sums


@pytest.mark.parametrize(("vmm", "device"), CASES)
def test_linux_client(tmp_path: Path, vmm: str, device: str) -> None:
    if not _xattrs_supported(tmp_path):
        pytest.skip(f"{tmp_path} has no user xattrs")
    tree, ro, mapped = tmp_path / "tree", tmp_path / "ro", tmp_path / "mapped"
    make_tree(tree)
    ro.mkdir()
    (ro / "file.txt").write_text("read only\n")
    mapped.mkdir()
    vm = boot(vmm, [*export_args(device, "t", tree, "treetag"),
                    *export_args(device, "r", ro, "rotag", readonly="on"),
                    *export_args(device, "m", mapped, "maptag", security_model="mapped-xattr")])
    try:
        ok(vm, "mkdir -p /mnt/t /mnt/ro /mnt/m && "
               f"mount -t 9p -o {MOUNT_OPTIONS} treetag /mnt/t && "
               f"mount -t 9p -o {MOUNT_OPTIONS} rotag /mnt/ro && "
               f"mount -t 9p -o {MOUNT_OPTIONS} maptag /mnt/m")
        assert "msize=512000" in ok(vm, "grep treetag /proc/mounts")

        # -- reading: byte for byte --------------------------------------------------------
        sums = guest_md5s(ok(vm, "cd /mnt/t && find . -type f -exec md5sum {} +"))
        assert sums == host_md5s(tree)
        sha = ok(vm, "cd /mnt/t && sha256sum big.bin sparse.img")
        for name in ("big.bin", "sparse.img"):
            digest = hashlib.sha256((tree / name).read_bytes()).hexdigest()
            assert f"{digest}  {name}" in sha
        assert ok(vm, "cd /mnt/t && stat -c %s sparse.img big.bin empty").split() == \
            [str(SPARSE), str(BIG), "0"]
        assert int(ok(vm, "find /mnt/t | wc -l")) == 1 + sum(
            len(dirs) + len(files) for _, dirs, files in os.walk(tree))
        links = ok(vm, "cd /mnt/t && for l in link_rel link_dangling link_dir; do "
                       "echo \"$l $(readlink $l) $(stat -c %F $l)\"; done")
        assert links.splitlines() == [
            "link_rel small/dir0/f0.txt symbolic link",
            "link_dangling /nonexistent/target symbolic link",
            "link_dir small symbolic link"]
        assert ok(vm, "cat /mnt/t/link_rel | md5sum").split()[0] == \
            hashlib.md5((tree / "small/dir0/f0.txt").read_bytes()).hexdigest()
        inode_a, links_a, inode_b, links_b = ok(
            vm, "stat -c '%i %h' /mnt/t/hard_a /mnt/t/hard_b").split()
        assert inode_a == inode_b and links_a == links_b == "2"
        assert ok(vm, "cat '/mnt/t/name with spaces.txt'") == "spaces\n"
        # xattrs: the host's is there (removing it works), a missing one is not.
        missing = sh(vm, "setfattr -x user.missing /mnt/t/xattr.txt")
        assert not missing.endswith("status=0\n"), missing
        ok(vm, "setfattr -n user.guest -v guest-value /mnt/t/xattr.txt")
        assert os.getxattr(tree / "xattr.txt", "user.guest") == b"guest-value"
        ok(vm, f"setfattr -x {HOST_XATTR[0]} /mnt/t/xattr.txt")
        with pytest.raises(OSError) as gone:
            os.getxattr(tree / "xattr.txt", HOST_XATTR[0])
        assert gone.value.errno == errno.ENODATA

        # -- writing: the host sees it ------------------------------------------------------
        ok(vm, "cd /mnt/t && echo guest-data > new.txt && echo more >> new.txt && "
               "chmod 600 new.txt && mkdir -p newdir/sub && "
               "mv small/dir1/f1.txt newdir/moved.txt && truncate -s 1000 big.bin && "
               "rm small/dir2/f2.txt && rm -r small/dir3 && ln -s new.txt guestlink && "
               "ln new.txt new_hard.txt && "
               "dd if=/dev/zero of=written.bin bs=65536 count=40 2>/dev/null && "
               "mv newdir renamed && sync")
        assert (tree / "new.txt").read_text() == "guest-data\nmore\n"
        assert (tree / "new.txt").stat().st_mode & 0o777 == 0o600
        assert (tree / "renamed" / "sub").is_dir() and not (tree / "newdir").exists()
        assert (tree / "renamed" / "moved.txt").exists()
        assert not (tree / "small" / "dir1" / "f1.txt").exists()
        big = (tree / "big.bin").read_bytes()
        assert len(big) == 1000 and big == random.Random(9).randbytes(BIG)[:1000]
        assert not (tree / "small" / "dir2" / "f2.txt").exists()
        assert not (tree / "small" / "dir3").exists()
        assert os.readlink(tree / "guestlink") == "new.txt"
        assert os.stat(tree / "new_hard.txt").st_ino == os.stat(tree / "new.txt").st_ino
        assert (tree / "written.bin").read_bytes() == bytes(40 * 65536)
        # ... and the guest sees the host's changes.
        (tree / "from_host.txt").write_text("made on the host\n")
        assert ok(vm, "cat /mnt/t/from_host.txt") == "made on the host\n"

        # -- readonly=on --------------------------------------------------------------------
        assert ok(vm, "cat /mnt/ro/file.txt") == "read only\n"
        for command in ("touch /mnt/ro/x", "mkdir /mnt/ro/d", "rm /mnt/ro/file.txt",
                        "echo x >> /mnt/ro/file.txt", "chmod 777 /mnt/ro/file.txt"):
            out = sh(vm, command)
            assert "Read-only file system" in out and not out.endswith("status=0\n"), \
                f"{command}: {out}"
        assert sorted(p.name for p in ro.iterdir()) == ["file.txt"]
        assert (ro / "file.txt").read_text() == "read only\n"

        # -- security_model=mapped-xattr: guest ownership lives in the host's xattrs ----------
        assert ok(vm, "cd /mnt/m && touch owned && chown 1234:5678 owned && chmod 640 owned && "
                      "mknod fifo p && stat -c '%u %g %a %F' owned fifo").splitlines() == [
            "1234 5678 640 regular empty file", "0 0 644 fifo"]
        host = (mapped / "owned").stat()
        assert (host.st_uid, host.st_gid) == (os.getuid(), os.getgid())
        assert os.getxattr(mapped / "owned", "user.virtfs.uid") == struct.pack("<I", 1234)
        assert os.getxattr(mapped / "owned", "user.virtfs.gid") == struct.pack("<I", 5678)
        mode = struct.unpack("<I", os.getxattr(mapped / "owned", "user.virtfs.mode"))[0]
        assert mode == 0o100640
        assert (mapped / "fifo").is_file()  # a special file is a plain file on the host
        # A remount reads the ownership back from the xattrs.
        ok(vm, f"umount /mnt/m && mount -t 9p -o {MOUNT_OPTIONS} maptag /mnt/m")
        assert ok(vm, "stat -c '%u %g %a' /mnt/m/owned") == "1234 5678 640\n"

        # -- two harts reading at once, and readers killed while they read ---------------------
        sums = ok(vm, "cd /mnt/t && (md5sum sparse.img & md5sum small/dir0/f0.txt & "
                      "md5sum sparse.img & wait)")
        digest = hashlib.md5((tree / "sparse.img").read_bytes()).hexdigest()
        assert sums.count(f"{digest}  sparse.img") == 2, sums
        sh(vm, "timeout -s KILL 1 sh -c 'while :; do cat /mnt/t/sparse.img >/dev/null; done'")
        sh(vm, "timeout -s KILL 1 sh -c 'while :; do find /mnt/t >/dev/null; done'")
        assert ok(vm, "md5sum /mnt/t/sparse.img").split()[0] == digest

        # -- a reboot: the device is reset and serves the next boot --------------------------
        vm.console.send("reboot\n")
        vm.console.expect(re.escape(guests.BANNER), timeout=120)
        vm.console.expect(re.escape(guests.PROMPT), timeout=120)
        ok(vm, "dmesg -n 1")
        ok(vm, f"mount -t 9p -o {MOUNT_OPTIONS} treetag /mnt")
        assert ok(vm, "cat /mnt/new.txt") == "guest-data\nmore\n"
        vm.console.send("poweroff\n")
        assert vm.wait(60) == 0
    finally:
        if vm.is_running():
            vm.kill()


ROOT_INIT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
echo "kvmpy-9p-root: $(/bin/busybox cat /marker) on $(/bin/busybox awk '$2=="/"{print $3}' \
/proc/mounts)"
echo from-guest > /written-by-guest
/bin/busybox sync
/bin/busybox poweroff -f
"""


@pytest.mark.parametrize("vmm", ["kvmpy", "qemu"])
def test_host_directory_as_root_file_system(tmp_path: Path, vmm: str) -> None:
    binary, extra = vmm_binary(vmm)
    root = tmp_path / "root"
    for name in ("bin", "proc", "dev"):
        (root / name).mkdir(parents=True)
    busybox_from_bundle(root / "bin" / "busybox")
    (root / "marker").write_text("root-marker-42\n")
    (root / "init").write_text(ROOT_INIT)
    (root / "init").chmod(0o755)
    command = [*(binary or [sys.executable, "-m", "kvmpy"]), "-M", "virt", "-m", "256M",
               "-nographic", *extra, "-kernel", str(guests.kernel_path()),
               "-append", "root=rootfs rootfstype=9p rootflags=trans=virtio,version=9p2000.L "
                          "rw console=ttyS0 init=/init",
               "-fsdev", f"local,id=r,path={root},security_model=none",
               "-device", "virtio-9p-pci,fsdev=r,mount_tag=rootfs"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env=kvmpy_env(), stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert re.search(r"kvmpy-9p-root: root-marker-42 on 9p\r?\n", proc.stdout), proc.stdout[-3000:]
    assert (root / "written-by-guest").read_text() == "from-guest\n"
