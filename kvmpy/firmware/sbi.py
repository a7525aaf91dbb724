"""kvmpy's own SBI (``-bios builtin``): the supervisor binary interface served by the VMM.

Implements SBI 2.0 (riscv-sbi-doc v2.0) BASE, TIME, IPI, RFENCE, HSM, SRST and DBCN, and the
legacy v0.1 calls (set_timer, console putchar/getchar, clear_ipi, send_ipi, remote fences,
shutdown).  An ``ecall`` from S-mode reaches :meth:`Sbi.handle` as an
:class:`~kvmpy.accel.exits.SbiExit`; the run loop gives the answer back with
``vcpu.complete_sbi(error, value)``.

On the interpreter every call comes here and acts on the harts through
:class:`~kvmpy.accel.base.FirmwareHart`.  Under KVM the kernel answers TIME, IPI, RFENCE, HSM
and SRST itself and forwards only what it leaves to userspace (console calls, DBCN): the same
implementation serves those.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from kvmpy import __version__, log
from kvmpy.accel.base import IRQ_S_SOFT, FirmwareHart
from kvmpy.accel.exits import SbiExit
from kvmpy.memory import GuestRAM

# Error codes (SBI 2.0 §3.2)
SBI_SUCCESS = 0
SBI_ERR_FAILED = -1
SBI_ERR_NOT_SUPPORTED = -2
SBI_ERR_INVALID_PARAM = -3
SBI_ERR_DENIED = -4
SBI_ERR_INVALID_ADDRESS = -5
SBI_ERR_ALREADY_AVAILABLE = -6
SBI_ERR_ALREADY_STARTED = -7
SBI_ERR_ALREADY_STOPPED = -8

# Extension ids
EXT_LEGACY_SET_TIMER = 0x00
EXT_LEGACY_PUTCHAR = 0x01
EXT_LEGACY_GETCHAR = 0x02
EXT_LEGACY_CLEAR_IPI = 0x03
EXT_LEGACY_SEND_IPI = 0x04
EXT_LEGACY_REMOTE_FENCE_I = 0x05
EXT_LEGACY_REMOTE_SFENCE_VMA = 0x06
EXT_LEGACY_REMOTE_SFENCE_VMA_ASID = 0x07
EXT_LEGACY_SHUTDOWN = 0x08
EXT_BASE = 0x10
EXT_TIME = 0x54494D45
EXT_IPI = 0x735049
EXT_RFENCE = 0x52464E43
EXT_HSM = 0x48534D
EXT_SRST = 0x53525354
EXT_DBCN = 0x4442434E

SBI_SPEC_VERSION = 2 << 24  # 2.0
SBI_IMPL_ID = 0x4B56
"""kvmpy's implementation id (not in the SBI registry, whose ids 0-11 are taken)."""

# HSM states (§9.1)
HSM_STARTED = 0
HSM_STOPPED = 1
HSM_SUSPEND_RETENTIVE = 0x00000000
HSM_SUSPEND_NON_RETENTIVE = 0x80000000

# SRST (§10.1)
SRST_SHUTDOWN = 0
SRST_COLD_REBOOT = 1
SRST_WARM_REBOOT = 2
SRST_REASON_NONE = 0
SRST_REASON_SYSFAIL = 1

DBCN_MAX_BYTES = 1 << 16
XLEN_MASK = (1 << 64) - 1


def _nothing() -> None:
    pass


def _impl_version(version: str) -> int:
    parts = [int(p) for p in version.split(".")[:3] if p.isdigit()] + [0, 0, 0]
    return (parts[0] << 16) | (parts[1] << 8) | parts[2]


class SbiConsole:
    """Where console calls go. ``read`` returns at most ``max_bytes`` available bytes, never
    blocking (b"" when there is no input)."""

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def read(self, max_bytes: int) -> bytes:
        return b""


class SbiVcpu(Protocol):
    """The calling hart as :meth:`Sbi.handle` sees it."""

    index: int

    def get_reg(self, name: str) -> int: ...


ShutdownRequest = Callable[[str, bool], None]
Result = tuple[int, int]


class Sbi:
    """The SBI of one VM.

    ``harts()`` gives the :class:`FirmwareHart` of every hart, indexed by hartid (the vCPUs
    exist only after the accelerator is set up, so they are looked up at call time).
    ``shutdown``/``reset`` are ``System.request_shutdown``/``request_reset``; ``wake`` tells
    the vCPU driver that an idle hart has something to do (an IPI, a hart_start).
    """

    def __init__(self, num_harts: int, console: SbiConsole, ram: GuestRAM,
                 harts: Callable[[], Sequence[Any]], shutdown: ShutdownRequest,
                 reset: ShutdownRequest, hypervisor: bool = False,
                 wake: Callable[[], None] | None = None) -> None:
        self.num_harts = num_harts
        self.console = console
        self.ram = ram
        self._harts = harts
        self._shutdown = shutdown
        self._reset = reset
        self.hypervisor = hypervisor
        self._wake = wake if wake is not None else _nothing
        self._handlers: dict[int, Callable[[SbiVcpu, int, tuple[int, ...]], Result]] = {
            EXT_BASE: self._base,
            EXT_TIME: self._time,
            EXT_IPI: self._ipi,
            EXT_RFENCE: self._rfence,
            EXT_HSM: self._hsm,
            EXT_SRST: self._srst,
            EXT_DBCN: self._dbcn,
        }
        self._legacy: dict[int, Callable[[SbiVcpu, tuple[int, ...]], int]] = {
            EXT_LEGACY_SET_TIMER: self._legacy_set_timer,
            EXT_LEGACY_PUTCHAR: self._legacy_putchar,
            EXT_LEGACY_GETCHAR: self._legacy_getchar,
            EXT_LEGACY_CLEAR_IPI: self._legacy_clear_ipi,
            EXT_LEGACY_SEND_IPI: self._legacy_send_ipi,
            EXT_LEGACY_REMOTE_FENCE_I: self._legacy_fence,
            EXT_LEGACY_REMOTE_SFENCE_VMA: self._legacy_fence,
            EXT_LEGACY_REMOTE_SFENCE_VMA_ASID: self._legacy_fence,
            EXT_LEGACY_SHUTDOWN: self._legacy_shutdown,
        }

    # -- entry point ---------------------------------------------------------------------------

    def handle(self, vcpu: SbiVcpu, exit_: SbiExit) -> tuple[int, int]:
        """Serve one call; returns (a0 = error, a1 = value) for ``vcpu.complete_sbi``."""
        args = tuple(a & XLEN_MASK for a in exit_.args)
        legacy = self._legacy.get(exit_.eid)
        if legacy is not None:
            # v0.1 calls return in a0 only; a1 is handed back unchanged.
            return legacy(vcpu, args), args[1]
        handler = self._handlers.get(exit_.eid)
        if handler is None:
            log.unimp(f"sbi: extension 0x{exit_.eid:x} function {exit_.fid} not supported")
            return SBI_ERR_NOT_SUPPORTED, 0
        return handler(vcpu, exit_.fid, args)

    def probe(self, eid: int) -> bool:
        return eid in self._handlers or eid in self._legacy

    # -- VM state ------------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        """The SBI's own state for a saved VM: none.  What it sets up lives in the harts
        (SBI TIME compare, HSM power state) and is saved with them."""
        return {}

    def set_state(self, state: dict[str, Any]) -> None:
        if state != {}:
            from kvmpy.migration.errors import VmStateError

            raise VmStateError("vmstate: sbi: unknown state fields")

    # -- helpers -------------------------------------------------------------------------------

    def _hart(self, hartid: int) -> FirmwareHart:
        return self._harts()[hartid]  # type: ignore[no-any-return]

    def _targets(self, mask: int, base: int) -> list[int] | None:
        """Hart ids selected by (hart_mask, hart_mask_base); None when one is invalid."""
        if base == XLEN_MASK:
            return list(range(self.num_harts))
        targets = []
        bit = 0
        while mask >> bit:
            if (mask >> bit) & 1:
                hartid = base + bit
                if hartid >= self.num_harts:
                    return None
                targets.append(hartid)
            bit += 1
        return targets

    # -- BASE (§4) -----------------------------------------------------------------------------

    def _base(self, vcpu: SbiVcpu, fid: int, args: tuple[int, ...]) -> Result:
        if fid == 0:
            return SBI_SUCCESS, SBI_SPEC_VERSION
        if fid == 1:
            return SBI_SUCCESS, SBI_IMPL_ID
        if fid == 2:
            return SBI_SUCCESS, _impl_version(__version__)
        if fid == 3:
            return SBI_SUCCESS, int(self.probe(args[0]))
        if fid in (4, 5, 6):
            csr = ("mvendorid", "marchid", "mimpid")[fid - 4]
            try:
                return SBI_SUCCESS, vcpu.get_reg(csr)
            except Exception:  # an accelerator without that register reports 0
                return SBI_SUCCESS, 0
        return SBI_ERR_NOT_SUPPORTED, 0

    # -- TIME (§6) -----------------------------------------------------------------------------

    def _time(self, vcpu: SbiVcpu, fid: int, args: tuple[int, ...]) -> Result:
        if fid != 0:
            return SBI_ERR_NOT_SUPPORTED, 0
        self._hart(vcpu.index).set_sbi_timer(args[0])
        return SBI_SUCCESS, 0

    # -- IPI (§7) ------------------------------------------------------------------------------

    def _ipi(self, vcpu: SbiVcpu, fid: int, args: tuple[int, ...]) -> Result:
        if fid != 0:
            return SBI_ERR_NOT_SUPPORTED, 0
        targets = self._targets(args[0], args[1])
        if targets is None:
            return SBI_ERR_INVALID_PARAM, 0
        for hartid in targets:
            self._hart(hartid).set_irq(IRQ_S_SOFT, True)
        self._wake()
        return SBI_SUCCESS, 0

    # -- RFENCE (§8) ---------------------------------------------------------------------------

    def _rfence(self, vcpu: SbiVcpu, fid: int, args: tuple[int, ...]) -> Result:
        if fid > 6 or (fid >= 3 and not self.hypervisor):
            return SBI_ERR_NOT_SUPPORTED, 0
        targets = self._targets(args[0], args[1])
        if targets is None:
            return SBI_ERR_INVALID_PARAM, 0
        # Every fence is a full flush of the target's translations and decoded code: exact
        # for fence.i, a superset of the address/ASID-ranged sfence.vma and hfences.
        for hartid in targets:
            self._hart(hartid).flush_tlb()
        return SBI_SUCCESS, 0

    # -- HSM (§9) ------------------------------------------------------------------------------

    def _hsm(self, vcpu: SbiVcpu, fid: int, args: tuple[int, ...]) -> Result:
        if fid == 0:
            return self._hart_start(args[0], args[1], args[2])
        if fid == 1:
            self._hart(vcpu.index).hart_stop()
            return SBI_SUCCESS, 0
        if fid == 2:
            if args[0] >= self.num_harts:
                return SBI_ERR_INVALID_PARAM, 0
            return SBI_SUCCESS, HSM_STOPPED if self._hart(args[0]).stopped else HSM_STARTED
        if fid == 3:
            return self._hart_suspend(vcpu, args[0] & 0xFFFFFFFF, args[1], args[2])
        return SBI_ERR_NOT_SUPPORTED, 0

    def _hart_start(self, hartid: int, start_addr: int, opaque: int) -> Result:
        if hartid >= self.num_harts:
            return SBI_ERR_INVALID_PARAM, 0
        hart = self._hart(hartid)
        if not hart.stopped:
            return SBI_ERR_ALREADY_AVAILABLE, 0
        if not self.ram.contains(start_addr, 4):
            return SBI_ERR_INVALID_ADDRESS, 0
        hart.hart_start(start_addr, opaque)
        self._wake()
        return SBI_SUCCESS, 0

    def _hart_suspend(self, vcpu: SbiVcpu, suspend_type: int, resume_addr: int,
                      opaque: int) -> Result:
        """Retentive suspend returns at once (a WFI that woke up, allowed by §9.4); a
        non-retentive one resumes at ``resume_addr`` in S-mode with a0 = hartid,
        a1 = opaque, as after an immediate wake-up."""
        if suspend_type == HSM_SUSPEND_RETENTIVE:
            return SBI_SUCCESS, 0
        if suspend_type == HSM_SUSPEND_NON_RETENTIVE:
            if not self.ram.contains(resume_addr, 4):
                return SBI_ERR_INVALID_ADDRESS, 0
            hart = self._hart(vcpu.index)
            hart.hart_stop()
            hart.hart_start(resume_addr, opaque)
            return SBI_SUCCESS, 0
        return SBI_ERR_INVALID_PARAM, 0

    # -- SRST (§10) ----------------------------------------------------------------------------

    def _srst(self, vcpu: SbiVcpu, fid: int, args: tuple[int, ...]) -> Result:
        if fid != 0:
            return SBI_ERR_NOT_SUPPORTED, 0
        reset_type, reason = args[0] & 0xFFFFFFFF, args[1] & 0xFFFFFFFF
        if reason not in (SRST_REASON_NONE, SRST_REASON_SYSFAIL) and reason < 0xE0000000:
            return SBI_ERR_INVALID_PARAM, 0
        if reset_type == SRST_SHUTDOWN:
            self._shutdown("guest-shutdown", True)
        elif reset_type in (SRST_COLD_REBOOT, SRST_WARM_REBOOT):
            self._reset("guest-reset", True)
        else:
            return SBI_ERR_INVALID_PARAM, 0
        return SBI_SUCCESS, 0

    # -- DBCN (§12) ----------------------------------------------------------------------------

    def _dbcn(self, vcpu: SbiVcpu, fid: int, args: tuple[int, ...]) -> Result:
        if fid == 2:
            self.console.write(bytes([args[0] & 0xFF]))
            return SBI_SUCCESS, 0
        if fid not in (0, 1):
            return SBI_ERR_NOT_SUPPORTED, 0
        num_bytes, addr, addr_hi = min(args[0], DBCN_MAX_BYTES), args[1], args[2]
        if addr_hi != 0 or (num_bytes and not self.ram.contains(addr, num_bytes)):
            return SBI_ERR_INVALID_PARAM, 0
        if fid == 0:
            self.console.write(self.ram.read(addr, num_bytes) if num_bytes else b"")
            return SBI_SUCCESS, num_bytes
        data = self.console.read(num_bytes)[:num_bytes]
        if data:
            self.ram.write(addr, data)
        return SBI_SUCCESS, len(data)

    # -- legacy v0.1 (§5) ----------------------------------------------------------------------

    def _legacy_set_timer(self, vcpu: SbiVcpu, args: tuple[int, ...]) -> int:
        self._hart(vcpu.index).set_sbi_timer(args[0])
        return 0

    def _legacy_putchar(self, vcpu: SbiVcpu, args: tuple[int, ...]) -> int:
        self.console.write(bytes([args[0] & 0xFF]))
        return 0

    def _legacy_getchar(self, vcpu: SbiVcpu, args: tuple[int, ...]) -> int:
        data = self.console.read(1)
        return data[0] if data else -1

    def _legacy_clear_ipi(self, vcpu: SbiVcpu, args: tuple[int, ...]) -> int:
        self._hart(vcpu.index).set_irq(IRQ_S_SOFT, False)
        return 0

    def _legacy_mask(self, vcpu: SbiVcpu, mask_va: int) -> list[int] | None:
        """v0.1 passes a pointer (S-mode virtual) to a hart mask; NULL means every hart."""
        if mask_va == 0:
            return list(range(self.num_harts))
        gpa = translate(vcpu, self.ram, mask_va)
        if gpa is None or not self.ram.contains(gpa, 8):
            log.guest_error(f"sbi: legacy hart mask at 0x{mask_va:x} is not readable")
            return None
        return self._targets(self.ram.read_int(gpa, 8), 0)

    def _legacy_send_ipi(self, vcpu: SbiVcpu, args: tuple[int, ...]) -> int:
        targets = self._legacy_mask(vcpu, args[0])
        if targets is None:
            return SBI_ERR_INVALID_PARAM
        for hartid in targets:
            self._hart(hartid).set_irq(IRQ_S_SOFT, True)
        self._wake()
        return 0

    def _legacy_fence(self, vcpu: SbiVcpu, args: tuple[int, ...]) -> int:
        targets = self._legacy_mask(vcpu, args[0])
        if targets is None:
            return SBI_ERR_INVALID_PARAM
        for hartid in targets:
            self._hart(hartid).flush_tlb()
        return 0

    def _legacy_shutdown(self, vcpu: SbiVcpu, args: tuple[int, ...]) -> int:
        self._shutdown("guest-shutdown", True)
        return 0


# --- S-mode address translation for the legacy pointer arguments ------------------------------

_SATP_MODE_LEVELS = {8: 3, 9: 4, 10: 5}  # Sv39, Sv48, Sv57 (privileged spec 10.1.11)
_PTE_V, _PTE_R, _PTE_X = 1, 2, 8
_PPN_MASK = (1 << 44) - 1


def translate(vcpu: SbiVcpu, ram: GuestRAM, va: int) -> int | None:
    """Walk the hart's page table (satp) for a load at ``va``; None when it would fault."""
    satp = vcpu.get_reg("satp")
    mode = satp >> 60
    if mode == 0:
        return va
    levels = _SATP_MODE_LEVELS.get(mode)
    if levels is None:
        return None
    table = (satp & _PPN_MASK) << 12
    for level in range(levels - 1, -1, -1):
        pte_addr = table + ((va >> (12 + 9 * level)) & 0x1FF) * 8
        if not ram.contains(pte_addr, 8):
            return None
        pte = ram.read_int(pte_addr, 8)
        if not pte & _PTE_V:
            return None
        ppn_addr = ((pte >> 10) & _PPN_MASK) << 12
        if pte & (_PTE_R | _PTE_X):
            offset_mask = (1 << (12 + 9 * level)) - 1
            return (ppn_addr & ~offset_mask) | (va & offset_mask)
        table = ppn_addr
    return None
