"""The exit values a vCPU's ``run()`` returns, shared by the kvm and tcg accelerators.

Modelled on ``KVM_RUN``: the vCPU stops before an access it cannot complete, describes it, and
the VMM completes it (``Vcpu.complete_mmio_read`` / ``Vcpu.complete_sbi``) before the next
``run()``.  One free function (``kvmpy.runloop.handle_exit``) maps each exit to a device call.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class SystemEvent(enum.IntEnum):
    """``KVM_SYSTEM_EVENT_*`` types."""

    SHUTDOWN = 1
    RESET = 2
    CRASH = 3


@dataclass(slots=True)
class MmioExit:
    """A load or store outside RAM. ``size`` is 1, 2, 4 or 8 bytes; ``value`` is the store data.

    For a load the VMM calls ``vcpu.complete_mmio_read(value)``; the vCPU sign- or
    zero-extends it into the destination register when it resumes.
    """

    gpa: int
    size: int
    is_write: bool
    value: int = 0


@dataclass(slots=True)
class SbiExit:
    """An ``ecall`` from S-mode forwarded to the VMM: ``eid`` = a7, ``fid`` = a6, ``args`` = a0..a5.

    The VMM answers with ``vcpu.complete_sbi(error, value)`` (a0, a1); the vCPU advances pc.
    """

    eid: int
    fid: int
    args: tuple[int, int, int, int, int, int]


@dataclass(slots=True)
class HaltExit:
    """WFI with nothing pending: the hart idles until an interrupt or its timer deadline.

    ``deadline_ns`` is the host monotonic time (ns) of the hart's next timer event, or None.
    """

    deadline_ns: int | None = None


@dataclass(slots=True)
class IntrExit:
    """``run()`` returned because of a kick (pause, stop, pending request) or a batch ended."""


@dataclass(slots=True)
class SystemEventExit:
    """The guest asked for shutdown, reset or reported a crash (SBI SRST, KVM_EXIT_SYSTEM_EVENT)."""

    event: SystemEvent
    reason: int = 0


@dataclass(slots=True)
class InternalErrorExit:
    """The accelerator cannot continue this vCPU (KVM FAIL_ENTRY/INTERNAL_ERROR, core fault)."""

    message: str


@dataclass(slots=True)
class DebugExit:
    """A debugger event (``KVM_EXIT_DEBUG``): ``reason`` is ``"breakpoint"`` (before the
    instruction at pc), ``"step"`` (one instruction done) or ``"watchpoint"`` (before the
    access; ``address`` is the watchpoint's, ``access`` the accessed address, ``kind`` its
    type ``"write"``, ``"read"`` or ``"access"``)."""

    reason: str
    address: int = 0
    access: int = 0
    kind: str = ""


@dataclass(slots=True)
class UnsupportedExit:
    """An exit reason this accelerator wrapper does not know; ``code`` is the raw value."""

    code: int


VcpuExit = (
    MmioExit
    | SbiExit
    | HaltExit
    | IntrExit
    | SystemEventExit
    | InternalErrorExit
    | DebugExit
    | UnsupportedExit
)
