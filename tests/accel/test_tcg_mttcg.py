"""``-accel tcg,thread=multi``, QEMU's multi-threaded TCG: each hart on a host thread of its own.

What the threads share is tested by the guests: tests/guests/smp_stress.S (a spinlock over
plain increments, LR/SC and AMOs from four harts at once, code rewritten by one hart and run
by the others after fence.i) runs in test_isa.py, and every -smp boot of the suite runs this
way (the default).  Here: the threads themselves, -icount, and pausing harts that are busy.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

import kvmpy
from kvmpy import guests

from ..support import kvmpy_env

QEMU = shutil.which("qemu-system-riscv64")
PROMPT = re.escape(guests.PROMPT)


def _thread_ids(vm: kvmpy.VM) -> list[int]:
    return [int(t) for t in re.findall(r"thread_id=(\d+)", vm.hmp("info cpus"))]


@pytest.mark.parametrize(("accel", "threads"), [("tcg", 4), ("tcg,thread=multi", 4),
                                                ("tcg,thread=single", 1)])
def test_each_hart_runs_on_a_host_thread_of_its_own(accel: str, threads: int) -> None:
    with kvmpy.VM(machine="virt", smp=4, accel=accel, append="console=ttyS0") as vm:
        vm.console.expect(PROMPT, timeout=120)
        ids = _thread_ids(vm)
        assert len(ids) == 4 and len(set(ids)) == threads
        vm.console.send("cat /sys/devices/system/cpu/online\n")
        vm.console.expect(r"\n0-3\r?\n", timeout=30)


def test_busy_harts_pause_and_resume(tmp_path: object) -> None:
    # Four harts spinning in user space (no exits, nothing in WFI): every pause stops all of
    # them (their pcs stay put while paused) and the guest goes on after each resume.
    with kvmpy.VM(machine="virt", smp=4, append="console=ttyS0") as vm:
        vm.console.expect(PROMPT, timeout=120)
        vm.console.send("for i in 1 2 3 4; do (while :; do :; done) & done; echo spinning\n")
        vm.console.expect(r"\nspinning\r?\n", timeout=30)
        for _ in range(30):
            vm.pause()
            pcs = [vm.get_reg("pc", cpu) for cpu in range(4)]
            assert [vm.get_reg("pc", cpu) for cpu in range(4)] == pcs
            vm.resume()
        vm.console.send("kill $(jobs -p); echo answer=$((6*7))\n")
        vm.console.expect(r"answer=42", timeout=60)
        vm.console.send("poweroff\n")
        assert vm.event_wait("SHUTDOWN", timeout=60)["data"]["guest"] is True


def _refusal(argv0: list[str]) -> tuple[int, str]:
    proc = subprocess.run([*argv0, "-M", "virt", "-accel", "tcg,thread=multi", "-icount",
                           "shift=0", "-display", "none", "-serial", "none", "-monitor",
                           "none"], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, env=kvmpy_env(), check=False)
    return proc.returncode, proc.stderr


def test_icount_refuses_thread_multi_as_qemu_does() -> None:
    code, err = _refusal([sys.executable, "-m", "kvmpy"])
    assert (code, err) == (1, "kvmpy: -accel tcg,thread=multi: No MTTCG when icount is enabled\n")
    if QEMU is None:
        pytest.skip("qemu-system-riscv64 is not installed: kvmpy's line checked alone")
    qemu_code, qemu_err = _refusal([QEMU])
    assert qemu_code == 1
    assert qemu_err.split(": ", 1)[1] == err.split(": ", 1)[1]


def test_icount_alone_runs_every_hart_on_one_thread() -> None:
    # QEMU's default is single-threaded with -icount: guest time counts instructions.
    with kvmpy.VM(["-icount", "shift=0"], machine="virt", smp=2,
                  append="console=ttyS0") as vm:
        vm.console.expect(PROMPT, timeout=120)
        assert len(set(_thread_ids(vm))) == 1
