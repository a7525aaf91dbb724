"""gdb-multiarch drives kvmpy and QEMU 7.2 the same way; what gdb prints must be the same.

The program is tests/gdbstub/guests/gdbtest.elf on ``-M virt -smp 2 -bios none``: hart 0 runs
main() (breakpoints, finish, a watched variable, picolibc calls), hart 1 parks in WFI.  Only
``monitor info registers`` is compared in part: QEMU's default CPU has the H extension (its HMP
lists hstatus, vsstatus, ... which kvmpy's harts do not have) and QEMU's ACLINT resets mtimecmp
to 0, so its mip shows MTIP; the pc, x and f registers must agree.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import GDBTEST, needs_gdb, needs_qemu, run_gdb, vmm

pytestmark = [needs_gdb, needs_qemu, pytest.mark.timeout(300)]

MACHINE = ["-M", "virt", "-smp", "2", "-bios", "none", "-nographic", "-kernel", str(GDBTEST)]

SESSION = [
    "info registers pc",
    "break compute",
    "continue",
    "bt",
    "info registers",
    "x/8i $pc",
    "stepi",
    "stepi",
    "info registers pc",
    "break add",
    "continue",
    "bt",
    "finish",
    "hbreak uart_puts",
    "delete 1 2",
    "watch counter",
    "continue",
    "continue",
    "print counter",
    "set var counter = 7",
    "print counter",
    "print/x $mstatus",
    "print $priv",
    "monitor info registers",
    "info threads",
    "thread 2",
    "bt",
    "info registers pc",
    "thread 1",
    "stepi",
    "x/2i $pc",
    "delete",
    "detach",
]


def monitor_registers(text: str) -> str:
    """Of ``monitor info registers``, the lines both VMMs must agree on (see the module
    docstring): pc and the x/f register rows."""
    keep = [line for line in text.splitlines()
            if not re.match(r" (V |m|s|h|v)\w* +[0-9a-f]{16}$|^ V +=", line)]
    return "\n".join(keep)


def session(which: str) -> tuple[str, int, str]:
    with vmm(which, MACHINE) as v:
        transcript = run_gdb(v.port, GDBTEST, SESSION)
        status, out, _ = v.finish()
    return transcript, status, out


def test_gdb_session_matches_qemu() -> None:
    kvmpy_text, kvmpy_status, kvmpy_out = session("kvmpy")
    qemu_text, qemu_status, qemu_out = session("qemu")
    assert "Thread 1 hit Breakpoint 1, compute (n=10) at gdbtest.c" in qemu_text
    assert monitor_registers(kvmpy_text) == monitor_registers(qemu_text)
    # after detach the program runs to its end: the value set through gdb is what it prints
    assert "gdbtest: total=7 len=8" in kvmpy_out
    assert "gdbtest: total=7 len=8" in qemu_out
    assert kvmpy_status == qemu_status == 0


def test_monitor_registers_filter_keeps_the_general_registers() -> None:
    text = (" V      =   0\n pc       000000008000004e\n mhartid  0000000000000000\n"
            " hstatus  0000000200000000\n x0/zero  0000000000000000 x1/ra    000000008000020e")
    assert monitor_registers(text) == (" pc       000000008000004e\n"
                                       " x0/zero  0000000000000000 x1/ra    000000008000020e")


def test_large_transfers_use_the_whole_packet_size(tmp_path: Path) -> None:
    """gdb fills kvmpy's PacketSize (0x4000): 0x2000-byte reads, 0x3fe0-byte binary writes."""
    first, second = tmp_path / "first.bin", tmp_path / "second.bin"
    with vmm("kvmpy", MACHINE) as v:
        text = run_gdb(v.port, GDBTEST, [
            "set debug remote 1",
            f"dump binary memory {first} 0x80000000 0x80010000",
            f"restore {first} binary 0x80100000",
            "set debug remote 0",
            f"dump binary memory {second} 0x80100000 0x80110000",
            "kill"])
    assert "Sending packet: $m80000000,2000#" in text
    assert re.search(r"Sending packet: \$X80103fd0,3fe0:", text)
    assert len(first.read_bytes()) == 0x10000
    assert first.read_bytes() == second.read_bytes()
