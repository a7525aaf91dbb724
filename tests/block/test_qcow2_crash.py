"""Crash consistency: a child process writes through the qcow2 driver and flushes, and is
killed with SIGKILL at a random moment.  Every write flushed before the kill must read back,
and ``qemu-img check`` must find no corruption (leaked clusters are allowed: QEMU leaves them
too, and ``qemu-img check -r leaks`` gives them back).  The image is then written again by
kvmpy after each kill, so the leaks a crash left are stepped over, not reused."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmpy.block import create_image, open_image
from tests.block.conftest import check, need_qemu_img

ROOT = Path(__file__).resolve().parents[2]
WRITE = 3000
FLUSH_EVERY = 3

CHILD = r"""
import sys
from kvmpy.block import open_image
path, first, stride, slots = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
write, every = int(sys.argv[5]), int(sys.argv[6])
image = open_image(path, "qcow2")
k = first
while True:
    image.pwrite((k * 7919 % slots) * stride, bytes([k % 251 + 1]) * write)
    if (k + 1) % every == 0:
        image.flush()
        print(k, flush=True)
    k += 1
"""


def model(flushed: int, slots: int) -> dict[int, int | None]:
    """slot -> the byte the last flushed write left there (None: a later, unflushed write
    may have reached it too)."""
    content: dict[int, int | None] = {}
    for k in range(flushed + 1):
        content[k * 7919 % slots] = k % 251 + 1
    for k in range(flushed + 1, flushed + 1 + 2 * FLUSH_EVERY):
        content[k * 7919 % slots] = None
    return content


@pytest.mark.parametrize(("cluster_bits", "refcount_order", "backing"),
                         [(16, 4, False), (9, 6, False), (12, 0, True)],
                         ids=["64k-rc16", "512-rc64", "4k-rc1-backing"])
def test_sigkill_at_random_moments(tmp_path: Path, cluster_bits: int, refcount_order: int,
                                   backing: bool) -> None:
    need_qemu_img()
    stride = (1 << cluster_bits) + 4999  # each write allocates, across cluster boundaries
    slots = 1009  # prime: 7919 * k walks every slot
    size = slots * stride + (1 << cluster_bits)
    path = tmp_path / "crash.qcow2"
    base = None
    if backing:
        (tmp_path / "base.raw").write_bytes(b"\xee" * size)
        base = "base.raw"
    create_image(str(path), size, cluster_bits=cluster_bits, refcount_order=refcount_order,
                 backing_file=base, backing_format="raw" if base else None)
    rng = random.Random(cluster_bits * 10 + refcount_order)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    flushed = -1  # every write up to this one was flushed
    leaks = 0
    for _ in range(10):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(flushed + 1),
                                  str(stride), str(slots), str(WRITE), str(FLUSH_EVERY)],
                                 stdout=subprocess.PIPE, text=True, env=env)
        assert child.stdout is not None
        # A random number of flushed writes, then a random moment (seeded); counted in
        # writes rather than seconds, so that a slow machine kills as often in the middle.
        target = flushed + rng.randint(120, 300)
        seen = []
        while not seen or seen[-1] < target:
            line = child.stdout.readline()
            assert line, "the writer ended by itself"
            seen.append(int(line))
        time.sleep(rng.uniform(0.0, 0.05))
        child.send_signal(signal.SIGKILL)
        lines = [*map(str, seen), *child.stdout.read().split()]
        child.wait()
        if lines:
            flushed = max(flushed, int(lines[-1]))
        leaks += check(path).get("leaks", 0)  # no corruption, whatever the moment
        image = open_image(str(path), "qcow2", read_only=True)
        for slot, byte in model(flushed, slots).items():
            if byte is not None:
                assert image.pread(slot * stride, WRITE) == bytes([byte]) * WRITE, \
                    f"slot {slot}: a flushed write is lost"
        image.close()
    assert flushed > slots  # the kills fell on first allocations and on rewrites
    # after all that, kvmpy still writes a consistent image over the leaks
    image = open_image(str(path), "qcow2")
    image.pwrite(size - WRITE, b"\x01" * WRITE)
    image.close()
    check(path)
    print(f"{flushed + 1} flushed writes, {leaks} leaked clusters seen over 10 kills")


SNAPSHOT_CHILD = r"""
import os, random, sys
from kvmpy.block import open_image
path, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
image = open_image(path, "qcow2")
step = 0
while True:
    image.pwrite(rng.randrange(0, 60) * 65536 + rng.randrange(0, 4096),
                 bytes([step % 251 + 1]) * rng.randrange(1, 150_000))
    name = f"s{rng.randrange(3)}"
    sn = image.find_snapshot(name)
    choice = rng.randrange(3)
    if sn is not None and choice == 0:
        image.snapshot_goto(name)
    elif sn is not None and choice == 1:
        image.snapshot_delete(sn)
    elif sn is None:
        image.write_vmstate(0, os.urandom(rng.randrange(1, 300_000)))
        image.snapshot_create(name, 1)
    image.flush()
    print(step, flush=True)
    step += 1
"""


def test_sigkill_during_snapshot_operations(tmp_path: Path) -> None:
    """savevm, loadvm and delvm interrupted anywhere leave an image that, once kvmpy has
    opened it again, ``qemu-img check`` finds no corruption in, and whose snapshots QEMU and
    kvmpy read alike."""
    need_qemu_img()
    path = tmp_path / "snap.qcow2"
    create_image(str(path), 4 << 20)
    rng = random.Random(7)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for round_ in range(8):
        child = subprocess.Popen([sys.executable, "-c", SNAPSHOT_CHILD, str(path),
                                  str(round_)], stdout=subprocess.PIPE, text=True, env=env)
        assert child.stdout is not None
        for _ in range(rng.randint(1, 12)):  # some operations, then a random moment
            assert child.stdout.readline(), "the child ended by itself"
        time.sleep(rng.uniform(0.0, 0.05))
        child.send_signal(signal.SIGKILL)
        child.wait()
        # kvmpy's next open sets the COPIED flags a killed snapshot operation left lagging
        # behind the refcounts (QEMU leaves the same after a crash there: qemu-img check
        # calls them corruptions and -r all repairs them).
        open_image(str(path), "qcow2").close()
        check(path)
        listing = subprocess.run(["qemu-img", "snapshot", "-l", str(path)],
                                 capture_output=True, text=True, check=True).stdout
        image = open_image(str(path), "qcow2")
        assert sorted(sn.name for sn in image.snapshots) == sorted(
            line.split()[1] for line in listing.splitlines()[2:])
        image.pread(0, 4 << 20)
        image.close()
