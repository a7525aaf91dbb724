"""KVM_IOEVENTFD on the real x86-64 /dev/kvm: a doorbell write completes in the kernel.

The guest (a few bytes of real-mode code) writes a doorbell register, then another register of
the same device, then halts.  With the doorbell registered, the first exit kvmpy sees is the
second write, the eventfd holds the kick, and the main loop's callback delivers the doorbell
write to the device through the MMIO bus.
"""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable
from typing import Any

import pytest

from kvmpy.accel.exits import HaltExit, MmioExit
from kvmpy.accel.kvm import abi
from kvmpy.accel.kvm.ioeventfd import Doorbells
from kvmpy.accel.kvm.kvm import KvmIoctlError
from kvmpy.hw.core import MmioDevice
from kvmpy.memory import MmioBus

from .conftest import needs_x86_kvm

DEVICE = 0x10000  # right after the 64 KiB RAM slot
NOTIFY = 0x50
OTHER = 0x70
# mov ax,0x1000 ; mov ds,ax ; mov al,2 ; mov [0x50],al ; mov al,9 ; mov [0x70],al ; hlt
GUEST = bytes([0xB8, 0x00, 0x10, 0x8E, 0xD8, 0xB0, 0x02, 0xA2, NOTIFY, 0x00,
               0xB0, 0x09, 0xA2, OTHER, 0x00, 0xF4])

pytestmark = needs_x86_kvm


class Recorder(MmioDevice):
    """A device with a one-byte doorbell (queue index 0..3) that records every write."""

    access_sizes = (1,)
    name = "recorder"

    def __init__(self) -> None:
        self.writes: list[tuple[int, int, int]] = []

    def doorbells(self) -> list[tuple[int, int, int]]:
        return [(NOTIFY, 1, index) for index in range(4)]

    def mmio_read(self, offset: int, size: int) -> int:
        return 0

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        self.writes.append((offset, size, value))


def _run_to_halt(vcpu: Any, bus: MmioBus) -> list[tuple[int, int, int]]:
    exits = []
    for _ in range(10):
        exit_ = vcpu.run()
        if isinstance(exit_, HaltExit):
            return exits
        assert isinstance(exit_, MmioExit) and exit_.is_write
        exits.append((exit_.gpa, exit_.size, exit_.value))
        bus.write(exit_.gpa, exit_.size, exit_.value)
    raise AssertionError(f"no HLT: {exits}")


def test_a_registered_write_signals_the_eventfd_instead_of_exiting(x86_guest: Any) -> None:
    assert x86_guest.vm.check_extension(abi.KVM_CAP_IOEVENTFD) == 1
    bus = MmioBus()
    device = Recorder()
    bus.add(DEVICE, 0x100, device)
    fd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        x86_guest.vm.ioeventfd(fd, DEVICE + NOTIFY, 1, datamatch=2)
        x86_guest.load(GUEST)
        assert _run_to_halt(x86_guest.vcpu, bus) == [(DEVICE + OTHER, 1, 9)]
        assert os.eventfd_read(fd) == 1
    finally:
        os.close(fd)


def test_another_value_or_a_deassigned_doorbell_exits_as_before(x86_guest: Any) -> None:
    bus = MmioBus()
    bus.add(DEVICE, 0x100, Recorder())
    fd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        x86_guest.vm.ioeventfd(fd, DEVICE + NOTIFY, 1, datamatch=3)  # the guest writes 2
        x86_guest.load(GUEST)
        assert _run_to_halt(x86_guest.vcpu, bus) == [(DEVICE + NOTIFY, 1, 2),
                                                     (DEVICE + OTHER, 1, 9)]
        x86_guest.vm.ioeventfd(fd, DEVICE + NOTIFY, 1, datamatch=3, deassign=True)
        with pytest.raises(KvmIoctlError, match="KVM_IOEVENTFD"):  # nothing left to remove
            x86_guest.vm.ioeventfd(fd, DEVICE + NOTIFY, 1, datamatch=3, deassign=True)
    finally:
        os.close(fd)


def test_doorbells_reach_the_device_from_the_main_loop(x86_guest: Any) -> None:
    bus = MmioBus()
    device = Recorder()
    bus.add(DEVICE, 0x100, device)
    readers: dict[int, Callable[[], None]] = {}
    bells = Doorbells(x86_guest.vm, bus, threading.RLock())
    assert bells.attach(readers.__setitem__, readers.pop) == 4
    x86_guest.load(GUEST)
    # The vCPU did not stop for the kick: its only exit is the other register.
    assert _run_to_halt(x86_guest.vcpu, bus) == [(DEVICE + OTHER, 1, 9)]
    assert device.writes == [(OTHER, 1, 9)]
    ready, _, _ = select.select(list(readers), [], [], 5.0)
    assert len(ready) == 1
    readers[ready[0]]()  # what the main loop does when the eventfd is readable
    assert device.writes == [(OTHER, 1, 9), (NOTIFY, 1, 2)]
    readers[ready[0]]()  # served once: nothing pending any more
    assert device.writes == [(OTHER, 1, 9), (NOTIFY, 1, 2)]
    bells.close()
    assert readers == {}
    # Deassigned: the same write exits to kvmpy again.
    x86_guest.load(GUEST)
    assert _run_to_halt(x86_guest.vcpu, bus) == [(DEVICE + NOTIFY, 1, 2), (DEVICE + OTHER, 1, 9)]


def test_drain_serves_a_pending_kick_without_the_main_loop(x86_guest: Any) -> None:
    bus = MmioBus()
    device = Recorder()
    bus.add(DEVICE, 0x100, device)
    bells = Doorbells(x86_guest.vm, bus, threading.RLock())
    bells.attach(lambda fd, callback: None)
    try:
        x86_guest.load(GUEST)
        _run_to_halt(x86_guest.vcpu, bus)
        bells.drain()
        bells.drain()
        assert device.writes == [(OTHER, 1, 9), (NOTIFY, 1, 2)]
    finally:
        bells.close()


def test_a_failing_device_is_reported_and_the_loop_goes_on(x86_guest: Any) -> None:
    class Broken(Recorder):
        def mmio_write(self, offset: int, size: int, value: int) -> None:
            if offset == NOTIFY:
                raise RuntimeError("model bug")

    bus = MmioBus()
    bus.add(DEVICE, 0x100, Broken())
    errors: list[str] = []
    bells = Doorbells(x86_guest.vm, bus, threading.RLock(), on_error=errors.append)
    bells.attach(lambda fd, callback: None)
    try:
        x86_guest.load(GUEST)
        _run_to_halt(x86_guest.vcpu, bus)
        bells.drain()
        assert errors == ["recorder: doorbell 0x10050 failed: model bug"]
    finally:
        bells.close()


def test_a_pause_serves_the_kicks_the_main_loop_has_not(x86_guest: Any) -> None:
    """ThreadPerVcpuDriver.pause() drains the doorbells: once paused, the device has seen
    every kick the guest made, though no main loop ran (state saved now is complete)."""
    from kvmpy.accel.kvm.riscv import KvmRiscvVcpu, install_kick_handler
    from kvmpy.config import VMConfig
    from kvmpy.runloop import ThreadPerVcpuDriver
    from kvmpy.system import System

    class Accel:  # the one thing the driver asks of the accelerator here
        def __init__(self, bells: Doorbells) -> None:
            self.bells = bells

        def drain_doorbells(self) -> None:
            self.bells.drain()

    assert install_kick_handler()
    system = System(VMConfig())
    device = Recorder()
    system.bus.add(DEVICE, 0x100, device)
    bells = Doorbells(x86_guest.vm, system.bus, system.lock)
    bells.attach(lambda fd, callback: None)
    system.accel = Accel(bells)  # type: ignore[assignment]
    # the doorbell, then spin inside KVM_RUN: no exit at all
    x86_guest.load(GUEST[:10] + bytes([0xEB, 0xFE]))
    driver = ThreadPerVcpuDriver(system, [KvmRiscvVcpu(x86_guest.vcpu, 0)])
    system.driver = driver
    try:
        driver.start()
        driver.resume()
        select.select([bells.bells[2].fd], [], [], 5.0)
        assert device.writes == []
        driver.pause()
        assert device.writes == [(NOTIFY, 1, 2)]
    finally:
        driver.quit()
        system.accel = None
        bells.close()


def test_irqfd_needs_an_in_kernel_irqchip(x86_guest: Any) -> None:
    """KVM_IRQFD routes an eventfd to an in-kernel interrupt controller; a VM without one
    (as kvmpy's RISC-V VMs, whose PLIC is in the VMM) refuses it, naming the ioctl."""
    fd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        with pytest.raises(KvmIoctlError, match="KVM_IRQFD failed"):
            x86_guest.vm.irqfd(fd, 5)
    finally:
        os.close(fd)
