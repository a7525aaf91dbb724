"""Doorbells through ``KVM_IOEVENTFD``: a virtio queue notify completes in the kernel.

A device on the MMIO bus may name its *doorbells* (``doorbells()`` -> ``(offset, size,
value)`` tuples): registers whose writes only ask it to look at its queues, so the vCPU need
not wait while the device works.  For each, KVM gets an eventfd with the address, width and
value (``datamatch``); the guest's write then signals the eventfd in the kernel and the vCPU
runs on, without an exit to kvmpy.  The main loop reads the eventfd and makes the bus write the
MMIO exit would have made, under the big lock, so the device cannot tell the difference.
Several kicks before the main loop gets to them count once, as virtio allows (a notification
only says "look at the queue").

Interrupts still go through ``KVM_INTERRUPT``: ``KVM_IRQFD`` needs an in-kernel irqchip (on
RISC-V the AIA), and kvmpy's PLIC is in the VMM.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvmpy.accel.kvm import abi

if TYPE_CHECKING:
    from kvmpy.accel.kvm.kvm import Vm
    from kvmpy.memory import MmioBus

_log = logging.getLogger("kvmpy")


@dataclass(frozen=True)
class Doorbell:
    """One registration: a write of ``size`` bytes of ``value`` at ``gpa`` signals ``fd``."""

    gpa: int
    size: int
    value: int
    fd: int
    name: str


class Doorbells:
    """The doorbells of every device on ``bus``, as KVM ioeventfds of ``vm``.

    :meth:`attach` registers them and hands each eventfd to ``add_reader`` (the main loop's);
    a signalled one is completed with ``bus.write`` under ``lock``.  :meth:`drain` completes
    what is pending now (before the VM's state is read or saved); :meth:`close` undoes it all.
    ``on_error`` is told of a device that failed on a doorbell (a bug in kvmpy).
    """

    def __init__(self, vm: Vm, bus: MmioBus, lock: threading.RLock,
                 on_error: Callable[[str], None] | None = None) -> None:
        self._vm = vm
        self._bus = bus
        self._lock = lock
        self._on_error = on_error
        self.bells: list[Doorbell] = []
        self._remove_reader: Callable[[int], None] | None = None

    def attach(self, add_reader: Callable[[int, Callable[[], None]], None],
               remove_reader: Callable[[int], None] | None = None) -> int:
        """Register every device's doorbells; returns how many KVM accepted (0 when it has
        no ioeventfds)."""
        try:
            if not self._vm.check_extension(abi.KVM_CAP_IOEVENTFD):
                _log.debug("kvm: no KVM_CAP_IOEVENTFD: virtio kicks exit to kvmpy")
                return 0
        except OSError as exc:
            _log.debug("kvm: KVM_CAP_IOEVENTFD not answered: %s", exc)
            return 0
        self._remove_reader = remove_reader
        for region in self._bus.regions:
            doorbells = getattr(region.device, "doorbells", None)
            if doorbells is None:
                continue
            for offset, size, value in doorbells():
                bell = self._register(region.base + offset, size, value, region.name)
                if bell is not None:
                    self.bells.append(bell)
                    add_reader(bell.fd, functools.partial(self._fire, bell))
        return len(self.bells)

    def _register(self, gpa: int, size: int, value: int, name: str) -> Doorbell | None:
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            self._vm.ioeventfd(fd, gpa, size, value)
        except OSError as exc:  # e.g. an address KVM already has: the write exits as before
            os.close(fd)
            _log.debug("kvm: no ioeventfd for %s at 0x%x: %s", name, gpa, exc)
            return None
        return Doorbell(gpa, size, value, fd, name)

    def _fire(self, bell: Doorbell) -> None:
        try:
            os.eventfd_read(bell.fd)
        except (BlockingIOError, OSError):  # already completed by drain(), or closed
            return
        try:
            with self._lock:
                self._bus.write(bell.gpa, bell.size, bell.value)
        except Exception as exc:  # a bug in the device model: say so, keep the loop alive
            _log.exception("%s: doorbell 0x%x failed", bell.name, bell.gpa)
            if self._on_error is not None:
                self._on_error(f"{bell.name}: doorbell 0x{bell.gpa:x} failed: {exc}")

    def drain(self) -> None:
        """Complete every doorbell signalled and not yet served (any thread)."""
        for bell in self.bells:
            self._fire(bell)

    def close(self) -> None:
        """Deassign the ioeventfds (the writes exit again) and close the eventfds."""
        bells, self.bells = self.bells, []
        for bell in bells:
            if self._remove_reader is not None:
                self._remove_reader(bell.fd)
            with contextlib.suppress(OSError):
                self._vm.ioeventfd(bell.fd, bell.gpa, bell.size, bell.value, deassign=True)
            os.close(bell.fd)
