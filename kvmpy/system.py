"""A running VM: the six phases of QEMU's machine creation, and the main loop.

1. options (``kvmpy.cli`` or the library) give a :class:`~kvmpy.config.VMConfig`;
2. :func:`~kvmpy.machine.select_machine_class` picks the machine type;
3. :func:`~kvmpy.machine.instantiate_machine` applies defaults and properties;
   the accelerator is selected here too (QEMU's ``configure_accelerators``), since the board
   reads its capabilities;
4. board init: ``machine.init(system)`` builds RAM, devices, the device tree, loads payloads;
5. accelerator init: vCPUs are created on the RAM mapping and attached to the harts;
6. run: a driver runs the vCPUs while the main loop (:mod:`kvmpy.mainloop`) serves chardevs,
   monitors and timers, until shutdown.

Devices are called from vCPU threads and from the main loop; :attr:`System.lock` (QEMU's big
lock) serialises every device call.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from kvmpy import qom
from kvmpy.accel.base import PRV_M, AccelCaps, Accelerator, Vcpu
from kvmpy.chardev.base import Chardev
from kvmpy.config import VMConfig
from kvmpy.errors import AccelError, ConfigError, StateError
from kvmpy.hw.cpu import HartPort
from kvmpy.log import stderr_line
from kvmpy.machine import MachineState, instantiate_machine, select_machine_class
from kvmpy.mainloop import MainLoop
from kvmpy.memory import GuestRAM, MmioBus
from kvmpy.monitor.throttle import EventThrottle
from kvmpy.runloop import Driver, RoundRobinDriver, ThreadPerVcpuDriver

_log = logging.getLogger("kvmpy")

DEFAULT_ACCELS = ("kvm", "tcg")
EventListener = Callable[[str, dict[str, Any]], None]


@dataclass
class HartBoot:
    """Where one hart starts after reset."""

    pc: int = 0x1000
    priv: int = PRV_M
    a0: int = 0
    a1: int = 0
    stopped: bool = False


@dataclass
class BootState:
    """Filled by board init; applied to every vCPU at start and on system_reset."""

    harts: list[HartBoot] = field(default_factory=list)


class SbiHandler(Protocol):
    def handle(self, vcpu: Any, exit_: Any) -> tuple[int, int]: ...


class ResettableMachine(Protocol):
    def reset(self, system: System) -> None: ...


def accel_types() -> list[type[Accelerator]]:
    return [info.cls for info in qom.object_class_get_list("accel")]


def find_accel_class(name: str) -> type[Accelerator] | None:
    info = qom.type_info(f"{name}-accel")  # QEMU's naming: imports just that accelerator
    if info is not None and issubclass(info.cls, Accelerator) and info.cls.name == name:
        return info.cls
    for cls in accel_types():
        if cls.name == name:
            return cls
    return None


def accel_help() -> str:
    return "\n".join(["Accelerators supported in QEMU binary:",
                      *sorted(cls.name for cls in accel_types())])


class _Clock:
    """mtime at the board's 10 MHz timebase, from the accelerator when it keeps time."""

    def __init__(self, system: System) -> None:
        self._system = system
        self._origin_ns = time.monotonic_ns()

    def read(self) -> int:
        accel = self._system.accel
        reader = getattr(accel, "read_mtime", None)
        if reader is not None:
            return int(reader())
        return (time.monotonic_ns() - self._origin_ns) // 100

    def write(self, value: int) -> None:
        writer = getattr(self._system.accel, "write_mtime", None)
        if writer is not None:
            writer(value)
        else:
            self._origin_ns = time.monotonic_ns() - value * 100


class _WakingBackend:
    """Forwards a HartPort to its vCPU and wakes an idle driver when a pin changes."""

    def __init__(self, vcpu: Vcpu, system: System) -> None:
        self.vcpu = vcpu
        self.system = system

    def set_irq(self, irq: int, level: bool) -> None:
        self.vcpu.set_irq(irq, level)
        if level and self.system.driver is not None:
            self.system.driver.wake()

    def get_reg(self, name: str) -> int:
        return self.vcpu.get_reg(name)

    def set_reg(self, name: str, value: int) -> None:
        self.vcpu.set_reg(name, value)


class System:
    """One VM. Build it with :meth:`create` (phases 2-5), then :meth:`run` (phase 6)."""

    def __init__(self, config: VMConfig, console: Chardev | None = None,
                 chardevs: Mapping[str, Chardev] | None = None) -> None:
        """``console``: the serial console's chardev instead of what ``-serial`` says;
        ``chardevs``: Python objects as chardevs by id, for devices that name them
        (``virtserialport,chardev=ID``) as they name ``-chardev`` ones."""
        self.config = config
        self._console = console
        self._own_chardevs = dict(chardevs or {})
        self.lock = threading.RLock()
        self.bus = MmioBus()
        self.ram: GuestRAM | None = None
        self.roms: list[GuestRAM] = []
        self.harts: list[HartPort] = []
        self.boot = BootState()
        self.sbi: SbiHandler | None = None
        self.firmware_mode = "none"
        self.machine: MachineState | None = None
        self.accel: Accelerator | None = None
        self._accel_text = "-accel"  # the option that chose it, for its errors
        self._accel_props: dict[str, str] = {}
        self.caps = AccelCaps(machine_mode=True, in_kernel_timer_ipi=False)
        self.driver: Driver | None = None
        self.time_source = _Clock(self)
        self.chardevs: dict[str, Chardev] = {}
        self.netdevs: dict[str, Any] = {}
        """Network back-ends by id (``-netdev``, ``-nic``, ``-net``)."""
        self.fsdevs = dict(config.fsdevs)
        """Exported host directories by id (``-fsdev``, ``-virtfs``)."""
        self._closers: list[Callable[[], None]] = []
        self.serials: list[Chardev | None] = []
        self.monitors: list[Any] = []
        self.status = "prelaunch"
        self._frozen_mtime: int | None = None
        self.exit_code = 0
        self.notices: list[str] = []
        self._listeners: list[EventListener] = []
        self._throttle = EventThrottle(self._deliver_event, self.schedule)
        self._loop: MainLoop | None = None
        self._pending_timers: list[tuple[int, Callable[[], None]]] = []
        self._always_readable: dict[int, Callable[[], None]] = {}
        self._closed = False
        self.gdbstub: Any = None
        """The gdb stub (``-gdb``, ``-s``, HMP ``gdbserver``), told of debug exits."""

    # -- phases 2 to 5 -------------------------------------------------------------------

    def create(self) -> System:
        config = self.config
        cls = select_machine_class(config)                      # phase 2
        self.machine = instantiate_machine(cls, config)         # phase 3
        self.accel = self._select_accelerator()
        self.caps = self.accel.caps
        if config.icount_shift is not None and not self.accel.supports_icount:
            raise ConfigError(f"-icount is not supported with accelerator "
                              f"'{self.accel.name}'", option="-icount")
        if hasattr(self.accel, "thread") and "thread" not in self._accel_props:
            # QEMU's default: a thread per hart, except with -icount
            self.accel.thread = "single" if config.icount_shift is not None else "multi"
        if config.icount_shift is not None and getattr(self.accel, "thread", "") == "multi":
            raise ConfigError("No MTTCG when icount is enabled", option=self._accel_text)
        self._open_chardevs()
        self._open_netdevs()
        self.harts = [HartPort(i) for i in range(self.machine.smp.cpus)]
        self.machine.init(self)                                 # phase 4
        if self.netdevs:
            from kvmpy.net.setup import warn_unconnected

            warn_unconnected(self.netdevs)
        if self.ram is None and not getattr(cls, "ramless", False):
            raise ConfigError(f"machine '{cls.name}' created no RAM")
        if self.ram is not None:  # the none machine has neither RAM nor vCPUs
            self.accel.init_machine(self.ram, len(self.harts), self.roms)  # phase 5
        if config.icount_shift is not None:
            self.accel.set_icount(config.icount_shift)
        for hart, vcpu in zip(self.harts, self.accel.vcpus, strict=True):
            hart.attach(_WakingBackend(vcpu, self))
        self._apply_boot_state()
        driver_cls = ThreadPerVcpuDriver if self.accel.threaded_vcpus else RoundRobinDriver
        self.driver = driver_cls(self, list(self.accel.vcpus))
        if config.gdb is not None:
            from kvmpy.gdbstub import gdbserver_start

            gdbserver_start(self, config.gdb, option=f"-gdb {config.gdb}")
        return self

    def _accel_choices(self) -> tuple[list[tuple[str, dict[str, str], str]], bool]:
        """(name, props, option text) in fallback order, and whether the user chose them."""
        config = self.config
        if config.accels:
            return [(a.driver, a.props, a.text or f"-accel {a.driver}") for a in config.accels], \
                True
        machine_accel = self.machine.accel if self.machine is not None else ""
        if machine_accel:
            return [(name, {}, f"-machine accel={machine_accel}")
                    for name in machine_accel.split(":")], True
        return [(name, {}, f"-accel {name}") for name in DEFAULT_ACCELS], False

    def _select_accelerator(self) -> Accelerator:
        choices, explicit = self._accel_choices()
        reasons: list[str] = []
        for name, props, text in choices:
            cls = find_accel_class(name)
            if cls is None:
                raise ConfigError(f"invalid accelerator {name}", option=text)
            reason = cls.unavailable_reason()
            if reason is None:
                accel: Accelerator = qom.object_new(cls.type_name, props)
                self._accel_text = text
                self._accel_props = props
                if reasons and not explicit:
                    self.notice(f"{reasons[-1]}; falling back to {name}")
                elif reasons:
                    self.notice(reasons[-1])
                return accel
            reasons.append(f"{text}: {reason}")
        if len(choices) == 1 or explicit:
            raise AccelError(reasons[0] if len(reasons) == 1 else "; ".join(reasons))
        raise AccelError("no accelerator found: " + "; ".join(reasons))

    def notice(self, message: str) -> None:
        """A one-line notice on stderr (fallbacks, firmware choice, bundled guest)."""
        self.notices.append(message)
        stderr_line(f"kvmpy: {message}")


    def _open_chardevs(self) -> None:
        from kvmpy import chardev as chardev_pkg

        opener = getattr(chardev_pkg, "open_backends", None)
        if opener is not None:
            self.chardevs, self.serials, self.monitors = opener(self)
        for chardev_id, chardev in self._own_chardevs.items():
            if chardev_id in self.chardevs:
                raise ConfigError(f"Duplicate ID '{chardev_id}' for chardev")
            self.chardevs[chardev_id] = chardev
        if self._console is not None:
            self.serials = [self._console]
        for serial in self.serials:
            if serial is not None:
                serial.frontend_lock = self.lock

    def _open_netdevs(self) -> None:
        if self.config.netdevs:
            from kvmpy.net.setup import open_netdevs

            self.netdevs = open_netdevs(self.config.netdevs)

    def at_close(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` when the VM closes, after the vCPUs stopped (device worker threads)."""
        self._closers.append(fn)

    def create_ram(self, base: int, size: int, name: str = "ram") -> GuestRAM:
        """Board init: the machine's RAM (one region; shared with the accelerator)."""
        if self.ram is not None:
            raise ConfigError("only one RAM region is supported")
        backend = self.config.objects.get(self.config.machine_props.get("memory-backend", ""))
        if backend is None:
            self.ram = GuestRAM(base, size, name)
            return self.ram
        from kvmpy.objects import open_ram_fd

        opened = open_ram_fd(backend, backend.id)
        if opened is None:
            self.ram = GuestRAM(base, size, name)
        else:
            fd, shared = opened
            try:
                self.ram = GuestRAM(base, size, name, fd=fd, shared=shared)
            finally:
                os.close(fd)  # the mapping holds its own reference
            self.ram.discard_data = bool(backend.props.get("discard-data"))
        if backend.props.get("prealloc"):
            self.ram.preallocate()
        return self.ram

    def create_rom(self, base: int, size: int, name: str) -> GuestRAM:
        """Board init: a read-only region (boot ROM); fill it with ``write`` before phase 5."""
        rom = GuestRAM(base, size, name)
        self.roms.append(rom)
        return rom

    def memory_at(self, gpa: int, size: int = 1) -> GuestRAM | None:
        """The RAM or ROM region holding ``[gpa, gpa + size)``, if any."""
        for region in (self.ram, *self.roms):
            if region is not None and region.contains(gpa, size):
                return region
        return None

    def serial_chardev(self, index: int) -> Chardev | None:
        return self.serials[index] if index < len(self.serials) else None

    def _apply_boot_state(self) -> None:
        assert self.accel is not None
        for i, vcpu in enumerate(self.accel.vcpus):
            hb = self.boot.harts[i] if i < len(self.boot.harts) else HartBoot()
            vcpu.reset(hb.pc, hb.priv, hb.a0, hb.a1, hb.stopped)

    # -- events and run states -----------------------------------------------------------

    def add_event_listener(self, listener: EventListener) -> None:
        self._listeners.append(listener)

    def remove_event_listener(self, listener: EventListener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def emit(self, event: str, data: dict[str, Any] | None = None) -> None:
        """Send ``event`` to every listener (QMP monitors, ``kvmpy.VM``); guest-triggerable
        ones at QEMU's rate (:mod:`kvmpy.monitor.throttle`)."""
        self._throttle.emit(event, data or {})

    def _deliver_event(self, event: str, data: dict[str, Any]) -> None:
        for listener in list(self._listeners):
            listener(event, data)

    def _set_status(self, status: str) -> None:
        self.status = status

    def runstate_set(self, status: str) -> None:
        """Enter a stopped run state without an event (QEMU's runstate_set): migration's
        ``finish-migrate``, ``postmigrate``, and ``paused``/``prelaunch`` after an incoming
        migration that does not start the guest.  Guest time stands still from here."""
        self._freeze_clock()
        self._set_status(status)

    @property
    def running(self) -> bool:
        return self.status == "running"

    def pause(self, state: str = "paused") -> None:
        """QMP ``stop``: vCPUs stop; STOP event.  ``state``: the run state to enter
        (``debug`` when a debugger stopped the VM, as QEMU's vm_stop(RUN_STATE_DEBUG))."""
        if self.status != "running":
            return
        assert self.driver is not None
        self.driver.pause()
        self._freeze_clock()
        self._set_status(state)
        self.emit("STOP")

    def debug_exception(self, vcpu: Vcpu, exit_: Any) -> None:
        """A vCPU stopped for the debugger (breakpoint, watchpoint, step): no vCPU runs on,
        and the gdb stub stops the VM from the main loop.  Safe from a vCPU thread."""
        stub = self.gdbstub
        if stub is None:
            return
        if self.driver is not None:
            self.driver.stop_soon()
        self._call_on_loop(lambda: stub.debug_exception(vcpu.index, exit_))

    def _freeze_clock(self) -> None:
        """Guest time stands still while the VM is stopped (QEMU's virtual clock)."""
        if self._frozen_mtime is None and hasattr(self.accel, "write_mtime") and \
                self.ram is not None:
            self._frozen_mtime = self.time_source.read()

    def _thaw_clock(self) -> None:
        if self._frozen_mtime is not None:
            self.time_source.write(self._frozen_mtime)
            self._frozen_mtime = None

    def resume(self) -> None:
        """QMP ``cont``: from prelaunch or paused; a VM that needs a reset refuses."""
        if self.status in ("shutdown", "internal-error", "guest-panicked"):
            raise StateError("Resetting the Virtual Machine is required", self.status,
                             ("prelaunch", "paused"))
        if self.status == "running":
            return
        assert self.driver is not None
        self._thaw_clock()
        self._set_status("running")
        self.emit("RESUME")
        self.driver.resume()

    def reset(self, reason: str = "host-qmp-system-reset", guest: bool = False) -> None:
        """System reset: devices and harts to power-on state, payloads reloaded."""
        assert self.driver is not None and self.machine is not None
        if self.config.no_reboot:
            self._shutdown(reason, guest)
            return
        was_running = self.status == "running"
        self.driver.pause()
        with self.lock:
            for region in self.bus.regions:
                region.device.reset()
            resetter = getattr(self.machine, "reset", None)
            if resetter is not None:
                resetter(self)
            self._apply_boot_state()
        self.emit("RESET", {"guest": guest, "reason": reason})
        if self.status in ("shutdown", "internal-error", "guest-panicked"):
            self._set_status("paused")
        if was_running:
            self.driver.resume()

    def _shutdown(self, reason: str, guest: bool) -> None:
        assert self.driver is not None
        self.driver.pause()
        self._freeze_clock()
        self.emit("SHUTDOWN", {"guest": guest, "reason": reason})
        if self.config.no_shutdown and reason not in ("host-qmp-quit", "host-signal"):
            self._set_status("shutdown")
            self.emit("STOP")
            return
        self._set_status("shutdown")
        self.quit()

    # Requests from vCPU threads and devices: executed on the main loop.

    def _call_on_loop(self, fn: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            fn()
        elif self._on_loop_thread():
            loop.call_soon(fn)
        else:
            loop.call_soon_threadsafe(fn)

    def _on_loop_thread(self) -> bool:
        return threading.get_ident() == getattr(self, "_loop_thread", None)

    def request_shutdown(self, reason: str = "guest-shutdown", guest: bool = True) -> None:
        if self.driver is not None:
            self.driver.stop_soon()
        self._call_on_loop(lambda: self._shutdown(reason, guest))

    def request_reset(self, reason: str = "guest-reset", guest: bool = True) -> None:
        self._call_on_loop(lambda: self.reset(reason, guest))

    def exit_with_status(self, code: int) -> None:
        """sifive_test PASS/FAIL, HTIF exit: end the process with ``code``.

        QEMU 7.2 calls exit() here without an event; kvmpy first sends SHUTDOWN as later QEMUs
        do (``guest-shutdown``, or ``guest-panic`` for a failure code), so that QMP clients
        and :meth:`kvmpy.VM.event_wait` see a guest poweroff whichever way it was done.
        """
        self.exit_code = code
        if self.driver is not None:
            self.driver.stop_soon()

        def end() -> None:
            self.emit("SHUTDOWN", {"guest": True,
                                   "reason": "guest-shutdown" if code == 0 else "guest-panic"})
            self._set_status("shutdown")
            self.quit()

        self._call_on_loop(end)

    def report_internal_error(self, message: str) -> None:
        stderr_line(f"kvmpy: {message}")
        if self.driver is not None:
            self.driver.stop_soon()

        def enter() -> None:
            self._set_status("internal-error")
            self.emit("STOP")
            if not self.monitors:
                self.exit_code = 1
                self.quit()

        self._call_on_loop(enter)

    def report_guest_panic(self) -> None:
        if self.driver is not None:
            self.driver.stop_soon()

        def enter() -> None:
            self._set_status("guest-panicked")
            self.emit("GUEST_PANICKED", {"action": "pause"})
            if not self.monitors:
                self.exit_code = 1
                self.quit()

        self._call_on_loop(enter)

    # -- main loop -----------------------------------------------------------------------

    def schedule(self, deadline_ns: int, callback: Callable[[], None]) -> Callable[[], None]:
        """Run ``callback`` under the big lock at host monotonic time ``deadline_ns``.

        Returns a function that cancels it. Safe from any thread.
        """
        state: dict[str, Any] = {"handle": None, "cancelled": False}

        def fire() -> None:
            if not state["cancelled"]:
                with self.lock:
                    callback()

        def arm() -> None:
            if state["cancelled"] or self._loop is None:
                return
            when = deadline_ns / 1e9 - time.monotonic() + self._loop.time()
            state["handle"] = self._loop.call_at(when, fire)

        def cancel() -> None:
            state["cancelled"] = True
            handle = state["handle"]
            if handle is not None:
                self._call_on_loop(handle.cancel)

        if self._loop is None:
            self._pending_timers.append((deadline_ns, arm))
        else:
            self._call_on_loop(arm)
        return cancel

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` on the main loop whenever ``fd`` is readable.

        Not under the big lock: monitors pause vCPUs from here, and a vCPU may be waiting for
        the lock.  Device frontends get the lock through ``Chardev.frontend_lock``.
        """
        assert self._loop is not None
        try:
            self._loop.add_reader(fd, callback)
        except PermissionError:
            # A regular file or /dev/null (``kvmpy ... < file``): epoll refuses it, and it is
            # always readable, so it is read on every loop turn until its reader goes.
            self._always_readable[fd] = callback
            self._loop.call_soon(self._read_always_readable, fd)

    def _read_always_readable(self, fd: int) -> None:
        callback = self._always_readable.get(fd)
        if callback is not None and self._loop is not None:
            callback()
            if fd in self._always_readable:
                self._loop.call_soon(self._read_always_readable, fd)

    def remove_reader(self, fd: int) -> None:
        if self._always_readable.pop(fd, None) is not None:
            return
        if self._loop is not None:
            self._loop.remove_reader(fd)

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the main loop (thread-safe)."""
        self._call_on_loop(fn)

    @property
    def loop(self) -> MainLoop | None:
        return self._loop

    def quit(self) -> None:
        """End the main loop; :meth:`run` returns :attr:`exit_code`.  The loop turns once more
        first: descriptors made ready by what ran before (a chardev's last output) are served."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)

    def run(self, install_signal_handlers: bool = True,
            ready: Callable[[], None] | None = None) -> int:
        """Phase 6: run until shutdown. Returns the process exit status.

        ``ready`` is called once the main loop serves requests and the vCPUs have started.
        """
        loop = MainLoop()
        try:
            self._start(loop, install_signal_handlers, ready)
            loop.run_forever()  # until quit()
            return self.exit_code
        finally:
            self.close()
            loop.close()

    def _start(self, loop: MainLoop, install_signal_handlers: bool,
               ready: Callable[[], None] | None) -> None:
        assert self.driver is not None
        self._loop = loop
        self._loop_thread = threading.get_ident()
        for _, arm in self._pending_timers:
            arm()
        self._pending_timers.clear()
        for chardev in self.chardevs.values():
            fd = chardev.fileno()
            if fd is not None:
                self.add_reader(fd, chardev.on_readable)
            starter = getattr(chardev, "attach_loop", None)
            if starter is not None:
                starter(self)
        for monitor in self.monitors:
            starter = getattr(monitor, "start", None)
            if starter is not None:
                starter(self)
        for backend in self.netdevs.values():
            backend.start(self)
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                self._loop.add_signal_handler(signum, self._on_signal, signum)
        if self.config.pidfile:
            self._write_pidfile(self.config.pidfile)
        incoming = None
        if self.config.incoming is not None:  # binds now: a bad address ends start-up
            from kvmpy.migration.migrate import prepare_incoming

            incoming = prepare_incoming(self, self.config.incoming)
        self.driver.start()
        if self.config.incoming is not None:
            self._set_status("inmigrate")  # the vCPUs wait for the incoming state
            if incoming is not None:
                incoming.start()
        elif self.config.start_paused:
            self._freeze_clock()
            self._set_status("prelaunch")
        else:
            self._set_status("running")
            self.driver.resume()
        if ready is not None:
            ready()

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        stderr_line(f"kvmpy: terminating on signal {signum} ({name})")
        self._shutdown("host-signal", False)

    def _write_pidfile(self, path: str) -> None:
        """Written whole under a temporary name and renamed: a reader never sees it empty
        (with -daemonize it already holds this pid, and libvirt reads it at once)."""
        temporary = f"{path}.{os.getpid()}.tmp"
        try:
            with open(temporary, "w") as f:
                f.write(f"{os.getpid()}\n")
            os.replace(temporary, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise ConfigError(f"cannot create PID file: {exc.strerror}") from exc

    def close(self) -> None:
        """Stop vCPUs and release everything; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self.driver is not None:
            self.driver.quit()
        for monitor in self.monitors:
            closer = getattr(monitor, "close", None)
            if closer is not None:
                closer()
        for chardev in self.chardevs.values():
            chardev.close()
        for backend in self.netdevs.values():
            backend.close()
        for closer in reversed(self._closers):
            closer()
        if self.accel is not None:
            self.accel.close()
        for rom in self.roms:
            rom.close()
        self.roms.clear()
        if self.config.pidfile:
            with contextlib.suppress(OSError):
                os.unlink(self.config.pidfile)


def run(config: VMConfig) -> int:
    """The command line's entry: create the VM from ``config`` and run it to the end."""
    system = System(config)
    try:
        system.create()
    except BaseException:
        system.close()
        raise
    return system.run()
