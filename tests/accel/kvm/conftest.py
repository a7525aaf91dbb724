"""Fixtures for the KVM tests.

Two layers are tested here.  The generic one (ABI, wrappers, memory slots, ``KVM_RUN``, MMIO
exits into device models, kicks, dirty log) runs against the real ``/dev/kvm`` of the x86-64
development and CI machines with a few bytes of x86 real-mode code.  The RISC-V glue, which
needs a RISC-V KVM, runs on :class:`FakeKvm`: a fake of the thin wrapper layer (file
descriptors), with a real ``kvm_run`` struct, so the glue is the code under test.
"""

from __future__ import annotations

import errno
import os
import platform
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kvmpy.accel.exits import UnsupportedExit, VcpuExit
from kvmpy.accel.kvm import abi
from kvmpy.accel.kvm.kvm import Kvm, KvmIoctlError, Vcpu, Vm
from kvmpy.accel.kvm.kvm import ffi as kvm_ffi
from kvmpy.chardev.base import Chardev
from kvmpy.memory import GuestRAM


def _x86_kvm_reason() -> str | None:
    if platform.machine() != "x86_64":
        return f"the generic KVM tests run x86 guest code; this host is {platform.machine()}"
    if not os.path.exists("/dev/kvm"):
        return "no /dev/kvm on this machine (KVM module not loaded)"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is not accessible to this user (the tests need root or the kvm group)"
    return None


X86_KVM_REASON = _x86_kvm_reason()
needs_x86_kvm = pytest.mark.skipif(X86_KVM_REASON is not None, reason=X86_KVM_REASON or "")


class BufferChardev(Chardev):
    """Collects what a device model writes."""

    def __init__(self) -> None:
        super().__init__()
        self.output = bytearray()

    def write(self, data: bytes) -> int:
        self.output += data
        return len(data)


class X86Guest:
    """A real x86 VM: ``ram`` (64 KiB at gpa 0) in slot 0 and vCPU 0 in real mode."""

    def __init__(self, ram_flags: int = 0) -> None:
        from kvmpy.accel.kvm import x86_test_abi

        self.ram = GuestRAM(0, 0x10000)
        self.kvm = Kvm()
        self.vm = self.kvm.create_vm()
        self.vm.set_user_memory_region(0, 0, self.ram.size, self.ram.host_address, ram_flags)
        self.vcpu = self.vm.create_vcpu(0)
        self._x86 = x86_test_abi

    def load(self, code: bytes, ip: int = 0x1000) -> None:
        self.ram.write(ip, code)
        self._x86.enter_real_mode(self.vcpu, ip)

    def regs(self) -> Any:
        return self._x86.get_regs(self.vcpu)

    def close(self) -> None:
        self.vcpu.close()
        self.vm.close()
        self.kvm.close()
        self.ram.close()


@pytest.fixture
def x86_guest() -> Iterator[X86Guest]:
    if X86_KVM_REASON is not None:
        pytest.skip(X86_KVM_REASON)
    guest = X86Guest()
    yield guest
    guest.close()


@pytest.fixture
def buffer_chardev() -> BufferChardev:
    return BufferChardev()


# -- a fake of the wrapper layer for the RISC-V glue ------------------------------------------


class FakeVcpuFd:
    """Stands in for :class:`kvmpy.accel.kvm.kvm.Vcpu`: ONE_REG registers in a dict (an id
    missing from it answers ENOENT, as an unknown register does), scripted ``run()`` results,
    every ``KVM_INTERRUPT`` and mp_state recorded, and a real ``struct kvm_run``."""

    def __init__(self, vcpu_id: int, regs: dict[int, int]) -> None:
        self.id = vcpu_id
        self.regs = dict(regs)
        self.script: list[VcpuExit | Callable[[FakeVcpuFd], VcpuExit] | OSError] = []
        self.interrupts: list[int] = []
        self.mp_state = abi.KVM_MP_STATE_STOPPED if vcpu_id else abi.KVM_MP_STATE_RUNNABLE
        self.closed = False
        self._run_buf = kvm_ffi.new("struct kvm_run *")
        self.kvm_run: Any = self._run_buf
        self.sbi_ret: tuple[int, int] | None = None
        self.mmio_read_value: int | None = None
        self.debug_supported = False
        """KVM_SET_GUEST_DEBUG: EINVAL as in Linux 6.1's RISC-V KVM, unless set."""
        self.debug_control: int | None = None

    def run(self) -> VcpuExit:
        item = self.script.pop(0)
        if isinstance(item, OSError):
            raise item
        if callable(item):
            return item(self)
        return item

    def get_one_reg(self, reg_id: int) -> int:
        if reg_id not in self.regs:
            raise KvmIoctlError("KVM_GET_ONE_REG", errno.ENOENT)
        return self.regs[reg_id]

    def set_one_reg(self, reg_id: int, value: int) -> None:
        if reg_id not in self.regs:
            raise KvmIoctlError("KVM_SET_ONE_REG", errno.ENOENT)
        self.regs[reg_id] = value

    def interrupt(self, irq: int) -> None:
        self.interrupts.append(irq)

    def set_guest_debug(self, control: int) -> None:
        if not self.debug_supported:
            raise KvmIoctlError("KVM_SET_GUEST_DEBUG", errno.EINVAL)
        self.debug_control = control

    def get_mp_state(self) -> int:
        return self.mp_state

    def set_mp_state(self, state: int) -> None:
        self.mp_state = state

    def set_immediate_exit(self, flag: bool) -> None:
        self.kvm_run.immediate_exit = 1 if flag else 0

    def complete_mmio_read(self, value: int) -> None:
        self.mmio_read_value = value

    def complete_sbi(self, error: int, value: int) -> None:
        self.sbi_ret = (error, value)

    def complete_csr(self, value: int) -> None:
        self.kvm_run.riscv_csr.ret_value = value

    def close(self) -> None:
        self.closed = True


class FakeVm:
    def __init__(self, regs: dict[int, int]) -> None:
        self.regs = regs
        self.regions: list[tuple[int, int, int, int, int]] = []
        self.vcpus: list[FakeVcpuFd] = []
        self.closed = False
        self.debug_supported = False

    def set_user_memory_region(self, slot: int, gpa: int, size: int, host_address: int,
                               flags: int = 0) -> None:
        self.regions.append((slot, gpa, size, host_address, flags))

    def create_vcpu(self, vcpu_id: int) -> FakeVcpuFd:
        vcpu = FakeVcpuFd(vcpu_id, self.regs)
        vcpu.debug_supported = self.debug_supported
        self.vcpus.append(vcpu)
        return vcpu

    def close(self) -> None:
        self.closed = True


class FakeKvm:
    """Stands in for :class:`kvmpy.accel.kvm.kvm.Kvm`; ``regs`` seeds every vCPU."""

    def __init__(self, regs: dict[int, int]) -> None:
        self.regs = regs
        self.vms: list[FakeVm] = []
        self.closed = False
        self.debug_supported = False
        """KVM_SET_GUEST_DEBUG in the vCPUs of its VMs (Linux 6.10+), else EINVAL (6.1)."""

    def create_vm(self, machine_type: int = 0) -> FakeVm:
        vm = FakeVm(self.regs)
        vm.debug_supported = self.debug_supported
        self.vms.append(vm)
        return vm

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_kvm_types() -> tuple[type[FakeKvm], type[FakeVcpuFd]]:
    return FakeKvm, FakeVcpuFd


@pytest.fixture
def csr_exit() -> Callable[[int], Callable[[FakeVcpuFd], VcpuExit]]:
    """A scripted KVM_EXIT_RISCV_CSR exit for CSR ``csr_num`` (what the real wrapper
    returns for reason 36, with the kvm_run fields filled by the kernel)."""

    def make(csr_num: int) -> Callable[[FakeVcpuFd], VcpuExit]:
        def exit_(fd: FakeVcpuFd) -> VcpuExit:
            fd.kvm_run.exit_reason = abi.KVM_EXIT_RISCV_CSR
            fd.kvm_run.riscv_csr.csr_num = csr_num
            return UnsupportedExit(abi.KVM_EXIT_RISCV_CSR)
        return exit_

    return make


__all__ = ["Kvm", "Vcpu", "Vm"]
