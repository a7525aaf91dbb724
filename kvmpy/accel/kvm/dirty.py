"""KVM's dirty-page log of one memory slot: ``KVM_MEM_LOG_DIRTY_PAGES`` and
``KVM_GET_DIRTY_LOG`` (bit n of the bitmap: page n of the slot written since the last get).

Arch-neutral: the same on an x86 ``/dev/kvm`` as on RISC-V, which is how it is tested here.
"""

from __future__ import annotations

from typing import Any

from kvmpy.accel.kvm import abi
from kvmpy.errors import AccelError


class KvmDirtyLog:
    """The dirty log of slot ``slot`` (``size`` bytes at ``gpa``, host ``host_address``) of
    ``vm`` (a :class:`kvmpy.accel.kvm.kvm.Vm`); ``flags``: the slot's other flags."""

    def __init__(self, vm: Any, slot: int, gpa: int, size: int, host_address: int,
                 flags: int = 0) -> None:
        self.vm = vm
        self.slot = slot
        self.gpa = gpa
        self.size = size
        self.host_address = host_address
        self.flags = flags
        self.on = False

    def _set_slot(self, flags: int) -> None:
        try:
            self.vm.set_user_memory_region(self.slot, self.gpa, self.size, self.host_address,
                                           flags)
        except OSError as exc:
            raise AccelError(f"kvm: {exc} (dirty log of slot {self.slot})") from exc

    def start_dirty_log(self) -> None:
        self._set_slot(self.flags | abi.KVM_MEM_LOG_DIRTY_PAGES)
        self.on = True

    def collect_dirty(self) -> bytes:
        """Pages written since the last call (or the start); the log is cleared.  Safe
        while vCPUs run."""
        try:
            return bytes(self.vm.get_dirty_log(self.slot, self.size >> 12))
        except OSError as exc:
            raise AccelError(f"kvm: {exc} (slot {self.slot})") from exc

    def stop_dirty_log(self) -> None:
        if self.on:
            self._set_slot(self.flags)
            self.on = False


def accel_dirty_log(accel: Any, ram: Any) -> KvmDirtyLog:
    """The dirty log of ``ram``'s memory slot in a :class:`~kvmpy.accel.kvm.riscv.KvmAccel`."""
    vm = getattr(accel, "_vm", None)
    regions = list(getattr(accel, "_regions", []))
    if vm is None or ram not in regions:
        raise AccelError(f"{getattr(accel, 'name', 'accel')}: no dirty log for this RAM")
    return KvmDirtyLog(vm, regions.index(ram), ram.base, ram.size, ram.host_address)
