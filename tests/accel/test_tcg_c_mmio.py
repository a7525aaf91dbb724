"""Device windows served in C inside the interpreter (tcg_set_c_mmio): a RISC-V guest prints
through the 16550 the way Linux's console does, on the interpreter and on translated code;
only the accesses that need Python come back as exits."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kvmpy.accel.base import PRV_M
from kvmpy.accel.exits import HaltExit, IntrExit, MmioExit
from kvmpy.accel.tcg import TcgAccel, core, unavailable_reason
from kvmpy.chardev.base import Chardev
from kvmpy.hw.char import uart_fast
from kvmpy.hw.char.serial import SerialMM
from kvmpy.memory import GuestRAM, MmioBus

AS = shutil.which("riscv64-unknown-elf-as")
LD = shutil.which("riscv64-unknown-elf-ld")
OBJCOPY = shutil.which("riscv64-unknown-elf-objcopy")
RAM_BASE = 0x80000000
UART = 0x10000000

pytestmark = [
    pytest.mark.skipif(unavailable_reason() is not None,
                       reason=f"tcg core not built: {unavailable_reason()}"),
    pytest.mark.skipif(not uart_fast.available(),
                       reason="the C device models are not built (python kvmpy/hw/_build.py)"),
    pytest.mark.skipif(AS is None or LD is None or OBJCOPY is None,
                       reason="riscv64-unknown-elf-as/ld/objcopy are not installed"),
]

PROGRAM = f"""
        li t0, {UART}
        li s0, 40               # print the message 40 times
0:      la a0, msg
1:      lbu a1, 0(a0)
        beqz a1, 3f
2:      lbu t1, 5(t0)           # LSR: wait for THRE
        andi t1, t1, 0x20
        beqz t1, 2b
        sb a1, 0(t0)            # THR
        addi a0, a0, 1
        j 1b
3:      addi s0, s0, -1
        bnez s0, 0b
        li t1, 2
        sb t1, 1(t0)            # IER.THRI: the next byte raises an interrupt (Python)
        li t1, 0x21
        sb t1, 0(t0)
        sb zero, 1(t0)
        lbu a2, 7(t0)           # SCR (Python)
        lb a3, 5(t0)            # LSR, sign-extended load (C)
        li t1, 0x5a
        sh t1, 0(t0)            # a halfword store reaches THR as QEMU's serial_mm does (C)
4:      wfi
        j 4b
msg:    .asciz "console line\\n"
"""


class Output(Chardev):
    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        self.data += data
        return len(data)


def assemble(tmp_path: Path, source: str) -> bytes:
    assert AS is not None and LD is not None and OBJCOPY is not None
    src, obj, elf, binary = (tmp_path / n for n in ("g.S", "g.o", "g.elf", "g.bin"))
    src.write_text(".option norvc\n.text\n" + source + "\n")
    subprocess.run([AS, "-march=rv64gc", "-o", str(obj), str(src)], check=True)
    subprocess.run([LD, f"-Ttext=0x{RAM_BASE:x}", "-o", str(elf), str(obj)], check=True)
    subprocess.run([OBJCOPY, "-O", "binary", str(elf), str(binary)], check=True)
    return binary.read_bytes()


@pytest.mark.parametrize("jit", [False, True], ids=["interpreter", "translated"])
def test_console_output_completes_in_the_engine(tmp_path: Path, jit: bool) -> None:
    ram = GuestRAM(RAM_BASE, 1 << 20)
    ram.write(RAM_BASE, assemble(tmp_path, PROGRAM))
    out = Output()
    uart = SerialMM(chardev=out)
    bus = MmioBus()
    bus.add(UART, uart.region_size, uart)
    accel = TcgAccel()
    accel.jit = jit
    accel.jit_threshold = 1
    accel.init_machine(ram, 1)
    try:
        vcpu = accel.vcpus[0]
        vcpu.reset(RAM_BASE, PRV_M, 0, 0, False)
        accel.attach_c_mmio(bus)
        seen = []
        for _ in range(1000):
            exit_ = vcpu.run()
            if isinstance(exit_, HaltExit):
                break
            if isinstance(exit_, IntrExit):
                continue
            assert isinstance(exit_, MmioExit), exit_
            if exit_.is_write:
                seen.append(("write", exit_.gpa - UART, exit_.value))
                bus.write(exit_.gpa, exit_.size, exit_.value)
            else:
                value = bus.read(exit_.gpa, exit_.size)
                seen.append(("read", exit_.gpa - UART, value))
                vcpu.complete_mmio_read(value)
        else:
            raise AssertionError(f"the guest did not finish: {seen[-5:]}")
        assert seen == [("write", 1, 2), ("write", 0, 0x21), ("write", 1, 0), ("read", 7, 0)]
        assert bytes(out.data) == b"console line\n" * 40 + b"!Z"
        assert vcpu.get_reg("a3") == 0x60  # LSR: THRE | TEMT
        if jit and core.lib.tcg_jit_available():  # the stores ran as translated code
            assert core.lib.tcg_jit_translated(accel.engine) > 0
    finally:
        accel.close()
        ram.close()
    uart.mmio_write(0, 1, ord("."))  # closing the accelerator detached the C half
    assert bytes(out.data).endswith(b"!Z.")
