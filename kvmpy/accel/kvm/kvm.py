"""Thin wrappers over the KVM file descriptors: :class:`Kvm`, :class:`Vm`, :class:`Vcpu`.

They mirror the kernel and decide nothing (rust-vmm's kvm-ioctls): one method per ioctl, a
failed ioctl raises :class:`KvmIoctlError` (an ``OSError`` naming the ioctl), and
:meth:`Vcpu.run` decodes ``kvm_run`` into the shared exit values of
:mod:`kvmpy.accel.exits`, an unknown reason coming back as ``UnsupportedExit(reason)``.
Policy (which registers, what an exit means for the machine) is in :mod:`kvmpy.accel.kvm.riscv`.

The syscalls go through cffi in ABI mode against the C library already loaded in the process,
so no compiler is needed at run time.  ``ioctl`` is declared with a fixed third argument: on
LP64 Linux (x86-64, riscv64) a pointer-sized variadic argument is passed exactly like a named one.
"""

from __future__ import annotations

import errno
import os
import struct
from types import TracebackType
from typing import Any

from kvmpy.accel.exits import (
    HaltExit,
    InternalErrorExit,
    IntrExit,
    MmioExit,
    SbiExit,
    SystemEvent,
    SystemEventExit,
    UnsupportedExit,
    VcpuExit,
)
from kvmpy.accel.kvm import abi


def _build_ffi() -> Any:
    import cffi

    built = cffi.FFI()
    built.include(abi.ffi.get())
    built.cdef("""
    int ioctl(int fd, unsigned long request, void *arg);
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset);
    int munmap(void *addr, size_t length);
    """)
    return built


ffi: Any = abi.LazyFFI(_build_ffi)
"""The ABI plus the libc calls; parsed when the first KVM file descriptor is opened."""
_libc_lib: Any = None


def _libc() -> Any:
    """The C library already loaded in the process, through :data:`ffi`."""
    global _libc_lib
    if _libc_lib is None:
        _libc_lib = ffi.dlopen(None)
    return _libc_lib


_PROT_READ_WRITE = 0x3
_MAP_SHARED = 0x1
_MAP_FAILED = 0xFFFFFFFFFFFFFFFF
_U64 = (1 << 64) - 1
_DATA_MASKS = (0, 0xFF, 0xFFFF, 0, 0xFFFFFFFF, 0, 0, 0, _U64)
_EXIT_AND_MMIO = struct.Struct("=I20xQQIB")
"""kvm_run from offset 8: exit_reason, then (at 32) mmio.phys_addr, data, len, is_write."""
_SYSTEM_EVENTS = {int(e): e for e in SystemEvent}


class KvmIoctlError(OSError):
    """A KVM ioctl failed: ``errno`` is the kernel's answer, ``ioctl`` the request's name."""

    def __init__(self, ioctl: str, err: int) -> None:
        super().__init__(err, os.strerror(err))
        self.ioctl = ioctl

    def __str__(self) -> str:
        return f"{self.ioctl} failed: {self.strerror}"


def _arg(value: int) -> Any:
    return ffi.cast("void *", value)


def _check(ret: int, name: str) -> int:
    if ret < 0:
        raise KvmIoctlError(name, ffi.errno)
    return ret


class _Fd:
    """A KVM file descriptor with a context manager and an idempotent ``close()``."""

    fd: int

    def ioctl(self, request: int, arg: Any, name: str) -> int:
        """Raw ioctl; ``arg`` is a cdata pointer or an int. For what the wrappers lack."""
        if isinstance(arg, int):
            arg = _arg(arg)
        return _check(_libc().ioctl(self.fd, request, arg), name)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class Kvm(_Fd):
    """``/dev/kvm``. Opening raises the plain ``OSError`` of ``open(2)`` (ENOENT, EACCES)."""

    def __init__(self, path: str = "/dev/kvm") -> None:
        self.fd = -1
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)

    def api_version(self) -> int:
        return self.ioctl(abi.KVM_GET_API_VERSION, 0, "KVM_GET_API_VERSION")

    def check_extension(self, cap: int) -> int:
        return self.ioctl(abi.KVM_CHECK_EXTENSION, cap, "KVM_CHECK_EXTENSION")

    def vcpu_mmap_size(self) -> int:
        return self.ioctl(abi.KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE")

    def create_vm(self, machine_type: int = 0) -> Vm:
        return Vm(self.ioctl(abi.KVM_CREATE_VM, machine_type, "KVM_CREATE_VM"),
                  self.vcpu_mmap_size())


class Vm(_Fd):
    """A VM file descriptor (from :meth:`Kvm.create_vm`)."""

    def __init__(self, fd: int, vcpu_mmap_size: int) -> None:
        self.fd = fd
        self.vcpu_mmap_size = vcpu_mmap_size

    def check_extension(self, cap: int) -> int:
        return self.ioctl(abi.KVM_CHECK_EXTENSION, cap, "KVM_CHECK_EXTENSION")

    def set_user_memory_region(self, slot: int, gpa: int, size: int, host_address: int,
                               flags: int = 0) -> None:
        """Map ``size`` bytes at host virtual ``host_address`` to guest-physical ``gpa``
        (page-aligned); ``size`` 0 deletes the slot."""
        region = ffi.new("struct kvm_userspace_memory_region *")
        region.slot = slot
        region.flags = flags
        region.guest_phys_addr = gpa
        region.memory_size = size
        region.userspace_addr = host_address
        self.ioctl(abi.KVM_SET_USER_MEMORY_REGION, region, "KVM_SET_USER_MEMORY_REGION")

    def get_dirty_log(self, slot: int, num_pages: int) -> bytes:
        """The slot's dirty bitmap (bit n = page n written since the last call) and clear it."""
        bitmap = ffi.new("uint64_t[]", max((num_pages + 63) // 64, 1))
        log = ffi.new("struct kvm_dirty_log *")
        log.slot = slot
        log.dirty_bitmap = bitmap
        self.ioctl(abi.KVM_GET_DIRTY_LOG, log, "KVM_GET_DIRTY_LOG")
        return bytes(ffi.buffer(bitmap))

    def ioeventfd(self, fd: int, gpa: int, size: int, datamatch: int | None = None,
                  deassign: bool = False) -> None:
        """``KVM_IOEVENTFD``: a guest write of ``size`` bytes (1/2/4/8) to MMIO address
        ``gpa`` (with value ``datamatch``, when given) signals eventfd ``fd`` and completes in
        the kernel, without an exit; ``deassign`` removes that registration."""
        arg = ffi.new("struct kvm_ioeventfd *")
        arg.addr = gpa
        arg.len = size
        arg.fd = fd
        flags = abi.KVM_IOEVENTFD_FLAG_DEASSIGN if deassign else 0
        if datamatch is not None:
            arg.datamatch = datamatch
            flags |= abi.KVM_IOEVENTFD_FLAG_DATAMATCH
        arg.flags = flags
        self.ioctl(abi.KVM_IOEVENTFD, arg, "KVM_IOEVENTFD")

    def irqfd(self, fd: int, gsi: int, deassign: bool = False) -> None:
        """``KVM_IRQFD``: signalling eventfd ``fd`` raises interrupt ``gsi`` of the in-kernel
        irqchip (a VM without one answers an error)."""
        arg = ffi.new("struct kvm_irqfd *")
        arg.fd = fd
        arg.gsi = gsi
        arg.flags = abi.KVM_IRQFD_FLAG_DEASSIGN if deassign else 0
        self.ioctl(abi.KVM_IRQFD, arg, "KVM_IRQFD")

    def create_vcpu(self, vcpu_id: int) -> Vcpu:
        fd = self.ioctl(abi.KVM_CREATE_VCPU, vcpu_id, "KVM_CREATE_VCPU")
        try:
            return Vcpu(fd, vcpu_id, self.vcpu_mmap_size)
        except BaseException:
            os.close(fd)
            raise


class Vcpu(_Fd):
    """A vCPU file descriptor with its ``kvm_run`` area mapped.

    The exit objects :meth:`run` returns for MMIO, halt and interrupted exits are reused from
    one call to the next (like ``kvm_run`` itself): use them before calling ``run()`` again.
    """

    def __init__(self, fd: int, vcpu_id: int, mmap_size: int) -> None:
        self.fd = fd
        self.id = vcpu_id
        libc = _libc()
        self._ioctl = libc.ioctl
        self._null = ffi.NULL
        addr = libc.mmap(self._null, mmap_size, _PROT_READ_WRITE, _MAP_SHARED, fd, 0)
        if int(ffi.cast("uintptr_t", addr)) == _MAP_FAILED:
            raise KvmIoctlError("mmap of kvm_run", ffi.errno)
        self._map = addr
        self._map_size = mmap_size
        self.kvm_run: Any = ffi.cast("struct kvm_run *", addr)
        run = self.kvm_run
        self._mmio = run.mmio
        self._mmio_data = ffi.cast("uint64_t *", ffi.addressof(run.mmio, "data"))
        # One unpack of the mapping reads the exit reason and the MMIO fields (cheaper than
        # four cdata reads: the MMIO exit is the hot path).
        self._view = memoryview(ffi.buffer(run))
        self._unpack_exit = _EXIT_AND_MMIO.unpack_from
        self._mmio_exit = MmioExit(0, 0, False, 0)
        self._intr_exit = IntrExit()
        self._halt_exit = HaltExit()

    def close(self) -> None:
        if self.fd >= 0:
            self._view.release()
            _libc().munmap(self._map, self._map_size)
            self.kvm_run = None
            super().close()

    # -- running ---------------------------------------------------------------------------

    def run(self) -> VcpuExit:
        """``KVM_RUN`` until the next exit; ``EINTR``/``EAGAIN`` (a signal or
        ``immediate_exit``) return :class:`IntrExit` and clear ``immediate_exit``."""
        failed = self._ioctl(self.fd, 0xAE80, self._null) < 0  # abi.KVM_RUN
        return self.finish_run(ffi.errno if failed else 0)

    @property
    def run_area(self) -> int:
        """Address of the mapped ``kvm_run`` (for a run loop in C)."""
        return int(ffi.cast("uintptr_t", self._map))

    def finish_run(self, err: int) -> VcpuExit:
        """The exit of a ``KVM_RUN`` made by other code on this vCPU (a run loop in C), as
        :meth:`run` returns it: ``err`` is its errno, 0 when it succeeded."""
        if err:
            if err == errno.EINTR or err == errno.EAGAIN:
                self.kvm_run.immediate_exit = 0
                return self._intr_exit
            raise KvmIoctlError("KVM_RUN", err)
        # The hot path, inlined: filled into the preallocated exit object.
        reason, gpa, data, size, is_write = self._unpack_exit(self._view, 8)
        if reason != 6:  # abi.KVM_EXIT_MMIO
            return self.decode_exit(reason)
        out = self._mmio_exit
        out.gpa = gpa
        out.size = size
        if is_write:
            out.is_write = True
            out.value = data & _DATA_MASKS[size]
        else:
            out.is_write = False
            out.value = 0
        return out

    def decode_exit(self, reason: int) -> VcpuExit:
        """The exit value for ``kvm_run`` as ``KVM_RUN`` left it with ``reason``."""
        if reason == abi.KVM_EXIT_MMIO:
            mmio = self._mmio
            out = self._mmio_exit
            out.gpa = mmio.phys_addr
            out.size = mmio.len
            out.is_write = bool(mmio.is_write)
            out.value = self._mmio_data[0] & _DATA_MASKS[mmio.len] if mmio.is_write else 0
            return out
        run = self.kvm_run
        if reason == abi.KVM_EXIT_RISCV_SBI:
            sbi = run.riscv_sbi
            return SbiExit(sbi.extension_id, sbi.function_id, tuple(sbi.args))
        if reason == abi.KVM_EXIT_INTR:
            return self._intr_exit
        if reason == abi.KVM_EXIT_HLT:
            return self._halt_exit
        if reason == abi.KVM_EXIT_SYSTEM_EVENT:
            event = _SYSTEM_EVENTS.get(run.system_event.type)
            if event is None:
                return UnsupportedExit(reason)
            ndata = run.system_event.ndata
            return SystemEventExit(event, run.system_event.data[0] if ndata else 0)
        if reason == abi.KVM_EXIT_FAIL_ENTRY:
            fail = run.fail_entry
            return InternalErrorExit(
                f"KVM_EXIT_FAIL_ENTRY: hardware entry failure reason 0x"
                f"{fail.hardware_entry_failure_reason:x} (cpu {fail.cpu})")
        if reason == abi.KVM_EXIT_INTERNAL_ERROR:
            internal = run.internal
            data = " ".join(f"0x{internal.data[i]:x}" for i in range(min(internal.ndata, 16)))
            return InternalErrorExit(
                f"KVM_EXIT_INTERNAL_ERROR: suberror {internal.suberror}"
                + (f", data {data}" if data else ""))
        return UnsupportedExit(reason)

    def complete_mmio_read(self, value: int) -> None:
        """Store the loaded value (little-endian, ``len`` bytes used) for the next ``run()``."""
        self._mmio_data[0] = value & _U64

    def complete_sbi(self, error: int, value: int) -> None:
        """a0/a1 for the SBI call of the last exit; KVM copies them and skips the ``ecall``."""
        sbi = self.kvm_run.riscv_sbi
        sbi.ret[0] = error & _U64
        sbi.ret[1] = value & _U64

    def complete_csr(self, value: int) -> None:
        """The value read by the CSR access of the last ``KVM_EXIT_RISCV_CSR``."""
        self.kvm_run.riscv_csr.ret_value = value & _U64

    def set_immediate_exit(self, flag: bool) -> None:
        """Thread-safe: make the next (or current, with a signal) ``KVM_RUN`` return EINTR."""
        self.kvm_run.immediate_exit = 1 if flag else 0

    # -- registers and state --------------------------------------------------------------

    def get_one_reg(self, reg_id: int) -> int:
        """``KVM_GET_ONE_REG`` of a 32- or 64-bit register."""
        buf = ffi.new("uint64_t *")
        reg = ffi.new("struct kvm_one_reg *")
        reg.id = reg_id
        reg.addr = int(ffi.cast("uintptr_t", buf))
        self.ioctl(abi.KVM_GET_ONE_REG, reg, "KVM_GET_ONE_REG")
        if (reg_id >> abi.KVM_REG_SIZE_SHIFT) & 0xF == 2:  # U32
            return int(ffi.cast("uint32_t *", buf)[0])
        return int(buf[0])

    def set_one_reg(self, reg_id: int, value: int) -> None:
        """``KVM_SET_ONE_REG`` of a 32- or 64-bit register."""
        buf = ffi.new("uint64_t *")
        if (reg_id >> abi.KVM_REG_SIZE_SHIFT) & 0xF == 2:  # U32
            ffi.cast("uint32_t *", buf)[0] = value & 0xFFFFFFFF
        else:
            buf[0] = value & _U64
        reg = ffi.new("struct kvm_one_reg *")
        reg.id = reg_id
        reg.addr = int(ffi.cast("uintptr_t", buf))
        self.ioctl(abi.KVM_SET_ONE_REG, reg, "KVM_SET_ONE_REG")

    def get_reg_list(self) -> list[int]:
        """Every ONE_REG id this vCPU has (``KVM_GET_REG_LIST``)."""
        probe = ffi.new("struct kvm_reg_list *")
        ret = self._ioctl(self.fd, abi.KVM_GET_REG_LIST, probe)
        if ret < 0 and ffi.errno != errno.E2BIG:
            raise KvmIoctlError("KVM_GET_REG_LIST", ffi.errno)
        count = int(probe.n)
        regs = ffi.new("struct kvm_reg_list *", {"n": count, "reg": count})
        regs.n = count
        self.ioctl(abi.KVM_GET_REG_LIST, regs, "KVM_GET_REG_LIST")
        return [int(regs.reg[i]) for i in range(regs.n)]

    def interrupt(self, irq: int) -> None:
        """``KVM_INTERRUPT`` (riscv: ``KVM_INTERRUPT_SET``/``UNSET`` the external line)."""
        arg = ffi.new("struct kvm_interrupt *")
        arg.irq = irq
        self.ioctl(abi.KVM_INTERRUPT, arg, "KVM_INTERRUPT")

    def set_guest_debug(self, control: int) -> None:
        """``KVM_SET_GUEST_DEBUG`` with ``control`` (riscv64: no arch part)."""
        arg = ffi.new("uint32_t[2]")
        arg[0] = control & 0xFFFFFFFF
        self.ioctl(abi.KVM_SET_GUEST_DEBUG, arg, "KVM_SET_GUEST_DEBUG")

    def get_mp_state(self) -> int:
        arg = ffi.new("struct kvm_mp_state *")
        self.ioctl(abi.KVM_GET_MP_STATE, arg, "KVM_GET_MP_STATE")
        return int(arg.mp_state)

    def set_mp_state(self, state: int) -> None:
        arg = ffi.new("struct kvm_mp_state *")
        arg.mp_state = state
        self.ioctl(abi.KVM_SET_MP_STATE, arg, "KVM_SET_MP_STATE")
