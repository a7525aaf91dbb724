"""The RISC-V glue (accelerator, vCPU) on a fake of the wrapper layer.

A RISC-V KVM cannot run on these x86 machines, so :class:`KvmAccel` is given ``FakeKvm`` (see
conftest): the fake stands for the file descriptors only, and everything the glue decides
(boot contract, register names, interrupt line, ISA string, DBCN, exits) is observed on it.
"""

from __future__ import annotations

import errno
from typing import Any

import pytest

from kvmpy.accel.base import IRQ_M_EXT, IRQ_S_EXT, IRQ_S_SOFT, IRQ_S_TIMER, PRV_M, PRV_S, PRV_U
from kvmpy.accel.exits import (
    InternalErrorExit,
    IntrExit,
    MmioExit,
    SbiExit,
    SystemEvent,
    SystemEventExit,
    UnsupportedExit,
)
from kvmpy.accel.kvm import abi, onereg
from kvmpy.accel.kvm.kvm import KvmIoctlError
from kvmpy.accel.kvm.riscv import KvmAccel
from kvmpy.errors import AccelError
from kvmpy.memory import GuestRAM

ISA_RV64IMAFDC = 0x112D
H_BIT = 1 << (ord("h") - ord("a"))


def riscv_regs(extra: dict[int, int] | None = None) -> dict[int, int]:
    """The ONE_REG registers a Linux 6.1-like RISC-V KVM vCPU has."""
    regs = {onereg.config_id("isa"): ISA_RV64IMAFDC | H_BIT,
            onereg.config_id("zicbom_block_size"): 64,
            onereg.timer_id("frequency"): 10_000_000, onereg.timer_id("time"): 0,
            onereg.timer_id("compare"): 0, onereg.timer_id("state"): 0}
    for name in ("pc", *onereg.ABI_NAMES[1:], "mode"):
        regs[onereg.core_id(name)] = 0
    for name in onereg.CSR_NAMES[:-1]:
        regs[onereg.csr_id(name)] = 0
    for i in range(33):
        regs[onereg.fp_id(i, double=True)] = 0
    for index, name in enumerate(abi.KVM_RISCV_ISA_EXT_NAMES[:12]):
        regs[onereg.isa_ext_id(index)] = int(name in ("a", "c", "d", "f", "i", "m", "sstc",
                                                      "svpbmt", "zihintpause", "zicbom"))
    regs.update(extra or {})
    return regs


@pytest.fixture
def ram() -> Any:
    ram = GuestRAM(0x80000000, 1 << 20)
    yield ram
    ram.close()


@pytest.fixture
def machine(fake_kvm_types: Any, ram: Any) -> Any:
    """A KvmAccel with 2 harts on the fake wrapper layer."""
    fake_kvm_cls, _ = fake_kvm_types
    fake = fake_kvm_cls(riscv_regs({onereg.sbi_ext_id(abi.KVM_RISCV_SBI_EXT_DBCN): 0}))
    accel = KvmAccel(kvm_factory=lambda: fake)
    accel.init_machine(ram, 2)
    yield accel, fake.vms[0]
    accel.close()


def test_caps_come_from_config_isa_and_isa_ext_registers(fake_kvm_types: Any) -> None:
    fake_kvm_cls, _ = fake_kvm_types
    accel = KvmAccel(kvm_factory=lambda: fake_kvm_cls(riscv_regs(
        {onereg.config_id("satp_mode"): 9, onereg.timer_id("frequency"): 24_000_000})))
    caps = accel.caps
    assert caps.machine_mode is False
    assert caps.in_kernel_timer_ipi is True
    # letters in canonical order without H, then Z* by category, then S*
    assert caps.isa_extensions == ("i", "m", "a", "f", "d", "c", "zicbom", "zihintpause",
                                   "sstc", "svpbmt")
    assert caps.mmu_type == "riscv,sv48"
    assert caps.timebase_frequency == 24_000_000
    assert caps.firmware_refusal == \
        "Machine mode firmware is not supported in combination with KVM."
    accel.close()


def test_caps_default_to_sv39_without_satp_mode_register(fake_kvm_types: Any) -> None:
    fake_kvm_cls, _ = fake_kvm_types
    accel = KvmAccel(kvm_factory=lambda: fake_kvm_cls(riscv_regs()))
    assert accel.caps.mmu_type == "riscv,sv39"
    accel.close()


def test_init_machine_maps_ram_and_rom_and_creates_one_vcpu_per_hart(
        fake_kvm_types: Any, ram: Any) -> None:
    fake_kvm_cls, _ = fake_kvm_types
    fake = fake_kvm_cls(riscv_regs({onereg.sbi_ext_id(abi.KVM_RISCV_SBI_EXT_DBCN): 0}))
    rom = GuestRAM(0x1000, 0x1000, "riscv.sifive.mrom")
    accel = KvmAccel(kvm_factory=lambda: fake)
    accel.init_machine(ram, 4, roms=[rom])
    vm = fake.vms[0]
    assert vm.regions == [(0, ram.base, ram.size, ram.host_address, 0),
                          (1, 0x1000, 0x1000, rom.host_address, abi.KVM_MEM_READONLY)]
    assert [v.id for v in vm.vcpus] == [0, 1, 2, 3]
    assert [v.index for v in accel.vcpus] == [0, 1, 2, 3]
    # DBCN is forwarded to the VMM on every hart
    assert all(v.regs[onereg.sbi_ext_id(abi.KVM_RISCV_SBI_EXT_DBCN)] == 1 for v in vm.vcpus)
    assert accel.dbcn_enabled
    accel.close()
    assert all(v.closed for v in vm.vcpus) and vm.closed and fake.closed
    rom.close()


def test_kernel_without_dbcn_keeps_the_legacy_console(fake_kvm_types: Any, ram: Any) -> None:
    fake_kvm_cls, _ = fake_kvm_types
    accel = KvmAccel(kvm_factory=lambda: fake_kvm_cls(riscv_regs()))
    accel.init_machine(ram, 1)
    assert not accel.dbcn_enabled
    accel.close()


def test_failing_kvm_open_is_an_accel_error(ram: Any) -> None:
    def refuse() -> Any:
        raise PermissionError(errno.EACCES, "Permission denied", "/dev/kvm")

    accel = KvmAccel(kvm_factory=refuse)
    with pytest.raises(AccelError, match="Permission denied"):
        accel.init_machine(ram, 1)


def test_reset_follows_the_kvm_boot_contract(machine: Any) -> None:
    accel, vm = machine
    boot, secondary = accel.vcpus
    fd0 = vm.vcpus[0]
    fd0.regs[onereg.core_id("t0")] = 0x1234
    fd0.regs[onereg.csr_id("satp")] = 0x8000000000012345
    boot.reset(0x80200000, PRV_S, 0, 0x82200000, stopped=False)
    secondary.reset(0x80200000, PRV_S, 1, 0x82200000, stopped=True)
    assert boot.get_reg("pc") == 0x80200000
    assert boot.get_reg("a0") == 0 and boot.get_reg("a1") == 0x82200000
    assert boot.get_reg("t0") == 0 and boot.get_reg("satp") == 0
    assert fd0.regs[onereg.csr_id("scounteren")] == 0x7  # CY, TM, IR from U-mode, as KVM resets
    assert boot.get_reg("priv") == PRV_S
    assert fd0.regs[onereg.core_id("mode")] == abi.KVM_RISCV_MODE_S
    assert fd0.mp_state == abi.KVM_MP_STATE_RUNNABLE
    assert vm.vcpus[1].mp_state == abi.KVM_MP_STATE_STOPPED
    assert secondary.stopped and not boot.stopped
    assert fd0.interrupts == [abi.KVM_INTERRUPT_UNSET]     # external line low after reset
    assert secondary.get_reg("a0") == 1


def test_reset_refuses_machine_mode(machine: Any) -> None:
    accel, _ = machine
    with pytest.raises(AccelError, match="M-mode"):
        accel.vcpus[0].reset(0x1000, PRV_M, 0, 0, stopped=False)


def test_only_the_external_interrupt_goes_to_kvm_interrupt(machine: Any) -> None:
    accel, vm = machine
    vcpu, fd = accel.vcpus[1], vm.vcpus[1]
    vcpu.set_irq(IRQ_S_EXT, True)
    vcpu.set_irq(IRQ_S_TIMER, True)      # in-kernel timer
    vcpu.set_irq(IRQ_S_SOFT, True)       # in-kernel IPIs
    vcpu.set_irq(IRQ_M_EXT, True)        # no M-mode under KVM
    vcpu.set_irq(IRQ_S_EXT, False)
    assert fd.interrupts == [abi.KVM_INTERRUPT_SET, abi.KVM_INTERRUPT_UNSET]


def test_registers_by_name_use_one_reg_ids(machine: Any) -> None:
    accel, vm = machine
    vcpu, fd = accel.vcpus[0], vm.vcpus[0]
    vcpu.set_reg("a0", 7)
    assert fd.regs[0x803000000200000A] == 7
    assert vcpu.get_reg("x10") == 7
    vcpu.set_reg("fp", 0x55)
    assert vcpu.get_reg("s0") == 0x55 and vcpu.get_reg("x8") == 0x55
    vcpu.set_reg("x0", 99)
    assert vcpu.get_reg("zero") == 0
    vcpu.set_reg("f3", 0x400921FB54442D18)
    assert fd.regs[onereg.fp_id(3, double=True)] == 0x400921FB54442D18
    vcpu.set_reg("fcsr", 0x20)
    assert fd.regs[0x8020000006000020] == 0x20
    vcpu.set_reg("stvec", 0x80200100)
    assert fd.regs[onereg.csr_id("stvec")] == 0x80200100
    vcpu.set_reg("priv", PRV_U)
    assert vcpu.get_reg("priv") == PRV_U
    assert vcpu.get_reg("mhartid") == 0
    # The board attaches harts with mtimecmp; under KVM it is only remembered.
    vcpu.set_reg("mtimecmp", 1234)
    assert vcpu.get_reg("mtimecmp") == 1234
    with pytest.raises(AccelError, match="'mstatus' is not accessible under KVM"):
        vcpu.get_reg("mstatus")
    with pytest.raises(AccelError, match="senvcfg"):   # a 6.1 kernel lacks senvcfg
        vcpu.get_reg("senvcfg")
    with pytest.raises(AccelError, match="privilege 3"):
        vcpu.set_reg("priv", PRV_M)


def test_run_passes_exits_through_and_completes_them_on_the_wrapper(machine: Any) -> None:
    accel, vm = machine
    vcpu, fd = accel.vcpus[0], vm.vcpus[0]
    fd.script = [MmioExit(0x10000000, 1, False), SbiExit(0x01, 0, (65, 0, 0, 0, 0, 0)),
                 SystemEventExit(SystemEvent.SHUTDOWN, 0), IntrExit()]
    assert vcpu.run() == MmioExit(0x10000000, 1, False)
    vcpu.complete_mmio_read(0x60)
    assert fd.mmio_read_value == 0x60
    assert vcpu.run() == SbiExit(0x01, 0, (65, 0, 0, 0, 0, 0))
    vcpu.complete_sbi(0, 0)
    assert fd.sbi_ret == (0, 0)
    assert vcpu.run() == SystemEventExit(SystemEvent.SHUTDOWN, 0)
    assert isinstance(vcpu.run(), IntrExit)


def test_seed_csr_exits_are_completed_inside_run(machine: Any, csr_exit: Any) -> None:
    accel, vm = machine
    vcpu, fd = accel.vcpus[0], vm.vcpus[0]
    fd.script = [csr_exit(0x015), MmioExit(0x10000000, 1, True, 0x41)]
    assert vcpu.run() == MmioExit(0x10000000, 1, True, 0x41)
    assert fd.kvm_run.riscv_csr.ret_value >> 30 == 0b10    # OPST = ES16


def test_kvm_errors_become_internal_errors_with_a_register_dump(machine: Any) -> None:
    accel, vm = machine
    vcpu, fd = accel.vcpus[0], vm.vcpus[0]
    fd.regs[onereg.core_id("pc")] = 0x80200010
    fd.regs[onereg.csr_id("scause")] = 0x2
    fd.regs[onereg.core_id("mode")] = 1
    fd.script = [KvmIoctlError("KVM_RUN", errno.EFAULT),
                 InternalErrorExit("KVM_EXIT_INTERNAL_ERROR: suberror 1"),
                 UnsupportedExit(99)]
    first = vcpu.run()
    assert isinstance(first, InternalErrorExit)
    lines = first.message.splitlines()
    assert lines[0] == "KVM_RUN failed: Bad address"
    assert lines[1] == "pc  0000000080200010  mode S"
    assert "scause 0000000000000002" in first.message
    assert "a0  0000000000000000" in first.message
    second = vcpu.run()
    assert isinstance(second, InternalErrorExit)
    assert second.message.startswith("KVM_EXIT_INTERNAL_ERROR: suberror 1\npc  ")
    assert vcpu.run() == UnsupportedExit(99)


def test_kick_sets_immediate_exit(machine: Any) -> None:
    accel, vm = machine
    accel.vcpus[1].kick()
    assert vm.vcpus[1].kvm_run.immediate_exit == 1
