"""The architectural state of a hart: one schema for every accelerator.

A hart state is a dict (see ``docs/vmstate.md``)::

    pc, priv (0 U, 1 S, 3 M), x[32], f[32], fflags, frm,
    csr: {mstatus, medeleg, mideleg, mie, mtvec, mscratch, mepc, mcause, mtval, stvec,
          sscratch, sepc, scause, stval, satp, mcounteren, scounteren, menvcfg, senvcfg,
          mcountinhibit, mcycle, minstret, stimecmp, tselect, tcontrol},
    mip (bits software set: SSIP, STIP, SEIP), mip_pins (levels devices drive),
    mtimecmp (ACLINT compare), sbi_timecmp (built-in SBI TIME compare),
    pmpcfg[16], pmpaddr[16], tdata1[2], tdata2[2] (Sdtrig triggers),
    stopped (SBI HSM), halted (in WFI), reservation (LR/SC address or None),
    instret (instructions retired: the interpreter's icount position)

An accelerator's vCPU gives and takes it with ``get_arch_state()`` / ``set_arch_state()``
(the interpreter in its C core, KVM through ONE_REG in :mod:`kvmpy.accel.kvm.state`), so a
state saved under one accelerator restores under the other.
"""

from __future__ import annotations

from typing import Any

from kvmpy.migration.errors import VmStateError

CSRS = ("mstatus", "medeleg", "mideleg", "mie", "mtvec", "mscratch", "mepc", "mcause",
        "mtval", "stvec", "sscratch", "sepc", "scause", "stval", "satp", "mcounteren",
        "scounteren", "menvcfg", "senvcfg", "mcountinhibit", "mcycle", "minstret",
        "stimecmp", "tselect", "tcontrol")
NUM_PMP = 16
NUM_TRIGGERS = 2
_U64 = (1 << 64) - 1
_INTS = ("pc", "priv", "fflags", "frm", "mip", "mip_pins", "mtimecmp", "sbi_timecmp",
         "instret")
_LISTS = {"x": 32, "f": 32, "pmpcfg": NUM_PMP, "pmpaddr": NUM_PMP, "tdata1": NUM_TRIGGERS,
          "tdata2": NUM_TRIGGERS}


def _u64(value: Any, what: str) -> int:
    if type(value) is not int or not 0 <= value <= _U64:
        raise VmStateError(f"vmstate: {what} is not a 64-bit value")
    return value


def check_hart_state(state: Any, index: int) -> dict[str, Any]:
    """``state`` checked against the schema; VmStateError naming the first bad field."""
    where = f"hart {index}"
    if not isinstance(state, dict):
        raise VmStateError(f"vmstate: {where}: state is not a dict")
    out: dict[str, Any] = {}
    for key in _INTS:
        if key not in state:
            raise VmStateError(f"vmstate: {where}: missing '{key}'")
        out[key] = _u64(state[key], f"{where} {key}")
    if out["priv"] not in (0, 1, 3):
        raise VmStateError(f"vmstate: {where}: privilege {out['priv']} does not exist")
    for key, n in _LISTS.items():
        values = state.get(key)
        if not isinstance(values, list) or len(values) != n:
            raise VmStateError(f"vmstate: {where}: '{key}' is not a list of {n} values")
        out[key] = [_u64(v, f"{where} {key}[{i}]") for i, v in enumerate(values)]
    csrs = state.get("csr")
    if not isinstance(csrs, dict):
        raise VmStateError(f"vmstate: {where}: missing 'csr'")
    out["csr"] = {}
    for name in CSRS:
        if name not in csrs:
            raise VmStateError(f"vmstate: {where}: missing CSR '{name}'")
        out["csr"][name] = _u64(csrs[name], f"{where} {name}")
    if out["csr"]["tselect"] >= NUM_TRIGGERS:
        raise VmStateError(f"vmstate: {where}: tselect {out['csr']['tselect']} out of range")
    for key in ("stopped", "halted"):
        if type(state.get(key)) is not bool:
            raise VmStateError(f"vmstate: {where}: '{key}' is not a bool")
        out[key] = state[key]
    reservation = state.get("reservation", 0)
    if reservation is not None:
        reservation = _u64(reservation, f"{where} reservation")
    out["reservation"] = reservation
    return out


def get_hart_state(vcpu: Any) -> dict[str, Any]:
    """The state of ``vcpu`` (not running) in the schema above."""
    getter = getattr(vcpu, "get_arch_state", None)
    if getter is None:
        from kvmpy.accel.kvm import state as kvm_state

        return kvm_state.get_arch_state(vcpu)
    state: dict[str, Any] = getter()
    return state


def set_hart_state(vcpu: Any, state: dict[str, Any]) -> None:
    """Load a checked state into ``vcpu`` (not running)."""
    setter = getattr(vcpu, "set_arch_state", None)
    if setter is None:
        from kvmpy.accel.kvm import state as kvm_state

        kvm_state.set_arch_state(vcpu, state)
        return
    setter(state)
