"""The interpreter core driven from Python with tiny hand-assembled programs in RAM.

Each test assembles a few instructions with Debian's riscv64-unknown-elf toolchain, runs them
on a :class:`~kvmpy.accel.tcg.TcgAccel` over a real :class:`~kvmpy.memory.GuestRAM` and checks
the exits the VMM sees (MMIO, SBI, halt, kick), their completion, and the core's behaviour
across threads, harts and engines.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmpy import log
from kvmpy.accel.base import IRQ_M_EXT, PRV_M, PRV_S
from kvmpy.accel.exits import HaltExit, IntrExit, MmioExit, SbiExit, VcpuExit
from kvmpy.accel.tcg import ISA_EXTENSIONS, TcgAccel, TcgVcpu, isa_string, unavailable_reason
from kvmpy.memory import GuestRAM

AS = shutil.which("riscv64-unknown-elf-as")
LD = shutil.which("riscv64-unknown-elf-ld")
OBJCOPY = shutil.which("riscv64-unknown-elf-objcopy")
RAM_BASE = 0x80000000
DEV = 0x10000000          # nothing there: every access is an MMIO exit
DONE = DEV + 0x100        # the programs store here when they are finished
U64 = (1 << 64) - 1

pytestmark = [
    pytest.mark.skipif(unavailable_reason() is not None,
                       reason=f"tcg core not built: {unavailable_reason()}"),
    pytest.mark.skipif(AS is None or LD is None or OBJCOPY is None,
                       reason="riscv64-unknown-elf-as/ld/objcopy are not installed"),
]


def assemble(tmp_path: Path, source: str) -> bytes:
    src = tmp_path / "guest.S"
    obj = tmp_path / "guest.o"
    elf = tmp_path / "guest.elf"
    binary = tmp_path / "guest.bin"
    src.write_text(".option norvc\n.text\n" + source + "\n")
    assert AS is not None and LD is not None and OBJCOPY is not None
    subprocess.run([AS, "-march=rv64gc_zba_zbb_zbs", "-o", str(obj), str(src)], check=True)
    subprocess.run([LD, f"-Ttext=0x{RAM_BASE:x}", "-o", str(elf), str(obj)], check=True)
    subprocess.run([OBJCOPY, "-O", "binary", str(elf), str(binary)], check=True)
    return binary.read_bytes()


class Guest:
    """RAM at 0x80000000 holding ``code``, an engine with ``harts`` harts at its start."""

    def __init__(self, code: bytes, harts: int = 1, priv: int = PRV_M) -> None:
        self.ram = GuestRAM(RAM_BASE, 1 << 20)
        self.ram.write(RAM_BASE, code)
        self.accel = TcgAccel()
        self.accel.init_machine(self.ram, harts)
        self.vcpus: list[TcgVcpu] = self.accel.vcpus
        for i, vcpu in enumerate(self.vcpus):
            vcpu.reset(RAM_BASE, priv, i, 0, False)

    @property
    def vcpu(self) -> TcgVcpu:
        return self.vcpus[0]

    def run_until_exit(self, vcpu: TcgVcpu | None = None, limit: int = 1000) -> VcpuExit:
        """run() until something other than the end of a slice comes back."""
        vcpu = vcpu or self.vcpu
        for _ in range(limit):
            exit_ = vcpu.run()
            if not isinstance(exit_, IntrExit):
                return exit_
        raise AssertionError("the guest only ever finished slices")

    def close(self) -> None:
        self.accel.close()
        self.ram.close()


@pytest.fixture
def guests() -> Iterator[list[Guest]]:
    made: list[Guest] = []
    yield made
    for guest in made:
        guest.close()


def make(guests: list[Guest], tmp_path: Path, source: str, **kw: int) -> Guest:
    guest = Guest(assemble(tmp_path, source), **kw)
    guests.append(guest)
    return guest


def test_isa_table_gives_misa_and_riscv_isa() -> None:
    assert ISA_EXTENSIONS[:6] == ("i", "m", "a", "f", "d", "c")
    assert isa_string().startswith("rv64imafdc_zicntr_zicsr_zifencei")
    accel = TcgAccel()
    assert accel.caps.isa_extensions == ISA_EXTENSIONS
    assert accel.caps.machine_mode and not accel.caps.in_kernel_timer_ipi


def test_misa_matches_the_table(tmp_path: Path, guests: list[Guest]) -> None:
    guest = make(guests, tmp_path, "1: j 1b")
    misa = guest.vcpu.get_reg("misa")
    assert misa >> 62 == 2
    letters = {chr(ord("a") + i) for i in range(26) if misa >> i & 1}
    assert letters == {e for e in ISA_EXTENSIONS if len(e) == 1} | {"s", "u"}


def test_mmio_store_and_load_exits_complete(tmp_path: Path, guests: list[Guest]) -> None:
    guest = make(guests, tmp_path, f"""
        li t0, {DEV}
        li t1, 0x1234
        sw t1, 4(t0)
        lh a0, 2(t0)
        lbu a1, 0(t0)
        ld a2, 8(t0)
        sd a0, 0x100(t0)
    1:  j 1b
    """)
    exit_ = guest.run_until_exit()
    assert exit_ == MmioExit(DEV + 4, 4, True, 0x1234)
    exit_ = guest.run_until_exit()
    assert exit_ == MmioExit(DEV + 2, 2, False, 0)
    pc = guest.vcpu.get_reg("pc")
    guest.vcpu.complete_mmio_read(0xFFFF8001)         # only the low 16 bits count
    assert guest.vcpu.get_reg("a0") == 0xFFFFFFFFFFFF8001
    assert guest.vcpu.get_reg("pc") == pc + 4
    assert guest.run_until_exit() == MmioExit(DEV, 1, False, 0)
    guest.vcpu.complete_mmio_read(0x1FF)
    assert guest.vcpu.get_reg("a1") == 0xFF
    assert guest.run_until_exit() == MmioExit(DEV + 8, 8, False, 0)
    guest.vcpu.complete_mmio_read(U64)
    assert guest.vcpu.get_reg("a2") == U64
    assert guest.run_until_exit() == MmioExit(DONE, 8, True, 0xFFFFFFFFFFFF8001)


def test_uncompleted_load_is_executed_again(tmp_path: Path, guests: list[Guest]) -> None:
    guest = make(guests, tmp_path, f"li t0, {DEV}\nlw a0, 0(t0)\n1: j 1b")
    first = guest.run_until_exit()
    assert first == guest.run_until_exit() == MmioExit(DEV, 4, False, 0)


def test_sbi_exit_in_builtin_firmware_mode(tmp_path: Path, guests: list[Guest]) -> None:
    guest = make(guests, tmp_path, f"""
        li a7, 0x54494D45
        li a6, 7
        li a0, 1
        li a1, 2
        li a2, 3
        li a3, 4
        li a4, 5
        li a5, 6
        ecall
        li t0, {DEV}
        sd a1, 0x100(t0)
    1:  j 1b
    """, priv=PRV_S)
    exit_ = guest.run_until_exit()
    assert exit_ == SbiExit(0x54494D45, 7, (1, 2, 3, 4, 5, 6))
    assert guest.vcpu.get_reg("priv") == PRV_S
    guest.vcpu.complete_sbi(-2, 0x77)
    assert guest.vcpu.get_reg("a0") == (-2) & U64
    assert guest.run_until_exit() == MmioExit(DONE, 8, True, 0x77)


def test_wfi_halts_until_the_timer_deadline(tmp_path: Path, guests: list[Guest]) -> None:
    guest = make(guests, tmp_path, f"""
        li t0, 0x80        /* mie.MTIE; mstatus.MIE stays 0: WFI just resumes */
        csrw mie, t0
        wfi
        li t0, {DEV}
        sd t0, 0x100(t0)
    1:  j 1b
    """)
    now = guest.accel.read_mtime()
    guest.vcpu.set_reg("mtimecmp", now + 20_000)        # 2 ms at 10 MHz
    exit_ = guest.run_until_exit()
    assert isinstance(exit_, HaltExit)
    assert exit_.deadline_ns is not None
    assert 0 < exit_.deadline_ns - time.monotonic_ns() <= 2_000_000
    time.sleep(max(0, exit_.deadline_ns - time.monotonic_ns()) / 1e9 + 0.001)
    assert guest.run_until_exit() == MmioExit(DONE, 8, True, DEV)


def test_wfi_without_timer_waits_for_set_irq(tmp_path: Path, guests: list[Guest]) -> None:
    guest = make(guests, tmp_path, f"""
        li t0, 0x800       /* mie.MEIE */
        csrw mie, t0
        wfi
        li t0, {DEV}
        sd t0, 0x100(t0)
    1:  j 1b
    """)
    assert guest.run_until_exit() == HaltExit(None)
    assert guest.vcpu.run() == HaltExit(None)           # still nothing pending
    guest.vcpu.set_irq(IRQ_M_EXT, True)
    assert guest.run_until_exit() == MmioExit(DONE, 8, True, DEV)


def test_kick_from_another_thread_stops_a_long_run(tmp_path: Path, guests: list[Guest]) -> None:
    guest = make(guests, tmp_path, "1: j 1b")
    vcpu = guest.vcpu
    timer = threading.Timer(0.2, vcpu.kick)
    timer.start()
    start = time.monotonic()
    exit_ = vcpu.step(1 << 62)                          # would take years without the kick
    timer.join()
    assert isinstance(exit_, IntrExit)
    assert time.monotonic() - start < 10
    assert 0 < vcpu.instructions < 1 << 62


def test_set_irq_from_another_thread_is_taken(tmp_path: Path, guests: list[Guest]) -> None:
    guest = make(guests, tmp_path, f"""
        la t0, handler
        csrw mtvec, t0
        li t0, 0x800
        csrw mie, t0
        csrsi mstatus, 8   /* MIE */
    1:  j 1b
    handler:
        csrr a0, mcause
        li t0, {DEV}
        sd a0, 0x100(t0)
    2:  j 2b
    """)
    vcpu = guest.vcpu
    timer = threading.Timer(0.1, vcpu.set_irq, (IRQ_M_EXT, True))
    timer.start()
    exit_ = vcpu.step(1 << 62)
    timer.join()
    assert exit_ == MmioExit(DONE, 8, True, (1 << 63) | IRQ_M_EXT)


def test_engines_are_independent(tmp_path: Path, guests: list[Guest]) -> None:
    code = f"""
        li a0, 0
        li a1, {{n}}
    1:  addi a0, a0, 3
        addi a1, a1, -1
        bnez a1, 1b
        li t0, {DEV}
        sd a0, 0x100(t0)
    2:  j 2b
    """
    a = make(guests, tmp_path, code.format(n=1_000_000))
    b = make(guests, tmp_path, code.format(n=2_000_000))
    results: dict[str, VcpuExit] = {}

    def run(name: str, guest: Guest) -> None:
        results[name] = guest.run_until_exit(limit=10_000)

    threads = [threading.Thread(target=run, args=item) for item in (("a", a), ("b", b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results["a"] == MmioExit(DONE, 8, True, 3_000_000)
    assert results["b"] == MmioExit(DONE, 8, True, 6_000_000)


def test_exact_single_steps(tmp_path: Path, guests: list[Guest]) -> None:
    guest = make(guests, tmp_path, "addi a0, a0, 1\n" * 8 + "1: j 1b")
    vcpu = guest.vcpu
    for i in range(1, 6):
        vcpu.step(1)
        assert vcpu.get_reg("a0") == i
        assert vcpu.get_reg("pc") == RAM_BASE + 4 * i


LRSC = f"""
    csrr a0, mhartid
    la s0, word
    bnez a0, other
    lr.w t1, (s0)
    li t0, {DEV}
    sd zero, 0x100(t0)      /* hart 0 pauses here (an exit) */
    li t2, 5
    sc.w a1, t2, (s0)
    sd a1, 0x100(t0)
1:  j 1b
other:
    li t1, 9
    sw t1, 0(s0)
    li t0, {DEV}
    sd t1, 0x100(t0)
2:  j 2b
    .balign 8
word: .word 1
"""


def test_sc_fails_after_a_store_by_another_hart(tmp_path: Path, guests: list[Guest]) -> None:
    guest = make(guests, tmp_path, LRSC, harts=2)
    h0, h1 = guest.vcpus
    assert guest.run_until_exit(h0) == MmioExit(DONE, 8, True, 0)
    assert guest.run_until_exit(h1) == MmioExit(DONE, 8, True, 9)
    assert guest.run_until_exit(h0) == MmioExit(DONE, 8, True, 1)    # SC failed


def test_sc_succeeds_without_interference(tmp_path: Path, guests: list[Guest]) -> None:
    guest = make(guests, tmp_path, LRSC, harts=2)
    h0 = guest.vcpus[0]
    assert guest.run_until_exit(h0) == MmioExit(DONE, 8, True, 0)
    assert guest.run_until_exit(h0) == MmioExit(DONE, 8, True, 0)    # SC succeeded


TIMER_IRQ = f"""
    la t0, handler
    csrw mtvec, t0
    li t0, 0x80
    csrw mie, t0
    csrsi mstatus, 8
    li a0, 0
1:  addi a0, a0, 1
    j 1b
handler:
    li t0, {DEV}
    sd a0, 0x100(t0)
2:  j 2b
"""


def test_icount_makes_timer_interrupts_deterministic(tmp_path: Path,
                                                      guests: list[Guest]) -> None:
    counts = []
    for _ in range(2):
        guest = make(guests, tmp_path, TIMER_IRQ)
        guest.accel.set_icount(2)
        guest.accel.write_mtime(0)
        guest.vcpu.set_reg("mtimecmp", 123_457)
        exit_ = guest.run_until_exit(limit=100_000)
        assert isinstance(exit_, MmioExit)
        counts.append((exit_.value, guest.vcpu.instructions, guest.accel.read_mtime()))
    assert counts[0] == counts[1]
    assert counts[0][2] >= 123_457


def test_register_names(tmp_path: Path, guests: list[Guest]) -> None:
    guest = make(guests, tmp_path, "1: j 1b")
    vcpu = guest.vcpu
    vcpu.set_reg("a0", 5)
    assert vcpu.get_reg("x10") == 5
    vcpu.set_reg("zero", 7)
    assert vcpu.get_reg("x0") == 0
    vcpu.set_reg("fa0", 0x3FF0000000000000)
    assert vcpu.get_reg("f10") == 0x3FF0000000000000
    vcpu.set_reg("mscratch", 0x1234)
    assert vcpu.get_reg("mscratch") == 0x1234
    assert vcpu.get_reg("mhartid") == 0
    assert vcpu.get_reg("priv") == PRV_M
    vcpu.set_reg("mtimecmp", 99)
    assert vcpu.get_reg("mtimecmp") == 99
    with pytest.raises(Exception, match="unknown register 'bogus'"):
        vcpu.get_reg("bogus")


def test_firmware_hart_interface(tmp_path: Path, guests: list[Guest]) -> None:
    guest = make(guests, tmp_path, "1: j 1b", harts=2, priv=PRV_S)
    h1 = guest.vcpus[1]
    h1.hart_stop()
    assert h1.stopped
    assert h1.run() == HaltExit(None)
    h1.hart_start(RAM_BASE + 0x40, 0xABC)
    assert not h1.stopped
    assert (h1.get_reg("pc"), h1.get_reg("a0"), h1.get_reg("a1"), h1.get_reg("priv")) == \
        (RAM_BASE + 0x40, 1, 0xABC, PRV_S)


def test_int_trace_records_traps(tmp_path: Path, guests: list[Guest],
                                 caplog: pytest.LogCaptureFixture) -> None:
    logger = log.logger("int")
    old = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        guest = make(guests, tmp_path, f"""
            la t0, handler
            csrw mtvec, t0
            ecall
        handler:
            li t0, {DEV}
            sd t0, 0x100(t0)
        1:  j 1b
        """)
        with caplog.at_level(logging.DEBUG, logger="kvmpy.int"):
            assert guest.run_until_exit() == MmioExit(DONE, 8, True, DEV)
    finally:
        logger.setLevel(old)
    assert any("cause:000000000000000b" in r.getMessage() and "machine_ecall" in r.getMessage()
               for r in caplog.records)


def test_misaligned_ram_accesses_are_emulated(tmp_path: Path, guests: list[Guest]) -> None:
    """Misaligned loads and stores to RAM complete (even across a page), no trap."""
    guest = make(guests, tmp_path, f"""
        li s0, {RAM_BASE + 0x1FFD}     /* 3 bytes before a page boundary */
        li t1, 0x1122334455667788
        sd t1, 0(s0)
        ld a0, 0(s0)
        lw a1, 1(s0)
        li t0, {DEV}
        sd a0, 0x100(t0)
    1:  j 1b
    """)
    assert guest.run_until_exit() == MmioExit(DONE, 8, True, 0x1122334455667788)
    assert guest.vcpu.get_reg("a1") == 0x44556677
    assert guest.ram.read_int(RAM_BASE + 0x2000, 1) == 0x55


def test_no_device_declared_there_is_an_access_fault(tmp_path: Path,
                                                     guests: list[Guest]) -> None:
    guest = make(guests, tmp_path, f"""
        la t0, handler
        csrw mtvec, t0
        li t1, {DEV + 0x1000}
        ld a0, 8(t1)
    handler:
        csrr a0, mcause
        csrr a1, mtval
        li t0, {DEV}
        sd a0, 0x100(t0)
    1:  j 1b
    """)
    guest.accel.set_mmio_windows([(DEV, 0x1000)])
    assert guest.run_until_exit() == MmioExit(DONE, 8, True, 5)      # load access fault
    assert guest.vcpu.get_reg("a1") == DEV + 0x1008
