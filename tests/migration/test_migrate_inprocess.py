"""What a source leaves behind after a migration ends (in-process, to look at its RAM):
dirty logging is on while it copies and off after a completion, a cancel and a failure; the
guest runs on after a cancel or a failure."""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvmpy.vm import VM

RAM_BASE = 0x8000_0000
COUNTER_GPA = RAM_BASE + 0x1000
COUNTER = [0x00001397, 0x00150513, 0x00A3B023, 0xFF9FF06F]
"""auipc t2, 1; loop: addi a0, a0, 1; sd a0, 0(t2); j loop"""


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[VM]:
    payload = tmp_path / "counter.bin"
    payload.write_bytes(b"".join(struct.pack("<I", word) for word in COUNTER))
    with VM(["-M", "virt", "-bios", "none", "-accel", "tcg", "-kernel", str(payload)]) as vm:
        yield vm


def wait_for(vm: VM, statuses: tuple[str, ...], timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        info: dict[str, Any] = vm.qmp("query-migrate")
        if info.get("status") in statuses:
            return info
        assert time.monotonic() < deadline, info
        time.sleep(0.02)


def counting(vm: VM) -> bool:
    first = vm.memory.read_u64(COUNTER_GPA)
    time.sleep(0.1)
    return vm.memory.read_u64(COUNTER_GPA) > first


def test_completed_migration_turns_dirty_logging_off(vm: VM) -> None:
    vm.qmp("migrate", uri="exec:cat > /dev/null")
    assert wait_for(vm, ("completed", "failed"))["status"] == "completed"
    assert not vm.system.ram.dirty_logging
    assert vm.status == "postmigrate"
    vm.resume()
    assert counting(vm)


def test_cancel_turns_dirty_logging_off(vm: VM) -> None:
    vm.memory.write(RAM_BASE + 0x10_0000, os.urandom(2 << 20))
    vm.qmp("migrate-set-parameters", max_bandwidth=128 << 10)  # 16 s for 2 MiB
    vm.qmp("migrate", uri="exec:cat > /dev/null")
    wait_for(vm, ("active",))
    assert vm.system.ram.dirty_logging
    vm.qmp("migrate_cancel")
    assert wait_for(vm, ("cancelled",))["status"] == "cancelled"
    assert not vm.system.ram.dirty_logging
    assert vm.status == "running"
    assert counting(vm)


def test_failure_turns_dirty_logging_off(vm: VM) -> None:
    vm.memory.write(RAM_BASE + 0x10_0000, os.urandom(1 << 20))
    vm.qmp("migrate", uri="exec:exit 0")  # reads nothing: the first write breaks the pipe
    info = wait_for(vm, ("failed", "completed"))
    assert info == {"status": "failed", "error-desc": "Unable to write to command: "
                                                      "Broken pipe"}
    assert not vm.system.ram.dirty_logging
    assert vm.status == "running"
    assert counting(vm)


def test_cancel_while_connecting(vm: VM) -> None:
    """A peer that never answers the connection (a full backlog on loopback): the cancel
    does not wait for TCP to give up."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    queued = []
    for _ in range(4):  # fill the backlog: later SYNs are dropped
        client = socket.socket()
        client.setblocking(False)
        client.connect_ex(("127.0.0.1", port))
        queued.append(client)
    try:
        time.sleep(0.2)
        vm.qmp("migrate", uri=f"tcp:127.0.0.1:{port}")
        time.sleep(0.5)
        assert vm.qmp("query-migrate") == {"status": "setup"}
        vm.qmp("migrate_cancel")
        assert wait_for(vm, ("cancelled",), timeout=20)["status"] == "cancelled"
        assert vm.status == "running"
    finally:
        for client in queued:
            client.close()
        server.close()
