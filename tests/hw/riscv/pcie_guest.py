"""A tiny guest that does configuration and BAR writes, run on kvmpy and on QEMU alike.

:func:`program` assembles a list of stores (``Write``, or ``Fill`` of a range with one
value) into RV64 code run with ``-bios none`` at RAM base; it ends by writing 1 to
:data:`DONE` and spinning.  :func:`run_kvmpy` and :func:`run_qemu` start the same command line
with that payload, wait for :data:`DONE`, send HMP commands, and return the words of each
``xp`` dump asked for, so the two VMMs can be compared word for word.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DONE = 0x8010_0000
"""RAM the program sets to 1 when its last store is done."""
ECAM = 0x3000_0000
T0, T1, T2 = 5, 6, 7


@dataclass(frozen=True)
class Write:
    gpa: int
    size: int
    value: int


@dataclass(frozen=True)
class Fill:
    """32-bit stores of ``value`` from ``gpa`` up to ``end`` (exclusive)."""

    gpa: int
    end: int
    value: int


def cfg(bus: int, devfn: int, offset: int = 0) -> int:
    """The ECAM address of a configuration register."""
    return ECAM + (bus << 20 | devfn << 12 | offset)


def _lui(rd: int, imm20: int) -> int:
    return (imm20 & 0xFFFFF) << 12 | rd << 7 | 0x37


def _imm(rd: int, rs1: int, funct3: int, imm: int) -> int:
    return (imm & 0xFFF) << 20 | rs1 << 15 | funct3 << 12 | rd << 7 | 0x13


def _store(width: int, rs2: int, rs1: int) -> int:
    return rs2 << 20 | rs1 << 15 | {1: 0, 2: 1, 4: 2}[width] << 12 | 0x23


def _bne_back(rs1: int, rs2: int, distance: int) -> int:
    offset = -distance & 0x1FFF
    return ((offset >> 12 & 1) << 31 | (offset >> 5 & 0x3F) << 25 | rs2 << 20 | rs1 << 15 |
            1 << 12 | (offset >> 1 & 0xF) << 8 | (offset >> 11 & 1) << 7 | 0x63)


def _li(rd: int, value: int) -> list[int]:
    """rd = ``value``, a 32-bit pattern, zero-extended."""
    value &= 0xFFFFFFFF
    low = value & 0xFFF
    low -= 0x1000 if low >= 0x800 else 0
    code = [_lui(rd, (value - low) >> 12), _imm(rd, rd, 0, low)]
    if value >> 31:  # lui sign-extends: clear the upper half again
        code += [_imm(rd, rd, 1, 32), _imm(rd, rd, 5, 32)]
    return code


def program(steps: Sequence[Write | Fill]) -> bytes:
    code: list[int] = []
    for step in steps:
        if isinstance(step, Write):
            code += _li(T0, step.gpa) + _li(T1, step.value) + [_store(step.size, T1, T0)]
        else:
            code += _li(T0, step.gpa) + _li(T1, step.value) + _li(T2, step.end)
            code += [_store(4, T1, T0), _imm(T0, T0, 0, 4), _bne_back(T0, T2, 8)]
    code += [*_li(T0, DONE), _imm(T1, 0, 0, 1), _store(4, T1, T0), 0x0000006F]  # j .
    return b"".join(word.to_bytes(4, "little") for word in code)


def parse_xp(text: str) -> list[int]:
    words: list[int] = []
    for line in text.replace("\r", "").splitlines():
        match = re.match(r"^[0-9a-f]{16}:((?:\s+0x[0-9a-f]{8})+)\s*$", line.strip())
        if match:
            words += [int(word, 16) for word in match.group(1).split()]
    return words


Dump = tuple[int, int]
"""(guest-physical address, number of 32-bit words) for ``xp``."""
BASE_ARGS = ["-M", "virt", "-bios", "none", "-nodefaults", "-display", "none"]


def _after_guest(hmp: object, dumps: Sequence[Dump], commands: Sequence[str]) -> list[list[int]]:
    assert callable(hmp)
    deadline = time.monotonic() + 30
    while parse_xp(hmp(f"xp /1xw 0x{DONE:x}")) != [1]:
        if time.monotonic() > deadline:
            raise TimeoutError("the configuration program did not finish")
        time.sleep(0.02)
    for command in commands:
        hmp(command)
    return [parse_xp(hmp(f"xp /{count}xw 0x{addr:x}")) for addr, count in dumps]


def run_kvmpy(args: Sequence[str], steps: Sequence[Write | Fill], dumps: Sequence[Dump],
              tmp: Path, commands: Sequence[str] = ()) -> list[list[int]]:
    import kvmpy

    payload = tmp / "kvmpy-program.bin"
    payload.write_bytes(program(steps))
    with kvmpy.VM([*BASE_ARGS, "-accel", "tcg", "-kernel", str(payload), *args]) as vm:
        return _after_guest(vm.hmp, dumps, commands)


def run_qemu(binary: str, args: Sequence[str], steps: Sequence[Write | Fill] | None,
             dumps: Sequence[Dump], tmp: Path, commands: Sequence[str] = ()
             ) -> list[list[int]]:
    """As :func:`run_kvmpy`; with ``steps`` None, QEMU stays stopped (``-S``) as reset left
    it and dumps at once."""
    from qemu.qmp.legacy import QEMUMonitorProtocol

    from ...lifecycle.helpers import wait_for_socket

    if steps is None:
        extra = ["-S"]
    else:
        payload = tmp / "qemu-program.bin"
        payload.write_bytes(program(steps))
        extra = ["-kernel", str(payload)]
    sock = str(tmp / "qemu.sock")
    proc = subprocess.Popen([binary, *BASE_ARGS, *extra, *args,
                             "-qmp", f"unix:{sock},server=on,wait=off"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for_socket(sock, proc)
        qmp = QEMUMonitorProtocol(sock)
        qmp.connect()
        try:
            def hmp(line: str) -> str:
                reply = qmp.cmd_obj({"execute": "human-monitor-command",
                                     "arguments": {"command-line": line}})
                return str(reply["return"])

            if steps is None:
                return [parse_xp(hmp(f"xp /{count}xw 0x{addr:x}")) for addr, count in dumps]
            return _after_guest(hmp, dumps, commands)
        finally:
            with contextlib.suppress(Exception):
                qmp.cmd_obj({"execute": "quit"})
                qmp.close()
    finally:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
