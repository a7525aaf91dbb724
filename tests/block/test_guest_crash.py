"""Reliability with a real guest: the bundled Linux guest writes known 4 KiB blocks to its
virtio-blk disk, every other one followed by an fsync of the device, and reports each fsync'ed
block on its console; the VMM is SIGKILLed at a random moment (seeded).  After every kill each
write the guest had seen flushed is on the image (or a later write to the same place), and a
qcow2 image passes ``qemu-img check`` (leaked clusters allowed: a crash may leave them).  The
next round boots on the same image, so what a crash left behind is written over."""

from __future__ import annotations

import random
import re
import time
from pathlib import Path
from typing import Any

import pytest

from kvmpy.block import create_image
from tests.block.conftest import check, need_qemu_img, qemu_img, qemu_io
from tests.net.test_guest_network import guest

__all__ = ["guest"]

SLOTS = 97
STRIDE = 17 * 4096  # blocks 68 KiB apart: every write lands in its own qcow2 cluster
ROUNDS = 4
FLUSHED = re.compile(r"FLUSHED (\d+)\r?\n")

WRITER = ("k={start}; while true; do yes \"kvmpy-$k-\" | head -c 4096 > /tmp/b; "
          "if [ $((k % 2)) = 0 ]; then dd if=/tmp/b of=/dev/vda bs=4096 "
          "seek=$(( (k % {slots}) * {blocks} )) conv=fsync,notrunc 2>/dev/null && "
          "echo FLUSHED $k; else dd if=/tmp/b of=/dev/vda bs=4096 "
          "seek=$(( (k % {slots}) * {blocks} )) conv=notrunc 2>/dev/null; fi; "
          "k=$((k+1)); done\n")


def block(k: int) -> bytes:
    return ((f"kvmpy-{k}-\n").encode() * 4096)[:4096]


def parse(data: bytes) -> int | None:
    """The k whose block ``data`` is, or None (zeros, torn or foreign data)."""
    match = re.match(rb"kvmpy-(\d+)-\n", data)
    if match is None:
        return None
    k = int(match.group(1))
    return k if data == block(k) else None


def verify(image: Path, writes: dict[int, int]) -> None:
    """Each slot holds the write ``writes`` names for it (its newest write at or before the
    newest block the guest saw flushed: an fsync of the device flushes every earlier write
    too), or a later one."""
    data = image.read_bytes() if image.suffix == ".raw" else _qcow2_contents(image)
    for slot, k in writes.items():
        found = parse(data[slot * STRIDE:slot * STRIDE + 4096])
        assert found is not None and found % SLOTS == slot and found >= k, \
            f"slot {slot}: block {k} was flushed, the image holds " \
            f"{data[slot * STRIDE:slot * STRIDE + 24]!r}"


def _qcow2_contents(image: Path) -> bytes:
    from kvmpy.block import open_image

    disk = open_image(str(image), "qcow2", read_only=True, locking=False)
    try:
        return disk.pread(0, SLOTS * STRIDE)
    finally:
        disk.close()


@pytest.mark.parametrize("kind", ["raw", "qcow2", "qcow2-snapshot"])
def test_flushed_blocks_survive_sigkill(guest: Any, tmp_path: Path, kind: str) -> None:
    """``qcow2-snapshot``: the disk has an internal snapshot, so every write copies a
    cluster the snapshot shares (refcount 2); the snapshot must come through unchanged."""
    fmt = kind.split("-")[0]
    if fmt == "qcow2":
        need_qemu_img()
    image = tmp_path / f"disk.{fmt}"
    size = 16 << 20
    if fmt == "raw":
        image.write_bytes(b"")
        with open(image, "r+b") as f:
            f.truncate(size)
    else:
        create_image(str(image), size)
    if kind == "qcow2-snapshot":
        qemu_io(image, f"write -P 0x11 0 {size}")
        qemu_img("snapshot", "-c", "base", image)
    rng = random.Random(20261205)
    writes: dict[int, int] = {}  # slot -> the newest flushed-or-earlier write there
    start = 0
    for _ in range(ROUNDS):
        vm = guest("-drive", f"file={image},format={fmt},if=none,id=d0",
                   "-device", "virtio-blk-pci,drive=d0")
        console = vm.console
        console.send(WRITER.format(start=start, slots=SLOTS, blocks=STRIDE // 4096))
        console.expect(FLUSHED, timeout=60)
        time.sleep(rng.uniform(0.2, 3.0))  # a random moment (seeded)
        vm.kill()
        reported = [int(k) for k in FLUSHED.findall(console.log)]
        flushed = max(reported)
        for k in range(start, flushed + 1):  # every write up to it is durable
            writes[k % SLOTS] = k
        verify(image, writes)
        if fmt == "qcow2":
            check(image)
        if kind == "qcow2-snapshot":
            qemu_img("convert", "-U", "-l", "snapshot.name=base", "-O", "raw", image,
                     tmp_path / "base.raw")
            assert (tmp_path / "base.raw").read_bytes() == b"\x11" * size
        start = flushed + 1000  # past anything the killed guest may have written
