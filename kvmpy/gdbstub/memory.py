"""Guest memory as the debugger sees it: virtual addresses through the selected hart's current
translation (QEMU's ``cpu_memory_rw_debug``), or physical ones (``Qqemu.PhyMemMode:1``).

The walk is the data-load view of the privileged spec 4.3.2 (Sv39/48/57): the effective
privilege is mstatus.MPP when M-mode sets MPRV (``riscv_cpu_mmu_index``); M-mode and bare satp
do not translate; a debug walk checks R (or X with MXR) and U/SUM but sets no A/D bit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmpy.errors import KvmpyError

if TYPE_CHECKING:
    from kvmpy.system import System

PAGE_SIZE = 4096
_LEVELS = {8: 3, 9: 4, 10: 5}
_PRV_U, _PRV_S, _PRV_M = 0, 1, 3
_MSTATUS_MPRV = 1 << 17
_MSTATUS_SUM = 1 << 18
_MSTATUS_MXR = 1 << 19
_PTE_V, _PTE_R, _PTE_W, _PTE_X, _PTE_U = 1, 2, 4, 8, 16


class MemoryFault(KvmpyError):
    """The address does not translate, or nothing is there (gdb: E14)."""


def _read_phys_word(system: System, gpa: int) -> int:
    region = system.memory_at(gpa, 8)
    if region is None:
        raise MemoryFault(f"page table at 0x{gpa:x} is not in memory")
    return int.from_bytes(region.read(gpa, 8), "little")


def translate(system: System, hart: int, vaddr: int) -> int:
    """Guest-physical address of ``vaddr`` for a debug load on hart ``hart``."""
    assert system.accel is not None
    vcpu = system.accel.vcpus[hart]
    priv = vcpu.get_reg("priv")
    try:
        mstatus = vcpu.get_reg("mstatus")
    except KvmpyError:  # no M-mode state (KVM): sstatus holds SUM and MXR
        mstatus = vcpu.get_reg("sstatus")
    if priv == _PRV_M and mstatus & _MSTATUS_MPRV:
        priv = (mstatus >> 11) & 3
    satp = vcpu.get_reg("satp")
    levels = _LEVELS.get(satp >> 60)
    if priv == _PRV_M or levels is None:
        return vaddr & ((1 << 64) - 1)
    va_bits = 12 + 9 * levels
    top = vaddr >> (va_bits - 1)
    if top not in (0, (1 << (65 - va_bits)) - 1):
        raise MemoryFault(f"0x{vaddr:x} is not canonical")
    table = (satp & ((1 << 44) - 1)) * PAGE_SIZE
    for level in range(levels - 1, -1, -1):
        index = (vaddr >> (12 + 9 * level)) & 0x1FF
        pte = _read_phys_word(system, table + index * 8)
        if not pte & _PTE_V or (pte & _PTE_W and not pte & _PTE_R):
            raise MemoryFault(f"0x{vaddr:x} is not mapped")
        ppn = (pte >> 10) & ((1 << 44) - 1)
        if not pte & (_PTE_R | _PTE_X):
            table = ppn * PAGE_SIZE
            continue
        readable = pte & _PTE_R or (mstatus & _MSTATUS_MXR and pte & _PTE_X)
        user = bool(pte & _PTE_U)
        if not readable or (priv == _PRV_U and not user) or \
                (priv == _PRV_S and user and not mstatus & _MSTATUS_SUM):
            raise MemoryFault(f"0x{vaddr:x} is not readable")
        span = 1 << (12 + 9 * level)
        if (ppn * PAGE_SIZE) & (span - 1):
            raise MemoryFault(f"0x{vaddr:x}: misaligned superpage")
        return ppn * PAGE_SIZE | (vaddr & (span - 1))
    raise MemoryFault(f"0x{vaddr:x}: no leaf page")


def _chunks(vaddr: int, size: int) -> list[tuple[int, int]]:
    out = []
    while size > 0:
        n = min(size, PAGE_SIZE - vaddr % PAGE_SIZE)
        out.append((vaddr, n))
        vaddr += n
        size -= n
    return out


def _read_physical(system: System, gpa: int, size: int) -> bytes:
    region = system.memory_at(gpa, size)
    if region is not None:
        return region.read(gpa, size)
    window = system.bus.find(gpa)
    if window is None or gpa + size > window.end:
        raise MemoryFault(f"nothing at 0x{gpa:x}")
    out = bytearray()
    with system.lock:  # a device read, with the side effects a guest read has (as QEMU)
        while len(out) < size:
            addr = gpa + len(out)
            width = next(w for w in (4, 2, 1) if addr % w == 0 and len(out) + w <= size)
            out += system.bus.read(addr, width).to_bytes(width, "little")
    return bytes(out)


def _write_physical(system: System, gpa: int, data: bytes) -> None:
    region = system.memory_at(gpa, len(data))
    if region is not None:
        region.write(gpa, data)  # ROM too: a debugger may patch it, as QEMU allows
        return
    window = system.bus.find(gpa)
    if window is None or gpa + len(data) > window.end:
        raise MemoryFault(f"nothing at 0x{gpa:x}")
    with system.lock:
        done = 0
        while done < len(data):
            addr = gpa + done
            width = next(w for w in (4, 2, 1) if addr % w == 0 and done + w <= len(data))
            system.bus.write(addr, width, int.from_bytes(data[done:done + width], "little"))
            done += width


def read(system: System, hart: int, addr: int, size: int, physical: bool) -> bytes:
    """With software breakpoints (KVM) patched in, the original instructions are read."""
    hide = getattr(system.accel, "hide_breakpoints", None)
    out = bytearray()
    for vaddr, n in _chunks(addr, size):
        gpa = vaddr if physical else translate(system, hart, vaddr)
        data = _read_physical(system, gpa, n)
        out += data if hide is None else hide(gpa, data)
    return bytes(out)


def write(system: System, hart: int, addr: int, data: bytes, physical: bool) -> None:
    under = getattr(system.accel, "write_under_breakpoints", None)
    done = 0
    for vaddr, n in _chunks(addr, len(data)):
        gpa = vaddr if physical else translate(system, hart, vaddr)
        chunk = data[done:done + n]
        _write_physical(system, gpa, chunk if under is None else under(gpa, chunk))
        done += n
    flush = getattr(system.accel, "flush_code", None)
    if flush is not None and data:
        flush()  # decoded instructions of the written bytes are checked again
