"""The translating tier (``-accel tcg,jit=on``) in lock-step with the interpreter.

Two engines run the same program from the same RAM image, one with translation and one
without, with -icount (guest time counts instructions, so timer interrupts come at the same
instruction on both) and a CLINT, in slices of 64 instructions: the smallest slice that
still runs whole blocks, so translated blocks and their chains are what runs, and every block
is translated the first time it runs.  After every slice the exits, pc, retired instruction
count, every integer and FP register and the trap CSRs must be equal, and so must RAM at the
end.  The programs are the ISA programs of tests/guests/ (but the multi-hart ones) and
programs hypothesis generates from random instruction sequences run in a loop, so that their
blocks are translated, chained, and taken at both exits.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmpy.accel.tcg import core
from kvmpy.loader import load_elf
from kvmpy.memory import GuestRAM

GUESTS = Path(__file__).resolve().parents[1] / "guests"
RAM_BASE = 0x80000000
RAM_SIZE = 128 << 20  # -M spike's default
CLINT = (0x2000000, 0x10000)
SLICE = 64
PRV_M = 3
# mstatus, medeleg, mideleg, mie, mtvec, mscratch, mepc, mcause, mtval, stvec, sscratch,
# sepc, scause, stval, satp, fcsr
CSRS = (0x300, 0x302, 0x303, 0x304, 0x305, 0x340, 0x341, 0x342, 0x343, 0x105, 0x140,
        0x141, 0x142, 0x143, 0x180, 0x003)
# Programs for several harts: test_isa runs them with translation on.
SMP = {"smp_atomics", "smp4_atomics", "smp_stress"}
MSIP, MTIMECMP, MTIME = CLINT[0], CLINT[0] + 0x4000, CLINT[0] + 0xbff8
IRQ_M_SOFT = 3

JIT = core.lib is not None and bool(core.lib.tcg_jit_available())
pytestmark = pytest.mark.skipif(not JIT, reason="the translating tier is built on x86-64 "
                                "hosts only (or the core is not built)")


class Machine:
    """One hart over 128 MiB of RAM at 0x80000000, HTIF at tohost/fromhost, a CLINT (msip,
    mtimecmp, mtime), -icount shift=0."""

    def __init__(self, jit: bool, image: bytes | None = None, elf: Path | None = None,
                 threshold: int = 1) -> None:
        self.ram = GuestRAM(RAM_BASE, RAM_SIZE)
        lib = core.lib
        self.engine: Any = lib.tcg_engine_new(core.ffi.cast("uint8_t *", self.ram.host_address),
                                              RAM_BASE, RAM_SIZE, 1)
        assert self.engine != core.ffi.NULL
        assert lib.tcg_set_jit(self.engine, 1 if jit else 0) == (1 if jit else 0)
        lib.tcg_set_jit_threshold(self.engine, threshold)
        self.tohost = self.fromhost = -1
        entry = RAM_BASE
        if elf is not None:
            loaded = load_elf(str(elf), self.ram)
            entry = loaded.entry
            self.tohost = loaded.symbol("tohost") or -1
            self.fromhost = loaded.symbol("fromhost") or -1
            for word in (self.tohost, self.fromhost):
                if word >= 0:
                    assert lib.tcg_add_mmio_hole(self.engine, word, 8) == 0
        elif image is not None:
            self.ram.write(RAM_BASE, image)
        assert lib.tcg_add_mmio_window(self.engine, *CLINT) == 0
        lib.tcg_set_icount(self.engine, 0)
        lib.tcg_write_mtime(self.engine, 0)
        self.mtimecmp = (1 << 64) - 1
        self.msip = 0
        lib.tcg_reset_hart(self.engine, 0, entry, PRV_M, 0, 0, 0)
        self.exit = core.ffi.new("tcg_exit *")
        self.value = core.ffi.new("uint64_t *")
        self.console = bytearray()
        self.status: int | None = None
        self.done_store: int | None = None

    def close(self) -> None:
        core.lib.tcg_engine_free(self.engine)
        self.ram.close()

    def run(self, n: int) -> tuple[int, int, int, int]:
        """Run up to n instructions; the exit as (kind, gpa, is_write, value)."""
        lib = core.lib
        lib.tcg_run(self.engine, 0, n, self.exit)
        x = self.exit
        kind, gpa, write, value = int(x.kind), int(x.gpa), int(x.is_write), int(x.value)
        if kind == core.EXIT_MMIO:
            if write and gpa == self.tohost:
                if value & 1 and value >> 48 == 0:
                    self.status = value >> 1
                elif value >> 48 == 0x101:
                    self.console.append(value & 0xff)
            elif write:
                self.device_write(gpa, int(x.size), value)
            else:
                lib.tcg_complete_mmio_read(self.engine, 0, self.device_read(gpa, int(x.size)))
        return kind, gpa if kind == core.EXIT_MMIO else 0, write, value

    def device_write(self, gpa: int, size: int, value: int) -> None:
        if gpa == MSIP:
            self.msip = value & 1
            core.lib.tcg_set_irq(self.engine, 0, IRQ_M_SOFT, self.msip)
        elif MTIMECMP <= gpa < MTIMECMP + 8:
            shift = 8 * (gpa - MTIMECMP)
            mask = ((1 << (8 * size)) - 1) << shift
            self.mtimecmp = (self.mtimecmp & ~mask) | ((value << shift) & mask)
            core.lib.tcg_set_reg(self.engine, 0, core.REG_MTIMECMP, self.mtimecmp)
        else:
            self.done_store = value

    def device_read(self, gpa: int, size: int) -> int:
        if gpa == MSIP:
            return self.msip
        if MTIME <= gpa < MTIME + 8:
            return int(core.lib.tcg_read_mtime(self.engine)) >> (8 * (gpa - MTIME))
        if MTIMECMP <= gpa < MTIMECMP + 8:
            return self.mtimecmp >> (8 * (gpa - MTIMECMP))
        return 0

    def reg(self, reg: int) -> int:
        assert core.lib.tcg_get_reg(self.engine, 0, reg, self.value) == 0
        return int(self.value[0])

    def state(self) -> dict[str, int]:
        s = {f"x{i}": self.reg(i) for i in range(32)}
        s.update({f"f{i}": self.reg(32 + i) for i in range(32)})
        s.update(pc=self.reg(core.REG_PC), priv=self.reg(core.REG_PRIV),
                 instret=self.reg(core.REG_INSTRET))
        s.update({f"csr{c:#x}": self.reg(core.REG_CSR + c) for c in CSRS})
        return s


def lockstep(a: Machine, b: Machine, max_slices: int, stop: Any) -> int:
    """Run both until stop(machine) or max_slices; assert equal states; the slices run."""
    for n in range(max_slices):
        ea, eb = a.run(SLICE), b.run(SLICE)
        sa, sb = a.state(), b.state()
        if ea != eb or sa != sb:
            diff = {k: (hex(sa[k]), hex(sb[k])) for k in sa if sa[k] != sb[k]}
            raise AssertionError(f"slice {n}: jit {ea} / interpreter {eb}; differences "
                                 f"(jit, interpreter): {diff}")
        if stop(a):
            break
    else:
        raise AssertionError(f"no end after {max_slices} slices")
    for addr in range(RAM_BASE, RAM_BASE + RAM_SIZE, 1 << 20):
        assert a.ram.read(addr, 1 << 20) == b.ram.read(addr, 1 << 20), f"RAM differs at {addr:#x}"
    return n + 1


PROGRAMS = sorted(p for p in GUESTS.glob("*.elf") if p.stem not in SMP)


@pytest.mark.parametrize("elf", PROGRAMS, ids=[p.stem for p in PROGRAMS])
def test_isa_program_in_lockstep(elf: Path) -> None:
    a, b = Machine(True, elf=elf), Machine(False, elf=elf)
    try:
        lockstep(a, b, 200_000, lambda m: m.status is not None)
        assert a.status == 0, f"{elf.stem}: status {a.status}: {a.console.decode()}"
        assert a.console == b.console
    finally:
        a.close()
        b.close()


# ---------------------------------------------------------------- generated programs -----

def r_type(f7: int, rs2: int, rs1: int, f3: int, rd: int, opc: int) -> int:
    return f7 << 25 | rs2 << 20 | rs1 << 15 | f3 << 12 | rd << 7 | opc


def i_type(imm: int, rs1: int, f3: int, rd: int, opc: int) -> int:
    return (imm & 0xfff) << 20 | rs1 << 15 | f3 << 12 | rd << 7 | opc


def s_type(imm: int, rs2: int, rs1: int, f3: int) -> int:
    imm &= 0xfff
    return (imm >> 5) << 25 | rs2 << 20 | rs1 << 15 | f3 << 12 | (imm & 31) << 7 | 0x23


def b_type(imm: int, rs2: int, rs1: int, f3: int) -> int:
    imm &= 0x1fff
    return ((imm >> 12) & 1) << 31 | ((imm >> 5) & 0x3f) << 25 | rs2 << 20 | rs1 << 15 | \
        f3 << 12 | ((imm >> 1) & 0xf) << 8 | ((imm >> 11) & 1) << 7 | 0x63


# Registers the generated code may write: not x0, x28 (the data pointer), x29 (the loop
# counter), x30/x31 (the epilogue).
DEST = [r for r in range(1, 28)]
ANY = list(range(0, 28))
R_OPS = [  # (funct7, funct3, opcode): RV64I/M, W forms, Zba/Zbb/Zbs register forms
    (0, 0, 0x33), (0x20, 0, 0x33), (0, 1, 0x33), (0, 2, 0x33), (0, 3, 0x33), (0, 4, 0x33),
    (0, 5, 0x33), (0x20, 5, 0x33), (0, 6, 0x33), (0, 7, 0x33),
    (1, 0, 0x33), (1, 1, 0x33), (1, 2, 0x33), (1, 3, 0x33), (1, 4, 0x33), (1, 5, 0x33),
    (1, 6, 0x33), (1, 7, 0x33),
    (0, 0, 0x3b), (0x20, 0, 0x3b), (0, 1, 0x3b), (0, 5, 0x3b), (0x20, 5, 0x3b),
    (1, 0, 0x3b), (1, 4, 0x3b), (1, 5, 0x3b), (1, 6, 0x3b), (1, 7, 0x3b),
    (0x10, 2, 0x33), (0x10, 4, 0x33), (0x10, 6, 0x33), (0x04, 0, 0x3b), (0x10, 2, 0x3b),
    (0x20, 7, 0x33), (0x20, 6, 0x33), (0x20, 4, 0x33), (0x05, 6, 0x33), (0x05, 7, 0x33),
    (0x05, 4, 0x33), (0x05, 5, 0x33), (0x30, 1, 0x33), (0x30, 5, 0x33), (0x30, 1, 0x3b),
    (0x30, 5, 0x3b), (0x24, 1, 0x33), (0x24, 5, 0x33), (0x34, 1, 0x33), (0x14, 1, 0x33),
]
I_OPS = [(0, 0x13), (2, 0x13), (3, 0x13), (4, 0x13), (6, 0x13), (7, 0x13), (0, 0x1b)]
SHIFTS = [(0x00, 1, 0x13), (0x00, 5, 0x13), (0x10, 5, 0x13), (0x00, 1, 0x1b), (0x00, 5, 0x1b),
          (0x10, 5, 0x1b), (0x18, 5, 0x13), (0x0a, 1, 0x13), (0x12, 1, 0x13), (0x1a, 1, 0x13),
          (0x12, 5, 0x13), (0x02, 1, 0x1b), (0x18, 5, 0x1b)]
UNARY = [0x60100013 | 1 << 12, 0x60000013 | 1 << 12, 0x60200013 | 1 << 12,
         0x60400013 | 1 << 12, 0x60500013 | 1 << 12, 0x28705013, 0x6b805013,
         0x6000001b | 1 << 12, 0x6010001b | 1 << 12, 0x6020001b | 1 << 12]
FP_R = [0x01, 0x05, 0x09, 0x0d, 0x00, 0x04, 0x08, 0x0c]  # fadd/fsub/fmul/fdiv .d and .s


def instruction(rng: random.Random, pos: int, length: int) -> int:
    """One random instruction at index pos of a sequence of `length`."""
    kind = rng.randrange(12)
    rd, rs1, rs2 = rng.choice(DEST), rng.choice(ANY), rng.choice(ANY)
    if kind <= 2:
        f7, f3, opc = rng.choice(R_OPS)
        return r_type(f7, rs2, rs1, f3, rd, opc)
    if kind == 3:
        f3, opc = rng.choice(I_OPS)
        return i_type(rng.randrange(-2048, 2048), rs1, f3, rd, opc)
    if kind == 4:
        f6, f3, opc = rng.choice(SHIFTS)
        sh = rng.randrange(32 if opc == 0x1b else 64)
        return (f6 << 26) | (sh << 20) | rs1 << 15 | f3 << 12 | rd << 7 | opc
    if kind == 5:
        return (rng.choice(UNARY) & ~(31 << 15 | 31 << 7)) | rs1 << 15 | rd << 7
    if kind == 6:  # load from the data area (x28), sometimes misaligned
        f3 = rng.choice([0, 1, 2, 3, 4, 5, 6])
        return i_type(rng.randrange(0, 2040), 28, f3, rd, 0x03)
    if kind == 7:
        return s_type(rng.randrange(0, 2040), rs2, 28, rng.randrange(4))
    if kind == 8:  # forward branch within the sequence
        skip = rng.randrange(1, 4)
        if pos + skip >= length:
            skip = length - pos
        return b_type(4 * skip, rs2, rs1, rng.choice([0, 1, 4, 5, 6, 7]))
    if kind == 9:  # lui / auipc
        return rng.randrange(1 << 20) << 12 | rd << 7 | rng.choice([0x37, 0x17])
    if kind == 10:  # FP: fmv.d.x / arithmetic / fld / fsd / compare
        fd, f1, f2 = rng.randrange(32), rng.randrange(32), rng.randrange(32)
        sub = rng.randrange(5)
        if sub == 0:
            return r_type(0x79, 0, rs1, 0, fd, 0x53)  # fmv.d.x
        if sub == 1:
            return r_type(rng.choice(FP_R), f2, f1, rng.choice([0, 7, 1]), fd, 0x53)
        if sub == 2:
            return i_type(rng.randrange(0, 2040) & ~7, 28, rng.choice([2, 3]), fd, 0x07)
        if sub == 3:
            return (s_type(rng.randrange(0, 2040) & ~7, f2, 28, rng.choice([2, 3])) & ~0x7f) | 0x27
        return r_type(0x51, f2, f1, rng.choice([0, 1, 2]), rd, 0x53)  # fle/flt/feq.d
    # fused multiply-add .d / .s
    fd, f1, f2, f3r = (rng.randrange(32) for _ in range(4))
    return f3r << 27 | rng.randrange(2) << 25 | f2 << 20 | f1 << 15 | \
        rng.choice([0, 7]) << 12 | fd << 7 | rng.choice([0x43, 0x47, 0x4b, 0x4f])


def li(rd: int, value: int) -> list[int]:
    """lui/addi/slli sequence for a 64-bit value."""
    value &= (1 << 64) - 1
    out = [0x13 | rd << 7]  # li rd, 0
    for shift in range(60, -4, -4):
        out.append(i_type(4, rd, 1, rd, 0x13))  # slli rd, rd, 4
        out.append(i_type((value >> shift) & 0xf, rd, 6, rd, 0x13))  # ori
    return out


def program(seed: int, length: int, loops: int) -> bytes:
    rng = random.Random(seed)
    words: list[int] = []
    words += li(28, RAM_BASE + 0x10000)       # data area
    for r in range(1, 28):
        words += li(r, rng.getrandbits(64))
    words += li(30, 3 << 13)                   # mstatus.FS = dirty
    words.append(0x30002073 | 30 << 15)        # csrs mstatus, x30
    words.append(i_type(loops, 0, 0, 29, 0x13))  # li x29, loops
    loop = len(words)
    words += [instruction(rng, i, length) for i in range(length)]
    words.append(i_type(-1, 29, 0, 29, 0x13))  # addi x29, x29, -1
    back = (loop - len(words)) * 4
    words.append(b_type(back, 0, 29, 1))       # bnez x29, loop
    words += li(31, CLINT[0] + 8)              # done: a store to a device
    words.append(s_type(0, 29, 31, 3))
    words.append(0x6f)                         # j .
    data = b"".join(w.to_bytes(4, "little") for w in words)
    filler = bytes(rng.getrandbits(8) for _ in range(4096))
    return data + bytes(0x10000 - len(data)) + filler


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), length=st.integers(1, 80), loops=st.integers(1, 12),
       threshold=st.sampled_from([1, 2, 4]))
def test_generated_programs_in_lockstep(seed: int, length: int, loops: int,
                                        threshold: int) -> None:
    image = program(seed, length, loops)
    a, b = Machine(True, image=image, threshold=threshold), Machine(False, image=image)
    try:
        lockstep(a, b, 5000, lambda m: m.done_store is not None)
    finally:
        a.close()
        b.close()


def test_generated_program_runs_translated_code() -> None:
    """The lock-step tests compare something: the same loop under both engines retires the
    same instructions, and translation changed which code ran (blocks were translated)."""
    image = program(1, 40, 50)
    a = Machine(True, image=image, threshold=4)
    try:
        for _ in range(5000):
            a.run(SLICE)
            if a.done_store is not None:
                break
        assert a.done_store == 0
        assert core.lib.tcg_jit_translated(a.engine) > 0
    finally:
        a.close()


@pytest.mark.parametrize("accel", ["tcg,jit=off", "tcg,jit=on,jit-threshold=1"])
def test_command_line_turns_translation_off_and_on(accel: str) -> None:
    """``-accel tcg,jit=off`` interprets, ``jit-threshold=1`` translates every block at
    once; an ISA program passes either way."""
    elf = GUESTS / "rv64i_control.elf"
    proc = subprocess.run([sys.executable, "-m", "kvmpy", "-accel", accel, "-M", "spike",
                           "-bios", "none", "-kernel", str(elf), "-nographic"],
                          capture_output=True, timeout=120, stdin=subprocess.DEVNULL,
                          check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().replace("\r\n", "\n").endswith("PASS\n")
