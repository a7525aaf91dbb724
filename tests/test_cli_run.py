"""The command line running a VM: -daemonize with -pidfile and QMP, as QEMU's users script it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmpy.registry_init import load_types
from kvmpy.system import find_accel_class

from .support import kvmpy_env

ROOT = Path(__file__).resolve().parents[1]


def _tcg_missing() -> bool:
    load_types()
    return find_accel_class("tcg") is None


@pytest.mark.skipif(_tcg_missing(), reason="the tcg accelerator is not in this tree")
def test_daemonize_returns_once_the_vm_is_built(tmp_path: Path) -> None:
    from qemu.qmp.legacy import QEMUMonitorProtocol

    pidfile, sock = tmp_path / "vm.pid", tmp_path / "qmp.sock"
    env = kvmpy_env()
    proc = subprocess.run(
        [sys.executable, "-m", "kvmpy", "-M", "virt", "-accel", "tcg", "-display", "none",
         "-serial", "null", "-daemonize", "-pidfile", str(pidfile),
         "-qmp", f"unix:{sock},server=on,wait=off"],
        capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    pid = int(pidfile.read_text())
    assert os.getsid(pid) != os.getsid(0)  # detached into its own session
    qmp = QEMUMonitorProtocol(str(sock))
    qmp.connect()
    status = qmp.cmd("query-status")
    assert isinstance(status, dict) and status["status"] == "running"
    qmp.cmd("quit")
    with contextlib.suppress(EOFError):  # the server hangs up after quit, as QEMU's does
        qmp.close()
    deadline = time.monotonic() + 20
    while pidfile.exists() or sock.exists():
        assert time.monotonic() < deadline, "the daemon did not clean up after quit"
        time.sleep(0.05)
    with pytest.raises(ProcessLookupError):
        for _ in range(200):
            os.kill(pid, 0)
            time.sleep(0.05)


@pytest.mark.skipif(_tcg_missing(), reason="the tcg accelerator is not in this tree")
def test_nographic_terminal_keys_and_restore() -> None:
    """``kvmpy -nographic`` on a terminal: Ctrl-A h, Ctrl-A c to the monitor and back,
    Ctrl-A x to quit with status 0, and the terminal as it was."""
    import fcntl
    import termios
    import threading

    master, slave = os.openpty()
    initial = termios.tcgetattr(slave)
    output = bytearray()

    def read() -> None:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                return
            if not chunk:
                return
            output.extend(chunk)

    def make_controlling() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    def wait_for(text: bytes) -> None:
        deadline = time.monotonic() + 30
        while text not in output:
            assert time.monotonic() < deadline, f"{text!r} not in {bytes(output)!r}"
            time.sleep(0.02)

    env = kvmpy_env()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvmpy", "-M", "virt", "-accel", "tcg", "-nographic", "-S"],
        stdin=slave, stdout=slave, stderr=slave, env=env, preexec_fn=make_controlling)
    threading.Thread(target=read, daemon=True).start()
    try:
        deadline = time.monotonic() + 30
        while termios.tcgetattr(slave)[3] & termios.ECHO:
            assert time.monotonic() < deadline, bytes(output)
            time.sleep(0.02)
        os.write(master, b"\x01h")
        wait_for(b"C-a x    exit emulator")
        os.write(master, b"\x01c")
        os.write(master, b"info status\r")
        wait_for(b"VM status: paused (prelaunch)")
        os.write(master, b"\x01c\x01x")
        wait_for(b"kvmpy: Terminated")
        assert proc.wait(30) == 0
        assert termios.tcgetattr(slave) == initial
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(slave)
        os.close(master)


@pytest.mark.skipif(_tcg_missing(), reason="the tcg accelerator is not in this tree")
def test_sigterm_with_stderr_closed_by_its_reader(tmp_path: Path) -> None:
    """``kvmpy ... 2>&1 | head -3`` then SIGTERM: the notice cannot be written (EPIPE), and
    kvmpy must still shut down rather than stay behind with its vCPUs stopped."""
    import signal

    from qemu.qmp.legacy import QEMUMonitorProtocol

    sock = tmp_path / "qmp.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvmpy", "-M", "virt", "-accel", "tcg", "-display", "none",
         "-serial", "null", "-qmp", f"unix:{sock},server=on,wait=off"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env=kvmpy_env())
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no QMP socket"
            time.sleep(0.05)
        qmp = QEMUMonitorProtocol(str(sock))
        qmp.connect()
        status = qmp.cmd("query-status")
        assert isinstance(status, dict) and status["status"] == "running"  # loop owns SIGTERM
        assert proc.stderr is not None
        proc.stderr.close()  # the reader goes away, as head does
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0  # QEMU's status after SIGTERM
        with contextlib.suppress(EOFError, OSError):
            qmp.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.skipif(_tcg_missing(), reason="the tcg accelerator is not in this tree")
@pytest.mark.parametrize("stdin_text", [b"\x01x", b""])
def test_nographic_input_from_a_file(tmp_path: Path, stdin_text: bytes) -> None:
    """``kvmpy -nographic < FILE`` (epoll refuses regular files and /dev/null): the file is
    read as input, so C-a x in it quits as QEMU does; an empty one is end of input and the VM
    runs on until SIGTERM."""
    import signal

    stdin_file = tmp_path / "stdin"
    stdin_file.write_bytes(stdin_text)
    with open(stdin_file, "rb") as stdin:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kvmpy", "-M", "virt", "-accel", "tcg", "-nographic",
             "-bios", "none"],
            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=kvmpy_env())
    try:
        if stdin_text:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            assert b"Terminated" in out + err
        else:
            with pytest.raises(subprocess.TimeoutExpired):
                proc.wait(timeout=3)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
            assert proc.returncode == 0
            assert b"Traceback" not in err and b"internal error" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
