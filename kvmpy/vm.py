"""``kvmpy.VM``: a virtual machine in this process, for lifecycle tests.

The shape follows QEMU's ``QEMUMachine``: a context manager, ``launch``/``shutdown``/``kill``/
``wait``, ``event_wait(name, timeout, match)``, run-state guards raising ``StateError``; plus
what only an in-process VMM can give: the console as a Python object, guest memory and
registers, single-stepping on the interpreter.

    with kvmpy.VM(machine="virt", memory="256M", append="console=ttyS0") as vm:
        vm.console.expect(r"~ # ")
        vm.console.send("uname -a\\n")
        vm.console.expect(r"Linux")

``agent=True`` adds a virtio-serial port for the guest agent (see :mod:`kvmpy.guest_agent`):
``vm.guest.exec(["uname", "-r"]).stdout``.

A VM at a point worth coming back to is saved once and restored in milliseconds, as often as
wanted and several at a time (``docs/vmstate.md``)::

    vm.save("ready.vms")                      # the VM goes on as it was
    with kvmpy.VM.restore("ready.vms") as again:
        again.console.send("echo hi\n")
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kvmpy.chardev.base import Chardev
from kvmpy.errors import ConfigError, KvmpyError, StateError
from kvmpy.guest_agent import (
    AGENT_CHARDEV_ID,
    AgentChardev,
    GuestAgent,
    SocketTransport,
    agent_device_args,
    find_agent_socket,
)
from kvmpy.monitor import commands

if TYPE_CHECKING:
    from kvmpy.migration import SaveStats

DEFAULT_TIMEOUT = 30.0


class ConsoleLog:
    """Console output kept in full, with ``log`` and ``expect``; subclasses call
    :meth:`_append` as output arrives (from any thread)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._output = bytearray()
        self._cursor = 0

    def _append(self, data: bytes) -> None:
        with self._cond:
            self._output += data
            self._cond.notify_all()

    def _ended(self) -> bool:
        """True once no more output can arrive (expect then stops waiting)."""
        return False

    def output(self, start: int = 0) -> bytes:
        """The console output from byte ``start`` on, undecoded."""
        with self._cond:
            return bytes(self._output[start:])

    @property
    def log(self) -> str:
        """The whole console output so far, decoded leniently."""
        with self._cond:
            return self._output.decode(errors="replace")

    def expect(self, pattern: str | re.Pattern[str], timeout: float = DEFAULT_TIMEOUT
               ) -> re.Match[str]:
        """Wait until output after the previous match matches ``pattern``; returns the match.

        Raises TimeoutError carrying the unmatched output.
        """
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                text = self._output[self._cursor:].decode(errors="replace")
                match = regex.search(text)
                if match is not None:
                    self._cursor += len(text[:match.end()].encode(errors="replace"))
                    return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._ended():
                    raise TimeoutError(f"console did not match {regex.pattern!r} within "
                                       f"{timeout} s; output since last match:\n{text[-2000:]}")
                self._cond.wait(min(remaining, 0.5))


class Console(ConsoleLog, Chardev):
    """The guest's serial console as a Python object: everything written is kept."""

    def __init__(self) -> None:
        ConsoleLog.__init__(self)
        Chardev.__init__(self)

    def write(self, data: bytes) -> int:
        self._append(data)
        return len(data)

    def send(self, text: str | bytes) -> None:
        """Type ``text`` into the guest's console (delivered as the UART accepts it)."""
        data = text.encode() if isinstance(text, str) else text
        self.deliver(data)


class Memory:
    """Guest-physical memory of a VM (RAM and ROM)."""

    def __init__(self, vm: VM) -> None:
        self._vm = vm

    def read(self, gpa: int, size: int) -> bytes:
        return commands.read_physical(self._vm.system, gpa, size)

    def write(self, gpa: int, data: bytes) -> None:
        region = self._vm.system.memory_at(gpa, len(data))
        if region is None or region is not self._vm.system.ram:
            raise KvmpyError(f"0x{gpa:x}+{len(data)} is not in guest RAM")
        region.write(gpa, data)

    def read_u64(self, gpa: int) -> int:
        return int.from_bytes(self.read(gpa, 8), "little")


def _build_args(args: Sequence[str] | None, options: Mapping[str, Any]) -> list[str]:
    argv = list(args or [])
    flag_map = {"machine": "-M", "accel": "-accel", "cpu": "-cpu", "memory": "-m",
                "smp": "-smp", "kernel": "-kernel", "initrd": "-initrd", "append": "-append",
                "bios": "-bios", "dtb": "-dtb", "name": "-name"}
    for key, value in options.items():
        if value is None:
            continue
        if key in flag_map:
            argv += [flag_map[key], str(value)]
        elif key == "devices":
            for device in value:
                argv += ["-device", device]
        elif key in ("no_reboot", "no_shutdown"):
            if value:
                argv.append("-" + key.replace("_", "-"))
        elif key == "start_paused":
            if value:
                argv.append("-S")
        elif key == "extra_args":
            argv += list(value)
        else:
            raise TypeError(f"VM() got an unexpected keyword argument '{key}'")
    return argv


class VM:
    """A VM in this process. Keyword arguments mirror the command line, or pass ``args``.

    ``agent=True``: a guest agent port whose chardev ``kvmpy-ga`` is a Python object; then, or
    with such a port on a ``-chardev socket,path=...`` of your own, :attr:`guest` talks to it.
    """

    def __init__(self, args: Sequence[str] | None = None, *, agent: bool = False,
                 chardevs: Mapping[str, Chardev] | None = None, **options: Any) -> None:
        """``chardevs``: Python objects (:class:`kvmpy.chardev.base.Chardev`) that devices
        name as chardevs by id, e.g. ``virtserialport,chardev=ID``."""
        from kvmpy.system import System

        self.args = _build_args(args, options)
        self._saved_args = list(self.args)
        """What rebuilds this VM (without the agent's own port): kept in saved states."""
        self._agent = agent
        self._restore_from: str | None = None
        self._verify = True
        self._chardevs = dict(chardevs or {})
        self._agent_chardev = AgentChardev() if agent else None
        if agent:
            # First, so that ports of one's own can go on its bus (kvmpy-ga-serial.0).
            self.args[:0] = agent_device_args(AGENT_CHARDEV_ID)
        self._guest: GuestAgent | None = None
        self.console = Console()
        self.memory = Memory(self)
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._system: System | None = None
        self._thread: threading.Thread | None = None
        self._exit_code: int | None = None
        self._error: BaseException | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def system(self) -> Any:
        if self._system is None:
            raise StateError("the VM has not been launched", "not-launched", "launched")
        return self._system

    def launch(self) -> VM:
        """Create the machine and start it (or leave it in ``prelaunch`` with -S)."""
        from kvmpy.cli import parse_args
        from kvmpy.system import System

        if self._system is not None:
            raise StateError("the VM has already been launched", self.status, "not-launched")
        config = parse_args([*self.args, "-display", "none"] if "-display" not in self.args
                            else self.args)
        config.serial = []
        config.nographic = False
        chardevs = dict(self._chardevs)
        if self._agent_chardev is not None:
            if AGENT_CHARDEV_ID in chardevs:
                raise ConfigError(f"Duplicate ID '{AGENT_CHARDEV_ID}' for chardev")
            chardevs[AGENT_CHARDEV_ID] = self._agent_chardev
        system = System(config, console=self.console, chardevs=chardevs)
        system.add_event_listener(self._on_event)
        try:
            system.create()
            if self._restore_from is not None:
                self._load(system, self._restore_from)
        except BaseException:
            system.close()  # a failed launch leaves no thread, fd or mapping behind
            raise
        self._system = system
        started = threading.Event()

        def main() -> None:
            try:
                self._exit_code = system.run(install_signal_handlers=False, ready=started.set)
            except BaseException as exc:  # kept for wait() to re-raise
                self._error = exc
                started.set()

        self._thread = threading.Thread(target=main, name="kvmpy-main", daemon=True)
        self._thread.start()
        started.wait()
        return self

    @property
    def guest(self) -> GuestAgent:
        """The guest agent client (``agent=True``, or a ``-chardev socket`` agent port)."""
        if self._guest is None:
            if self._agent_chardev is not None:
                self._guest = GuestAgent(self._agent_chardev)
            else:
                path = find_agent_socket(self.args)
                if path is None:
                    raise KvmpyError("this VM has no guest agent port (launch it with "
                                     "agent=True)")
                self._guest = GuestAgent(SocketTransport(path))
        return self._guest

    def _on_event(self, name: str, data: dict[str, Any]) -> None:
        now = time.time()
        event: dict[str, Any] = {"event": name, "data": dict(data),
                                 "timestamp": {"seconds": int(now),
                                               "microseconds": int(now % 1 * 1e6)}}
        self._events.put(event)

    @property
    def status(self) -> str:
        """QEMU's run state: prelaunch, running, paused, shutdown, internal-error, ..."""
        if self._system is None:
            return "not-launched"
        return str(self._system.status)

    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _on_loop(self, fn: Any) -> Any:
        """Run ``fn`` on the VM's main loop and return its result (exceptions re-raised)."""
        system = self.system
        if not self.is_running():
            raise StateError("the VM is not running", self.status, "running")
        done = threading.Event()
        result: list[Any] = []
        error: list[BaseException] = []

        def call() -> None:
            try:
                result.append(fn())
            except BaseException as exc:
                error.append(exc)
            finally:
                done.set()

        system.call_soon(call)
        # The VM may end meanwhile (a guest poweroff), its loop with it: then nothing runs
        # the call, and waiting for it is pointless.
        deadline = time.monotonic() + DEFAULT_TIMEOUT
        while not done.wait(0.05):
            if not self.is_running() and not done.is_set():
                raise StateError("the VM is not running", self.status, "running")
            if time.monotonic() > deadline:
                raise TimeoutError("the VM's main loop did not answer")
        if error:
            raise error[0]
        return result[0] if result else None

    def pause(self) -> None:
        """QMP ``stop``: every hart stops; registers can be read and written."""
        self._require("running", "paused")
        self._on_loop(self.system.pause)

    def resume(self) -> None:
        """QMP ``cont``."""
        self._on_loop(self.system.resume)

    def reset(self) -> None:
        """QMP ``system_reset``."""
        self._on_loop(lambda: self.system.reset("host-qmp-system-reset", False))

    def shutdown(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Stop the VM (QMP ``quit``) and wait for it; returns the exit status."""
        if self.is_running():
            with contextlib.suppress(StateError):  # it ended by itself meanwhile
                self._on_loop(lambda: commands.quit_vm(self.system))
        return self.wait(timeout)

    def kill(self) -> None:
        """Stop at once, whatever the guest is doing."""
        if self.is_running():
            self.system.call_soon(self.system.quit)
        if self._thread is not None:
            self._thread.join(DEFAULT_TIMEOUT)

    def wait(self, timeout: float | None = DEFAULT_TIMEOUT) -> int:
        """Wait until the VM ends by itself (guest poweroff, quit); returns the exit status."""
        if self._thread is None:
            raise StateError("the VM has not been launched", self.status, "launched")
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the VM did not stop within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._exit_code if self._exit_code is not None else 0

    def exitcode(self) -> int | None:
        return None if self.is_running() else self._exit_code

    def __enter__(self) -> VM:
        if self._system is None:
            self.launch()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.is_running():
            try:
                self.shutdown()
            except (TimeoutError, StateError):
                self.kill()

    # -- save and restore ------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> SaveStats:
        """Save the whole VM (RAM, harts, devices, clock, and the arguments that build it) to
        the file ``path``; :meth:`restore` brings it back.

        As QEMU's ``savevm``, the VM is left in the run state it had: a running VM is paused
        for the save (STOP) and resumed after it (RESUME), a paused one stays paused.  RAM
        pages that are zero take no room (the file is sparse); the data is page-aligned so
        that a restore maps it copy-on-write.  Raises
        :class:`kvmpy.migration.VmStateError` when a device cannot be saved.
        """
        from kvmpy.migration import save_file

        self._require("running", "paused", "prelaunch")
        system = self.system
        target = os.fspath(path)

        def run() -> SaveStats:
            was_running = system.status == "running"
            if was_running:
                system.pause()
            try:
                return save_file(system, target, args=self._saved_args,
                                 info={"agent": self._agent})
            finally:
                if was_running:
                    system.resume()

        stats: SaveStats = self._on_loop(run)
        return stats

    @classmethod
    def restore(cls, path: str | os.PathLike[str], *, start_paused: bool = False,
                verify: bool = True, **overrides: Any) -> VM:
        """A VM rebuilt from a file of :meth:`save` and running from the point it was saved
        at (``start_paused=True``: paused there, :meth:`resume` starts it).

        The VM is created with the saved arguments; ``overrides`` are keyword arguments as
        for ``VM(...)`` and replace the saved options of the same name (``accel="kvm"``,
        ``chardevs={...}``, ``agent=True``).  Saved RAM is mapped copy-on-write from the file,
        so VMs restored from one file share the pages none of them wrote; the file must stay
        in place while they run.  ``verify=False`` skips reading the RAM data for its
        checksum (the rest of the file is always checked).  A file that does not fit (another
        machine, -smp, -m or device set, a newer format, truncated or corrupt) raises
        :class:`kvmpy.migration.VmStateError` with a one-line reason.
        """
        from kvmpy.migration import VmStateError, read_header

        target = os.fspath(path)
        try:
            with open(target, "rb") as f:
                header = read_header(f)
        except OSError as exc:
            raise VmStateError(f"vmstate: cannot open '{target}': {exc.strerror}") from exc
        saved = header.get("args")
        if not isinstance(saved, list) or not all(isinstance(a, str) for a in saved):
            raise VmStateError(f"vmstate: '{target}' does not say how the VM was created")
        info = header.get("info")
        if not isinstance(info, dict):
            info = {}
        agent = bool(overrides.pop("agent", bool(info.get("agent"))))
        chardevs = overrides.pop("chardevs", None)
        args = _drop_options(saved, overrides)
        vm = cls(args, agent=agent, chardevs=chardevs, start_paused=True, **overrides)
        vm._restore_from = target
        vm._verify = verify
        vm.launch()
        if start_paused:  # a loaded VM waits as after QEMU's -incoming with -S: paused
            vm._on_loop(lambda: vm.system._set_status("paused"))
        else:
            vm.resume()
        return vm

    def _load(self, system: Any, path: str) -> None:
        from kvmpy.migration import load_vm

        with open(path, "rb") as f:
            load_vm(system, f, map_ram=True, verify=self._verify)

    def _require(self, *states: str) -> None:
        if self.status not in states:
            raise StateError(f"the VM is {self.status}, this needs {' or '.join(states)}",
                             self.status, states)

    # -- events ----------------------------------------------------------------------------

    def event_wait(self, name: str, timeout: float = DEFAULT_TIMEOUT,
                   match: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The next event ``name`` whose fields contain ``match`` (recursively), as QEMU's."""
        deadline = time.monotonic() + timeout
        skipped: list[dict[str, Any]] = []
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no {name} event within {timeout} s")
                try:
                    event = self._events.get(timeout=remaining)
                except queue.Empty:
                    raise TimeoutError(f"no {name} event within {timeout} s") from None
                if event["event"] == name and _matches(event, match or {}):
                    return event
                skipped.append(event)
        finally:
            for event in skipped:
                self._events.put(event)

    def get_events(self) -> list[dict[str, Any]]:
        """Every event not consumed yet, oldest first."""
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    def events(self, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Iterate over events as they arrive (stops after ``timeout`` s without one)."""
        while True:
            try:
                yield self._events.get(timeout=timeout)
            except queue.Empty:
                return

    # -- state access ----------------------------------------------------------------------

    def qmp(self, command: str, **arguments: Any) -> Any:
        """Run a QMP command in-process (``_`` in argument names is ``-``); returns its value."""
        from kvmpy.monitor.qmp import COMMANDS, QmpMonitor

        if command not in COMMANDS:
            raise KvmpyError(f"The command {command} has not been found")
        args = {k.replace("_", "-"): v for k, v in arguments.items()}
        monitor = QmpMonitor(self.console)
        monitor.system = self.system
        return self._on_loop(lambda: monitor.execute(command, args))

    def hmp(self, command_line: str, cpu: int = 0) -> str:
        """Run an HMP command; returns its text."""
        from kvmpy.monitor.hmp import run_command

        return str(self._on_loop(lambda: run_command(self.system, command_line, cpu)))

    def get_reg(self, name: str, cpu: int = 0) -> int:
        """A register of hart ``cpu`` (``pc``, ``a0``, ``x5``, ``mstatus``, ...); VM paused."""
        self._require("paused", "prelaunch", "shutdown", "internal-error", "guest-panicked")
        return commands.vcpu(self.system, cpu).get_reg(name)

    def set_reg(self, name: str, value: int, cpu: int = 0) -> None:
        self._require("paused", "prelaunch")
        commands.vcpu(self.system, cpu).set_reg(name, value)

    def registers(self, cpu: int = 0) -> dict[str, int]:
        """pc, x1..x31 and the main CSRs of hart ``cpu`` while paused."""
        from kvmpy.monitor.hmp import CSRS

        names = ["pc", *(f"x{i}" for i in range(1, 32)), *CSRS]
        return {name: self.get_reg(name, cpu) for name in names}

    def step(self, count: int = 1, cpu: int = 0) -> None:
        """Execute ``count`` instructions on hart ``cpu`` while paused (interpreter only)."""
        self._require("paused", "prelaunch")
        hart = commands.vcpu(self.system, cpu)
        stepper = getattr(hart, "step", None)
        if stepper is None:
            raise KvmpyError("single-stepping needs the tcg accelerator")
        stepper(count)


_OPTION_FLAGS = {"machine": ("-M", "-machine"), "accel": ("-accel",), "cpu": ("-cpu",),
                 "memory": ("-m",), "smp": ("-smp",), "kernel": ("-kernel",),
                 "initrd": ("-initrd",), "append": ("-append",), "bios": ("-bios",),
                 "dtb": ("-dtb",), "name": ("-name",)}


def _drop_options(argv: Sequence[str], overrides: Mapping[str, Any]) -> list[str]:
    """``argv`` without the options that ``overrides`` (VM keyword arguments) give anew."""
    drop = {flag for key, flags in _OPTION_FLAGS.items() if overrides.get(key) is not None
            for flag in flags}
    if overrides.get("accel") is not None:
        drop.add("-enable-kvm")
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in drop:
            i += 1 if arg == "-enable-kvm" else 2
            continue
        out.append(arg)
        i += 1
    return out


def _matches(event: Mapping[str, Any], match: Mapping[str, Any]) -> bool:
    for key, want in match.items():
        if key not in event:
            return False
        got = event[key]
        if isinstance(want, Mapping):
            if not isinstance(got, Mapping) or not _matches(got, want):
                return False
        elif got != want:
            return False
    return True
