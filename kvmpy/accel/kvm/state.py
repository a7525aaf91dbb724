"""A RISC-V KVM vCPU's state in kvmpy.migration's architectural hart schema, via ONE_REG.

Under KVM the guest runs in (virtual) S/U-mode with the SBI in the host kernel, which is what
kvmpy's built-in SBI gives on the interpreter.  So the M-mode part of the schema is what the
built-in firmware leaves for an S-mode kernel (delegations, counters enabled, one PMP entry
covering everything), the supervisor CSRs map one to one, the SBI timer is KVM's timer
``compare``, and the HSM power state is the vCPU's mp_state.  A state saved here restores on
the interpreter with ``-bios builtin`` and the other way round.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from kvmpy.accel.exits import IntrExit
from kvmpy.accel.kvm import abi, onereg
from kvmpy.migration.errors import VmStateError

_U64 = (1 << 64) - 1
SSTATUS_MASK = 0x8000_0003_000D_E762
"""The mstatus bits sstatus shows (SIE, SPIE, UBE, SPP, VS, FS, XS, SUM, MXR, UXL, SD)."""
S_INTS = 0x222
MIP_SSIP = 1 << 1
MIP_SEIP = 1 << 9
MENVCFG_STCE = 1 << 63
TDATA1_RESET = 2 << 60
BUILTIN_M_CSRS = {"medeleg": 0xB1FF, "mideleg": S_INTS, "mcounteren": 0xFFFF_FFFF,
                  "menvcfg": MENVCFG_STCE}
"""What kvmpy's built-in firmware leaves in the M-mode CSRs for an S-mode kernel."""
_S_CSRS = ("stvec", "sscratch", "sepc", "scause", "stval", "satp", "scounteren", "senvcfg")


def _fd(vcpu: Any) -> Any:
    return vcpu.fd


def _get(fd: Any, reg: int, default: int | None = None) -> int:
    try:
        return int(fd.get_one_reg(reg))
    except OSError:
        if default is None:
            raise
        return default


def _has_sstc(vcpu: Any) -> bool:
    accel = getattr(vcpu, "accel", None)
    caps = getattr(accel, "caps", None)
    return "sstc" in tuple(getattr(caps, "isa_extensions", ()))


def complete_pending_exit(vcpu: Any) -> None:
    """Let KVM finish the exit kvmpy last completed: the register of an MMIO load, the a0/a1
    of an SBI call and the step over the instruction are only written when KVM_RUN is entered
    again.  Entered with ``immediate_exit`` set, it does that and returns at once (as QEMU
    does before it reads or writes a vCPU's state)."""
    fd = _fd(vcpu)
    fd.set_immediate_exit(True)
    try:
        exit_ = fd.run()
    except OSError as exc:
        raise VmStateError(f"vmstate: hart {vcpu.index}: KVM_RUN to complete its last exit "
                           f"failed: {exc}") from exc
    finally:
        fd.set_immediate_exit(False)
    if not isinstance(exit_, IntrExit):
        raise VmStateError(f"vmstate: hart {vcpu.index}: KVM ran the guest instead of only "
                           f"completing its last exit ({type(exit_).__name__})")


def get_arch_state(vcpu: Any) -> dict[str, Any]:
    """The schema's state of a KVM vCPU that is not inside KVM_RUN."""
    complete_pending_exit(vcpu)
    fd = _fd(vcpu)
    x = [0] + [_get(fd, onereg.core_id(name)) for name in onereg.ABI_NAMES[1:]]
    double = getattr(vcpu, "_double_fp", True)
    f = [_get(fd, onereg.fp_id(i, double), 0) for i in range(32)]
    fcsr = _get(fd, onereg.fp_id(32, double), 0)
    csr = {name: _get(fd, onereg.csr_id(name), 0) for name in _S_CSRS}
    sstatus = _get(fd, onereg.csr_id("sstatus"))
    sie = _get(fd, onereg.csr_id("sie"))
    sip = _get(fd, onereg.csr_id("sip"), 0)
    compare = _get(fd, onereg.timer_id("compare"), _U64)
    sstc = _has_sstc(vcpu)
    # With Sstc the guest writes vstimecmp itself, which KVM copies into ``compare`` at every
    # exit but does not count in the timer's ``state`` (that follows SBI set_timer only).
    timer_on = _get(fd, onereg.timer_id("state"), 0) == abi.KVM_RISCV_TIMER_STATE_ON
    if not timer_on and not sstc:
        compare = _U64
    csr.update(BUILTIN_M_CSRS)
    csr.update({"mstatus": sstatus & SSTATUS_MASK & ~(3 << 32) & ~(1 << 63), "mie": sie & S_INTS,
                "mtvec": 0, "mscratch": 0, "mepc": 0, "mcause": 0, "mtval": 0,
                "mcountinhibit": 0, "mcycle": 0, "minstret": 0,
                "stimecmp": compare if sstc else _U64, "tselect": 0, "tcontrol": 0})
    mode = _get(fd, onereg.core_id("mode"))
    return {
        "pc": _get(fd, onereg.core_id("pc")),
        "priv": 1 if mode == abi.KVM_RISCV_MODE_S else 0,
        "x": x, "f": f, "fflags": fcsr & 31, "frm": (fcsr >> 5) & 7,
        "csr": csr,
        "mip": sip & MIP_SSIP, "mip_pins": sip & MIP_SEIP,
        "mtimecmp": _U64, "sbi_timecmp": _U64 if sstc else compare,
        "pmpcfg": [0x1F] + [0] * 15, "pmpaddr": [(1 << 54) - 1] + [0] * 15,
        "tdata1": [TDATA1_RESET, TDATA1_RESET], "tdata2": [0, 0],
        "stopped": fd.get_mp_state() == abi.KVM_MP_STATE_STOPPED,
        "halted": False, "reservation": None, "instret": 0,
    }


def set_arch_state(vcpu: Any, state: dict[str, Any]) -> None:
    """Load a checked schema state into a KVM vCPU that is not inside KVM_RUN.  M-mode
    state that KVM cannot hold (a hart in M-mode, M-mode firmware's CSRs) is refused."""
    if state["priv"] not in (0, 1):
        raise VmStateError(f"vmstate: hart {vcpu.index} is in M-mode, which KVM cannot run "
                           "(save it on the interpreter with -bios builtin)")
    complete_pending_exit(vcpu)  # or a stale completion would land on the new registers
    fd = _fd(vcpu)
    csr = state["csr"]
    for i, name in enumerate(onereg.ABI_NAMES[1:], start=1):
        fd.set_one_reg(onereg.core_id(name), state["x"][i])
    fd.set_one_reg(onereg.core_id("pc"), state["pc"])
    fd.set_one_reg(onereg.core_id("mode"),
                   abi.KVM_RISCV_MODE_S if state["priv"] == 1 else abi.KVM_RISCV_MODE_U)
    double = getattr(vcpu, "_double_fp", True)
    with contextlib.suppress(OSError):  # a host without FP leaves FP alone
        for i in range(32):
            value = state["f"][i]
            fd.set_one_reg(onereg.fp_id(i, double), value if double else value & 0xFFFF_FFFF)
        fd.set_one_reg(onereg.fp_id(32, double), (state["frm"] << 5) | state["fflags"])
    fd.set_one_reg(onereg.csr_id("sstatus"), csr["mstatus"] & SSTATUS_MASK)
    fd.set_one_reg(onereg.csr_id("sie"), csr["mie"] & csr["mideleg"] & S_INTS)
    for name in _S_CSRS:
        if name == "senvcfg":
            with contextlib.suppress(OSError):  # before Linux 6.6
                fd.set_one_reg(onereg.csr_id(name), csr[name])
        else:
            fd.set_one_reg(onereg.csr_id(name), csr[name])
    fd.set_one_reg(onereg.csr_id("sip"), state["mip"] & MIP_SSIP)
    compare = min(state["sbi_timecmp"],
                  csr["stimecmp"] if csr["menvcfg"] & MENVCFG_STCE else _U64)
    with contextlib.suppress(OSError):
        if compare == _U64:
            fd.set_one_reg(onereg.timer_id("state"), abi.KVM_RISCV_TIMER_STATE_OFF)
        else:
            fd.set_one_reg(onereg.timer_id("compare"), compare)
            fd.set_one_reg(onereg.timer_id("state"), abi.KVM_RISCV_TIMER_STATE_ON)
    fd.interrupt(abi.KVM_INTERRUPT_SET if state["mip_pins"] & MIP_SEIP
                 else abi.KVM_INTERRUPT_UNSET)
    fd.set_mp_state(abi.KVM_MP_STATE_STOPPED if state["stopped"] else
                    abi.KVM_MP_STATE_RUNNABLE)


def read_time(vcpu: Any) -> int:
    """The guest's ``time`` (KVM's timer ``time``: the same for every vCPU of a VM)."""
    return _get(_fd(vcpu), onereg.timer_id("time"))


def write_time(vcpus: Sequence[Any], value: int) -> None:
    """Set the guest's ``time`` to ``value`` now (KVM keeps one offset per VM)."""
    for vcpu in vcpus:
        _fd(vcpu).set_one_reg(onereg.timer_id("time"), value & _U64)
