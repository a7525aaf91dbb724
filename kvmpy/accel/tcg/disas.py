"""RV64GC disassembly for ``-d in_asm`` and the monitor, through capstone when installed."""

from __future__ import annotations

import functools
import struct
from typing import Any


@functools.cache
def _capstone() -> Any:
    try:
        import capstone
    except ImportError:
        return None
    try:
        md = capstone.Cs(capstone.CS_ARCH_RISCV,
                         capstone.CS_MODE_RISCV64 | capstone.CS_MODE_RISCVC)
    except (capstone.CsError, AttributeError):
        return None
    return md


def insn_length(first_halfword: int) -> int:
    return 4 if first_halfword & 3 == 3 else 2


def disassemble_one(raw: int, length: int, pc: int) -> str:
    """Text of one instruction (``.insn 0x...`` when the disassembler does not know it)."""
    md = _capstone()
    code = struct.pack("<I" if length == 4 else "<H", raw & ((1 << (8 * length)) - 1))
    if md is not None:
        for insn in md.disasm(code, pc, count=1):
            text = f"{insn.mnemonic}\t{insn.op_str}".rstrip()
            return text
    return f".insn 0x{raw:0{2 * length}x}"


def disassemble(code: bytes, pc: int) -> list[tuple[int, int, int, str]]:
    """(pc, raw, length, text) for each instruction of ``code`` starting at ``pc``."""
    out: list[tuple[int, int, int, str]] = []
    off = 0
    while off + 2 <= len(code):
        length = insn_length(code[off] | code[off + 1] << 8)
        if off + length > len(code):
            break
        raw = int.from_bytes(code[off:off + length], "little")
        out.append((pc + off, raw, length, disassemble_one(raw, length, pc + off)))
        off += length
    return out
