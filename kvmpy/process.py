"""``kvmpy.ProcessVM``: the kvmpy command line as a child process, driven over QMP.

The same methods as :class:`kvmpy.VM`, for tests that want the VMM in its own process (crash
isolation, signals, the exact CLI users run).  The console and QMP travel over unix sockets in a
private temporary directory that is removed with everything else on every exit path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from kvmpy.errors import KvmpyError, StateError
from kvmpy.guest_agent import (
    AGENT_CHARDEV_ID,
    GuestAgent,
    SocketTransport,
    agent_device_args,
    find_agent_socket,
)
from kvmpy.qmp_client import QMPClient, QMPError
from kvmpy.vm import DEFAULT_TIMEOUT, ConsoleLog, _build_args, _matches

LAUNCH_EXIT_GRACE = 5.0
"""A child that failed to launch often is exiting with a message: wait this long for it."""


class VMLaunchFailure(KvmpyError):
    """The child did not come up; carries its command line, exit status and output."""

    def __init__(self, message: str, command: list[str], exitcode: int | None,
                 output: str) -> None:
        super().__init__(f"{message}\ncommand: {' '.join(command)}\nexit status: {exitcode}\n"
                         f"output:\n{output}")
        self.command = command
        self.exitcode = exitcode
        self.output = output


class AbnormalShutdown(KvmpyError):
    """The VM did not stop cleanly and had to be killed."""


class SocketConsole(ConsoleLog):
    """The serial console over a unix socket: output logged by a reader thread."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._sock.connect(path)
        self._sock.settimeout(None)
        self._thread = threading.Thread(target=self._reader, daemon=True, name="console")
        self._thread.start()

    def _reader(self) -> None:
        while True:
            try:
                chunk = self._sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._cond.notify_all()
                return
            self._append(chunk)

    def _ended(self) -> bool:
        return not self._thread.is_alive()

    def send(self, text: str | bytes) -> None:
        self._sock.sendall(text.encode() if isinstance(text, str) else text)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(5)


class _ProcessMemory:
    def __init__(self, vm: ProcessVM) -> None:
        self._vm = vm

    def read(self, gpa: int, size: int) -> bytes:
        path = os.path.join(self._vm.temp_dir, "pmemsave.bin")
        self._vm.qmp("pmemsave", val=gpa, size=size, filename=path)
        with open(path, "rb") as f:
            data = f.read()
        os.unlink(path)
        return data

    def write(self, gpa: int, data: bytes) -> None:
        self._vm.qmp("x-pmemwrite", val=gpa, data=data.hex())

    def read_u64(self, gpa: int) -> int:
        return int.from_bytes(self.read(gpa, 8), "little")


class ProcessVM:
    """The CLI in a child process. ``binary`` defaults to this Python running ``-m kvmpy``.

    ``agent=True``: a guest agent port on the unix socket ``agent.sock`` of the temporary
    directory; :attr:`guest` talks to it (or to such a port of your own on a socket chardev).
    """

    def __init__(self, args: Sequence[str] | None = None, *,
                 binary: Sequence[str] | None = None, agent: bool = False,
                 **options: Any) -> None:
        self.args = _build_args(args, options)
        self.agent = agent
        self._guest: GuestAgent | None = None
        self.binary = list(binary) if binary else [sys.executable, "-m", "kvmpy"]
        self.temp_dir = ""
        self.command: list[str] = []
        self.memory = _ProcessMemory(self)
        self._console: SocketConsole | None = None
        self._qmp: QMPClient | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path = ""
        self._exitcode: int | None = None
        self._cleanups: list[Callable[[], None]] = []

    # -- launch and teardown ---------------------------------------------------------------

    def add_cleanup(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` after the VM is gone, whether launch failed or not."""
        self._cleanups.append(fn)

    def launch(self, timeout: float = DEFAULT_TIMEOUT) -> ProcessVM:
        if self._proc is not None:
            raise StateError("the VM has already been launched", self.status, "not-launched")
        self.temp_dir = tempfile.mkdtemp(prefix="kvmpy-")
        qmp_path = os.path.join(self.temp_dir, "qmp.sock")
        console_path = os.path.join(self.temp_dir, "console.sock")
        self._log_path = os.path.join(self.temp_dir, "output.log")
        agent: list[str] = []
        if self.agent:  # first, so that ports of one's own can go on its bus
            agent_path = os.path.join(self.temp_dir, "agent.sock")
            agent = ["-chardev", f"socket,id={AGENT_CHARDEV_ID},path={agent_path},"
                                 "server=on,wait=off", *agent_device_args()]
        self.command = [*self.binary, *agent, *self.args, "-display", "none",
                        "-qmp", f"unix:{qmp_path},server=on,wait=off"]
        with_console = "-serial" not in self.args and "-nographic" not in self.args
        if with_console:
            # wait=on: kvmpy waits for this client before it starts, so the console log
            # holds the guest's output from its first byte.
            self.command += ["-serial", f"unix:{console_path},server=on"]
        try:
            with open(self._log_path, "wb") as log:
                self._proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL,
                                              stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True)
            if with_console:
                self._connect(lambda: self._open_console(console_path, timeout), timeout)
            self._qmp = QMPClient(qmp_path)
            try:
                self._connect(lambda: self._qmp.connect(timeout) if self._qmp else None,
                              timeout)
            except (OSError, QMPError):
                if not self._finished_cleanly():
                    raise
                self._qmp.close()  # the guest ran to its end (poweroff) before we asked
                self._qmp = None
        except BaseException as exc:
            exitcode = self._kill_process(grace=LAUNCH_EXIT_GRACE)
            output = self.get_log()
            self._post_shutdown()
            if isinstance(exc, (OSError, TimeoutError, QMPError, ValueError)):
                raise VMLaunchFailure(f"kvmpy failed to start: {exc}", self.command, exitcode,
                                      output) from None
            raise
        return self

    def _open_console(self, path: str, timeout: float) -> None:
        self._console = SocketConsole(path, timeout)

    def _finished_cleanly(self) -> bool:
        """Whether the child has ended, or ends within the grace time, with status 0."""
        if self._proc is None:
            return False
        try:
            return self._proc.wait(LAUNCH_EXIT_GRACE) == 0
        except subprocess.TimeoutExpired:
            return False

    def _connect(self, connect: Callable[[], Any], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise OSError(f"the process exited with status {self._proc.returncode}")
            try:
                connect()
                return
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise TimeoutError("no QMP socket") from None
                time.sleep(0.02)

    def _kill_process(self, grace: float = 0.0) -> int | None:
        """Kill the child (after ``grace`` s to end by itself); returns its exit status."""
        proc = self._proc
        if proc is None:
            return None
        if grace > 0:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        self._exitcode = proc.wait()
        return self._exitcode

    def _post_shutdown(self) -> None:
        if self._guest is not None:
            self._guest.close()
            self._guest = None
        if self._console is not None:
            self._console.close()
            self._console = None
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None
        if self.temp_dir and os.path.isdir(self.temp_dir):
            self._final_log = self.get_log()
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        cleanups, self._cleanups = self._cleanups, []
        for fn in cleanups:
            fn()

    def get_log(self) -> str:
        """Everything the process printed (stdout and stderr)."""
        try:
            with open(self._log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return getattr(self, "_final_log", "")

    def shutdown(self, timeout: float = DEFAULT_TIMEOUT, hard: bool = False) -> int:
        """QMP ``quit`` and wait; kills the process (AbnormalShutdown) if that fails."""
        if self._proc is None:
            return self._exitcode or 0
        try:
            if not hard and self._proc.poll() is None and self._qmp is not None:
                with contextlib.suppress(QMPError, OSError):
                    self._qmp.execute("quit", timeout=timeout)
                try:
                    self._exitcode = self._proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._kill_process()
                    raise AbnormalShutdown("kvmpy did not exit after 'quit'") from None
            else:
                self._kill_process()
        finally:
            self._post_shutdown()
        return self._exitcode if self._exitcode is not None else 0

    def kill(self) -> None:
        self.shutdown(hard=True)

    def wait(self, timeout: float | None = DEFAULT_TIMEOUT) -> int:
        """Wait for the process to end by itself (guest poweroff); returns its status."""
        if self._proc is None:
            raise StateError("the VM has not been launched", "not-launched", "launched")
        try:
            self._exitcode = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"the VM did not stop within {timeout} s") from None
        self._post_shutdown()
        return self._exitcode

    def exitcode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def get_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def __enter__(self) -> ProcessVM:
        if self._proc is None:
            self.launch()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.is_running():
            with contextlib.suppress(AbnormalShutdown):
                self.shutdown()
        else:
            self._post_shutdown()

    # -- QMP -------------------------------------------------------------------------------

    def qmp(self, command: str, **arguments: Any) -> Any:
        if self._qmp is None:
            raise StateError("the VM is not running", self.status, "running")
        args = {k.replace("_", "-"): v for k, v in arguments.items()}
        return self._qmp.execute(command, args or None)

    @property
    def guest(self) -> GuestAgent:
        """The guest agent client (``agent=True``, or a ``-chardev socket`` agent port)."""
        if self._guest is None:
            if self._proc is None or not self.temp_dir:
                raise StateError("the VM has not been launched", self.status, "launched")
            path = find_agent_socket(self.command)
            if path is None:
                raise KvmpyError("this VM has no guest agent port (launch it with "
                                 "agent=True)")
            self._guest = GuestAgent(SocketTransport(path))
        return self._guest

    @property
    def console(self) -> SocketConsole:
        if self._console is None:
            raise StateError("no console socket (a -serial was given)", self.status, "running")
        return self._console

    @property
    def status(self) -> str:
        if self._proc is None:
            return "not-launched"
        if self._proc.poll() is not None or self._qmp is None:
            return "shutdown"
        return str(self.qmp("query-status")["status"])

    def pause(self) -> None:
        self.qmp("stop")

    def resume(self) -> None:
        self.qmp("cont")

    def reset(self) -> None:
        self.qmp("system_reset")

    def migrate(self, uri: str, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """QMP ``migrate`` to ``uri`` (``tcp:``, ``unix:``, ``exec:``, ``fd:``), then wait for
        its end; returns the last ``query-migrate`` (``status``: ``completed``, ``failed``
        or ``cancelled``)."""
        self.qmp("migrate", uri=uri)
        deadline = time.monotonic() + timeout
        while True:
            info: dict[str, Any] = self.qmp("query-migrate")
            if info.get("status") in ("completed", "failed", "cancelled"):
                return info
            if time.monotonic() > deadline:
                raise TimeoutError(f"the migration to {uri} did not end within {timeout} s")
            time.sleep(0.02)

    def hmp(self, command_line: str, cpu: int = 0) -> str:
        return str(self.qmp("human-monitor-command", command_line=command_line,
                            cpu_index=cpu))

    def get_reg(self, name: str, cpu: int = 0) -> int:
        """A register of hart ``cpu`` by any name ``kvmpy.VM.get_reg`` takes; VM paused."""
        self._require_paused()
        return int(self.qmp("x-query-registers", cpu_index=cpu, names=[name])[name])

    def _require_paused(self) -> None:
        status = self.status
        if status == "running":
            raise StateError(f"the VM is {status}, this needs it paused", status,
                             ("paused", "prelaunch", "shutdown", "internal-error",
                              "guest-panicked"))

    def registers(self, cpu: int = 0) -> dict[str, int]:
        self._require_paused()
        regs: dict[str, int] = self.qmp("x-query-registers", cpu_index=cpu)
        return regs

    def event_wait(self, name: str, timeout: float = DEFAULT_TIMEOUT,
                   match: Mapping[str, Any] | None = None) -> dict[str, Any]:
        if self._qmp is None:
            raise StateError("the VM is not running", self.status, "running")
        deadline = time.monotonic() + timeout
        skipped = []
        try:
            while True:
                remaining = deadline - time.monotonic()
                event = self._qmp.pull_event(max(remaining, 0)) if remaining > 0 else None
                if event is None:
                    raise TimeoutError(f"no {name} event within {timeout} s")
                if event["event"] == name and _matches(event, match or {}):
                    return event
                skipped.append(event)
        finally:
            self._qmp.events.extendleft(reversed(skipped))

    def get_events(self) -> list[dict[str, Any]]:
        events = []
        while self._qmp is not None:
            event = self._qmp.pull_event(0)
            if event is None:
                break
            events.append(event)
        return events

    def events(self, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        while self._qmp is not None:
            event = self._qmp.pull_event(timeout)
            if event is None:
                return
            yield event
