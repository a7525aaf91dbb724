"""Failed launches, cleanup, leaks, 100 launch/shutdown cycles, two VMs in one process.

The cycles use a tiny guest (``-M virt -bios none`` running a counting loop) so that 100 of
them take seconds: what is measured is the VMM's own setup and teardown, not a guest boot.
"""

from __future__ import annotations

import glob
import os
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from kvmpy.errors import ConfigError, KvmpyError, StateError
from kvmpy.process import ProcessVM, VMLaunchFailure
from kvmpy.vm import VM

from .helpers import COUNTER, COUNTER_GPA, write_payload

TINY = ["-M", "virt", "-bios", "none", "-accel", "tcg"]


def kvmpy_temp_dirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "kvmpy-*")))


def test_process_vm_bad_option_raises_with_command_status_and_output() -> None:
    before = kvmpy_temp_dirs()
    ran: list[str] = []
    vm = ProcessVM([*TINY, "-m", "12X"])
    vm.add_cleanup(lambda: ran.append("cleanup"))
    with pytest.raises(VMLaunchFailure) as info:
        vm.launch()
    failure = info.value
    assert "-m" in failure.command and "12X" in failure.command
    assert failure.exitcode == 1
    assert "-m 12X: Parameter 'size' expects a non-negative number below 2^64" in \
        failure.output
    assert "Traceback" not in failure.output
    assert ran == ["cleanup"]
    assert kvmpy_temp_dirs() <= before
    assert not psutil.Process().children(recursive=True)


def test_process_vm_missing_kernel(tmp_path: Path) -> None:
    ran: list[int] = []
    vm = ProcessVM([*TINY, "-kernel", str(tmp_path / "nonexistent")])
    vm.add_cleanup(lambda: ran.append(1))
    with pytest.raises(VMLaunchFailure) as info:
        vm.launch()
    assert info.value.exitcode == 1
    assert "nonexistent" in info.value.output
    assert ran == [1]
    assert not psutil.Process().children(recursive=True)


def test_vm_bad_option_raises_config_error_and_leaks_nothing() -> None:
    threads = threading.active_count()
    with pytest.raises(ConfigError):
        VM([*TINY, "-smp", "0x"]).launch()
    with pytest.raises(KvmpyError):
        VM([*TINY, "-kernel", "/nonexistent/Image"]).launch()
    assert threading.active_count() == threads


def test_state_guards() -> None:
    vm = VM([*TINY, "-S"])
    with pytest.raises(StateError):
        vm.pause()
    vm.launch()
    try:
        assert vm.status == "prelaunch"
        with pytest.raises(StateError) as info:
            vm.pause()
        assert (info.value.state, info.value.required) == ("prelaunch", ("running", "paused"))
        with pytest.raises(StateError):
            vm.launch()
        vm.resume()
        assert vm.status == "running"
    finally:
        assert vm.shutdown() == 0
    assert vm.status == "shutdown"


def test_process_vm_leaves_no_process_socket_or_temp_file(tmp_path: Path) -> None:
    before = kvmpy_temp_dirs()
    with ProcessVM([*TINY, "-kernel", write_payload(tmp_path, "c", COUNTER)]) as vm:
        pid = vm.get_pid()
        temp_dir = vm.temp_dir
        assert os.path.exists(os.path.join(temp_dir, "qmp.sock"))
        assert vm.memory.read_u64(COUNTER_GPA) > 0
        assert "VM status: running" in vm.hmp("info status")
    assert (pid is not None and not psutil.pid_exists(pid)) or \
        psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not os.path.exists(temp_dir)
    assert kvmpy_temp_dirs() <= before
    assert not psutil.Process().children(recursive=True)


def test_process_vm_kill(tmp_path: Path) -> None:
    vm = ProcessVM([*TINY, "-kernel", write_payload(tmp_path, "c", COUNTER)]).launch()
    temp_dir = vm.temp_dir
    vm.kill()
    assert not vm.is_running()
    assert not os.path.exists(temp_dir)
    assert not psutil.Process().children(recursive=True)


def _snapshot() -> tuple[int, int, int]:
    proc = psutil.Process()
    return proc.num_fds(), threading.active_count(), proc.memory_info().rss


def test_100_launch_shutdown_cycles_are_stable(tmp_path: Path) -> None:
    """fds, threads and RSS after 100 cycles of a tiny VM stay where the first 10 left them."""
    payload = write_payload(tmp_path, "c", COUNTER)
    for _ in range(10):  # warm-up: imports, caches, the interpreter's first allocations
        with VM([*TINY, "-kernel", payload]) as vm:
            pass
    fds, threads, rss = _snapshot()
    started = time.monotonic()
    for i in range(100):
        with VM([*TINY, "-m", "64M", "-kernel", payload]) as vm:
            if i % 10 == 0:
                vm.pause()
                pc = vm.get_reg("pc")
                assert 0x1000 <= pc < 0x1100 or pc >= 0x8000_0000  # boot ROM, then RAM
                vm.resume()
        assert not vm.is_running()
    elapsed = time.monotonic() - started
    fds_after, threads_after, rss_after = _snapshot()
    assert fds_after <= fds
    assert threads_after <= threads
    assert rss_after - rss < 32 << 20, f"RSS grew by {(rss_after - rss) >> 20} MiB"
    print(f"100 cycles in {elapsed:.1f} s; fds {fds}->{fds_after}, threads "
          f"{threads}->{threads_after}, RSS {rss >> 20}->{rss_after >> 20} MiB")


def test_10_process_vm_cycles_leave_nothing(tmp_path: Path) -> None:
    payload = write_payload(tmp_path, "c", COUNTER)
    fds = psutil.Process().num_fds()
    before = kvmpy_temp_dirs()
    for _ in range(10):
        with ProcessVM([*TINY, "-kernel", payload]) as vm:
            vm.pause()
            vm.resume()
    assert psutil.Process().num_fds() <= fds
    assert kvmpy_temp_dirs() <= before
    assert not psutil.Process().children(recursive=True)


def test_two_vms_in_one_process(tmp_path: Path) -> None:
    payload = write_payload(tmp_path, "c", COUNTER)
    with VM([*TINY, "-kernel", payload]) as first, VM([*TINY, "-kernel", payload]) as second:
        first.pause()
        frozen = first.memory.read_u64(COUNTER_GPA)
        a = second.memory.read_u64(COUNTER_GPA)
        time.sleep(0.2)
        assert second.memory.read_u64(COUNTER_GPA) > a  # the other one keeps running
        assert first.memory.read_u64(COUNTER_GPA) == frozen
        second.memory.write(COUNTER_GPA + 8, b"second")
        assert first.memory.read(COUNTER_GPA + 8, 6) == bytes(6)
        first.set_reg("a0", frozen + 10**12)  # registers of one VM, set while paused
        first.resume()
        deadline = time.monotonic() + 10
        while first.memory.read_u64(COUNTER_GPA) <= frozen + 10**12:
            assert time.monotonic() < deadline, "the first VM did not count on from a0"
        assert second.memory.read_u64(COUNTER_GPA) < 10**12
        second.reset()
        assert second.event_wait("RESET", timeout=10)["data"]["reason"] == \
            "host-qmp-system-reset"
        with pytest.raises(TimeoutError):
            first.event_wait("RESET", timeout=0.2)
