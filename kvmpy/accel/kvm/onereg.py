"""RISC-V ONE_REG ids and register names (``arch/riscv/include/uapi/asm/kvm.h``).

``id = KVM_REG_RISCV | size | type << 24 | subtype << 16 | index``; the index of a field is its
offset in the register-file struct divided by the field size (``KVM_REG_RISCV_CORE_REG``).
"""

from __future__ import annotations

from kvmpy.accel.kvm import abi
from kvmpy.accel.kvm.abi import ffi


def reg_id(reg_type: int, index: int, subtype: int = 0, u32: bool = False) -> int:
    """The ONE_REG id of register ``index`` in file ``reg_type`` (64-bit unless ``u32``)."""
    size = abi.KVM_REG_SIZE_U32 if u32 else abi.KVM_REG_SIZE_U64
    return (abi.KVM_REG_RISCV | size | reg_type << abi.KVM_REG_RISCV_TYPE_SHIFT
            | subtype << abi.KVM_REG_RISCV_SUBTYPE_SHIFT | index)


def _field_index(struct: str, field: str) -> int:
    return int(ffi.offsetof(struct, field) // ffi.sizeof("unsigned long"))


def config_id(field: str) -> int:
    """``config.isa``, ``config.satp_mode``, ..."""
    return reg_id(abi.KVM_REG_RISCV_CONFIG, _field_index("struct kvm_riscv_config", field))


def core_id(field: str) -> int:
    """``pc``, ``ra``, ..., ``t6`` (the ``user_regs_struct`` fields) or ``mode``."""
    if field == "mode":
        return reg_id(abi.KVM_REG_RISCV_CORE, _field_index("struct kvm_riscv_core", "mode"))
    return reg_id(abi.KVM_REG_RISCV_CORE,
                  int(ffi.offsetof("struct kvm_riscv_core", "regs", field)
                      // ffi.sizeof("unsigned long")))


def csr_id(field: str) -> int:
    """A general supervisor CSR: ``sstatus``, ``sie``, ..., ``senvcfg``."""
    return reg_id(abi.KVM_REG_RISCV_CSR, _field_index("struct kvm_riscv_csr", field),
                  abi.KVM_REG_RISCV_CSR_GENERAL)


def timer_id(field: str) -> int:
    """``frequency``, ``time``, ``compare`` or ``state`` (always 64-bit)."""
    return reg_id(abi.KVM_REG_RISCV_TIMER,
                  int(ffi.offsetof("struct kvm_riscv_timer", field) // 8))


def fp_id(index: int, double: bool) -> int:
    """``f<index>`` (0..31) or fcsr (32): FP_D registers are 64-bit, FP_F and fcsr 32-bit."""
    if double:
        return reg_id(abi.KVM_REG_RISCV_FP_D, index, u32=index == 32)
    return reg_id(abi.KVM_REG_RISCV_FP_F, index, u32=True)


def isa_ext_id(index: int) -> int:
    """The single ISA_EXT register of ``KVM_RISCV_ISA_EXT_<index>`` (1 = enabled)."""
    return reg_id(abi.KVM_REG_RISCV_ISA_EXT, index, abi.KVM_REG_RISCV_ISA_SINGLE)


def sbi_ext_id(index: int) -> int:
    """The single SBI_EXT register of ``KVM_RISCV_SBI_EXT_<index>`` (1 = forwarded/enabled)."""
    return reg_id(abi.KVM_REG_RISCV_SBI_EXT, index, abi.KVM_REG_RISCV_SBI_SINGLE)


ABI_NAMES = (
    "zero", "ra", "sp", "gp", "tp", "t0", "t1", "t2", "s0", "s1",
    "a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7",
    "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11",
    "t3", "t4", "t5", "t6",
)
"""x0..x31 by ABI name; ``user_regs_struct`` has them in this order with pc in x0's place."""

CSR_NAMES = ("sstatus", "sie", "stvec", "sscratch", "sepc", "scause", "stval", "sip", "satp",
             "scounteren", "senvcfg")

_GPR_IDS: dict[str, int] = {}
"""Filled on first use (the offsets come from the ABI's cdef, parsed on first use)."""


def gpr_id(name: str) -> int | None:
    """ONE_REG id of ``pc``, ``x1``..``x31`` or an ABI name; None for others (x0 included)."""
    if not _GPR_IDS:
        ids = {"pc": core_id("pc"), "fp": core_id("s0")}
        for i, abi_name in enumerate(ABI_NAMES[1:], start=1):
            ids[abi_name] = ids[f"x{i}"] = core_id(abi_name)
        _GPR_IDS.update(ids)
    return _GPR_IDS.get(name)


# Canonical order of single-letter extensions in an ISA string (ISA manual, "ISA Extension
# Naming Conventions").
CANONICAL_LETTERS = "iemafdqclbjtpvnsuhkorwxyzg"


def isa_letters(isa: int) -> list[str]:
    """Single-letter extensions of a ``config.isa`` bitmask (bit n = letter 'a' + n), in
    canonical order; H is left out (a KVM guest has no hypervisor extension)."""
    return [c for c in CANONICAL_LETTERS if c != "h" and isa >> (ord(c) - ord("a")) & 1]


def multi_letter_key(name: str) -> tuple[int, int, str]:
    """Sort key of multi-letter extensions: Z* (by their category letter in canonical order),
    then S*, then X*."""
    if name.startswith("z") and len(name) > 1:
        category = CANONICAL_LETTERS.find(name[1])
        return (0, category if category >= 0 else len(CANONICAL_LETTERS), name)
    return (1 if name.startswith("s") else 2, 0, name)
