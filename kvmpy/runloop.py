"""Phase 6: vCPUs run, and each exit becomes a device call.

:func:`handle_exit` is the one free function that maps an exit to handled / stopped (STYLE.md,
after Firecracker).  Two drivers call ``vcpu.run()``: :class:`RoundRobinDriver` runs all harts
on one thread with fair slices (the interpreter's ``thread=single``),
:class:`ThreadPerVcpuDriver` gives each vCPU its own thread blocked in ``run()`` (KVM, and the
interpreter's ``thread=multi``).  Both honour pause requests by kicking vCPUs and
parking their threads, so a paused VM's registers can be read.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from kvmpy import log
from kvmpy.accel.exits import (
    DebugExit,
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

if TYPE_CHECKING:
    from kvmpy.accel.base import Vcpu
    from kvmpy.system import System

_log = logging.getLogger("kvmpy")

SBI_ERR_NOT_SUPPORTED = -2
MAX_IDLE_SLEEP_S = 0.5


def handle_exit(system: System, vcpu: Vcpu, exit_: VcpuExit) -> bool:
    """Complete one exit. Returns False when this vCPU must stop running (fatal error)."""
    if type(exit_) is MmioExit:
        lock = system.lock
        lock.acquire()  # not `with`: this is the hot path, and acquire/release cost half
        try:
            if exit_.is_write:
                system.bus.write(exit_.gpa, exit_.size, exit_.value)
            else:
                vcpu.complete_mmio_read(system.bus.read(exit_.gpa, exit_.size))
        finally:
            lock.release()
        return True
    if isinstance(exit_, (IntrExit, HaltExit)):
        return True
    if isinstance(exit_, SbiExit):
        with system.lock:
            if system.sbi is None:
                log.guest_error(f"hart {vcpu.index}: SBI call eid=0x{exit_.eid:x} "
                                f"fid={exit_.fid} with no SBI implementation")
                vcpu.complete_sbi(SBI_ERR_NOT_SUPPORTED, 0)
            else:
                error, value = system.sbi.handle(vcpu, exit_)
                vcpu.complete_sbi(error, value)
        return True
    if isinstance(exit_, SystemEventExit):
        if exit_.event == SystemEvent.SHUTDOWN:
            system.request_shutdown("guest-shutdown", guest=True)
        elif exit_.event == SystemEvent.RESET:
            system.request_reset("guest-reset", guest=True)
        else:
            system.report_guest_panic()
        return True
    if isinstance(exit_, DebugExit):
        system.debug_exception(vcpu, exit_)
        return True
    if isinstance(exit_, InternalErrorExit):
        system.report_internal_error(f"hart {vcpu.index}: {exit_.message}")
        return False
    if isinstance(exit_, UnsupportedExit):
        system.report_internal_error(f"hart {vcpu.index}: unsupported exit reason {exit_.code}")
        return False
    raise TypeError(f"not a vCPU exit: {exit_!r}")


class Driver:
    """Runs vCPUs on their own thread(s); paused until :meth:`resume`."""

    def __init__(self, system: System, vcpus: list[Vcpu]) -> None:
        self.system = system
        self.vcpus = vcpus
        self._cond = threading.Condition()
        self._running = False
        self._quit = False
        self._parked = 0
        self._finished = 0
        self._threads: list[threading.Thread] = []
        self._wake = threading.Event()
        attach = getattr(getattr(system, "accel", None), "attach_c_mmio", None)
        if attach is not None:  # devices with a C half, for an accelerator that calls C
            attach(system.bus)

    @property
    def nthreads(self) -> int:
        return len(self._threads)

    def thread_ids(self) -> list[int]:
        """Native thread id serving each vCPU (QMP query-cpus-fast ``thread-id``)."""
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def wake(self) -> None:
        """An interrupt became pending: end an idle sleep now."""
        self._wake.set()

    def resume(self) -> None:
        with self._cond:
            self._running = True
            self._cond.notify_all()
        self.wake()

    def pause(self) -> None:
        """Stop all vCPUs and return once none is inside ``run()``."""
        with self._cond:
            self._running = False
            for vcpu in self.vcpus:
                vcpu.kick()
            self.wake()
            while self._parked + self._finished < len(self._threads) and not self._quit:
                self._cond.wait(0.05)
                for vcpu in self.vcpus:
                    vcpu.kick()

    def stop_soon(self) -> None:
        """Non-blocking pause request, safe from a vCPU thread: no vCPU enters run() again."""
        with self._cond:
            self._running = False
        for vcpu in self.vcpus:
            vcpu.kick()
        self.wake()

    def _thread_finished(self) -> None:
        with self._cond:
            self._finished += 1
            self._cond.notify_all()

    def quit(self) -> None:
        with self._cond:
            self._running = False
            self._quit = True
            self._cond.notify_all()
        for vcpu in self.vcpus:
            vcpu.kick()
        self.wake()
        current = threading.current_thread()
        for thread in self._threads:
            if thread is not current:
                thread.join()

    def _wait_until_running(self, vcpu: Vcpu | None = None) -> bool:
        """Park while paused; returns False when the driver quits.  ``vcpu``: the one this
        thread runs (its kicks are forgotten after the pause; with None, every vCPU's)."""
        if self._running:  # the common case, checked without the lock (pause() kicks anyway)
            return True
        with self._cond:
            if self._running:
                return not self._quit
            self._parked += 1
            self._cond.notify_all()
            while not self._running and not self._quit:
                self._cond.wait()
            self._parked -= 1
            # the kicks were for the pause that just ended; not another thread's vCPU's,
            # which may still be on its way out (a quit)
            for each in self.vcpus if vcpu is None else [vcpu]:
                cancel = getattr(each, "cancel_kick", None)
                if cancel is not None:
                    cancel()
            return not self._quit


class RoundRobinDriver(Driver):
    """All harts on one thread, each given a slice in turn; sleeps when every hart idles."""

    def start(self) -> None:
        thread = threading.Thread(target=self._loop, name="vcpu-rr", daemon=True)
        self._threads = [thread]
        thread.start()

    def thread_ids(self) -> list[int]:
        tid = self._threads[0].native_id if self._threads else None
        return [tid or 0 for _ in self.vcpus]

    def _loop(self) -> None:
        alive = [True] * len(self.vcpus)
        first = 0  # after a stop, the round goes on with the next hart (fair to all harts)
        try:
            while self._wait_until_running():
                idle = True
                deadline: int | None = None
                n = len(self.vcpus)
                order = [(first + k) % n for k in range(n)]
                first = 0
                for i in order:
                    vcpu = self.vcpus[i]
                    if not alive[i] or getattr(vcpu, "stopped", False):
                        continue
                    exit_ = vcpu.run()
                    if isinstance(exit_, HaltExit):
                        if exit_.deadline_ns is not None:
                            deadline = (exit_.deadline_ns if deadline is None
                                        else min(deadline, exit_.deadline_ns))
                        continue
                    idle = False
                    alive[i] = handle_exit(self.system, vcpu, exit_)
                    if not self._running:
                        first = (i + 1) % len(self.vcpus)
                        break
                if idle and self._running:
                    self._idle(deadline)
        except Exception as exc:  # a bug in kvmpy, not the guest: stop the VM, say why
            _log.exception("vCPU thread failed")
            self.system.report_internal_error(f"vCPU thread failed: {exc}")
        finally:
            self._thread_finished()

    def _idle(self, deadline: int | None) -> None:
        timeout = MAX_IDLE_SLEEP_S
        if deadline is not None:
            timeout = min(timeout, max(0.0, (deadline - time.monotonic_ns()) / 1e9))
        if timeout > 0:
            self._wake.wait(timeout)
        self._wake.clear()


class ThreadPerVcpuDriver(Driver):
    """One thread per vCPU, each blocked in ``run()`` (KVM).

    With the main loop running, the accelerator may take the devices' doorbells (virtio
    queue notifies) into the kernel (``start_doorbells``): a kick then completes without an
    exit and the main loop serves the device.  A pause serves what is still pending
    (``drain_doorbells``), so a paused VM's device state is complete.
    """

    def start(self) -> None:
        start_doorbells = getattr(self.system.accel, "start_doorbells", None)
        if start_doorbells is not None and self.system.loop is not None:
            start_doorbells(self.system)
        self._threads = [
            threading.Thread(target=self._loop, args=(vcpu,), name=f"vcpu-{vcpu.index}",
                             daemon=True)
            for vcpu in self.vcpus
        ]
        for thread in self._threads:
            thread.start()

    def thread_ids(self) -> list[int]:
        return [thread.native_id or 0 for thread in self._threads]

    def pause(self) -> None:
        super().pause()
        drain = getattr(self.system.accel, "drain_doorbells", None)
        if drain is not None:
            drain()

    def _loop(self, vcpu: Vcpu) -> None:
        system = self.system
        run = vcpu.run
        complete_read = vcpu.complete_mmio_read
        acquire, release = system.lock.acquire, system.lock.release
        bus = system.bus
        try:
            while self._running or self._wait_until_running(vcpu):
                exit_ = run()
                if exit_.__class__ is MmioExit:  # handle_exit's first case, inlined
                    acquire()
                    try:
                        if exit_.is_write:
                            bus.write(exit_.gpa, exit_.size, exit_.value)
                        else:
                            complete_read(bus.read(exit_.gpa, exit_.size))
                    finally:
                        release()
                elif not handle_exit(system, vcpu, exit_):
                    return
        except Exception as exc:
            _log.exception("vCPU thread failed")
            self.system.report_internal_error(f"vCPU {vcpu.index} thread failed: {exc}")
        finally:
            self._thread_finished()
