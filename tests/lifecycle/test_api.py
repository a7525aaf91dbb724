"""The lifecycle API on a tiny guest, the same calls on ``kvmpy.VM`` and ``kvmpy.ProcessVM``:
memory, registers, events (``event_wait`` with ``match``, the iterator), HMP, QMP, ``step``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from kvmpy.errors import KvmpyError, StateError
from kvmpy.process import ProcessVM
from kvmpy.vm import VM

from .helpers import COUNTER, COUNTER_GPA, RAM_BASE, write_payload

TINY = ["-M", "virt", "-bios", "none", "-accel", "tcg"]


@pytest.fixture(params=["VM", "ProcessVM"])
def machine(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    cls = VM if request.param == "VM" else ProcessVM
    vm = cls([*TINY, "-S", "-kernel", write_payload(tmp_path, "c", COUNTER)])
    vm.launch()
    yield vm
    vm.kill()


def test_memory_registers_and_events(machine: Any) -> None:
    vm = machine
    assert vm.status == "prelaunch"
    assert vm.memory.read(RAM_BASE, 4) == (0x00001397).to_bytes(4, "little")
    vm.memory.write(COUNTER_GPA + 64, b"written")
    assert vm.memory.read(COUNTER_GPA + 64, 7) == b"written"
    assert vm.get_reg("pc") == 0x1000
    vm.resume()
    assert vm.event_wait("RESUME", timeout=10)["event"] == "RESUME"
    deadline = time.monotonic() + 10
    while vm.memory.read_u64(COUNTER_GPA) < 1000:
        assert time.monotonic() < deadline
    vm.pause()
    count = vm.memory.read_u64(COUNTER_GPA)
    registers = vm.registers()
    assert registers["x10"] in (count, count + 1)  # a0 holds the count
    assert registers["pc"] in range(RAM_BASE + 4, RAM_BASE + 16)
    assert vm.get_reg("a0") == registers["x10"]
    time.sleep(0.2)
    assert vm.memory.read_u64(COUNTER_GPA) == count  # paused: the guest does not move
    assert "VM status: paused" in vm.hmp("info status")
    vm.reset()
    vm.resume()
    event = vm.event_wait("RESET", timeout=10, match={"data": {"guest": False}})
    assert event["data"]["reason"] == "host-qmp-system-reset"
    with pytest.raises(TimeoutError):
        vm.event_wait("RESET", timeout=0.3, match={"data": {"guest": True}})
    vm.pause()
    names = [event["event"] for event in vm.events(timeout=0.5)]
    assert "STOP" in names
    assert vm.shutdown() == 0
    assert not vm.is_running()


def test_vm_step_and_set_reg(tmp_path: Path) -> None:
    with VM([*TINY, "-S", "-kernel", write_payload(tmp_path, "c", COUNTER)]) as vm:
        for _ in range(20):  # through the boot ROM into the payload
            vm.step()
            if vm.get_reg("pc") == RAM_BASE + 4:
                break
        assert vm.get_reg("pc") == RAM_BASE + 4
        vm.set_reg("a0", 41)
        vm.step(1)  # addi a0, a0, 1
        assert vm.get_reg("a0") == 42
        vm.step(2)  # sd; j
        assert vm.memory.read_u64(COUNTER_GPA) == 42
        assert vm.get_reg("pc") == RAM_BASE + 4
        with pytest.raises(KvmpyError):
            vm.memory.write(0x1000_0000, b"x")  # the UART is not RAM
        with pytest.raises(KvmpyError):
            vm.get_reg("pc", cpu=3)


def test_vm_qmp_in_process(tmp_path: Path) -> None:
    with VM([*TINY, "-S", "-name", "inproc"]) as vm:
        assert vm.qmp("query-name") == {"name": "inproc"}
        assert vm.qmp("query-status")["status"] == "prelaunch"
        vm.qmp("cont")
        assert vm.status == "running"
        with pytest.raises(StateError):
            vm.set_reg("a0", 1)


def test_wait_returns_after_guest_poweroff(tmp_path: Path) -> None:
    from .helpers import POWEROFF

    for cls in (VM, ProcessVM):
        vm = cls([*TINY, "-kernel", write_payload(tmp_path, "off", POWEROFF)]).launch()
        assert vm.wait(30) == 0
        assert vm.shutdown() == 0  # nothing left to stop


def test_shutdown_while_the_guest_powers_off(tmp_path: Path) -> None:
    # The guest powers off at once; shutdown() races with the end of the VM's main loop
    # (which then runs no more calls): either way it returns the exit status.
    from .helpers import POWEROFF

    payload = write_payload(tmp_path, "off", POWEROFF)
    for _ in range(20):
        vm = VM([*TINY, "-kernel", payload]).launch()
        vm.event_wait("SHUTDOWN", timeout=30)  # the loop is ending now
        assert vm.shutdown() == 0
