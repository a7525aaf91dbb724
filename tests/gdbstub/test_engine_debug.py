"""The interpreter's debug hooks, driven directly (no gdb): a breakpoint stops before its
instruction, a step retires exactly one instruction (an MMIO store included), a watchpoint
stops before the access and names it, and with nothing set no debug exit ever happens."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from elftools.elf.elffile import ELFFile

from kvmpy.accel.exits import DebugExit, HaltExit, IntrExit, MmioExit, VcpuExit
from kvmpy.accel.tcg import core
from kvmpy.cli.parser import parse_args
from kvmpy.runloop import handle_exit
from kvmpy.system import System

from .conftest import GDBTEST

pytestmark = [pytest.mark.skipif(core.unavailable_reason() is not None,
                                 reason=f"{core.unavailable_reason()}"),
              pytest.mark.timeout(120)]


def symbols() -> dict[str, int]:
    with GDBTEST.open("rb") as f:
        table = ELFFile(f).get_section_by_name(".symtab")
        return {s.name: int(s["st_value"]) for s in table.iter_symbols() if s.name}


SYM = symbols()


class Console:
    def __init__(self, system: System) -> None:
        self.chardev: Any = system.chardevs["s0"]

    def read_bytes(self) -> bytes:
        return bytes(self.chardev.peek())


@pytest.fixture
def vm() -> Iterator[tuple[System, Any, Console]]:
    config = parse_args(["-M", "virt", "-bios", "none", "-kernel", str(GDBTEST), "-display",
                         "none", "-chardev", "ringbuf,id=s0", "-serial", "chardev:s0",
                         "-accel", "tcg"])
    system = System(config).create()
    try:
        assert system.accel is not None
        yield system, system.accel.vcpus[0], Console(system)
    finally:
        system.close()


def run_until_debug(system: System, vcpu: Any, limit: int = 10_000,
                    seen: list[VcpuExit] | None = None) -> VcpuExit:
    """Run hart 0 alone, completing its exits (kept in ``seen``), until a debug exit or a
    halt."""
    for _ in range(limit):
        exit_ = vcpu.run()
        if isinstance(exit_, (DebugExit, HaltExit)):
            return exit_
        if seen is not None:
            seen.append(exit_)
        handle_exit(system, vcpu, exit_)
    raise AssertionError("no debug exit")


def read_u64(system: System, gpa: int) -> int:
    assert system.ram is not None
    return int.from_bytes(system.ram.read(gpa, 8), "little")


def last_byte_store(start: int, end: int, code: bytes) -> int:
    """Address of the last ``sb`` in ``[start, end)`` of ``code`` (based at 0x80000000): in
    uart_putc, the store to the UART (the first one spills the argument, at -O0)."""
    pc, found = start, None
    while pc < end:
        half = int.from_bytes(code[pc - 0x8000_0000:pc - 0x8000_0000 + 2], "little")
        if half & 3 != 3:
            pc += 2
            continue
        insn = int.from_bytes(code[pc - 0x8000_0000:pc - 0x8000_0000 + 4], "little")
        if insn & 0x707F == 0x0023:
            found = pc
        pc += 4
    assert found is not None
    return found


def test_breakpoint_stops_before_its_instruction(vm: tuple[System, Any, Console]) -> None:
    system, vcpu, _ = vm
    accel: Any = system.accel
    accel.set_breakpoints([SYM["add"]])
    assert run_until_debug(system, vcpu) == DebugExit("breakpoint")
    assert vcpu.get_reg("pc") == SYM["add"]
    before = vcpu.instructions
    # still set: the hart does not move (gdb removes it and steps over it)
    assert run_until_debug(system, vcpu) == DebugExit("breakpoint")
    assert vcpu.instructions == before
    accel.set_breakpoints([])
    vcpu.set_single_step(True)
    assert run_until_debug(system, vcpu) == DebugExit("step")
    vcpu.set_single_step(False)
    assert vcpu.instructions == before + 1
    assert vcpu.get_reg("pc") != SYM["add"]


def test_a_step_over_an_mmio_store_is_one_instruction(vm: tuple[System, Any, Console]) -> None:
    system, vcpu, console = vm
    code = GDBTEST.read_bytes()
    with GDBTEST.open("rb") as f:
        text = ELFFile(f).get_section_by_name(".text")
        offset, base = int(text["sh_offset"]), int(text["sh_addr"])
    image = b"\0" * (base - 0x8000_0000) + code[offset:offset + int(text["sh_size"])]
    store = last_byte_store(SYM["uart_putc"], SYM["uart_puts"], image)
    accel: Any = system.accel
    accel.set_breakpoints([store])
    assert run_until_debug(system, vcpu) == DebugExit("breakpoint")
    accel.set_breakpoints([])
    before = vcpu.instructions
    vcpu.set_single_step(True)
    seen: list[VcpuExit] = []
    assert run_until_debug(system, vcpu, seen=seen) == DebugExit("step")
    vcpu.set_single_step(False)
    assert (vcpu.get_reg("pc"), vcpu.instructions) == (store + 4, before + 1)
    # the first byte of "gdbtest: ...", stored once: by the UART's C half in the engine, or
    # through an exit to its Python model
    assert [e for e in seen if not isinstance(e, IntrExit)] in \
        ([], [MmioExit(0x1000_0000, 1, True, ord("g"))])
    assert console.read_bytes() == b"g"


@pytest.mark.parametrize("kind", ["write", "access"])
def test_write_watchpoint_stops_before_the_store(vm: tuple[System, Any, Console],
                                                 kind: str) -> None:
    system, vcpu, _ = vm
    accel: Any = system.accel
    counter = SYM["counter"]
    accel.set_watchpoints([(counter + 4, 2, kind)])  # inside the 8-byte variable
    exit_ = run_until_debug(system, vcpu)
    assert exit_ == DebugExit("watchpoint", counter + 4, counter, kind)
    assert read_u64(system, counter) == 0  # not written yet
    pc = vcpu.get_reg("pc")
    assert run_until_debug(system, vcpu) == exit_ and vcpu.get_reg("pc") == pc
    accel.set_watchpoints([])
    vcpu.set_single_step(True)
    assert run_until_debug(system, vcpu) == DebugExit("step")
    vcpu.set_single_step(False)
    assert read_u64(system, counter) == 45


def test_read_watchpoint_ignores_writes(vm: tuple[System, Any, Console]) -> None:
    system, vcpu, _ = vm
    accel: Any = system.accel
    counter = SYM["counter"]
    accel.set_watchpoints([(counter, 8, "read")])
    exit_ = run_until_debug(system, vcpu)
    assert exit_ == DebugExit("watchpoint", counter, counter, "read")
    assert read_u64(system, counter) == 45  # the store before went through
    assert vcpu.get_reg("pc") > SYM["main"]


def test_nothing_set_runs_to_the_end(vm: tuple[System, Any, Console]) -> None:
    system, vcpu, out = vm
    accel: Any = system.accel
    accel.set_breakpoints([SYM["add"]])
    accel.set_watchpoints([(SYM["counter"], 8, "access")])
    accel.set_breakpoints([])
    accel.set_watchpoints([])
    for _ in range(100_000):
        exit_ = vcpu.run()
        assert not isinstance(exit_, DebugExit)
        handle_exit(system, vcpu, exit_)
        if system.exit_code or b"len=8" in out.read_bytes():
            break
    assert out.read_bytes().startswith(b"gdbtest: total=45 len=8")


def instruction_starts(start: int, count: int) -> list[int]:
    """The first ``count`` instruction addresses from ``start`` (by their length bits)."""
    code = GDBTEST.read_bytes()
    with GDBTEST.open("rb") as f:
        text = ELFFile(f).get_section_by_name(".text")
        offset, base = int(text["sh_offset"]), int(text["sh_addr"])
    out, pc = [], start
    while len(out) < count:
        out.append(pc)
        half = code[offset + pc - base]
        pc += 4 if half & 3 == 3 else 2
    return out


def test_breakpoint_in_the_middle_of_a_block(vm: tuple[System, Any, Console]) -> None:
    """A breakpoint on the third instruction of add(), hit on every call: the block that
    starts at add() ends before it, also once cached."""
    system, vcpu, _ = vm
    accel: Any = system.accel
    add3 = instruction_starts(SYM["add"], 3)[2]
    accel.set_breakpoints([add3, SYM["compute"]])
    assert run_until_debug(system, vcpu) == DebugExit("breakpoint")
    assert vcpu.get_reg("pc") == SYM["compute"]
    accel.set_breakpoints([add3])
    for call in range(3):
        assert run_until_debug(system, vcpu) == DebugExit("breakpoint")
        assert vcpu.get_reg("pc") == add3
        assert vcpu.get_reg("a1") == call  # add(total, i)
        vcpu.set_single_step(True)
        assert run_until_debug(system, vcpu) == DebugExit("step")
        vcpu.set_single_step(False)
