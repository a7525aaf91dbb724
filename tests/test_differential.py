"""Differential tests: generated straight-line code on kvmpy and on QEMU, same final state.

A block is: load x1-x31, f0-f31, fcsr and a 64-byte scratch area with chosen values, run a
straight-line sequence of RV64IM / A (AMOs) / Zba / Zbb / Zbs / F / D instructions, loads and
stores (misaligned ones included) on the scratch area, store every register, fcsr and the
scratch area and print them in hex over the HTIF console.  The assembler picks compressed
encodings where they exist, so C forms run too.  Blocks are assembled into a bare-metal ELF for
``-M spike -bios none``, run on ``qemu-system-riscv64`` (the oracle) and on kvmpy, and the
dumps compared.  hypothesis generates (and shrinks) short sequences; a seeded batch runs
many longer blocks in one program.  Both are deterministic, so CI is reproducible.

Left out on purpose: ``ctzw`` (QEMU 7.2 counts into the upper word; tests/guests/spec_strict.S
covers it) and writes to ``frm`` (an invalid frm makes dynamic-rounding ops illegal).
"""

from __future__ import annotations

import functools
import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

GUESTS = Path(__file__).parent / "guests"
CC = shutil.which("riscv64-unknown-elf-gcc")
QEMU = shutil.which("qemu-system-riscv64")
KVMPY = [sys.executable, "-m", "kvmpy"]
TIMEOUT_S = 120.0
MAX_EXAMPLES = int(os.environ.get("KVMPY_DIFF_EXAMPLES", "25"))
BATCH_BLOCKS = int(os.environ.get("KVMPY_DIFF_BLOCKS", "40"))
BATCH_SEED = 20260101
# Shrinking a failure costs hundreds of runs: on request only (KVMPY_DIFF_SHRINK=1).
PHASES = [Phase.explicit, Phase.generate]
if os.environ.get("KVMPY_DIFF_SHRINK") == "1":
    PHASES.append(Phase.shrink)

# ---- instruction table ---------------------------------------------------------------

# kind -> operand layout.  X = integer register, F = FP register, I = 12-bit signed immediate,
# S6/S5 = shift amounts, U = 20-bit upper immediate, M = static rounding mode.
INT_R = "add sub sll slt sltu xor srl sra or and addw subw sllw srlw sraw " \
        "mul mulh mulhsu mulhu div divu rem remu mulw divw divuw remw remuw " \
        "sh1add sh2add sh3add add.uw sh1add.uw sh2add.uw sh3add.uw " \
        "andn orn xnor max maxu min minu rol rolw ror rorw " \
        "bclr bext binv bset"
INT_I = "addi slti sltiu xori ori andi addiw"
INT_SH6 = "slli srli srai rori slli.uw bclri bexti binvi bseti"
INT_SH5 = "slliw srliw sraiw roriw"
INT_UNARY = "clz clzw ctz cpop cpopw sext.b sext.h zext.h orc.b rev8"
FP_3RM = "fadd.s fsub.s fmul.s fdiv.s fadd.d fsub.d fmul.d fdiv.d"
FP_3 = "fsgnj.s fsgnjn.s fsgnjx.s fmin.s fmax.s fsgnj.d fsgnjn.d fsgnjx.d fmin.d fmax.d"
FP_2RM = "fsqrt.s fsqrt.d fcvt.s.d"
FP_2 = "fcvt.d.s"
FP_4RM = "fmadd.s fmsub.s fnmadd.s fnmsub.s fmadd.d fmsub.d fnmadd.d fnmsub.d"
FP_CMP = "feq.s flt.s fle.s feq.d flt.d fle.d"
FP_TO_X = "fclass.s fclass.d fmv.x.w fmv.x.d"
FP_TO_X_RM = "fcvt.w.s fcvt.wu.s fcvt.l.s fcvt.lu.s fcvt.w.d fcvt.wu.d fcvt.l.d fcvt.lu.d"
X_TO_FP = "fmv.w.x fmv.d.x fcvt.d.w fcvt.d.wu"
X_TO_FP_RM = "fcvt.s.w fcvt.s.wu fcvt.s.l fcvt.s.lu fcvt.d.l fcvt.d.lu"
# Memory: a base register is pointed at the block's 64-byte scratch area first.  Offsets may
# be misaligned for plain loads/stores (both must perform them); AMOs stay aligned.
LOADS = "lb lbu lh lhu lw lwu ld"
STORES = "sb sh sw sd"
FP_LOADS = "flw fld"
FP_STORES = "fsw fsd"
AMOS = "amoswap.w amoadd.w amoand.w amoor.w amoxor.w amomin.w amomax.w amominu.w amomaxu.w " \
       "amoswap.d amoadd.d amoand.d amoor.d amoxor.d amomin.d amomax.d amominu.d amomaxu.d"

OPS: list[tuple[str, str]] = [
    *((n, "r") for n in INT_R.split()),
    *((n, "i") for n in INT_I.split()),
    *((n, "sh6") for n in INT_SH6.split()),
    *((n, "sh5") for n in INT_SH5.split()),
    *((n, "r1") for n in INT_UNARY.split()),
    ("lui", "u"),
    ("csrrw_fflags", "csr"),
    ("csrr_fcsr", "csrr"),
    *((n, "f3rm") for n in FP_3RM.split()),
    *((n, "f3") for n in FP_3.split()),
    *((n, "f2rm") for n in FP_2RM.split()),
    *((n, "f2") for n in FP_2.split()),
    *((n, "f4rm") for n in FP_4RM.split()),
    *((n, "fcmp") for n in FP_CMP.split()),
    *((n, "f2x") for n in FP_TO_X.split()),
    *((n, "f2xrm") for n in FP_TO_X_RM.split()),
    *((n, "x2f") for n in X_TO_FP.split()),
    *((n, "x2frm") for n in X_TO_FP_RM.split()),
    *((n, "load") for n in LOADS.split()),
    *((n, "store") for n in STORES.split()),
    *((n, "fload") for n in FP_LOADS.split()),
    *((n, "fstore") for n in FP_STORES.split()),
    *((n, "amo") for n in AMOS.split()),
]
ROUNDING = ["rne", "rtz", "rdn", "rup", "rmm", "dyn"]


@dataclass(frozen=True)
class Insn:
    """One generated instruction: an index into OPS and raw operand choices."""

    op: int
    rd: int
    rs1: int
    rs2: int
    rs3: int
    imm: int   # 0 .. 2^20 - 1, reduced per kind
    rm: int    # index into ROUNDING

    def text(self) -> str:
        def x(r: int) -> str:
            return f"x{r}"

        def f(r: int) -> str:
            return f"f{r}"

        name, kind = OPS[self.op % len(OPS)]
        rm = ROUNDING[self.rm % len(ROUNDING)]
        base = 1 + self.rs3 % 31                       # never x0
        offset = self.imm % 57                         # an 8-byte access stays inside
        point = f"la x{base}, diff_scratch\n"
        imm12 = (self.imm & 0xFFF) - 4096 if self.imm & 0x800 else self.imm & 0xFFF
        match kind:
            case "r":
                return f"{name} {x(self.rd)}, {x(self.rs1)}, {x(self.rs2)}"
            case "i":
                return f"{name} {x(self.rd)}, {x(self.rs1)}, {imm12}"
            case "sh6":
                return f"{name} {x(self.rd)}, {x(self.rs1)}, {self.imm & 63}"
            case "sh5":
                return f"{name} {x(self.rd)}, {x(self.rs1)}, {self.imm & 31}"
            case "r1":
                return f"{name} {x(self.rd)}, {x(self.rs1)}"
            case "u":
                return f"lui {x(self.rd)}, {self.imm & 0xFFFFF}"
            case "csr":
                return f"csrrw {x(self.rd)}, fflags, {x(self.rs1)}"
            case "csrr":
                return f"csrr {x(self.rd)}, fcsr"
            case "f3rm":
                return f"{name} {f(self.rd)}, {f(self.rs1)}, {f(self.rs2)}, {rm}"
            case "f3":
                return f"{name} {f(self.rd)}, {f(self.rs1)}, {f(self.rs2)}"
            case "f2rm":
                return f"{name} {f(self.rd)}, {f(self.rs1)}, {rm}"
            case "f2":
                return f"{name} {f(self.rd)}, {f(self.rs1)}"
            case "f4rm":
                return f"{name} {f(self.rd)}, {f(self.rs1)}, {f(self.rs2)}, {f(self.rs3)}, {rm}"
            case "fcmp":
                return f"{name} {x(self.rd)}, {f(self.rs1)}, {f(self.rs2)}"
            case "f2x":
                return f"{name} {x(self.rd)}, {f(self.rs1)}"
            case "f2xrm":
                return f"{name} {x(self.rd)}, {f(self.rs1)}, {rm}"
            case "x2f":
                return f"{name} {f(self.rd)}, {x(self.rs1)}"
            case "x2frm":
                return f"{name} {f(self.rd)}, {x(self.rs1)}, {rm}"
            case "load":
                return f"{point}{name} {x(self.rd)}, {offset}({x(base)})"
            case "store":
                return f"{point}{name} {x(self.rs2)}, {offset}({x(base)})"
            case "fload":
                return f"{point}{name} {f(self.rd)}, {offset}({x(base)})"
            case "fstore":
                return f"{point}{name} {f(self.rs2)}, {offset}({x(base)})"
            case "amo":
                aligned = offset & ~(7 if name.endswith(".d") else 3)
                return (f"la x{base}, diff_scratch + {aligned}\n"
                        f"{name} {x(self.rd)}, {x(self.rs2)}, ({x(base)})")
        raise AssertionError(kind)


@dataclass(frozen=True)
class Block:
    xregs: tuple[int, ...]   # x1..x31
    fregs: tuple[int, ...]   # f0..f31, raw 64-bit patterns
    fcsr: int                # frm in 0..4, any flags
    code: tuple[Insn, ...]
    memory: tuple[int, ...] = (0,) * 8   # the 64-byte scratch area, as 8 dwords

    def listing(self) -> str:
        return "\n".join(i.text() for i in self.code)


# ---- values -----------------------------------------------------------------------------

INT_SPECIAL = [0, 1, 2, 0xFFFFFFFFFFFFFFFF, 0x8000000000000000, 0x7FFFFFFFFFFFFFFF,
               0x80000000, 0x7FFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF80000000, 0x100000000, 63, 64, 31]
BOX = 0xFFFFFFFF00000000
SINGLE_SPECIAL = [0x00000000, 0x80000000, 0x3F800000, 0xBF800000, 0x7F800000, 0xFF800000,
                  0x7FC00000, 0x7F800001, 0xFFC00001, 0x00000001, 0x007FFFFF, 0x00800000,
                  0x7F7FFFFF, 0x4F000000, 0xCF000000, 0x5F000000, 0x3F000000, 0x4B800000]
DOUBLE_SPECIAL = [0x0, 0x8000000000000000, 0x3FF0000000000000, 0xBFF0000000000000,
                  0x7FF0000000000000, 0xFFF0000000000000, 0x7FF8000000000000,
                  0x7FF0000000000001, 0x0000000000000001, 0x000FFFFFFFFFFFFF,
                  0x0010000000000000, 0x7FEFFFFFFFFFFFFF, 0x43E0000000000000,
                  0xC3E0000000000000, 0x41E0000000000000, 0xC1E0000000000000,
                  0x3FE0000000000000, 0x4330000000000000, 0x47EFFFFFE0000000]


def random_int(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.3:
        return rng.choice(INT_SPECIAL)
    if r < 0.45:
        return rng.randrange(-64, 64) & (2**64 - 1)
    return rng.getrandbits(64)


def random_fp(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.3:
        return BOX | rng.choice(SINGLE_SPECIAL)
    if r < 0.5:
        return rng.choice(DOUBLE_SPECIAL)
    if r < 0.65:   # a random but "ordinary" single, boxed
        return BOX | (rng.randrange(0x30000000, 0x50000000) | (rng.getrandbits(1) << 31))
    if r < 0.8:    # an ordinary double
        return (rng.randrange(0x3C0, 0x440) << 52) | rng.getrandbits(52) | \
            (rng.getrandbits(1) << 63)
    if r < 0.85:   # an improperly boxed single
        return rng.getrandbits(32)
    return rng.getrandbits(64)


def random_insn(rng: random.Random) -> Insn:
    return Insn(rng.randrange(len(OPS)), rng.randrange(32), rng.randrange(32),
                rng.randrange(32), rng.randrange(32), rng.getrandbits(20), rng.randrange(6))


def random_block(rng: random.Random, length: int) -> Block:
    return Block(tuple(random_int(rng) for _ in range(31)),
                 tuple(random_fp(rng) for _ in range(32)),
                 (rng.randrange(5) << 5) | rng.getrandbits(5),
                 tuple(random_insn(rng) for _ in range(length)),
                 tuple(random_int(rng) for _ in range(8)))


# ---- harness ----------------------------------------------------------------------------

PRELUDE = """\
#include "test.h"
\t.section .text.init
\t.globl _start
_start:
\tla t0, diff_trap
\tcsrw mtvec, t0
\tli t0, (1 << 13)
\tcsrs mstatus, t0
\tla sp, stack_top
\tj blocks

\t.text
\t.balign 4
diff_trap:                      /* no block should trap: report it and stop */
\tla sp, stack_top
\tla a0, trap_msg
\tcall puts
\tcsrr a0, mcause
\tcall puthex
\tli a0, ' '
\tcall putchar
\tcsrr a0, mepc
\tcall puthex
\tli a0, '\\n'
\tcall putchar
\tli gp, 2
\tj fail

/* Print the 72 dwords at save_area + 8 (x1..x31, f0..f31, fcsr, scratch) one per line. */
dump:
\taddi sp, sp, -32
\tsd ra, 0(sp)
\tsd s0, 8(sp)
\tsd s1, 16(sp)
\tla s0, save_area + 8
\tli s1, 72
1:\tld a0, 0(s0)
\tcall puthex
\tli a0, '\\n'
\tcall putchar
\taddi s0, s0, 8
\taddi s1, s1, -1
\tbnez s1, 1b
\tli a0, '-'
\tcall putchar
\tli a0, '\\n'
\tcall putchar
\tld ra, 0(sp)
\tld s0, 8(sp)
\tld s1, 16(sp)
\taddi sp, sp, 32
\tret

blocks:
"""


def block_asm(index: int, block: Block) -> tuple[str, str]:
    """(code, data) assembly of one block."""
    label = f"init_{index}"
    code = [f"\t/* block {index} */", f"\tla x31, {label}", "\tla x30, diff_scratch"]
    for i in range(8):
        code += [f"\tld x29, {520 + 8 * i}(x31)", f"\tsd x29, {8 * i}(x30)"]
    code += [f"\tfld f{i}, {256 + 8 * i}(x31)" for i in range(32)]
    code += ["\tld x30, 512(x31)", "\tfscsr x30"]
    code += [f"\tld x{i}, {8 * i}(x31)" for i in range(1, 32)]
    code += ["\t" + insn.text() for insn in block.code]
    code += ["\tcsrw mscratch, x31", "\tla x31, save_area"]
    code += [f"\tsd x{i}, {8 * i}(x31)" for i in range(1, 31)]
    code += ["\tcsrr x30, mscratch", "\tsd x30, 248(x31)"]
    code += [f"\tfsd f{i}, {256 + 8 * i}(x31)" for i in range(32)]
    code += ["\tfrcsr x30", "\tsd x30, 512(x31)", "\tla x30, diff_scratch"]
    for i in range(8):
        code += [f"\tld x29, {8 * i}(x30)", f"\tsd x29, {520 + 8 * i}(x31)"]
    code += ["\tla sp, stack_top", "\tcall dump"]
    values = [0, *block.xregs, *block.fregs, block.fcsr, *block.memory]
    data = [f"{label}:"] + [f"\t.dword 0x{v:016x}" for v in values]
    return "\n".join(code), "\n".join(data)


def program(blocks: list[Block]) -> str:
    parts = [block_asm(i, b) for i, b in enumerate(blocks)]
    return (PRELUDE + "\n".join(c for c, _ in parts) + "\n\tj pass\n\n"
            + "\t.section .rodata\ntrap_msg: .asciz \"TRAP mcause/mepc \"\n"
            + "\t.data\n\t.balign 8\nsave_area: .space 8 * 73\ndiff_scratch: .space 64\n"
            + "\n".join(d for _, d in parts) + "\n")


def build(source: str, workdir: Path) -> Path:
    assert CC is not None
    src = workdir / "diff.S"
    src.write_text(source)
    elf = workdir / "diff.elf"
    march = "rv64gc_zicsr_zifencei_zba_zbb_zbs"
    cmd = [CC, f"-march={march}", "-mabi=lp64d", "-mcmodel=medany", "-nostdlib",
           "-nostartfiles", "-static", "-T", str(GUESTS / "link.ld"), f"-I{GUESTS}",
           "-DCRT_LIB_ONLY", "-Wl,--no-warn-rwx-segments", "-o", str(elf), str(GUESTS / "crt.S"),
           str(src)]
    proc = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise AssertionError("assembler rejected the generated program:\n"
                             + proc.stderr.decode("utf-8", "replace"))
    return elf


def run(argv0: list[str], elf: Path) -> str:
    cmd = [*argv0, "-M", "spike", "-bios", "none", "-kernel", str(elf), "-nographic"]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=TIMEOUT_S,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(cmd)}: no exit within {TIMEOUT_S:.0f} s")
    out = proc.stdout.decode("utf-8", "replace").replace("\r\n", "\n")
    out += f"[exit status {proc.returncode}]\n"
    if proc.returncode != 0:
        out += "[stderr] " + proc.stderr.decode("utf-8", "replace")[-2000:]
    return out


def dumps(out: str) -> list[list[str]]:
    """The register dumps of a run, one list of 72 hex strings per block."""
    return [chunk.split() for chunk in out.split("-\n")[:-1]]


NAMES = ([f"x{i}" for i in range(1, 32)] + [f"f{i}" for i in range(32)] + ["fcsr"]
         + [f"mem+{8 * i}" for i in range(8)])


def compare(blocks: list[Block], qemu_out: str, kvmpy_out: str) -> None:
    if qemu_out == kvmpy_out:
        return
    q, k = dumps(qemu_out), dumps(kvmpy_out)
    for i, block in enumerate(blocks):
        if i >= len(q) or i >= len(k) or q[i] != k[i]:
            diffs = []
            if i < len(q) and i < len(k):
                diffs = [f"  {n}: qemu {a} kvmpy {b}"
                         for n, a, b in zip(NAMES, q[i], k[i], strict=False) if a != b]
            detail = "\n".join(diffs) or f"qemu:\n{qemu_out[-2000:]}\nkvmpy:\n{kvmpy_out[-2000:]}"
            initial = "\n".join(f"  {n} = {v:016x}" for n, v in
                                 zip(NAMES, [*block.xregs, *block.fregs, block.fcsr,
                                             *block.memory], strict=True))
            raise AssertionError(f"block {i} differs from QEMU:\n{detail}\n"
                                 f"code:\n{block.listing()}\ninitial state:\n{initial}")
    raise AssertionError(f"output differs:\nqemu:\n{qemu_out[-2000:]}\nkvmpy:\n{kvmpy_out[-2000:]}")


@functools.cache
def kvmpy_spike_missing() -> str | None:
    try:
        proc = subprocess.run([*KVMPY, "-M", "help"], capture_output=True, timeout=60,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        return "python -m kvmpy -M help did not answer within 60 s"
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        return "python -m kvmpy -M help failed" + (f": {err[-1]}" if err else "")
    if "spike" not in proc.stdout.decode("utf-8", "replace").split():
        return "kvmpy has no spike machine (python -m kvmpy -M help does not list it)"
    return None


needs_tools = pytest.mark.skipif(
    CC is None or QEMU is None,
    reason="needs riscv64-unknown-elf-gcc and qemu-system-riscv64 (the oracle)")


def require_kvmpy() -> None:
    reason = kvmpy_spike_missing()
    if reason:
        pytest.skip(reason)


# ---- tests ------------------------------------------------------------------------------

@needs_tools
def test_harness_runs_on_qemu(tmp_path: Path) -> None:
    """The generator's programs assemble, run without trapping and dump every block."""
    rng = random.Random(BATCH_SEED)
    blocks = [random_block(rng, 30) for _ in range(4)]
    assert QEMU is not None
    out = run([QEMU], build(program(blocks), tmp_path))
    assert out.endswith("PASS\n[exit status 0]\n"), out[-500:]
    got = dumps(out)
    assert len(got) == 4 and all(len(d) == 72 for d in got)
    # the dump reflects the loaded state: a block of no-ops would print its inputs back
    empty = Block(blocks[0].xregs, blocks[0].fregs, blocks[0].fcsr, (), blocks[0].memory)
    out = run([QEMU], build(program([empty]), tmp_path))
    values = [int(v, 16) for v in dumps(out)[0]]
    assert values == [*empty.xregs, *empty.fregs, empty.fcsr, *empty.memory]


@needs_tools
def test_seeded_batch(tmp_path: Path) -> None:
    """Many longer blocks from a fixed seed in one program."""
    require_kvmpy()
    rng = random.Random(BATCH_SEED)
    blocks = [random_block(rng, 60) for _ in range(BATCH_BLOCKS)]
    elf = build(program(blocks), tmp_path)
    assert QEMU is not None
    compare(blocks, run([QEMU], elf), run(KVMPY, elf))


def insns() -> st.SearchStrategy[Insn]:
    reg = st.integers(0, 31)
    return st.builds(Insn, st.integers(0, len(OPS) - 1), reg, reg, reg, reg,
                     st.integers(0, 2**20 - 1), st.integers(0, len(ROUNDING) - 1))


def int_values() -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from(INT_SPECIAL), st.integers(0, 2**64 - 1))


def fp_values() -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from(DOUBLE_SPECIAL),
                     st.sampled_from(SINGLE_SPECIAL).map(lambda v: BOX | v),
                     st.integers(0, 2**32 - 1).map(lambda v: BOX | v),
                     st.integers(0, 2**64 - 1))


blocks_strategy = st.builds(
    Block,
    st.tuples(*[int_values()] * 31),
    st.tuples(*[fp_values()] * 32),
    st.builds(lambda rm, flags: (rm << 5) | flags, st.integers(0, 4), st.integers(0, 31)),
    st.lists(insns(), min_size=1, max_size=24).map(tuple),
    st.tuples(*[int_values()] * 8),
)


@needs_tools
@settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
          phases=PHASES, print_blob=False,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(block=blocks_strategy)
def test_generated_sequences(block: Block, tmp_path: Path) -> None:
    require_kvmpy()
    elf = build(program([block]), tmp_path)
    assert QEMU is not None
    compare([block], run([QEMU], elf), run(KVMPY, elf))
