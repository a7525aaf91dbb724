"""HMP on a socket (``-monitor unix:...``), on ``-monitor stdio`` and behind Ctrl-A c on
``mon:stdio`` (a pty), with QEMU's commands and output."""

from __future__ import annotations

import os
import pty
import re
import select
import socket
import subprocess
import time
from pathlib import Path

from ..lifecycle.helpers import COUNTER, kvmpy_command, kvmpy_env, wait_for_socket, write_payload

BASE = ["-M", "virt", "-bios", "none", "-display", "none"]


def read_until(read: object, marker: bytes, timeout: float = 20.0, seen: bytes = b"") -> bytes:
    data = seen
    deadline = time.monotonic() + timeout
    while marker not in data:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {marker!r} in {data[-500:]!r}")
        chunk = read()  # type: ignore[operator]
        if chunk:
            data += chunk
    return data


def test_monitor_on_a_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "hmp.sock")
    proc = subprocess.Popen([*kvmpy_command(), *BASE, "-nodefaults", "-S", "-kernel",
                             write_payload(tmp_path, "c", COUNTER),
                             "-monitor", f"unix:{path},server=on,wait=off"],
                            env=kvmpy_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_socket(path, proc)
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(path)
        sock.settimeout(20)
        assert read_until(lambda: sock.recv(4096), b"(qemu) ").endswith(b"(qemu) ")

        def hmp(line: str) -> str:
            sock.sendall(line.encode() + b"\r")
            out = read_until(lambda: sock.recv(65536), b"\r\n(qemu) ")
            text = out.decode().replace("\r\n", "\n")
            assert text.startswith(line + "\n")  # echoed as typed
            return text[len(line) + 1:-len("(qemu) ")]

        assert hmp("info status") == "VM status: paused (prelaunch)\n"
        assert hmp("xp /4xw 0x1000") == \
            "0000000000001000: 0x00000297 0x02828613 0xf1402573 0x0202b583\n"
        assert hmp("x /2xg 0x1000") == "0000000000001000: 0x0282861300000297 0x0202b583f1402573\n"
        assert hmp("c") == ""
        assert hmp("info status") == "VM status: running\n"
        assert hmp("stop") == ""
        regs = hmp("info registers")
        assert regs.startswith("\nCPU#0\n V      =   0\n pc       ")
        pc = int(re.search(r" pc +([0-9a-f]{16})", regs).group(1), 16)  # type: ignore[union-attr]
        assert pc == 0x1000 or pc >= 0x8000_0000
        assert re.search(r"x10/a0 +[0-9a-f]{16}", regs)
        assert hmp("info registers") == regs  # paused: nothing moves
        assert "0000000080000000-" in hmp("info mtree")
        qtree = hmp("info qtree")
        assert "bus: main-system-bus" in qtree and "dev:" in qtree
        assert re.fullmatch(r"\* CPU #0: thread_id=\d+\n", hmp("info cpus"))
        assert hmp("help stop") == "stop|s  -- stop emulation\n"
        assert "system_reset  -- reset the system" in hmp("help")
        assert hmp("nosuch") == "unknown command: 'nosuch'\n"
        assert hmp("xp /4zw 0") == \
            "invalid char in format: 'z'\nTry \"help xp\" for more information\n"
        assert hmp("system_reset") == ""
        assert hmp("info status") == "VM status: paused\n"
        sock.sendall(b"q\r")
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_monitor_stdio(tmp_path: Path) -> None:
    proc = subprocess.run([*kvmpy_command(), *BASE, "-nodefaults", "-S", "-monitor", "stdio"],
                          env=kvmpy_env(), input=b"info status\nxp /2xw 0x1000\nq\n",
                          capture_output=True, timeout=60)
    out = proc.stdout.decode().replace("\r\n", "\n")
    assert proc.returncode == 0
    assert "VM status: paused (prelaunch)" in out
    assert "0000000000001000: 0x00000297 0x02828613" in out


def test_ctrl_a_c_on_mon_stdio(tmp_path: Path) -> None:
    """-nographic: the console and the monitor share a terminal; Ctrl-A c switches."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([*kvmpy_command(), *BASE, "-nographic", "-kernel",
                             write_payload(tmp_path, "c", COUNTER)],
                            env=kvmpy_env(), stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True)
    os.close(slave)

    def read() -> bytes:
        ready, _, _ = select.select([master], [], [], 0.5)
        return os.read(master, 65536) if ready else b""

    try:
        # Ready once Ctrl-A h answers with the key list (the terminal is in raw mode then).
        seen = b""
        deadline = time.monotonic() + 60
        while b"C-a c" not in seen:
            assert time.monotonic() < deadline, f"Ctrl-A h never answered: {seen!r}"
            os.write(master, b"\x01h")
            seen += read() + read()
        os.write(master, b"\x01c")
        read_until(read, b"(qemu) ", timeout=60, seen=seen)

        def hmp(line: bytes) -> bytes:
            os.write(master, line + b"\r")
            return read_until(read, b"(qemu) ")

        assert b"VM status: running" in hmp(b"info status")
        hmp(b"stop")
        assert b"VM status: paused" in hmp(b"info status")
        hmp(b"c")
        assert b"VM status: running" in hmp(b"info status")
        os.write(master, b"\x01c")  # back to the console, and to the monitor again
        os.write(master, b"\x01c")
        read_until(read, b"(qemu) ")
        assert b"VM status: running" in hmp(b"info status")
        os.write(master, b"q\r")
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        os.close(master)
