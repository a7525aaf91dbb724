"""Guest RAM for VM states: only non-zero pages are saved, dirty logging in the interpreter
core (through its write TLB), in KVM (on this machine's real x86 /dev/kvm) and for device
writes, and copy-on-write mapping of saved RAM shared by several VMs."""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Any

import pytest

from kvmpy.accel.base import PRV_M
from kvmpy.accel.exits import IntrExit, MmioExit
from kvmpy.accel.tcg import TcgAccel, unavailable_reason
from kvmpy.memory import GuestMemoryError, GuestRAM, bitmap_pages
from kvmpy.migration.ram import nonzero_pages
from tests.accel.kvm.conftest import x86_guest  # noqa: F401  (fixture)
from tests.migration.test_state_hart import RAM_BASE, assemble, needs_as

PAGE = 4096


def test_nonzero_pages_finds_exactly_the_written_pages() -> None:
    ram = GuestRAM(RAM_BASE, 64 << 20)
    assert nonzero_pages(ram) == []
    for page in (0, 17, 18, 4095, 16383):
        ram.write(RAM_BASE + page * PAGE + 100, b"\x01")
    ram.write(RAM_BASE + 30 * PAGE, bytes(PAGE))       # written, but zero
    assert nonzero_pages(ram) == [0, 17, 18, 4095, 16383]


def test_device_writes_are_logged_only_while_logging() -> None:
    ram = GuestRAM(RAM_BASE, 1 << 20)
    ram.mark_dirty(RAM_BASE, 1)                         # off: nothing happens
    with pytest.raises(GuestMemoryError):
        ram.collect_dirty()
    ram.start_dirty_log()
    ram.mark_dirty(RAM_BASE + 5 * PAGE + 4000, 200)    # crosses into page 6
    ram.write(RAM_BASE + 9 * PAGE, b"x")
    ram.write_int(RAM_BASE + 255 * PAGE, 8, 1)
    assert bitmap_pages(ram.collect_dirty()) == [5, 6, 9, 255]
    assert bitmap_pages(ram.collect_dirty()) == []
    ram.stop_dirty_log()
    assert not ram.dirty_logging


@pytest.mark.skipif(unavailable_reason() is not None, reason="tcg core not built")
@needs_as
def test_interpreter_dirty_log_sees_stores_through_the_tlb(tmp_path: Path) -> None:
    code = assemble(tmp_path, """
        li t0, 0x80003000
        li t1, 0x80007008
        li t2, 0x10000100
        sd t0, 0(t0)
        sw t0, 0(t1)
        sd zero, 0(t2)          # exit: first round done
        sd t1, 8(t0)            # the same page again, its TLB entry already there
        amoadd.d zero, t1, (t1)
        sd zero, 0(t2)          # exit: second round done
    """)
    ram = GuestRAM(RAM_BASE, 1 << 20)
    ram.write(RAM_BASE, code)
    accel = TcgAccel()
    accel.init_machine(ram, 1)
    vcpu = accel.vcpus[0]
    vcpu.reset(RAM_BASE, PRV_M, 0, 0, False)
    ram.start_dirty_log(accel)

    def run_round() -> None:
        for _ in range(50):
            exit_ = vcpu.run()
            if isinstance(exit_, MmioExit):
                return
            assert isinstance(exit_, IntrExit)
        raise AssertionError("no exit")

    run_round()
    assert bitmap_pages(ram.collect_dirty()) == [3, 7]
    run_round()
    assert bitmap_pages(ram.collect_dirty()) == [3, 7]
    assert bitmap_pages(ram.collect_dirty()) == []
    ram.stop_dirty_log()
    accel.close()


def test_kvm_dirty_log_on_the_real_kvm(x86_guest: Any) -> None:  # noqa: F811
    """KVM_MEM_LOG_DIRTY_PAGES switched on and off by kvmpy.accel.kvm.dirty, merged with
    device writes by GuestRAM, with x86 real-mode stores as the guest."""
    from kvmpy.accel.kvm.dirty import KvmDirtyLog

    guest = x86_guest
    ram = guest.ram
    log = KvmDirtyLog(guest.vm, 0, ram.base, ram.size, ram.host_address)
    # mov al,1 ; mov [0x2000],al ; mov [0x5008],al ; hlt
    code = bytes([0xB0, 1, 0xA2, 0x00, 0x20, 0xA2, 0x08, 0x50, 0xF4])
    guest.load(code)
    ram.start_dirty_log(log)
    ram.collect_dirty()                       # the code load itself
    guest.vcpu.run()
    ram.mark_dirty(ram.base + 0xA000, 1)      # a device wrote page 10
    assert bitmap_pages(ram.collect_dirty(), ram.pages) == [2, 5, 10]
    assert bitmap_pages(ram.collect_dirty(), ram.pages) == []
    ram.stop_dirty_log()
    with pytest.raises(OSError):              # the slot logs no more
        guest.vm.get_dirty_log(0, ram.pages)


def test_saved_ram_mapped_copy_on_write_is_shared_and_private(tmp_path: Path) -> None:
    data = tmp_path / "ram.img"
    pattern = bytes(range(256)) * 16 * 4          # 4 pages
    with open(data, "wb") as f:
        f.write(pattern)
    fd = os.open(data, os.O_RDONLY)
    try:
        a, b = GuestRAM(RAM_BASE, 16 * PAGE), GuestRAM(RAM_BASE, 16 * PAGE)
        for ram in (a, b):
            ram.map_file(fd, 0, RAM_BASE + 4 * PAGE, 4 * PAGE)
    finally:
        os.close(fd)
    assert a.read(RAM_BASE + 4 * PAGE, len(pattern)) == pattern
    a.write(RAM_BASE + 4 * PAGE, b"private")
    assert b.read(RAM_BASE + 4 * PAGE, 7) == pattern[:7]
    assert data.read_bytes() == pattern
    assert nonzero_pages(b) == [4, 5, 6, 7]
    with pytest.raises(GuestMemoryError):
        a.map_file(0, 0, RAM_BASE + 100, PAGE)
    b.clear()                                     # reset: zeros, not the file again
    assert b.read(RAM_BASE + 4 * PAGE, PAGE) == bytes(PAGE) and b.file_ranges == []
    a.close()
    b.close()
    assert mmap.PAGESIZE == PAGE
