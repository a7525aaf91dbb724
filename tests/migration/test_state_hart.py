"""A hart's architectural state: taken from the interpreter core in the middle of a program
(an LR/SC pair, FP, CSRs, timer compares, triggers), loaded into a fresh engine over a copy of
RAM, and the program ends the same way in both; the KVM mapping of the same schema through
ONE_REG; and the checks that refuse a bad hart state."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kvmpy.accel.base import PRV_M, PRV_S
from kvmpy.accel.exits import IntrExit, MmioExit
from kvmpy.accel.tcg import TcgAccel, unavailable_reason
from kvmpy.memory import GuestRAM
from kvmpy.migration import VmStateError
from kvmpy.migration.codec import decode, encode
from kvmpy.migration.hart import check_hart_state

AS = shutil.which("riscv64-unknown-elf-as")
LD = shutil.which("riscv64-unknown-elf-ld")
OBJCOPY = shutil.which("riscv64-unknown-elf-objcopy")
RAM_BASE = 0x80000000
DONE = 0x10000100

needs_core = pytest.mark.skipif(unavailable_reason() is not None,
                                reason=f"tcg core not built: {unavailable_reason()}")
needs_as = pytest.mark.skipif(AS is None or LD is None or OBJCOPY is None,
                              reason="riscv64-unknown-elf-as/ld/objcopy are not installed")

PROGRAM = """
    li t0, 0x80001000
    li t1, 5
    fcvt.d.l f1, t1
    lr.d t2, (t0)
    addi t2, t2, 1
    sc.d t3, t2, (t0)
    fadd.d f2, f1, f1
    fcvt.l.d t4, f2
    csrr t5, mscratch
    li t6, 0x10000100
    sd t3, 0(t6)
"""
STEPS_BEFORE_SAVE = 7    # up to and including the lr.d and the addi after it


def assemble(tmp_path: Path, source: str) -> bytes:
    src, obj, elf, binary = (tmp_path / n for n in ("g.S", "g.o", "g.elf", "g.bin"))
    src.write_text(".option norvc\n.text\n" + source + "\n")
    assert AS is not None and LD is not None and OBJCOPY is not None
    subprocess.run([AS, "-march=rv64gc", "-o", str(obj), str(src)], check=True)
    subprocess.run([LD, f"-Ttext=0x{RAM_BASE:x}", "-o", str(elf), str(obj)], check=True)
    subprocess.run([OBJCOPY, "-O", "binary", str(elf), str(binary)], check=True)
    return binary.read_bytes()


def engine(ram: GuestRAM) -> TcgAccel:
    accel = TcgAccel()
    accel.init_machine(ram, 1)
    return accel


def run_to_done(accel: TcgAccel) -> MmioExit:
    for _ in range(100):
        exit_ = accel.vcpus[0].run()
        if isinstance(exit_, MmioExit):
            return exit_
        assert isinstance(exit_, IntrExit)
    raise AssertionError("the program did not finish")


CSR_VALUES = {"mscratch": 0x1234_5678_9ABC_DEF0, "sscratch": 0x55, "mtvec": 0x80000100,
              "stvec": 0x80000200, "mepc": 0x80000300, "sepc": 0x80000400, "mcause": 5,
              "scause": 8, "mtval": 0xBAD, "stval": 0xBEEF, "medeleg": 0xB1FF,
              "mideleg": 0x222, "mie": 0xAAA, "mcounteren": 7, "scounteren": 5,
              "pmpaddr3": 0x1234, "pmpcfg0": 0x0F00_0000, "tselect": 1, "tdata2": 0x9000_0000,
              "menvcfg": 1 << 63, "stimecmp": 123_456_789}


@needs_core
@needs_as
def test_tcg_hart_state_round_trip_mid_program(tmp_path: Path) -> None:
    code = assemble(tmp_path, PROGRAM)
    ram = GuestRAM(RAM_BASE, 1 << 20)
    ram.write(RAM_BASE, code)
    ram.write_int(0x80001000, 8, 41)
    a = engine(ram)
    a.vcpus[0].reset(RAM_BASE, PRV_M, 0, 0, False)
    vcpu = a.vcpus[0]
    vcpu.set_reg("mstatus", 1 << 13)              # FS = initial
    for name, value in CSR_VALUES.items():
        vcpu.set_reg(name, value)
    vcpu.set_reg("mtimecmp", 1 << 62)
    vcpu.set_sbi_timer(1 << 61)
    vcpu.step(STEPS_BEFORE_SAVE)
    state = decode(encode(vcpu.get_arch_state()))
    assert state["reservation"] == 0x80001000
    assert state["x"][7] == 42 and state["pc"] == RAM_BASE + 4 * STEPS_BEFORE_SAVE

    ram2 = GuestRAM(RAM_BASE, 1 << 20)
    ram2.write(RAM_BASE, ram.read(RAM_BASE, 1 << 20))
    b = engine(ram2)
    b.vcpus[0].reset(0x80000000, PRV_S, 0, 0, True)   # anything: the state replaces it
    b.vcpus[0].set_arch_state(check_hart_state(state, 0))
    assert b.vcpus[0].get_arch_state() == state
    assert b.vcpus[0].stopped is False
    for name in CSR_VALUES:
        assert b.vcpus[0].get_reg(name) == vcpu.get_reg(name), name

    done_a, done_b = run_to_done(a), run_to_done(b)
    assert (done_a.gpa, done_a.value) == (done_b.gpa, done_b.value) == (DONE, 0)  # sc.d won
    assert ram2.read_int(0x80001000, 8) == 42
    final_a, final_b = vcpu.get_arch_state(), b.vcpus[0].get_arch_state()
    assert final_a == final_b
    assert final_b["x"][29] == 10                 # fadd.d restored f1
    a.close()
    b.close()


@needs_core
def test_tcg_stopped_and_halted_harts_and_pins_are_restored() -> None:
    ram = GuestRAM(RAM_BASE, 1 << 16)
    a = engine(ram)
    a.vcpus[0].reset(RAM_BASE, PRV_M, 0, 0, True)
    a.vcpus[0].set_irq(11, True)                  # MEIP from the PLIC
    state = a.vcpus[0].get_arch_state()
    assert state["stopped"] is True and state["mip_pins"] == 1 << 11
    b = engine(ram)
    b.vcpus[0].reset(RAM_BASE, PRV_M, 0, 0, False)
    b.vcpus[0].set_arch_state(state)
    assert b.vcpus[0].stopped is True
    assert b.vcpus[0].get_reg("mip") & (1 << 11)
    a.close()
    b.close()


def valid_state() -> dict[str, Any]:
    from kvmpy.migration.hart import CSRS

    return {"pc": RAM_BASE, "priv": 1, "x": [0] * 32, "f": [0] * 32, "fflags": 0, "frm": 0,
            "csr": dict.fromkeys(CSRS, 0), "mip": 0, "mip_pins": 0, "mtimecmp": 0,
            "sbi_timecmp": 0, "pmpcfg": [0] * 16, "pmpaddr": [0] * 16, "tdata1": [0, 0],
            "tdata2": [0, 0], "stopped": False, "halted": False, "reservation": None,
            "instret": 0}


@pytest.mark.parametrize("change,message", [
    (lambda s: s.update(priv=2), "privilege 2"),
    (lambda s: s.pop("pc"), "missing 'pc'"),
    (lambda s: s.update(x=[0] * 31), "'x' is not a list of 32"),
    (lambda s: s["csr"].pop("satp"), "missing CSR 'satp'"),
    (lambda s: s["csr"].update(tselect=2), "tselect 2"),
    (lambda s: s.update(pc=1 << 64), "pc is not a 64-bit value"),
    (lambda s: s.update(stopped=1), "'stopped' is not a bool"),
    (lambda s: s.update(reservation="x"), "reservation"),
])
def test_bad_hart_state_is_refused_in_one_line(change: Any, message: str) -> None:
    state = valid_state()
    check_hart_state(copy.deepcopy(state), 0)
    change(state)
    with pytest.raises(VmStateError, match=message) as info:
        check_hart_state(state, 3)
    assert str(info.value).startswith("vmstate: hart 3") and "\n" not in str(info.value)


def test_kvm_one_reg_mapping_round_trips_a_supervisor_state() -> None:
    """The KVM side of the schema, on the fake wrapper of the RISC-V glue tests (the real
    RISC-V KVM runs in ci/nested-kvm): a state saved on the interpreter in S-mode goes into
    the vCPU's ONE_REG registers and comes back the same in what KVM holds."""
    from kvmpy.accel.kvm import abi, onereg
    from kvmpy.accel.kvm import state as kvm_state
    from kvmpy.accel.kvm.riscv import KvmRiscvVcpu
    from tests.accel.kvm.conftest import FakeVcpuFd

    regs = {onereg.core_id(n): 0 for n in (*onereg.ABI_NAMES[1:], "pc", "mode")}
    regs.update({onereg.csr_id(n): 0 for n in onereg.CSR_NAMES})
    regs.update({onereg.timer_id(n): 0 for n in ("frequency", "time", "compare", "state")})
    regs.update({onereg.fp_id(i, True): 0 for i in range(33)})
    fake = FakeVcpuFd(0, regs)
    immediate: list[int] = []

    def completes(fd: Any) -> Any:
        # KVM finishes the last exit, then returns EINTR for immediate_exit
        immediate.append(int(fd.kvm_run.immediate_exit))
        return IntrExit()

    fake.script = [completes, completes, completes]
    vcpu = KvmRiscvVcpu(fake, 0)  # type: ignore[arg-type]
    state = valid_state()
    state["x"] = [0] + [i * 0x1111 for i in range(1, 32)]
    state["f"] = [i << 40 for i in range(32)]
    state.update(pc=0xFFFF_FFFF_8000_1234, fflags=3, frm=1, sbi_timecmp=5_000_000,
                 mip=2, mip_pins=1 << 9, stopped=False)
    state["csr"].update(mstatus=(1 << 1) | (1 << 8) | (3 << 13) | (1 << 18), mie=0x222,
                        mideleg=0x222, medeleg=0xB1FF, stvec=0xFFFF_FFFF_8000_0000,
                        sscratch=7, sepc=8, scause=9, stval=10, satp=(8 << 60) | 0x80123,
                        scounteren=7, senvcfg=0, menvcfg=1 << 63, mcounteren=0xFFFF_FFFF,
                        stimecmp=(1 << 64) - 1)
    kvm_state.set_arch_state(vcpu, check_hart_state(state, 0))
    assert regs[onereg.timer_id("state")] == 0    # the fake keeps its own copy
    fd = vcpu.fd
    assert fd.regs[onereg.timer_id("compare")] == 5_000_000
    assert fd.regs[onereg.timer_id("state")] == abi.KVM_RISCV_TIMER_STATE_ON
    assert fd.interrupts[-1] == abi.KVM_INTERRUPT_SET
    back = kvm_state.get_arch_state(vcpu)
    assert immediate == [1, 1] and not fake.kvm_run.immediate_exit and len(fake.script) == 1
    for key in ("pc", "priv", "x", "f", "fflags", "frm", "sbi_timecmp", "mip", "stopped"):
        assert back[key] == state[key], key
    for name in ("stvec", "sscratch", "sepc", "scause", "stval", "satp", "scounteren",
                 "mie", "mideleg", "medeleg", "menvcfg"):
        assert back["csr"][name] == state["csr"][name], name
    assert back["csr"]["mstatus"] == state["csr"]["mstatus"]
    state["priv"] = 3
    with pytest.raises(VmStateError, match="M-mode"):
        kvm_state.set_arch_state(vcpu, state)

    # With Sstc the guest's own vstimecmp is in ``compare`` while the SBI timer is off.
    from types import SimpleNamespace

    vcpu.accel = SimpleNamespace(caps=SimpleNamespace(isa_extensions=("i", "sstc")))  # type: ignore[assignment]
    fd.regs[onereg.timer_id("compare")] = 987_654
    fd.regs[onereg.timer_id("state")] = abi.KVM_RISCV_TIMER_STATE_OFF
    fake.script.append(IntrExit())
    sstc_state = kvm_state.get_arch_state(vcpu)
    assert sstc_state["csr"]["stimecmp"] == 987_654
    assert sstc_state["sbi_timecmp"] == (1 << 64) - 1


@needs_core
@needs_as
def test_an_armed_trigger_fires_after_a_restore(tmp_path: Path) -> None:
    """An Sdtrig execute trigger armed before the save fires in the restored engine."""
    code = assemble(tmp_path, """
        la t0, handler
        csrw mtvec, t0
        la t0, target
        csrw 0x7a2, t0              # tdata2: the address
        li t0, (2 << 60) | (1 << 6) | (1 << 2)
        csrw 0x7a1, t0              # tdata1: mcontrol, M-mode, execute
        li t0, 8
        csrw 0x7a5, t0              # tcontrol.MTE: triggers fire in M-mode
        nop
        nop
    target:
        nop
        li t2, 0x10000100
        sd zero, 0(t2)              # only reached when the trigger did not fire
    handler:
        csrr t1, mcause
        li t2, 0x10000100
        sd t1, 0(t2)
    """)
    ram = GuestRAM(RAM_BASE, 1 << 20)
    ram.write(RAM_BASE, code)
    a = engine(ram)
    a.vcpus[0].reset(RAM_BASE, PRV_M, 0, 0, False)
    for _ in range(40):
        if a.vcpus[0].get_reg("tcontrol") == 8:
            break
        a.vcpus[0].step(1)
    state = decode(encode(a.vcpus[0].get_arch_state()))
    assert state["tdata1"][0] == (2 << 60) | (1 << 6) | (1 << 2) and state["csr"]["tcontrol"] == 8
    b = engine(ram)
    b.vcpus[0].reset(RAM_BASE, PRV_M, 0, 0, False)
    b.vcpus[0].set_arch_state(check_hart_state(state, 0))
    assert run_to_done(b).value == 3             # breakpoint exception at the target
    a.close()
    b.close()
