"""Tiny guests and process helpers shared by the lifecycle and monitor tests.

The payloads are a few hand-encoded RV64 instructions run with ``-bios none`` (loaded at RAM
base, entered in M-mode), so tests that only need a guest doing *something* take milliseconds
instead of a Linux boot.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import kvmpy

RAM_BASE = 0x8000_0000
COUNTER_GPA = RAM_BASE + 0x1000
"""Where :data:`COUNTER` stores its count."""

COUNTER = [
    0x00001397,  # auipc t2, 1          t2 = RAM_BASE + 0x1000
    0x00150513,  # loop: addi a0, a0, 1
    0x00A3B023,  #       sd a0, 0(t2)
    0xFF9FF06F,  #       j loop
]
"""Counts in a0 for ever and stores the count at :data:`COUNTER_GPA`."""

POWEROFF = [
    0x001002B7,  # lui t0, 0x100        the virt board's sifive_test at 0x100000
    0x00005337,  # lui t1, 0x5
    0x55530313,  # addi t1, t1, 0x555   FINISHER_PASS: power off
    0x0062A023,  # sw t1, 0(t0)
    0x0000006F,  # j .
]

REBOOT = [
    0x001002B7,  # lui t0, 0x100
    0x00007337,  # lui t1, 0x7
    0x77730313,  # addi t1, t1, 0x777   FINISHER_RESET
    0x0062A023,  # sw t1, 0(t0)
    0x0000006F,  # j .
]


HELLO = [
    0x100002B7,  # lui t0, 0x10000      the virt board's UART at 0x10000000
    0x06F00313,  # li t1, 'o'
    0x00628023,  # sb t1, 0(t0)
    0x06B00313,  # li t1, 'k'
    0x00628023,  # sb t1, 0(t0)
    0x02100313,  # li t1, '!'
    0x00628023,  # sb t1, 0(t0)
    0x0000006F,  # j .
]
"""Prints ``ok!`` on the serial console, then spins."""


def write_payload(directory: Path, name: str, words: Sequence[int]) -> str:
    path = directory / f"{name}.bin"
    path.write_bytes(b"".join(struct.pack("<I", word) for word in words))
    return str(path)


def kvmpy_command() -> list[str]:
    """The kvmpy command line as CI runs it (the installed package, or this source tree)."""
    return [sys.executable, "-m", "kvmpy"]


def kvmpy_env() -> dict[str, str]:
    """Environment for a kvmpy child: finds the same package this test imported."""
    env = dict(os.environ)
    package_parent = str(Path(kvmpy.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH"))
                                        if p)
    return env


def qemu_binary() -> str | None:
    return shutil.which("qemu-system-riscv64")


def vmm_command(vmm: str) -> list[str]:
    """``kvmpy``'s command, or ``qemu``'s (the test is skipped where QEMU is missing)."""
    if vmm != "qemu":
        return kvmpy_command()
    binary = qemu_binary()
    if binary is None:
        import pytest

        pytest.skip("qemu-system-riscv64 (the oracle) is not installed")
    return [binary]


def wait_for_path(path: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise RuntimeError(f"the VMM exited with status {proc.returncode} before "
                               f"creating {path}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout} s")
        time.sleep(0.02)


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the VMM exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                pass
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"port {port} did not open within {timeout} s") from None
            time.sleep(0.05)
            continue
        # That probe was the monitor's first client; it has gone and the next one is served.
        return


def wait_for_socket(path: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Wait until a unix socket server listens at ``path`` (the file exists between bind()
    and listen(), when a connection is still refused)."""
    wait_for_path(path, proc, timeout)
    deadline = time.monotonic() + timeout
    while True:
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(path)
            return  # that probe was the server's first client; it leaves at once
        except ConnectionRefusedError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
        finally:
            probe.close()
