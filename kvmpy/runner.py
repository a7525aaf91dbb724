"""``kvmpy run``: run one command in a fresh VM that sees the host's directory, as virtme-ng does.

    kvmpy run -- make check          # in the current directory, shared read-only
    kvmpy run --rw --share ~/src -- sh -c 'cd build && ninja'

The VM boots the bundled guest (or ``--kernel``) on the ``virt`` board; the shared directory is
exported with ``-fsdev local`` on ``virtio-9p-pci`` and mounted in the guest at the same path,
and the command runs there, in the same working directory, through the guest agent
(:mod:`kvmpy.guest_agent`).  Its standard output and error are two more virtio-serial ports,
``kvmpy.stdout`` and ``kvmpy.stderr``, streamed to the host's as the guest writes them; its
exit status becomes ``kvmpy run``'s (128 + N when a signal N ended it, as a shell says).  The
command's standard input is ``/dev/null`` unless ``input`` is given.

From Python, :func:`run` returns a :class:`subprocess.CompletedProcess` whose ``stdout`` and
``stderr`` hold the output (unless streams to write it to are passed)::

    result = kvmpy.run(["sh", "-c", "uname -m; ls"], share=".")
    assert result.returncode == 0 and result.stdout.startswith(b"riscv64")
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from kvmpy.chardev.base import Chardev
from kvmpy.errors import ConfigError, KvmpyError
from kvmpy.guest_agent import GuestAgentTimeout

__all__ = ["RUN_EXIT_ERROR", "RUN_EXIT_TIMEOUT", "main", "run"]

SHARE_TAG = "kvmpy-share"
SHARE_FSDEV = "kvmpy-share"
STDOUT_PORT = "kvmpy.stdout"
STDERR_PORT = "kvmpy.stderr"
RUN_EXIT_ERROR = 125
"""``kvmpy run``'s own failure (bad option, the VM did not come up), as ``env``/``timeout``."""
RUN_EXIT_TIMEOUT = 124
"""The command outlived ``--timeout``, as ``timeout(1)``."""
GUEST_PATH = "/sbin:/bin:/usr/sbin:/usr/bin"
BOOT_TIMEOUT = 120.0
"""Seconds for the guest to boot and its agent to answer."""
_MOUNT = ('mkdir -p "$1" && mount -t 9p -o "trans=virtio,version=9p2000.L,msize=512000,'
          'access=any,cache=none$3" "$2" "$1"')
_EXEC = ('exec >/dev/virtio-ports/{out} 2>/dev/virtio-ports/{err}; '
         'cd "$1" || exit {fail}; shift; exec "$@"')
"""The command's stdout and stderr go to the ports; its stdin is the agent's (input or
/dev/null)."""


class _Stream(Chardev):
    """A port's output: written to ``sink`` as it arrives, or kept when there is none."""

    def __init__(self, sink: IO[bytes] | None) -> None:
        super().__init__()
        self.sink = sink
        self.kept = bytearray()
        self._lock = threading.Lock()

    def write(self, data: bytes) -> int:
        with self._lock:
            if self.sink is None:
                self.kept += data
            else:
                try:
                    self.sink.write(data)
                    self.sink.flush()
                except (OSError, ValueError):  # a closed pipe on the host: drop, go on
                    pass
        return len(data)


def _guest_command(command: Sequence[str] | str) -> list[str]:
    argv = [command] if isinstance(command, str) else [str(word) for word in command]
    if not argv or not argv[0]:
        raise ConfigError("kvmpy run: no command given")
    return argv


def _share_dir(share: str | os.PathLike[str] | None) -> Path | None:
    if share is None:
        return None
    path = Path(share).expanduser().resolve()
    if not path.is_dir():
        raise ConfigError(f"kvmpy run: --share {share}: not a directory")
    if path == Path("/"):
        raise ConfigError("kvmpy run: --share /: the guest keeps its own root; share a "
                          "directory below it")
    return path


def _vm_args(*, share: Path | None, rw: bool, kernel: str | None, initrd: str | None,
             append: str | None, smp: int, memory: str, net: bool,
             accel: str | None, extra: Sequence[str]) -> list[str]:
    from kvmpy import guests

    kernel_path = kernel or str(guests.kernel_path())
    args = ["-M", "virt", "-smp", str(smp), "-m", memory, "-kernel", kernel_path,
            "-append", append if append is not None else "console=ttyS0 quiet"]
    if initrd is not None or kernel is None:
        args += ["-initrd", initrd or str(guests.initrd_path())]
    args += ["-accel", accel or _default_accel()]
    if share is not None:
        args += ["-fsdev", f"local,id={SHARE_FSDEV},path={share},security_model=none"
                           + ("" if rw else ",readonly=on"),
                 "-device", f"virtio-9p-pci,fsdev={SHARE_FSDEV},mount_tag={SHARE_TAG}"]
    if net:
        args += ["-nic", "user,model=virtio-net-pci"]
    args += ["-device", "virtio-serial-pci,id=kvmpy-run-serial",
             "-device", f"virtserialport,chardev={STDOUT_PORT},name={STDOUT_PORT}",
             "-device", f"virtserialport,chardev={STDERR_PORT},name={STDERR_PORT}"]
    return [*args, *extra]


def _default_accel() -> str:
    """The first of QEMU's default accelerators that can run the guest here, chosen before
    the VM exists so that the fallback notice does not land in the command's stderr."""
    from kvmpy.registry_init import load_types
    from kvmpy.system import DEFAULT_ACCELS, find_accel_class

    load_types()
    for name in DEFAULT_ACCELS:
        cls = find_accel_class(name)
        if cls is not None and cls.unavailable_reason() is None:
            return name
    return DEFAULT_ACCELS[-1]  # the VM then says why it cannot run


def run(command: Sequence[str] | str, *, share: str | os.PathLike[str] | None = ".",
        rw: bool = False, cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None, input: bytes | str | None = None,
        stdout: IO[bytes] | None = None, stderr: IO[bytes] | None = None,
        kernel: str | None = None, initrd: str | None = None, append: str | None = None,
        smp: int = 1, memory: str = "256M", net: bool = False, accel: str | None = None,
        timeout: float | None = None, extra_args: Sequence[str] = (),
        console: IO[bytes] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Boot a VM, run ``command`` in it with ``share`` mounted at the same path (read-only
    unless ``rw``), in ``cwd`` (default: the current directory when it is inside the share,
    else the share), and return its status and output.

    ``returncode`` is negative for a signal, as :mod:`subprocess`.  ``stdout``/``stderr``:
    binary streams that receive the output as it comes (then the result's fields are empty).
    ``env`` adds to the guest's default environment (PATH, HOME, TERM).  Raises
    :class:`subprocess.TimeoutExpired` after ``timeout`` s (the VM is stopped) and
    :class:`kvmpy.KvmpyError` when the VM cannot run the command.
    """
    from kvmpy.vm import VM

    argv = _guest_command(command)
    share_path = _share_dir(share)
    if cwd is not None:
        workdir = Path(cwd).expanduser().resolve()
    elif share_path is not None and Path.cwd().resolve().is_relative_to(share_path):
        workdir = Path.cwd().resolve()
    else:
        workdir = share_path or Path("/root")
    if share_path is not None and cwd is not None and not workdir.is_relative_to(share_path):
        raise ConfigError(f"kvmpy run: --cwd {cwd}: not inside the shared directory "
                          f"{share_path}")
    out, err = _Stream(stdout), _Stream(stderr)
    args = _vm_args(share=share_path, rw=rw, kernel=kernel, initrd=initrd, append=append,
                    smp=smp, memory=memory, net=net, accel=accel, extra=extra_args)
    vm = VM(args, agent=True, chardevs={STDOUT_PORT: out, STDERR_PORT: err})
    deadline = None if timeout is None else time.monotonic() + timeout
    echo = _ConsoleEcho(vm, console) if console is not None else None
    vm.launch()
    try:
        if echo is not None:
            echo.start()
        guest = vm.guest
        wait = BOOT_TIMEOUT if deadline is None \
            else max(0.1, min(BOOT_TIMEOUT, deadline - time.monotonic()))
        try:
            guest.wait_ready(wait)
        except GuestAgentTimeout:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(argv, timeout or 0.0) from None
            raise KvmpyError(f"kvmpy run: no guest agent answered within {wait:g} s (the guest "
                             "must run one on virtio-serial port org.qemu.guest_agent.0, as "
                             "the bundled guest does; --console shows its console)") from None
        if share_path is not None:
            mounted = guest.exec(["/bin/sh", "-c", _MOUNT, "sh", str(share_path), SHARE_TAG,
                                  "" if rw else ",ro"], env={"PATH": GUEST_PATH})
            if mounted.returncode != 0:
                raise KvmpyError(f"kvmpy run: the guest could not mount {share_path}: "
                                 + (mounted.stderr or mounted.stdout).decode(
                                     errors="replace").strip())
        guest_env = {"PATH": GUEST_PATH, "HOME": "/root",
                     "TERM": os.environ.get("TERM", "dumb"), **(env or {})}
        script = _EXEC.format(out=STDOUT_PORT, err=STDERR_PORT, fail=RUN_EXIT_ERROR)
        remaining = math.inf if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            returncode = guest.exec(["/bin/sh", "-c", script, "sh", str(workdir), *argv],
                                    input=input, env=guest_env, timeout=remaining,
                                    capture_output=False).returncode
        except GuestAgentTimeout:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(argv, timeout or 0.0, bytes(out.kept),
                                                bytes(err.kept)) from None
            raise
    finally:
        vm.kill()
        if echo is not None:
            echo.stop()
    return subprocess.CompletedProcess(argv, returncode, bytes(out.kept), bytes(err.kept))


class _ConsoleEcho:
    """Copies the guest's console to a host stream while the VM runs (``--console``)."""

    def __init__(self, vm: Any, sink: IO[bytes]) -> None:
        self.vm = vm
        self.sink = sink
        self._sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._copy, name="kvmpy-run-console",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._flush()

    def _flush(self) -> None:
        data = self.vm.console.output(self._sent)
        self._sent += len(data)
        if data:
            self.sink.write(data)
            self.sink.flush()

    def _copy(self) -> None:
        while not self._stop.wait(0.05):
            self._flush()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvmpy run",
        description="Run a command in a fresh RISC-V VM (the bundled guest unless --kernel) "
                    "that sees a host directory at the same path; exits with the command's "
                    "status.",
        epilog="The command runs through the guest agent with stdin from /dev/null; its output "
               "streams to this terminal. Exit status: the command's, 128+N for signal N, "
               f"{RUN_EXIT_TIMEOUT} after --timeout, {RUN_EXIT_ERROR} when kvmpy run itself "
               "fails.")
    parser.add_argument("--share", metavar="DIR", default=".",
                        help="host directory to share (default: the current directory)")
    parser.add_argument("--no-share", action="store_true", help="share no directory")
    parser.add_argument("--rw", action="store_true", help="share it writable (default: "
                        "read-only)")
    parser.add_argument("--cwd", metavar="DIR", help="working directory in the guest "
                        "(default: the current one)")
    parser.add_argument("--kernel", metavar="IMAGE", help="kernel to boot (default: the "
                        "bundled guest's)")
    parser.add_argument("--initrd", metavar="FILE", help="initramfs (default with the "
                        "bundled kernel: the bundled one)")
    parser.add_argument("--append", metavar="CMDLINE", help="kernel command line (default: "
                        "'console=ttyS0 quiet')")
    parser.add_argument("--smp", type=int, default=1, metavar="N", help="harts (default 1)")
    parser.add_argument("-m", "--memory", default="256M", metavar="SIZE",
                        help="guest RAM (default 256M)")
    parser.add_argument("--net", action="store_true", help="user-mode networking "
                        "(virtio-net-pci on -nic user)")
    parser.add_argument("--accel", metavar="NAME", help="accelerator (default: kvm where "
                        "it can run the guest, else tcg)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="set a variable in the command's environment (repeatable)")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="stop the VM and exit 124 after this long")
    parser.add_argument("--console", action="store_true", help="show the guest's console "
                        "on stderr")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    return parser


def main(argv: Sequence[str]) -> int:
    """``kvmpy run ...``: the exit status to leave with."""
    parser = _parser()
    options = parser.parse_args(list(argv))
    command = list(options.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        parser.print_usage(sys.stderr)
        print("kvmpy run: no command given (kvmpy run [OPTIONS] -- COMMAND [ARGS...])",
              file=sys.stderr)
        return RUN_EXIT_ERROR
    env = {}
    for item in options.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            print(f"kvmpy run: --env {item}: expected NAME=VALUE", file=sys.stderr)
            return RUN_EXIT_ERROR
        env[name] = value
    try:
        result = run(command, share=None if options.no_share else options.share,
                     rw=options.rw, cwd=options.cwd, env=env,
                     stdout=sys.stdout.buffer, stderr=sys.stderr.buffer,
                     kernel=options.kernel, initrd=options.initrd, append=options.append,
                     smp=options.smp, memory=options.memory, net=options.net,
                     accel=options.accel, timeout=options.timeout,
                     console=sys.stderr.buffer if options.console else None)
    except subprocess.TimeoutExpired:
        print(f"kvmpy run: {command[0]}: still running after {options.timeout} s; "
              "VM stopped", file=sys.stderr)
        return RUN_EXIT_TIMEOUT
    except KvmpyError as exc:
        message = " ".join(str(exc).split())
        if not message.startswith("kvmpy run:"):
            message = f"kvmpy run: {message}"
        print(message, file=sys.stderr)
        return RUN_EXIT_ERROR
    except KeyboardInterrupt:
        print("kvmpy run: interrupted; VM stopped", file=sys.stderr)
        return 130
    code = result.returncode
    return 128 - code if code < 0 else code
