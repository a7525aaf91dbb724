"""``kvmpy -M spike -bios none -kernel TEST.elf``: HTIF at the ELF's symbols sets the exit
status and prints the console characters, as with ``qemu-system-riscv64 -M spike``."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kvmpy.accel.tcg import unavailable_reason

AS = shutil.which("riscv64-unknown-elf-as")
LD = shutil.which("riscv64-unknown-elf-ld")

pytestmark = [
    pytest.mark.skipif(unavailable_reason() is not None,
                       reason=f"tcg core not built: {unavailable_reason()}"),
    pytest.mark.skipif(AS is None or LD is None,
                       reason="riscv64-unknown-elf-as/ld are not installed"),
]

PROGRAM = """
    .text
    .globl _start
_start:
    la s0, message
1:  lbu a0, 0(s0)
    beqz a0, 2f
    li t1, (1 << 56) | (1 << 48)
    or t1, t1, a0
    la t0, tohost
    sd t1, 0(t0)
3:  ld t1, 0(t0)
    bnez t1, 3b
    addi s0, s0, 1
    j 1b
2:  li t1, {status}
    la t0, tohost
    sd t1, 0(t0)
4:  j 4b
message: .asciz "{text}"
    .section .tohost, "aw", @progbits
    .balign 64
    .globl tohost
tohost: .dword 0
    .balign 64
    .globl fromhost
fromhost: .dword 0
"""


def build(tmp_path: Path, status: int, text: str) -> Path:
    src, obj, elf = tmp_path / "t.S", tmp_path / "t.o", tmp_path / "t.elf"
    src.write_text(PROGRAM.format(status=status, text=text))
    assert AS is not None and LD is not None
    subprocess.run([AS, "-march=rv64gc", "-o", str(obj), str(src)], check=True)
    subprocess.run([LD, "-N", "-Ttext=0x80000000", "-o", str(elf), str(obj)], check=True)
    return elf


def run_spike(elf: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "kvmpy", "-M", "spike", "-bios", "none", "-accel", "tcg",
         "-kernel", str(elf), "-nographic"],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False)


def test_pass_exits_0_and_prints(tmp_path: Path) -> None:
    proc = run_spike(build(tmp_path, 1, "hello"))
    assert proc.returncode == 0, proc.stderr
    assert b"hello" in proc.stdout


def test_fail_code_is_the_exit_status(tmp_path: Path) -> None:
    proc = run_spike(build(tmp_path, (42 << 1) | 1, "x"))
    assert proc.returncode == 42, proc.stderr


def test_spike_is_the_default_machine() -> None:
    proc = subprocess.run([sys.executable, "-m", "kvmpy", "-M", "help"],
                          capture_output=True, timeout=60, check=False)
    line = next(x for x in proc.stdout.decode().splitlines() if x.startswith("spike"))
    assert "RISC-V Spike board" in line and "(default)" in line
