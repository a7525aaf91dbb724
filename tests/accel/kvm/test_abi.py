"""The cffi cdef against the real riscv64 headers: an offsetof/sizeof/ioctl probe built with
riscv64-linux-gnu-gcc and run under qemu-riscv64-static.

Debian 12's riscv64 headers are Linux 6.1; fields and numbers added later (config.mvendorid ..
satp_mode, csr.senvcfg, ISA_EXT ids past ZICBOM, SBI_EXT) are checked against the reference
numbers of the Linux 6.10 uapi (computed there with the same kind of probe).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kvmpy.accel.kvm import abi, onereg
from kvmpy.accel.kvm.abi import ffi

CC = "riscv64-linux-gnu-gcc"
RUNNER = "qemu-riscv64-static"

# (C expression, our value) -- sizes and offsets of the 6.1 layouts.
STRUCTS: dict[str, list[str]] = {
    "kvm_run": ["request_interrupt_window", "immediate_exit", "exit_reason",
                "ready_for_interrupt_injection", "if_flag", "flags", "cr8", "apic_base",
                "hw.hardware_exit_reason", "fail_entry.hardware_entry_failure_reason",
                "fail_entry.cpu", "io.direction", "io.size", "io.port", "io.count",
                "io.data_offset", "mmio.phys_addr", "mmio.data", "mmio.len", "mmio.is_write",
                "internal.suberror", "internal.ndata", "internal.data",
                "system_event.type", "system_event.ndata", "system_event.flags",
                "system_event.data", "riscv_sbi.extension_id", "riscv_sbi.function_id",
                "riscv_sbi.args", "riscv_sbi.ret", "riscv_csr.csr_num", "riscv_csr.new_value",
                "riscv_csr.write_mask", "riscv_csr.ret_value", "kvm_valid_regs",
                "kvm_dirty_regs", "s"],
    "kvm_userspace_memory_region": ["slot", "flags", "guest_phys_addr", "memory_size",
                                    "userspace_addr"],
    "kvm_one_reg": ["id", "addr"],
    "kvm_reg_list": ["n", "reg"],
    "kvm_interrupt": ["irq"],
    "kvm_mp_state": ["mp_state"],
    "kvm_dirty_log": ["slot", "padding1", "dirty_bitmap"],
    "kvm_enable_cap": ["cap", "flags", "args", "pad"],
    "kvm_ioeventfd": ["datamatch", "addr", "len", "fd", "flags", "pad"],
    "kvm_irqfd": ["fd", "gsi", "flags", "resamplefd", "pad"],
    "kvm_riscv_timer": ["frequency", "time", "compare", "state"],
}
# Structs that grew after 6.1: the 6.1 prefix is probed, the size is the 6.10 reference.
PREFIX_STRUCTS: dict[str, tuple[list[str], int]] = {
    "kvm_riscv_config": (["isa", "zicbom_block_size"], 56),
    "kvm_riscv_csr": (["sstatus", "sie", "stvec", "sscratch", "sepc", "scause", "stval", "sip",
                       "satp", "scounteren"], 88),
}
CORE_FIELDS = ["pc", "ra", "sp", "gp", "tp", "t0", "t1", "t2", "s0", "s1", "a0", "a7", "s2",
               "s11", "t3", "t6"]

IOCTLS = [name for name in abi.IOCTL_NAMES.values()]
CONSTANTS = [
    "KVM_API_VERSION", "KVM_CAP_IRQCHIP", "KVM_CAP_USER_MEMORY", "KVM_CAP_NR_MEMSLOTS",
    "KVM_CAP_MP_STATE", "KVM_CAP_SYNC_MMU", "KVM_CAP_IRQFD", "KVM_CAP_IOEVENTFD",
    "KVM_CAP_ONE_REG", "KVM_CAP_READONLY_MEM", "KVM_CAP_IMMEDIATE_EXIT", "KVM_EXIT_UNKNOWN",
    "KVM_EXIT_EXCEPTION", "KVM_EXIT_IO", "KVM_EXIT_HYPERCALL", "KVM_EXIT_DEBUG", "KVM_EXIT_HLT",
    "KVM_EXIT_MMIO", "KVM_EXIT_SHUTDOWN", "KVM_EXIT_FAIL_ENTRY", "KVM_EXIT_INTR",
    "KVM_EXIT_INTERNAL_ERROR", "KVM_EXIT_SYSTEM_EVENT", "KVM_EXIT_RISCV_SBI", "KVM_EXIT_RISCV_CSR",
    "KVM_SYSTEM_EVENT_SHUTDOWN", "KVM_SYSTEM_EVENT_RESET", "KVM_SYSTEM_EVENT_CRASH",
    "KVM_SYSTEM_EVENT_WAKEUP", "KVM_SYSTEM_EVENT_SUSPEND", "KVM_MEM_LOG_DIRTY_PAGES",
    "KVM_MEM_READONLY", "KVM_IOEVENTFD_FLAG_DATAMATCH", "KVM_IOEVENTFD_FLAG_PIO",
    "KVM_IOEVENTFD_FLAG_DEASSIGN", "KVM_IRQFD_FLAG_DEASSIGN", "KVM_MP_STATE_RUNNABLE",
    "KVM_MP_STATE_STOPPED", "KVM_INTERRUPT_SET", "KVM_INTERRUPT_UNSET", "KVM_RISCV_MODE_S",
    "KVM_RISCV_MODE_U", "KVM_RISCV_TIMER_STATE_OFF", "KVM_RISCV_TIMER_STATE_ON", "KVM_REG_RISCV",
    "KVM_REG_SIZE_SHIFT", "KVM_REG_SIZE_U32", "KVM_REG_SIZE_U64", "KVM_REG_RISCV_TYPE_SHIFT",
]
# ONE_REG ids as the 6.1 header macros compute them.
REG_IDS = {
    "config_isa": ("KVM_REG_RISCV | KVM_REG_SIZE_U64 | KVM_REG_RISCV_CONFIG"
                   " | KVM_REG_RISCV_CONFIG_REG(isa)", onereg.config_id("isa")),
    "core_pc": ("KVM_REG_RISCV | KVM_REG_SIZE_U64 | KVM_REG_RISCV_CORE"
                " | KVM_REG_RISCV_CORE_REG(regs.pc)", onereg.core_id("pc")),
    "core_a1": ("KVM_REG_RISCV | KVM_REG_SIZE_U64 | KVM_REG_RISCV_CORE"
                " | KVM_REG_RISCV_CORE_REG(regs.a1)", onereg.core_id("a1")),
    "core_mode": ("KVM_REG_RISCV | KVM_REG_SIZE_U64 | KVM_REG_RISCV_CORE"
                  " | KVM_REG_RISCV_CORE_REG(mode)", onereg.core_id("mode")),
    "csr_satp": ("KVM_REG_RISCV | KVM_REG_SIZE_U64 | KVM_REG_RISCV_CSR"
                 " | KVM_REG_RISCV_CSR_REG(satp)", onereg.csr_id("satp")),
    "timer_state": ("KVM_REG_RISCV | KVM_REG_SIZE_U64 | KVM_REG_RISCV_TIMER"
                    " | KVM_REG_RISCV_TIMER_REG(state)", onereg.timer_id("state")),
    "fp_f_f3": ("KVM_REG_RISCV | KVM_REG_SIZE_U32 | KVM_REG_RISCV_FP_F"
                " | KVM_REG_RISCV_FP_F_REG(f[3])", onereg.fp_id(3, double=False)),
    "fp_f_fcsr": ("KVM_REG_RISCV | KVM_REG_SIZE_U32 | KVM_REG_RISCV_FP_F"
                  " | KVM_REG_RISCV_FP_F_REG(fcsr)", onereg.fp_id(32, double=False)),
    "fp_d_f31": ("KVM_REG_RISCV | KVM_REG_SIZE_U64 | KVM_REG_RISCV_FP_D"
                 " | KVM_REG_RISCV_FP_D_REG(f[31])", onereg.fp_id(31, double=True)),
    "fp_d_fcsr": ("KVM_REG_RISCV | KVM_REG_SIZE_U32 | KVM_REG_RISCV_FP_D"
                  " | KVM_REG_RISCV_FP_D_REG(fcsr)", onereg.fp_id(32, double=True)),
    "isa_ext_sstc": ("KVM_REG_RISCV | KVM_REG_SIZE_U64 | KVM_REG_RISCV_ISA_EXT"
                     " | KVM_RISCV_ISA_EXT_SSTC", onereg.isa_ext_id(8)),
}
ISA_EXT_61 = ["A", "C", "D", "F", "H", "I", "M", "SVPBMT", "SSTC", "SVINVAL", "ZIHINTPAUSE",
              "ZICBOM"]

# Linux 6.10 reference numbers (shared/reference/kvm-riscv.md) for what 6.1 lacks.
REFERENCE_IDS = {
    "config.satp_mode": (onereg.config_id("satp_mode"), 0x8030000001000006),
    "config.mvendorid": (onereg.config_id("mvendorid"), 0x8030000001000002),
    "config.zicboz_block_size": (onereg.config_id("zicboz_block_size"), 0x8030000001000005),
    "csr.senvcfg": (onereg.csr_id("senvcfg"), 0x803000000300000A),
    "sbi_ext.DBCN": (onereg.sbi_ext_id(abi.KVM_RISCV_SBI_EXT_DBCN), 0x8030000008000009),
    "isa_ext.A": (onereg.isa_ext_id(0), 0x8030000007000000),
}
REFERENCE_ISA_EXT = {"zicboz": 12, "zbb": 13, "ssaia": 14, "v": 15, "zicntr": 19, "zicsr": 20,
                     "zifencei": 21, "smstateen": 23, "zicond": 24, "zkr": 32, "zfh": 46,
                     "zacas": 53, "sscofpmf": 54, "zimop": 55, "zawrs": 61, "zalrsc": 70}


def _probe_source() -> tuple[str, dict[str, int]]:
    lines = []
    expected: dict[str, int] = {}

    def emit(key: str, c_expr: str, value: int) -> None:
        lines.append(f'    printf("{key} %llu\\n", (unsigned long long)({c_expr}));')
        expected[key] = value

    for struct, fields in STRUCTS.items():
        emit(f"sizeof.{struct}", f"sizeof(struct {struct})", ffi.sizeof(f"struct {struct}"))
        for field in fields:
            emit(f"offsetof.{struct}.{field}", f"offsetof(struct {struct}, {field})",
                 ffi.offsetof(f"struct {struct}", *field.split(".")))
    for struct, (fields, _) in PREFIX_STRUCTS.items():
        for field in fields:
            emit(f"offsetof.{struct}.{field}", f"offsetof(struct {struct}, {field})",
                 ffi.offsetof(f"struct {struct}", field))
    for field in CORE_FIELDS:
        emit(f"offsetof.kvm_riscv_core.regs.{field}", f"offsetof(struct kvm_riscv_core, "
             f"regs.{field})", ffi.offsetof("struct kvm_riscv_core", "regs", field))
    emit("offsetof.kvm_riscv_core.mode", "offsetof(struct kvm_riscv_core, mode)",
         ffi.offsetof("struct kvm_riscv_core", "mode"))
    emit("sizeof.kvm_riscv_core", "sizeof(struct kvm_riscv_core)",
         ffi.sizeof("struct kvm_riscv_core"))
    for name in IOCTLS + CONSTANTS:
        emit(name, name, getattr(abi, name))
    for key, (c_expr, value) in REG_IDS.items():
        emit(f"reg.{key}", c_expr, value)
    for index, name in enumerate(ISA_EXT_61):
        emit(f"isa_ext.{name}", f"KVM_RISCV_ISA_EXT_{name}",
             abi.KVM_RISCV_ISA_EXT_NAMES.index(name.lower()))
        assert index == abi.KVM_RISCV_ISA_EXT_NAMES.index(name.lower())
    source = "\n".join([
        "#include <stddef.h>", "#include <stdio.h>", "#include <linux/kvm.h>",
        "int main(void) {", *lines, "    return 0;", "}", ""])
    return source, expected


@pytest.fixture(scope="module")
def probe_output(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, int], dict[str, int]]:
    for tool in (CC, RUNNER):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (gcc-riscv64-linux-gnu, qemu-user-static)")
    source, expected = _probe_source()
    workdir: Path = tmp_path_factory.mktemp("abi-probe")
    (workdir / "probe.c").write_text(source)
    subprocess.run([CC, "-static", "-O0", "-Wall", "-Wextra", "-Werror", "-o",
                    str(workdir / "probe"), str(workdir / "probe.c")], check=True)
    result = subprocess.run([RUNNER, str(workdir / "probe")], check=True, capture_output=True,
                            text=True)
    actual = {key: int(value) for key, value in
              (line.split() for line in result.stdout.splitlines())}
    return actual, expected


def test_layouts_and_numbers_match_the_riscv64_headers(
        probe_output: tuple[dict[str, int], dict[str, int]]) -> None:
    actual, expected = probe_output
    assert set(actual) == set(expected)
    mismatches = {k: (expected[k], actual[k]) for k in expected if expected[k] != actual[k]}
    assert mismatches == {}
    assert actual["sizeof.kvm_run"] == 2352


def test_ioctl_argument_sizes_are_the_declared_layouts() -> None:
    """The ioctl numbers are computed from STRUCT_SIZES without parsing the cdef."""
    assert {name: ffi.sizeof(name) for name in abi.STRUCT_SIZES} == abi.STRUCT_SIZES


def test_kvm_run_exit_union_offsets() -> None:
    assert ffi.offsetof("struct kvm_run", "mmio") == 32
    assert ffi.offsetof("struct kvm_run", "riscv_sbi", "ret") == 96
    assert ffi.offsetof("struct kvm_run", "s") == 304


def test_structs_newer_than_the_headers_match_the_reference() -> None:
    for struct, (_, size) in PREFIX_STRUCTS.items():
        assert ffi.sizeof(f"struct {struct}") == size
    assert ffi.offsetof("struct kvm_riscv_config", "satp_mode") == 48
    assert ffi.offsetof("struct kvm_riscv_csr", "senvcfg") == 80
    assert {k: hex(ours) for k, (ours, _) in REFERENCE_IDS.items()} == \
        {k: hex(ref) for k, (_, ref) in REFERENCE_IDS.items()}
    assert {n: abi.KVM_RISCV_ISA_EXT_NAMES.index(n) for n in REFERENCE_ISA_EXT} == \
        REFERENCE_ISA_EXT
    assert len(abi.KVM_RISCV_ISA_EXT_NAMES) == 71


def test_ioctl_numbers_match_the_reference() -> None:
    reference = {"KVM_RUN": 0xAE80, "KVM_CREATE_VCPU": 0xAE41, "KVM_GET_ONE_REG": 0x4010AEAB,
                 "KVM_SET_ONE_REG": 0x4010AEAC, "KVM_GET_REG_LIST": 0xC008AEB0,
                 "KVM_INTERRUPT": 0x4004AE86, "KVM_GET_DIRTY_LOG": 0x4010AE42,
                 "KVM_SET_USER_MEMORY_REGION": 0x4020AE46, "KVM_GET_MP_STATE": 0x8004AE98,
                 "KVM_SET_MP_STATE": 0x4004AE99, "KVM_ENABLE_CAP": 0x4068AEA3}
    assert {name: getattr(abi, name) for name in reference} == reference
