"""Failed launches, cleanup, leaks, 100 launch/shutdown cycles, two VMs in one process.

The cycles use a tiny guest (``-M virt -bios none`` running a counting loop) so that 100 of
them take seconds: what is measured is the VMM's own setup and teardown, not a guest boot.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import glob
import mmap
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


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _malloc_in_use() -> int | None:
    """Bytes the C allocator has handed out and not taken back (glibc), or None."""
    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return int(info.uordblks + info.hblkhd)


def _mapped_bytes() -> int:
    """The process's usable address space (/proc/self/maps): guest RAM, stacks, heaps.
    Reservations without access (``---p``) are left out: glibc reserves 64 MiB for each new
    malloc arena, and how many arenas threads end up with depends on how busy the host is,
    not on what kvmpy keeps."""
    total = 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            span, perms = line.split(None, 2)[:2]
            if perms.startswith("---"):
                continue
            lo, hi = span.split("-")
            total += int(hi, 16) - int(lo, 16)
    return total


@dataclasses.dataclass
class _Snapshot:
    fds: int
    threads: int
    rss: int
    mapped: int
    malloc: int | None

    @classmethod
    def take(cls) -> _Snapshot:
        gc.collect()
        proc = psutil.Process()
        return cls(proc.num_fds(), threading.active_count(), proc.memory_info().rss,
                   _mapped_bytes(), _malloc_in_use())


def _host_rss_cost_of_unmapped_memory() -> int:
    """RSS the host keeps after 100 map/touch/unmap cycles of 64 MiB, without kvmpy: none on
    Linux, ~38 MiB under qemu-user 7.2 (its page bookkeeping for guest mappings is never freed),
    where RSS cannot tell a leak in kvmpy from the emulator's own."""
    before: int = psutil.Process().memory_info().rss
    for _ in range(100):
        with mmap.mmap(-1, 64 << 20) as m:
            m[0:1] = b"x"
    after: int = psutil.Process().memory_info().rss
    return after - before


def test_100_launch_shutdown_cycles_are_stable(tmp_path: Path) -> None:
    """fds, threads and memory after 100 cycles of a tiny VM stay where the first 10 left them:
    address space (guest RAM unmapped), C heap (engine freed), and RSS where the host's RSS
    accounting can be trusted for this."""
    payload = write_payload(tmp_path, "c", COUNTER)
    for _ in range(10):  # warm-up: imports, caches, the interpreter's first allocations
        with VM([*TINY, "-kernel", payload]):
            pass
    host_cost = _host_rss_cost_of_unmapped_memory()
    before = _Snapshot.take()
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
    del vm  # a stopped VM keeps its RAM readable until it goes
    after = _Snapshot.take()
    assert after.fds <= before.fds
    assert after.threads <= before.threads
    mib = 1 << 20
    assert after.mapped - before.mapped < 32 * mib, (
        f"address space grew by {(after.mapped - before.mapped) // mib} MiB")
    if before.malloc is not None and after.malloc is not None:
        assert after.malloc - before.malloc < 8 * mib, (
            f"C heap in use grew by {(after.malloc - before.malloc) // mib} MiB")
    if host_cost < 8 * mib:
        assert after.rss - before.rss < 32 * mib, (
            f"RSS grew by {(after.rss - before.rss) // mib} MiB")
    else:
        print(f"RSS not judged: the host keeps {host_cost // mib} MiB of RSS for 100 unmapped "
              "64 MiB mappings without kvmpy (an emulator's own bookkeeping)")
    print(f"100 cycles in {elapsed:.1f} s; fds {before.fds}->{after.fds}, threads "
          f"{before.threads}->{after.threads}, RSS {before.rss // mib}->{after.rss // mib} MiB, "
          f"mapped {before.mapped // mib}->{after.mapped // mib} MiB, C heap "
          f"{(before.malloc or 0) // mib}->{(after.malloc or 0) // mib} MiB")


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
