"""The vCPU run loop in C (vcpu_loop.c) on the real x86-64 /dev/kvm: MMIO exits to the 16550's
C half complete in C, every other exit comes back to Python as before, in order, and no
output is lost when the VM pauses."""

from __future__ import annotations

import struct
import time
from typing import Any

import pytest

from kvmpy.accel.exits import HaltExit, MmioExit
from kvmpy.accel.kvm import c_loop
from kvmpy.accel.kvm.riscv import KvmRiscvVcpu, attach_run_loop, install_kick_handler
from kvmpy.config import VMConfig
from kvmpy.hw.char import uart_fast
from kvmpy.hw.char.serial import SerialMM
from kvmpy.memory import MmioBus
from kvmpy.runloop import ThreadPerVcpuDriver
from kvmpy.system import System

pytestmark = pytest.mark.skipif(
    not (c_loop.available() and uart_fast.available()),
    reason="the KVM run loop in C or the C device models are not built "
           "(python kvmpy/accel/kvm/_build.py; python kvmpy/hw/_build.py)")

UART = 0x10000  # first byte after the 64 KiB RAM slot
SET_DS_UART = bytes([0xB8, 0x00, 0x10, 0x8E, 0xD8])  # mov ax,0x1000 ; mov ds,ax
HLT = bytes([0xF4])
# wait for THRE: mov al,[5] ; test al,0x20 ; jz wait
POLL_THRE = bytes([0xA0, 0x05, 0x00, 0xA8, 0x20, 0x74, 0xF9])


def store(offset: int, value: int) -> bytes:  # mov al,value ; mov [offset],al
    return bytes([0xB0, value, 0xA2, offset, 0x00])


def load(offset: int) -> bytes:  # mov al,[offset]
    return bytes([0xA0, offset, 0x00])


def console_write(text: bytes) -> bytes:
    return b"".join(POLL_THRE + store(0, byte) for byte in text)


def test_console_output_completes_in_c(x86_guest: Any, buffer_chardev: Any) -> None:
    bus = MmioBus()
    uart = SerialMM(chardev=buffer_chardev)
    bus.add(UART, uart.region_size, uart)
    x86_guest.load(SET_DS_UART + console_write(b"hello\n")
                   + store(1, 0x02)          # IER.THRI: the next byte raises an interrupt
                   + store(0, ord("!"))
                   + store(1, 0x00)
                   + load(7)                 # SCR
                   + console_write(b"Z") + HLT)
    vcpu = KvmRiscvVcpu(x86_guest.vcpu, 0)
    windows = attach_run_loop([vcpu], bus)
    seen = []
    try:
        for _ in range(100):
            exit_ = vcpu.run()
            if isinstance(exit_, HaltExit):
                break
            assert isinstance(exit_, MmioExit)
            if exit_.is_write:
                seen.append(("write", exit_.gpa - UART, exit_.value))
                bus.write(exit_.gpa, exit_.size, exit_.value)
            else:
                value = bus.read(exit_.gpa, exit_.size)
                seen.append(("read", exit_.gpa - UART, value))
                vcpu.complete_mmio_read(value)
        else:
            raise AssertionError(f"no HLT: {seen}")
        # Only what needs Python came back to it: 7 LSR reads and 7 THR stores did not.
        assert seen == [("write", 1, 0x02), ("write", 0, ord("!")), ("write", 1, 0x00),
                        ("read", 7, 0)]
        assert bytes(buffer_chardev.output) == b"hello\n!Z"
        assert uart.get_state()["thr"] == ord("Z")
    finally:
        windows.close()


def test_python_device_exits_still_reach_python(x86_guest: Any, buffer_chardev: Any) -> None:
    bus = MmioBus()
    uart = SerialMM(chardev=buffer_chardev)
    bus.add(UART, uart.region_size, uart)
    other = SerialMM(chardev=buffer_chardev)  # no C half attached: all of it is Python's
    bus.add(UART + 0x10, other.region_size, other)
    x86_guest.load(SET_DS_UART + store(0, ord("a")) + store(0x10, ord("b"))
                   + store(0, ord("c")) + HLT)
    vcpu = KvmRiscvVcpu(x86_guest.vcpu, 0)
    windows = attach_run_loop([vcpu], bus)
    other._detach_fast()  # attach_run_loop attached both: make the second Python-only
    try:
        exits = []
        while not isinstance(exit_ := vcpu.run(), HaltExit):
            assert isinstance(exit_, MmioExit)
            exits.append(exit_.gpa)
            # The C device's output before this exit went out first (the flush on return).
            bus.write(exit_.gpa, exit_.size, exit_.value)
            assert bytes(buffer_chardev.output) == b"ab"
        assert exits == [UART + 0x10]
        assert bytes(buffer_chardev.output) == b"abc"
    finally:
        windows.close()


def test_no_output_lost_when_the_vm_pauses(x86_guest: Any, buffer_chardev: Any) -> None:
    """A guest printing without end, each byte counted in RAM (a 32-bit counter after the
    store): at every pause the console holds exactly the bytes the guest stored."""
    install_kick_handler()
    system = System(VMConfig())
    uart = SerialMM(chardev=buffer_chardev)
    system.bus.add(UART, uart.region_size, uart)
    # loop: mov al,'.' ; mov [0],al ; inc dword es:[0x2000] ; jmp loop
    x86_guest.load(SET_DS_UART + bytes([0xB0, 0x2E, 0xA2, 0x00, 0x00,
                                        0x66, 0x26, 0xFF, 0x06, 0x00, 0x20, 0xEB, 0xF3]))
    vcpu = KvmRiscvVcpu(x86_guest.vcpu, 0)
    windows = attach_run_loop([vcpu], system.bus)
    driver = ThreadPerVcpuDriver(system, [vcpu])  # type: ignore[list-item]
    system.driver = driver
    driver.start()
    try:
        for _ in range(3):
            driver.resume()
            time.sleep(0.1)
            driver.pause()
            counted = struct.unpack("<I", x86_guest.ram.read(0x2000, 4))[0]
            out = bytes(buffer_chardev.output)
            assert counted > 0
            assert len(out) in (counted, counted + 1)  # paused between store and count
            assert out == b"." * len(out)
    finally:
        driver.quit()
        windows.close()
    assert system.status != "internal-error"
