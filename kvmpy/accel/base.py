"""What an accelerator gives the rest of kvmpy: vCPUs that run until an exit.

Both accelerators register a QOM type under ``accel`` and expose :class:`Vcpu` objects with the
same exit-based ``run()``.  Differences that are real are declared in :class:`AccelCaps`, which
the board reads (KVM keeps the timer and IPIs in the kernel; the interpreter needs the ACLINT
and SBI TIME/IPI in the VMM).  No device knows which accelerator runs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol

from kvmpy.accel.exits import VcpuExit
from kvmpy.qom import Object, register_type

if TYPE_CHECKING:
    from kvmpy.memory import GuestRAM

# mip/mie bit numbers (privileged spec 3.1.9), used as ``irq`` in Vcpu.set_irq.
IRQ_S_SOFT = 1
IRQ_M_SOFT = 3
IRQ_S_TIMER = 5
IRQ_M_TIMER = 7
IRQ_S_EXT = 9
IRQ_M_EXT = 11

PRV_U = 0
PRV_S = 1
PRV_M = 3


@dataclass(frozen=True)
class AccelCaps:
    """What the board must provide itself, depending on the accelerator."""

    machine_mode: bool
    """Harts start in M-mode and can run M-mode firmware (OpenSBI, bare-metal tests)."""
    in_kernel_timer_ipi: bool
    """Timer, IPIs and SBI TIME/IPI/RFENCE/HSM/SRST are handled below the VMM (KVM)."""
    isa_extensions: tuple[str, ...] = field(default=())
    """Extensions as they appear in ``riscv,isa`` after ``rv64``: ("i", "m", ..., "zicsr", ...)."""
    mmu_type: str = "riscv,sv48"
    timebase_frequency: int = 10_000_000
    """Hz of ``time``/``mtime``: the device tree's ``/cpus/timebase-frequency`` (QEMU: 10 MHz;
    under KVM the host's timer frequency, which the guest cannot change)."""
    firmware_refusal: str = "Machine mode firmware is not supported by this accelerator."
    """The one-line error when ``-bios`` names M-mode firmware (``default`` or a file) and
    ``machine_mode`` is False, worded as QEMU words it for this accelerator."""


class Vcpu(Protocol):
    """One hart as an accelerator runs it. ``run()`` returns a :data:`VcpuExit`."""

    index: int

    def run(self) -> VcpuExit:
        """Run until an exit; the previous exit must have been completed."""
        ...

    def complete_mmio_read(self, value: int) -> None:
        """Give the value of the MMIO load reported by the last exit."""
        ...

    def complete_sbi(self, error: int, value: int) -> None:
        """Give a0 (SBI error) and a1 (value) for the SBI call reported by the last exit."""
        ...

    def kick(self) -> None:
        """Thread-safe: make a running ``run()`` return ``IntrExit`` soon."""
        ...

    def set_irq(self, irq: int, level: bool) -> None:
        """Thread-safe: drive interrupt pin ``irq`` (a mip bit number) of this hart."""
        ...

    def get_reg(self, name: str) -> int:
        """Read a register by name: ``pc``, ``x0``..``x31`` (or ABI names), ``f0``..``f31``,
        CSR names (``mstatus``, ``satp``, ...), ``priv``."""
        ...

    def set_reg(self, name: str, value: int) -> None:
        ...

    def reset(self, pc: int, priv: int, a0: int, a1: int, stopped: bool) -> None:
        """Power-on state: registers zero, ``pc``/``a0``/``a1`` set, running in ``priv``
        (PRV_M/PRV_S), or powered off until started (SBI HSM) when ``stopped``."""
        ...


@register_type("accel", "object", abstract=True, description="accelerator")
class Accelerator(Object):
    """Base of accelerators. ``name`` is what ``-accel`` takes (``kvm``, ``tcg``)."""

    name: ClassVar[str]
    caps: AccelCaps
    vcpus: list[Vcpu]

    supports_icount: ClassVar[bool] = False
    """``-icount shift=N`` is honoured (``set_icount``): time counts retired instructions."""
    threaded_vcpus: bool = False
    """True: one thread per vCPU blocked in run() (KVM, TCG with thread=multi); False: all
    harts on one thread.  Settled by ``init_machine``."""

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None when this accelerator can run here, else the one-line reason why not."""
        return None

    def init_machine(self, ram: GuestRAM, num_harts: int,
                     roms: Sequence[GuestRAM] = ()) -> None:
        """Phase 5: take the RAM mapping and create one vCPU per hart.

        ``roms`` are read-only regions the guest executes and loads from (the virt board's
        MROM); a store to one is an MMIO exit, as with a KVM read-only memory slot.
        """
        raise NotImplementedError

    def set_icount(self, shift: int | None) -> None:
        """``-icount shift=N``: mtime advances 2**N ns per retired instruction (None: host)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release vCPUs, file descriptors and native state."""


class FirmwareHart(Protocol):
    """What kvmpy's built-in SBI (``-bios builtin``) needs from a hart on the interpreter.

    Under KVM these services are in the kernel and never reach the VMM.  An IPI is
    ``set_irq(IRQ_S_SOFT, True)``: it sets sip.SSIP, which the guest clears itself.
    """

    index: int

    @property
    def stopped(self) -> bool:
        """True while the hart is powered off (SBI HSM STOPPED): run() is not called."""
        ...

    def set_irq(self, irq: int, level: bool) -> None: ...

    def set_sbi_timer(self, deadline: int) -> None:
        """SBI TIME set_timer: raise STIP once mtime >= ``deadline`` (clears STIP now)."""
        ...

    def flush_tlb(self) -> None:
        """SBI RFENCE: drop this hart's translations (and decoded instructions)."""
        ...

    def hart_start(self, start_addr: int, opaque: int) -> None:
        """SBI HSM hart_start: S-mode at ``start_addr``, a0 = hartid, a1 = opaque, satp = 0."""
        ...

    def hart_stop(self) -> None:
        """SBI HSM hart_stop: power the hart off."""
        ...
