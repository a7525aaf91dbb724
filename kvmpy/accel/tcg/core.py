"""The compiled interpreter core (``_engine``, built by cffi) and the names of its registers.

Importing this module never fails: when the core is missing, :func:`unavailable_reason` says
why in one line and ``-accel tcg`` reports it.
"""

from __future__ import annotations

import importlib
from typing import Any

try:
    _engine: Any = importlib.import_module("kvmpy.accel.tcg._engine")
    _IMPORT_ERROR: str | None = None
except ImportError as exc:  # not built, or built for another Python
    _engine = None
    _IMPORT_ERROR = str(exc).split("\n")[0]

ffi: Any = _engine.ffi if _engine is not None else None
lib: Any = _engine.lib if _engine is not None else None

REG_PC = 64
REG_PRIV = 65
REG_MTIMECMP = 66
REG_SBI_TIMECMP = 67
REG_STOPPED = 68
REG_INSTRET = 69
REG_CSR = 4096

EXIT_NONE = 0
EXIT_MMIO = 1
EXIT_SBI = 2
EXIT_HALT = 3
EXIT_STOPPED = 4
EXIT_TRACE = 5
EXIT_ERROR = 6

TRACE_INT = 0
TRACE_IN_ASM = 1
TRACE_EXEC = 2

XREG_ABI = ("zero", "ra", "sp", "gp", "tp", "t0", "t1", "t2", "s0", "s1",
            "a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7",
            "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11",
            "t3", "t4", "t5", "t6")
FREG_ABI = ("ft0", "ft1", "ft2", "ft3", "ft4", "ft5", "ft6", "ft7", "fs0", "fs1",
            "fa0", "fa1", "fa2", "fa3", "fa4", "fa5", "fa6", "fa7",
            "fs2", "fs3", "fs4", "fs5", "fs6", "fs7", "fs8", "fs9", "fs10", "fs11",
            "ft8", "ft9", "ft10", "ft11")

_SPECIAL = {"pc": REG_PC, "priv": REG_PRIV, "mtimecmp": REG_MTIMECMP,
            "sbi_timecmp": REG_SBI_TIMECMP, "stopped": REG_STOPPED}


def unavailable_reason() -> str | None:
    """None when the core is importable, else one line saying why not."""
    if lib is not None:
        return None
    return (f"the interpreter core is not built ({_IMPORT_ERROR}); "
            "install kvmpy with 'pip install .' or run 'python kvmpy/accel/tcg/_build.py'")


def _isa_extensions() -> tuple[str, ...]:
    if lib is None:
        return ()
    names: list[str] = []
    i = 0
    while True:
        p = lib.tcg_isa_extension(i)
        if p == ffi.NULL:
            return tuple(names)
        names.append(ffi.string(p).decode())
        i += 1


ISA_EXTENSIONS: tuple[str, ...] = _isa_extensions()
"""What the core implements, from its one table (also the source of misa)."""


def isa_string() -> str:
    """``riscv,isa`` as the device tree spells it: ``rv64imafdc_zicntr_..._sstc``."""
    letters = "".join(e for e in ISA_EXTENSIONS if len(e) == 1)
    multi = [e for e in ISA_EXTENSIONS if len(e) > 1]
    return "_".join(["rv64" + letters, *multi])


def reg_id(name: str) -> int:
    """The core's id of register ``name``; raises KeyError for an unknown name."""
    special = _SPECIAL.get(name)
    if special is not None:
        return special
    if name in XREG_ABI:
        return XREG_ABI.index(name)
    if name == "fp":
        return 8
    if name in FREG_ABI:
        return 32 + FREG_ABI.index(name)
    if len(name) >= 2 and name[0] in "xf" and name[1:].isdigit():
        n = int(name[1:])
        if n < 32:
            return n if name[0] == "x" else 32 + n
    if lib is not None:
        csr = int(lib.tcg_csr_number(name.encode()))
        if csr >= 0:
            return REG_CSR + csr
    raise KeyError(name)
