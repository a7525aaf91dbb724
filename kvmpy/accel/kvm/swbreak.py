"""Software breakpoints for RISC-V KVM: ``ebreak`` written over guest instructions.

RISC-V KVM (Linux 6.10+, ``KVM_SET_GUEST_DEBUG`` with ``KVM_GUESTDBG_ENABLE``) stops
delegating the breakpoint exception to the guest, so an ``ebreak`` the guest executes exits to
the VMM as ``KVM_EXIT_DEBUG`` at its pc.  It has no hardware breakpoints, watchpoints or
single-step.  :class:`SwBreakpoints` keeps the patched places (as QEMU's
``kvm_insert_breakpoint`` keeps ``saved_insn``): the original bytes go back on removal, and
debugger reads and writes of guest memory see and change the original instruction, never the
patch.  :func:`next_pcs` decodes an instruction for stepping by temporary breakpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

EBREAK = (0x00100073).to_bytes(4, "little")
C_EBREAK = (0x9002).to_bytes(2, "little")
_U64 = (1 << 64) - 1


def patch_bytes(size: int) -> bytes:
    return EBREAK if size == 4 else C_EBREAK


def instruction_length(low_half: int) -> int:
    """2 for a compressed instruction (low bits != 11), else 4 (no 48-bit+ encodings)."""
    return 4 if low_half & 3 == 3 else 2


@dataclass
class Patch:
    vaddr: int
    gpa: int
    original: bytes
    owners: set[str] = field(default_factory=set)
    lifted: bool = False
    """The original is in memory for now (a step off this very breakpoint)."""


class SwBreakpoints:
    """Breakpoint patches by virtual address, over guest-physical ``read``/``write``.

    An address has one patch however many owners (``"gdb"``, ``"step"``) want it."""

    def __init__(self, read: Callable[[int, int], bytes],
                 write: Callable[[int, bytes], None]) -> None:
        self._read = read
        self._write = write
        self.patches: dict[int, Patch] = {}

    def __bool__(self) -> bool:
        return bool(self.patches)

    def insert(self, vaddr: int, gpa: int, kind: int, owner: str) -> None:
        """Patch the instruction at ``vaddr`` (guest-physical ``gpa``): ``c.ebreak`` when it is
        a compressed one or gdb's ``kind`` is 2, else ``ebreak``."""
        patch = self.patches.get(vaddr)
        if patch is not None:
            patch.owners.add(owner)
            return
        low = int.from_bytes(self._read(gpa, 2), "little")
        size = 2 if kind == 2 or instruction_length(low) == 2 else 4
        original = self._read(gpa, size)
        self._write(gpa, patch_bytes(size))
        self.patches[vaddr] = Patch(vaddr, gpa, original, {owner})

    def remove(self, vaddr: int, owner: str) -> None:
        patch = self.patches.get(vaddr)
        if patch is None:
            return
        patch.owners.discard(owner)
        if not patch.owners:
            if not patch.lifted:
                self._write(patch.gpa, patch.original)
            del self.patches[vaddr]

    def remove_owner(self, owner: str) -> None:
        for vaddr in [v for v, p in self.patches.items() if owner in p.owners]:
            self.remove(vaddr, owner)

    def owned_by(self, owner: str) -> set[int]:
        return {v for v, p in self.patches.items() if owner in p.owners}

    def clear(self) -> None:
        """Every original back in memory."""
        for patch in self.patches.values():
            if not patch.lifted:
                self._write(patch.gpa, patch.original)
        self.patches.clear()

    def lift(self, vaddr: int) -> bool:
        """Put the original at ``vaddr`` back for now (True if there was a patch)."""
        patch = self.patches.get(vaddr)
        if patch is None or patch.lifted:
            return False
        self._write(patch.gpa, patch.original)
        patch.lifted = True
        return True

    def relower(self) -> None:
        """Patch again what :meth:`lift` lifted."""
        for patch in self.patches.values():
            if patch.lifted:
                patch.lifted = False
                self._write(patch.gpa, patch_bytes(len(patch.original)))

    def _overlaps(self, gpa: int, size: int) -> list[Patch]:
        return [p for p in self.patches.values()
                if not p.lifted and p.gpa < gpa + size and gpa < p.gpa + len(p.original)]

    def hide(self, gpa: int, data: bytes) -> bytes:
        """``data`` read from ``gpa`` with the originals in place of the patches."""
        patches = self._overlaps(gpa, len(data))
        if not patches:
            return data
        out = bytearray(data)
        for p in patches:
            for i, byte in enumerate(p.original):
                if 0 <= p.gpa + i - gpa < len(out):
                    out[p.gpa + i - gpa] = byte
        return bytes(out)

    def write_under(self, gpa: int, data: bytes) -> bytes:
        """A debugger write of ``data`` at ``gpa``: the patched bytes it covers become the new
        originals, and the bytes to store keep the patches."""
        patches = self._overlaps(gpa, len(data))
        if not patches:
            return data
        out = bytearray(data)
        for p in patches:
            original = bytearray(p.original)
            ebreak = patch_bytes(len(original))
            for i in range(len(original)):
                j = p.gpa + i - gpa
                if 0 <= j < len(out):
                    original[i] = out[j]
                    out[j] = ebreak[i]
            p.original = bytes(original)
        return bytes(out)


def _sext(value: int, bits: int) -> int:
    return value - (1 << bits) if value & (1 << (bits - 1)) else value


def next_pcs(insn: int, pc: int, reg: Callable[[str], int], user_mode: bool) -> set[int]:
    """Where the hart may be after executing ``insn`` at ``pc`` (no trap taken): both ways of
    a branch, jump targets (``jalr``/``c.jr``/``c.jalr`` from the register), ``sret`` to sepc,
    a U-mode ``ecall`` to stvec; else the next instruction."""
    if insn & 3 != 3:  # RV64C
        c = insn & 0xFFFF
        quadrant, funct3 = c & 3, c >> 13
        fallthrough = (pc + 2) & _U64
        if quadrant == 1 and funct3 == 5:  # c.j
            imm = ((c >> 12 & 1) << 11 | (c >> 11 & 1) << 4 | (c >> 9 & 3) << 8
                   | (c >> 8 & 1) << 10 | (c >> 7 & 1) << 6 | (c >> 6 & 1) << 7
                   | (c >> 3 & 7) << 1 | (c >> 2 & 1) << 5)
            return {(pc + _sext(imm, 12)) & _U64}
        if quadrant == 1 and funct3 in (6, 7):  # c.beqz, c.bnez
            imm = ((c >> 12 & 1) << 8 | (c >> 10 & 3) << 3 | (c >> 5 & 3) << 6
                   | (c >> 3 & 3) << 1 | (c >> 2 & 1) << 5)
            return {fallthrough, (pc + _sext(imm, 9)) & _U64}
        rs1, rs2 = c >> 7 & 0x1F, c >> 2 & 0x1F
        if quadrant == 2 and funct3 == 4 and rs2 == 0 and rs1 != 0:  # c.jr, c.jalr
            return {reg(f"x{rs1}") & ~1 & _U64}
        return {fallthrough}
    insn &= 0xFFFFFFFF
    opcode = insn & 0x7F
    fallthrough = (pc + 4) & _U64
    if opcode == 0x6F:  # jal
        imm = ((insn >> 31 & 1) << 20 | (insn >> 21 & 0x3FF) << 1 | (insn >> 20 & 1) << 11
               | (insn >> 12 & 0xFF) << 12)
        return {(pc + _sext(imm, 21)) & _U64}
    if opcode == 0x67:  # jalr
        rs1 = insn >> 15 & 0x1F
        base = reg(f"x{rs1}") if rs1 else 0
        return {(base + _sext(insn >> 20, 12)) & ~1 & _U64}
    if opcode == 0x63:  # branches
        imm = ((insn >> 31 & 1) << 12 | (insn >> 25 & 0x3F) << 5 | (insn >> 8 & 0xF) << 1
               | (insn >> 7 & 1) << 11)
        return {fallthrough, (pc + _sext(imm, 13)) & _U64}
    if insn == 0x10200073:  # sret
        return {reg("sepc") & _U64}
    if insn == 0x00000073 and user_mode:  # ecall from U-mode: to the kernel's trap vector
        return {reg("stvec") & ~3 & _U64}
    return {fallthrough}
