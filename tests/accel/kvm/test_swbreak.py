"""Software breakpoints for RISC-V KVM: the patch bookkeeping over real guest RAM, the step
decoder against assembler output, and the glue (KVM_SET_GUEST_DEBUG, KVM_EXIT_DEBUG, the
guest's own ebreak, steps) on the fake wrapper layer of conftest."""

from __future__ import annotations

from typing import Any

import pytest

from kvmpy.accel.base import PRV_S, PRV_U
from kvmpy.accel.exits import DebugExit, HaltExit, IntrExit, UnsupportedExit
from kvmpy.accel.kvm import abi
from kvmpy.accel.kvm.riscv import KvmAccel
from kvmpy.accel.kvm.swbreak import C_EBREAK, EBREAK, SwBreakpoints, next_pcs
from kvmpy.errors import AccelError
from kvmpy.memory import GuestRAM
from tests.accel.kvm.test_riscv_glue import riscv_regs

BASE = 0x80000000
ADDI = (0xFF010113).to_bytes(4, "little")  # addi sp, sp, -16
C_ADDI = (0x1141).to_bytes(2, "little")  # c.addi sp, -16


@pytest.fixture
def ram() -> Any:
    ram = GuestRAM(BASE, 1 << 20)
    yield ram
    ram.close()


@pytest.fixture
def bps(ram: GuestRAM) -> SwBreakpoints:
    return SwBreakpoints(ram.read, ram.write)


def test_insert_patches_by_instruction_size_and_remove_restores(
        ram: GuestRAM, bps: SwBreakpoints) -> None:
    ram.write(BASE, ADDI + C_ADDI + ADDI)
    bps.insert(0x1000, BASE, 4, "gdb")
    bps.insert(0x1004, BASE + 4, 4, "gdb")  # gdb said 4, the instruction is compressed
    bps.insert(0x1006, BASE + 6, 2, "gdb")  # c.ebreak over a 4-byte one: gdb's kind 2
    assert ram.read(BASE, 10) == EBREAK + C_EBREAK + C_EBREAK + ADDI[2:]
    bps.remove(0x1004, "gdb")
    assert ram.read(BASE, 10) == EBREAK + C_ADDI + C_EBREAK + ADDI[2:]
    bps.clear()
    assert ram.read(BASE, 10) == ADDI + C_ADDI + ADDI
    assert not bps


def test_owners_share_one_patch(ram: GuestRAM, bps: SwBreakpoints) -> None:
    ram.write(BASE, ADDI)
    bps.insert(0x1000, BASE, 4, "gdb")
    bps.insert(0x1000, BASE, 4, "step")
    bps.remove_owner("step")
    assert ram.read(BASE, 4) == EBREAK
    bps.remove(0x1000, "gdb")
    assert ram.read(BASE, 4) == ADDI


def test_reads_see_originals_and_writes_go_under_the_patch(
        ram: GuestRAM, bps: SwBreakpoints) -> None:
    ram.write(BASE, bytes(range(16)))
    ram.write(BASE + 4, ADDI)
    bps.insert(0x1004, BASE + 4, 4, "gdb")
    assert bps.hide(BASE, ram.read(BASE, 16)) == bytes(range(4)) + ADDI + bytes(range(8, 16))
    assert bps.hide(BASE + 6, ram.read(BASE + 6, 1)) == ADDI[2:3]  # a part of the patch
    # gdb writes over half of the patched instruction: kept under the patch, restored later
    store = bps.write_under(BASE + 2, b"\xaa\xbb\xcc\xdd")
    ram.write(BASE + 2, store)
    assert ram.read(BASE, 8) == bytes(range(2)) + b"\xaa\xbb" + EBREAK
    assert bps.hide(BASE, ram.read(BASE, 8)) == bytes(range(2)) + b"\xaa\xbb\xcc\xdd" + ADDI[2:]
    bps.clear()
    assert ram.read(BASE, 8) == bytes(range(2)) + b"\xaa\xbb\xcc\xdd" + ADDI[2:]


def test_lift_for_a_step_then_patch_again(ram: GuestRAM, bps: SwBreakpoints) -> None:
    ram.write(BASE, ADDI)
    bps.insert(0x1000, BASE, 4, "gdb")
    assert bps.lift(0x1000)
    assert ram.read(BASE, 4) == ADDI
    bps.relower()
    assert ram.read(BASE, 4) == EBREAK


# Encodings from riscv64-linux-gnu-as -march=rv64gc (label a at 0, b at 0x26), and from the
# bundled vmlinux (`j __do_sys_newuname`).
REGS = {"x10": 5, "x15": 0x80001001, "x5": 0x80002000, "sepc": 0x1234, "stvec": 0x80003001}


@pytest.mark.parametrize(("insn", "pc", "user", "expected"), [
    (0xA01D, 0x0, False, {0x26}),  # c.j b
    (0xDD7D, 0x2, False, {0x0, 0x4}),  # c.beqz a0, a
    (0xE08D, 0x4, False, {0x26, 0x6}),  # c.bnez s1, b
    (0x8782, 0x6, False, {0x80001000}),  # c.jr a5
    (0x9282, 0x8, False, {0x80002000}),  # c.jalr t0
    (0xFEB50BE3, 0xA, False, {0x0, 0xE}),  # beq a0, a1, a
    (0x00B51C63, 0xE, False, {0x26, 0x12}),  # bne a0, a1, b
    (0x00C780E7, 0x12, False, {0x8000100C}),  # jalr 12(a5)
    (0x1141, 0x16, False, {0x18}),  # c.addi
    (0xFF010113, 0x18, False, {0x1C}),  # addi
    (0x10200073, 0x1A, False, {0x1234}),  # sret
    (0x00000073, 0x1E, False, {0x22}),  # ecall from S-mode: the SBI returns
    (0x00000073, 0x1E, True, {0x80003000}),  # ecall from U-mode: the trap vector
    (0x9BBFE06F, 0xFFFFFFFF8001D106, False, {0xFFFFFFFF8001BAC0}),  # j __do_sys_newuname
])
def test_next_pcs(insn: int, pc: int, user: bool, expected: set[int]) -> None:
    assert next_pcs(insn, pc, REGS.__getitem__, user) == expected


# -- the glue -------------------------------------------------------------------------------

PC = BASE + 0x100


@pytest.fixture
def machine(fake_kvm_types: Any, ram: GuestRAM) -> Any:
    """A KvmAccel with 2 harts; ``debug`` says whether the kernel has guest debugging."""
    fake_kvm_cls, _ = fake_kvm_types

    def make(debug: bool) -> tuple[KvmAccel, Any]:
        fake = fake_kvm_cls(riscv_regs())
        fake.debug_supported = debug
        accel = KvmAccel(kvm_factory=lambda: fake)
        accel.init_machine(ram, 2)
        made.append(accel)
        return accel, fake.vms[0]

    made: list[KvmAccel] = []
    yield make
    for accel in made:
        accel.close()


def debug_exit(fd: Any) -> UnsupportedExit:
    fd.kvm_run.exit_reason = abi.KVM_EXIT_DEBUG
    return UnsupportedExit(abi.KVM_EXIT_DEBUG)


def test_without_guest_debug_breakpoints_are_refused(machine: Any, ram: GuestRAM) -> None:
    accel, _ = machine(False)
    assert accel.guest_debug is False
    ram.write(PC, ADDI)
    with pytest.raises(AccelError, match="KVM_SET_GUEST_DEBUG"):
        accel.set_sw_breakpoints({PC: 4}, 0)
    assert ram.read(PC, 4) == ADDI


def test_breakpoints_enable_guest_debug_on_every_vcpu(machine: Any, ram: GuestRAM) -> None:
    accel, vm = machine(True)
    ram.write(PC, ADDI)
    accel.set_sw_breakpoints({PC: 4}, 0)
    assert ram.read(PC, 4) == EBREAK
    control = abi.KVM_GUESTDBG_ENABLE | abi.KVM_GUESTDBG_USE_SW_BP
    assert [fd.debug_control for fd in vm.vcpus] == [control, control]
    assert accel.hide_breakpoints(PC, ram.read(PC, 4)) == ADDI
    accel.set_sw_breakpoints({}, 0)
    assert ram.read(PC, 4) == ADDI
    assert [fd.debug_control for fd in vm.vcpus] == [0, 0]


def test_watchpoints_are_refused(machine: Any) -> None:
    accel, _ = machine(True)
    accel.set_watchpoints([])
    with pytest.raises(AccelError, match="watchpoints"):
        accel.set_watchpoints([(PC, 4, "write")])


def test_debug_exit_at_a_breakpoint_stops(machine: Any, ram: GuestRAM) -> None:
    accel, vm = machine(True)
    ram.write(PC, ADDI)
    accel.set_sw_breakpoints({PC: 4}, 0)
    vcpu = accel.vcpus[1]
    vcpu.set_reg("pc", PC)
    vm.vcpus[1].script = [debug_exit]
    assert vcpu.run() == DebugExit("breakpoint")


def test_the_guests_own_ebreak_is_its_breakpoint_exception(machine: Any, ram: GuestRAM) -> None:
    accel, vm = machine(True)
    ram.write(PC, ADDI)
    accel.set_sw_breakpoints({PC: 4}, 0)
    vcpu = accel.vcpus[0]
    own = PC + 0x40
    vcpu.set_reg("pc", own)
    vcpu.set_reg("priv", PRV_U)
    vcpu.set_reg("sstatus", 1 << 1)  # SIE
    vcpu.set_reg("stvec", BASE + 0x801)  # vectored: exceptions still go to the base
    vm.vcpus[0].script = [debug_exit, HaltExit()]
    assert isinstance(vcpu.run(), HaltExit)  # given to the guest, then ran on
    assert vcpu.get_reg("sepc") == own
    assert vcpu.get_reg("scause") == 3
    assert vcpu.get_reg("stval") == own
    assert vcpu.get_reg("sstatus") == 1 << 5  # SPIE = SIE, SIE = 0, SPP = U
    assert vcpu.get_reg("priv") == PRV_S
    assert vcpu.get_reg("pc") == BASE + 0x800


def test_step_off_a_breakpoint_by_a_temporary_one(machine: Any, ram: GuestRAM) -> None:
    accel, vm = machine(True)
    jump = (0x9BBFE06F).to_bytes(4, "little")  # j .-0x1646
    target = PC - 0x1646 + 0x2000
    ram.write(PC + 0x2000, jump)
    ram.write(target, C_ADDI)
    at = PC + 0x2000
    accel.set_sw_breakpoints({at: 4}, 0)
    vcpu = accel.vcpus[0]
    vcpu.set_reg("pc", at)
    vcpu.set_single_step(True)
    try:
        assert ram.read(at, 4) == jump  # lifted while the step runs
        assert ram.read(target, 2) == C_EBREAK
        vm.vcpus[0].script = [lambda fd: (vcpu.set_reg("pc", target), debug_exit(fd))[1]]
        assert vcpu.run() == DebugExit("step")
    finally:
        vcpu.set_single_step(False)
    assert ram.read(at, 4) == EBREAK
    assert ram.read(target, 2) == C_ADDI


def test_a_step_that_does_not_end_stops_at_the_timeout(machine: Any, ram: GuestRAM) -> None:
    accel, vm = machine(True)
    ram.write(PC, ADDI)
    vcpu = accel.vcpus[0]
    vcpu.set_reg("pc", PC)
    vcpu.set_single_step(True)
    try:
        vcpu._step_timeout(vcpu._step_count - 1)  # a timer of an earlier step: nothing
        vm.vcpus[0].script = [IntrExit(), IntrExit()]
        assert vcpu.run() == IntrExit()
        vcpu._step_timeout(vcpu._step_count)  # what this step's timer does
        assert vcpu.run() == DebugExit("step")
    finally:
        vcpu.set_single_step(False)
    assert ram.read(PC, 8) == ADDI + bytes(4)
    assert vm.vcpus[0].debug_control == 0

