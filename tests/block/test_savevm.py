"""``savevm``/``loadvm``/``delvm``/``info snapshots`` and the QMP snapshot jobs, on kvmpy's
command line as on QEMU 7.2's: the bundled guest goes back to a snapshot (its tmpfs, its
disk, its clock), the refusals are QEMU's word for word (the texts below were taken from
qemu-system-riscv64 7.2), and a snapshot kvmpy cannot load changes nothing."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kvmpy.process import ProcessVM
from tests.block.conftest import check, create, qemu_img, qemu_io
from tests.net.test_guest_network import guest, sh

__all__ = ["guest"]

QEMU = shutil.which("qemu-system-riscv64")
MiB = 1 << 20


def _machine(*args: str, binary: list[str] | None = None) -> ProcessVM:
    """A machine without a guest, stopped before it starts (``-S``)."""
    vm = ProcessVM(["-M", "virt", "-bios", "none", "-S", "-accel", "tcg", *args],
                   binary=binary)
    vm.launch()
    return vm


def _uptime(vm: Any) -> float:
    return float(sh(vm, "cat /proc/uptime").split()[0])


def test_guest_goes_back_to_a_snapshot(guest: Any, tmp_path: Path) -> None:
    disk = create(tmp_path / "disk.qcow2", 32 * MiB)
    vm = guest("-drive", f"file={disk},format=qcow2,if=none,id=d0",
               "-device", "virtio-blk-pci,drive=d0",
               "-device", "virtio-rng-pci")
    sh(vm, "echo one > /tmp/x; printf before | dd of=/dev/vda conv=fsync 2>/dev/null")
    saved_at = _uptime(vm)
    assert vm.hmp("savevm first") == ""
    listing = vm.hmp("info snapshots").splitlines()
    assert listing[:2] == ["List of snapshots present on all disks:",
                           "ID        TAG               VM SIZE                DATE     "
                           "VM CLOCK     ICOUNT"]
    assert re.fullmatch(r"--        first +\d+(\.\d+)? MiB \d{4}-\d\d-\d\d \d\d:\d\d:\d\d "
                        r"\d\d:\d\d:\d\d\.\d{3} {11}", listing[2]), listing
    sh(vm, "echo two > /tmp/x; printf after_ | dd of=/dev/vda conv=fsync 2>/dev/null; "
           "head -c 4096 /dev/hwrng > /dev/null")
    assert vm.hmp("loadvm first") == ""
    assert vm.status == "running"
    assert sh(vm, "cat /tmp/x").strip() == "one"
    sh(vm, "echo 3 > /proc/sys/vm/drop_caches")
    assert sh(vm, "head -c 6 /dev/vda") == "before"
    assert saved_at <= _uptime(vm) < saved_at + 30  # the clock goes on from the snapshot
    assert sh(vm, "head -c 16 /dev/hwrng | wc -c").strip() == "16"
    assert vm.hmp("savevm") == ""  # a name made of the date
    names = [line.split()[1] for line in vm.hmp("info snapshots").splitlines()[2:]]
    assert names[0] == "first" and re.fullmatch(r"vm-\d{14}", names[1])
    assert vm.hmp("delvm first") == ""
    vm.shutdown()
    check(disk)
    listing = qemu_img("snapshot", "-l", disk).stdout
    assert "first" not in listing and "vm-" in listing


def test_refusals_are_qemus(tmp_path: Path) -> None:
    raw = tmp_path / "r.raw"
    raw.write_bytes(bytes(MiB))
    vm = _machine()
    try:
        assert vm.hmp("savevm a") == \
            "Error: no block device can store vmstate for snapshot\r\n"
        assert vm.hmp("info snapshots") == "no block device can store vmstate for snapshot\r\n"
        assert vm.hmp("loadvm a") == "Error: no block device can store vmstate for snapshot\r\n"
        assert vm.hmp("delvm a") == ""
    finally:
        vm.shutdown()
    vm = _machine("-drive", f"file={raw},format=raw,if=none,id=d0",
                  "-device", "virtio-blk-device,drive=d0")
    try:
        for command in ("savevm a", "loadvm a", "delvm a"):
            assert vm.hmp(command) == \
                "Error: Device 'd0' is writable but does not support snapshots\r\n"
        assert vm.hmp("info snapshots") == "no block device can store vmstate for snapshot\r\n"
    finally:
        vm.shutdown()
    disk = create(tmp_path / "d.qcow2", MiB)
    qemu_img("snapshot", "-c", "disk-only", disk)
    vm = _machine("-drive", f"file={disk},format=qcow2,if=none,id=d0",
                  "-device", "virtio-blk-device,drive=d0",
                  "-drive", f"file={raw},format=raw,if=none,id=d1,readonly=on",
                  "-device", "virtio-blk-device,drive=d1")
    try:
        assert vm.hmp("loadvm nope") == \
            "Error: Snapshot 'nope' does not exist in one or more devices\r\n"
        assert vm.hmp("loadvm disk-only") == \
            "Error: This is a disk-only snapshot. Revert to it  offline using qemu-img\r\n"
        assert vm.hmp("delvm nope") == ""
        # the monitor looks snapshots up by name: "1" is the id of "disk-only", not a name
        assert vm.hmp("loadvm 1") == \
            "Error: Snapshot '1' does not exist in one or more devices\r\n"
        assert vm.hmp("delvm 1") == ""
        assert "disk-only" in vm.hmp("info snapshots")
        assert vm.hmp("loadvm").startswith("missing argument")
    finally:
        vm.shutdown()


def _events(vm: ProcessVM, job: str) -> list[str]:
    statuses = []
    while True:
        event = vm.event_wait("JOB_STATUS_CHANGE", timeout=30)
        assert event["data"]["id"] == job
        statuses.append(event["data"]["status"])
        if statuses[-1] in ("concluded", "null"):
            return statuses


def test_snapshot_jobs(tmp_path: Path) -> None:
    disk = create(tmp_path / "d.qcow2", MiB)
    vm = _machine("-drive", f"file={disk},format=qcow2,if=none,id=d0,node-name=n0",
                  "-device", "virtio-blk-device,drive=d0")
    try:
        def job(command: str, job_id: str, **args: Any) -> dict[str, Any]:
            assert vm.qmp(command, **{"job-id": job_id, **args}) == {}
            statuses = _events(vm, job_id)
            [info] = [j for j in vm.qmp("query-jobs") if j["id"] == job_id]
            assert vm.qmp("job-dismiss", id=job_id) == {}
            assert _events(vm, job_id) == ["null"]
            return {"statuses": statuses, **info}

        ok = ["created", "running", "waiting", "pending", "concluded"]
        failed = ["created", "running", "aborting", "concluded"]
        done = job("snapshot-save", "j1", tag="t1", vmstate="n0", devices=["n0"])
        assert done == {"statuses": ok, "current-progress": 1, "status": "concluded",
                        "total-progress": 1, "type": "snapshot-save", "id": "j1"}
        assert list(done) == ["statuses", "current-progress", "status", "total-progress",
                              "type", "id"]
        again = job("snapshot-save", "j2", tag="t1", vmstate="n0", devices=["n0"])
        assert again["statuses"] == failed
        assert again["error"] == "Snapshot 't1' already exists in one or more devices"
        assert job("snapshot-load", "j3", tag="t1", vmstate="n0",
                   devices=["n0"])["statuses"] == ok
        for args, error in (({"vmstate": "nod", "devices": ["n0"]},
                             "vmstate block device 'nod' does not exist"),
                            ({"vmstate": "n0", "devices": ["d0"]},
                             "No block device node 'd0'"),
                            ({"vmstate": "n0", "devices": []},
                             "At least one device is required for snapshot")):
            assert job("snapshot-save", "j4", tag="t2", **args)["error"] == error
        assert job("snapshot-load", "j5", tag="zz", vmstate="n0", devices=["n0"])["error"] \
            == "Snapshot 'zz' does not exist in one or more devices"
        assert job("snapshot-delete", "j6", tag="t1", devices=["n0"])["statuses"] == ok
        assert vm.qmp("query-jobs") == []
        with pytest.raises(Exception, match="Job not found"):
            vm.qmp("job-dismiss", id="j6")
        with pytest.raises(Exception, match="Parameter 'vmstate' is missing"):
            vm.qmp("snapshot-save", **{"job-id": "j7", "tag": "t", "devices": ["n0"]})
    finally:
        vm.shutdown()
    check(disk)
    assert "t1" not in qemu_img("snapshot", "-l", disk).stdout


@pytest.mark.skipif(QEMU is None, reason="qemu-system-riscv64 (the oracle) is not installed")
def test_a_state_kvmpy_cannot_read_changes_nothing(guest: Any, tmp_path: Path) -> None:
    """A snapshot QEMU saved (its own stream format) is refused by kvmpy's loadvm in one
    line, before the disk or the VM changes."""
    assert QEMU is not None
    disk = create(tmp_path / "q.qcow2", 4 * MiB)
    qemu = subprocess.run([QEMU, "-M", "virt", "-bios", "none", "-S", "-display", "none",
                           "-drive", f"file={disk},format=qcow2,if=none,id=d0",
                           "-device", "virtio-blk-device,drive=d0", "-monitor", "stdio"],
                          input="savevm qemu\nquit\n", capture_output=True, text=True,
                          timeout=60, check=True)
    assert "Error" not in qemu.stdout
    qemu_io(disk, "write -P 0x5a 0 4k")
    vm = guest("-drive", f"file={disk},format=qcow2,if=none,id=d0",
               "-device", "virtio-blk-pci,drive=d0")
    sh(vm, "echo still-here > /tmp/x")
    reply = vm.hmp("loadvm qemu")
    assert reply.startswith("Error: Error while loading VM state: ") and \
        reply.count("\n") == 1, reply
    assert vm.hmp("cont") == "" and vm.status == "running"  # as QEMU: stopped after a failure
    assert sh(vm, "cat /tmp/x").strip() == "still-here"
    assert sh(vm, "head -c 4 /dev/vda") == "ZZZZ"
    vm.shutdown()
    check(disk)
