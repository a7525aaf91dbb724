"""Test-only ABI: the x86-64 register structs needed to run x86 guest code on an x86 host.

kvmpy itself never runs x86 guests.  The KVM tests and ``benchmarks/kvm-exits`` exercise the
generic layer (memory slots, vCPU, ``KVM_RUN``, MMIO exits) on the x86-64 ``/dev/kvm`` of the
development machines with a few bytes of real-mode code; this module gives them the
``KVM_GET_SREGS``/``KVM_SET_SREGS``/``KVM_SET_REGS`` layouts (``arch/x86/include/uapi/asm/kvm.h``)
and the real-mode entry helper.  Kept apart from :mod:`kvmpy.accel.kvm.abi` on purpose.
"""

from __future__ import annotations

import cffi

from kvmpy.accel.kvm.abi import _IOC_READ, _IOC_WRITE, KVMIO
from kvmpy.accel.kvm.kvm import Vcpu

ffi = cffi.FFI()
ffi.cdef("""
struct kvm_regs {
    uint64_t rax, rbx, rcx, rdx;
    uint64_t rsi, rdi, rsp, rbp;
    uint64_t r8, r9, r10, r11;
    uint64_t r12, r13, r14, r15;
    uint64_t rip, rflags;
};

struct kvm_segment {
    uint64_t base;
    uint32_t limit;
    uint16_t selector;
    uint8_t type;
    uint8_t present, dpl, db, s, l, g, avl;
    uint8_t unusable;
    uint8_t padding;
};

struct kvm_dtable {
    uint64_t base;
    uint16_t limit;
    uint16_t padding[3];
};

struct kvm_sregs {
    struct kvm_segment cs, ds, es, fs, gs, ss;
    struct kvm_segment tr, ldt;
    struct kvm_dtable gdt, idt;
    uint64_t cr0, cr2, cr3, cr4, cr8;
    uint64_t efer;
    uint64_t apic_base;
    uint64_t interrupt_bitmap[4];
};
""")

KVM_GET_REGS = (_IOC_READ << 30) | (ffi.sizeof("struct kvm_regs") << 16) | (KVMIO << 8) | 0x81
KVM_SET_REGS = (_IOC_WRITE << 30) | (ffi.sizeof("struct kvm_regs") << 16) | (KVMIO << 8) | 0x82
KVM_GET_SREGS = (_IOC_READ << 30) | (ffi.sizeof("struct kvm_sregs") << 16) | (KVMIO << 8) | 0x83
KVM_SET_SREGS = (_IOC_WRITE << 30) | (ffi.sizeof("struct kvm_sregs") << 16) | (KVMIO << 8) | 0x84


def enter_real_mode(vcpu: Vcpu, ip: int, segment: int = 0) -> None:
    """Point an x86 vCPU at ``segment:ip`` in real mode, flat data segments at ``segment``."""
    sregs = ffi.new("struct kvm_sregs *")
    vcpu.ioctl(KVM_GET_SREGS, sregs, "KVM_GET_SREGS")
    for seg in (sregs.cs, sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
        seg.base = segment << 4
        seg.selector = segment
    vcpu.ioctl(KVM_SET_SREGS, sregs, "KVM_SET_SREGS")
    regs = ffi.new("struct kvm_regs *")
    regs.rip = ip
    regs.rflags = 0x2  # bit 1 is reserved and reads as 1
    vcpu.ioctl(KVM_SET_REGS, regs, "KVM_SET_REGS")


def get_regs(vcpu: Vcpu) -> object:
    regs = ffi.new("struct kvm_regs *")
    vcpu.ioctl(KVM_GET_REGS, regs, "KVM_GET_REGS")
    return regs
