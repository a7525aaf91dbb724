"""The bundled Linux guest writes to a qcow2 disk on virtio-blk-pci; the image then passes
``qemu-img check`` and ``qemu-img dd`` shows what the guest wrote."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tests.block.conftest import check, create, qemu_img, qemu_io
from tests.net.test_guest_network import guest, sh

MiB = 1 << 20

__all__ = ["guest"]


def test_guest_writes_a_qcow2_disk(guest: Any, tmp_path: Path) -> None:
    disk = create(tmp_path / "disk.qcow2", 32 * MiB, "cluster_size=65536")
    qemu_io(disk, "write -P 0x6b 0 512")  # something for the guest to read first
    vm = guest("-drive", f"file={disk},format=qcow2,if=none,id=d0",
               "-device", "virtio-blk-pci,drive=d0")
    assert sh(vm, "head -c 4 /dev/vda") == "kkkk"
    sh(vm, "printf kvmpy-qcow2-guest | dd of=/dev/vda bs=512 seek=4096 conv=fsync")
    # 1 MiB of random data, 100 KiB in: partial clusters at both ends
    sh(vm, "dd if=/dev/urandom of=/tmp/r bs=64k count=16 2>/dev/null; "
           "dd if=/tmp/r of=/dev/vda bs=1024 seek=100 conv=fsync 2>/dev/null; sync")
    guest_md5 = sh(vm, "md5sum /tmp/r").split()[0]
    assert sh(vm, "dd if=/dev/vda bs=1024 skip=100 count=1024 2>/dev/null | md5sum"
              ).split()[0] == guest_md5
    vm.shutdown()
    check(disk)
    qemu_img("dd", "-f", "qcow2", "-O", "raw", "bs=512", "skip=4096", "count=4097",
             f"if={disk}", f"of={tmp_path / 'sector.raw'}")
    assert (tmp_path / "sector.raw").read_bytes().startswith(b"kvmpy-qcow2-guest")
    qemu_img("convert", "-O", "raw", disk, tmp_path / "all.raw")
    data = (tmp_path / "all.raw").read_bytes()
    assert hashlib.md5(data[100 * 1024:100 * 1024 + MiB]).hexdigest() == guest_md5
    assert data[:512] == b"k" * 512


def test_snapshot_writes_are_gone_after_the_vm(guest: Any, tmp_path: Path) -> None:
    disk = create(tmp_path / "disk.qcow2", 8 * MiB)
    qemu_io(disk, "write -P 0x6b 0 64k")
    before = hashlib.sha256(disk.read_bytes()).hexdigest()
    vm = guest("-drive", f"file={disk},format=qcow2,if=virtio", "-snapshot")
    sh(vm, "printf temporary | dd of=/dev/vda bs=512 seek=1 conv=fsync")
    assert sh(vm, "dd if=/dev/vda bs=512 skip=1 count=1 2>/dev/null | head -c 9") == \
        "temporary"
    vm.shutdown()
    assert hashlib.sha256(disk.read_bytes()).hexdigest() == before
    check(disk)


def test_libvirt_blockdev_graph(guest: Any, tmp_path: Path) -> None:
    """The nodes libvirt passes for a qcow2 disk over a raw backing file."""
    (tmp_path / "base.raw").write_bytes(b"B" * (4 * MiB))
    disk = create(tmp_path / "top.qcow2", 4 * MiB, backing=tmp_path / "base.raw",
                  backing_fmt="raw")
    nodes = [
        {"driver": "file", "filename": str(tmp_path / "base.raw"),
         "node-name": "libvirt-2-storage", "auto-read-only": True, "discard": "unmap"},
        {"node-name": "libvirt-2-format", "read-only": True, "driver": "raw",
         "file": "libvirt-2-storage"},
        {"driver": "file", "filename": str(disk), "node-name": "libvirt-1-storage",
         "auto-read-only": True, "discard": "unmap"},
        {"node-name": "libvirt-1-format", "read-only": False, "driver": "qcow2",
         "file": "libvirt-1-storage", "backing": "libvirt-2-format"},
    ]
    args = [arg for node in nodes for arg in ("-blockdev", json.dumps(node))]
    vm = guest(*args, "-device", "virtio-blk-pci,drive=libvirt-1-format,id=virtio-disk0")
    assert sh(vm, "head -c 4 /dev/vda") == "BBBB"
    sh(vm, "printf libvirt | dd of=/dev/vda bs=1 seek=1000 conv=fsync 2>/dev/null")
    vm.shutdown()
    check(disk)
    qemu_io(disk, "read -P 0x42 0 1000", "read -P 0x42 1007 64k")
    qemu_img("convert", "-O", "raw", disk, tmp_path / "out.raw")
    assert (tmp_path / "out.raw").read_bytes()[1000:1007] == b"libvirt"
    assert (tmp_path / "base.raw").read_bytes() == b"B" * (4 * MiB)


def test_guest_writes_match_a_raw_copy(guest: Any, tmp_path: Path) -> None:
    """The guest writes the same data, at the same places, to a qcow2 disk (made by
    ``qemu-img create``) and a raw one; afterwards ``qemu-img check`` passes and ``qemu-img
    compare`` finds the two identical."""
    disk = create(tmp_path / "disk.qcow2", 24 * MiB, "cluster_size=4096")
    raw = tmp_path / "disk.raw"
    qemu_img("create", "-q", "-f", "raw", raw, str(24 * MiB))
    vm = guest("-drive", f"file={disk},format=qcow2,if=none,id=q",
               "-device", "virtio-blk-pci,drive=q",
               "-drive", f"file={raw},format=raw,if=none,id=r",
               "-device", "virtio-blk-pci,drive=r")
    sh(vm, "dd if=/dev/urandom of=/tmp/r bs=1k count=700 2>/dev/null")
    for seek, bs, count in ((0, 512, 3), (7, 1024, 700), (9000, 512, 129), (20000, 4096, 1),
                            (3, 65536, 3)):
        for dev in ("vda", "vdb"):
            sh(vm, f"dd if=/tmp/r of=/dev/{dev} bs={bs} seek={seek} count={count} "
                   "conv=notrunc 2>/dev/null")
    sh(vm, "sync; echo 3 > /proc/sys/vm/drop_caches")
    assert sh(vm, "cmp /dev/vda /dev/vdb && echo same").strip() == "same"
    vm.shutdown()
    check(disk)
    done = qemu_img("compare", "-f", "qcow2", "-F", "raw", disk, raw, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Images are identical" in done.stdout
