"""Helpers of the gdb stub tests: a VMM (kvmpy or QEMU) waiting for gdb, gdb-multiarch in batch
mode, and a raw remote-protocol client."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import kvmpy_env

GUESTS = Path(__file__).parent / "guests"
GDBTEST = GUESTS / "gdbtest.elf"
GDB = shutil.which("gdb-multiarch")
QEMU = shutil.which("qemu-system-riscv64")

needs_gdb = pytest.mark.skipif(GDB is None, reason="needs gdb-multiarch (scripts/install-deps)")
needs_qemu = pytest.mark.skipif(QEMU is None,
                                reason="needs qemu-system-riscv64 7.2, the reference")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Until ``port`` accepts on loopback (a connection that closes at once; the stub sees a
    client come and go, which leaves a VM started with -S as it was)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the VMM exited early: {proc.communicate()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")


class Vmm:
    """A VMM process started with ``-S -gdb tcp::PORT`` (stdin a pipe kept open)."""

    def __init__(self, which: str, args: list[str]) -> None:
        self.port = free_port()
        cmd = ([QEMU or "qemu-system-riscv64"] if which == "qemu"
               else [sys.executable, "-m", "kvmpy"])
        self.proc = subprocess.Popen(
            [*cmd, *args, "-S", "-gdb", f"tcp::{self.port}"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=kvmpy_env())
        wait_listening(self.port, self.proc)

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        """Wait for the VMM to end (killing it after ``timeout``): (status, stdout, stderr)."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return self.proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


@contextlib.contextmanager
def vmm(which: str, args: list[str]) -> Iterator[Vmm]:
    v = Vmm(which, args)
    try:
        yield v
    finally:
        v.close()


def run_gdb(port: int, elf: Path, commands: list[str], timeout: float = 120) -> str:
    """gdb-multiarch in batch mode: connect to ``port``, run ``commands``; stdout+stderr."""
    script = ["set pagination off", "set confirm off", "set width 0",
              f"target remote 127.0.0.1:{port}", *commands]
    args = [GDB or "gdb-multiarch", "-nx", "-batch"]
    for line in script:
        args += ["-ex", line]
    proc = subprocess.run([*args, str(elf)], capture_output=True, timeout=timeout, check=False)
    return (proc.stdout + proc.stderr).decode(errors="replace")


class Rsp:
    """A raw remote-protocol client (acknowledging mode unless told otherwise)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), 10)
        self.sock.settimeout(30)
        self.buf = b""

    @staticmethod
    def frame(payload: bytes) -> bytes:
        return b"$" + payload + b"#" + b"%02x" % (sum(payload) & 0xFF)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def packet(self) -> bytes:
        """The next packet from the stub (acknowledged); skips ``+``/``-``."""
        while True:
            start = self.buf.find(b"$")
            end = self.buf.find(b"#", start + 1) if start >= 0 else -1
            if start >= 0 and end >= 0 and len(self.buf) >= end + 3:
                payload = self.buf[start + 1:end]
                assert self.buf[end + 1:end + 3] == b"%02x" % (sum(payload) & 0xFF)
                self.buf = self.buf[end + 3:]
                self.sock.sendall(b"+")
                return payload
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the stub closed the connection")
            self.buf += data

    def ask(self, payload: str | bytes) -> bytes:
        data = payload.encode() if isinstance(payload, str) else payload
        self.sock.sendall(self.frame(data))
        return self.packet()

    def close(self) -> None:
        self.sock.close()
