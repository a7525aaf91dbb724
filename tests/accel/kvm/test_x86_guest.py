"""The generic KVM layer on the real x86-64 /dev/kvm, with a few bytes of real-mode guest code.

Memory slot over kvmpy's GuestRAM, vCPU with its kvm_run mapping, KVM_RUN, MMIO exits completed
through kvmpy's MmioBus into the real 16550 model, kicks from another thread, the dirty log.
"""

from __future__ import annotations

import errno
import threading
import time
from typing import Any

import pytest

from kvmpy.accel.exits import HaltExit, IntrExit, MmioExit, VcpuExit
from kvmpy.accel.kvm import abi
from kvmpy.accel.kvm.kvm import Kvm, KvmIoctlError
from kvmpy.accel.kvm.riscv import KvmRiscvVcpu, install_kick_handler
from kvmpy.memory import MmioBus

from .conftest import needs_x86_kvm

UART = 0x10000  # first byte after the 64 KiB RAM slot: every access is an MMIO exit


def _serial(chardev: Any) -> Any:
    serial = pytest.importorskip("kvmpy.hw.char.serial",
                                 reason="the ns16550a model (kvmpy.hw.char.serial) is missing")
    return serial.SerialMM(chardev=chardev)


# mov ax,0x1000 ; mov ds,ax   -> ds:0 is gpa 0x10000 (the UART), es stays 0 (RAM)
SET_DS_UART = bytes([0xB8, 0x00, 0x10, 0x8E, 0xD8])
HLT = bytes([0xF4])


def mov_al(value: int) -> bytes:
    return bytes([0xB0, value])


def store_al(offset: int) -> bytes:  # mov [offset],al (ds)
    return bytes([0xA2, offset & 0xFF, offset >> 8])


def load_al(offset: int) -> bytes:  # mov al,[offset] (ds)
    return bytes([0xA0, offset & 0xFF, offset >> 8])


def store_al_es(offset: int) -> bytes:  # mov es:[offset],al (RAM)
    return bytes([0x26, 0xA2, offset & 0xFF, offset >> 8])


def run_through_bus(vcpu: Any, bus: MmioBus, limit: int = 100) -> list[tuple[Any, ...]]:
    """Run to HLT, completing MMIO exits on ``bus``; returns the exits as tuples."""
    seen: list[tuple[Any, ...]] = []
    for _ in range(limit):
        exit_: VcpuExit = vcpu.run()
        if isinstance(exit_, MmioExit):
            if exit_.is_write:
                seen.append(("write", exit_.gpa, exit_.size, exit_.value))
                bus.write(exit_.gpa, exit_.size, exit_.value)
            else:
                value = bus.read(exit_.gpa, exit_.size)
                seen.append(("read", exit_.gpa, exit_.size, value))
                vcpu.complete_mmio_read(value)
            continue
        seen.append((type(exit_).__name__,))
        if isinstance(exit_, HaltExit):
            return seen
    raise AssertionError(f"no HLT after {limit} exits: {seen}")


def test_kvm_device_answers_generic_ioctls(x86_guest: Any) -> None:
    kvm = x86_guest.kvm
    assert kvm.api_version() == abi.KVM_API_VERSION
    assert kvm.check_extension(abi.KVM_CAP_USER_MEMORY) == 1
    assert kvm.check_extension(abi.KVM_CAP_IMMEDIATE_EXIT) == 1
    assert kvm.vcpu_mmap_size() >= abi.ffi.sizeof("struct kvm_run")
    assert x86_guest.vm.check_extension(abi.KVM_CAP_NR_MEMSLOTS) > 0


def test_mmio_exit_sequence_through_bus_into_the_16550(x86_guest: Any,
                                                       buffer_chardev: Any) -> None:
    bus = MmioBus()
    bus.add(UART, 8, _serial(buffer_chardev), "serial")
    x86_guest.load(
        SET_DS_UART
        + mov_al(ord("H")) + store_al(0)          # THR
        + mov_al(ord("i")) + store_al(0)
        + load_al(5) + store_al_es(0x500)         # LSR -> RAM 0x500
        + mov_al(0x5A) + store_al(7)              # SCR
        + load_al(7) + store_al_es(0x501)         # SCR -> RAM 0x501
        + HLT)
    exits = run_through_bus(x86_guest.vcpu, bus)
    assert exits == [
        ("write", UART + 0, 1, ord("H")),
        ("write", UART + 0, 1, ord("i")),
        ("read", UART + 5, 1, 0x60),              # LSR: THRE | TEMT
        ("write", UART + 7, 1, 0x5A),
        ("read", UART + 7, 1, 0x5A),
        ("HaltExit",),
    ]
    assert bytes(buffer_chardev.output) == b"Hi"
    # The loaded values reached the guest's registers, as its stores to RAM show.
    assert x86_guest.ram.read(0x500, 2) == bytes([0x60, 0x5A])


def test_mmio_access_sizes_and_values(x86_guest: Any) -> None:
    x86_guest.load(
        SET_DS_UART
        + bytes([0x66, 0xB8, 0x78, 0x56, 0x34, 0x12])   # mov eax,0x12345678
        + bytes([0x66, 0xA3, 0x10, 0x00])               # mov [0x10],eax
        + bytes([0xA3, 0x20, 0x00])                     # mov [0x20],ax
        + bytes([0x66, 0xA1, 0x30, 0x00])               # mov eax,[0x30]
        + bytes([0x26, 0x66, 0xA3, 0x00, 0x06])         # mov es:[0x600],eax
        + HLT)
    vcpu = x86_guest.vcpu
    first = vcpu.run()
    assert (first.gpa, first.size, first.is_write, first.value) == (UART + 0x10, 4, True,
                                                                     0x12345678)
    second = vcpu.run()
    assert (second.gpa, second.size, second.is_write, second.value) == (UART + 0x20, 2, True,
                                                                        0x5678)
    third = vcpu.run()
    assert (third.gpa, third.size, third.is_write) == (UART + 0x30, 4, False)
    vcpu.complete_mmio_read(0xCAFEF00D)
    assert isinstance(vcpu.run(), HaltExit)
    assert x86_guest.ram.read_int(0x600, 4) == 0xCAFEF00D


def test_immediate_exit_returns_intr_before_entering(x86_guest: Any) -> None:
    x86_guest.load(HLT)
    vcpu = x86_guest.vcpu
    vcpu.set_immediate_exit(True)
    assert isinstance(vcpu.run(), IntrExit)
    assert vcpu.kvm_run.immediate_exit == 0          # cleared for the next run
    assert isinstance(vcpu.run(), HaltExit)


def test_kick_from_another_thread_stops_a_spinning_guest(x86_guest: Any) -> None:
    """The guest spins (jmp $) without exits; a kick from the test thread makes the vCPU
    thread's run() return IntrExit (signal while in KVM_RUN), and the guest resumes after."""
    assert install_kick_handler()
    x86_guest.load(bytes([0xEB, 0xFE]))              # jmp $
    vcpu = KvmRiscvVcpu(x86_guest.vcpu, 0)
    results: list[Any] = []
    entered = threading.Event()

    def vcpu_thread() -> None:
        for _ in range(2):
            entered.set()
            results.append(vcpu.run())

    thread = threading.Thread(target=vcpu_thread, daemon=True)
    thread.start()
    for _ in range(2):
        assert entered.wait(5)
        entered.clear()
        time.sleep(0.05)                              # let it get inside KVM_RUN
        start = time.monotonic()
        while thread.is_alive() and len(results) < 2 and time.monotonic() - start < 5:
            count = len(results)
            vcpu.kick()
            deadline = time.monotonic() + 0.5
            while len(results) == count and time.monotonic() < deadline:
                time.sleep(0.001)
            if len(results) > count:
                break
    thread.join(5)
    assert not thread.is_alive()
    assert [type(r) for r in results] == [IntrExit, IntrExit]
    assert x86_guest.regs().rip == 0x1000            # still spinning at its loop


def test_dirty_log_reports_written_pages_and_clears(x86_guest: Any) -> None:
    guest = x86_guest
    guest.vm.set_user_memory_region(0, 0, guest.ram.size, guest.ram.host_address,
                                    abi.KVM_MEM_LOG_DIRTY_PAGES)
    guest.load(mov_al(1) + store_al(0x2000) + store_al(0x5008) + store_al(0x5010) + HLT)
    assert isinstance(guest.vcpu.run(), HaltExit)
    pages = guest.ram.size // 4096
    bitmap = int.from_bytes(guest.vm.get_dirty_log(0, pages), "little")
    assert {n for n in range(pages) if bitmap >> n & 1} == {2, 5}
    assert int.from_bytes(guest.vm.get_dirty_log(0, pages), "little") == 0


def test_dirty_log_without_the_flag_is_refused_naming_the_ioctl(x86_guest: Any) -> None:
    with pytest.raises(OSError) as info:
        x86_guest.vm.get_dirty_log(0, 16)
    assert info.value.errno == errno.ENOENT
    assert str(info.value) == "KVM_GET_DIRTY_LOG failed: No such file or directory"


@needs_x86_kvm
def test_failed_ioctl_raises_oserror_naming_it() -> None:
    with Kvm() as kvm, kvm.create_vm() as vm:
        vm.create_vcpu(0).close()
        with pytest.raises(KvmIoctlError) as info:
            vm.create_vcpu(0)                         # the id exists already
        assert info.value.ioctl == "KVM_CREATE_VCPU"
        assert str(info.value).startswith("KVM_CREATE_VCPU failed: ")
        assert isinstance(info.value, OSError)


def test_threaded_driver_pauses_and_quits_a_vcpu_inside_kvm_run(x86_guest: Any,
                                                               buffer_chardev: Any) -> None:
    """kvmpy's run path end to end: ThreadPerVcpuDriver runs the vCPU on its own thread,
    runloop.handle_exit completes the UART writes, then the guest spins inside KVM_RUN and
    pause()/quit() must get the thread out through kicks."""
    from kvmpy.config import VMConfig
    from kvmpy.runloop import ThreadPerVcpuDriver
    from kvmpy.system import System

    assert install_kick_handler()
    system = System(VMConfig())
    system.bus.add(UART, 8, _serial(buffer_chardev), "serial")
    x86_guest.load(SET_DS_UART + mov_al(ord("o")) + store_al(0) + mov_al(ord("k"))
                   + store_al(0) + bytes([0xEB, 0xFE]))
    vcpu = KvmRiscvVcpu(x86_guest.vcpu, 0)
    driver = ThreadPerVcpuDriver(system, [vcpu])
    system.driver = driver
    driver.start()
    driver.resume()
    deadline = time.monotonic() + 5
    while bytes(buffer_chardev.output) != b"ok" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert bytes(buffer_chardev.output) == b"ok"
    start = time.monotonic()
    driver.pause()                      # returns once the thread is parked, out of KVM_RUN
    assert time.monotonic() - start < 2
    assert x86_guest.regs().rip == 0x1000 + len(SET_DS_UART) + 10   # the jmp $
    driver.resume()
    time.sleep(0.05)
    driver.quit()
    assert all(not t.is_alive() for t in driver._threads)
    assert system.status != "internal-error"


def test_internal_error_exit_is_reported_with_what_registers_can_be_read(
        x86_guest: Any) -> None:
    """Executing from an address with no memory makes KVM give up (x86 emulation failure,
    KVM_EXIT_INTERNAL_ERROR): the wrapper decodes it, the glue appends the register dump,
    which on this non-RISC-V vCPU says why it is unavailable."""
    x86_guest.load(bytes([0xEA, 0x00, 0x00, 0x00, 0x10]))      # jmp far 0x1000:0000 (MMIO)
    exit_ = KvmRiscvVcpu(x86_guest.vcpu, 0).run()
    assert type(exit_).__name__ == "InternalErrorExit"
    first, second = exit_.message.splitlines()  # type: ignore[union-attr]
    assert first.startswith("KVM_EXIT_INTERNAL_ERROR: suberror 1")   # emulation failure
    assert second.startswith("(hart 0 registers unavailable: KVM_GET_ONE_REG failed: ")
