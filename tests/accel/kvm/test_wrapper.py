"""The thin wrapper on a real vCPU: how it decodes the RISC-V exits of ``kvm_run``, and that
hundreds of create/destroy cycles leak neither file descriptors nor memory.

The decoding tests fill the real mmap'ed ``kvm_run`` of an x86 vCPU the way a RISC-V kernel
would and decode it with the same code ``run()`` uses after ``KVM_RUN`` returns.
"""

from __future__ import annotations

import gc
from typing import Any

import pytest

from kvmpy.accel.exits import (
    InternalErrorExit,
    IntrExit,
    MmioExit,
    SbiExit,
    SystemEvent,
    SystemEventExit,
    UnsupportedExit,
)
from kvmpy.accel.kvm import abi
from kvmpy.accel.kvm.kvm import Kvm
from kvmpy.memory import GuestRAM

from .conftest import X86_KVM_REASON

pytestmark = pytest.mark.skipif(X86_KVM_REASON is not None, reason=X86_KVM_REASON or "")


def test_sbi_exit_and_its_completion(x86_guest: Any) -> None:
    vcpu = x86_guest.vcpu
    sbi = vcpu.kvm_run.riscv_sbi
    sbi.extension_id = 0x4442434E          # DBCN
    sbi.function_id = 0
    for i, value in enumerate((5, 0x80001000, 0, 0, 0, 0)):
        sbi.args[i] = value
    assert vcpu.decode_exit(abi.KVM_EXIT_RISCV_SBI) == SbiExit(0x4442434E, 0,
                                                               (5, 0x80001000, 0, 0, 0, 0))
    vcpu.complete_sbi(-2, 5)
    assert (sbi.ret[0], sbi.ret[1]) == ((1 << 64) - 2, 5)


@pytest.mark.parametrize(("kind", "event"), [(1, SystemEvent.SHUTDOWN),
                                             (2, SystemEvent.RESET), (3, SystemEvent.CRASH)])
def test_system_events(x86_guest: Any, kind: int, event: SystemEvent) -> None:
    run = x86_guest.vcpu.kvm_run
    run.system_event.type = kind
    run.system_event.ndata = 1
    run.system_event.data[0] = 7
    assert x86_guest.vcpu.decode_exit(abi.KVM_EXIT_SYSTEM_EVENT) == SystemEventExit(event, 7)
    run.system_event.ndata = 0
    assert x86_guest.vcpu.decode_exit(abi.KVM_EXIT_SYSTEM_EVENT) == SystemEventExit(event, 0)


def test_mmio_exit_value_is_masked_to_its_size(x86_guest: Any) -> None:
    run = x86_guest.vcpu.kvm_run
    run.mmio.phys_addr = 0x10000000
    for i, byte in enumerate(b"\x11\x22\x33\x44\x55\x66\x77\x88"):
        run.mmio.data[i] = byte
    run.mmio.is_write = 1
    for size, value in ((1, 0x11), (2, 0x2211), (4, 0x44332211), (8, 0x8877665544332211)):
        run.mmio.len = size
        assert x86_guest.vcpu.decode_exit(abi.KVM_EXIT_MMIO) == \
            MmioExit(0x10000000, size, True, value)
    run.mmio.is_write = 0
    run.mmio.len = 4
    assert x86_guest.vcpu.decode_exit(abi.KVM_EXIT_MMIO) == MmioExit(0x10000000, 4, False, 0)
    x86_guest.vcpu.complete_mmio_read(0xDEADBEEF)
    assert bytes(run.mmio.data)[:4] == (0xDEADBEEF).to_bytes(4, "little")


def test_errors_and_unknown_reasons(x86_guest: Any) -> None:
    vcpu = x86_guest.vcpu
    run = vcpu.kvm_run
    run.internal.suberror = 1
    run.internal.ndata = 2
    run.internal.data[0] = 0x10
    run.internal.data[1] = 0x20
    assert vcpu.decode_exit(abi.KVM_EXIT_INTERNAL_ERROR) == InternalErrorExit(
        "KVM_EXIT_INTERNAL_ERROR: suberror 1, data 0x10 0x20")
    run.fail_entry.hardware_entry_failure_reason = 0x80000021
    run.fail_entry.cpu = 3
    assert vcpu.decode_exit(abi.KVM_EXIT_FAIL_ENTRY) == InternalErrorExit(
        "KVM_EXIT_FAIL_ENTRY: hardware entry failure reason 0x80000021 (cpu 3)")
    assert vcpu.decode_exit(abi.KVM_EXIT_INTR) == IntrExit()
    assert vcpu.decode_exit(abi.KVM_EXIT_RISCV_CSR) == UnsupportedExit(36)
    assert vcpu.decode_exit(200) == UnsupportedExit(200)
    run.system_event.type = 5                     # SUSPEND: not a kvmpy system event
    assert vcpu.decode_exit(abi.KVM_EXIT_SYSTEM_EVENT) == UnsupportedExit(24)


def _cycle(ram: GuestRAM) -> None:
    with Kvm() as kvm, kvm.create_vm() as vm:
        vm.set_user_memory_region(0, 0, ram.size, ram.host_address)
        with vm.create_vcpu(0) as vcpu:
            vcpu.set_immediate_exit(True)
            assert isinstance(vcpu.run(), IntrExit)


def test_no_fd_or_memory_leak_over_hundreds_of_vm_lifecycles() -> None:
    psutil = pytest.importorskip("psutil", reason="psutil measures fds and RSS")
    process = psutil.Process()
    ram = GuestRAM(0, 0x10000)
    for _ in range(30):                           # warm up allocator and caches
        _cycle(ram)
    gc.collect()
    fds, rss = process.num_fds(), process.memory_info().rss
    for _ in range(300):
        _cycle(ram)
    gc.collect()
    assert process.num_fds() == fds
    assert process.memory_info().rss - rss < 2 * 1024 * 1024
    ram.close()
