"""The ``kvmpy`` command: ``qemu-system-riscv64``'s command line, QEMU's behaviour.

``kvmpy -M virt -accel kvm -accel tcg -smp 4 -m 1G -kernel Image -append ... -nographic``
means what it means to QEMU 7.2.  Options take the keyval grammar of :mod:`kvmpy.keyval`;
``help`` lists choices, answered from the type registry.  Every user error is one line,
``kvmpy: <option as typed>: <message>``, and exit status 1.
"""

from __future__ import annotations

import gc
import os
import sys
import traceback

from kvmpy import log
from kvmpy.cli.choices import icount_supported, module_exists, smp_topology
from kvmpy.cli.options import OPTIONS, PROG, usage
from kvmpy.cli.parser import CommandLine, parse_args, parse_command_line
from kvmpy.config import VMConfig
from kvmpy.errors import ConfigError, KvmpyError, NotBuiltError

__all__ = ["OPTIONS", "CommandLine", "format_error", "icount_supported", "main", "parse_args",
           "parse_command_line", "smp_topology", "usage"]

def format_error(exc: KvmpyError) -> str:
    """``kvmpy: <option>: <message>`` on one line."""
    message = " ".join(str(exc).split("\n")).strip() or type(exc).__name__
    option = getattr(exc, "option", None)
    return f"{PROG}: {option}: {message}" if option else f"{PROG}: {message}"


def _run(config: VMConfig, process: bool = False) -> int:
    if not module_exists("kvmpy.system"):
        raise NotBuiltError("running a VM is not built in this version of kvmpy")
    from kvmpy import system

    if config.daemonize and config.pidfile:
        config.pidfile = os.path.abspath(config.pidfile)
    vm = system.System(config)
    try:
        vm.create()
    except BaseException:
        vm.close()
        raise
    _notice_no_display(config)  # only once the VM exists: a bad option gets its one line
    if config.daemonize:
        _daemonize(config.pidfile)
    if config.sandbox is not None:  # the VM is built; it runs under the filter
        from kvmpy import sandbox

        sandbox.start(config.sandbox)
    if process:
        _collect_from_here()
    return vm.run()


def _collect_from_here() -> None:
    """The process's start-up ran with the cyclic garbage collector off (:func:`main`): its
    passes over a heap that only grows cost milliseconds, for little garbage (the device tree
    builder's nodes).  What start-up made lives as long as the VM, so it is frozen (never
    scanned again, at exit neither) and collection resumes for what the run allocates."""
    gc.freeze()
    gc.enable()


def _daemonize(pidfile: str | None) -> None:
    """QEMU's ``-daemonize`` (os-posix.c): the command returns once the VM is built; the VM
    goes on in a new session with stdio on /dev/null.  Called before any thread starts."""
    ready_r, ready_w = os.pipe()
    if os.fork() > 0:
        os.close(ready_w)
        status = os.read(ready_r, 1)
        os._exit(0 if status == b"\0" else 1)
    os.close(ready_r)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.umask(0o027)
    os.chdir("/")
    if pidfile:
        try:
            with open(pidfile, "w") as f:
                f.write(f"{os.getpid()}\n")
        except OSError as exc:
            os.write(ready_w, b"\1")
            raise ConfigError(f"cannot create PID file: {exc.strerror}",
                              option=f"-pidfile {pidfile}") from exc
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    os.write(ready_w, b"\0")
    os.close(ready_w)


def _configure_logging(config: VMConfig) -> None:
    try:
        log.configure(config.log_items, config.log_file)
    except OSError as exc:
        raise ConfigError(f"could not open log file '{config.log_file}': "
                          f"{exc.strerror or exc}", option=f"-D {config.log_file}") from exc


def _notice_no_display(config: VMConfig) -> None:
    """QEMU would open a window here; kvmpy has none, so say where the console went."""
    if config.display is None and "vc" in config.serial:
        log.stderr_line(f"{PROG}: no graphical display: the serial console is discarded "
                        "(use -nographic, or -serial/-monitor to choose)")


def main(argv: list[str] | None = None) -> int:
    """``kvmpy [options]``: returns the process exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    process = argv is None  # the process's entry point, not a library call
    if process:
        gc.disable()  # start-up: see _collect_from_here
    try:
        return _main(args, process)
    finally:
        if process:  # the process ends: its final collection need not scan what is left
            gc.freeze()
            gc.enable()


def _main(args: list[str], process: bool) -> int:
    if args[:1] == ["run"]:  # ``kvmpy run [OPTIONS] -- COMMAND``: see kvmpy.runner
        from kvmpy.runner import main as run_main

        if process:
            gc.enable()
        return run_main(args[1:])
    try:
        result = parse_command_line(args)
        if result.output is not None:
            print(result.output, flush=True)
            return result.status
        _configure_logging(result.config)
        return _run(result.config, process)
    except KvmpyError as exc:
        print(format_error(exc), file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:  # before the main loop owns SIGINT (e.g. waiting for a client)
        log.stderr_line(f"{PROG}: terminating on signal 2 (SIGINT)")
        return 0
    except BrokenPipeError:
        return 1
    except Exception as exc:  # a bug: still one line, and no hang; details on request
        if os.environ.get("KVMPY_DEBUG"):
            traceback.print_exc()
        print(f"{PROG}: internal error: {type(exc).__name__}: {exc} "
              "(set KVMPY_DEBUG=1 for a traceback)", file=sys.stderr, flush=True)
        if process:
            _exit_without_waiting(1)
        return 1


def _exit_without_waiting(status: int) -> None:
    """As the process entry point after a bug: do not wait for threads left running."""
    import threading

    from kvmpy.chardev.stdio import restore_terminals

    others = [t for t in threading.enumerate()
              if t is not threading.current_thread() and not t.daemon and t.is_alive()]
    if others:
        restore_terminals()
        sys.stdout.flush()
        os._exit(status)
